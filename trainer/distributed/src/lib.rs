//! Data-parallel training: the small collective interface the training loop runs on
//! ([`Collective`]), its single-process implementation ([`Solo`]) and, with the `mpi` feature,
//! the MPI one ([`mpi::MpiCollective`], OpenMPI through the `mpi` crate) and, with the `nccl`
//! feature, NCCL across GPUs (`nccl::NcclCollective`), plus what the loop
//! needs on top of them: flat-buffer all-reduce and broadcast of variables, and the start-up
//! checks that every rank runs the same configuration on the same data.
//!
//! The loop does not know which implementation it runs on: a step all-reduces the gradients of
//! every rank's slice of the global batch, and all ranks apply the same Adam update.

#![forbid(unsafe_code)]

mod error;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use candle_core::{Tensor, Var};

pub use error::{DistributedError, Result};

/// The collective operations of data-parallel training over `size` ranks. Every rank calls the
/// same operations in the same order (MPI's rule); buffers have the same length on every rank.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Rank `root`'s `buf` into every rank's.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Every rank's `local` (of the same length), concatenated in rank order.
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>>;
    /// Every rank's `local` (of the same length), concatenated in rank order.
    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>>;
    /// A name for messages: `single process`, `MPI (4 ranks)`.
    fn describe(&self) -> String;
    /// Ends every rank of the job at once with exit status `code` (after this rank failed
    /// alone, so that the others do not wait for it forever).
    fn abort(&self, code: i32) -> !;
    /// [`Collective::all_reduce_sum`] of a flat f32 tensor, the sums on its device. The default
    /// goes through host memory; NCCL reduces GPU buffers directly.
    fn all_reduce_sum_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        let mut host = flat.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut host)?;
        Ok(Tensor::from_vec(host, flat.elem_count(), flat.device())?)
    }
    /// [`Collective::broadcast`] of rank 0's flat f32 tensor, on its device.
    fn broadcast_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        let mut host = flat.to_vec1::<f32>()?;
        self.broadcast(&mut host, 0)?;
        Ok(Tensor::from_vec(host, flat.elem_count(), flat.device())?)
    }
}

/// This process's place in a job, as its launcher describes it in the environment: torchrun's
/// `RANK`/`WORLD_SIZE`/`LOCAL_RANK`, OpenMPI's `OMPI_COMM_WORLD_*`, or Slurm's `SLURM_PROCID`/
/// `SLURM_NTASKS`/`SLURM_LOCALID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub size: usize,
    /// The rank among those on this machine (which GPU it uses).
    pub local_rank: usize,
}

