//! Convolutions and transposed convolutions on CUDA through cuDNN (feature `cudnn`), as candle
//! custom ops on NCHW tensors, forward and backward.
//!
//! candle 0.11 runs `conv2d` through cuDNN but `conv_transpose2d` as a direct CUDA loop, and the
//! backward pass of either needs `conv_transpose2d` (input gradient of a convolution, forward of
//! a transposed one). cuDNN already has everything as three primitives on one convolution
//! geometry `x [N, C, H, W] * w [K, C, R, S] -> y [N, K, P, Q]`:
//!
//! | primitive | computes | Conv layer | ConvTranspose layer |
//! |---|---|---|---|
//! | forward | `y` from `x`, `w` | forward | input gradient |
//! | backward data | `dx` from `dy`, `w` | input gradient | forward |
//! | backward filter | `dw` from `x`, `dy` | weight gradient | weight gradient |
//!
//! A transposed convolution with weight `[C_in, C_out, k, k]` (candle's and PyTorch's layout) is
//! the adjoint of the convolution from its output (`C_out` channels) to its input (`C_in`), whose
//! filter `[K = C_in, C = C_out, k, k]` is the same array, so no weight is ever transposed.
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
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp2, Layout, Shape, Tensor};

use super::ConvParams;
use crate::spec::ConvKind;

/// One of cuDNN's three convolution primitives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Primitive {
    /// `(x, w) -> y`
    Forward,
    /// `(dy, w) -> dx`
    BackwardData,
    /// `(x, dy) -> dw`
    BackwardFilter,
}

/// The shapes of the underlying convolution `x * w -> y` (NCHW, filter KCRS), padding, stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    padding: usize,
    stride: usize,
}

impl Geometry {
    /// The convolution underlying layer `p` applied to an NCHW `input` with weight `weight`
    /// (checked against each other).
    fn of_layer(p: ConvParams, input: &[usize], weight: &[usize]) -> candle_core::Result<Self> {
        let ([n, c, h, w], Ok(weight4)) = (input, <[usize; 4]>::try_from(weight)) else {
            candle_core::bail!(
                "gantry cudnn conv expects 4-D input and weight, got {input:?} and {weight:?}"
            );
        };
        // The CPU kernels' shape checks, which take the input channel-major ([C, B, H, W]).
        let d = p.dims(&[*c, *n, *h, *w], weight)?;
        let layer_in = [d.batch, d.c_in, d.h_in, d.w_in];
        let layer_out = [d.batch, d.c_out, d.h_out, d.w_out];
        let (x, y) = match p.kind {
            ConvKind::Conv => (layer_in, layer_out),
            ConvKind::ConvTranspose => (layer_out, layer_in),
        };
        Ok(Self {
            x,
            w: weight4,
            y,
            padding: p.padding,
            stride: p.stride,
        })
    }

    /// The shape a primitive produces.
    fn output(&self, prim: Primitive) -> [usize; 4] {
        match prim {
            Primitive::Forward => self.y,
            Primitive::BackwardData => self.x,
            Primitive::BackwardFilter => self.w,
        }
    }

    /// The shapes a primitive takes, in operand order.
    fn operands(&self, prim: Primitive) -> ([usize; 4], [usize; 4]) {
        match prim {
            Primitive::Forward => (self.x, self.w),
            Primitive::BackwardData => (self.y, self.w),
            Primitive::BackwardFilter => (self.x, self.y),
        }
    }
}

/// The primitive that computes a layer's forward pass, input gradient or weight gradient.
fn layer_primitive(kind: ConvKind, role: Role) -> Primitive {
    match (kind, role) {
        (ConvKind::Conv, Role::Forward) | (ConvKind::ConvTranspose, Role::InputGrad) => {
            Primitive::Forward
        }
        (ConvKind::Conv, Role::InputGrad) | (ConvKind::ConvTranspose, Role::Forward) => {
            Primitive::BackwardData
        }
        (_, Role::WeightGrad) => Primitive::BackwardFilter,
    }
}

/// What a layer needs computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `(input, weight) -> output`
    Forward,
    /// `(output gradient, weight) -> input gradient`
    InputGrad,
    /// `(input, output gradient) -> weight gradient` for `Conv`; for `ConvTranspose` the
    /// primitive's `x` is the layer's output gradient and its `dy` the layer's input, so the
    /// operands are swapped before the call.
    WeightGrad,
}

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
    // Every element is written (beta = 0), so the buffer need not be zeroed.
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
                unsafe { op.launch(alg, Some(ws), one, a, &mut out, b) }
            }
        }
        .map_err(cudnn_err)
    })?;
    Ok(out)
}

/// Runs `prim` of geometry `g` on a custom op's two operands; the result as candle storage.
fn run_primitive(
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
        *workspace = Some(unsafe { dev.alloc::<u8>(len)? });
    }
    Ok(workspace.as_mut().expect("allocated above"))
}

/// A layer's convolution (forward, with autograd) on NCHW tensors.
struct LayerConv(ConvParams);

/// One primitive of a known geometry (no autograd: used inside [`LayerConv`]'s backward).
struct PrimitiveOp {
    prim: Primitive,
    geometry: Geometry,
}

