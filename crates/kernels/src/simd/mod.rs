//! The vector operations every SIMD kernel body is written in, one implementation per ISA,
//! and the one dispatcher that runs a body with the ops of an [`Isa`].
//!
//! A kernel body is one `#[inline(always)]` function generic over [`SimdOps`]. To run it,
//! wrap it in a type implementing [`IsaKernel`] and call [`dispatch`]: that holds the only
//! `match isa` of the SIMD code and runs the x86 arms through thin `#[target_feature]`
//! wrappers ([`avx2::run`], [`avx512::run`]), so the whole body (loops included) is compiled
//! for the ISA. The GEMM microkernels, which are handed out as function pointers, keep a
//! table per ISA instead (`gemm::microkernel::ukr_for`), written in the same ops.
//!
//! | ISA | ops | vector | file |
//! |-----|-----|--------|------|
//! | Scalar | [`ScalarOps`] | one `f32` | `scalar.rs` |
//! | Portable | [`WideOps`] | `wide::f32x8` | `portable.rs` |
//! | Avx2Fma | `Avx2Ops` | `__m256` | `avx2.rs` |
//! | Avx512 | `Avx512Ops` | `__m512` | `avx512.rs` |
//! | Neon | (reserved: refused as unsupported; would run [`WideOps`]) | | |
//!
//! A new ISA is a new file with its ops and its `#[target_feature]` runner, an arm in
//! [`dispatch`] and one in `ukr_for` (the compiler points at both: neither match has a
//! wildcard arm).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub(crate) mod portable;
pub(crate) mod scalar;

pub(crate) use portable::WideOps;
pub(crate) use scalar::ScalarOps;

use crate::dispatch::Isa;
use crate::dtype::{DType, Element, RowElem, RowType};

/// `1.5·2^23`. Adding it to a float of magnitude below `2^22` rounds that float to an integer
/// (ties to even) and leaves the integer, offset by `2^22`, in the low mantissa bits.
pub(crate) const SHIFTER: f32 = 12_582_912.0;

/// The bit pattern of [`SHIFTER`]: `bits(n + SHIFTER) − SHIFTER_BITS == n` for `|n| < 2^22`.
pub(crate) const SHIFTER_BITS: i32 = 0x4B40_0000;

/// The vector operations the kernel bodies need (GEMM microkernels, packing, conversion,
/// decode, exp and softmax).
///
/// Semantics every implementation keeps (the bodies rely on them):
/// - [`max`](SimdOps::max)`(a, b)` is `a > b ? a : b` and [`min`](SimdOps::min)`(a, b)` is
///   `a < b ? a : b` lane by lane (x86 `maxps`/`minps`): when either lane is NaN the result
///   is `b`'s lane. Clamping as `max(lo, min(hi, x))` therefore keeps a NaN `x`.
/// - [`fma`](SimdOps::fma) may or may not round once (it does on the FMA ISAs, not on
///   Scalar and Portable); the error bounds in [`crate::exp`] are measured per variant.
pub(crate) trait SimdOps {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// Lanes per vector (at most 16).
    const LANES: usize;
    /// Unroll factor of the GEMM microkernel's `k` loop (tuned per ISA with `ukr_speed`).
    const UNROLL: usize = 4;
    /// How many `k` steps ahead the GEMM microkernel prefetches its B micro-panel (0: not
    /// at all). Worth it only where the micro-panel (`KC·NR·4` bytes) outgrows L1 and
    /// streams from L2: the AVX-512 kernel (64 KiB at KC = 512; +3% at n = 1024), not AVX2
    /// (−2%).
    const PREFETCH_B_STEPS: usize = 0;

