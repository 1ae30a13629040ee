//! From Python-shaped inputs to library calls: the shape rules of each Python function
//! (a [`Plan`]) and the calls that carry it out (a [`Job`]; its backward, a [`GradJob`],
//! runs the same calls with the same options through the library's backward pass).
//!
//! The library computes on 4-D `[B, H, L, D]` views. A plan lays every operand out as
//! `[outer…, B, H, L, D]`: the outer dimensions (batch dimensions beyond one, or the batch
//! of a per-batch option) are looped over, one library call per outer index; a dimension
//! an operand broadcasts over has stride 0. Nothing is copied, except masks that need a
//! conversion (16-bit additive masks widened to f32, bool masks whose bytes are not 0/1).

use crate::view::{span, Data, DataMut, View};
use attention::{
    sdpa_backward_into_dyn, sdpa_into_dyn, AttnError, AttnPath, DynTensor, DynTensorMut, Mask,
    SdpaGrads, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::Parallelism;
use pyo3::exceptions::{PyTypeError, PyValueError};
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
        let mut strides = vec![0; shape.len()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(shape).rev() {
            *s = acc;
            acc = acc.saturating_mul(d);
        }
        Layout {
            shape: shape.to_vec(),
            strides,
        }
    }

    /// The outer strides, and the dims and strides of the last four dimensions.
    fn split(&self) -> (Vec<usize>, [usize; 4], [usize; 4]) {
        let n = self.shape.len() - 4;
        let dims = [0, 1, 2, 3].map(|i| self.shape[n + i]);
        let strides = [0, 1, 2, 3].map(|i| self.strides[n + i]);
        (self.strides[..n].to_vec(), dims, strides)
    }
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
        self.layout(&Layout::contiguous(&self.shape).strides)
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

fn value_err(msg: String) -> pyo3::PyErr {
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
        let mut shape = batch.clone();
        let mut strides: Vec<usize> = (0..hd).map(|i| stretch(s[i], st[i], batch[i])).collect();
        shape.extend([heads, l, d]);
        strides.extend([hs, st[n4 - 2], st[n4 - 1]]);
        Layout { shape, strides }
    };
    let ql = layout(&qs, &qst, h, q_hs, lq, e);
    let kl = layout(&ks, &kst, hkv, k_hs, lk, e);
    let vl_ = layout(&vs, &vst, hkv, v_hs, lk, ev);
    let mut full = batch.clone();
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
    let mut scores = batch.clone();
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

/// Copies the elements a layout addresses into a compact buffer (dimensions of stride 0
/// stay broadcast), converting each with `f`; returns the buffer and its layout.
fn compact<T: Copy, U>(src: &[T], l: &Layout, f: impl Fn(T) -> U) -> (Vec<U>, Layout) {
    let eff: Vec<usize> = l
        .shape
        .iter()
        .zip(&l.strides)
        .map(|(&d, &s)| if s == 0 { 1 } else { d })
        .collect();
    let dense = Layout::contiguous(&eff);
    let n: usize = eff.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; eff.len()];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&l.strides).map(|(i, s)| i * s).sum();
        out.push(f(src[off]));
        for d in (0..eff.len()).rev() {
            idx[d] += 1;
            if idx[d] < eff[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let strides = dense
        .strides
        .iter()
        .zip(&eff)
        .map(|(&s, &d)| if d == 1 { 0 } else { s })
        .collect();
    (
        out,
        Layout {
            shape: l.shape.clone(),
            strides,
        },
    )
}

/// A mask ready for the library: borrowed in place, or converted.
pub(crate) enum MaskBuf<'a> {
    Bool(&'a [bool], Layout),
    F32(&'a [f32], Layout),
    OwnedBool(Vec<bool>, Layout),
    OwnedF32(Vec<f32>, Layout),
}

impl<'a> MaskBuf<'a> {
    /// Prepares `data` laid out as `l` (bool: as is, or each byte `!= 0`; f32: as is;
    /// f16/bf16: widened to f32).
    pub(crate) fn new(data: Data<'a>, l: Layout) -> MaskBuf<'a> {
        match data {
            Data::Bool(s) => MaskBuf::Bool(s, l),
            Data::F32(s) => MaskBuf::F32(s, l),
            Data::Bytes(s) => {
                let (v, l) = compact(s, &l, |b| b != 0);
                MaskBuf::OwnedBool(v, l)
            }
            Data::F16(s) => {
                let (v, l) = compact(s, &l, |x| x.to_f32());
                MaskBuf::OwnedF32(v, l)
            }
            Data::BF16(s) => {
                let (v, l) = compact(s, &l, |x| x.to_f32());
                MaskBuf::OwnedF32(v, l)
            }
        }
    }

    fn operand(&self) -> Operand<'_> {
        match self {
            MaskBuf::Bool(s, l) => Operand::new(Data::Bool(s), l),
            MaskBuf::F32(s, l) => Operand::new(Data::F32(s), l),
            MaskBuf::OwnedBool(v, l) => Operand::new(Data::Bool(v), l),
            MaskBuf::OwnedF32(v, l) => Operand::new(Data::F32(v), l),
        }
    }
}

/// An input of the library calls.
struct Operand<'a> {
    data: Data<'a>,
    outer: Vec<usize>,
    dims: [usize; 4],
    strides: [usize; 4],
}

/// `s[off..]`, empty when `off` is past the end (an empty view; the library then checks
/// the extent and refuses anything else).
fn tail<T>(s: &[T], off: usize) -> &[T] {
    s.get(off..).unwrap_or(&[])
}

fn offset(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

impl<'a> Operand<'a> {
    fn new(data: Data<'a>, l: &Layout) -> Operand<'a> {
        let (outer, dims, strides) = l.split();
        Operand {
            data,
            outer,
            dims,
            strides,
        }
    }

    fn tensor(&self, idx: &[usize]) -> Result<DynTensor<'a>, AttnError> {
        let off = offset(idx, &self.outer);
        let (d, s) = (self.dims, self.strides);
        Ok(match self.data {
            Data::F32(x) => TensorRef::new(tail(x, off), d, s)?.into(),
            Data::F16(x) => TensorRef::new(tail(x, off), d, s)?.into(),
            Data::BF16(x) => TensorRef::new(tail(x, off), d, s)?.into(),
            Data::Bool(_) | Data::Bytes(_) => {
                return Err(AttnError::Option {
                    what: "query, key and value must be float tensors, not bool".into(),
                })
            }
        })
    }

    fn mask(&self, idx: &[usize]) -> Result<Mask<'a>, AttnError> {
        let off = offset(idx, &self.outer);
        let (d, s) = (self.dims, self.strides);
        Ok(match self.data {
            Data::Bool(x) => Mask::Bool(TensorRef::new(tail(x, off), d, s)?),
            Data::F32(x) => Mask::Additive(TensorRef::new(tail(x, off), d, s)?),
            _ => {
                return Err(AttnError::Option {
                    what: "a mask is bool or float32 once prepared".into(),
                })
            }
        })
    }
}

/// Scale, soft-cap and ALiBi of a call, and the path and kernel variant that run it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scores {
    pub(crate) scale: Option<f32>,
    pub(crate) softcap: Option<f32>,
    pub(crate) alibi: Option<Alibi>,
    pub(crate) path: AttnPath,
    pub(crate) isa: Option<kernels::Isa>,
}

