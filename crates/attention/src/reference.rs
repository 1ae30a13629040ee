//! The attention oracle: straightforward loops in f64, written from the documented
//! semantics ([`crate::SdpaOptions`]) independently of the fast paths. Never optimise it.

use crate::error::Result;
use crate::options::{Mask, Problem, SdpaOptions};
use crate::tensor::TensorRef;
use kernels::Element;

/// Output, weights and log-sum-exp of a reference attention call, all contiguous:
/// `[B, Hq, Lq, Dv]`, `[B, Hq, Lq, Lk]`, `[B, Hq, Lq]`.
#[derive(Debug, Clone)]
pub struct RefOutput {
    /// `[B, Hq, Lq, Dv]`.
    pub out: Vec<f32>,
    /// `[B, Hq, Lq, Lk]`.
    pub weights: Vec<f32>,
    /// `[B, Hq, Lq]`; `-inf` for rows with no visible key.
    pub lse: Vec<f32>,
}

/// Reference scaled dot-product attention (f64 throughout; 16-bit inputs are widened
/// exactly, so this is the oracle for every type combination).
///
/// # Errors
/// The same validation as [`crate::sdpa`].
pub fn sdpa_ref<Q: Element, K: Element, V: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    opts: &SdpaOptions<'_>,
) -> Result<RefOutput> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let (b_n, hq, lq, lk, d, dv) = (p.b, p.hq, p.lq, p.lk, p.d, p.dv);
    let group = p.group();
    let mut out = vec![0.0f32; b_n * hq * lq * dv];
    let mut weights = vec![0.0f32; b_n * hq * lq * lk];
    let mut lse = vec![f32::NEG_INFINITY; b_n * hq * lq];
    let scale = p.scale as f64;
    for b in 0..b_n {
        let n = opts.kv_lengths.map_or(lk, |l| l[b]) as i64;
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..lq {
                let pos = i as i64 + n - lq as i64;
                let mut logits = vec![f64::NEG_INFINITY; lk];
                for (j, logit) in logits.iter_mut().enumerate() {
                    let jj = j as i64;
                    let mut visible = jj < n;
                    if opts.causal && jj > pos {
                        visible = false;
                    }
                    if let Some(l) = opts.window_left {
                        if jj < pos - (l.min(1 << 62) as i64) {
                            visible = false;
                        }
                    }
                    if let Some(r) = opts.window_right {
                        if jj > pos + (r.min(1 << 62) as i64) {
                            visible = false;
                        }
                    }
                    if let Some(Mask::Bool(m)) = &opts.mask {
                        let mb = if m.dims()[0] == 1 { 0 } else { b };
                        let mh = if m.dims()[1] == 1 { 0 } else { h };
                        if !m.get(mb, mh, i, j) {
                            visible = false;
                        }
                    }
                    if !visible {
                        continue;
                    }
                    let mut s = 0.0f64;
                    for x in 0..d {
                        s +=
                            q.get(b, h, i, x).to_f32() as f64 * k.get(b, kvh, j, x).to_f32() as f64;
                    }
                    s *= scale;
                    if let Some(cap) = opts.softcap {
                        let cap = cap as f64;
                        s = cap * (s / cap).tanh();
                    }
                    if let Some(sl) = opts.alibi_slopes {
                        s -= sl[h] as f64 * (pos - jj).abs() as f64;
                    }
                    if let Some(Mask::Additive(m)) = &opts.mask {
                        let mb = if m.dims()[0] == 1 { 0 } else { b };
                        let mh = if m.dims()[1] == 1 { 0 } else { h };
                        s += m.get(mb, mh, i, j) as f64;
                    }
                    *logit = s;
                }
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let row = ((b * hq + h) * lq) + i;
                if mx == f64::NEG_INFINITY {
                    continue; // no visible key: zeros, lse = -inf
                }
                let sum: f64 = logits.iter().map(|&s| (s - mx).exp()).sum();
                lse[row] = (mx + sum.ln()) as f32;
                for (w, &s) in weights[row * lk..(row + 1) * lk].iter_mut().zip(&logits) {
                    *w = ((s - mx).exp() / sum) as f32;
                }
                for x in 0..dv {
                    let mut acc = 0.0f64;
                    for (j, &s) in logits.iter().enumerate() {
                        let w = (s - mx).exp() / sum;
                        if w != 0.0 {
                            acc += w * v.get(b, kvh, j, x).to_f32() as f64;
                        }
                    }
                    out[row * dv + x] = acc as f32;
                }
            }
        }
    }
    Ok(RefOutput { out, weights, lse })
}
