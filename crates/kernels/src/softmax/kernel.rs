//! The generic row bodies behind [`super`] and [`super::online`], written once over
//! [`SimdOps`] and instantiated per ISA by [`crate::simd::dispatch`].
//!
//! A row is handled in at most three passes while it sits in L1: the max of the logits,
//! `exp(s − max)` with the running sum (stored, or only summed for log-softmax), and the
//! normalisation. The logits `s = x·scale (+ mask)` are recomputed in each pass rather than
//! stored: one multiply (or FMA) per vector is cheaper than another pass over memory, and
//! the same instructions give the same `s` in every pass.

use crate::exp::{exp2_v, exp_v};
use crate::simd::SimdOps;

/// What a row pass produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `exp(s − max) / Σ exp(s − max)`.
    Softmax,
    /// `(s − max) − ln Σ exp(s − max)`.
    LogSoftmax,
}

/// `s = x·scale (+ mask)` for the `LANES` elements at `j`.
///
/// # Safety
/// `x` (and `mask` when `M`) readable for `j + LANES` values; the ISA of `S` is present.
#[inline(always)]
unsafe fn logits<S: SimdOps, const M: bool>(
    x: *const f32,
    mask: *const f32,
    j: usize,
    scale: S::V,
) -> S::V {
    // SAFETY: in bounds by the caller's contract; the ISA is present.
    unsafe {
        let xv = S::load(x.add(j));
        if M {
            S::fma(xv, scale, S::load(mask.add(j)))
        } else {
            S::mul(xv, scale)
        }
    }
}

/// [`logits`] for the last `k < LANES` elements at `j`; lanes `k..` are −inf.
///
/// # Safety
/// `x` (and `mask` when `M`) readable for `j + k` values, `k < LANES`; the ISA is present.
#[inline(always)]
unsafe fn logits_tail<S: SimdOps, const M: bool>(
    x: *const f32,
    mask: *const f32,
    j: usize,
    k: usize,
    scale: S::V,
) -> S::V {
    // SAFETY: partial loads of `k` values inside the buffers (caller contract).
    unsafe {
        let xv = S::load_partial(x.add(j), k);
        let s = if M {
            S::fma(xv, scale, S::load_partial(mask.add(j), k))
        } else {
            S::mul(xv, scale)
        };
        S::fill_tail(s, k, f32::NEG_INFINITY)
    }
}

/// `max_j s_j` over `n` logits (−inf when `n == 0`). Four accumulators hide the latency of
/// the max. A NaN logit may or may not show in the result (callers catch NaN in the sum).
///
/// # Safety
/// `x` (and `mask` when `M`) readable for `n` values; the ISA of `S` is present.
#[inline(always)]
pub(crate) unsafe fn max_logit<S: SimdOps, const M: bool>(
    x: *const f32,
    mask: *const f32,
    n: usize,
    scale: f32,
) -> f32 {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: every access is at `j .. j + 4l`, `j .. j + l` or `j .. n`, inside `0..n` by
    // the loop conditions; the ISA is present (caller contract).
    unsafe {
        let sv = S::splat(scale);
        let ninf = S::splat(f32::NEG_INFINITY);
        let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
        while j + 4 * l <= n {
            m0 = S::max(m0, logits::<S, M>(x, mask, j, sv));
            m1 = S::max(m1, logits::<S, M>(x, mask, j + l, sv));
            m2 = S::max(m2, logits::<S, M>(x, mask, j + 2 * l, sv));
            m3 = S::max(m3, logits::<S, M>(x, mask, j + 3 * l, sv));
            j += 4 * l;
        }
        while j + l <= n {
            m0 = S::max(m0, logits::<S, M>(x, mask, j, sv));
            j += l;
        }
        if j < n {
            m1 = S::max(m1, logits_tail::<S, M>(x, mask, j, n - j, sv));
        }
        S::hmax(S::max(S::max(m0, m1), S::max(m2, m3)))
    }
}

/// `exp(d)` of `d = s − shift` (one vector): with `BASE2` as `2^(d·log2 e)` by [`exp2_v`].
///
/// The base-2 form is the online softmax's: about 20% fewer vector ops than [`exp_v`]
/// (no Cody–Waite split, no upper clamp). It needs `d ≤ 0`, which holds exactly when
/// `shift` is at least every `s` as f32 values (rounding is monotone), and it rounds
/// `d·log2 e` once, so an element's error grows to about `(1 + 1.5·|d|)·2^-24` relative:
/// at most ~`2^-24` of the row's largest term, `e^0 = 1`.
///
/// # Safety
/// The ISA of `S` is present.
#[inline(always)]
unsafe fn exp_shifted<S: SimdOps, const BASE2: bool>(s: S::V, shift: S::V) -> S::V {
    // SAFETY: register-only ops; the ISA is present (caller contract).
    unsafe {
        if BASE2 {
            exp2_v::<S>(S::mul(S::sub(s, shift), S::splat(std::f32::consts::LOG2_E)))
        } else {
            exp_v::<S>(S::sub(s, shift))
        }
    }
}

