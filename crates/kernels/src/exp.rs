//! A vectorised single-precision `exp`, with a scalar twin that uses the same polynomial.
//!
//! # Algorithm
//! 1. Clamp `x` to `[EXP_UNDERFLOW, 89]` (`max(lo, min(hi, x))` in the order that keeps a
//!    NaN). Every `x` above `88.73` has a result above `f32::MAX` anyway, and the lower
//!    clamp keeps every intermediate and the result normal (see step 5).
//! 2. Range reduction: `n = round(x·log2 e)` (by adding `1.5·2^23`, which also leaves `n`
//!    in the low mantissa bits), `r = x − n·ln2_hi − n·ln2_lo` with ln 2 split Cody–Waite
//!    style into `ln2_hi = 0.693359375` (9 significant bits, so `n·ln2_hi` and the first
//!    subtraction are exact) and `ln2_lo = −2.121944e-4`. Then `|r| ≤ 0.347`.
//! 3. `exp(r) ≈ 1 + r + r²·P(r)`, with `P` the degree-5 minimax polynomial of Cephes'
//!    `expf`, evaluated by Horner's rule (FMAs where the ISA has them).
//! 4. `exp(x) = exp(r)·2^n` with `n` in `[-126, 128]`: `2^n` is built in the exponent bits
//!    as two exact factors `2^⌊n/2⌋·2^(n−⌊n/2⌋)` (AVX-512 uses `vscalefps`), so only the
//!    last product rounds and `n = 128` overflows to `+inf` exactly when it should.
//! 5. Lanes with `x < EXP_UNDERFLOW`, whose exact result is below `f32::MIN_POSITIVE`,
//!    are set to `+0` by a select. **Results are flushed to zero below the smallest normal
//!    f32 (`2^-126 ≈ 1.18e-38`): no subnormal is ever produced.** That is deliberate: on x86
//!    an arithmetic result that underflows takes a microcode assist of ~100 cycles, and
//!    masked scores (−inf) are the common case in attention; computing them through an
//!    underflowing multiply made `exp(−inf)` 10–35× slower than `exp(0)`.
//!
//! Everything is branch-free: −inf and every `x` < [`EXP_UNDERFLOW`] give `+0`, every
//! `x` > [`EXP_OVERFLOW`] (and +inf) gives `+inf`, NaN gives NaN.
//!
//! # Accuracy
//! Measured, not assumed: the test `exp_every_variant_is_within_its_ulp_bound_on_a_dense_sweep`
//! runs every variant the CPU has over ~25 million inputs (every 211th f32 bit pattern,
//! so every exponent of both signs, plus a uniform grid of 4 Mi points over `[-104, 89]`
//! and every f32 near the overflow and underflow thresholds) against `f64::exp`, and
//! asserts:
//!
//! | inputs | asserted | measured (AVX-512 Xeon) |
//! |--------|----------|-------------------------|
//! | `EXP_UNDERFLOW ≤ x ≤ EXP_OVERFLOW` (normal results) | ≤ [`MAX_ULP_ERROR`] = 1.5 ulp | Scalar, Portable 0.97 ulp; Avx2Fma, Avx512 1.01 ulp |
//! | `x < EXP_UNDERFLOW`, −inf | `+0` exactly | exact |
//! | `x > EXP_OVERFLOW`, +inf | `+inf` exactly | exact |
//! | NaN | NaN | exact |
//!
//! So results are faithfully rounded or within one more rounding of it: about 1 ulp.
//!
//! # Tails
//! The vector variants run the tail of a slice (`len % LANES` values) through the same
//! vector code with masked loads and stores, so the result for a value does not depend on
//! where in the slice it sits.
//!
//! ```
//! let x = [0.0f32, 1.0, -1.0, f32::NEG_INFINITY, 100.0, f32::NAN];
//! let mut y = [0.0f32; 6];
//! fastattn_kernels::exp::exp_slice(&x, &mut y)?;
//! assert_eq!(y[0], 1.0);
//! assert!((y[1] - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON * std::f32::consts::E);
//! assert_eq!(y[3], 0.0);
//! assert_eq!(y[4], f32::INFINITY);
//! assert!(y[5].is_nan());
//! # Ok::<(), fastattn_kernels::KernelError>(())
//! ```

use crate::dispatch::{current_isa, Isa};
use crate::error::{KernelError, Result};
use crate::simd::{dispatch, IsaKernel, ScalarOps, SimdOps, SHIFTER};

