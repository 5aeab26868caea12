//! The convolution primitives ([`crate::geometry`]) on CUDA through cuDNN (feature `cudnn`).
//!
//! Algorithms come from cuDNN's heuristics once per shape and thread (cached), and the workspace
//! is kept and grown, so a training step does no host-side searching or device allocation for
//! convolutions after its first run. Fp32 uses cuDNN's default math, which allows TF32 tensor
//! cores on Ampere and later, as PyTorch does by default (`torch.backends.cudnn.allow_tf32`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn,
};
use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnError};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::DeviceId;
use candle_core::{CudaDevice, CudaStorage, Layout, Shape};

use crate::geometry::{Geometry, Primitive};

/// The per-thread cuDNN state of one device: the handle (bound to candle's stream), the chosen
/// algorithms per shape, and a workspace that only grows.
struct DeviceState {
    handle: Arc<Cudnn>,
    algorithms: HashMap<(Primitive, Geometry), (Algorithm, usize)>,
    workspace: Option<CudaSlice<u8>>,
}

#[derive(Debug, Clone, Copy)]
enum Algorithm {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, like candle's own.
    static STATE: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
}

fn cudnn_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("gantry cudnn conv: {e}"))
}

fn dims_i32(d: [usize; 4]) -> candle_core::Result<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(d) {
        *o = i32::try_from(v).map_err(|_| cudnn_err(format!("dimension {v} too large")))?;
    }
    Ok(out)
}

/// A contiguous f32 operand on the device, from its start offset.
fn operand<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, f32>> {
    if !l.is_contiguous() {
        candle_core::bail!("gantry cudnn conv: {what} must be contiguous");
    }
    let slice = s.as_cuda_slice::<f32>()?;
    Ok(slice.slice(l.start_offset()..l.start_offset() + l.shape().elem_count()))
}

