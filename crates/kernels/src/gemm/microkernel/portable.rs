//! The portable 6 × 16 microkernel on `wide::f32x8` (whatever SIMD the build target has).

use super::{ukr_body, ukr_fused_body, SimdOps, Ukr};
use wide::f32x8;

/// `wide::f32x8` as kernel vector.
pub(crate) struct WideOps;

impl SimdOps for WideOps {
    type V = f32x8;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values; unaligned read of a POD array.
        f32x8::from(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable values; unaligned write of a POD array.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v.to_array()) }
    }
    #[inline(always)]
    unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    unsafe fn reduce_add(a: f32x8) -> f32 {
        a.reduce_add()
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values.
        let b = unsafe { p.cast::<[u16; 8]>().read_unaligned() };
        f32x8::from(b.map(|x| half::f16::from_bits(x).to_f32()))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values.
        let b = unsafe { p.cast::<[u16; 8]>().read_unaligned() };
        f32x8::from(b.map(|x| f32::from_bits((x as u32) << 16)))
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: f32x8) {
        let b = v.to_array().map(|x| half::f16::from_f32(x).to_bits());
        // SAFETY: the caller guarantees 8 writable values.
        unsafe { p.cast::<[u16; 8]>().write_unaligned(b) }
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: f32x8) {
        let b = v.to_array().map(|x| half::bf16::from_f32(x).to_bits());
        // SAFETY: the caller guarantees 8 writable values.
        unsafe { p.cast::<[u16; 8]>().write_unaligned(b) }
    }
}

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
