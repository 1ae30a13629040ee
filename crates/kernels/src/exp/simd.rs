//! The vector operations the exp and softmax bodies are written in, one implementation per
//! ISA, and the dispatcher that runs a body under its ISA's `#[target_feature]`.
//!
//! As in the GEMM microkernels, every body is one `#[inline(always)]` function generic over
//! [`ExpOps`]; [`dispatch`] holds the only `match isa`, and the x86 arms go through thin
//! `#[target_feature]` wrappers so the whole body (loops included) is compiled for the ISA.

use crate::dispatch::Isa;

/// `1.5·2^23`. Adding it to a float of magnitude below `2^22` rounds that float to an integer
/// (ties to even) and leaves the integer, offset by `2^22`, in the low mantissa bits.
pub(crate) const SHIFTER: f32 = 12_582_912.0;

/// The bit pattern of [`SHIFTER`]: `bits(n + SHIFTER) − SHIFTER_BITS == n` for `|n| < 2^22`.
pub(crate) const SHIFTER_BITS: i32 = 0x4B40_0000;

/// The few vector operations the exp and softmax bodies need.
///
/// Semantics every implementation keeps (the bodies rely on them):
/// - [`max`](ExpOps::max)`(a, b)` is `a > b ? a : b` and [`min`](ExpOps::min)`(a, b)` is
///   `a < b ? a : b` lane by lane (x86 `maxps`/`minps`): when either lane is NaN the result
///   is `b`'s lane. Clamping as `max(lo, min(hi, x))` therefore keeps a NaN `x`.
/// - [`fma`](ExpOps::fma) may or may not round once (it does on the FMA ISAs, not on Scalar
///   and Portable); the error bounds in [`crate::exp`] are measured per variant.
pub(crate) trait ExpOps {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// Lanes per vector (at most 16).
    const LANES: usize;

