//! The scalar 4 × 4 microkernel: plain f32 arithmetic, the fallback on any CPU.

use super::{ukr_body, Ukr};
use crate::simd::ScalarOps;

/// # Safety
/// See [`super::UkrFn`] with MR = NR = 4.
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_4x4_scalar(
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: isize,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: forwarded contract.
    unsafe { ukr_body::<ScalarOps, 4, 4, 4>(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

pub(crate) const UKR_SCALAR: Ukr = Ukr {
    mr: 4,
    nr: 4,
    run: ukr_4x4_scalar,
    name: "ukr_4x4_scalar",
    edges: &[],
    fused: None,
};
