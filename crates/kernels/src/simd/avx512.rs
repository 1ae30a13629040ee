//! AVX-512F ops (`__m512`) and their `#[target_feature]` runner.

use super::{binary_ops, IsaKernel, SimdOps};
use std::arch::x86_64::*;

/// Runs `k` with AVX-512F ops.
///
/// # Safety
/// The CPU has AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn run<K: IsaKernel>(k: K) -> K::Output {
    // SAFETY: the features are enabled on this function (and present, by contract).
    unsafe { k.run::<Avx512Ops>() }
}

/// 512-bit AVX-512F vectors.
pub(crate) struct Avx512Ops;

/// Mask register enabling lanes `0..k` (`k < 16`).
#[inline(always)]
fn mask16(k: usize) -> __mmask16 {
    debug_assert!(k < 16);
    ((1u32 << k) - 1) as __mmask16
}

impl SimdOps for Avx512Ops {
    type V = __m512;
    const LANES: usize = 16;
    const UNROLL: usize = 1;
    const PREFETCH_B_STEPS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: AVX-512F is present (caller contract).
        unsafe { _mm512_setzero_ps() }
    }
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
    binary_ops!(__m512:
        add => _mm512_add_ps,
        sub => _mm512_sub_ps,
        mul => _mm512_mul_ps,
        max => _mm512_max_ps,
        min => _mm512_min_ps,
    );
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is present (caller contract).
        unsafe { _mm512_fmadd_ps(a, b, c) }
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
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: SSE is baseline on x86-64; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        // SAFETY: 16 readable values and AVX-512F (caller contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // SAFETY: 16 readable values and AVX-512F (caller contract).
        unsafe {
            let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
        }
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: __m512) {
        // SAFETY: 16 writable values and AVX-512F (caller contract).
        unsafe {
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_storeu_si256(p.cast(), h)
        }
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: __m512) {
        // SAFETY: 16 writable values and AVX-512F (caller contract).
        unsafe {
            let x = _mm512_castps_si512(v);
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
                x,
                _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb),
            ));
            let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(0x0040));
            let w = _mm512_mask_blend_epi32(nan, rounded, quiet);
            _mm256_storeu_si256(p.cast(), _mm512_cvtepi32_epi16(w))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m512 {
        // SAFETY: 16 readable bytes and AVX-512F (caller contract).
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f8e5m2(p: *const u8) -> __m512 {
        // SAFETY: 16 readable bytes; AVX-512F and AVX2 are part of this variant (caller
        // contract).
        unsafe {
            let h = _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast())));
            _mm512_cvtph_ps(h)
        }
    }
    #[inline(always)]
    unsafe fn load_f8e4m3_raw(p: *const u8) -> __m512 {
        // SAFETY: 16 readable bytes; AVX-512F and AVX2 are part of this variant (caller
        // contract). The AVX2 variant's f16 construction (`e4m3_as_f16`), on all 16 codes
        // at once in 256-bit registers (two 128-bit halves and an insert were 2.1× the
        // bf16 load's time; this is one widening load and five integer ops).
        unsafe {
            let x = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
            let mag = _mm256_and_si256(x, _mm256_set1_epi16(0x7F));
            let sign = _mm256_and_si256(_mm256_slli_epi16::<8>(x), _mm256_set1_epi16(-0x8000));
            let nan = _mm256_and_si256(
                _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F)),
                _mm256_set1_epi16(0x7C00),
            );
            let h = _mm256_or_si256(_mm256_or_si256(sign, _mm256_slli_epi16::<7>(mag)), nan);
            _mm512_cvtph_ps(h)
        }
    }
    #[inline(always)]
    unsafe fn load_f8e4m3(p: *const u8) -> __m512 {
        // SAFETY: as `load_f8e4m3_raw` (caller contract).
        unsafe { _mm512_mul_ps(Self::load_f8e4m3_raw(p), _mm512_set1_ps(256.0)) }
    }
}
