//! Online-softmax building blocks for the fused (flash) attention kernel.
//!
//! # Math
//! Softmax-weighted sums `o = Σ_j p_j·v_j`, `p_j = exp(s_j − m) / ℓ`, can be computed over
//! key tiles without ever holding a whole score row, by carrying per query row a running
//! state `(m, ℓ)` — the max of the scores seen so far and `ℓ = Σ exp(s_j − m)` — and an
//! unnormalised output `õ = Σ exp(s_j − m)·v_j`:
//!
//! ```text
//! for each tile of scores s (one row):
//!     m'  = max(m, max_j s_j)                      exp_row_update: also p_j = exp(s_j − m'),
//!     α   = exp(m − m')                                         returns (m', Σ_j p_j)
//!     ℓ'  = α·ℓ + Σ_j p_j                          OnlineState::advance returns α
//!     õ'  = α·õ + Σ_j p_j·v_j                      rescale(õ, α), then the P·V product
//! finally o = õ / ℓ                                finish
//! ```
//!
//! Two partial states over disjoint key ranges (flash-decoding's split-K) combine with the
//! log-sum-exp merge: `m = max(m_a, m_b)`, `α = exp(m_a − m)`, `β = exp(m_b − m)`,
//! `ℓ = α·ℓ_a + β·ℓ_b`, `õ = α·õ_a + β·õ_b` ([`merge`], [`OnlineState::merge_weights`]).
//!
//! # Conventions
//! - The empty state is `(−inf, 0)` with a zero output. While every score seen is −inf
//!   (fully masked so far) the state stays `(−inf, 0)`, `exp_row_update` writes zeros and
//!   the rescale factor between two −inf maxima is 1 (not `exp(−inf + inf)` = NaN).
//! - [`finish`] of a state with `ℓ = 0` (a fully masked row) gives zeros.
//! - A NaN score poisons the state: `exp_row_update` returns `(NaN, NaN)`, and every later
//!   factor, sum and output is NaN.
//!
//! ```
//! use fastattn_kernels::softmax::online::{exp_row_update, finish, rescale, OnlineState};
//! use fastattn_kernels::Isa;
//! let isa = Isa::best();
//! // One query row against two key tiles of values v = [1, 2] and [3, 4] (head_dim 1).
//! let tiles = [([0.5f32, 1.5], [1.0f32, 2.0]), ([4.0, -1.0], [3.0, 4.0])];
//! let mut st = OnlineState::EMPTY;
//! let mut out = [0.0f32];
//! for (scores, v) in tiles {
//!     let mut p = scores;
//!     let (m, l) = exp_row_update(isa, &mut p, 1.0, st.max)?;
//!     let alpha = st.advance(m, l);
//!     rescale(isa, &mut out, alpha)?;
//!     out[0] += p[0] * v[0] + p[1] * v[1];
//! }
//! finish(&mut out, st);
//! // The same with a one-shot softmax.
//! let mut p = [0.5f32, 1.5, 4.0, -1.0];
//! fastattn_kernels::softmax::softmax_inplace(&mut p, 4)?;
//! let want = p[0] * 1.0 + p[1] * 2.0 + p[2] * 3.0 + p[3] * 4.0;
//! assert!((out[0] - want).abs() < 1e-5);
//! # Ok::<(), fastattn_kernels::KernelError>(())
//! ```

use super::kernel::{exp_sum, max_logit, scale_in_place};
use crate::dispatch::Isa;
use crate::error::{KernelError, Result};
use crate::exp::exp_scalar;
use crate::simd::{dispatch, IsaKernel, SimdOps};

/// The running state of one softmax row: the max of the scores seen and the sum of their
/// exps relative to that max.
///
/// ```
/// use fastattn_kernels::softmax::online::OnlineState;
/// let st = OnlineState::default();
/// assert_eq!(st, OnlineState::EMPTY);
/// assert_eq!(st.log_sum_exp(), f32::NEG_INFINITY);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineState {
    /// `m`: the largest score so far (−inf before any unmasked score).
    pub max: f32,
    /// `ℓ = Σ exp(s_j − m)` over the scores so far.
    pub sum: f32,
}

