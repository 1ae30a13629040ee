//! The shape rules of each Python function: a [`Plan`] lays Q, K, V, the mask and the
//! outputs out over `[outer…, B, H, L, D]` (see the [parent module](super)).

use crate::view::View;
use pyo3::exceptions::PyValueError;
use pyo3::PyResult;

/// Sizes and element strides of an operand over `[outer…, B, H, L, D]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
}

impl Layout {
    /// A contiguous (row-major) layout of `shape`.
    pub(crate) fn contiguous(shape: &[usize]) -> Layout {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
        }
    }

    /// The outer strides, and the dims and strides of the last four dimensions.
    pub(super) fn split(&self) -> (Vec<usize>, [usize; 4], [usize; 4]) {
        let n = self.shape.len() - 4;
        let dims = [0, 1, 2, 3].map(|i| self.shape[n + i]);
        let strides = [0, 1, 2, 3].map(|i| self.strides[n + i]);
        (self.strides[..n].to_vec(), dims, strides)
    }
}

/// The element strides of a contiguous (row-major) tensor of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

/// Where the dimensions of a tensor Python sees sit among a plan's `[outer…, B, H, L, D]`:
/// plan dimension `i` is Python dimension `axes[i]`, or a dimension of size 1 that Python
/// does not have (`None`). The output, its gradient and the input gradients are placed
/// this way, so any strides Python gives them map onto the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The shape Python sees.
    pub(crate) shape: Vec<usize>,
    pub(crate) axes: Vec<Option<usize>>,
}

impl Placement {
    /// `shape` as the last of `n` plan dimensions.
    fn trailing(shape: &[usize], n: usize) -> Placement {
        let pad = n - shape.len();
        Placement {
            shape: shape.to_vec(),
            axes: (0..n).map(|i| i.checked_sub(pad)).collect(),
        }
    }

    /// `[B, L, H, D]` as the plan's `[B, H, L, D]`; `lifted`: as `[B (outer), 1, H, L, D]`.
    fn blhd(shape: &[usize], lifted: bool) -> Placement {
        let mut axes = vec![Some(0), Some(2), Some(1), Some(3)];
        if lifted {
            axes.insert(1, None);
        }
        Placement {
            shape: shape.to_vec(),
            axes,
        }
    }

    /// The layout over the plan's dimensions of a tensor of this shape with these element
    /// strides.
    pub(crate) fn layout(&self, strides: &[usize]) -> Layout {
        Layout {
            shape: self
                .axes
                .iter()
                .map(|a| a.map_or(1, |j| self.shape[j]))
                .collect(),
            strides: self
                .axes
                .iter()
                .map(|a| a.map_or(0, |j| strides[j]))
                .collect(),
        }
    }

    /// The layout of a contiguous tensor of this shape.
    pub(crate) fn contiguous(&self) -> Layout {
        self.layout(&contiguous_strides(&self.shape))
    }
}

/// How the scores are masked, in the library's terms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Masking {
    /// Bottom-right aligned causal masking.
    pub(crate) causal: bool,
    pub(crate) window_left: Option<usize>,
    pub(crate) window_right: Option<usize>,
    pub(crate) kv_lengths: Option<KvLengths>,
}

/// Valid keys per batch entry of the library calls.
#[derive(Debug, Clone)]
pub(crate) enum KvLengths {
    /// The same count for every entry.
    All(usize),
    /// `outer × B` counts, in order (checked against the plan before any call).
    Each(Vec<usize>),
}

/// A problem laid out for the library (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Sizes of the looped dimensions.
    pub(crate) outer: Vec<usize>,
    pub(crate) q: Layout,
    pub(crate) k: Layout,
    pub(crate) v: Layout,
    pub(crate) mask: Option<Layout>,
    /// The output as Python sees it (allocated contiguous), over `[outer…, B, H, Lq, Dv]`;
    /// its gradient has the same shape, with any strides.
    pub(crate) out: Placement,
    /// The gradients of Q, K and V as the backward allocates them (contiguous, float32).
    /// Torch semantics: shaped like the plan's operands, with every broadcast dimension at
    /// its full size, for the caller to sum back to the inputs' shapes; `flash_attn_func`:
    /// the inputs' shapes.
    pub(crate) grads: [Placement; 3],
    /// The shape of the LSE (`[…, H, Lq]`) and of the weights (`[…, H, Lq, Lk]`) as Python
    /// sees them; both are contiguous in `[outer…, B, H, Lq(, Lk)]` order.
    pub(crate) lse_shape: Vec<usize>,
    pub(crate) weights_shape: Vec<usize>,
    pub(crate) masking: Masking,
}