impl CustomOp2 for LayerConv {
    fn name(&self) -> &'static str {
        "gantry-cudnn-conv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("gantry-cudnn-conv runs on CUDA only; the CPU has Gantry's own kernels")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = Geometry::of_layer(self.0, l1.dims(), l2.dims())?;
        run_primitive(
            layer_primitive(self.0.kind, Role::Forward),
            &g,
            s1,
            l1,
            s2,
            l2,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::of_layer(self.0, x.dims(), w.dims())?;
        let dy = dy.contiguous()?;
        let kind = self.0.kind;
        let input_grad = PrimitiveOp {
            prim: layer_primitive(kind, Role::InputGrad),
            geometry: g,
        };
        let weight_grad = PrimitiveOp {
            prim: layer_primitive(kind, Role::WeightGrad),
            geometry: g,
        };
        super::tracked_grads(
            x,
            w,
            || dy.apply_op2_no_bwd(w, &input_grad),
            // The primitive takes (conv input, conv output gradient): (x, dy) for a
            // convolution; for a transposed one its conv input is the layer's output side.
            || match kind {
                ConvKind::Conv => x.apply_op2_no_bwd(&dy, &weight_grad),
                ConvKind::ConvTranspose => dy.apply_op2_no_bwd(x, &weight_grad),
            },
        )
    }
}

impl CustomOp2 for PrimitiveOp {
    fn name(&self) -> &'static str {
        "gantry-cudnn-conv-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("gantry-cudnn-conv-grad runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = self.geometry.operands(self.prim);
        if l1.dims() != a || l2.dims() != b {
            candle_core::bail!(
                "gantry cudnn {:?}: operands {:?} and {:?}, expected {a:?} and {b:?}",
                self.prim,
                l1.dims(),
                l2.dims()
            );
        }
        run_primitive(self.prim, &self.geometry, s1, l1, s2, l2)
    }
}

/// The convolution (or transposed convolution) `p` of an NCHW `x` with weight `w` through
/// cuDNN, with candle autograd support. Both tensors must be f32 on a CUDA device.
pub fn conv(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, LayerConv(p))
}

#[cfg(test)]
mod tests {
    //! These need a CUDA device (they run wherever the `cudnn` feature is built for use); they
    //! compare cuDNN against candle's CPU convolutions and autograd on the same data.
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Vec<f32> {
        let n = shape.iter().product();
        crate::init::normal_vec(&mut crate::init::rng_for(seed, "cudnn test"), n, 0.0, 1.0)
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// Output, input gradient and weight gradient of one layer through candle's ops on `dev`
    /// (`cudnn = false`) or through these ops.
    fn run(
        p: ConvParams,
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        dev: &Device,
        cudnn: bool,
    ) -> [Vec<f32>; 3] {
        let x = Var::from_vec(x.to_vec(), xs, dev).unwrap();
        let w = Var::from_vec(w.to_vec(), ws, dev).unwrap();
        let y = if cudnn {
            conv(x.as_tensor(), w.as_tensor(), p).unwrap()
        } else {
            match p.kind {
                ConvKind::Conv => x.conv2d(&w, p.padding, p.stride, 1, 1).unwrap(),
                ConvKind::ConvTranspose => {
                    x.conv_transpose2d(&w, p.padding, 0, p.stride, 1).unwrap()
                }
            }
        };
        // A fixed, non-uniform upstream gradient: sum(y * r).
        let r = Tensor::from_vec(rand(y.dims(), 99), y.dims(), dev).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        [
            flat(&y),
            flat(grads.get(x.as_tensor()).unwrap()),
            flat(grads.get(w.as_tensor()).unwrap()),
        ]
    }

    /// cuDNN against candle's CPU ops for DCGAN's layer shapes. Tolerance: cuDNN may use TF32
    /// (10-bit mantissa, relative error ~5e-4 per product) and any summation order, so each
    /// result is compared to 1e-2 of its largest magnitude; a wrong geometry, operand order or
    /// missing transpose gives O(1) differences.
    #[test]
    fn cudnn_convolutions_match_candle_on_the_cpu() {
        let gpu = Device::new_cuda(0).expect("the cudnn feature's tests need a CUDA device");
        let layers = [
            (
                ConvKind::ConvTranspose,
                4,
                1,
                0,
                [3, 16, 1, 1],
                [16, 8, 4, 4],
            ),
            (ConvKind::ConvTranspose, 4, 2, 1, [3, 8, 4, 4], [8, 4, 4, 4]),
            (ConvKind::Conv, 4, 2, 1, [3, 4, 8, 8], [8, 4, 4, 4]),
            (ConvKind::Conv, 4, 1, 0, [3, 8, 4, 4], [1, 8, 4, 4]),
            (ConvKind::Conv, 3, 1, 1, [2, 3, 5, 7], [4, 3, 3, 3]),
        ];
        for (i, (kind, kernel, stride, padding, xs, ws)) in layers.into_iter().enumerate() {
            let p = ConvParams {
                kind,
                kernel,
                stride,
                padding,
            };
            let (x, w) = (rand(&xs, i as u64), rand(&ws, 100 + i as u64));
            let want = run(p, &x, &xs, &w, &ws, &Device::Cpu, false);
            let got = run(p, &x, &xs, &w, &ws, &gpu, true);
            for (what, (a, b)) in ["output", "input gradient", "weight gradient"]
                .iter()
                .zip(want.iter().zip(&got))
            {
                assert_eq!(a.len(), b.len(), "{kind:?} layer {i} {what}: size");
                let diff = a
                    .iter()
                    .zip(b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 1e-2 * max_abs(a).max(1e-3),
                    "{kind:?} layer {i} {what}: max |diff| {diff} (scale {})",
                    max_abs(a)
                );
            }
        }
    }
}