    /// `x` in every lane.
    ///
    /// # Safety
    /// The ISA is present (true of every method: the ops are only used inside bodies that
    /// [`dispatch`] runs under the ISA's `#[target_feature]`).
    unsafe fn splat(x: f32) -> Self::V;
    /// Unaligned load of `LANES` values.
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Unaligned store of `LANES` values.
    ///
    /// # Safety
    /// `p` writable for `LANES` values; the ISA is present.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads `k < LANES` values; lanes `k..` are 0. Memory past `p + k` is not touched.
    ///
    /// # Safety
    /// `p` readable for `k` values, `k < LANES`; the ISA is present.
    unsafe fn load_partial(p: *const f32, k: usize) -> Self::V;
    /// Stores lanes `0..k` (`k < LANES`); memory past `p + k` is not touched.
    ///
    /// # Safety
    /// `p` writable for `k` values, `k < LANES`; the ISA is present.
    unsafe fn store_partial(p: *mut f32, k: usize, v: Self::V);
    /// `v` with lanes `k..` replaced by `fill` (`k < LANES`).
    ///
    /// # Safety
    /// `k < LANES`; the ISA is present.
    unsafe fn fill_tail(v: Self::V, k: usize, fill: f32) -> Self::V;
    /// `a + b`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a·b`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c` (fused where the ISA has FMA).
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a > b ? a : b` per lane (`b` when unordered).
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `a < b ? a : b` per lane (`b` when unordered).
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `y·2^n`, rounded once, for `y` in `[0.7, 1.5]` (or NaN) and an integer-valued `n` in
    /// `[-126, 128]`, given also as `t = n + SHIFTER` (`n` in the low mantissa bits, for
    /// implementations that build `2^n` in the exponent field). Overflows to +inf like a
    /// multiplication; a NaN `y` gives NaN.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn pow2_scale(y: Self::V, n: Self::V, t: Self::V) -> Self::V;
    /// `v` with the lanes where `x < t` (ordered: not where `x` is NaN) set to `+0`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn zero_below(v: Self::V, x: Self::V, t: Self::V) -> Self::V;
    /// The largest lane (which lane wins when some are NaN is unspecified).
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn hmax(v: Self::V) -> f32;
    /// The sum of the lanes.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn hsum(v: Self::V) -> f32;
}

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

/// One lane of plain f32: the scalar twin and the fallback on any CPU.
pub(crate) struct ScalarExp;

impl ExpOps for ScalarExp {
    type V = f32;
    const LANES: usize = 1;
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
}

/// `wide::f32x8`: the portable variant (whatever SIMD the build target has; SSE2 on a
/// plain x86-64 build).
pub(crate) struct WideExp;

impl ExpOps for WideExp {
    type V = wide::f32x8;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> wide::f32x8 {
        wide::f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> wide::f32x8 {
        // SAFETY: the caller guarantees 8 readable values; unaligned read of a POD array.
        wide::f32x8::new(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: wide::f32x8) {
        // SAFETY: the caller guarantees 8 writable values; unaligned write of a POD array.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v.to_array()) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, k: usize) -> wide::f32x8 {
        debug_assert!(k < 8);
        let mut a = [0.0f32; 8];
        // SAFETY: the caller guarantees `k` readable values; `a` has room for 8 > k.
        unsafe { std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), k) };
        wide::f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, k: usize, v: wide::f32x8) {
        debug_assert!(k < 8);
        let a = v.to_array();
        // SAFETY: the caller guarantees `k` writable values; `a` holds 8 > k.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), p, k) };
    }
    #[inline(always)]
    unsafe fn fill_tail(v: wide::f32x8, k: usize, fill: f32) -> wide::f32x8 {
        let mut a = v.to_array();
        for x in a.iter_mut().skip(k) {
            *x = fill;
        }
        wide::f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn add(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a * b
    }
    #[inline(always)]
    unsafe fn fma(a: wide::f32x8, b: wide::f32x8, c: wide::f32x8) -> wide::f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn max(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        // Spelled out rather than `fast_max`, whose NaN behaviour differs between targets.
        a.simd_gt(b).select(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a.simd_lt(b).select(a, b)
    }
    #[inline(always)]
    unsafe fn pow2_scale(y: wide::f32x8, _n: wide::f32x8, t: wide::f32x8) -> wide::f32x8 {
        use wide::{bytemuck::cast, f32x8, i32x8};
        let n: i32x8 = cast::<f32x8, i32x8>(t) - i32x8::splat(SHIFTER_BITS);
        let n1 = n >> 1u32;
        let n2 = n - n1;
        let s1: f32x8 = cast((n1 + i32x8::splat(127)) << 23u32);
        let s2: f32x8 = cast((n2 + i32x8::splat(127)) << 23u32);
        y * s1 * s2
    }
    #[inline(always)]
    unsafe fn zero_below(v: wide::f32x8, x: wide::f32x8, t: wide::f32x8) -> wide::f32x8 {
        x.simd_lt(t).select(wide::f32x8::ZERO, v)
    }
    #[inline(always)]
    unsafe fn hmax(v: wide::f32x8) -> f32 {
        let a = v.to_array();
        // SAFETY: ScalarExp needs no CPU feature.
        a.iter()
            .fold(f32::NEG_INFINITY, |m, &x| unsafe { ScalarExp::max(m, x) })
    }
    #[inline(always)]
    unsafe fn hsum(v: wide::f32x8) -> f32 {
        v.reduce_add()
    }
}

/// A body generic over the vector ops, run by [`dispatch`] once per call with the ops of
/// the chosen ISA (monomorphised per ISA, loops included).
pub(crate) trait IsaKernel {
    /// What the body returns.
    type Output;
    /// Runs the body with the ops `S`.
    ///
    /// # Safety
    /// The CPU has the ISA of `S`.
    unsafe fn run<S: ExpOps>(self) -> Self::Output;
}

/// Runs `k` with the vector ops of `isa`: the one `match isa` of the exp and softmax code.
///
/// # Safety
/// The CPU supports `isa` (`isa.check()` succeeded).
#[inline]
pub(crate) unsafe fn dispatch<K: IsaKernel>(isa: Isa, k: K) -> K::Output {
    debug_assert!(isa.is_supported());
    match isa {
        // SAFETY: Scalar runs everywhere.
        Isa::Scalar => unsafe { k.run::<ScalarExp>() },
        // SAFETY: the caller checked that the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::run_avx2(k) },
        // SAFETY: the caller checked that the CPU has AVX-512F (and AVX2, FMA).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::run_avx512(k) },
        // SAFETY: `wide` picks its instructions at compile time, so it runs on any CPU
        // this build runs on. (Neon is never supported, so never reaches here.)
        _ => unsafe { k.run::<WideExp>() },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2+FMA (`__m256`) and AVX-512F (`__m512`) ops and their `#[target_feature]` runners.

    use super::{ExpOps, IsaKernel, SHIFTER_BITS};
    use std::arch::x86_64::*;

    /// Sliding window of lane masks: `TAIL_MASK[8 - k..16 - k]` enables lanes `0..k`.
    static TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Runs `k` with AVX2+FMA ops.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<K: IsaKernel>(k: K) -> K::Output {
        // SAFETY: AVX2 and FMA are enabled on this function (and present, by contract).
        unsafe { k.run::<Avx2Exp>() }
    }

