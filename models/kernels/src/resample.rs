//! 2x resampling of the last two axes of a `[A, B, H, W]` tensor (either layout: every plane
//! is resampled alone) with hand-written backward passes: nearest-neighbour upsampling, whose
//! gradient sums each 2x2 cell, and 2x2 average pooling, whose gradient spreads a quarter to
//! each pixel of its cell. candle's broadcast/reshape versions of the same maps allocate and
//! reduce through generic strided loops; these are one pass over each plane.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::f32_slice;

/// Planes and their side lengths of a 4-d layout.
fn planes(l: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize)> {
    match *l.dims() {
        [a, b, h, w] => Ok((a * b, h, w)),
        ref d => candle_core::bail!("gantry {what}: expected 4 dims, got {d:?}"),
    }
}

/// `up[y][x] = x[y / 2][x / 2]` for one plane of side `h x w`.
fn upsample_plane(src: &[f32], dst: &mut [f32], w: usize) {
    for (y, row) in dst.chunks_mut(2 * w).enumerate() {
        let from = &src[(y / 2) * w..(y / 2 + 1) * w];
        for (pair, &v) in row.chunks_mut(2).zip(from) {
            pair[0] = v;
            pair[1] = v;
        }
    }
}

/// `out[y][x] = scale * (sum of the 2x2 cell at (2y, 2x))` for one plane of side `h x w`.
fn cell_sum_plane(src: &[f32], dst: &mut [f32], w: usize, scale: f32) {
    let half = w / 2;
    for (y, row) in dst.chunks_mut(half).enumerate() {
        let (top, bottom) = (
            &src[2 * y * w..(2 * y + 1) * w],
            &src[(2 * y + 1) * w..(2 * y + 2) * w],
        );
        for (x, v) in row.iter_mut().enumerate() {
            *v = scale * (top[2 * x] + top[2 * x + 1] + bottom[2 * x] + bottom[2 * x + 1]);
        }
    }
}

/// Applies `f(src_plane, dst_plane)` to every plane in parallel.
fn per_plane(
    src: &[f32],
    n: usize,
    out_plane: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let in_plane = src.len() / n.max(1);
    let mut out = vec![0f32; n * out_plane];
    out.par_chunks_mut(out_plane)
        .zip(src.par_chunks(in_plane))
        .for_each(|(dst, src)| f(src, dst));
    out
}

/// Nearest-neighbour x2 upsampling.
struct Upsample;

/// 2x2 average pooling.
struct AvgPool;

/// The backward pass of [`Upsample`]: each 2x2 cell's gradient summed.
struct CellSum;

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "gantry-upsample-nearest2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = planes(l, "upsample")?;
        let x = f32_slice(s, l, "upsample input")?;
        let y = per_plane(x, n, 4 * h * w, |src, dst| upsample_plane(src, dst, w));
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&CellSum)?))
    }
}

impl CustomOp1 for CellSum {
    fn name(&self) -> &'static str {
        "gantry-cell-sum2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = planes(l, "cell sum")?;
        let x = f32_slice(s, l, "cell sum input")?;
        let y = per_plane(x, n, h * w / 4, |src, dst| cell_sum_plane(src, dst, w, 1.0));
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], h / 2, w / 2))))
    }
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "gantry-avg-pool2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = planes(l, "average pooling")?;
        let x = f32_slice(s, l, "average pooling input")?;
        let y = per_plane(x, n, h * w / 4, |src, dst| {
            cell_sum_plane(src, dst, w, 0.25)
        });
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], h / 2, w / 2))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            (dy.contiguous()?.apply_op1_no_bwd(&Upsample)? * 0.25)?,
        ))
    }
}

/// Nearest-neighbour x2 upsampling of a CPU `[A, B, H, W]` tensor -> `[A, B, 2H, 2W]`.
pub fn upsample_nearest2x(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample)
}

/// 2x2 average pooling of a CPU `[A, B, H, W]` tensor (even sides) -> `[A, B, H/2, W/2]`.
pub fn avg_pool2x(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("gantry average pooling: odd side {h}x{w}");
    }
    x.contiguous()?.apply_op1(AvgPool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::max_abs_diff;
    use candle_core::{Device, Var};

    fn sample(dims: (usize, usize, usize, usize)) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The gradient of `sum(y * weights)` with respect to `x`.
    fn gradient(x: &Var, y: Tensor, weights: &Tensor) -> Tensor {
        let grads = (y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        grads.get(x).unwrap().clone()
    }

    /// Values and gradients equal candle's own ops: `upsample_nearest2d` and `avg_pool2d`
    /// (whose backward passes candle implements independently), for a non-square plane.
    #[test]
    fn resampling_equals_candles_ops_forward_and_backward() {
        let x = Var::from_tensor(&sample((2, 3, 4, 6))).unwrap();
        let weights = sample((2, 3, 8, 12)).affine(0.1, 0.3).unwrap();
        let ours = upsample_nearest2x(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().upsample_nearest2d(8, 12).unwrap();
        assert_eq!(max_abs_diff(&ours, &theirs), 0.0);
        let (a, b) = (gradient(&x, ours, &weights), gradient(&x, theirs, &weights));
        assert!(max_abs_diff(&a, &b) < 1e-5, "upsample gradient");

        let x = Var::from_tensor(&sample((2, 3, 8, 12))).unwrap();
        let weights = sample((2, 3, 4, 6)).affine(0.1, -0.2).unwrap();
        let ours = avg_pool2x(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().avg_pool2d(2).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-6);
        let (a, b) = (gradient(&x, ours, &weights), gradient(&x, theirs, &weights));
        assert!(max_abs_diff(&a, &b) < 1e-6, "pooling gradient");
        assert!(avg_pool2x(&sample((1, 1, 3, 4))).is_err());
    }
}
