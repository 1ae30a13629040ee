//! Scalar ops: one lane of plain f32, the twin of every vector variant and the fallback on
//! any CPU.

use super::{SimdOps, SHIFTER_BITS};

/// One lane of plain f32.
pub(crate) struct ScalarOps;

/// `y·2^n` in plain f32 arithmetic, as two exact power-of-two factors `2^⌊n/2⌋·2^(n−⌊n/2⌋)`
/// (each a normal float for `n` in `[-254, 254]`; one factor `2^128` would not be), so only
/// the last product rounds.
#[inline(always)]
fn pow2_scale_scalar(y: f32, t: f32) -> f32 {
    let n = (t.to_bits() as i32).wrapping_sub(SHIFTER_BITS);
    let n1 = n >> 1;
    let n2 = n.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    y * s1 * s2
}

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
    unsafe fn load_partial(_p: *const f32, k: usize) -> f32 {
        debug_assert_eq!(k, 0);
        0.0
    }
    #[inline(always)]
    unsafe fn store_partial(_p: *mut f32, k: usize, _v: f32) {
        debug_assert_eq!(k, 0);
    }
    #[inline(always)]
    unsafe fn fill_tail(_v: f32, k: usize, fill: f32) -> f32 {
        debug_assert_eq!(k, 0);
        fill
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA that is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn min(a: f32, b: f32) -> f32 {
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn pow2_scale(y: f32, _n: f32, t: f32) -> f32 {
        pow2_scale_scalar(y, t)
    }
    #[inline(always)]
    unsafe fn zero_below(v: f32, x: f32, t: f32) -> f32 {
        if x < t {
            0.0
        } else {
            v
        }
    }
    #[inline(always)]
    unsafe fn hmax(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn hsum(v: f32) -> f32 {
        v
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
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        f32::from(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn load_f8e5m2(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        crate::quant::F8E5M2::from_bits(unsafe { *p }).to_f32()
    }
    #[inline(always)]
    unsafe fn load_f8e4m3(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        crate::quant::F8E4M3::from_bits(unsafe { *p }).to_f32()
    }
}