impl OnlineState {
    /// No scores yet: `(−inf, 0)`.
    pub const EMPTY: OnlineState = OnlineState {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// [`OnlineState::EMPTY`].
    pub const fn new() -> Self {
        Self::EMPTY
    }

    /// Takes in a tile whose exps were computed against `new_max` (as [`exp_row_update`]
    /// does when given `prev_max = self.max`) and sum to `tile_sum`. Returns the factor
    /// `α = exp(m_old − new_max)` by which the output accumulated so far must be multiplied
    /// ([`rescale`]); `ℓ ← α·ℓ + tile_sum`, `m ← new_max`.
    ///
    /// ```
    /// use fastattn_kernels::softmax::online::OnlineState;
    /// let mut st = OnlineState::EMPTY;
    /// assert_eq!(st.advance(2.0, 1.5), 0.0); // nothing to rescale yet
    /// assert_eq!(st.advance(2.0, 1.0), 1.0); // the max did not move
    /// assert_eq!(st, OnlineState { max: 2.0, sum: 2.5 });
    /// ```
    pub fn advance(&mut self, new_max: f32, tile_sum: f32) -> f32 {
        let alpha = rescale_factor(self.max, new_max);
        self.max = new_max;
        self.sum = alpha * self.sum + tile_sum;
        alpha
    }

    /// The merged state of two partial states over disjoint score ranges, and the weights
    /// `(α, β)` such that the merged output is `α·out_a + β·out_b`.
    ///
    /// With `m = max(m_a, m_b)`: `α = exp(m_a − m)`, `β = exp(m_b − m)`,
    /// `ℓ = α·ℓ_a + β·ℓ_b`. An empty state gets weight 0; two empty states merge into the
    /// empty state with weights 0; a NaN max gives a NaN state and NaN weights.
    ///
    /// ```
    /// use fastattn_kernels::softmax::online::OnlineState;
    /// let a = OnlineState { max: 1.0, sum: 2.0 };
    /// let (m, wa, wb) = a.merge_weights(OnlineState::EMPTY);
    /// assert_eq!((m, wa, wb), (a, 1.0, 0.0));
    /// ```
    pub fn merge_weights(self, other: OnlineState) -> (OnlineState, f32, f32) {
        if self.max.is_nan() || other.max.is_nan() {
            let nan = OnlineState {
                max: f32::NAN,
                sum: f32::NAN,
            };
            return (nan, f32::NAN, f32::NAN);
        }
        let m = self.max.max(other.max);
        if m == f32::NEG_INFINITY {
            return (OnlineState::EMPTY, 0.0, 0.0);
        }
        let wa = exp_scalar(self.max - m);
        let wb = exp_scalar(other.max - m);
        let merged = OnlineState {
            max: m,
            sum: wa * self.sum + wb * other.sum,
        };
        (merged, wa, wb)
    }

    /// `m + ln ℓ`, the log of the full softmax denominator (what flash-decoding keeps per
    /// split): −inf for the empty state.
    ///
    /// ```
    /// use fastattn_kernels::softmax::online::OnlineState;
    /// let st = OnlineState { max: 3.0, sum: 1.0 };
    /// assert_eq!(st.log_sum_exp(), 3.0);
    /// ```
    pub fn log_sum_exp(self) -> f32 {
        if self.sum == 0.0 {
            f32::NEG_INFINITY
        } else {
            self.max + self.sum.ln()
        }
    }
}

impl Default for OnlineState {
    fn default() -> Self {
        OnlineState::EMPTY
    }
}

/// `exp(prev_max − new_max)`: the factor by which an output accumulated against
/// `prev_max` must be multiplied when the max grows to `new_max`. It is 1 when the max did
/// not change (including two −inf maxima, where the difference would be NaN), 0 when
/// `prev_max` is −inf and `new_max` is not, and NaN when either is NaN.
///
/// ```
/// use fastattn_kernels::softmax::online::rescale_factor;
/// assert_eq!(rescale_factor(f32::NEG_INFINITY, f32::NEG_INFINITY), 1.0);
/// assert_eq!(rescale_factor(f32::NEG_INFINITY, 0.0), 0.0);
/// assert_eq!(rescale_factor(0.0, 0.0), 1.0);
/// assert!((rescale_factor(0.0, 1.0) - (-1.0f32).exp()).abs() < 1e-7);
/// ```
pub fn rescale_factor(prev_max: f32, new_max: f32) -> f32 {
    if prev_max == new_max {
        1.0
    } else {
        exp_scalar(prev_max - new_max)
    }
}

/// The exp-and-sum step on one tile of a score row.
struct RowUpdate<'a> {
    row: &'a mut [f32],
    scale: f32,
    prev_max: f32,
}

impl IsaKernel for RowUpdate<'_> {
    type Output = (f32, f32);
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) -> (f32, f32) {
        let n = self.row.len();
        let p = self.row.as_mut_ptr();
        // SAFETY: `p` is valid for the `n` values of the row (read, then written in place);
        // no mask is read; the ISA is present (caller contract).
        unsafe {
            let m = max_logit::<S, false>(p, std::ptr::null(), n, self.scale);
            let new_max = if self.prev_max.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                self.prev_max.max(m)
            };
            let shift = if new_max == f32::NEG_INFINITY {
                0.0
            } else {
                new_max
            };
            // Base 2 (`shift` is the new max, at least every logit): see `exp_shifted`.
            let sum = exp_sum::<S, false, true, true>(p, std::ptr::null(), p, n, self.scale, shift);
            if sum.is_nan() {
                (f32::NAN, f32::NAN)
            } else {
                (new_max, sum)
            }
        }
    }
}