pub(super) fn value_err(msg: String) -> pyo3::PyErr {
    PyValueError::new_err(msg)
}

/// The shape and element strides of `v` with size-1 dimensions added in front up to `n`.
fn padded(v: &View<'_>, n: usize) -> (Vec<usize>, Vec<usize>) {
    let extra = n - v.shape.len();
    let mut shape = vec![1; extra];
    shape.extend_from_slice(&v.shape);
    let mut strides = vec![0; extra];
    strides.extend_from_slice(&v.strides);
    (shape, strides)
}

/// The broadcast of sizes (1 stretches), or `None`.
fn broadcast(sizes: &[usize]) -> Option<usize> {
    let mut out = 1;
    for &s in sizes {
        if s != 1 {
            if out != 1 && out != s {
                return None;
            }
            out = s;
        }
    }
    Some(out)
}

/// Stride of a dimension of size `size` seen with size `to` (0 when it broadcasts).
fn stretch(size: usize, stride: usize, to: usize) -> usize {
    if size == to {
        stride
    } else {
        0
    }
}

/// Torch's top-left causal mask (query `i` sees keys `j ≤ i`) in the library's
/// bottom-right terms. With `off = Lk − Lq` the library puts query `i` at `i + off`:
/// * `Lq = Lk`: the same mask, `causal`;
/// * `Lq < Lk`: keys `j ≥ Lq` are never visible, so `Lq` valid keys per batch make
///   `off = 0`, and `causal` is then top-left;
/// * `Lq > Lk`: a right window of `Lq − Lk` keys past the position `i + off` reaches
///   exactly `j ≤ i`.
///
/// None of these needs a mask tensor.
pub(crate) fn top_left_causal(lq: usize, lk: usize) -> Masking {
    use std::cmp::Ordering::*;
    match lq.cmp(&lk) {
        Equal => Masking {
            causal: true,
            ..Masking::default()
        },
        Less => Masking {
            causal: true,
            kv_lengths: Some(KvLengths::All(lq)),
            ..Masking::default()
        },
        Greater => Masking {
            window_right: Some(lq - lk),
            ..Masking::default()
        },
    }
}

