//! Convolution and transposed convolution as candle custom ops built on im2col/col2im + GEMM,
//! forward and backward, on channel-major tensors (`[C, B, H, W]`).
//!
//! For a convolution `x [Ci, B, H, W] -> y [Co, B, Ho, Wo]` with weight `W [Co, Ci*k*k]` and
//! `cols = im2col(x)` (`[Ci*k*k, B*Ho*Wo]`):
//! - forward: `Y = W * cols` (already channel-major: no permute)
//! - input gradient: `col2im(W^T * dY)`
//! - weight gradient: `dY * cols^T`
//!
//! The products run cache-blocked over groups of images ([`crate::tiled`]).
//!
//! A transposed convolution is the adjoint of the convolution that maps its output back to its
//! input, so its forward is the convolution's input gradient and vice versa.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::im2col::Window;
use crate::storage::{f32_slice, tracked_grads};
use crate::tiled;

/// Convolution direction of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A strided convolution (downsampling, weight `[out, in, k, k]`).
    Conv,
    /// A transposed convolution (upsampling, weight `[in, out, k, k]`).
    ConvTranspose,
}

/// Static description of one convolution layer as the kernels need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub kind: ConvKind,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// The shapes of one call: batch, channels and sides of input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl Dims {
    /// The output's shape, `[C_out, B, H_out, W_out]`.
    pub(crate) fn out_shape(&self) -> Shape {
        Shape::from((self.c_out, self.batch, self.h_out, self.w_out))
    }
}

impl ConvParams {
    fn out_side(&self, side: usize) -> usize {
        match self.kind {
            ConvKind::Conv => (side + 2 * self.padding - self.kernel) / self.stride + 1,
            ConvKind::ConvTranspose => (side - 1) * self.stride + self.kernel - 2 * self.padding,
        }
    }

    /// The shapes of a call on a channel-major `x` with weight `w`, checked against each other.
    pub(crate) fn dims(&self, x: &[usize], w: &[usize]) -> candle_core::Result<Dims> {
        let ([ci, b, h, wi], [w0, w1, kh, kw]) = (x, w) else {
            candle_core::bail!("gantry conv expects 4-D input and weight, got {x:?} and {w:?}");
        };
        let (wci, co) = match self.kind {
            ConvKind::Conv => (*w1, *w0),
            ConvKind::ConvTranspose => (*w0, *w1),
        };
        if wci != *ci || *kh != self.kernel || *kw != self.kernel {
            candle_core::bail!(
                "gantry conv: weight {w:?} does not fit input {x:?} ({:?})",
                self.kind
            );
        }
        if self.kind == ConvKind::Conv
            && (*h + 2 * self.padding < self.kernel || *wi + 2 * self.padding < self.kernel)
        {
            candle_core::bail!("gantry conv: input {x:?} is smaller than the kernel");
        }
        Ok(Dims {
            batch: *b,
            c_in: *ci,
            c_out: co,
            h_in: *h,
            w_in: *wi,
            h_out: self.out_side(*h),
            w_out: self.out_side(*wi),
        })
    }

    /// The window of the underlying convolution: over the input for `Conv`, over the output
    /// for `ConvTranspose`.
    fn window(&self, d: &Dims) -> Window {
        let (channels, height, width, col_height, col_width) = match self.kind {
            ConvKind::Conv => (d.c_in, d.h_in, d.w_in, d.h_out, d.w_out),
            ConvKind::ConvTranspose => (d.c_out, d.h_out, d.w_out, d.h_in, d.w_in),
        };
        Window {
            batch: d.batch,
            channels,
            height,
            width,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            col_height,
            col_width,
        }
    }

