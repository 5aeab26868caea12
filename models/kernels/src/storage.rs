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

#[cfg(test)]
mod tests {
    use candle_core::{CpuStorage, Layout, Shape};

    use super::*;

    #[test]
    fn operands_are_read_at_their_offset_and_refused_when_strided_or_not_f32() {
        let data = CpuStorage::F32((0..12).map(|v| v as f32).collect());
        let shape = Shape::from((2, 3));
        // A view starting at element 5 (as a narrowed tensor's storage is).
        let view = Layout::contiguous_with_offset(&shape, 5);
        assert_eq!(
            f32_slice(&data, &view, "x").unwrap(),
            [5., 6., 7., 8., 9., 10.]
        );
        let mut owned = data.clone();
        f32_slice_mut(&mut owned, &view, "x").unwrap()[0] = -1.0;
        assert_eq!(f32_slice(&owned, &view, "x").unwrap()[0], -1.0);

        // The error message of a refused operand.
        fn refusal<T>(read: candle_core::Result<T>) -> String {
            read.err().expect("the operand is refused").to_string()
        }
        let strided = Layout::contiguous(&shape).transpose(0, 1).unwrap();
        let err = refusal(f32_slice(&data, &strided, "the moment"));
        assert!(err.contains("the moment must be contiguous"), "{err}");
        let err = refusal(f32_slice_mut(&mut owned, &strided, "the parameter"));
        assert!(err.contains("the parameter must be contiguous"), "{err}");

        let mut doubles = CpuStorage::F64(vec![0.0; 6]);
        let plain = Layout::contiguous(&shape);
        let err = refusal(f32_slice(&doubles, &plain, "the gradient"));
        assert!(err.contains("the gradient must be f32"), "{err}");
        let err = refusal(f32_slice_mut(&mut doubles, &plain, "the gradient"));
        assert!(err.contains("the gradient must be f32"), "{err}");
    }
}