impl RankEnv {
    /// Reads the first launcher's variables that are set.
    pub fn from_env() -> Option<Self> {
        let get = |name: &str| std::env::var(name).ok()?.parse::<usize>().ok();
        [
            ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
            (
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
        ]
        .into_iter()
        .find_map(|(rank, size, local)| {
            Some(Self {
                rank: get(rank)?,
                size: get(size)?,
                local_rank: get(local).unwrap_or(0),
            })
        })
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>> {
        Ok(local.to_vec())
    }
    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>> {
        Ok(local.to_vec())
    }
    fn describe(&self) -> String {
        "single process".into()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The values of `tensors` in one flat f32 tensor on their device, in order.
pub fn flatten(tensors: &[Tensor]) -> Result<Tensor> {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.flatten_all()?.to_dtype(candle_core::DType::F32))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// Splits a flat tensor back into tensors shaped (and typed) like `like`.
pub fn unflatten(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(like.len());
    let mut offset = 0;
    for t in like {
        let n = t.elem_count();
        let part = flat.narrow(0, offset, n)?.reshape(t.shape())?;
        out.push(part.to_dtype(t.dtype())?);
        offset += n;
    }
    Ok(out)
}

/// Gradients summed over the ranks, and whether this rank's own were all finite.
pub struct ReducedGradients {
    pub grads: Vec<Option<Tensor>>,
    /// False when this rank contributed a NaN or infinity (then every rank's sums hold it).
    pub local_finite: bool,
}

/// Sums `grads` over the ranks with one all-reduce of a flat buffer (missing gradients count
/// as zeros); every rank gets the same sums. `like` gives the shapes of missing ones. A single
/// process returns its gradients untouched (and does not scan them).
pub fn all_reduce_gradients(
    collective: &dyn Collective,
    grads: Vec<Option<Tensor>>,
    like: &[&Var],
) -> Result<ReducedGradients> {
    if collective.size() == 1 {
        return Ok(ReducedGradients {
            grads,
            local_finite: true,
        });
    }
    let dense = grads
        .into_iter()
        .zip(like)
        .map(|(g, v)| match g {
            Some(g) => Ok(g),
            None => Ok(v.as_tensor().zeros_like()?),
        })
        .collect::<Result<Vec<_>>>()?;
    let flat = flatten(&dense)?;
    // NaN and infinities survive a sum: one scalar read tells whether any is here.
    let local_finite = flat.sum_all()?.to_scalar::<f32>()?.is_finite();
    let summed = collective.all_reduce_sum_tensor(&flat)?;
    Ok(ReducedGradients {
        grads: unflatten(&summed, &dense)?.into_iter().map(Some).collect(),
        local_finite,
    })
}

/// Sets every rank's `vars` to rank 0's, with one broadcast.
pub fn broadcast_vars(collective: &dyn Collective, vars: &[Var]) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let flat = collective.broadcast_tensor(&flatten(&tensors)?)?;
    for (var, value) in vars.iter().zip(unflatten(&flat, &tensors)?) {
        var.set(&value)?;
    }
    Ok(())
}

/// Sets every rank's `vars` to their mean over the ranks (for BatchNorm running statistics,
/// which each rank measures on its own slice).
pub fn average_vars(collective: &dyn Collective, vars: &[Var]) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let summed = collective.all_reduce_sum_tensor(&flatten(&tensors)?)?;
    let mean = (summed / collective.size() as f64)?;
    for (var, value) in vars.iter().zip(unflatten(&mean, &tensors)?) {
        var.set(&value)?;
    }
    Ok(())
}

/// A CRC32C over the bytes of `vars`: equal on two ranks exactly when (barring a collision)
/// their values are bitwise equal.
pub fn checksum(vars: &[Var]) -> Result<u64> {
    let mut crc = 0u32;
    for v in vars {
        let values = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        crc = crc32c::crc32c_append(crc, &bytes);
    }
    Ok(crc as u64)
}

/// The ranks whose value differs from rank 0's, in rank order.
pub fn ranks_differing_from_rank0(values: &[u64]) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, v)| **v != values[0])
        .map(|(rank, _)| rank)
        .collect()
}

/// The words of a rank's start-up error that [`agree`] sends to every rank: its first
/// `8 * ERROR_WORDS` bytes (every rank sends the same count).
const ERROR_WORDS: usize = 64;