/// Inputs below this give `+0`: it is the smallest f32 whose exp is at least
/// `f32::MIN_POSITIVE = 2^-126` (`ln 2^-126 ≈ -87.336545`). Results that would be
/// subnormal are flushed to zero (see the module docs for why).
pub const EXP_UNDERFLOW: f32 = -87.336_54;

/// Inputs above this give `+inf`: it is the largest f32 whose exp is below
/// `f32::MAX + ulp/2` (the largest input with a finite result).
pub const EXP_OVERFLOW: f32 = 88.722_83;

/// The error bound on normal results, in units in the last place of the exact result's
/// binade, that the accuracy test asserts for every variant (measured: about 1.01).
pub const MAX_ULP_ERROR: f64 = 1.5;

/// Upper clamp (see the module docs).
const CLAMP_HI: f32 = 89.0;
/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// High part of ln 2: exactly `0.693359375 = 355/512` (9 significant bits, so `n·LN2_HI` is
/// exact for `|n| ≤ 2^15`); the literal is its shortest f32 spelling.
const LN2_HI: f32 = 0.693_359_4;
/// `ln 2 − LN2_HI`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` minimax coefficients: `exp(r) ≈ 1 + r + r²·(P5 + r·(P4 + … r·P0))`
/// (Cephes' `P5 = 5.0000001201e-1` is `0.5` in f32).
const P0: f32 = 1.987_569_2e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// `exp` of every lane: the vector body shared by every variant and by softmax.
///
/// # Safety
/// The CPU has the ISA of `S`.
#[inline(always)]
pub(crate) unsafe fn exp_v<S: SimdOps>(x: S::V) -> S::V {
    // SAFETY: the ISA of `S` is present (caller contract); these are register-only ops.
    unsafe {
        let lo = S::splat(EXP_UNDERFLOW);
        // `min`/`max` return their second operand when unordered: NaN survives the clamp.
        let xc = S::max(lo, S::min(S::splat(CLAMP_HI), x));
        let t = S::fma(xc, S::splat(LOG2E), S::splat(SHIFTER));
        let n = S::sub(t, S::splat(SHIFTER));
        let r = S::fma(n, S::splat(-LN2_HI), xc);
        let r = S::fma(n, S::splat(-LN2_LO), r);
        let r2 = S::mul(r, r);
        let p = S::fma(S::splat(P0), r, S::splat(P1));
        let p = S::fma(p, r, S::splat(P2));
        let p = S::fma(p, r, S::splat(P3));
        let p = S::fma(p, r, S::splat(P4));
        let p = S::fma(p, r, S::splat(P5));
        let y = S::fma(p, r2, r);
        let y = S::add(y, S::splat(1.0));
        S::zero_below(S::pow2_scale(y, n, t), x, lo)
    }
}

/// Lower clamp of [`exp2_v`]: `2^-126` is the smallest normal f32.
const EXP2_LO: f32 = -126.0;
/// Near-minimax coefficients of `2^r ≈ Σ Q_k·r^k` on `[-0.5, 0.5]` (relative error
/// about 1e-8 in exact arithmetic; fitted for this crate).
/// (The fit lands exactly on the f32 nearest ln 2.)
const Q1: f32 = std::f32::consts::LN_2;
const Q2: f32 = 0.240_226_46;
const Q3: f32 = 0.055_503_286;
const Q4: f32 = 0.009_618_488;
const Q5: f32 = 0.001_339_993_2;
const Q6: f32 = 1.534_594e-4;

/// `2^x` of every lane, for the online softmax of attention, whose arguments are
/// `(s − max)·log2 e ≤ 0` up to rounding: cheaper than [`exp_v`] because the argument
/// needs no Cody–Waite split (`r = x − round(x)` is exact in binary) and no upper clamp.
///
/// Defined for `x ≤ 64` (in particular for every `x ≤ 0`): lanes below `−126`, and −inf,
/// give `+0` (no subnormal is produced, as in [`exp_v`]); NaN gives NaN. The error on
/// normal results is asserted ≤ 2 ulp against `f64::exp2` on a dense sweep (measured
/// 0.92 ulp on Avx2Fma and Avx512, 1.17 on Scalar and Portable). Larger `x` are outside
/// the contract (no overflow handling).
///
/// # Safety
/// The CPU has the ISA of `S`.
#[inline(always)]
pub(crate) unsafe fn exp2_v<S: SimdOps>(x: S::V) -> S::V {
    // SAFETY: the ISA of `S` is present (caller contract); register-only ops.
    unsafe {
        let lo = S::splat(EXP2_LO);
        // `max` returns its second operand when unordered: NaN survives the clamp.
        let xc = S::max(lo, x);
        let t = S::add(xc, S::splat(SHIFTER));
        let n = S::sub(t, S::splat(SHIFTER));
        let r = S::sub(xc, n);
        let p = S::fma(S::splat(Q6), r, S::splat(Q5));
        let p = S::fma(p, r, S::splat(Q4));
        let p = S::fma(p, r, S::splat(Q3));
        let p = S::fma(p, r, S::splat(Q2));
        let p = S::fma(p, r, S::splat(Q1));
        let y = S::fma(p, r, S::splat(1.0));
        S::zero_below(S::pow2_scale(y, n, t), x, lo)
    }
}