/// ALiBi slopes of the library calls.
#[derive(Debug, Clone)]
pub(crate) enum Alibi {
    /// One row of Hq slopes for every call.
    Shared(Vec<f32>),
    /// One row of Hq slopes per outer index, concatenated (checked before any call).
    PerCall(Vec<f32>),
}

/// Checks that Q, K and V are float data.
pub(crate) fn float_input(name: &str, d: &Data<'_>) -> PyResult<()> {
    match d {
        Data::Bool(_) | Data::Bytes(_) => Err(PyTypeError::new_err(format!(
            "{name}: dtype bool is not supported (float32, float16, bfloat16)"
        ))),
        _ => Ok(()),
    }
}

/// The elements `d` holds.
fn data_len(d: &Data<'_>) -> usize {
    match d {
        Data::F32(x) => x.len(),
        Data::F16(x) => x.len(),
        Data::BF16(x) => x.len(),
        Data::Bool(x) => x.len(),
        Data::Bytes(x) => x.len(),
    }
}

/// Checks that `d` is float data reaching every element of `l`.
fn check_operand(name: &str, d: &Data<'_>, l: &Layout) -> PyResult<()> {
    float_input(name, d)?;
    let need = span(&l.shape, &l.strides)?;
    let have = data_len(d);
    if need > have {
        return Err(value_err(format!(
            "{name}: the layout needs {need} elements, the tensor has {have}"
        )));
    }
    Ok(())
}

/// Steps an outer index to the next one (row-major).
fn advance(idx: &mut [usize], outer: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < outer[d] {
            break;
        }
        idx[d] = 0;
    }
}