    /// The forward pass on a custom op's operands (input, weight): the output and the shapes,
    /// timed as this layer's `fwd` kernel.
    pub(crate) fn forward_storage(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(Vec<f32>, Dims)> {
        let d = self.dims(l1.dims(), l2.dims())?;
        let _span = span(self, "fwd", &d);
        let y = self.forward(
            f32_slice(s1, l1, "input")?,
            f32_slice(s2, l2, "weight")?,
            &d,
        );
        Ok((y, d))
    }

    /// `y` from `x` and `w`.
    pub(crate) fn forward(&self, x: &[f32], w: &[f32], d: &Dims) -> Vec<f32> {
        let win = self.window(d);
        match self.kind {
            ConvKind::Conv => tiled::unfold_matmul(x, &win, w, d.c_out),
            ConvKind::ConvTranspose => tiled::matmul_fold(x, d.c_in, &win, w),
        }
    }

    /// Gradient with respect to `x` from `dy` and `w`.
    fn input_grad(&self, dy: &[f32], w: &[f32], d: &Dims) -> Vec<f32> {
        let win = self.window(d);
        match self.kind {
            ConvKind::Conv => tiled::matmul_fold(dy, d.c_out, &win, w),
            ConvKind::ConvTranspose => tiled::unfold_matmul(dy, &win, w, d.c_in),
        }
    }

    /// Gradient with respect to `w` from `x` and `dy` (see [`tiled::weight_grad`]).
    fn weight_grad(&self, x: &[f32], dy: &[f32], d: &Dims) -> Vec<f32> {
        let win = self.window(d);
        let (image, channels, other) = match self.kind {
            ConvKind::Conv => (x, d.c_out, dy),
            ConvKind::ConvTranspose => (dy, d.c_in, x),
        };
        tiled::weight_grad(image, &win, other, channels)
    }
}

/// Profiler span of a kernel call, named by [`span_name`].
fn span(p: &ConvParams, phase: &'static str, d: &Dims) -> crate::profile::Timer {
    crate::profile::Timer::start(|| span_name(p, phase, d))
}

/// The name of a kernel call's profiler span: `conv |convT CixHxW -> CoxHoxWo phase`.
fn span_name(p: &ConvParams, phase: &str, d: &Dims) -> String {
    let kind = if p.kind == ConvKind::Conv {
        "conv "
    } else {
        "convT"
    };
    format!(
        "{kind} {}x{}x{} -> {}x{}x{} {phase}",
        d.c_in, d.h_in, d.w_in, d.c_out, d.h_out, d.w_out
    )
}

/// Forward op: `(x, w) -> y`.
struct ConvForward(ConvParams);
/// `(dy, w) -> dx`, `x_shape` fixing the output shape.
struct ConvInputGrad(ConvParams, [usize; 4]);
/// `(x, dy) -> dw`, `w_shape` fixing the output shape.
struct ConvWeightGrad(ConvParams, [usize; 4]);

impl CustomOp2 for ConvForward {
    fn name(&self) -> &'static str {
        "gantry-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, d) = self.0.forward_storage(s1, l1, s2, l2)?;
        Ok((CpuStorage::F32(y), d.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        grads(self.0, x, w, &dy.contiguous()?)
    }
}

/// The gradients of a convolution's input and weight (those autograd tracks) from the gradient
/// `dy` (contiguous) of its output.
pub(crate) fn grads(
    p: ConvParams,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let shape4 = |t: &Tensor| -> candle_core::Result<[usize; 4]> {
        t.dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg("4-D tensor expected".into()))
    };
    tracked_grads(
        x,
        w,
        || dy.apply_op2_no_bwd(w, &ConvInputGrad(p, shape4(x)?)),
        || x.apply_op2_no_bwd(dy, &ConvWeightGrad(p, shape4(w)?)),
    )
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "gantry-conv-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0.dims(&self.1, l2.dims())?;
        if l1.dims() != [d.c_out, d.batch, d.h_out, d.w_out] {
            candle_core::bail!(
                "gantry conv: gradient shape {:?} does not match the output",
                l1.dims()
            );
        }
        let _span = span(&self.0, "bwd-input", &d);
        let dx = self.0.input_grad(
            f32_slice(s1, l1, "gradient")?,
            f32_slice(s2, l2, "weight")?,
            &d,
        );
        Ok((CpuStorage::F32(dx), Shape::from(self.1.to_vec())))
    }
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "gantry-conv-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0.dims(l1.dims(), &self.1)?;
        if l2.dims() != [d.c_out, d.batch, d.h_out, d.w_out] {
            candle_core::bail!(
                "gantry conv: gradient shape {:?} does not match the output",
                l2.dims()
            );
        }
        let _span = span(&self.0, "bwd-weight", &d);
        let dw = self.0.weight_grad(
            f32_slice(s1, l1, "input")?,
            f32_slice(s2, l2, "gradient")?,
            &d,
        );
        Ok((CpuStorage::F32(dw), Shape::from(self.1.to_vec())))
    }
}

