//! Row-major f32 matrix products on the `gemm` crate (the GEMM candle itself uses), threaded
//! with rayon.

/// A row-major matrix operand, optionally read transposed.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    /// Read as the transpose of the stored matrix.
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    pub fn plain(data: &'a [f32]) -> Self {
        Self {
            data,
            transposed: false,
        }
    }
    pub fn t(data: &'a [f32]) -> Self {
        Self {
            data,
            transposed: true,
        }
    }
    /// (column stride, row stride) of the logical `rows x cols` matrix.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        if self.transposed {
            (rows as isize, 1)
        } else {
            let _ = rows;
            (1, cols as isize)
        }
    }
}

/// `C[m, n] = A[m, k] * B[k, n]` into a new row-major buffer.
pub fn matmul(m: usize, n: usize, k: usize, a: Operand<'_>, b: Operand<'_>) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    matmul_into(&mut c, m, n, k, a, b, false);
    c
}

/// `C[m, n] (+)= A[m, k] * B[k, n]` into `c` (accumulating when `accumulate`).
pub fn matmul_into(
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    accumulate: bool,
) {
    assert_eq!(a.data.len(), m * k, "lhs size");
    assert_eq!(b.data.len(), k * n, "rhs size");
    assert_eq!(c.len(), m * n, "dst size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let (a_cs, a_rs) = a.strides(m, k);
    let (b_cs, b_rs) = b.strides(k, n);
    let threads = rayon::current_num_threads();
    let parallelism = if (m * n * k) < 64 * 64 * 64 || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: the asserts above guarantee every index the strides reach is inside the slices;
    // `c` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `C[m, n] = A[m, k] * B[n, k]^T` for row-major `A` and `B` whose shared dimension `k` is much
/// longer than the result (a weight gradient of a thin layer: every pixel of the batch against
/// a few channels). `gemm` parallelises over the result only, so such products ran on one core;
/// here `k` is split across the threads and the partial products are summed.
pub fn matmul_nt_split_k(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(a.len(), m * k, "lhs size");
    assert_eq!(b.len(), n * k, "rhs size");
    let parts = rayon::current_num_threads().min(k / 1024).max(1);
    if parts == 1 || m == 0 || n == 0 {
        return matmul(m, n, k, Operand::plain(a), Operand::t(b));
    }
    let chunk = k.div_ceil(parts);
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, end) = (p * chunk, ((p + 1) * chunk).min(k));
            let mut c = vec![0f32; m * n];
            if start < end {
                // SAFETY: A is read at rows 0..m, columns start..end (row stride k) and B^T at
                // rows start..end, columns 0..n (B's row stride k): all inside the slices,
                // whose lengths were asserted; `c` is a fresh m x n buffer.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        end - start,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr().add(start),
                        1,
                        k as isize,
                        b.as_ptr().add(start),
                        k as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            c
        })
        .reduce_with(|mut acc, part| {
            acc.iter_mut().zip(&part).for_each(|(x, y)| *x += y);
            acc
        })
        .expect("at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &dyn Fn(usize, usize) -> f32,
        b: &dyn Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a(i, l) * b(l, j)).sum();
            }
        }
        c
    }

    #[test]
    fn all_transpose_combinations_match_the_naive_product() {
        let (m, n, k) = (70, 50, 90);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 13) % 7) as f32 - 3.0).collect();
        let want = naive(m, n, k, &|i, l| a[i * k + l], &|l, j| b[l * n + j]);
        // transposed storage of the same logical matrices
        let at: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
        for (lhs, rhs) in [
            (Operand::plain(&a), Operand::plain(&b)),
            (Operand::t(&at), Operand::plain(&b)),
            (Operand::plain(&a), Operand::t(&bt)),
            (Operand::t(&at), Operand::t(&bt)),
        ] {
            assert_eq!(matmul(m, n, k, lhs, rhs), want);
        }
        let mut acc = want.clone();
        matmul_into(
            &mut acc,
            m,
            n,
            k,
            Operand::plain(&a),
            Operand::plain(&b),
            true,
        );
        assert!(acc.iter().zip(&want).all(|(x, y)| *x == 2.0 * y));
    }

    #[test]
    fn split_k_product_matches_the_naive_product() {
        // Integer-valued inputs keep every partial sum exact, so the split must agree exactly.
        let (m, n, k) = (5, 7, 5000);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 9) as f32 - 4.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 17) % 5) as f32 - 2.0).collect();
        let want = naive(m, n, k, &|i, l| a[i * k + l], &|l, j| b[j * k + l]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| matmul_nt_split_k(m, n, k, &a, &b)), want);
        assert_eq!(
            matmul_nt_split_k(m, n, 10, &a[..m * 10], &b[..n * 10]),
            naive(m, n, 10, &|i, l| a[i * 10 + l], &|l, j| b[j * 10 + l])
        );
    }
}
