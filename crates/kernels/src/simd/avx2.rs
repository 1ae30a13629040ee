//! AVX2 + FMA + F16C ops (`__m256`) and their `#[target_feature]` runner.

use super::{binary_ops, IsaKernel, SimdOps, SHIFTER_BITS};
use std::arch::x86_64::*;

/// Runs `k` with AVX2+FMA ops.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn run<K: IsaKernel>(k: K) -> K::Output {
    // SAFETY: the features are enabled on this function (and present, by contract).
    unsafe { k.run::<Avx2Ops>() }
}

/// Sliding window of lane masks: `TAIL_MASK[8 - k..16 - k]` enables lanes `0..k`.
static TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// 256-bit AVX2/FMA vectors.
pub(crate) struct Avx2Ops;

impl Avx2Ops {
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

/// bf16 bit patterns (in the low 16 bits of each lane) of the f32 bits `x`: round to
/// nearest, ties to even; NaN becomes a quiet NaN with the same sign and top payload bits
/// (what `half::bf16::from_f32` gives).
///
/// # Safety
/// AVX2 is present.
#[inline(always)]
unsafe fn bf16_round_avx2(x: __m256i) -> __m256i {
    // SAFETY: AVX2 is present (caller contract).
    unsafe {
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
            x,
            _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb),
        ));
        let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF));
        let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
        let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(0x0040));
        _mm256_blendv_epi8(rounded, quiet, nan)
    }
}

impl SimdOps for Avx2Ops {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: AVX is present (caller contract).
        unsafe { _mm256_setzero_ps() }
    }
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
    binary_ops!(__m256:
        add => _mm256_add_ps,
        sub => _mm256_sub_ps,
        mul => _mm256_mul_ps,
        max => _mm256_max_ps,
        min => _mm256_min_ps,
    );
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA is present (caller contract).
        unsafe { _mm256_fmadd_ps(a, b, c) }
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
    #[inline(always)]
    unsafe fn hsum4(v: [__m256; 4]) -> [f32; 4] {
        // `hsum`'s additions for four vectors at once: each vector's halves added
        // (`s = lo + hi`), then `(s0 + s2) + (s1 + s3)`, with a's and c's sums in the low
        // 128-bit lane and b's and d's in the high one.
        // SAFETY: AVX is present (caller contract).
        unsafe {
            let [a, b, c, d] = v;
            let ab = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
            let cd = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(c, d),
                _mm256_permute2f128_ps::<0x31>(c, d),
            );
            // [a: s0+s2, c: s0+s2, a: s1+s3, c: s1+s3 | the same for b and d]
            let w = _mm256_add_ps(_mm256_unpacklo_ps(ab, cd), _mm256_unpackhi_ps(ab, cd));
            let z = _mm256_add_ps(w, _mm256_permute_ps::<0b01_00_11_10>(w));
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), z);
            [out[0], out[4], out[1], out[5]]
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: SSE is baseline on x86-64; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        // SAFETY: 8 readable values; F16C is part of this variant (caller contract).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        // SAFETY: 8 readable values and AVX2 (caller contract).
        unsafe {
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
        }
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: __m256) {
        // SAFETY: 8 writable values; F16C is part of this variant (caller contract).
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(p.cast(), h)
        }
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: __m256) {
        // SAFETY: 8 writable values and AVX2 (caller contract).
        unsafe {
            let w = bf16_round_avx2(_mm256_castps_si256(v));
            // Pack the 32-bit lanes (each ≤ 0xFFFF) to 16 bits: per 128-bit half, then
            // the two halves' results brought together.
            let packed = _mm256_packus_epi32(w, w);
            let ordered = _mm256_permute4x64_epi64::<0b1000>(packed);
            _mm_storeu_si128(p.cast(), _mm256_castsi256_si128(ordered))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m256 {
        // SAFETY: 8 readable bytes and AVX2 (caller contract).
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f8e5m2(p: *const u8) -> __m256 {
        // SAFETY: 8 readable bytes; AVX2 and F16C are part of this variant (caller contract).
        unsafe {
            let h = _mm_slli_epi16::<8>(_mm_cvtepu8_epi16(_mm_loadl_epi64(p.cast())));
            _mm256_cvtph_ps(h)
        }
    }
    #[inline(always)]
    unsafe fn load_f8e4m3(p: *const u8) -> __m256 {
        // SAFETY: 8 readable bytes; AVX2 and F16C are part of this variant (caller contract).
        unsafe { _mm256_mul_ps(Self::load_f8e4m3_raw(p), _mm256_set1_ps(256.0)) }
    }
    #[inline(always)]
    unsafe fn load_f8e4m3_raw(p: *const u8) -> __m256 {
        // SAFETY: 8 readable bytes; AVX2 and F16C are part of this variant (caller contract).
        unsafe { _mm256_cvtph_ps(e4m3_as_f16(_mm_cvtepi8_epi16(_mm_loadl_epi64(p.cast())))) }
    }
}

/// 8 e4m3fn codes, sign-extended to 16-bit lanes (`x`), as 8 f16 bit patterns worth
/// `code / 256`: a shift left by 7 puts the code's exponent and mantissa at f16 bits
/// 7..13 and its sign at bits 14 and 15 (`s s eeee mmm 0000000`); clearing bit 14 leaves
/// `s 0eeee mmm0000000` (the f16 exponent has bias 15, e4m3's bias 7, so the value is off
/// by exactly `2^8`; e4m3 subnormals become f16 subnormals, which F16C widens exactly).
/// The NaN magnitude `0x7F` keeps bit 14, which makes its exponent all ones (NaN). Six
/// integer ops after the widening load (the unpack-and-shift build took seven, and the
/// mask-and-shift one nine).
///
/// # Safety
/// SSE2 is present (part of every AVX2 variant).
#[inline(always)]
pub(crate) unsafe fn e4m3_as_f16(x: __m128i) -> __m128i {
    // SAFETY: SSE2 is present (caller contract).
    unsafe {
        let h = _mm_slli_epi16::<7>(x);
        let nan = _mm_cmpeq_epi16(
            _mm_and_si128(h, _mm_set1_epi16(0x3F80)),
            _mm_set1_epi16(0x3F80),
        );
        // Bit 14 cleared where the code is not a NaN, set where it is.
        let b14 = _mm_set1_epi16(0x4000);
        _mm_xor_si128(_mm_or_si128(h, b14), _mm_andnot_si128(nan, b14))
    }
}
