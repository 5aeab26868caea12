//! Fréchet distance between Gaussians fitted to feature sets (FID), in f64 (nalgebra):
//! `FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr sqrt(S1^(1/2) S2 S1^(1/2))`, negative
//! eigenvalues (round-off of PSD matrices) clamped to zero. The symmetric form has the same value
//! as the references' `Tr sqrtm(S1 S2)` (the matrices are similar) and stays real where scipy's
//! `sqrtm` of a rank-deficient product picks up imaginary round-off.
//!
//! With fewer rows than dimensions (2000 samples of 2048 Inception features), the trace term
//! comes from a matrix of the row count's size instead: with `A` the centred rows over
//! `sqrt(n - 1)` (so `S1 = A^T A`), the non-zero eigenvalues of `S1^(1/2) S2 S1^(1/2)` are those
//! of `A S2 A^T`, and `Tr(S1) = |A|_F^2`; only eigenvalues are needed. Otherwise two eigen-
//! decompositions of `dim x dim` matrices (about 10 s each at 2048).

use nalgebra::{DMatrix, DVector};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
    pub count: usize,
}

/// The rows of a feature set, centred and scaled by `1 / sqrt(n - 1)`, with their mean.
fn centred(rows: &[f32], dim: usize) -> (DVector<f64>, DMatrix<f64>) {
    assert!(
        dim > 0 && rows.len() % dim == 0,
        "rows must be whole vectors of {dim}"
    );
    let n = rows.len() / dim;
    let x = DMatrix::from_row_iterator(n, dim, rows.iter().map(|&v| f64::from(v)));
    let mean = DVector::from_iterator(dim, x.column_iter().map(|c| c.sum() / n.max(1) as f64));
    let scale = 1.0 / (n.saturating_sub(1).max(1) as f64).sqrt();
    let mut a = x;
    for (j, mut col) in a.column_iter_mut().enumerate() {
        col.add_scalar_mut(-mean[j]);
        col *= scale;
    }
    (mean, a)
}

impl GaussianStats {
    /// Statistics of `count` row vectors of length `dim` stored one after another (unbiased
    /// covariance, as numpy's `np.cov(rowvar=False)`).
    pub fn from_rows(rows: &[f32], dim: usize) -> Self {
        let (mean, a) = centred(rows, dim);
        Self {
            mean,
            cov: a.transpose() * &a,
            count: rows.len() / dim,
        }
    }

    /// Statistics given as a mean and a row-major `dim x dim` covariance (e.g. read from a
    /// `.npz` file).
    pub fn from_parts(mean: Vec<f64>, cov_rows: &[f64], count: usize) -> Self {
        let dim = mean.len();
        assert_eq!(cov_rows.len(), dim * dim, "covariance must be {dim}x{dim}");
        Self {
            mean: DVector::from_vec(mean),
            cov: DMatrix::from_row_slice(dim, dim, cov_rows),
            count,
        }
    }

    /// The covariance, row-major.
    pub fn cov_rows(&self) -> Vec<f64> {
        self.cov.transpose().as_slice().to_vec()
    }

    /// The mean as a vector.
    pub fn mean_vec(&self) -> Vec<f64> {
        self.mean.as_slice().to_vec()
    }

    /// Length of the feature vectors.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// `sum sqrt(max(l, 0))` over the eigenvalues of a symmetric matrix (its symmetric part).
fn trace_sqrt_eigenvalues(m: &DMatrix<f64>) -> f64 {
    let sym = (m + m.transpose()) * 0.5;
    sym.symmetric_eigenvalues()
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum()
}

/// The symmetric square root `V diag(sqrt(max(l, 0))) V^T` of a symmetric PSD matrix.
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = m.clone().symmetric_eigen();
    let roots = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&roots) * e.eigenvectors.transpose()
}

fn squared_distance(a: &DVector<f64>, b: &DVector<f64>) -> f64 {
    let diff = a - b;
    diff.dot(&diff)
}

/// The Fréchet distance between two Gaussians of the same dimension.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> f64 {
    assert_eq!(a.dim(), b.dim(), "statistics of different dimensions");
    let root_a = sqrt_psd(&a.cov);
    let trace_sqrt = trace_sqrt_eigenvalues(&(&root_a * &b.cov * &root_a));
    (squared_distance(&a.mean, &b.mean) + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt).max(0.0)
}

/// The Fréchet distance between `reference` and the Gaussian of `rows` (of `dim` features),
/// through the row-count-sized matrix when there are fewer rows than dimensions (same value,
/// a fraction of the time).
pub fn frechet_distance_to_rows(reference: &GaussianStats, rows: &[f32], dim: usize) -> f64 {
    assert_eq!(reference.dim(), dim, "statistics of different dimensions");
    let n = rows.len() / dim;
    if n >= dim {
        return frechet_distance(reference, &GaussianStats::from_rows(rows, dim));
    }
    let (mean, a) = centred(rows, dim);
    let trace_sqrt = trace_sqrt_eigenvalues(&(&a * &reference.cov * a.transpose()));
    let trace_rows = a.norm_squared();
    (squared_distance(&mean, &reference.mean) + trace_rows + reference.cov.trace()
        - 2.0 * trace_sqrt)
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_models::init::{normal_vec, rng_for};

    fn gaussian(mean: [f64; 2], cov: [[f64; 2]; 2]) -> GaussianStats {
        GaussianStats::from_parts(
            mean.to_vec(),
            &[cov[0][0], cov[0][1], cov[1][0], cov[1][1]],
            0,
        )
    }

    /// Fewer rows than dimensions: the small-matrix path equals the two-decomposition one. (Broken
    /// on purpose, e.g. `Tr(S1)` from the reference or the product's transpose on the wrong
    /// side, it differs by whole units.)
    #[test]
    fn the_row_space_path_equals_the_full_one() {
        let dim = 40;
        let reference =
            GaussianStats::from_rows(&normal_vec(&mut rng_for(5, "ref"), 60 * dim, 0.0, 1.0), dim);
        for (n, shift) in [(12, 0.0), (25, 0.7), (39, 2.0)] {
            let rows = normal_vec(&mut rng_for(6, "rows"), n * dim, shift, 1.5);
            let full = frechet_distance(&reference, &GaussianStats::from_rows(&rows, dim));
            let fast = frechet_distance_to_rows(&reference, &rows, dim);
            // The full path takes square roots of the round-off eigenvalues (~1e-16) of the
            // rank-deficient covariance, each ~1e-8: measured 1e-8 relative apart.
            assert!(
                (full - fast).abs() < 1e-7 * full.max(1.0),
                "{n}: {full} vs {fast}"
            );
        }
        // Enough rows: the full path itself.
        let rows = normal_vec(&mut rng_for(7, "many"), 50 * dim, 0.0, 1.0);
        assert_eq!(
            frechet_distance_to_rows(&reference, &rows, dim),
            frechet_distance(&reference, &GaussianStats::from_rows(&rows, dim))
        );
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
        // R diag(4, 9) R^T for the rotation R = [[c, -s], [s, c]].
        let (c, s) = (0.6f64, 0.8f64);
        let rotated = gaussian(
            [0.0, 0.0],
            [
                [4.0 * c * c + 9.0 * s * s, (4.0 - 9.0) * c * s],
                [(4.0 - 9.0) * c * s, 4.0 * s * s + 9.0 * c * c],
            ],
        );
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