    /// All zeros.
    ///
    /// # Safety
    /// The ISA is present (true of every method: the ops are only used inside bodies that
    /// run under the ISA's `#[target_feature]`, through [`dispatch`] or a kernel table).
    unsafe fn zero() -> Self::V;
    /// `x` in every lane.
    ///
    /// # Safety
    /// The ISA is present.
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
    /// The sums of four vectors' lanes, each bit-identical to [`hsum`](Self::hsum) of that
    /// vector (the same additions in the same order, four vectors at a time where the ISA
    /// can interleave them).
    ///
    /// # Safety
    /// The ISA is present.
    #[inline(always)]
    unsafe fn hsum4(v: [Self::V; 4]) -> [f32; 4] {
        // SAFETY: the ISA is present (caller contract).
        unsafe { v.map(|x| Self::hsum(x)) }
    }
    /// Hint that the cache line holding `p` will be read soon (no-op where unsupported).
    ///
    /// # Safety
    /// The ISA is present (`p` need not be valid: prefetches never fault).
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        let _ = p;
    }
    /// Loads `LANES` f16 values (bit patterns) and widens them to f32 (exact).
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load_f16(p: *const u16) -> Self::V;
    /// Loads `LANES` bf16 values (bit patterns) and widens them to f32 (exact: a shift).
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    /// Rounds `v` to f16 (nearest, ties to even) and stores `LANES` bit patterns.
    ///
    /// # Safety
    /// `p` writable for `LANES` values; the ISA is present.
    unsafe fn store_f16(p: *mut u16, v: Self::V);
    /// Rounds `v` to bf16 (nearest, ties to even; NaN stays NaN) and stores `LANES` bit
    /// patterns.
    ///
    /// # Safety
    /// `p` writable for `LANES` values; the ISA is present.
    unsafe fn store_bf16(p: *mut u16, v: Self::V);
    /// Loads `LANES` int8 values and converts them to f32 (exact).
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load_i8(p: *const i8) -> Self::V;
    /// Loads `LANES` fp8 e5m2 codes and decodes them to f32 (exact: an e5m2 code is the
    /// top byte of an f16).
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load_f8e5m2(p: *const u8) -> Self::V;
    /// Loads `LANES` fp8 e4m3fn codes and decodes them to f32 (exact; the codes `0x7F` and
    /// `0xFF` give NaN).
    ///
    /// # Safety
    /// `p` readable for `LANES` values; the ISA is present.
    unsafe fn load_f8e4m3(p: *const u8) -> Self::V;
    /// [`load_f8e4m3`](Self::load_f8e4m3) divided by 256 (exact): what the fast widening
    /// gives before its multiply (the decode kernels fold the 256 into the rows' scales).
    ///
    /// # Safety
    /// As [`load_f8e4m3`](Self::load_f8e4m3).
    #[inline(always)]
    unsafe fn load_f8e4m3_raw(p: *const u8) -> Self::V {
        // SAFETY: forwarded contract.
        unsafe { Self::mul(Self::load_f8e4m3(p), Self::splat(1.0 / 256.0)) }
    }
}

/// Defines [`SimdOps`] methods that are one intrinsic of two vectors of type `$v`, inside
/// an x86 `impl SimdOps` (`vmaxps`/`vminps` return their second operand when unordered, as
/// [`SimdOps::max`] and [`SimdOps::min`] require).
#[cfg(target_arch = "x86_64")]
macro_rules! binary_ops {
    ($v:ty: $($name:ident => $intrinsic:ident),* $(,)?) => {
        $(
            #[inline(always)]
            unsafe fn $name(a: $v, b: $v) -> $v {
                // SAFETY: the ISA is present (caller contract).
                unsafe { $intrinsic(a, b) }
            }
        )*
    };
}
#[cfg(target_arch = "x86_64")]
use binary_ops;

/// Loads `S::LANES` values of any element type as f32 (the match is resolved at compile
/// time).
///
/// # Safety
/// `p` readable for `S::LANES` values; the ISA of `S` is present.
#[inline(always)]
pub(crate) unsafe fn load_as<S: SimdOps, E: Element>(p: *const E) -> S::V {
    // SAFETY: forwarded contract; `E::DTYPE` says what `p` points at.
    unsafe {
        match E::DTYPE {
            DType::F32 => S::load(p.cast()),
            DType::F16 => S::load_f16(p.cast()),
            DType::BF16 => S::load_bf16(p.cast()),
        }
    }
}

