//! Bounds-checked strided F32 matrix views over the `gemm` crate (candle's own CPU matmul
//! engine), for the fused CPU kernels.
//!
//! candle's `matmul` allocates and zero-fills a fresh output per call and cannot accumulate
//! into an existing buffer or read a head out of a `[b, s, heads·d]` tensor without a copy;
//! the kernels here need all three. `unsafe` is confined to [`gemm()`], after checking that
//! every element the views address lies inside their slices.

use candle_core::{Result, bail};

/// A read-only `rows × cols` matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with row stride `rs` (a sub-matrix of a wider buffer when `rs > cols`).
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// Contiguous row-major.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::rows(data, rows, cols, cols)
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// A writable `rows × cols` row-major matrix with row stride `rs`.
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> MatMut<'a> {
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
        }
    }

    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::rows(data, rows, cols, cols)
    }
}

/// Whether a matrix product may spread over rayon's threads (top-level calls) or must stay on
/// the calling thread (calls made from inside a parallel loop).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Threads {
    Pool,
    Single,
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst = scale · a·b`, or `dst += scale · a·b` when `accumulate`.
#[allow(unsafe_code)]
pub fn gemm(
    dst: MatMut<'_>,
    accumulate: bool,
    a: Mat<'_>,
    b: Mat<'_>,
    scale: f32,
    threads: Threads,
) -> Result<()> {
    if a.cols != b.rows || dst.rows != a.rows || dst.cols != b.cols {
        bail!(
            "gemm: [{}x{}] = [{}x{}]·[{}x{}]",
            dst.rows,
            dst.cols,
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
    }
    if span(a.rows, a.cols, a.rs, a.cs) > a.data.len()
        || span(b.rows, b.cols, b.rs, b.cs) > b.data.len()
        || span(dst.rows, dst.cols, dst.rs, 1) > dst.data.len()
        || (dst.cols > dst.rs && dst.rows > 1)
    {
        bail!("gemm: a matrix view exceeds its buffer");
    }
    if dst.rows == 0 || dst.cols == 0 {
        return Ok(());
    }
    let par = match threads {
        Threads::Pool if rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    // SAFETY: every index the three views address was checked against its slice above; `dst`
    // is an exclusive borrow with non-overlapping rows (cols ≤ rs), so gemm's writes neither
    // alias the inputs nor each other.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// A new dense `[a.rows, b.cols]` matrix `scale · a·b` (rows spread over rayon's pool).
pub fn product(a: Mat<'_>, b: Mat<'_>, scale: f32) -> Result<Vec<f32>> {
    let mut out = vec![0f32; a.rows * b.cols];
    gemm(
        MatMut::dense(&mut out, a.rows, b.cols),
        false,
        a,
        b,
        scale,
        Threads::Pool,
    )?;
    Ok(out)
}

/// Rows per block for kernels that split token rows over threads and run each block's chain of
/// products on one thread (the frozen MLP). Fixed, so the partition (and with it every bit of the result) does
/// not depend on the thread count; 256 rows amortise the packing of the weights that each block
/// repeats (measured on the bench shape: 64-row blocks 16 % slower on one thread than candle's
/// whole-matrix products, 256 and 512 as fast, and faster on two threads). Batches of 4 × 1024
/// tokens give 16 blocks. (The LoRA layer in row blocks measured 3 % slower on one thread and no
/// faster on two, so it keeps whole-matrix products on the pool.)
pub const ROW_BLOCK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_transposes_strides_and_accumulation() -> Result<()> {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut out = vec![0.0; m * n];
        gemm(
            MatMut::dense(&mut out, m, n),
            false,
            Mat::dense(&a, m, k),
            Mat::dense(&b, k, n),
            1.0,
            Threads::Pool,
        )?;
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // (b^T a^T)^T = a b: b^T [n, k] read through a transposed view; written into a
        // strided destination (every other column of a wider buffer), then accumulated twice.
        let bt = naive(&b, &identity(n), k, n, n); // a copy of b
        let mut wide = vec![9.0; n * (2 * m)];
        let dst = MatMut::rows(&mut wide, n, m, 2 * m);
        gemm(
            dst,
            false,
            Mat::dense(&bt, k, n).t(),
            Mat::dense(&a, m, k).t(),
            2.0,
            Threads::Single,
        )?;
        let dst = MatMut::rows(&mut wide, n, m, 2 * m);
        gemm(
            dst,
            true,
            Mat::dense(&bt, k, n).t(),
            Mat::dense(&a, m, k).t(),
            -1.0,
            Threads::Single,
        )?;
        for i in 0..m {
            for j in 0..n {
                assert!((wide[j * 2 * m + i] - want[i * n + j]).abs() < 1e-5);
            }
            for j in 0..n {
                assert_eq!(wide[j * 2 * m + m + i], 9.0, "padding untouched");
            }
        }
        Ok(())
    }

    fn identity(n: usize) -> Vec<f32> {
        (0..n * n)
            .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn views_outside_their_buffer_are_refused() {
        let a = vec![0.0; 6];
        let mut d = vec![0.0; 4];
        let r = gemm(
            MatMut::dense(&mut d, 2, 2),
            false,
            Mat::dense(&a, 2, 4),
            Mat::dense(&a, 4, 2),
            1.0,
            Threads::Single,
        );
        assert!(r.is_err());
    }
}