/// Applies the convolution (or transposed convolution) `p` to a channel-major `x`
/// (`[C, B, H, W]`), with candle autograd support.
pub fn gemm_conv(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, ConvForward(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(kernel: usize, padding: usize) -> ConvParams {
        ConvParams {
            kind: ConvKind::Conv,
            kernel,
            stride: 1,
            padding,
        }
    }

    #[test]
    fn dims_read_both_layouts_and_the_output_sides() {
        let d = conv(3, 1).dims(&[2, 4, 5, 6], &[7, 2, 3, 3]).unwrap();
        let want = Dims {
            batch: 4,
            c_in: 2,
            c_out: 7,
            h_in: 5,
            w_in: 6,
            h_out: 5,
            w_out: 6,
        };
        assert_eq!(d, want);
        let transposed = ConvParams {
            kind: ConvKind::ConvTranspose,
            kernel: 4,
            stride: 2,
            padding: 1,
        };
        let d = transposed.dims(&[2, 4, 5, 6], &[2, 7, 4, 4]).unwrap();
        assert_eq!((d.c_in, d.c_out, d.h_out, d.w_out), (2, 7, 10, 12));
        // The smallest input a padded kernel still covers, on each side.
        let d = conv(3, 1).dims(&[2, 1, 1, 1], &[7, 2, 3, 3]).unwrap();
        assert_eq!((d.h_out, d.w_out), (1, 1));
        let d = conv(3, 0).dims(&[2, 1, 3, 3], &[7, 2, 3, 3]).unwrap();
        assert_eq!((d.h_out, d.w_out), (1, 1));
    }

    #[test]
    fn dims_refuse_each_mismatch_on_its_own() {
        let p = conv(3, 1);
        let refused = |x: &[usize], w: &[usize]| p.dims(x, w).unwrap_err().to_string();
        let x = [2, 4, 5, 6];
        for w in [[7, 3, 3, 3], [7, 2, 2, 3], [7, 2, 3, 2]] {
            assert!(refused(&x, &w).contains("does not fit"), "{w:?}");
        }
        assert!(refused(&[2, 4, 5], &[7, 2, 3, 3]).contains("4-D"));
        let unpadded = conv(3, 0);
        for x in [[2, 4, 2, 6], [2, 4, 6, 2]] {
            let err = unpadded.dims(&x, &[7, 2, 3, 3]).unwrap_err().to_string();
            assert!(err.contains("smaller than the kernel"), "{x:?}: {err}");
        }
    }

    #[test]
    fn span_names_say_the_direction_and_the_shapes() {
        let d = conv(3, 1).dims(&[2, 4, 5, 6], &[7, 2, 3, 3]).unwrap();
        assert_eq!(
            span_name(&conv(3, 1), "fwd", &d),
            "conv  2x5x6 -> 7x5x6 fwd"
        );
        let transposed = ConvParams {
            kind: ConvKind::ConvTranspose,
            ..conv(3, 1)
        };
        assert_eq!(
            span_name(&transposed, "bwd-input", &d),
            "convT 2x5x6 -> 7x5x6 bwd-input"
        );
    }
}