/// Loads `S::LANES` values of any row type (an [`Element`] or an 8-bit
/// [`Code`](crate::quant::Code)) as f32, exactly (the match is resolved at compile time).
///
/// # Safety
/// `p` readable for `S::LANES` values; the ISA of `S` is present.
#[inline(always)]
pub(crate) unsafe fn load_row<S: SimdOps, E: RowElem>(p: *const E) -> S::V {
    // SAFETY: forwarded contract; `E::ROW` says what `p` points at (the fp8 types are
    // transparent `u8`s).
    unsafe {
        match E::ROW {
            RowType::F32 => S::load(p.cast()),
            RowType::F16 => S::load_f16(p.cast()),
            RowType::BF16 => S::load_bf16(p.cast()),
            RowType::I8 => S::load_i8(p.cast()),
            RowType::F8E4M3 => S::load_f8e4m3(p.cast()),
            RowType::F8E5M2 => S::load_f8e5m2(p.cast()),
        }
    }
}

/// [`load_row`] divided by `E::RAW_SCALE` (exact): e4m3 rows without their widening's
/// multiply by 256, every other type as [`load_row`] loads it. The decode kernels read
/// rows this way and multiply the rows' scales by `E::RAW_SCALE`.
///
/// # Safety
/// As [`load_row`].
#[inline(always)]
pub(crate) unsafe fn load_row_raw<S: SimdOps, E: RowElem>(p: *const E) -> S::V {
    // SAFETY: forwarded contract.
    unsafe {
        match E::ROW {
            RowType::F8E4M3 => S::load_f8e4m3_raw(p.cast()),
            _ => load_row::<S, E>(p),
        }
    }
}

/// Stores `S::LANES` f32 values as `E`, rounded to nearest, ties to even.
///
/// # Safety
/// `p` writable for `S::LANES` values; the ISA of `S` is present.
#[inline(always)]
pub(crate) unsafe fn store_as<S: SimdOps, E: Element>(p: *mut E, v: S::V) {
    // SAFETY: forwarded contract; `E::DTYPE` says what `p` points at.
    unsafe {
        match E::DTYPE {
            DType::F32 => S::store(p.cast(), v),
            DType::F16 => S::store_f16(p.cast(), v),
            DType::BF16 => S::store_bf16(p.cast(), v),
        }
    }
}

/// A body generic over the vector ops, run by [`dispatch`] once per call with the ops of
/// the chosen ISA (monomorphised per ISA, loops included).
pub(crate) trait IsaKernel {
    /// What the body returns.
    type Output;
    /// Runs the body with the ops `S`. Implementations are `#[inline(always)]`, so the body
    /// is compiled inside the ISA's `#[target_feature]` runner.
    ///
    /// # Safety
    /// The CPU has the ISA of `S`.
    unsafe fn run<S: SimdOps>(self) -> Self::Output;
}

/// Runs `k` with the vector ops of `isa`: the one `match isa` of the SIMD kernels.
///
/// # Safety
/// The CPU supports `isa` (`isa.check()` succeeded).
#[inline]
pub(crate) unsafe fn dispatch<K: IsaKernel>(isa: Isa, k: K) -> K::Output {
    debug_assert!(isa.is_supported());
    match isa {
        // SAFETY: Scalar runs everywhere.
        Isa::Scalar => unsafe { k.run::<ScalarOps>() },
        // SAFETY: `wide` picks its instructions at compile time, so it runs on any CPU
        // this build runs on.
        Isa::Portable => unsafe { k.run::<WideOps>() },
        // SAFETY: the caller checked that the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { avx2::run(k) },
        // SAFETY: the caller checked that the CPU has AVX-512F (and AVX2, FMA, F16C).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::run(k) },
        // SAFETY: as Portable. No x86-64 kernels in this build (32-bit x86 reports AVX2
        // but runs the portable ops); Neon is reserved (refused as unsupported, so never
        // reaches here).
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2Fma | Isa::Avx512 => unsafe { k.run::<WideOps>() },
        // SAFETY: as Portable.
        Isa::Neon => unsafe { k.run::<WideOps>() },
    }
}
