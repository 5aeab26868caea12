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
    let threads = rayon::current_num_threads();
    let parallelism = if (m * n * k) < 64 * 64 * 64 || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let dst = Block {
        ptr: c.as_mut_ptr(),
        row_stride: n,
        accumulate,
    };
    // SAFETY: the asserts above cover the operands; `c` is exclusively borrowed and m x n.
    unsafe { gemm_block(dst, m, n, k, a, b, parallelism) }
}

/// Where [`matmul_block_serial`] writes: an `m x n` block of a larger row-major matrix.
#[derive(Clone, Copy)]
pub struct Block {
    /// The block's first element.
    pub ptr: *mut f32,
    /// Distance between the block's rows.
    pub row_stride: usize,
    /// Add the product to what is there instead of overwriting it.
    pub accumulate: bool,
}

/// `C (+)= A[m, k] * B[k, n]` on one thread into the block `c`.
///
/// # Safety
/// The block must be valid for writes and not accessed by anyone else meanwhile.
pub unsafe fn matmul_block_serial(
    c: Block,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
) {
    assert_eq!(a.data.len(), m * k, "lhs size");
    assert_eq!(b.data.len(), k * n, "rhs size");
    assert!(n <= c.row_stride, "block wider than its matrix");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: operand sizes asserted; the destination block is the caller's promise.
    unsafe { gemm_block(c, m, n, k, a, b, gemm::Parallelism::None) }
}

/// The one call into `gemm`: `C (+)= A * B` into the block `c`.
///
/// # Safety
/// The operands must hold `m x k` and `k x n` matrices (checked by the callers) and the block
/// must be valid for writes and not accessed by anyone else meanwhile.
unsafe fn gemm_block(
    c: Block,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    parallelism: gemm::Parallelism,
) {
    let (a_cs, a_rs) = a.strides(m, k);
    let (b_cs, b_rs) = b.strides(k, n);
    // SAFETY: guaranteed by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            1,
            c.row_stride as isize,
            c.accumulate,
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

    /// Products with an empty dimension: a sum over nothing is zero (and leaves an accumulator
    /// as it is); an empty result is empty.
    #[test]
    fn empty_dimensions_give_zeros_or_nothing() {
        let mut c = vec![5f32; 6];
        let none = Operand::plain(&[]);
        matmul_into(&mut c, 2, 3, 0, none, none, true);
        assert_eq!(c, vec![5.0; 6], "accumulating an empty sum");
        matmul_into(&mut c, 2, 3, 0, none, none, false);
        assert_eq!(c, vec![0.0; 6], "writing an empty sum");
        let twelve = [1f32; 12];
        assert!(matmul(0, 3, 4, none, Operand::plain(&twelve)).is_empty());
        assert!(matmul(3, 0, 4, Operand::plain(&twelve), none).is_empty());
    }
}
