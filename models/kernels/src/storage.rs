//! Reading a custom op's CPU operands, and its autograd results.

use candle_core::{CpuStorage, Layout, Tensor};

/// The contiguous f32 data of a custom op's CPU operand (`what` names it in errors).
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        (CpuStorage::F32(_), None) => {
            candle_core::bail!("gantry kernels: {what} must be contiguous")
        }
        _ => candle_core::bail!("gantry kernels: {what} must be f32"),
    }
}

/// The contiguous f32 data of an in-place op's destination.
pub(crate) fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        (CpuStorage::F32(_), None) => {
            candle_core::bail!("gantry kernels: {what} must be contiguous")
        }
        _ => candle_core::bail!("gantry kernels: {what} must be f32"),
    }
}

/// A custom op's `bwd` result: the input and weight gradients, each computed only when autograd
/// tracks that operand.
pub(crate) fn tracked_grads(
    x: &Tensor,
    w: &Tensor,
    input_grad: impl FnOnce() -> candle_core::Result<Tensor>,
    weight_grad: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = x.track_op().then(input_grad).transpose()?;
    let dw = w.track_op().then(weight_grad).transpose()?;
    Ok((dx, dw))
}