/// What every library call of a plan reads, and the options it runs with; shared by the
/// forward ([`Job`]) and the backward ([`GradJob`]).
struct Calls<'a> {
    plan: &'a Plan,
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    mask: Option<Operand<'a>>,
    scores: &'a Scores,
    par: Parallelism,
    /// The key count of each batch entry of a call, for [`KvLengths::All`].
    all_lens: Vec<usize>,
}

impl<'a> Calls<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<Calls<'a>> {
        for (name, d, l) in [
            ("query", &q, &plan.q),
            ("key", &k, &plan.k),
            ("value", &v, &plan.v),
        ] {
            check_operand(name, d, l)?;
        }
        let count: usize = plan.outer.iter().product();
        let b = plan.q.shape[plan.q.shape.len() - 4];
        let hq = plan.q.shape[plan.q.shape.len() - 3];
        if let Some(KvLengths::Each(l)) = &plan.masking.kv_lengths {
            if l.len() != count * b {
                return Err(value_err(format!(
                    "kv_lengths has {} values, the batch is {}",
                    l.len(),
                    count * b
                )));
            }
        }
        let all_lens = match &plan.masking.kv_lengths {
            Some(KvLengths::All(n)) => vec![*n; b],
            _ => Vec::new(),
        };
        if let Some(Alibi::PerCall(a)) = &scores.alibi {
            if a.len() != count * hq {
                return Err(value_err(format!(
                    "alibi_slopes has {} values, expected {count} × {hq}",
                    a.len()
                )));
            }
        }
        Ok(Calls {
            plan,
            q: Operand::new(q, &plan.q),
            k: Operand::new(k, &plan.k),
            v: Operand::new(v, &plan.v),
            mask: mask.map(MaskBuf::operand),
            scores,
            par,
            all_lens,
        })
    }

    /// The number of library calls (one per outer index).
    fn count(&self) -> usize {
        self.plan.outer.iter().product()
    }

    /// The options of call number `call`, at outer index `idx`.
    fn options(&self, call: usize, idx: &[usize]) -> Result<SdpaOptions<'_>, AttnError> {
        let plan = self.plan;
        let b = self.q.dims[0];
        let hq = self.q.dims[1];
        let mut opts = SdpaOptions::new()
            .with_scale(self.scores.scale)
            .with_causal(plan.masking.causal)
            .with_window(plan.masking.window_left, plan.masking.window_right)
            .with_softcap(self.scores.softcap)
            .with_path(self.scores.path)
            .with_isa(self.scores.isa)
            .with_parallelism(self.par);
        match &plan.masking.kv_lengths {
            None => {}
            Some(KvLengths::All(_)) => opts = opts.with_kv_lengths(Some(&self.all_lens)),
            Some(KvLengths::Each(l)) => {
                opts = opts.with_kv_lengths(l.get(call * b..(call + 1) * b));
            }
        }
        match &self.scores.alibi {
            None => {}
            Some(Alibi::Shared(a)) => opts = opts.with_alibi_slopes(Some(a)),
            Some(Alibi::PerCall(a)) => {
                opts = opts.with_alibi_slopes(a.get(call * hq..(call + 1) * hq));
            }
        }
        if let Some(m) = &self.mask {
            opts = opts.with_mask(m.mask(idx)?);
        }
        Ok(opts)
    }
}

/// The forward calls of a plan, with the memory they read and write.
pub(crate) struct Job<'a> {
    calls: Calls<'a>,
    out: DataMut<'a>,
    lse: Option<&'a mut [f32]>,
    weights: Option<&'a mut [f32]>,
}

impl<'a> Job<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        out: DataMut<'a>,
        lse: Option<&'a mut [f32]>,
        weights: Option<&'a mut [f32]>,
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<Job<'a>> {
        Ok(Job {
            calls: Calls::new(plan, q, k, v, mask, scores, par)?,
            out,
            lse,
            weights,
        })
    }

    /// Runs every library call (one per outer index), in order.
    pub(crate) fn run(&mut self) -> Result<(), AttnError> {
        let c = &self.calls;
        let plan = c.plan;
        let (out_outer, out_dims, out_strides) = plan.out.contiguous().split();
        let [b, h, lq, _] = out_dims;
        let lk = plan.k.shape[plan.k.shape.len() - 2];
        let per_lse = b * h * lq;
        let per_w = per_lse * lk;
        let mut idx = vec![0usize; plan.outer.len()];
        for call in 0..c.count() {
            let opts = c.options(call, &idx)?;
            let off = offset(&idx, &out_outer);
            let out: DynTensorMut<'_> = match &mut self.out {
                DataMut::F32(x) => TensorMut::new(tail_mut(x, off), out_dims, out_strides)?.into(),
                DataMut::F16(x) => TensorMut::new(tail_mut(x, off), out_dims, out_strides)?.into(),
                DataMut::BF16(x) => TensorMut::new(tail_mut(x, off), out_dims, out_strides)?.into(),
            };
            let mut extras = SdpaOutputs::default();
            if let Some(l) = self.lse.as_deref_mut() {
                extras = extras.with_lse(Some(&mut l[call * per_lse..(call + 1) * per_lse]));
            }
            if let Some(w) = self.weights.as_deref_mut() {
                let w = &mut w[call * per_w..(call + 1) * per_w];
                extras = extras.with_weights(Some(TensorMut::contiguous(w, [b, h, lq, lk])?));
            }
            sdpa_into_dyn(
                c.q.tensor(&idx)?,
                c.k.tensor(&idx)?,
                c.v.tensor(&idx)?,
                out,
                &opts,
                extras,
            )?;
            advance(&mut idx, &plan.outer);
        }
        Ok(())
    }
}

