//! Kernel Inception Distance (Bińkowski et al. 2018) and improved precision and recall
//! (Kynkäänniemi et al. 2019), in float64 over feature rows.
//!
//! KID is the unbiased MMD² with the polynomial kernel `k(x, y) = (x·y / d + 1)³`, averaged over
//! random subsets of `min(n_real, n_fake, subset_size)` rows of each set (drawn without
//! replacement), reported as the mean and the (population) standard deviation over subsets,
//! as torch-fidelity and clean-fid report it (100 subsets of 1000 by default).
//!
//! Precision is the share of generated rows inside the real manifold (within the distance to
//! its k-th nearest real neighbour of at least one real row), recall the share of real rows
//! inside the generated manifold; k = 3 as in the paper.
//!
//! Both need only the dot products of the rows, so the three Gram matrices are computed once
//! and shared.

use nalgebra::DMatrix as Mat;
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Subsets KID averages over by default.
pub const KID_SUBSETS: usize = 100;
/// Rows per subset by default.
pub const KID_SUBSET_SIZE: usize = 1000;
/// Neighbours that define a manifold's radius.
pub const PR_NEIGHBOURS: usize = 3;

/// KID's mean and standard deviation over subsets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    /// Rows of each set per subset.
    pub subset_size: usize,
    pub subsets: usize,
}

/// Precision and recall.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    pub k: usize,
}

/// Rows of `dim` features as a float64 matrix.
fn matrix(rows: &[f32], dim: usize) -> Mat<f64> {
    let n = rows.len() / dim;
    Mat::from_row_iterator(n, dim, rows.iter().map(|&v| f64::from(v)))
}

/// The dot products of two sets of rows: `real·real`, `fake·fake`, `real·fake`.
pub struct Gram {
    rr: Mat<f64>,
    ff: Mat<f64>,
    rf: Mat<f64>,
    dim: usize,
}

