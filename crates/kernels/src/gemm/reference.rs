//! The GEMM oracle: a plain triple loop accumulating in f64. Never optimise it.

use super::{MatMut, MatRef};

/// `C ← alpha·A·B + beta·C` with every dot product accumulated in f64 and rounded once.
/// `beta == 0` overwrites C (NaN in C does not propagate). Shapes are assumed consistent
/// (the views were checked when they were built); mismatches panic.
///
/// ```
/// use fastattn_kernels::gemm::{MatRef, MatMut, reference::gemm_ref};
/// let a = [1.0, 2.0, 3.0, 4.0];
/// let b = [1.0, 0.0, 0.0, 1.0];
/// let mut c = [f32::NAN; 4];
/// gemm_ref(1.0, MatRef::row_major(&a, 2, 2).unwrap(), MatRef::row_major(&b, 2, 2).unwrap(),
///          0.0, MatMut::row_major(&mut c, 2, 2).unwrap());
/// assert_eq!(c, a);
/// ```
pub fn gemm_ref(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, mut c: MatMut<'_>) {
    assert_eq!(a.cols(), b.rows(), "gemm_ref: inner dimensions");
    assert_eq!(
        (a.rows(), b.cols()),
        (c.rows(), c.cols()),
        "gemm_ref: output shape"
    );
    for i in 0..c.rows() {
        for j in 0..c.cols() {
            let mut acc = 0.0f64;
            for p in 0..a.cols() {
                acc += a.get(i, p) as f64 * b.get(p, j) as f64;
            }
            let prod = alpha as f64 * acc;
            let v = if beta == 0.0 {
                prod
            } else {
                prod + beta as f64 * c.get(i, j) as f64
            };
            c.set(i, j, v as f32);
        }
    }
}