/// The shape rules of `torch.nn.functional.scaled_dot_product_attention`: 2-D or more
/// (`[…, H, L, E]`), batch dimensions broadcast, heads broadcast (or grouped with
/// `enable_gqa`), the mask broadcasts to the scores `[…, H, Lq, Lk]` without enlarging
/// them. `blhd`: the output is allocated `[B, Lq, H, Ev]` (4-D inputs only), the layout
/// transformers wants.
pub(crate) fn plan_torch(
    q: &View<'_>,
    k: &View<'_>,
    v: &View<'_>,
    mask: Option<&View<'_>>,
    gqa: bool,
    blhd: bool,
) -> PyResult<Plan> {
    let (qn, kn, vn) = (q.shape.len(), k.shape.len(), v.shape.len());
    if qn < 2 || kn < 2 || vn < 2 {
        return Err(value_err(format!(
            "query, key and value must be at least 2-dimensional ([..., L, E]), got {qn}, {kn} and {vn} dimensions"
        )));
    }
    let nd = qn.max(kn).max(vn);
    let n4 = nd.max(4);
    let (qs, qst) = padded(q, n4);
    let (ks, kst) = padded(k, n4);
    let (vs, vst) = padded(v, n4);
    let (lq, e) = (qs[n4 - 2], qs[n4 - 1]);
    let (lk, ke) = (ks[n4 - 2], ks[n4 - 1]);
    let (vl, ev) = (vs[n4 - 2], vs[n4 - 1]);
    if ke != e {
        return Err(value_err(format!(
            "query and key have different embedding sizes: {e} and {ke} (query {:?}, key {:?})",
            q.shape, k.shape
        )));
    }
    if vl != lk {
        return Err(value_err(format!(
            "key and value have different lengths: {lk} and {vl} (key {:?}, value {:?})",
            k.shape, v.shape
        )));
    }
    let hd = n4 - 3; // the heads dimension
    let mut batch = Vec::with_capacity(hd);
    for i in 0..hd {
        batch.push(broadcast(&[qs[i], ks[i], vs[i]]).ok_or_else(|| {
            value_err(format!(
                "the batch dimensions of query {:?}, key {:?} and value {:?} do not broadcast",
                q.shape, k.shape, v.shape
            ))
        })?);
    }
    let (hq, hk, hv) = (qs[hd], ks[hd], vs[hd]);
    // Library heads: (query heads, key/value heads), and the head strides of Q, K, V.
    let (h, hkv, q_hs, k_hs, v_hs);
    if gqa {
        if !((hq == hk && hk == hv) || (hk > 0 && hv > 0 && hq % hk == 0 && hq % hv == 0)) {
            return Err(value_err(format!(
                "enable_gqa: the number of heads in key ({hk}) and value ({hv}) must divide the number of heads in query ({hq})"
            )));
        }
        h = hq;
        q_hs = qst[hd];
        if hk == hv {
            (hkv, k_hs, v_hs) = (hk, kst[hd], vst[hd]);
        } else if hk == 1 {
            (hkv, k_hs, v_hs) = (hv, 0, vst[hd]);
        } else if hv == 1 {
            (hkv, k_hs, v_hs) = (hk, kst[hd], 0);
        } else {
            return Err(value_err(format!(
                "enable_gqa with {hk} key heads and {hv} value heads: fastattn needs them equal, or one of them 1"
            )));
        }
    } else {
        h = broadcast(&[hq, hk, hv]).ok_or_else(|| {
            value_err(format!(
                "query has {hq} heads but key has {hk} and value {hv}: they must be equal (or 1, to broadcast); pass enable_gqa=True for grouped-query attention"
            ))
        })?;
        q_hs = stretch(hq, qst[hd], h);
        if hk == hv && (hk == h || hk == 1) {
            // Equal heads, or one K/V head shared by all (MQA, without copying it).
            (hkv, k_hs, v_hs) = (hk, kst[hd], vst[hd]);
        } else {
            (hkv, k_hs, v_hs) = (h, stretch(hk, kst[hd], h), stretch(hv, vst[hd], h));
        }
    }
    let layout = |s: &[usize], st: &[usize], heads: usize, hs: usize, l: usize, d: usize| {
        // Sized once: the binding's per-call cost on small problems is mostly allocations.
        let mut shape = Vec::with_capacity(n4);
        shape.extend_from_slice(&batch);
        let mut strides = Vec::with_capacity(n4);
        strides.extend((0..hd).map(|i| stretch(s[i], st[i], batch[i])));
        shape.extend([heads, l, d]);
        strides.extend([hs, st[n4 - 2], st[n4 - 1]]);
        Layout { shape, strides }
    };
    let ql = layout(&qs, &qst, h, q_hs, lq, e);
    let kl = layout(&ks, &kst, hkv, k_hs, lk, e);
    let vl_ = layout(&vs, &vst, hkv, v_hs, lk, ev);
    let mut full = Vec::with_capacity(n4);
    full.extend_from_slice(&batch);
    full.extend([h, lq, ev]);
    let out = if blhd {
        if nd != 4 {
            return Err(value_err("the [B, L, H, D] output needs 4-D inputs".into()));
        }
        Placement::blhd(&[batch[0], lq, h, ev], false)
    } else {
        Placement::trailing(&full[n4 - nd..], n4)
    };
    let grads = [&ql, &kl, &vl_].map(|l| Placement::trailing(&l.shape[n4 - nd..], n4));
    let mut scores = Vec::with_capacity(n4);
    scores.extend_from_slice(&batch);
    scores.extend([h, lq, lk]);
    let mask = match mask {
        None => None,
        Some(m) => {
            let mn = m.shape.len();
            if mn > nd {
                return Err(value_err(format!(
                    "attn_mask has {mn} dimensions, more than the inputs' {nd}"
                )));
            }
            let (ms, mst) = padded(m, n4);
            if ms.iter().zip(&scores).any(|(&a, &b)| a != 1 && a != b) {
                return Err(value_err(format!(
                    "attn_mask of shape {:?} does not broadcast to the attention scores {:?}",
                    m.shape,
                    &scores[n4 - nd..]
                )));
            }
            Some(Layout {
                shape: scores.clone(),
                strides: (0..n4).map(|i| stretch(ms[i], mst[i], scores[i])).collect(),
            })
        }
    };
    Ok(Plan {
        outer: batch[..hd - 1].to_vec(),
        q: ql,
        k: kl,
        v: vl_,
        mask,
        out,
        grads,
        lse_shape: scores[n4 - nd..n4 - 1].to_vec(),
        weights_shape: scores[n4 - nd..].to_vec(),
        masking: Masking::default(),
    })
}