/// One tile of the online softmax: with `s_j = scale·row[j]`,
/// `new_max = max(prev_max, max_j s_j)`; writes `row[j] = exp(s_j − new_max)` and returns
/// `(new_max, Σ_j row[j])`.
///
/// If `new_max` is −inf (everything masked so far) the row becomes zeros and the result is
/// `(−inf, 0)`. A NaN in the row or in `prev_max` gives `(NaN, NaN)` (and NaN values in
/// the row). An empty row returns `(prev_max, 0)`. Two passes over the row, no allocation.
///
/// Accuracy: the exponential is evaluated in base 2 (`2^(d·log2 e)` with
/// `d = s_j − new_max`, which is exact or correctly rounded), so an element's relative error
/// is about `(1 + 1.5·|d|)·2^-24`; measured against its size `e^d` that is at most about
/// `2^-24` of the row's largest term, the same as one rounding of the sum.
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::softmax::online::exp_row_update;
/// use fastattn_kernels::Isa;
/// let mut row = [1.0f32, 3.0, f32::NEG_INFINITY];
/// let (m, l) = exp_row_update(Isa::Scalar, &mut row, 1.0, 2.0)?;
/// assert_eq!(m, 3.0);
/// assert_eq!(row[1], 1.0);
/// assert_eq!(row[2], 0.0);
/// assert!((l - (1.0 + (-2.0f32).exp())).abs() < 1e-6);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn exp_row_update(isa: Isa, row: &mut [f32], scale: f32, prev_max: f32) -> Result<(f32, f32)> {
    isa.check()?;
    let k = RowUpdate {
        row,
        scale,
        prev_max,
    };
    // SAFETY: `isa` was checked above.
    Ok(unsafe { dispatch(isa, k) })
}

/// Multiplies a row in place.
struct Rescale<'a> {
    row: &'a mut [f32],
    factor: f32,
}

impl IsaKernel for Rescale<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let n = self.row.len();
        // SAFETY: the row holds `n` values; the ISA is present (caller contract).
        unsafe { scale_in_place::<S>(self.row.as_mut_ptr(), n, self.factor) }
    }
}

/// `out_row[j] *= factor`: the correction of a partial output when the running max grows
/// (`factor` from [`OnlineState::advance`] or [`rescale_factor`]).
///
/// A plain multiply: unlike the softmax normalisation it does not flush results below
/// `f32::MIN_POSITIVE` (the factors themselves are flushed by [`rescale_factor`]).
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// let mut o = [2.0f32, 4.0, 6.0];
/// fastattn_kernels::softmax::online::rescale(fastattn_kernels::Isa::best(), &mut o, 0.5)?;
/// assert_eq!(o, [1.0, 2.0, 3.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn rescale(isa: Isa, out_row: &mut [f32], factor: f32) -> Result<()> {
    isa.check()?;
    let k = Rescale {
        row: out_row,
        factor,
    };
    // SAFETY: `isa` was checked above.
    unsafe { dispatch(isa, k) };
    Ok(())
}

/// The log-sum-exp merge of two partial results over disjoint score ranges (flash-decoding):
/// `out = α·a_out + β·b_out` with the weights of [`OnlineState::merge_weights`]; returns the
/// merged state. The outputs are unnormalised (not yet divided by their sums); [`finish`]
/// the merged one.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the three rows differ in length.
///
/// ```
/// use fastattn_kernels::softmax::online::{finish, merge, OnlineState};
/// // Scores [0, ln 3] split in two halves; values 1 and 2.
/// let a = OnlineState { max: 0.0, sum: 1.0 };
/// let b = OnlineState { max: 3f32.ln(), sum: 1.0 };
/// let mut out = [0.0f32];
/// let st = merge(a, &[1.0], b, &[2.0], &mut out)?;
/// finish(&mut out, st);
/// assert!((out[0] - 1.75).abs() < 1e-6); // 0.25·1 + 0.75·2
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn merge(
    a: OnlineState,
    a_out: &[f32],
    b: OnlineState,
    b_out: &[f32],
    out: &mut [f32],
) -> Result<OnlineState> {
    if a_out.len() != out.len() || b_out.len() != out.len() {
        return Err(KernelError::ShapeMismatch {
            op: "online::merge",
            expected: format!("a_out, b_out and out of equal length ({})", out.len()),
            got: format!(
                "a_out.len() = {}, b_out.len() = {}",
                a_out.len(),
                b_out.len()
            ),
        });
    }
    let (st, wa, wb) = a.merge_weights(b);
    for ((o, &x), &y) in out.iter_mut().zip(a_out).zip(b_out) {
        *o = wa * x + wb * y;
    }
    Ok(st)
}

/// The final normalisation `out_row[j] /= ℓ`. A state with `ℓ = 0` (every score masked)
/// gives zeros; a NaN sum gives NaN.
///
/// ```
/// use fastattn_kernels::softmax::online::{finish, OnlineState};
/// let mut o = [3.0f32, 6.0];
/// finish(&mut o, OnlineState { max: 0.0, sum: 3.0 });
/// assert_eq!(o, [1.0, 2.0]);
/// let mut masked = [0.0f32; 2];
/// finish(&mut masked, OnlineState::EMPTY);
/// assert_eq!(masked, [0.0, 0.0]);
/// ```
pub fn finish(out_row: &mut [f32], state: OnlineState) {
    if state.sum == 0.0 {
        out_row.fill(0.0);
    } else {
        for o in out_row.iter_mut() {
            *o /= state.sum;
        }
    }
}
