//! The custom kernels against candle's own operations and against finite differences.

use candle_core::{Device, Tensor, Var};

use rand::SeedableRng;
use rand_distr::Distribution;

use crate::{gemm_conv, ConvKind, ConvParams};

/// `n` standard normal values from `seed` (test data).
pub(crate) fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect()
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    })
}

pub(crate) fn randn(shape: &[usize], seed: &str) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(normal(n, seed_of(seed)), shape, &Device::Cpu).unwrap()
}

/// The largest absolute difference between two tensors of one shape (shared by the crate's
/// tests).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// candle's convolution of a channel-major `x`, returned channel-major.
pub(crate) fn candle_conv(x: &Tensor, w: &Tensor, p: ConvParams) -> Tensor {
    let x = x.transpose(0, 1).unwrap();
    let y = match p.kind {
        ConvKind::Conv => x.conv2d(w, p.padding, p.stride, 1, 1).unwrap(),
        ConvKind::ConvTranspose => x.conv_transpose2d(w, p.padding, 0, p.stride, 1).unwrap(),
    };
    y.transpose(0, 1).unwrap()
}

/// (channel-major input shape, weight shape, params) covering every DCGAN layer shape family
/// and the ResNet's 3x3 and 1x1 convolutions (the latter unpadded with many positions: not the
/// whole-image fast path).
pub(crate) fn cases() -> Vec<([usize; 4], [usize; 4], ConvParams)> {
    let p = |kind, stride, padding| ConvParams {
        kind,
        kernel: 4,
        stride,
        padding,
    };
    let resnet = |kernel, padding| ConvParams {
        kind: ConvKind::Conv,
        kernel,
        stride: 1,
        padding,
    };
    vec![
        ([4, 2, 6, 6], [3, 4, 3, 3], resnet(3, 1)),
        ([4, 2, 5, 5], [3, 4, 1, 1], resnet(1, 0)),
        ([5, 3, 1, 1], [5, 6, 4, 4], p(ConvKind::ConvTranspose, 1, 0)),
        ([6, 3, 4, 4], [6, 4, 4, 4], p(ConvKind::ConvTranspose, 2, 1)),
        ([4, 2, 8, 8], [4, 3, 4, 4], p(ConvKind::ConvTranspose, 2, 1)),
        ([3, 3, 16, 16], [5, 3, 4, 4], p(ConvKind::Conv, 2, 1)),
        ([5, 2, 8, 8], [7, 5, 4, 4], p(ConvKind::Conv, 2, 1)),
        ([7, 3, 4, 4], [1, 7, 4, 4], p(ConvKind::Conv, 1, 0)),
    ]
}

/// Forward and both gradients equal candle's conv2d / conv_transpose2d (float tolerance: the
/// sums are reordered, so agreement is to ~1e-6 relative on O(1) values; 1e-4 absolute is
/// loose enough for the longest sums here (K = 112) yet catches any indexing error).
#[test]
fn forward_and_gradients_match_candle() {
    for (xs, ws, p) in cases() {
        let x = Var::from_tensor(&randn(&xs, "x")).unwrap();
        let w = Var::from_tensor(&randn(&ws, "w")).unwrap();
        let ours = gemm_conv(x.as_tensor(), w.as_tensor(), p).unwrap();
        let theirs = candle_conv(x.as_tensor(), w.as_tensor(), p);
        assert_eq!(ours.dims(), theirs.dims(), "{p:?}");
        assert!(max_abs_diff(&ours, &theirs) < 1e-4, "forward {p:?}");
        // A random linear functional of the output makes every output element matter.
        let probe = randn(ours.dims(), "probe");
        let g_ours = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_theirs = (theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let a = g_ours.get(v.as_tensor()).unwrap();
            let b = g_theirs.get(v.as_tensor()).unwrap();
            assert!(max_abs_diff(a, b) < 1e-4, "gradient {p:?} {:?}", v.dims());
        }
    }
}

/// Gradients equal central finite differences of the loss `sum(gemm_conv(x, w) * probe)` (computed
/// in f64 from f32 evaluations with step 1e-2; the loss is linear in each argument, so the
/// difference quotient is exact up to f32 rounding of the loss, ~1e-3 here).
#[test]
fn gradients_match_finite_differences() {
    for (xs, ws, p) in cases() {
        let x = Var::from_tensor(&randn(&xs, "fx")).unwrap();
        let w = Var::from_tensor(&randn(&ws, "fw")).unwrap();
        let y = gemm_conv(x.as_tensor(), w.as_tensor(), p).unwrap();
        let probe = randn(y.dims(), "fprobe");
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            let y = gemm_conv(x, w, p).unwrap();
            (y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (which, v) in [("x", &x), ("w", &w)] {
            let g: Vec<f32> = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
                let eps = 1e-2f32;
                let shifted = |delta: f32| {
                    let mut data = base.clone();
                    data[idx] += delta;
                    Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap()
                };
                let (plus, minus) = (shifted(eps), shifted(-eps));
                let fd = if which == "x" {
                    (loss(&plus, w.as_tensor()) - loss(&minus, w.as_tensor())) / (2.0 * eps as f64)
                } else {
                    (loss(x.as_tensor(), &plus) - loss(x.as_tensor(), &minus)) / (2.0 * eps as f64)
                };
                assert!(
                    (fd - g[idx] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
                    "{which}[{idx}] {p:?}: fd {fd} vs {}",
                    g[idx]
                );
            }
        }
    }
}

/// Inputs that need no gradient get none (the discriminator's real images, frozen weights).
#[test]
fn untracked_arguments_get_no_gradient() {
    let (xs, ws, p) = cases()[3];
    let x = randn(&xs, "ux");
    let w = Var::from_tensor(&randn(&ws, "uw")).unwrap();
    let g = gemm_conv(&x, w.as_tensor(), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(w.as_tensor()).is_some());
}
