//! Latent vectors: seeded normal draws, truncation, spherical interpolation.

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::request::MIN_TRUNCATION;

/// A reproducible stream of latent vectors: the same seed always yields the same sequence, so
/// image `i` of a run does not depend on the batch size.
pub struct LatentStream {
    rng: ChaCha8Rng,
    dim: usize,
    truncation: Option<f32>,
}

impl LatentStream {
    /// Latents of `dim` values from `seed`; with `truncation`, each value whose magnitude exceeds
    /// it is redrawn (the truncation trick: less variety, higher fidelity). A threshold below
    /// [`MIN_TRUNCATION`] (or not a number) is raised to it, so that drawing always ends.
    pub fn new(seed: u64, dim: usize, truncation: Option<f32>) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            dim,
            truncation: truncation.map(|t| {
                if t >= MIN_TRUNCATION {
                    t
                } else {
                    MIN_TRUNCATION
                }
            }),
        }
    }

    fn draw(&mut self) -> f32 {
        loop {
            let v: f32 = StandardNormal.sample(&mut self.rng);
            match self.truncation {
                Some(t) if v.abs() > t => continue,
                _ => return v,
            }
        }
    }

    /// The next `n` latents as `[n, dim]`.
    pub fn next_batch(&mut self, n: usize) -> Array2<f32> {
        Array2::from_shape_simple_fn((n, self.dim), || self.draw())
    }
}

/// Spherical interpolation between `a` and `b` at `t` in [0, 1] (linear when they are parallel).
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = (dot / (na * nb).max(1e-12)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let t = t as f64;
    let (wa, wb) = if omega.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (
            ((1.0 - t) * omega).sin() / omega.sin(),
            (t * omega).sin() / omega.sin(),
        )
    };
    a.iter()
        .zip(b)
        .map(|(x, y)| (wa * *x as f64 + wb * *y as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_seeded_and_batch_independent() {
        let all = LatentStream::new(5, 3, None).next_batch(4);
        let mut s = LatentStream::new(5, 3, None);
        let first = s.next_batch(1);
        let rest = s.next_batch(3);
        assert_eq!(all.row(0), first.row(0));
        assert_eq!(all.row(3), rest.row(2));
        assert_ne!(LatentStream::new(6, 3, None).next_batch(1), first);
    }

    #[test]
    fn truncation_bounds_every_value() {
        let z = LatentStream::new(1, 100, Some(0.5)).next_batch(50);
        assert!(z.iter().all(|v| v.abs() <= 0.5));
        // A threshold too small to reach (or NaN) is raised to the minimum instead of hanging.
        for t in [1e-8, 0.0, f32::NAN] {
            let z = LatentStream::new(1, 100, Some(t)).next_batch(2);
            assert!(z.iter().all(|v| v.abs() <= MIN_TRUNCATION), "{t}");
        }
    }

    fn angle(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        (dot / (norm(a) * norm(b))).clamp(-1.0, 1.0).acos()
    }

    /// On unit vectors at any angle, slerp walks the great circle at constant speed: the point
    /// at `t` has norm 1, lies `t * omega` from `a` and `(1 - t) * omega` from `b`.
    #[test]
    fn slerp_walks_the_great_circle_at_constant_speed() {
        let unit = |v: [f32; 3]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.map(|x| x / n)
        };
        for (a, b) in [
            (unit([1.0, 2.0, 0.5]), unit([-0.3, 1.0, 3.0])),
            (unit([1.0, 0.0, 0.0]), unit([-0.9, 0.1, 0.0])),
        ] {
            let omega = angle(&a, &b);
            for t in [0.1f32, 0.3, 0.5, 0.8] {
                let p = slerp(&a, &b, t);
                let norm = p.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "norm {norm} at {t}");
                assert!(
                    (angle(&a, &p) - t as f64 * omega).abs() < 1e-4,
                    "from a at {t}"
                );
                assert!(
                    (angle(&p, &b) - (1.0 - t as f64) * omega).abs() < 1e-4,
                    "to b at {t}"
                );
            }
        }
        // Vectors of any length: the sine-weighted sum of the two, the weights set by their angle.
        let (a, b) = ([2.0f32, 0.0, 1.0], [0.0f32, 3.0, 3.0]);
        let omega = angle(&a, &b);
        for t in [0.2f32, 0.6] {
            let (wa, wb) = (
                ((1.0 - t as f64) * omega).sin() / omega.sin(),
                (t as f64 * omega).sin() / omega.sin(),
            );
            let p = slerp(&a, &b, t);
            for i in 0..3 {
                let want = wa * a[i] as f64 + wb * b[i] as f64;
                assert!((p[i] as f64 - want).abs() < 1e-5, "{p:?} at {t}");
            }
        }
        // Parallel vectors: the straight line, no division by sin(0).
        let a = [0.5f32, -1.0, 2.0];
        let b = [1.0f32, -2.0, 4.0];
        for t in [0.0f32, 0.25, 1.0] {
            let p = slerp(&a, &b, t);
            for i in 0..3 {
                assert!(
                    (p[i] - (a[i] + t * (b[i] - a[i]))).abs() < 1e-6,
                    "{p:?} at {t}"
                );
            }
        }
    }

    #[test]
    fn slerp_hits_the_ends_and_keeps_the_norm_of_orthogonal_unit_vectors() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        assert_eq!(slerp(&a, &b, 0.0), vec![1.0, 0.0]);
        let end = slerp(&a, &b, 1.0);
        assert!((end[0]).abs() < 1e-6 && (end[1] - 1.0).abs() < 1e-6);
        let mid = slerp(&a, &b, 0.5);
        let norm = (mid[0] * mid[0] + mid[1] * mid[1]).sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{mid:?}");
    }
}
