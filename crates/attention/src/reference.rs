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
    let (b_n, hq, lq, lk, dv) = (p.b, p.hq, p.lq, p.lk, p.dv);
    let group = p.group();
    let mut out = vec![0.0f32; b_n * hq * lq * dv];
    let mut weights = vec![0.0f32; b_n * hq * lq * lk];
    let mut lse = vec![f32::NEG_INFINITY; b_n * hq * lq];
    for b in 0..b_n {
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..lq {
                let logits: Vec<f64> = row_logits(&p, opts, &q, &k, b, h, i)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                // A sink joins the softmax as one more logit with no value.
                let sink = opts.sinks.map_or(f64::NEG_INFINITY, |s| s[h] as f64);
                let mx = logits.iter().cloned().fold(sink, f64::max);
                let row = ((b * hq + h) * lq) + i;
                if mx == f64::NEG_INFINITY {
                    continue; // no visible key and no sink: zeros, lse = -inf
                }
                let sum: f64 =
                    logits.iter().map(|&s| (s - mx).exp()).sum::<f64>() + (sink - mx).exp();
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

/// The logits of query `i` of head `h` of batch `b` against every key (`-inf` where the key
/// is not visible), each with the soft-cap's derivative `1 − tanh²(s/cap)` at its raw
/// scaled score (1 without soft-capping), in f64.
fn row_logits<Q: Element, K: Element>(
    p: &Problem<'_>,
    opts: &SdpaOptions<'_>,
    q: &TensorRef<'_, Q>,
    k: &TensorRef<'_, K>,
    b: usize,
    h: usize,
    i: usize,
) -> Vec<(f64, f64)> {
    let (lq, lk, d) = (p.lq, p.lk, p.d);
    let kvh = h / p.group();
    let scale = p.scale as f64;
    let n = opts.kv_lengths.map_or(lk, |l| l[b]) as i64;
    let pos = i as i64 + n - lq as i64;
    let mut logits = vec![(f64::NEG_INFINITY, 0.0); lk];
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
            s += q.get(b, h, i, x).to_f32() as f64 * k.get(b, kvh, j, x).to_f32() as f64;
        }
        s *= scale;
        let mut dcap = 1.0;
        if let Some(cap) = opts.softcap {
            let cap = cap as f64;
            let t = (s / cap).tanh();
            s = cap * t;
            dcap = 1.0 - t * t;
        }
        if let Some(sl) = opts.alibi_slopes {
            s -= sl[h] as f64 * (pos - jj).abs() as f64;
        }
        if let Some(Mask::Additive(m)) = &opts.mask {
            let mb = if m.dims()[0] == 1 { 0 } else { b };
            let mh = if m.dims()[1] == 1 { 0 } else { h };
            s += m.get(mb, mh, i, j) as f64;
        }
        *logit = (s, dcap);
    }
    logits
}

/// Reference gradients of attention (f64 throughout, from the full softmax of every row,
/// independently of the forward's output and LSE): `dQ`, `dK`, `dV` for the output
/// gradient `d_o`, contiguous `[B, Hq, Lq, D]`, `[B, Hkv, Lk, D]`, `[B, Hkv, Lk, Dv]`, and
/// with sinks the sink logits' gradient `[Hq]` (summed over the batch; empty without
/// sinks). A sink joins each row's softmax as a logit with no value. Rows with no visible
/// key contribute nothing.
///
/// # Errors
/// The same validation as [`crate::sdpa`], and a shape error if `d_o` is not
/// `[B, Hq, Lq, Dv]`.
pub fn sdpa_backward_ref<Q: Element, K: Element, V: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    d_o: TensorRef<'_, G>,
    opts: &SdpaOptions<'_>,
) -> Result<crate::backward::Gradients> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let (b_n, hq, hkv, lq, lk, d, dv) = (p.b, p.hq, p.hkv, p.lq, p.lk, p.d, p.dv);
    if d_o.dims() != [b_n, hq, lq, dv] {
        return Err(crate::AttnError::Shape {
            what: format!("output gradient is {:?}", d_o.dims()),
        });
    }
    let group = p.group();
    let scale = p.scale as f64;
    let mut dq = vec![0.0f64; b_n * hq * lq * d];
    let mut dk = vec![0.0f64; b_n * hkv * lk * d];
    let mut dvv = vec![0.0f64; b_n * hkv * lk * dv];
    let mut dsinks = vec![0.0f64; if opts.sinks.is_some() { hq } else { 0 }];
    for b in 0..b_n {
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..lq {
                let lg = row_logits(&p, opts, &q, &k, b, h, i);
                let sink = opts.sinks.map_or(f64::NEG_INFINITY, |s| s[h] as f64);
                let mx = lg.iter().map(|l| l.0).fold(sink, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let sum: f64 = lg.iter().map(|l| (l.0 - mx).exp()).sum::<f64>() + (sink - mx).exp();
                let pr: Vec<f64> = lg.iter().map(|l| (l.0 - mx).exp() / sum).collect();
                // dP_j = dO·V_j; D = Σ_j P_j dP_j.
                let dp: Vec<f64> = (0..lk)
                    .map(|j| {
                        if pr[j] == 0.0 {
                            return 0.0;
                        }
                        (0..dv)
                            .map(|x| {
                                d_o.get(b, h, i, x).to_f32() as f64
                                    * v.get(b, kvh, j, x).to_f32() as f64
                            })
                            .sum()
                    })
                    .collect();
                let dd: f64 = pr.iter().zip(&dp).map(|(a, g)| a * g).sum();
                // The sink's weight P_σ = e^(σ − mx)/sum; dσ = −P_σ·D.
                if let Some(ds) = dsinks.get_mut(h) {
                    *ds -= (sink - mx).exp() / sum * dd;
                }
                for j in 0..lk {
                    if pr[j] == 0.0 {
                        continue;
                    }
                    let ds = pr[j] * (dp[j] - dd) * lg[j].1;
                    for x in 0..dv {
                        dvv[((b * hkv + kvh) * lk + j) * dv + x] +=
                            pr[j] * d_o.get(b, h, i, x).to_f32() as f64;
                    }
                    for x in 0..d {
                        dq[((b * hq + h) * lq + i) * d + x] +=
                            scale * ds * k.get(b, kvh, j, x).to_f32() as f64;
                        dk[((b * hkv + kvh) * lk + j) * d + x] +=
                            scale * ds * q.get(b, h, i, x).to_f32() as f64;
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok(crate::backward::Gradients {
        dq: f(dq),
        dk: f(dk),
        dv: f(dvv),
        dsinks: f(dsinks),
    })
}
