//! The portable 6 × 16 microkernel on `wide::f32x8` (whatever SIMD the build target has).

use super::{ukr_body, ukr_fused_body, Ukr};
use crate::simd::WideOps;

/// # Safety
/// See [`super::UkrFn`] with MR = 6, NR = 16.
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_6x16_portable(
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
    unsafe { ukr_body::<WideOps, 6, 2, 6>(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

/// The fused 6 × 16 kernel ([`super::UkrFusedFn`]).
///
/// # Safety
/// See [`super::UkrFusedFn`].
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_6x16_portable_fused(
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: isize,
    a_out: *mut f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: forwarded contract.
    unsafe { ukr_fused_body::<WideOps, 6, 2>(k, alpha, a, lda, a_out, b, beta, c, rsc, csc) }
}

pub(crate) const UKR_PORTABLE: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_portable,
    name: "ukr_6x16_portable",
    edges: &[],
    fused: Some(ukr_6x16_portable_fused),
};