/// Runs `prim` of geometry `g` on `a`, `b` (operand order of [`Geometry::operands`]) into a new
/// buffer.
fn launch(
    prim: Primitive,
    g: &Geometry,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    dev: &CudaDevice,
) -> candle_core::Result<CudaSlice<f32>> {
    let out_len: usize = g.output(prim).iter().product();
    // SAFETY: uninitialised device memory is never read: cuDNN writes every element of the
    // output (beta = 0) before anything reads it.
    let mut out = unsafe { dev.alloc::<f32>(out_len)? };
    STATE.with(|state| -> candle_core::Result<()> {
        let mut state = state.borrow_mut();
        let st = match state.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState {
                handle: Cudnn::new(dev.cuda_stream()).map_err(cudnn_err)?,
                algorithms: HashMap::new(),
                workspace: None,
            }),
        };
        let handle = st.handle.clone();
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let conv = handle
            .create_conv2d::<f32>(
                [g.padding as i32; 2],
                [g.stride as i32; 2],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(cudnn_err)?;
        let x = handle
            .create_4d_tensor::<f32>(nchw, dims_i32(g.x)?)
            .map_err(cudnn_err)?;
        let w = handle
            .create_4d_filter::<f32>(nchw, dims_i32(g.w)?)
            .map_err(cudnn_err)?;
        let y = handle
            .create_4d_tensor::<f32>(nchw, dims_i32(g.y)?)
            .map_err(cudnn_err)?;
        let key = (prim, *g);
        let cached = st.algorithms.get(&key).copied();
        let algorithms = &mut st.algorithms;
        let workspace = &mut st.workspace;
        let one = (1.0f32, 0.0f32);
        // Each arm: the algorithm (cuDNN's heuristic pick, once per shape), a large enough
        // workspace, then the launch.
        // SAFETY (the launches): the descriptors were built from the shapes of `a`, `b` and
        // `out` (checked by the callers against `g`), all f32 NCHW/KCRS and contiguous, and the
        // workspace is at least as large as cuDNN asked for the algorithm.
        match prim {
            Primitive::Forward => {
                let op = ConvForward {
                    conv: &conv,
                    x: &x,
                    w: &w,
                    y: &y,
                };
                let (Algorithm::Forward(alg), len) = remember(algorithms, key, cached, || {
                    let a = op.pick_algorithm()?;
                    Ok((Algorithm::Forward(a), op.get_workspace_size(a)?))
                })?
                else {
                    unreachable!("cached under its primitive")
                };
                let ws = grown(workspace, len, dev)?;
                // SAFETY: the descriptors were built from these buffers' shapes (checked by
                // `Geometry`), the workspace holds the bytes cuDNN asked for this algorithm.
                unsafe { op.launch(alg, Some(ws), one, a, b, &mut out) }
            }
            Primitive::BackwardData => {
                let op = ConvBackwardData {
                    conv: &conv,
                    dx: &x,
                    w: &w,
                    dy: &y,
                };
                let (Algorithm::BackwardData(alg), len) =
                    remember(algorithms, key, cached, || {
                        let a = op.pick_algorithm()?;
                        Ok((Algorithm::BackwardData(a), op.get_workspace_size(a)?))
                    })?
                else {
                    unreachable!("cached under its primitive")
                };
                let ws = grown(workspace, len, dev)?;
                // SAFETY: as for the forward launch: shapes from `Geometry`, workspace sized by
                // cuDNN for this algorithm.
                unsafe { op.launch(alg, Some(ws), one, &mut out, b, a) }
            }
            Primitive::BackwardFilter => {
                let op = ConvBackwardFilter {
                    conv: &conv,
                    x: &x,
                    dw: &w,
                    dy: &y,
                };
                let (Algorithm::BackwardFilter(alg), len) =
                    remember(algorithms, key, cached, || {
                        let a = op.pick_algorithm()?;
                        Ok((Algorithm::BackwardFilter(a), op.get_workspace_size(a)?))
                    })?
                else {
                    unreachable!("cached under its primitive")
                };
                let ws = grown(workspace, len, dev)?;
                // SAFETY: as for the forward launch: shapes from `Geometry`, workspace sized by
                // cuDNN for this algorithm.
                unsafe { op.launch(alg, Some(ws), one, a, &mut out, b) }
            }
        }
        .map_err(cudnn_err)
    })?;
    Ok(out)
}

/// Runs `prim` of geometry `g` on a custom op's two operands; the result as candle storage.
pub(crate) fn run_primitive(
    prim: Primitive,
    g: &Geometry,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let a = operand(s1, l1, "first operand")?;
    let b = operand(s2, l2, "second operand")?;
    let out = launch(prim, g, &a, &b, dev)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(g.output(prim).to_vec()),
    ))
}

/// The algorithm cached for `key`, or the one `pick` chooses (then cached).
fn remember(
    algorithms: &mut HashMap<(Primitive, Geometry), (Algorithm, usize)>,
    key: (Primitive, Geometry),
    cached: Option<(Algorithm, usize)>,
    pick: impl FnOnce() -> Result<(Algorithm, usize), CudnnError>,
) -> candle_core::Result<(Algorithm, usize)> {
    if let Some(found) = cached {
        return Ok(found);
    }
    let chosen = pick().map_err(cudnn_err)?;
    algorithms.insert(key, chosen);
    Ok(chosen)
}

/// The kept workspace, grown to at least `len` bytes.
fn grown<'a>(
    workspace: &'a mut Option<CudaSlice<u8>>,
    len: usize,
    dev: &CudaDevice,
) -> candle_core::Result<&'a mut CudaSlice<u8>> {
    let len = len.max(1);
    if workspace.as_ref().map_or(0, |w| w.len()) < len {
        // SAFETY: a workspace is scratch memory cuDNN writes before it reads; its contents are
        // never read by Gantry.
        *workspace = Some(unsafe { dev.alloc::<u8>(len)? });
    }
    Ok(workspace.as_mut().expect("allocated above"))
}