/// `dst[i] = exp(src[i])` for `i < n` (two vectors per step, then one, then a masked tail).
///
/// # Safety
/// `src` readable and `dst` writable for `n` values (they may be the same pointer, but must
/// not overlap otherwise); the CPU has the ISA of `S`.
#[inline(always)]
pub(crate) unsafe fn exp_stream<S: SimdOps>(src: *const f32, dst: *mut f32, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: every access below is at `i .. i + 2l`, `i .. i + l` or `i .. n` with that
    // range inside `0..n` by the loop conditions; loads precede stores to the same range,
    // so `src == dst` is fine. The ISA is present (caller contract).
    unsafe {
        while i + 2 * l <= n {
            let a = S::load(src.add(i));
            let b = S::load(src.add(i + l));
            S::store(dst.add(i), exp_v::<S>(a));
            S::store(dst.add(i + l), exp_v::<S>(b));
            i += 2 * l;
        }
        if i + l <= n {
            S::store(dst.add(i), exp_v::<S>(S::load(src.add(i))));
            i += l;
        }
        if i < n {
            let k = n - i;
            S::store_partial(dst.add(i), k, exp_v::<S>(S::load_partial(src.add(i), k)));
        }
    }
}

/// The scalar twin: the same clamp, reduction, polynomial and scaling as the vector
/// variants, in plain f32 arithmetic (unfused multiply-adds), for one value.
///
/// ```
/// use fastattn_kernels::exp::exp_scalar;
/// assert_eq!(exp_scalar(0.0), 1.0);
/// assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
/// assert_eq!(exp_scalar(89.0), f32::INFINITY);
/// assert!(exp_scalar(f32::NAN).is_nan());
/// let e = exp_scalar(1.0);
/// assert!((e - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON * e);
/// ```
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    // SAFETY: ScalarOps needs no CPU feature.
    unsafe { exp_v::<ScalarOps>(x) }
}

/// The oracle: `exp` in f64 (correctly rounded to within an f64 ulp, i.e. far below an f32
/// ulp). The accuracy tests measure every variant against it.
///
/// ```
/// assert_eq!(fastattn_kernels::exp::exp_ref(0.0), 1.0);
/// ```
pub fn exp_ref(x: f32) -> f64 {
    (x as f64).exp()
}

/// The exp body over a slice: `dst = exp(src)`, or in place when `src` is `None`.
struct ExpSlice<'a> {
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
}

impl IsaKernel for ExpSlice<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let n = self.dst.len();
        let dst = self.dst.as_mut_ptr();
        let src = match self.src {
            Some(s) => s.as_ptr(),
            None => dst as *const f32,
        };
        // SAFETY: `src` and `dst` hold `n` values (lengths checked by the callers); they are
        // the same pointer or distinct slices; the ISA is present (caller contract).
        unsafe { exp_stream::<S>(src, dst, n) }
    }
}

/// `out[i] = exp(x[i])` with the current variant ([`current_isa`]).
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ; [`KernelError::UnsupportedIsa`] if
/// `FASTATTN_ISA` names an ISA this CPU lacks.
///
/// ```
/// let mut y = [0.0f32; 3];
/// fastattn_kernels::exp::exp_slice(&[0.0, f32::NEG_INFINITY, f32::INFINITY], &mut y)?;
/// assert_eq!(y, [1.0, 0.0, f32::INFINITY]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn exp_slice(x: &[f32], out: &mut [f32]) -> Result<()> {
    exp_slice_with(current_isa()?, x, out)
}

