//! x86-64 microkernels: AVX2+FMA 6 × 16 and AVX-512F 12 × 32.

use super::{ukr_body, SimdOps, Ukr};
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
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_6x16_avx2_tf(
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
    // SAFETY: AVX2+FMA enabled on this function; pointer contract forwarded.
    unsafe { ukr_body::<Avx2Ops, 6, 2>(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

/// # Safety
/// See [`super::UkrFn`] (MR = 6, NR = 16); AVX2 and FMA present.
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_6x16_avx2(
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
    // SAFETY: forwarded contract (the dispatcher only hands this out when AVX2+FMA exist).
    unsafe { ukr_6x16_avx2_tf(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_12x32_avx512_tf(
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
    // SAFETY: AVX-512F enabled on this function; pointer contract forwarded.
    unsafe { ukr_body::<Avx512Ops, 12, 2>(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

/// # Safety
/// See [`super::UkrFn`] (MR = 12, NR = 32); AVX-512F present.
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_12x32_avx512(
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
    // SAFETY: forwarded contract (the dispatcher only hands this out when AVX-512F exists).
    unsafe { ukr_12x32_avx512_tf(k, alpha, a, lda, b, beta, c, rsc, csc) }
}

pub(crate) const UKR_AVX2: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_avx2,
    name: "ukr_6x16_avx2",
};

pub(crate) const UKR_AVX512: Ukr = Ukr {
    mr: 12,
    nr: 32,
    run: ukr_12x32_avx512,
    name: "ukr_12x32_avx512",
};
