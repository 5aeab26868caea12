//! Fréchet distance between Gaussians fitted to feature sets (FID), in f64 with symmetric
//! eigendecompositions (nalgebra):
//! `FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr sqrt(S1^(1/2) S2 S1^(1/2))`, negative
//! eigenvalues (round-off of PSD matrices) clamped to zero.

use nalgebra::{DMatrix, DVector};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
    pub count: usize,
}

impl GaussianStats {
    /// Statistics of `count` row vectors of length `dim` stored one after another (unbiased
    /// covariance).
    pub fn from_rows(rows: &[f32], dim: usize) -> Self {
        assert!(
            dim > 0 && rows.len() % dim == 0,
            "rows must be whole vectors of {dim}"
        );
        let n = rows.len() / dim;
        let x = DMatrix::from_row_iterator(n, dim, rows.iter().map(|&v| v as f64));
        let mean = DVector::from_iterator(dim, x.column_iter().map(|c| c.sum() / n as f64));
        let mut centred = x;
        for (j, mut col) in centred.column_iter_mut().enumerate() {
            col.add_scalar_mut(-mean[j]);
        }
        let cov = centred.transpose() * &centred / (n.saturating_sub(1).max(1)) as f64;
        Self {
            mean,
            cov,
            count: n,
        }
    }
}

/// The symmetric square root `V diag(sqrt(max(l, 0))) V^T` of a symmetric PSD matrix.
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = m.clone().symmetric_eigen();
    let roots = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&roots) * e.eigenvectors.transpose()
}

/// The Fréchet distance between two Gaussians.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> f64 {
    let diff = &a.mean - &b.mean;
    let root_a = sqrt_psd(&a.cov);
    let inner = &root_a * &b.cov * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let trace_sqrt: f64 = inner
        .symmetric_eigen()
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    (diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_models::init::{normal_vec, rng_for};

    fn gaussian(mean: [f64; 2], cov: [[f64; 2]; 2]) -> GaussianStats {
        GaussianStats {
            mean: DVector::from_row_slice(&mean),
            cov: DMatrix::from_row_slice(2, 2, &[cov[0][0], cov[0][1], cov[1][0], cov[1][1]]),
            count: 0,
        }
    }

    #[test]
    fn identical_sets_score_zero() {
        let rows = normal_vec(&mut rng_for(1, "fid"), 500 * 4, 0.0, 1.0);
        let s = GaussianStats::from_rows(&rows, 4);
        assert!(frechet_distance(&s, &s) < 1e-9);
    }

    /// N(0, I) vs N((3, 4), diag(4, 9)): |mu|^2 = 25, Tr = 2 + 13, Tr sqrt(S1 S2) = 2 + 3,
    /// so FID = 25 + 15 - 10 = 30. With a rotation the same holds (traces are invariant):
    /// N(0, I) vs N(0, R diag(4, 9) R^T) gives 0 + 15 - 10 = 5.
    #[test]
    fn closed_form_two_dimensional_gaussians() {
        let a = gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]);
        let b = gaussian([3.0, 4.0], [[4.0, 0.0], [0.0, 9.0]]);
        assert!((frechet_distance(&a, &b) - 30.0).abs() < 1e-9);
        let (c, s) = (0.6f64, 0.8f64);
        let r = DMatrix::from_row_slice(2, 2, &[c, -s, s, c]);
        let cov =
            &r * DMatrix::from_diagonal(&DVector::from_row_slice(&[4.0, 9.0])) * r.transpose();
        let rotated = GaussianStats {
            mean: DVector::zeros(2),
            cov,
            count: 0,
        };
        assert!((frechet_distance(&a, &rotated) - 5.0).abs() < 1e-9);
        // Non-commuting covariances: compare with the formula evaluated by hand via
        // Tr sqrt(S1^(1/2) S2 S1^(1/2)) for S1 = diag(1, 4): sqrt(S1) = diag(1, 2).
        let s1 = gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 4.0]]);
        let s2 = gaussian([1.0, 0.0], [[2.0, 1.0], [1.0, 2.0]]);
        // M = diag(1,2) [[2,1],[1,2]] diag(1,2) = [[2,2],[2,8]]; eigenvalues 5 +- sqrt(13).
        let tr_sqrt = (5.0 + 13f64.sqrt()).sqrt() + (5.0 - 13f64.sqrt()).sqrt();
        let want = 1.0 + 5.0 + 4.0 - 2.0 * tr_sqrt;
        assert!((frechet_distance(&s1, &s2) - want).abs() < 1e-9);
    }

    #[test]
    fn sampled_statistics_approach_the_closed_form() {
        let n = 20000;
        let z = normal_vec(&mut rng_for(2, "a"), n * 2, 0.0, 1.0);
        let w = normal_vec(&mut rng_for(3, "b"), n * 2, 0.0, 1.0);
        let b_rows: Vec<f32> = w
            .chunks(2)
            .flat_map(|p| [3.0 + 2.0 * p[0], 4.0 + 3.0 * p[1]])
            .collect();
        let fid = frechet_distance(
            &GaussianStats::from_rows(&z, 2),
            &GaussianStats::from_rows(&b_rows, 2),
        );
        assert!((fid - 30.0).abs() < 0.6, "{fid}");
    }
}