/// [`exp_slice`] with the variant chosen by the caller.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ; [`KernelError::UnsupportedIsa`] if
/// the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::{exp::exp_slice_with, Isa};
/// let mut y = [0.0f32; 2];
/// exp_slice_with(Isa::Scalar, &[0.0, -1e9], &mut y)?;
/// assert_eq!(y, [1.0, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn exp_slice_with(isa: Isa, x: &[f32], out: &mut [f32]) -> Result<()> {
    isa.check()?;
    if x.len() != out.len() {
        return Err(KernelError::ShapeMismatch {
            op: "exp_slice",
            expected: format!("out.len() == x.len() = {}", x.len()),
            got: format!("out.len() = {}", out.len()),
        });
    }
    let k = ExpSlice {
        src: Some(x),
        dst: out,
    };
    // SAFETY: `isa` was checked above.
    unsafe { dispatch(isa, k) };
    Ok(())
}

/// `x[i] = exp(x[i])` with the current variant ([`current_isa`]).
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if `FASTATTN_ISA` names an ISA this CPU lacks.
///
/// ```
/// let mut x = [0.0f32, f32::NAN];
/// fastattn_kernels::exp::exp_inplace(&mut x)?;
/// assert_eq!(x[0], 1.0);
/// assert!(x[1].is_nan());
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn exp_inplace(x: &mut [f32]) -> Result<()> {
    exp_inplace_with(current_isa()?, x)
}

/// [`exp_inplace`] with the variant chosen by the caller.
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::{exp::exp_inplace_with, Isa};
/// let mut x = [0.0f32; 5];
/// exp_inplace_with(Isa::Portable, &mut x)?;
/// assert_eq!(x, [1.0; 5]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn exp_inplace_with(isa: Isa, x: &mut [f32]) -> Result<()> {
    isa.check()?;
    let k = ExpSlice { src: None, dst: x };
    // SAFETY: `isa` was checked above.
    unsafe { dispatch(isa, k) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dst[i] = 2^src[i]` through [`exp2_v`], one vector at a time (tails padded with 0).
    struct Exp2Slice<'a> {
        src: &'a [f32],
        dst: &'a mut [f32],
    }

    impl IsaKernel for Exp2Slice<'_> {
        type Output = ();
        #[inline(always)]
        unsafe fn run<S: SimdOps>(self) {
            let l = S::LANES;
            let mut buf = [0.0f32; 16];
            for (s, d) in self.src.chunks(l).zip(self.dst.chunks_mut(l)) {
                buf[..s.len()].copy_from_slice(s);
                // SAFETY: `buf` holds 16 ≥ LANES values; the ISA is present (caller).
                unsafe { S::store(buf.as_mut_ptr(), exp2_v::<S>(S::load(buf.as_ptr()))) };
                d.copy_from_slice(&buf[..d.len()]);
            }
        }
    }

    /// Error of `got` against `want` in units of the last place of `want`'s binade.
    fn ulps(got: f32, want: f64) -> f64 {
        let e = want.log2().floor() as i32 - 23;
        (got as f64 - want).abs() / 2f64.powi(e)
    }

    #[test]
    fn exp2_every_variant_is_within_2_ulp_and_defined_at_the_edges() {
        // A dense grid over [-130, 0], every 97th negative f32 of magnitude ≤ 130, a few
        // small positive arguments, and the edge values.
        let mut x: Vec<f32> = (0..=1_300_000).map(|i| -(i as f32) * 1e-4).collect();
        x.extend((0u32..0x4302_0000).step_by(97).map(|b| -f32::from_bits(b)));
        x.extend([1e-7, 0.3, 1.0, 2.5, 10.0, -126.0, -125.999, -126.001]);
        let specials = [f32::NEG_INFINITY, f32::NAN, -1e30, -0.0];
        x.extend(specials);
        for isa in Isa::available() {
            let mut y = vec![0.0f32; x.len()];
            let k = Exp2Slice {
                src: &x,
                dst: &mut y,
            };
            // SAFETY: `isa` is available on this CPU.
            unsafe { dispatch(isa, k) };
            let mut worst = (0.0f64, 0.0f32);
            for (&xi, &yi) in x.iter().zip(&y) {
                if xi.is_nan() {
                    assert!(yi.is_nan(), "{isa}: 2^NaN = {yi}");
                } else if xi < -126.0 {
                    assert_eq!(yi.to_bits(), 0, "{isa}: 2^{xi} = {yi}, want +0");
                } else {
                    let u = ulps(yi, (xi as f64).exp2());
                    if u > worst.0 {
                        worst = (u, xi);
                    }
                }
            }
            eprintln!("exp2 {isa}: max {:.3} ulp at x = {}", worst.0, worst.1);
            assert!(worst.0 <= 2.0, "{isa}: {} ulp at x = {}", worst.0, worst.1);
        }
    }
}
