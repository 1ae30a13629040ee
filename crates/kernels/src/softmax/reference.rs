//! The softmax oracles: straightforward f64 loops over the same semantics as the fused
//! kernels (scale, mask, causal limit, edge cases). Never optimise them.

use super::RowOptions;

/// The logits `s_j = scale·x_j + mask_j` of every row in f64, with the columns past the
/// causal limit (row `i` of the slice sees `0..=causal_limit + i`) set to −inf. Panics if
/// `x.len()` is not a multiple of `row_len` or the mask holds neither `row_len` nor
/// `x.len()` values.
///
/// ```
/// use fastattn_kernels::softmax::{reference::logits_ref, RowOptions};
/// let s = logits_ref(&[1.0, 2.0], 2, &RowOptions::new().with_scale(2.0).with_causal_limit(0));
/// assert_eq!(s, [2.0, f64::NEG_INFINITY]);
/// ```
pub fn logits_ref(x: &[f32], row_len: usize, opts: &RowOptions<'_>) -> Vec<f64> {
    if row_len == 0 {
        assert!(x.is_empty(), "logits_ref: row_len 0 with a non-empty input");
        return Vec::new();
    }
    assert_eq!(
        x.len() % row_len,
        0,
        "logits_ref: length not a multiple of row_len"
    );
    if let Some(m) = opts.mask {
        assert!(
            m.len() == row_len || m.len() == x.len(),
            "logits_ref: mask length"
        );
    }
    let mut s = Vec::with_capacity(x.len());
    for (i, row) in x.chunks(row_len).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let mask = match opts.mask {
                None => 0.0,
                Some(m) if m.len() == row_len => m[j] as f64,
                Some(m) => m[i * row_len + j] as f64,
            };
            let cut = opts
                .causal_limit
                .is_some_and(|c| j as u128 > c as u128 + i as u128);
            s.push(if cut {
                f64::NEG_INFINITY
            } else {
                opts.scale as f64 * v as f64 + mask
            });
        }
    }
    s
}

/// What one row of logits gives: `None` for a NaN row, `Some(None)` for a fully masked
/// one, else `Some(Some((max, sum)))` with `sum = Σ exp(s_j − max)` in f64.
fn row_stats(s: &[f64]) -> Option<Option<(f64, f64)>> {
    if s.iter().any(|v| v.is_nan()) {
        return None;
    }
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return Some(None);
    }
    let sum: f64 = s.iter().map(|&v| (v - m).exp()).sum();
    Some(Some((m, sum)))
}

/// Softmax of every row of [`logits_ref`], in f64. A fully masked row gives zeros, a row
/// with a NaN (or a +inf logit) gives NaN. Panics like [`logits_ref`].
///
/// ```
/// use fastattn_kernels::softmax::{reference::softmax_ref, RowOptions};
/// let p = softmax_ref(&[0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY], 2, &RowOptions::new());
/// assert_eq!(p, [0.5, 0.5, 0.0, 0.0]);
/// ```
pub fn softmax_ref(x: &[f32], row_len: usize, opts: &RowOptions<'_>) -> Vec<f64> {
    let mut s = logits_ref(x, row_len, opts);
    for row in s.chunks_mut(row_len.max(1)) {
        match row_stats(row) {
            None => row.fill(f64::NAN),
            Some(None) => row.fill(0.0),
            Some(Some((m, sum))) => {
                for v in row.iter_mut() {
                    *v = (*v - m).exp() / sum;
                }
            }
        }
    }
    s
}

/// Log-softmax of every row of [`logits_ref`], in f64: `(s_j − max) − ln Σ exp(s_k − max)`.
/// A fully masked row gives −inf, a row with a NaN gives NaN. Panics like [`logits_ref`].
///
/// ```
/// use fastattn_kernels::softmax::{reference::log_softmax_ref, RowOptions};
/// let y = log_softmax_ref(&[1.0, 1.0], 2, &RowOptions::new());
/// assert_eq!(y, [-std::f64::consts::LN_2; 2]);
/// ```
pub fn log_softmax_ref(x: &[f32], row_len: usize, opts: &RowOptions<'_>) -> Vec<f64> {
    let mut s = logits_ref(x, row_len, opts);
    for row in s.chunks_mut(row_len.max(1)) {
        match row_stats(row) {
            None => row.fill(f64::NAN),
            Some(None) => row.fill(f64::NEG_INFINITY),
            Some(Some((m, sum))) => {
                let lns = sum.ln();
                for v in row.iter_mut() {
                    *v = (*v - m) - lns;
                }
            }
        }
    }
    s
}
