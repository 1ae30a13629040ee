//! Options of a scaled dot-product attention call and the per-element semantics they define.

use crate::error::{AttnError, Result};
use crate::tensor::TensorRef;
use kernels::{Isa, Parallelism};

/// An explicit mask over `[B|1, Hq|1, Lq, Lk]`. Batch and head dimensions of size 1 (or
/// stride 0) broadcast.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Mask<'a> {
    /// `true` = the query may look at the key (PyTorch's convention); `false` = masked out.
    Bool(TensorRef<'a, bool>),
    /// Added to the (scaled, soft-capped) score; `-inf` masks the key out.
    Additive(TensorRef<'a, f32>),
}

impl Mask<'_> {
    fn dims(&self) -> [usize; 4] {
        match self {
            Mask::Bool(t) => t.dims(),
            Mask::Additive(t) => t.dims(),
        }
    }
}

/// Which implementation runs the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AttnPath {
    /// The library chooses: the fused flash path, or the materialised one when the
    /// attention weights are requested.
    #[default]
    Auto,
    /// Tiled online softmax, no `Lq × Lk` buffer (refused when weights are requested).
    Flash,
    /// GEMM → softmax → GEMM through an `Lq × Lk` buffer per head.
    Materialized,
}

/// Options of [`crate::sdpa`]. `SdpaOptions::default()` is plain non-causal attention
/// with scale `1/√D`.
///
/// # Semantics
/// For batch `b`, query head `h`, query `i` and key `j`, with `n_b` the batch's valid key
/// count (`kv_lengths[b]`, else `Lk`) and `off = n_b − Lq` (queries aligned to the bottom
/// right of the key sequence, as in FlashAttention-2, so query `i` sits at position
/// `i + off`):
///
/// * key `j` is visible iff `j < n_b`, and (causal) `j ≤ i + off`, and
///   (window) `i + off − left ≤ j ≤ i + off + right`, and the boolean mask (if any) is true;
/// * the score is `s = scale·q·k`, then `cap·tanh(s/cap)` with soft-capping, then
///   `− slope_h·|i + off − j|` with ALiBi, then `+ mask` for an additive mask;
/// * weights are the softmax of the visible scores; a row with no visible key gets zero
///   weights and a zero output (and log-sum-exp `−inf`), never NaN;
/// * with sinks, head `h`'s sink logit `t_h` joins every row's denominator:
///   `w_j = e^(s_j) / (Σ_k e^(s_k) + e^(t_h))`, and adds no value, so a row's weights sum to
///   less than 1; its log-sum-exp includes `t_h` (and is `t_h` for a row with no visible
///   key, whose output stays zero).
///
/// Build one from [`SdpaOptions::new`] (or `default()`) with the `with_*` methods; the
/// fields stay public to read and to set. The struct is `#[non_exhaustive]`, so options
/// added later do not break callers.
///
/// ```
/// use fastattn_attention::SdpaOptions;
/// let opts = SdpaOptions::new().with_causal(true).with_scale(0.125).with_window(Some(256), Some(0));
/// assert!(opts.causal && opts.scale == Some(0.125) && opts.window_left == Some(256));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SdpaOptions<'a> {
    /// Score scale; `None` means `1/√D`.
    pub scale: Option<f32>,
    /// Causal masking, bottom-right aligned (see the type docs).
    pub causal: bool,
    /// An explicit boolean or additive mask.
    pub mask: Option<Mask<'a>>,
    /// Valid key count per batch (padding): `B` values, each `≤ Lk`.
    pub kv_lengths: Option<&'a [usize]>,
    /// Sliding window: keys at most this many positions before the query's position.
    pub window_left: Option<usize>,
    /// Sliding window: keys at most this many positions after the query's position.
    pub window_right: Option<usize>,
    /// ALiBi slopes, one per query head.
    pub alibi_slopes: Option<&'a [f32]>,
    /// Logit soft-capping `cap·tanh(s/cap)` (Gemma 2); must be finite and > 0.
    pub softcap: Option<f32>,
    /// Attention sinks: one logit per query head that joins every row's softmax
    /// denominator and contributes no value (gpt-oss's `s_aux`). Rows then sum to less
    /// than 1; a row with no visible key still gets a zero output, and its log-sum-exp is
    /// the sink. `-inf` is no sink; NaN and `+inf` are refused.
    pub sinks: Option<&'a [f32]>,
    /// Force a path (for profiling); both give the same results within rounding.
    pub path: AttnPath,
    /// Force a kernel variant; `None` uses [`kernels::current_isa`].
    pub isa: Option<Isa>,
    /// Threads: the current thread count (default; `kernels::parallel::current_threads`) or
    /// the calling thread only.
    pub parallelism: Parallelism,
}

