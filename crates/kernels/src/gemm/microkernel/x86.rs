//! x86-64 microkernels: AVX2+FMA 6 × 16 and AVX-512F 12 × 32.

use super::{ukr_body, ukr_fused_body, SimdOps, Ukr};
use std::arch::x86_64::*;

/// 256-bit AVX2/FMA vectors.
pub(crate) struct Avx2Ops;

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
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA is present (caller contract).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is present (caller contract).
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: SSE is baseline on x86-64; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn reduce_add(a: __m256) -> f32 {
        // SAFETY: AVX is present (caller contract).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
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

/// 512-bit AVX-512F vectors.
pub(crate) struct Avx512Ops;

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
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is present (caller contract).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is present (caller contract).
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: SSE is baseline on x86-64; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn reduce_add(a: __m512) -> f32 {
        // SAFETY: AVX-512F is present (caller contract).
        unsafe { _mm512_reduce_add_ps(a) }
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
}

/// Defines a kernel of any signature: a `#[target_feature]` function (`$tf`) whose body is
/// `$body`, and the plain `unsafe fn` (`$name`, storable as a function pointer) that calls
/// it. The dispatcher only hands `$name` out where the CPU has the ISA.
macro_rules! isa_fn {
    ($name:ident, $tf:ident, $feat:literal, ($($arg:ident: $ty:ty),* $(,)?), $body:expr) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $tf($($arg: $ty),*) {
            // SAFETY: the ISA is enabled on this function; pointer contract forwarded.
            unsafe { $body }
        }

        /// # Safety
        /// See the kernel's function type; the CPU has the kernel's ISA.
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name($($arg: $ty),*) {
            // SAFETY: forwarded contract (the dispatcher only hands this out when the ISA
            // exists).
            unsafe { $tf($($arg),*) }
        }
    };
}

/// Defines one microkernel of type [`super::UkrFn`] computing `$mr` rows of a tile from
/// packed A panels `$panel` rows high.
macro_rules! ukr_fn {
    ($name:ident, $tf:ident, $feat:literal, $ops:ty, $mr:literal, $nv:literal, $panel:literal) => {
        isa_fn!(
            $name,
            $tf,
            $feat,
            (
                k: usize,
                alpha: f32,
                a: *const f32,
                lda: isize,
                b: *const f32,
                beta: f32,
                c: *mut f32,
                rsc: isize,
                csc: isize,
            ),
            ukr_body::<$ops, $mr, $nv, $panel>(k, alpha, a, lda, b, beta, c, rsc, csc)
        );
    };
}

/// Defines a fused microkernel of type [`super::UkrFusedFn`].
macro_rules! ukr_fused_fn {
    ($name:ident, $tf:ident, $feat:literal, $ops:ty, $mr:literal, $nv:literal) => {
        isa_fn!(
            $name,
            $tf,
            $feat,
            (
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
            ),
            ukr_fused_body::<$ops, $mr, $nv>(k, alpha, a, lda, a_out, b, beta, c, rsc, csc)
        );
    };
}

ukr_fused_fn!(
    ukr_6x16_avx2_fused,
    ukr_6x16_avx2_fused_tf,
    "avx2,fma",
    Avx2Ops,
    6,
    2
);
ukr_fused_fn!(
    ukr_12x32_avx512_fused,
    ukr_12x32_avx512_fused_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    12,
    2
);

ukr_fn!(
    ukr_6x16_avx2,
    ukr_6x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    6,
    2,
    6
);
ukr_fn!(
    ukr_2x16_avx2,
    ukr_2x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    2,
    2,
    6
);
ukr_fn!(
    ukr_4x16_avx2,
    ukr_4x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    4,
    2,
    6
);
ukr_fn!(
    ukr_12x32_avx512,
    ukr_12x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    12,
    2,
    12
);
ukr_fn!(
    ukr_4x32_avx512,
    ukr_4x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    4,
    2,
    12
);
ukr_fn!(
    ukr_8x32_avx512,
    ukr_8x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    8,
    2,
    12
);

pub(crate) const UKR_AVX2: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_avx2,
    name: "ukr_6x16_avx2",
    edges: &[(2, ukr_2x16_avx2), (4, ukr_4x16_avx2)],
    fused: Some(ukr_6x16_avx2_fused),
};

pub(crate) const UKR_AVX512: Ukr = Ukr {
    mr: 12,
    nr: 32,
    run: ukr_12x32_avx512,
    name: "ukr_12x32_avx512",
    edges: &[(4, ukr_4x32_avx512), (8, ukr_8x32_avx512)],
    fused: Some(ukr_12x32_avx512_fused),
};
