//! Convolutions and transposed convolutions on NCHW tensors as three primitives of one
//! convolution geometry `x [N, C, H, W] * w [K, C, R, S] -> y [N, K, P, Q]` (cuDNN's):
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
//! On CUDA (feature `cudnn`) the primitives run in cuDNN (the `cudnn` module): candle 0.11 runs
//! `conv_transpose2d` there as a direct loop, and both convolutions' backward passes need it.
//! On the CPU they run as direct reference loops, which is what lets the mapping above (which
//! primitive, which operands in which order, which shapes) be tested against candle's own
//! convolutions without a GPU; training on the CPU uses Gantry's blocked kernels instead.

#[cfg(feature = "cudnn")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::gemm_conv::{ConvKind, ConvParams};
use crate::geometry::{Geometry, Primitive};
use crate::storage::{f32_slice, tracked_grads};

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

/// The three primitives as one loop nest over the convolution's index set
/// `(n, k, p, q, c, r, s)`: each contracts the same products differently. Direct loops, for
/// checking the primitive mapping and as the CPU side of the ops; not fast.
fn reference(prim: Primitive, g: &Geometry, a: &[f32], b: &[f32]) -> Vec<f32> {
    let [nb, cin, h, wd] = g.x;
    let [k_out, _, kr, ks] = g.w;
    let [_, _, ph, pw] = g.y;
    let mut out = vec![0f32; g.output(prim).iter().product()];
    let xi = |n: usize, c: usize, i: usize, j: usize| ((n * cin + c) * h + i) * wd + j;
    let wi = |k: usize, c: usize, r: usize, s: usize| ((k * cin + c) * kr + r) * ks + s;
    let yi = |n: usize, k: usize, p: usize, q: usize| ((n * k_out + k) * ph + p) * pw + q;
    for n in 0..nb {
        for k in 0..k_out {
            for p in 0..ph {
                for q in 0..pw {
                    for c in 0..cin {
                        for r in 0..kr {
                            let Some(i) = (p * g.stride + r).checked_sub(g.padding) else {
                                continue;
                            };
                            if i >= h {
                                continue;
                            }
                            for s in 0..ks {
                                let Some(j) = (q * g.stride + s).checked_sub(g.padding) else {
                                    continue;
                                };
                                if j >= wd {
                                    continue;
                                }
                                let (x, w, y) = (xi(n, c, i, j), wi(k, c, r, s), yi(n, k, p, q));
                                match prim {
                                    Primitive::Forward => out[y] += a[x] * b[w],
                                    Primitive::BackwardData => out[x] += a[y] * b[w],
                                    Primitive::BackwardFilter => out[w] += a[x] * b[y],
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// [`reference`] on a custom op's CPU operands.
fn reference_storage(
    prim: Primitive,
    g: &Geometry,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let out = reference(
        prim,
        g,
        f32_slice(s1, l1, "first operand")?,
        f32_slice(s2, l2, "second operand")?,
    );
    Ok((CpuStorage::F32(out), Shape::from(g.output(prim).to_vec())))
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
        "gantry-nchw-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::of_layer(self.0, l1.dims(), l2.dims())?;
        reference_storage(
            layer_primitive(self.0.kind, Role::Forward),
            &g,
            s1,
            l1,
            s2,
            l2,
        )
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = Geometry::of_layer(self.0, l1.dims(), l2.dims())?;
        let prim = layer_primitive(self.0.kind, Role::Forward);
        crate::cudnn::run_primitive(prim, &g, s1, l1, s2, l2)
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
        tracked_grads(
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

impl PrimitiveOp {
    /// The operands' shapes must be those of the geometry.
    fn check(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<()> {
        let (a, b) = self.geometry.operands(self.prim);
        if l1.dims() != a || l2.dims() != b {
            candle_core::bail!(
                "gantry conv {:?}: operands {:?} and {:?}, expected {a:?} and {b:?}",
                self.prim,
                l1.dims(),
                l2.dims()
            );
        }
        Ok(())
    }
}

impl CustomOp2 for PrimitiveOp {
    fn name(&self) -> &'static str {
        "gantry-nchw-conv-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2)?;
        reference_storage(self.prim, &self.geometry, s1, l1, s2, l2)
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.check(l1, l2)?;
        crate::cudnn::run_primitive(self.prim, &self.geometry, s1, l1, s2, l2)
    }
}

/// The convolution (or transposed convolution) `p` of an NCHW f32 `x` with weight `w`, with
/// candle autograd support: through cuDNN on CUDA (feature `cudnn`), through the reference
/// loops on the CPU (slow: for tests; the CPU has Gantry's blocked kernels).
pub fn primitive_conv_nchw(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, LayerConv(p))
}

#[cfg(test)]
mod tests {
    //! The ops against candle's own CPU convolutions and autograd on the same data: on the CPU
    //! (the reference loops: checks the primitive mapping, in every build) and, with the `cudnn`
    //! feature, on a CUDA device (cuDNN).
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Vec<f32> {
        let n = shape.iter().product();
        crate::tests::normal(n, seed)
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// Output, input gradient and weight gradient of one layer through candle's ops on `dev`
    /// (`ours = false`) or through these ops.
    fn run(
        p: ConvParams,
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        dev: &Device,
        ours: bool,
    ) -> [Vec<f32>; 3] {
        let x = Var::from_vec(x.to_vec(), xs, dev).unwrap();
        let w = Var::from_vec(w.to_vec(), ws, dev).unwrap();
        let y = if ours {
            primitive_conv_nchw(x.as_tensor(), w.as_tensor(), p).unwrap()
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

    /// DCGAN's layer shapes plus an odd one (stride 1, padding 1, non-square).
    fn layers() -> Vec<(ConvParams, [usize; 4], [usize; 4])> {
        let p = |kind, kernel, stride, padding| ConvParams {
            kind,
            kernel,
            stride,
            padding,
        };
        vec![
            (
                p(ConvKind::ConvTranspose, 4, 1, 0),
                [3, 16, 1, 1],
                [16, 8, 4, 4],
            ),
            (
                p(ConvKind::ConvTranspose, 4, 2, 1),
                [3, 8, 4, 4],
                [8, 4, 4, 4],
            ),
            (p(ConvKind::Conv, 4, 2, 1), [3, 4, 8, 8], [8, 4, 4, 4]),
            (p(ConvKind::Conv, 4, 1, 0), [3, 8, 4, 4], [1, 8, 4, 4]),
            (p(ConvKind::Conv, 3, 1, 1), [2, 3, 5, 7], [4, 3, 3, 3]),
        ]
    }

    /// Every layer's output and gradients through these ops on `dev` against candle's on the
    /// CPU, each within `tolerance` of the result's largest magnitude.
    fn check_against_candle(dev: &Device, tolerance: f32) {
        for (i, (p, xs, ws)) in layers().into_iter().enumerate() {
            let (x, w) = (rand(&xs, i as u64), rand(&ws, 100 + i as u64));
            let want = run(p, &x, &xs, &w, &ws, &Device::Cpu, false);
            let got = run(p, &x, &xs, &w, &ws, dev, true);
            for (what, (a, b)) in ["output", "input gradient", "weight gradient"]
                .iter()
                .zip(want.iter().zip(&got))
            {
                assert_eq!(a.len(), b.len(), "{:?} layer {i} {what}: size", p.kind);
                let diff = a
                    .iter()
                    .zip(b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= tolerance * max_abs(a).max(1e-3),
                    "{:?} layer {i} {what}: max |diff| {diff} (scale {})",
                    p.kind,
                    max_abs(a)
                );
            }
        }
    }

    /// A primitive refuses operands of other shapes than its geometry's, either operand, even
    /// when they hold enough values for the loops (which index by the geometry).
    #[test]
    fn a_primitive_refuses_operands_of_other_shapes() {
        let (p, xs, ws) = layers()[2];
        let geometry = Geometry::of_layer(p, &xs, &ws).unwrap();
        let op = PrimitiveOp {
            prim: Primitive::Forward,
            geometry,
        };
        let zeros =
            |s: [usize; 4]| Tensor::zeros(&s, candle_core::DType::F32, &Device::Cpu).unwrap();
        let (x, w) = (geometry.x, geometry.w);
        assert!(zeros(x).apply_op2_no_bwd(&zeros(w), &op).is_ok());
        let more_images = [x[0] + 1, x[1], x[2], x[3]];
        let more_filters = [w[0] + 1, w[1], w[2], w[3]];
        for (a, b) in [(more_images, w), (x, more_filters)] {
            let err = zeros(a)
                .apply_op2_no_bwd(&zeros(b), &op)
                .expect_err("operands of another shape")
                .to_string();
            assert!(err.contains("expected"), "{a:?} and {b:?}: {err}");
        }
    }

    /// The reference loops: fp32 with another summation order than candle's, sums of at most
    /// ~200 products here, so 1e-5 of scale; a wrong primitive, operand order or shape gives
    /// O(1) differences.
    #[test]
    fn primitive_mapping_matches_candle_on_the_cpu() {
        check_against_candle(&Device::Cpu, 1e-5);
    }

    /// cuDNN (needs a CUDA device wherever the `cudnn` feature is built for use). It may use TF32
    /// (10-bit mantissa, relative error ~5e-4 per product), so 1e-2 of scale.
    #[cfg(feature = "cudnn")]
    #[test]
    fn cudnn_convolutions_match_candle_on_the_cpu() {
        let gpu = Device::new_cuda(0).expect("the cudnn feature's tests need a CUDA device");
        check_against_candle(&gpu, 1e-2);
    }
}