impl<'a> SdpaOptions<'a> {
    /// Plain non-causal attention with scale `1/√D` (the same as `default()`).
    pub fn new() -> Self {
        SdpaOptions::default()
    }

    /// Sets [`scale`](Self::scale) (`None`: `1/√D`).
    pub fn with_scale(mut self, scale: impl Into<Option<f32>>) -> Self {
        self.scale = scale.into();
        self
    }

    /// Sets [`causal`](Self::causal).
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// Sets [`mask`](Self::mask).
    pub fn with_mask(mut self, mask: impl Into<Option<Mask<'a>>>) -> Self {
        self.mask = mask.into();
        self
    }

    /// Sets [`kv_lengths`](Self::kv_lengths).
    pub fn with_kv_lengths(mut self, kv_lengths: Option<&'a [usize]>) -> Self {
        self.kv_lengths = kv_lengths;
        self
    }

    /// Sets [`window_left`](Self::window_left) and [`window_right`](Self::window_right)
    /// (`None`: unbounded on that side).
    pub fn with_window(mut self, left: Option<usize>, right: Option<usize>) -> Self {
        self.window_left = left;
        self.window_right = right;
        self
    }

    /// Sets [`window_left`](Self::window_left).
    pub fn with_window_left(mut self, left: Option<usize>) -> Self {
        self.window_left = left;
        self
    }

    /// Sets [`window_right`](Self::window_right).
    pub fn with_window_right(mut self, right: Option<usize>) -> Self {
        self.window_right = right;
        self
    }

    /// Sets [`alibi_slopes`](Self::alibi_slopes).
    pub fn with_alibi_slopes(mut self, slopes: Option<&'a [f32]>) -> Self {
        self.alibi_slopes = slopes;
        self
    }

    /// Sets [`softcap`](Self::softcap).
    pub fn with_softcap(mut self, softcap: impl Into<Option<f32>>) -> Self {
        self.softcap = softcap.into();
        self
    }

    /// Sets [`sinks`](Self::sinks).
    pub fn with_sinks(mut self, sinks: Option<&'a [f32]>) -> Self {
        self.sinks = sinks;
        self
    }

    /// Sets [`path`](Self::path).
    pub fn with_path(mut self, path: AttnPath) -> Self {
        self.path = path;
        self
    }

    /// Sets [`isa`](Self::isa) (`None`: the current variant).
    pub fn with_isa(mut self, isa: impl Into<Option<Isa>>) -> Self {
        self.isa = isa.into();
        self
    }

    /// Sets [`parallelism`](Self::parallelism).
    pub fn with_parallelism(mut self, parallelism: Parallelism) -> Self {
        self.parallelism = parallelism;
        self
    }
}

/// The validated problem: sizes and options, with the semantics above as methods.
#[derive(Debug, Clone)]
pub(crate) struct Problem<'a> {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
    pub causal: bool,
    pub mask: Option<Mask<'a>>,
    pub kv_lengths: Option<&'a [usize]>,
    pub window_left: Option<usize>,
    pub window_right: Option<usize>,
    pub alibi: Option<&'a [f32]>,
    pub softcap: Option<f32>,
    pub sinks: Option<&'a [f32]>,
    pub isa: Isa,
    pub par: Parallelism,
}

