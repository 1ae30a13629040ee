//! Portable ops on `wide::f32x8` (whatever SIMD the build target has; SSE2 on a plain
//! x86-64 build).

use super::scalar::ScalarOps;
use super::{SimdOps, SHIFTER_BITS};
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
        f32x8::new(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable values; unaligned write of a POD array.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v.to_array()) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, k: usize) -> f32x8 {
        debug_assert!(k < 8);
        let mut a = [0.0f32; 8];
        // SAFETY: the caller guarantees `k` readable values; `a` has room for 8 > k.
        unsafe { std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), k) };
        f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, k: usize, v: f32x8) {
        debug_assert!(k < 8);
        let a = v.to_array();
        // SAFETY: the caller guarantees `k` writable values; `a` holds 8 > k.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), p, k) };
    }
    #[inline(always)]
    unsafe fn fill_tail(v: f32x8, k: usize, fill: f32) -> f32x8 {
        let mut a = v.to_array();
        for x in a.iter_mut().skip(k) {
            *x = fill;
        }
        f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn add(a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32x8, b: f32x8) -> f32x8 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn max(a: f32x8, b: f32x8) -> f32x8 {
        // Spelled out rather than `fast_max`, whose NaN behaviour differs between targets.
        a.simd_gt(b).select(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: f32x8, b: f32x8) -> f32x8 {
        a.simd_lt(b).select(a, b)
    }
    #[inline(always)]
    unsafe fn pow2_scale(y: f32x8, _n: f32x8, t: f32x8) -> f32x8 {
        use wide::{bytemuck::cast, i32x8};
        let n: i32x8 = cast::<f32x8, i32x8>(t) - i32x8::splat(SHIFTER_BITS);
        let n1 = n >> 1u32;
        let n2 = n - n1;
        let s1: f32x8 = cast((n1 + i32x8::splat(127)) << 23u32);
        let s2: f32x8 = cast((n2 + i32x8::splat(127)) << 23u32);
        y * s1 * s2
    }
    #[inline(always)]
    unsafe fn zero_below(v: f32x8, x: f32x8, t: f32x8) -> f32x8 {
        x.simd_lt(t).select(f32x8::ZERO, v)
    }
    #[inline(always)]
    unsafe fn hmax(v: f32x8) -> f32 {
        let a = v.to_array();
        // SAFETY: ScalarOps needs no CPU feature.
        a.iter()
            .fold(f32::NEG_INFINITY, |m, &x| unsafe { ScalarOps::max(m, x) })
    }
    #[inline(always)]
    unsafe fn hsum(v: f32x8) -> f32 {
        v.reduce_add()
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
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values.
        let b = unsafe { p.cast::<[i8; 8]>().read_unaligned() };
        f32x8::from(b.map(f32::from))
    }
    #[inline(always)]
    unsafe fn load_f8e5m2(p: *const u8) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values.
        let b = unsafe { p.cast::<[u8; 8]>().read_unaligned() };
        f32x8::from(b.map(|x| crate::quant::F8E5M2::from_bits(x).to_f32()))
    }
    #[inline(always)]
    unsafe fn load_f8e4m3(p: *const u8) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values.
        let b = unsafe { p.cast::<[u8; 8]>().read_unaligned() };
        f32x8::from(b.map(|x| crate::quant::F8E4M3::from_bits(x).to_f32()))
    }
}
