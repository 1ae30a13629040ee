//! The scalar 4 × 4 microkernel: plain f32 arithmetic, the fallback on any CPU.

use super::{ukr_body, SimdOps, Ukr};

/// One lane of plain f32.
pub(crate) struct ScalarOps;

impl SimdOps for ScalarOps {
    type V = f32;
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees `p` is writable.
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA that is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn reduce_add(a: f32) -> f32 {
        a
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        half::f16::from_bits(unsafe { *p }).to_f32()
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        half::bf16::from_bits(unsafe { *p }).to_f32()
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: f32) {
        // SAFETY: the caller guarantees `p` is writable.
        unsafe { *p = half::f16::from_f32(v).to_bits() }
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: f32) {
        // SAFETY: the caller guarantees `p` is writable.
        unsafe { *p = half::bf16::from_f32(v).to_bits() }
    }
}

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