impl<'a> Problem<'a> {
    /// Checks every option against the sizes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q: [usize; 4],
        k: [usize; 4],
        v: [usize; 4],
        opts: &SdpaOptions<'a>,
    ) -> Result<Self> {
        let [b, hq, lq, d] = q;
        let [kb, hkv, lk, kd] = k;
        let [vb, vh, vl, dv] = v;
        if kb != b || vb != b {
            return Err(AttnError::Shape {
                what: format!("batch sizes differ: Q {b}, K {kb}, V {vb}"),
            });
        }
        if kd != d {
            return Err(AttnError::Shape {
                what: format!("head dims differ: Q {d}, K {kd}"),
            });
        }
        if vh != hkv || vl != lk {
            return Err(AttnError::Shape {
                what: format!("K is [.., {hkv}, {lk}, ..] but V is [.., {vh}, {vl}, ..]"),
            });
        }
        if hkv == 0 && hq > 0 || hkv > 0 && hq % hkv != 0 {
            return Err(AttnError::HeadGroups { hq, hkv });
        }
        // Every size product the paths form (scores, work estimates, buffers) must fit.
        [b, hq, lq, lk, d.max(1) + dv.max(1)]
            .iter()
            .try_fold(4usize, |acc, &x| acc.checked_mul(x.max(1)))
            .ok_or(AttnError::Overflow {
                what: "problem size (B·Hq·Lq·Lk·(D + Dv))",
            })?;
        let scale = match opts.scale {
            Some(s) if !s.is_finite() => {
                return Err(AttnError::Option {
                    what: format!("scale must be finite, got {s}"),
                })
            }
            Some(s) => s,
            None => 1.0 / (d.max(1) as f32).sqrt(),
        };
        if let Some(m) = &opts.mask {
            let [mb, mh, ml, mk] = m.dims();
            if !(mb == b || mb == 1) || !(mh == hq || mh == 1) || ml != lq || mk != lk {
                return Err(AttnError::Option {
                    what: format!(
                        "mask is {:?}, expected [{b}|1, {hq}|1, {lq}, {lk}]",
                        m.dims()
                    ),
                });
            }
        }
        if let Some(lens) = opts.kv_lengths {
            if lens.len() != b {
                return Err(AttnError::Option {
                    what: format!("kv_lengths has {} values, batch is {b}", lens.len()),
                });
            }
            if let Some(&bad) = lens.iter().find(|&&n| n > lk) {
                return Err(AttnError::Option {
                    what: format!("kv_lengths value {bad} exceeds Lk = {lk}"),
                });
            }
        }
        if let Some(s) = opts.alibi_slopes {
            if s.len() != hq {
                return Err(AttnError::Option {
                    what: format!("alibi_slopes has {} values, Hq is {hq}", s.len()),
                });
            }
            if s.iter().any(|x| !x.is_finite()) {
                return Err(AttnError::Option {
                    what: "alibi slopes must be finite".into(),
                });
            }
        }
        if let Some(c) = opts.softcap {
            // A subnormal cap would make 1/cap infinite.
            if !(c.is_finite() && c >= f32::MIN_POSITIVE) {
                return Err(AttnError::Option {
                    what: format!("softcap must be finite and a normal positive number, got {c}"),
                });
            }
        }
        if let Some(s) = opts.sinks {
            if s.len() != hq {
                return Err(AttnError::Option {
                    what: format!("sinks has {} values, Hq is {hq}", s.len()),
                });
            }
            if let Some(bad) = s.iter().find(|x| x.is_nan() || **x == f32::INFINITY) {
                return Err(AttnError::Option {
                    what: format!("sink logits must be below +inf and not NaN, got {bad}"),
                });
            }
        }
        let isa = match opts.isa {
            Some(i) => i.check()?,
            None => kernels::current_isa()?,
        };
        Ok(Problem {
            b,
            hq,
            hkv,
            lq,
            lk,
            d,
            dv,
            scale,
            causal: opts.causal,
            mask: opts.mask,
            kv_lengths: opts.kv_lengths,
            window_left: opts.window_left,
            window_right: opts.window_right,
            alibi: opts.alibi_slopes,
            softcap: opts.softcap,
            sinks: opts.sinks,
            isa,
            par: opts.parallelism,
        })
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv.max(1)
    }

    /// Valid keys of batch `b`.
    pub fn kv_len(&self, b: usize) -> usize {
        self.kv_lengths.map_or(self.lk, |l| l[b])
    }

    /// The keys `[lo, hi)` that padding, causality and the window leave visible to query
    /// `i` of batch `b` (before any explicit mask).
    pub fn key_interval(&self, b: usize, i: usize) -> (usize, usize) {
        let n = self.kv_len(b) as i64;
        let pos = i as i64 + n - self.lq as i64;
        let mut lo = 0i64;
        let mut hi = n;
        if self.causal {
            hi = hi.min(pos + 1);
        }
        if let Some(r) = self.window_right {
            hi = hi.min(pos.saturating_add(window_i64(r)) + 1);
        }
        if let Some(l) = self.window_left {
            lo = lo.max(pos.saturating_sub(window_i64(l)));
        }
        let hi = hi.clamp(0, n) as usize;
        let lo = (lo.max(0) as usize).min(hi);
        (lo, hi)
    }

    /// The normalisation of a finished row of head `h` whose softmax state is the running
    /// max `m` and sum `l` (of `exp(s − m)`): the factor that turns the unnormalised output
    /// into the output (0 when the row has no weight at all) and the row's log-sum-exp
    /// (`−inf` when it has none). A sink of head `h` joins the sum here.
    #[inline]
    pub fn finish(&self, h: usize, m: f32, l: f32) -> (f32, f32) {
        let sink = match self.sinks {
            Some(s) if s[h] != f32::NEG_INFINITY => s[h],
            _ => {
                return if l > 0.0 {
                    (1.0 / l, m + l.ln())
                } else {
                    (0.0, f32::NEG_INFINITY)
                }
            }
        };
        // With a sink: M = max(m, sink), l' = l·e^(m − M) + e^(sink − M), and the output
        // O·e^(m − M)/l'. l' ≥ 1 here (one of its terms is e^0).
        let big = m.max(sink);
        let alpha = if l > 0.0 { (m - big).exp() } else { 0.0 };
        let sum = l * alpha + (sink - big).exp();
        (alpha / sum, big + sum.ln())
    }

    /// Whether scores need per-element work beyond the visible interval (soft-cap, ALiBi,
    /// explicit mask).
    pub fn has_score_mods(&self) -> bool {
        self.softcap.is_some() || self.alibi.is_some() || self.mask.is_some()
    }

    /// Turns `row` (the scaled scores `s` of keys `j0 .. j0 + row.len()` for query `i` of
    /// batch `b`, head `h`) into the final logits of the semantics above, with `-inf` for
    /// every key that is not visible.
    pub fn modify_row(&self, b: usize, h: usize, i: usize, j0: usize, row: &mut [f32]) {
        let (lo, hi) = self.key_interval(b, i);
        let j1 = j0 + row.len();
        if let Some(cap) = self.softcap {
            let inv = 1.0 / cap;
            for s in row.iter_mut() {
                *s = cap * (*s * inv).tanh();
            }
        }
        if let Some(slopes) = self.alibi {
            let slope = slopes[h];
            let pos = i as i64 + self.kv_len(b) as i64 - self.lq as i64;
            for (jj, s) in row.iter_mut().enumerate() {
                *s -= slope * (pos - (j0 + jj) as i64).unsigned_abs() as f32;
            }
        }
        match &self.mask {
            Some(Mask::Additive(m)) => {
                let (mb, mh) = (bcast(m.dims()[0], b), bcast(m.dims()[1], h));
                let base = m.offset(mb, mh, i, j0);
                let st = m.strides()[3];
                let data = m.data();
                for (jj, s) in row.iter_mut().enumerate() {
                    *s += data[base + jj * st];
                }
            }
            Some(Mask::Bool(m)) => {
                let (mb, mh) = (bcast(m.dims()[0], b), bcast(m.dims()[1], h));
                let base = m.offset(mb, mh, i, j0);
                let st = m.strides()[3];
                let data = m.data();
                for (jj, s) in row.iter_mut().enumerate() {
                    if !data[base + jj * st] {
                        *s = f32::NEG_INFINITY;
                    }
                }
            }
            None => {}
        }
        // Keys outside [lo, hi).
        let cut_lo = lo.clamp(j0, j1) - j0;
        let cut_hi = hi.clamp(j0, j1) - j0;
        if cut_hi <= cut_lo {
            row.fill(f32::NEG_INFINITY);
        } else {
            row[..cut_lo].fill(f32::NEG_INFINITY);
            row[cut_hi..].fill(f32::NEG_INFINITY);
        }
    }
}

/// A window length as i64, capped at 2^62 (beyond any sequence: effectively unbounded), so
/// `usize::MAX` neither wraps negative nor overflows the `+ 1` of an inclusive bound.
pub(crate) fn window_i64(w: usize) -> i64 {
    w.min(1 << 62) as i64
}

/// Index into a dimension that may broadcast (size 1).
#[inline]
fn bcast(dim: usize, idx: usize) -> usize {
    if dim == 1 {
        0
    } else {
        idx
    }
}