/// `text`'s first `8 * ERROR_WORDS` bytes as words, zero-padded.
fn error_words(text: &str) -> Vec<u64> {
    let mut bytes = text.as_bytes()[..text.len().min(8 * ERROR_WORDS)].to_vec();
    bytes.resize(8 * ERROR_WORDS, 0);
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// The text of [`error_words`] (a cut multi-byte character and the padding dropped).
fn error_text(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end_matches('\u{FFFD}')
        .to_string()
}

/// Joins the start-up of all ranks: each passes how its own went; if any rank failed, every
/// rank returns an error (a failed rank its own, prefixed with its rank; the others one naming
/// the ranks that failed and their errors, which reach every rank with the outcome: a failed
/// rank's own output may be cut short when the launcher ends the job), so that no rank starts
/// training alone.
pub fn agree<T, E: std::fmt::Display + From<DistributedError>>(
    collective: &dyn Collective,
    mine: std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if collective.size() == 1 {
        return mine;
    }
    let mut local = vec![u64::from(mine.is_err())];
    local.extend(error_words(&match &mine {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    }));
    let gathered = collective.all_gather_u64(&local)?;
    let failures: Vec<String> = gathered
        .chunks(1 + ERROR_WORDS)
        .enumerate()
        .filter(|(_, words)| words[0] == 1)
        .map(|(rank, words)| {
            format!(
                "rank {rank} failed at start-up: {}",
                error_text(&words[1..])
            )
        })
        .collect();
    match mine {
        Err(e) => Err(DistributedError::Failed(format!(
            "rank {} failed at start-up: {e}",
            collective.rank()
        ))
        .into()),
        Ok(_) if !failures.is_empty() => Err(DistributedError::Failed(format!(
            "{}; no rank trained",
            failures.join("; ")
        ))
        .into()),
        Ok(value) => Ok(value),
    }
}

/// After step `step` of a data-parallel job: checks that every rank holds bitwise the same
/// `params` (an error names the ranks that differ from rank 0 and the step), and agrees on
/// stopping: returns true on every rank when any rank's `stop` was set.
pub fn check_replicas(
    collective: &dyn Collective,
    params: &[Var],
    stop: bool,
    step: u64,
) -> Result<bool> {
    if collective.size() == 1 {
        return Ok(stop);
    }
    let mine = [checksum(params)?, u64::from(stop)];
    let all = collective.all_gather_u64(&mine)?;
    let sums: Vec<u64> = all.chunks(2).map(|c| c[0]).collect();
    let differ = ranks_differing_from_rank0(&sums);
    if !differ.is_empty() {
        return Err(DistributedError::Failed(format!(
            "after step {step} the weights of {} differ from rank 0's (the replicas drifted apart); the last checkpoint is kept",
            rank_list(&differ)
        )));
    }
    Ok(all.chunks(2).any(|c| c[1] == 1))
}

/// `rank 1` or `ranks 1, 3`.
pub fn rank_list(ranks: &[usize]) -> String {
    let list = ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if ranks.len() == 1 {
        format!("rank {list}")
    } else {
        format!("ranks {list}")
    }
}

/// Checks that every rank has the same `(what, fingerprint)` pairs as rank 0; the error names
/// the first thing that differs and the ranks where it does.
pub fn check_same_everywhere(collective: &dyn Collective, items: &[(&str, u64)]) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let mine: Vec<u64> = items.iter().map(|(_, f)| *f).collect();
    let all = collective.all_gather_u64(&mine)?;
    for (i, (what, _)) in items.iter().enumerate() {
        let per_rank: Vec<u64> = all.chunks(items.len()).map(|c| c[i]).collect();
        let differ = ranks_differing_from_rank0(&per_rank);
        if !differ.is_empty() {
            return Err(DistributedError::Failed(format!(
                "{} {} from rank 0's: every rank must be started with the same settings and data",
                rank_list(&differ),
                if differ.len() == 1 {
                    format!("has different {what}")
                } else {
                    format!("have different {what}")
                }
            )));
        }
    }
    Ok(())
}

/// A fingerprint of bytes (CRC32C and length).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    (crc32c::crc32c(bytes) as u64) << 32 ^ bytes.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_start_up_error_crosses_to_the_other_ranks_whole_or_cut_at_a_character() {
        let text = "data/nowhere: No such file or directory (os error 2)";
        assert_eq!(error_words(text).len(), ERROR_WORDS);
        assert_eq!(error_text(&error_words(text)), text);
        assert_eq!(error_text(&error_words("")), "");
        // Longer than the words hold: cut, and a two-byte character cut in half is dropped.
        let long = format!("{}é tail", "x".repeat(8 * ERROR_WORDS - 1));
        assert_eq!(
            error_text(&error_words(&long)),
            "x".repeat(8 * ERROR_WORDS - 1)
        );
    }

    #[test]
    fn flat_buffers_round_trip_shapes() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[7f32], &dev).unwrap();
        let flat = flatten(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            flat.to_vec1::<f32>().unwrap(),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0]
        );
        let back = unflatten(&flat, &[a.clone(), b]).unwrap();
        assert_eq!(back[0].dims(), [2, 3]);
        assert_eq!(
            back[0].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(back[1].to_vec1::<f32>().unwrap(), [7.0]);
    }

    #[test]
    fn differing_ranks_are_named() {
        assert_eq!(ranks_differing_from_rank0(&[5, 5, 6, 5, 7]), [2, 4]);
        assert_eq!(rank_list(&[2]), "rank 2");
        assert_eq!(rank_list(&[2, 4]), "ranks 2, 4");
        assert_ne!(fingerprint(b"ab"), fingerprint(b"ba"));
    }
}
