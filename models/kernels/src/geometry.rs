//! The shapes of a convolution and its three primitives (cuDNN's names): what the NCHW layer
//! ops ([`crate::nchw`]) plan and the cuDNN launcher runs.

use crate::gemm_conv::{ConvKind, ConvParams};

/// One of the three convolution primitives (cuDNN's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Primitive {
    /// `(x, w) -> y`
    Forward,
    /// `(dy, w) -> dx`
    BackwardData,
    /// `(x, dy) -> dw`
    BackwardFilter,
}

/// The shapes of the underlying convolution `x * w -> y` (NCHW, filter KCRS), padding, stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub(crate) x: [usize; 4],
    pub(crate) w: [usize; 4],
    pub(crate) y: [usize; 4],
    pub(crate) padding: usize,
    pub(crate) stride: usize,
}

impl Geometry {
    /// The convolution underlying layer `p` applied to an NCHW `input` with weight `weight`
    /// (checked against each other).
    pub(crate) fn of_layer(
        p: ConvParams,
        input: &[usize],
        weight: &[usize],
    ) -> candle_core::Result<Self> {
        let ([n, c, h, w], Ok(weight4)) = (input, <[usize; 4]>::try_from(weight)) else {
            candle_core::bail!(
                "gantry nchw conv expects 4-D input and weight, got {input:?} and {weight:?}"
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
    pub(crate) fn output(&self, prim: Primitive) -> [usize; 4] {
        match prim {
            Primitive::Forward => self.y,
            Primitive::BackwardData => self.x,
            Primitive::BackwardFilter => self.w,
        }
    }

    /// The shapes a primitive takes, in operand order.
    pub(crate) fn operands(&self, prim: Primitive) -> ([usize; 4], [usize; 4]) {
        match prim {
            Primitive::Forward => (self.x, self.w),
            Primitive::BackwardData => (self.y, self.w),
            Primitive::BackwardFilter => (self.x, self.y),
        }
    }
}