/// `e_j = exp(s_j − shift)` for `j < n`, stored to `dst` when `STORE`, and `Σ e_j`; with
/// `BASE2` through [`exp_shifted`]'s base-2 form, which needs `shift ≥ s_j` for every `j`
/// (or 0 when every `s_j` is −inf).
///
/// # Safety
/// `x` (and `mask` when `M`) readable for `n` values, `dst` writable for `n` values when
/// `STORE` (it may equal `x`, but must not overlap it otherwise); the ISA is present.
#[inline(always)]
pub(crate) unsafe fn exp_sum<S: SimdOps, const M: bool, const STORE: bool, const BASE2: bool>(
    x: *const f32,
    mask: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    shift: f32,
) -> f32 {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: accesses at `j .. j + 2l`, `j .. j + l`, `j .. n`, inside `0..n` by the loop
    // conditions; each range is loaded before it is stored, so `dst == x` is fine.
    unsafe {
        let sv = S::splat(scale);
        let hv = S::splat(shift);
        let (mut a0, mut a1) = (S::splat(0.0), S::splat(0.0));
        while j + 2 * l <= n {
            let e0 = exp_shifted::<S, BASE2>(logits::<S, M>(x, mask, j, sv), hv);
            let e1 = exp_shifted::<S, BASE2>(logits::<S, M>(x, mask, j + l, sv), hv);
            if STORE {
                S::store(dst.add(j), e0);
                S::store(dst.add(j + l), e1);
            }
            a0 = S::add(a0, e0);
            a1 = S::add(a1, e1);
            j += 2 * l;
        }
        if j + l <= n {
            let e0 = exp_shifted::<S, BASE2>(logits::<S, M>(x, mask, j, sv), hv);
            if STORE {
                S::store(dst.add(j), e0);
            }
            a0 = S::add(a0, e0);
            j += l;
        }
        if j < n {
            let k = n - j;
            // Lanes k.. are −inf − shift = −inf (or NaN only if shift is NaN, which makes
            // the whole row NaN anyway), so they add exp(−inf) = 0.
            let e = exp_shifted::<S, BASE2>(logits_tail::<S, M>(x, mask, j, k, sv), hv);
            if STORE {
                S::store_partial(dst.add(j), k, e);
            }
            a1 = S::add(a1, e);
        }
        S::hsum(S::add(a0, a1))
    }
}

/// `dst[j] *= factor` for `j < n`.
///
/// # Safety
/// `dst` readable and writable for `n` values; the ISA is present.
#[inline(always)]
pub(crate) unsafe fn scale_in_place<S: SimdOps>(dst: *mut f32, n: usize, factor: f32) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: accesses inside `0..n` by the loop conditions; the ISA is present.
    unsafe {
        let f = S::splat(factor);
        while j + 2 * l <= n {
            let a = S::load(dst.add(j));
            let b = S::load(dst.add(j + l));
            S::store(dst.add(j), S::mul(a, f));
            S::store(dst.add(j + l), S::mul(b, f));
            j += 2 * l;
        }
        if j + l <= n {
            S::store(dst.add(j), S::mul(S::load(dst.add(j)), f));
            j += l;
        }
        if j < n {
            let k = n - j;
            S::store_partial(dst.add(j), k, S::mul(S::load_partial(dst.add(j), k), f));
        }
    }
}

/// `dst[j] = e_j / sum` for the stored exps `e_j` of a row, as `e_j·(1/sum)`, with the `e_j`
/// whose quotient would fall below `f32::MIN_POSITIVE` set to 0 *before* the multiply: a
/// multiply with a subnormal result costs a ~100-cycle microcode assist on x86, and rows
/// with widely spread logits would otherwise take one per vector.
///
/// # Safety
/// `dst` readable and writable for `n` values; `sum >= 1`; the ISA is present.
#[inline(always)]
pub(crate) unsafe fn normalise<S: SimdOps>(dst: *mut f32, n: usize, sum: f32) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: accesses inside `0..n` by the loop conditions; the ISA is present.
    unsafe {
        let inv = S::splat(1.0 / sum);
        // e ≥ thr ⇒ e·RN(1/sum) ≥ 2^-126·(1 + 2^-10)(1 − 2^-24) > 2^-126.
        let thr = S::splat(f32::MIN_POSITIVE * sum * (1.0 + 1.0 / 1024.0));
        while j + 2 * l <= n {
            let a = S::load(dst.add(j));
            let b = S::load(dst.add(j + l));
            S::store(dst.add(j), S::mul(S::zero_below(a, a, thr), inv));
            S::store(dst.add(j + l), S::mul(S::zero_below(b, b, thr), inv));
            j += 2 * l;
        }
        if j + l <= n {
            let a = S::load(dst.add(j));
            S::store(dst.add(j), S::mul(S::zero_below(a, a, thr), inv));
            j += l;
        }
        if j < n {
            let k = n - j;
            let a = S::load_partial(dst.add(j), k);
            S::store_partial(dst.add(j), k, S::mul(S::zero_below(a, a, thr), inv));
        }
    }
}