    /// Runs `k` with AVX-512F ops.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<K: IsaKernel>(k: K) -> K::Output {
        // SAFETY: AVX-512F is enabled on this function (and present, by contract).
        unsafe { k.run::<Avx512Exp>() }
    }

    /// 256-bit AVX2/FMA vectors.
    pub(crate) struct Avx2Exp;

    impl Avx2Exp {
        /// Lane mask enabling lanes `0..k`.
        ///
        /// # Safety
        /// `k <= 8`; AVX is present.
        #[inline(always)]
        unsafe fn tail_mask(k: usize) -> __m256i {
            debug_assert!(k <= 8);
            // SAFETY: `8 - k + 8 <= 16`: the 8 values read lie inside TAIL_MASK.
            unsafe { _mm256_loadu_si256(TAIL_MASK.as_ptr().add(8 - k).cast()) }
        }
    }

    impl ExpOps for Avx2Exp {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            // SAFETY: AVX is present (caller contract).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: 8 readable values and AVX (caller contract).
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: 8 writable values and AVX (caller contract).
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, k: usize) -> __m256 {
            // SAFETY: `vmaskmovps` reads only the enabled lanes `0..k`, which the caller
            // guarantees readable (masked-off lanes neither fault nor are accessed).
            unsafe { _mm256_maskload_ps(p, Self::tail_mask(k)) }
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, k: usize, v: __m256) {
            // SAFETY: `vmaskmovps` writes only the enabled lanes `0..k`, which the caller
            // guarantees writable.
            unsafe { _mm256_maskstore_ps(p, Self::tail_mask(k), v) }
        }
        #[inline(always)]
        unsafe fn fill_tail(v: __m256, k: usize, fill: f32) -> __m256 {
            // SAFETY: AVX is present (caller contract); k < 8.
            unsafe {
                _mm256_blendv_ps(
                    _mm256_set1_ps(fill),
                    v,
                    _mm256_castsi256_ps(Self::tail_mask(k)),
                )
            }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract).
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract).
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract).
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: FMA is present (caller contract).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract). `vmaxps` returns b when unordered.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract). `vminps` returns b when unordered.
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn pow2_scale(y: __m256, _n: __m256, t: __m256) -> __m256 {
            // SAFETY: AVX2 is present (caller contract). 2^n is built as two exact factors
            // 2^(n>>1)·2^(n−(n>>1)), both normal floats for n in [-126, 128] (a single
            // factor 2^128 would be +inf).
            unsafe {
                let n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(SHIFTER_BITS));
                let n1 = _mm256_srai_epi32::<1>(n);
                let n2 = _mm256_sub_epi32(n, n1);
                let bias = _mm256_set1_epi32(127);
                let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
                let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
                _mm256_mul_ps(_mm256_mul_ps(y, s1), s2)
            }
        }
        #[inline(always)]
        unsafe fn zero_below(v: __m256, x: __m256, t: __m256) -> __m256 {
            // SAFETY: AVX is present (caller contract). LT_OQ is false on NaN lanes.
            unsafe { _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, t), v) }
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            // SAFETY: AVX is present (caller contract).
            unsafe {
                let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
                _mm_cvtss_f32(m)
            }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            // SAFETY: AVX is present (caller contract).
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }

    /// 512-bit AVX-512F vectors.
    pub(crate) struct Avx512Exp;

    /// Mask register enabling lanes `0..k` (`k < 16`).
    #[inline(always)]
    fn mask16(k: usize) -> __mmask16 {
        debug_assert!(k < 16);
        ((1u32 << k) - 1) as __mmask16
    }

    impl ExpOps for Avx512Exp {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: 16 readable values and AVX-512F (caller contract).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: 16 writable values and AVX-512F (caller contract).
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, k: usize) -> __m512 {
            // SAFETY: a masked load reads only lanes `0..k` (readable by the caller's
            // contract); masked-off lanes are zeroed, not accessed, and do not fault.
            unsafe { _mm512_maskz_loadu_ps(mask16(k), p) }
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, k: usize, v: __m512) {
            // SAFETY: a masked store writes only lanes `0..k` (writable by contract).
            unsafe { _mm512_mask_storeu_ps(p, mask16(k), v) }
        }
        #[inline(always)]
        unsafe fn fill_tail(v: __m512, k: usize, fill: f32) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_mask_blend_ps(mask16(k), _mm512_set1_ps(fill), v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract). `vmaxps` returns b when
            // unordered.
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract). `vminps` returns b when
            // unordered.
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn pow2_scale(y: __m512, n: __m512, _t: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract). `vscalefps` computes
            // y·2^floor(n) with one rounding and overflow to inf.
            unsafe { _mm512_scalef_ps(y, n) }
        }
        #[inline(always)]
        unsafe fn zero_below(v: __m512, x: __m512, t: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (caller contract). NLT_UQ is true on NaN lanes,
            // which therefore keep `v`.
            unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, t), v) }
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_reduce_max_ps(v) }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            // SAFETY: AVX-512F is present (caller contract).
            unsafe { _mm512_reduce_add_ps(v) }
        }
    }
}