impl Gram {
    /// Gram matrices of `real` and `fake` rows of `dim` features.
    pub fn new(real: &[f32], fake: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && real.len() % dim == 0 && fake.len() % dim == 0);
        let (r, f) = (matrix(real, dim), matrix(fake, dim));
        Self {
            rr: &r * r.transpose(),
            ff: &f * f.transpose(),
            rf: &r * f.transpose(),
            dim,
        }
    }

    fn n_real(&self) -> usize {
        self.rr.nrows()
    }

    fn n_fake(&self) -> usize {
        self.ff.nrows()
    }

    /// KID over `subsets` subsets of at most `subset_size` rows each, drawn from `seed`; `None`
    /// with fewer than two rows in a set.
    pub fn kid(&self, subset_size: usize, subsets: usize, seed: u64) -> Option<Kid> {
        let m = self.n_real().min(self.n_fake()).min(subset_size);
        if m < 2 || subsets == 0 {
            return None;
        }
        let d = self.dim as f64;
        let k = |dot: f64| (dot / d + 1.0).powi(3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f64> = (0..subsets)
            .map(|_| {
                let x = sample(&mut rng, self.n_fake(), m).into_vec();
                let y = sample(&mut rng, self.n_real(), m).into_vec();
                let off_diagonal = |g: &Mat<f64>, idx: &[usize]| -> f64 {
                    let mut sum = 0.0;
                    for (a, &i) in idx.iter().enumerate() {
                        for &j in &idx[a + 1..] {
                            sum += 2.0 * k(g[(i, j)]);
                        }
                    }
                    sum
                };
                let mut cross = 0.0;
                for &i in &y {
                    for &j in &x {
                        cross += k(self.rf[(i, j)]);
                    }
                }
                let mf = m as f64;
                (off_diagonal(&self.ff, &x) + off_diagonal(&self.rr, &y)) / (mf * (mf - 1.0))
                    - 2.0 * cross / (mf * mf)
            })
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        Some(Kid {
            mean,
            std: var.sqrt(),
            subset_size: m,
            subsets,
        })
    }

    /// Precision and recall with `k` neighbours; `None` unless each set has more than `k` rows.
    pub fn precision_recall(&self, k: usize) -> Option<PrecisionRecall> {
        if self.n_real() <= k || self.n_fake() <= k {
            return None;
        }
        let norms = |g: &Mat<f64>| (0..g.nrows()).map(|i| g[(i, i)]).collect::<Vec<_>>();
        let (nr, nf) = (norms(&self.rr), norms(&self.ff));
        let dist2 = |a: f64, b: f64, dot: f64| (a + b - 2.0 * dot).max(0.0);
        // Squared distance to the k-th nearest other row (the row itself is at distance 0).
        let radii = |g: &Mat<f64>, n: &[f64]| -> Vec<f64> {
            (0..n.len())
                .map(|i| {
                    let mut d: Vec<f64> =
                        (0..n.len()).map(|j| dist2(n[i], n[j], g[(i, j)])).collect();
                    d.select_nth_unstable_by(k, f64::total_cmp);
                    d[k]
                })
                .collect()
        };
        let (rr, rf) = (radii(&self.rr, &nr), radii(&self.ff, &nf));
        let precision = (0..nf.len())
            .filter(|&j| (0..nr.len()).any(|i| dist2(nr[i], nf[j], self.rf[(i, j)]) <= rr[i]))
            .count() as f64
            / nf.len() as f64;
        let recall = (0..nr.len())
            .filter(|&i| (0..nf.len()).any(|j| dist2(nr[i], nf[j], self.rf[(i, j)]) <= rf[j]))
            .count() as f64
            / nr.len() as f64;
        Some(PrecisionRecall {
            precision,
            recall,
            k,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_models::init::{normal_vec, rng_for};

    /// KID of a set against itself with every row in the one subset is exactly 0 minus the
    /// diagonal's share: the unbiased estimate of MMD² between identical samples, computed here
    /// by hand for 3 one-dimensional rows.
    #[test]
    fn kid_matches_a_hand_computation() {
        let real = [1.0f32, 2.0, 3.0];
        let fake = [0.0f32, 1.0, 4.0];
        let g = Gram::new(&real, &fake, 1);
        let k = |a: f64, b: f64| (a * b + 1.0).powi(3);
        let pairs = |s: &[f64]| {
            let mut t = 0.0;
            for i in 0..3 {
                for j in 0..3 {
                    if i != j {
                        t += k(s[i], s[j]);
                    }
                }
            }
            t
        };
        let (r, f) = ([1.0, 2.0, 3.0], [0.0, 1.0, 4.0]);
        let mut cross = 0.0;
        for a in r {
            for b in f {
                cross += k(a, b);
            }
        }
        let want = (pairs(&r) + pairs(&f)) / 6.0 - 2.0 * cross / 9.0;
        let got = g.kid(10, 5, 0).unwrap();
        assert!((got.mean - want).abs() < 1e-9, "{} vs {want}", got.mean);
        assert_eq!(got.std, 0.0, "every subset is the whole set");
        assert_eq!(got.subset_size, 3);
    }

    #[test]
    fn kid_separates_shifted_gaussians_and_not_equal_ones() {
        let dim = 8;
        let a = normal_vec(&mut rng_for(1, "a"), 400 * dim, 0.0, 1.0);
        let b = normal_vec(&mut rng_for(2, "b"), 400 * dim, 0.0, 1.0);
        let c = normal_vec(&mut rng_for(3, "c"), 400 * dim, 1.0, 1.0);
        let same = Gram::new(&a, &b, dim).kid(100, 50, 7).unwrap();
        let shifted = Gram::new(&a, &c, dim).kid(100, 50, 7).unwrap();
        assert!(same.mean.abs() < 3.0 * same.std + 1e-3, "{same:?}");
        assert!(shifted.mean > 10.0 * same.std.max(1e-3), "{shifted:?}");
    }

    /// Points on a line: real 0..10, fake 0..5 plus an outlier at 100. With k = 1 the real radii
    /// are 1, so every fake point but the outlier is covered (precision 5/6); the fake radii are
    /// 1 (and 95 for the outlier, whose ball reaches every real point): recall 1.
    #[test]
    fn precision_and_recall_follow_the_definition() {
        let real: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let fake = [0.0f32, 1.0, 2.0, 3.0, 4.0, 100.0];
        let pr = Gram::new(&real, &fake, 1).precision_recall(1).unwrap();
        assert!((pr.precision - 5.0 / 6.0).abs() < 1e-12, "{pr:?}");
        assert_eq!(pr.recall, 1.0);
        // Without the outlier the fake manifold (radius 1 around 0..=4) reaches 5: real 0..=5
        // are covered, 6 of 10.
        let pr = Gram::new(&real, &fake[..5], 1).precision_recall(1).unwrap();
        assert_eq!(pr.precision, 1.0);
        assert!((pr.recall - 0.6).abs() < 1e-12, "{pr:?}");
        assert!(Gram::new(&real, &fake[..1], 1)
            .precision_recall(1)
            .is_none());
    }
}
