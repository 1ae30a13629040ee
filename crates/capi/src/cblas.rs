//! `cblas_sgemm`, the CBLAS interface to the GEMM (cargo feature `cblas`, on by default),
//! so a program that links a CBLAS library for `sgemm` can link fastattn instead.

use crate::gemm::checked_sgemm;
use crate::status::{fa_status, ffi_guard, FfiError, FfiResult};
use std::ffi::c_int;

/// Storage order of the matrices of a CBLAS call (an `enum CBLAS_ORDER` in other CBLAS
/// headers, with the same values).
pub type CBLAS_ORDER = c_int;
/// Row-major storage: element `(i, j)` at `i*ld + j`.
pub const CblasRowMajor: CBLAS_ORDER = 101;
/// Column-major storage: element `(i, j)` at `i + j*ld`.
pub const CblasColMajor: CBLAS_ORDER = 102;

/// Whether a CBLAS operand is transposed (an `enum CBLAS_TRANSPOSE` in other CBLAS headers,
/// with the same values).
pub type CBLAS_TRANSPOSE = c_int;
/// Use the operand as stored.
pub const CblasNoTrans: CBLAS_TRANSPOSE = 111;
/// Use the transpose of the operand.
pub const CblasTrans: CBLAS_TRANSPOSE = 112;
/// Use the conjugate transpose (the transpose, for real matrices).
pub const CblasConjTrans: CBLAS_TRANSPOSE = 113;

/// Checks an `int` argument that must be `>= min` (1-based CBLAS parameter number `pos`).
fn at_least(pos: u32, name: &str, value: c_int, min: c_int) -> FfiResult<()> {
    if value < min {
        return Err(FfiError::new(
            if name.starts_with("ld") {
                fa_status::FA_ERR_BAD_STRIDE
            } else {
                fa_status::FA_ERR_BAD_SHAPE
            },
            format!("parameter {pos} ({name} = {value}) must be >= {min}"),
        ));
    }
    Ok(())
}

fn is_trans(pos: u32, t: CBLAS_TRANSPOSE) -> FfiResult<bool> {
    match t {
        CblasNoTrans => Ok(false),
        CblasTrans | CblasConjTrans => Ok(true),
        other => Err(FfiError::new(
            fa_status::FA_ERR_INVALID_ARGUMENT,
            format!(
                "parameter {pos} (transpose = {other}) is not CblasNoTrans, CblasTrans or \
                 CblasConjTrans"
            ),
        )),
    }
}

/// CBLAS single-precision GEMM: `C <- alpha*op(A)*op(B) + beta*C`, with `op(A)` `M x K`,
/// `op(B)` `K x N` and C `M x N`, standard CBLAS semantics and argument checks.
///
/// With `Order == CblasRowMajor`, A is stored `M x K` (`lda >= max(1, K)`) or, transposed,
/// `K x M` (`lda >= max(1, M)`); B is `K x N` (`ldb >= max(1, N)`) or `N x K`
/// (`ldb >= max(1, K)`); `ldc >= max(1, N)`. With `CblasColMajor` the same with rows and
/// columns exchanged (`lda >= max(1, M)` for an untransposed A, ..., `ldc >= max(1, M)`).
/// `CblasConjTrans` is `CblasTrans` for real matrices. `beta == 0` sets C without reading it.
///
/// An invalid argument (as reference CBLAS's `xerbla` would report, by parameter number),
/// a NULL matrix that is needed, or C overlapping A or B, leaves C untouched, does not
/// abort, and sets the message of `fa_last_error()`.
///
/// # Safety
/// The matrices hold the elements the dimensions and leading dimensions above describe, C
/// is writable, and no other thread accesses C during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cblas_sgemm(
    order: CBLAS_ORDER,
    trans_a: CBLAS_TRANSPOSE,
    trans_b: CBLAS_TRANSPOSE,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
) {
    ffi_guard!("cblas_sgemm", {
        let row_major = match order {
            CblasRowMajor => true,
            CblasColMajor => false,
            other => {
                return Err(FfiError::new(
                    fa_status::FA_ERR_INVALID_ARGUMENT,
                    format!("parameter 1 (order = {other}) is not CblasRowMajor or CblasColMajor"),
                ))
            }
        };
        let ta = is_trans(2, trans_a)?;
        let tb = is_trans(3, trans_b)?;
        at_least(4, "M", m, 0)?;
        at_least(5, "N", n, 0)?;
        at_least(6, "K", k, 0)?;
        // Rows of the stored A and B as the leading dimension counts them.
        let (lda_min, ldb_min, ldc_min) = if row_major {
            (if ta { m } else { k }, if tb { k } else { n }, n)
        } else {
            (if ta { k } else { m }, if tb { n } else { k }, m)
        };
        at_least(9, "lda", lda, lda_min.max(1))?;
        at_least(11, "ldb", ldb, ldb_min.max(1))?;
        at_least(14, "ldc", ldc, ldc_min.max(1))?;
        if m == 0 || n == 0 || ((alpha == 0.0 || k == 0) && beta == 1.0) {
            return Ok(());
        }
        let (lda, ldb, ldc) = (lda as isize, ldb as isize, ldc as isize);
        // Element (i, p) of op(A) is A[i*rs + p*cs].
        let (rsa, csa) = match (row_major, ta) {
            (true, false) | (false, true) => (lda, 1),
            (true, true) | (false, false) => (1, lda),
        };
        let (rsb, csb) = match (row_major, tb) {
            (true, false) | (false, true) => (ldb, 1),
            (true, true) | (false, false) => (1, ldb),
        };
        let (rsc, csc) = if row_major { (ldc, 1) } else { (1, ldc) };
        // SAFETY: the caller's contract covers the views built from the checked dimensions.
        unsafe {
            checked_sgemm(
                m as usize, k as usize, n as usize, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc,
                csc,
            )
        }
    })
}