/// `dst[j] = (s_j − shift) − lns` for `j < n` (two subtractions, so a large `shift` does not
/// swallow the small `lns`).
///
/// # Safety
/// As [`exp_sum`] with `STORE`.
#[inline(always)]
unsafe fn log_write<S: SimdOps, const M: bool>(
    x: *const f32,
    mask: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    shift: f32,
    lns: f32,
) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: accesses inside `0..n` by the loop conditions, loads before stores.
    unsafe {
        let sv = S::splat(scale);
        let hv = S::splat(shift);
        let lv = S::splat(lns);
        while j + l <= n {
            let s = logits::<S, M>(x, mask, j, sv);
            S::store(dst.add(j), S::sub(S::sub(s, hv), lv));
            j += l;
        }
        if j < n {
            let k = n - j;
            let s = logits_tail::<S, M>(x, mask, j, k, sv);
            S::store_partial(dst.add(j), k, S::sub(S::sub(s, hv), lv));
        }
    }
}

/// One row: `dst[..nv]` = softmax (or log-softmax) of `s = x·scale (+ mask)` over the first
/// `nv` columns, `dst[nv..n]` = 0 (or −inf): the columns a causal limit cuts off.
///
/// Edge semantics (see [`super`]): every logit −inf → zeros (log: −inf); any NaN logit →
/// the row is NaN; a +inf logit → NaN (as `inf − inf`).
///
/// # Safety
/// `x` readable and `dst` writable for `n` values (equal pointers allowed, no other
/// overlap); `mask`, when given, readable for `n` values; `nv <= n`; the ISA is present.
#[inline(always)]
pub(crate) unsafe fn row<S: SimdOps>(
    mode: Mode,
    x: *const f32,
    mask: Option<*const f32>,
    dst: *mut f32,
    n: usize,
    nv: usize,
    scale: f32,
) {
    debug_assert!(nv <= n);
    // SAFETY: forwarded contract.
    unsafe {
        match mask {
            Some(m) => row_m::<S, true>(mode, x, m, dst, n, nv, scale),
            None => row_m::<S, false>(mode, x, std::ptr::null(), dst, n, nv, scale),
        }
    }
}

/// [`row`] with the mask presence as a constant.
///
/// # Safety
/// As [`row`]; `mask` readable for `n` values when `M` (unused otherwise).
#[inline(always)]
unsafe fn row_m<S: SimdOps, const M: bool>(
    mode: Mode,
    x: *const f32,
    mask: *const f32,
    dst: *mut f32,
    n: usize,
    nv: usize,
    scale: f32,
) {
    let cut = match mode {
        Mode::Softmax => 0.0,
        Mode::LogSoftmax => f32::NEG_INFINITY,
    };
    for j in nv..n {
        // SAFETY: j < n, inside dst.
        unsafe { *dst.add(j) = cut };
    }
    if nv == 0 {
        return;
    }
    // SAFETY: the passes stay inside the first `nv <= n` values (caller contract).
    unsafe {
        let m = max_logit::<S, M>(x, mask, nv, scale);
        // Fully masked row: every logit is −inf (or NaN). Shift by 0 so exp(−inf) = 0 and a
        // NaN still reaches the sum, instead of computing −inf − (−inf) = NaN.
        let shift = if m == f32::NEG_INFINITY { 0.0 } else { m };
        match mode {
            Mode::Softmax => {
                let sum = exp_sum::<S, M, true, false>(x, mask, dst, nv, scale, shift);
                // sum >= 1 whenever the max is finite (its own term is exp(0) = 1); 0 only
                // for a fully masked row, whose exps are already stored as zeros.
                if sum != 0.0 {
                    normalise::<S>(dst, nv, sum);
                }
            }
            Mode::LogSoftmax => {
                let sum = exp_sum::<S, M, false, false>(x, mask, dst, nv, scale, shift);
                if sum == 0.0 {
                    for j in 0..nv {
                        *dst.add(j) = f32::NEG_INFINITY;
                    }
                } else {
                    log_write::<S, M>(x, mask, dst, nv, scale, shift, sum.ln());
                }
            }
        }
    }
}
