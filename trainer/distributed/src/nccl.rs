//! [`Collective`] across GPUs on NCCL (cudarc's `nccl`, as candle's multi-process examples use
//! it): one process per GPU; the flat gradient and weight buffers are reduced in GPU memory,
//! and the few host values (losses, checksums, start-up checks) go through small GPU buffers.
//! It needs no MPI library: ranks come from the launcher's environment ([`RankEnv`]) and rank
//! 0 hands NCCL's unique id to the others through a file all of them can see.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::CudaSlice;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::{Collective, RankEnv};
use crate::error::{DistributedError, Result};

/// How long ranks wait for rank 0's id file.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(120);

/// An NCCL communicator over the GPUs of a job.
pub struct NcclCollective {
    comm: Comm,
    device: CudaDevice,
    ranks: RankEnv,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> DistributedError {
    DistributedError::Failed(format!("NCCL {what} failed: {e:?}"))
}

fn cuda_error(e: impl std::fmt::Debug) -> DistributedError {
    DistributedError::Failed(format!("CUDA copy failed: {e:?}"))
}

/// Rank 0 writes NCCL's id to `file` (atomically); the others wait for it.
fn share_id(ranks: &RankEnv, file: &Path) -> Result<Id> {
    if ranks.rank == 0 {
        let id = Id::new().map_err(|e| nccl_error("creating the unique id", e))?;
        let bytes: Vec<u8> = id.internal().iter().map(|c| *c as u8).collect();
        gantry_files::write_file_atomic(file, &bytes)
            .map_err(|e| DistributedError::data(file, e.to_string()))?;
        return Ok(id);
    }
    let start = Instant::now();
    loop {
        match std::fs::read(file) {
            Ok(bytes) if bytes.len() == 128 => {
                let mut internal = [0 as std::ffi::c_char; 128];
                for (c, b) in internal.iter_mut().zip(bytes) {
                    *c = b as std::ffi::c_char;
                }
                return Ok(Id::uninit(internal));
            }
            _ if start.elapsed() > RENDEZVOUS_TIMEOUT => {
                return Err(DistributedError::data(
                    file,
                    format!(
                        "rank {}: rank 0 did not write NCCL's id here within {} s",
                        ranks.rank,
                        RENDEZVOUS_TIMEOUT.as_secs()
                    ),
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl NcclCollective {
    /// Joins the job's communicator on `device` (this rank's GPU), meeting the other ranks
    /// through `id_file` (a path unique to the job, on a file system every rank sees).
    pub fn init(ranks: RankEnv, device: &Device, id_file: PathBuf) -> Result<Self> {
        let Device::Cuda(device) = device else {
            return Err(DistributedError::Failed(
                "NCCL needs a CUDA device (--device cuda)".into(),
            ));
        };
        let id = share_id(&ranks, &id_file)?;
        let comm = Comm::from_rank(device.cuda_stream(), ranks.rank, ranks.size, id)
            .map_err(|e| nccl_error("joining the communicator", e))?;
        Ok(Self {
            comm,
            device: device.clone(),
            ranks,
        })
    }

    /// A copy of a flat f32 tensor's values in a buffer on this rank's GPU.
    fn device_buffer(&self, flat: &Tensor) -> Result<CudaSlice<f32>> {
        let flat = flat.contiguous()?;
        let (storage, layout) = flat.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            return Err(DistributedError::Failed(
                "NCCL reduces GPU tensors only".into(),
            ));
        };
        let slice = storage.as_cuda_slice::<f32>()?;
        let start = layout.start_offset();
        let view = slice.slice(start..start + flat.elem_count());
        self.device
            .cuda_stream()
            .clone_dtod(&view)
            .map_err(cuda_error)
    }

    fn wrap(&self, buffer: CudaSlice<f32>, len: usize) -> Tensor {
        let storage = CudaStorage::wrap_cuda_slice(buffer, self.device.clone());
        Tensor::from_storage(Storage::Cuda(storage), len, BackpropOp::none(), false)
    }

    fn gather<T>(&self, local: &[T]) -> Result<Vec<T>>
    where
        T: cudarc::nccl::safe::NcclType
            + cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits
            + Default
            + Clone,
    {
        let stream = self.device.cuda_stream();
        let send = stream.clone_htod(local).map_err(cuda_error)?;
        let mut recv = stream
            .alloc_zeros::<T>(local.len() * self.ranks.size)
            .map_err(cuda_error)?;
        self.comm
            .all_gather(&send, &mut recv)
            .map_err(|e| nccl_error("all-gather", e))?;
        stream.clone_dtoh(&recv).map_err(cuda_error)
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.ranks.rank
    }
    fn size(&self) -> usize {
        self.ranks.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let flat = Tensor::from_slice(buf, buf.len(), &Device::Cuda(self.device.clone()))?;
        let summed = self.all_reduce_sum_tensor(&flat)?.to_vec1::<f32>()?;
        buf.copy_from_slice(&summed);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let stream = self.device.cuda_stream();
        let mut buffer = stream.clone_htod(&buf[..]).map_err(cuda_error)?;
        self.comm
            .broadcast_in_place(&mut buffer, root as i32)
            .map_err(|e| nccl_error("broadcast", e))?;
        buf.copy_from_slice(&stream.clone_dtoh(&buffer).map_err(cuda_error)?);
        Ok(())
    }
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>> {
        self.gather(local)
    }
    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>> {
        self.gather(local)
    }
    fn describe(&self) -> String {
        format!("NCCL ({} GPUs)", self.ranks.size)
    }
    fn abort(&self, code: i32) -> ! {
        // The launcher ends the other ranks when one exits with an error.
        std::process::exit(code)
    }
    fn all_reduce_sum_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        let mut buffer = self.device_buffer(flat)?;
        self.comm
            .all_reduce_in_place(&mut buffer, &ReduceOp::Sum)
            .map_err(|e| nccl_error("all-reduce", e))?;
        Ok(self.wrap(buffer, flat.elem_count()))
    }
    fn broadcast_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        let mut buffer = self.device_buffer(flat)?;
        self.comm
            .broadcast_in_place(&mut buffer, 0)
            .map_err(|e| nccl_error("broadcast", e))?;
        Ok(self.wrap(buffer, flat.elem_count()))
    }
}
