//! `fa_sgemm`: the strided GEMM (matrixmultiply's argument order and stride model).

use crate::raw::{check_disjoint, check_no_self_alias, check_ptr, strided_span};
use crate::status::{ffi_guard, FfiResult, OK};
use kernels::{Isa, Parallelism};
use std::ffi::c_int;

/// One GEMM whose arguments passed [`checked_sgemm`]'s checks, movable into the pool.
struct GemmCall {
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
}

// SAFETY: a GemmCall is built only inside `checked_sgemm` (an unsafe fn whose caller
// vouches for the pointers) and runs while that call waits for it; the worker threads
// only read A and B and write disjoint elements of C.
unsafe impl Send for GemmCall {}

impl GemmCall {
    fn run(self) -> FfiResult<()> {
        // SAFETY: `checked_sgemm`'s contract and checks: the views are valid, C does not
        // alias itself nor overlap A or B.
        unsafe {
            kernels::sgemm_with(
                self.isa,
                Parallelism::Rayon,
                self.m,
                self.k,
                self.n,
                self.alpha,
                self.a,
                self.rsa,
                self.csa,
                self.b,
                self.rsb,
                self.csb,
                self.beta,
                self.c,
                self.rsc,
                self.csc,
            )
        }?;
        Ok(())
    }
}

/// Checks a GEMM's pointers and strides, then runs it in the configured pool.
///
/// Checks: C non-NULL and aligned when `m*n > 0`; A and B non-NULL and aligned when they
/// are read (`m*n*k > 0` and `alpha != 0`); no offset overflow; C's elements pairwise
/// distinct; C's memory disjoint from A's and B's.
///
/// # Safety
/// Every element of the three views (as in [`kernels::sgemm`]) is valid to read (A, B, and
/// C when `beta != 0`) and write (C), and nothing else accesses C during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn checked_sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) -> FfiResult<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    check_ptr(c, "C")?;
    check_no_self_alias(&[m, n], &[rsc, csc], "C")?;
    let c_span = strided_span(c, &[m, n], &[rsc, csc], "C")?;
    if k > 0 && alpha != 0.0 {
        check_ptr(a, "A")?;
        check_ptr(b, "B")?;
        let a_span = strided_span(a, &[m, k], &[rsa, csa], "A")?;
        let b_span = strided_span(b, &[k, n], &[rsb, csb], "B")?;
        check_disjoint(("C", c_span), &[("A", a_span), ("B", b_span)])?;
    }
    let call = GemmCall {
        isa: kernels::current_isa()?,
        m,
        k,
        n,
        alpha,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        beta,
        c,
        rsc,
        csc,
    };
    call.run()
}

/// Single-precision GEMM `C <- alpha*A*B + beta*C` with element strides, in the argument
/// order of Rust's `matrixmultiply::sgemm`: A is `m x k`, B is `k x n`, C is `m x n`, and
/// element `(i, j)` of a matrix X is `X[i*rsx + j*csx]`. Strides may be negative or zero
/// for A and B; transposes are expressed by swapping strides.
///
/// `beta == 0` overwrites C without reading it (NaN in C does not propagate); with `k == 0`
/// or `alpha == 0`, C becomes `beta*C` and A and B are not read (they may be NULL); with
/// `m == 0` or `n == 0` nothing is touched. Elements of C's buffer outside the view are
/// never written.
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a pointer that is needed is NULL),
/// `FA_ERR_INVALID_ARGUMENT` (a misaligned pointer), `FA_ERR_BAD_SHAPE` (offsets overflow),
/// `FA_ERR_BAD_STRIDE` (C's elements alias each other, or C overlaps A or B in memory),
/// `FA_ERR_UNSUPPORTED_VARIANT` (`FASTATTN_ISA` names a variant this CPU lacks).
///
/// # Safety
/// The caller guarantees that every element of each view is inside memory it may read (A,
/// B, and C) and write (C), and that no other thread accesses C during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn fa_sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) -> c_int {
    ffi_guard!("fa_sgemm", {
        // SAFETY: forwarded caller contract.
        unsafe { checked_sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }?;
        Ok(OK)
    })
}