/// The backward calls of a plan: the forward's inputs, its output `o` and LSE, the output's
/// gradient `d_o`, and the float32 gradient buffers (contiguous, shaped as
/// [`Plan::grads`]).
pub(crate) struct GradJob<'a> {
    calls: Calls<'a>,
    o: Operand<'a>,
    d_o: Operand<'a>,
    lse: &'a [f32],
    grads: [&'a mut [f32]; 3],
}

impl<'a> GradJob<'a> {
    /// `o` and `d_o` with their layouts over the plan (from [`Plan::out`]); `lse` laid out
    /// as the forward wrote it (contiguous `[outer…, B, H, Lq]`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        o: (Data<'a>, Layout),
        d_o: (Data<'a>, Layout),
        lse: &'a [f32],
        grads: [&'a mut [f32]; 3],
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<GradJob<'a>> {
        let calls = Calls::new(plan, q, k, v, mask, scores, par)?;
        check_operand("out", &o.0, &o.1)?;
        check_operand("grad_out", &d_o.0, &d_o.1)?;
        let rows: usize = plan.lse_shape.iter().product();
        if lse.len() != rows {
            return Err(value_err(format!(
                "lse has {} values, expected {rows}",
                lse.len()
            )));
        }
        for ((name, g), p) in ["dq", "dk", "dv"].iter().zip(&grads).zip(&plan.grads) {
            let want: usize = p.shape.iter().product();
            if g.len() != want {
                return Err(value_err(format!(
                    "{name}: {} elements, expected {want}",
                    g.len()
                )));
            }
        }
        Ok(GradJob {
            calls,
            o: Operand::new(o.0, &o.1),
            d_o: Operand::new(d_o.0, &d_o.1),
            lse,
            grads,
        })
    }

    /// Runs the backward of every library call, in order.
    pub(crate) fn run(&mut self) -> Result<(), AttnError> {
        let c = &self.calls;
        let plan = c.plan;
        let [b, h, lq, _] = c.q.dims;
        let per_lse = b * h * lq;
        let layouts = plan.grads.each_ref().map(|p| p.contiguous().split());
        let mut idx = vec![0usize; plan.outer.len()];
        for call in 0..c.count() {
            let opts = c.options(call, &idx)?;
            let [dq, dk, dv] = &mut self.grads;
            let grads = SdpaGrads::new(
                grad_view(dq, &layouts[0], &idx)?,
                grad_view(dk, &layouts[1], &idx)?,
                grad_view(dv, &layouts[2], &idx)?,
            );
            sdpa_backward_into_dyn(
                c.q.tensor(&idx)?,
                c.k.tensor(&idx)?,
                c.v.tensor(&idx)?,
                self.o.tensor(&idx)?,
                self.d_o.tensor(&idx)?,
                &self.lse[call * per_lse..(call + 1) * per_lse],
                grads,
                &opts,
            )?;
            advance(&mut idx, &plan.outer);
        }
        Ok(())
    }
}

/// The view of one call's part of a gradient buffer, laid out as `l` (outer strides, dims,
/// strides).
fn grad_view<'b>(
    buf: &'b mut [f32],
    l: &(Vec<usize>, [usize; 4], [usize; 4]),
    idx: &[usize],
) -> Result<TensorMut<'b>, AttnError> {
    TensorMut::new(tail_mut(buf, offset(idx, &l.0)), l.1, l.2)
}

fn tail_mut<T>(s: &mut [T], off: usize) -> &mut [T] {
    let n = s.len();
    &mut s[off.min(n)..]
}