/// The shape rules of FlashAttention-2's `flash_attn_func`: Q `[B, Lq, Hq, D]`, K
/// `[B, Lk, Hkv, D]`, V `[B, Lk, Hkv, Dv]`, output `[B, Lq, Hq, Dv]`; the optional mask
/// broadcasts to `[B, Hq, Lq, Lk]`. `per_batch`: one library call per batch entry (for
/// per-batch ALiBi slopes).
pub(crate) fn plan_flash(
    q: &View<'_>,
    k: &View<'_>,
    v: &View<'_>,
    mask: Option<&View<'_>>,
    per_batch: bool,
) -> PyResult<Plan> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.shape.len() != 4 {
            return Err(value_err(format!(
                "{name} must be 4-D [batch, seqlen, heads, headdim], got shape {:?}",
                t.shape
            )));
        }
    }
    // [B, L, H, D] memory seen as [B, H, L, D]: swap the middle strides.
    let bhld = |t: &View<'_>| Layout {
        shape: vec![t.shape[0], t.shape[2], t.shape[1], t.shape[3]],
        strides: vec![t.strides[0], t.strides[2], t.strides[1], t.strides[3]],
    };
    let (mut ql, mut kl, mut vl) = (bhld(q), bhld(k), bhld(v));
    let [b, lq, hq, _] = [0, 1, 2, 3].map(|i| q.shape[i]);
    let lk = k.shape[1];
    let dv = v.shape[3];
    let out = Placement::blhd(&[b, lq, hq, dv], per_batch);
    let grads = [q, k, v].map(|t| Placement::blhd(&t.shape, per_batch));
    let scores = vec![b, hq, lq, lk];
    let mut maskl = match mask {
        None => None,
        Some(m) => {
            if m.shape.len() > 4 {
                return Err(value_err(format!(
                    "attn_mask must have at most 4 dimensions ([B|1, H|1, Lq, Lk]), got {:?}",
                    m.shape
                )));
            }
            let (ms, mst) = padded(m, 4);
            if ms.iter().zip(&scores).any(|(&a, &s)| a != 1 && a != s) {
                return Err(value_err(format!(
                    "attn_mask of shape {:?} does not broadcast to [B, H, Lq, Lk] = {scores:?}",
                    m.shape
                )));
            }
            Some(Layout {
                shape: scores.clone(),
                strides: (0..4).map(|i| stretch(ms[i], mst[i], scores[i])).collect(),
            })
        }
    };
    let mut outer = Vec::new();
    if per_batch {
        // [B, …] → [B (outer), 1, …].
        let lift = |l: &mut Layout| {
            l.shape[0] = 1;
            l.shape.insert(0, b);
            let s = l.strides[0];
            l.strides[0] = 0;
            l.strides.insert(0, s);
        };
        for l in [&mut ql, &mut kl, &mut vl] {
            lift(l);
        }
        if let Some(m) = maskl.as_mut() {
            lift(m);
        }
        outer.push(b);
    }
    Ok(Plan {
        outer,
        q: ql,
        k: kl,
        v: vl,
        mask: maskl,
        out,
        grads,
        lse_shape: vec![b, hq, lq],
        weights_shape: vec![b, hq, lq, lk],
        masking: Masking::default(),
    })
}
