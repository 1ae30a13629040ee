//! # fastattn attention
//!
//! Scaled dot-product attention `softmax(Q·Kᵀ·scale + mask)·V` on the CPU, built on the
//! `kernels` crate's GEMM microkernels, packing and vectorised exp.
//!
//! * Q, K, V and the output may each be f32, f16 or bf16 ([`Element`]): 16-bit values are
//!   widened as they are packed or loaded and everything computes in f32; a 16-bit output
//!   is the f32 result rounded once. A [`KvCache`] and a layer's weights can be stored in
//!   16 bits too, for half the memory and half the bytes a decode step reads.
//! * Tensors are strided `[B, H, L, D]` views ([`TensorRef`], [`TensorMut`]), so the
//!   `[B, H, L, D]` and `[B, L, H, D]` layouts and slices of larger buffers work without
//!   copies. Q is `[B, Hq, Lq, D]`, K `[B, Hkv, Lk, D]`, V `[B, Hkv, Lk, Dv]`, the output
//!   `[B, Hq, Lq, Dv]`.
//! * Options ([`SdpaOptions`]): scale, causal (bottom-right aligned), boolean/additive
//!   masks with broadcasting, per-batch key lengths, sliding windows, ALiBi, soft-capping,
//!   GQA/MQA (query head `h` reads key/value head `h / (Hq/Hkv)`), cross-attention.
//! * Two paths ([`AttnPath`]): the fused flash path (tiled online softmax, per-thread
//!   scratch only; see [`flash`]) and the materialised path, which can hand back the
//!   attention weights `[B, Hq, Lq, Lk]` (row = query token, column = the key it looks at).
//! * A Transformer attention layer on top ([`mha`]): [`MultiHeadAttention`] with fused,
//!   packed-once Q|K|V and output projections ([`Linear`]), GQA/MQA, biases, rotary
//!   embeddings ([`rope`]), cross-attention, and a fixed-capacity [`KvCache`] for decoding.
//!
//! ```
//! use fastattn_attention::{sdpa, SdpaOptions, TensorRef};
//! let (b, h, l, d) = (1, 2, 5, 4);
//! let x: Vec<f32> = (0..b * h * l * d).map(|i| (i % 7) as f32 * 0.1).collect();
//! let t = TensorRef::contiguous(&x, [b, h, l, d])?;
//! let out = sdpa(t, t, t, &SdpaOptions::new().with_causal(true))?;
//! assert_eq!(out.len(), b * h * l * d);
//! // The first query sees only the first key: its output is that key's value.
//! assert!((out[0] - x[0]).abs() < 1e-6);
//! # Ok::<(), fastattn_attention::AttnError>(())
//! ```

pub mod backward;
mod direct;
pub mod error;
pub mod flash;
pub mod gates;
mod job;
mod kv;
pub mod kv_cache;
pub mod layer_cache;
pub mod linear;
mod materialized;
pub mod mha;
mod nonfinite;
pub mod options;
pub mod paged;
pub mod quant;
pub mod quant_cache;
pub mod reference;
pub mod rope;
pub mod tensor;
pub mod varlen;

pub use backward::{
    sdpa_backward, sdpa_backward_into, sdpa_backward_into_dyn, sdpa_varlen_backward_into,
    sdpa_varlen_backward_into_dyn, Gradients, SdpaGrads,
};
pub use error::{AttnError, Result};
/// The element types (f32, and the 16-bit storage types from the `half` crate).
pub use kernels::{bf16, f16, DType, Element};
pub use kv_cache::KvCache;
pub use layer_cache::LayerCache;
pub use linear::{Linear, WeightLayout};
pub use mha::{MhaConfig, MhaWeights, MultiHeadAttention, OwnedMhaWeights};
pub use options::{AttnPath, Mask, SdpaOptions};
pub use paged::paged_kv_write;
pub use quant::{KvRef, QuantTensor};
pub use rope::{Rope, RopeConfig};
pub use tensor::{DynTensor, DynTensorMut, TensorMut, TensorRef};
pub use varlen::{
    sdpa_varlen, sdpa_varlen_into, sdpa_varlen_into_dyn, sdpa_varlen_kv_into, BlockTable, SeqIdx,
    VarlenSeqs,
};

use job::{Job, LseOut};
use kv::{KvMem, KvSource};
use options::Problem;
use tensor::{AnyOut, AnyRef};

/// Optional extra outputs of [`sdpa_into`]: `SdpaOutputs::default()` asks for none; add
/// them with [`with_weights`](Self::with_weights) and [`with_lse`](Self::with_lse).
/// `#[non_exhaustive]`, so outputs added later do not break callers.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SdpaOutputs<'o> {
    /// The attention weights `[B, Hq, Lq, Lk]` (forces the materialised path).
    pub weights: Option<TensorMut<'o>>,
    /// The log-sum-exp of every row, `[B, Hq, Lq]` contiguous (`-inf` for fully masked rows).
    pub lse: Option<&'o mut [f32]>,
}

impl<'o> SdpaOutputs<'o> {
    /// Sets [`weights`](Self::weights).
    pub fn with_weights(mut self, weights: Option<TensorMut<'o>>) -> Self {
        self.weights = weights;
        self
    }

    /// Sets [`lse`](Self::lse).
    pub fn with_lse(mut self, lse: Option<&'o mut [f32]>) -> Self {
        self.lse = lse;
        self
    }
}

/// Attention into a new contiguous `[B, Hq, Lq, Dv]` buffer.
///
/// # Errors
/// Any inconsistency of shapes, layouts or options ([`AttnError`]), before any work.
pub fn sdpa<Q: Element, K: Element, V: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    opts: &SdpaOptions<'_>,
) -> Result<Vec<f32>> {
    let [b, hq, lq, _] = q.dims();
    let dv = v.dims()[3];
    let len = [b, hq, lq, dv]
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(AttnError::Overflow { what: "output" })?;
    // Validate before allocating the output.
    Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let mut out = vec![0.0f32; len];
    sdpa_into(
        q,
        k,
        v,
        TensorMut::contiguous(&mut out, [b, hq, lq, dv])?,
        opts,
        SdpaOutputs::default(),
    )?;
    Ok(out)
}

/// Attention and its weights: returns the contiguous output `[B, Hq, Lq, Dv]` and weights
/// `[B, Hq, Lq, Lk]`.
///
/// # Errors
/// As [`sdpa`].
pub fn sdpa_with_weights<Q: Element, K: Element, V: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    opts: &SdpaOptions<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [b, hq, lq, _] = q.dims();
    let (lk, dv) = (k.dims()[2], v.dims()[3]);
    let n_out = [b, hq, lq, dv]
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(AttnError::Overflow { what: "output" })?;
    let n_w = [b, hq, lq, lk]
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(AttnError::Overflow { what: "weights" })?;
    Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let mut out = vec![0.0f32; n_out];
    let mut w = vec![0.0f32; n_w];
    sdpa_into(
        q,
        k,
        v,
        TensorMut::contiguous(&mut out, [b, hq, lq, dv])?,
        opts,
        SdpaOutputs {
            weights: Some(TensorMut::contiguous(&mut w, [b, hq, lq, lk])?),
            lse: None,
        },
    )?;
    Ok((out, w))
}

/// Attention into a caller-given output view, with optional weights and LSE outputs.
///
/// # Errors
/// Shape, layout and option errors ([`AttnError`]), all before any work; asking for
/// weights with [`AttnPath::Flash`] forced is an [`AttnError::Option`] error.
pub fn sdpa_into<Q: Element, K: Element, V: Element, O: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    out: TensorMut<'_, O>,
    opts: &SdpaOptions<'_>,
    extras: SdpaOutputs<'_>,
) -> Result<()> {
    sdpa_into_dyn(q.into(), k.into(), v.into(), out.into(), opts, extras)
}

/// [`sdpa_into`] for tensors whose element types are known only at run time (what the C
/// ABI and the Python package call): any combination of f32, f16 and bf16 Q, K, V and
/// output.
///
/// ```
/// use fastattn_attention::{sdpa_into_dyn, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
/// use kernels::bf16;
/// let x: Vec<bf16> = (0..2 * 5 * 4).map(|i| bf16::from_f32(i as f32 * 0.01)).collect();
/// let mut out = vec![0.0f32; 2 * 5 * 4];
/// let t = TensorRef::contiguous(&x, [1, 2, 5, 4])?;
/// sdpa_into_dyn(t.into(), t.into(), t.into(), TensorMut::contiguous(&mut out, [1, 2, 5, 4])?.into(),
///               &SdpaOptions::new(), SdpaOutputs::default())?;
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// As [`sdpa_into`].
pub fn sdpa_into_dyn(
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    out: DynTensorMut<'_>,
    opts: &SdpaOptions<'_>,
    extras: SdpaOutputs<'_>,
) -> Result<()> {
    sdpa_kv_into(q, k.into(), v.into(), out, opts, extras)
}

/// [`sdpa_into_dyn`] with keys and values that may be 8-bit ([`KvRef`]: a float view, or
/// int8/fp8 codes with their scales, [`quant::QuantTensor`]). The codes are read in
/// place: decoding widens them in registers with the scales folded into the scores and
/// weights; prefill dequantises each key block as it packs it.
///
/// ```
/// use fastattn_attention::{quant::QuantTensor, sdpa_kv_into, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
/// use kernels::quant::quantize_i8_row;
/// let (l, d) = (5, 4);
/// let x: Vec<f32> = (0..l * d).map(|i| (i as f32 * 0.37).sin()).collect();
/// // int8 keys and values, one scale per token.
/// let mut codes = vec![0i8; l * d];
/// let scales: Vec<f32> = (0..l)
///     .map(|t| quantize_i8_row(&x[t * d..(t + 1) * d], &mut codes[t * d..(t + 1) * d]))
///     .collect::<Result<_, _>>()?;
/// let kv = QuantTensor::per_row(TensorRef::contiguous(&codes, [1, 1, l, d])?, &scales)?;
/// let q = TensorRef::contiguous(&x, [1, 1, l, d])?;
/// let mut out = vec![0.0f32; l * d];
/// sdpa_kv_into(q.into(), kv.into(), kv.into(), TensorMut::contiguous(&mut out, [1, 1, l, d])?.into(),
///               &SdpaOptions::new().with_causal(true), SdpaOutputs::default())?;
/// // The first query sees only the first key: its output is that token's dequantised value.
/// assert!((out[0] - x[0]).abs() < 0.01);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`sdpa_into`], and [`AttnError::Scale`] for a scale that is not finite and positive
/// on a row the call reads (checked before any work).
pub fn sdpa_kv_into(
    q: DynTensor<'_>,
    k: KvRef<'_>,
    v: KvRef<'_>,
    mut out: DynTensorMut<'_>,
    opts: &SdpaOptions<'_>,
    extras: SdpaOutputs<'_>,
) -> Result<()> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let want = [p.b, p.hq, p.lq, p.dv];
    if out.dims() != want {
        return Err(AttnError::Shape {
            what: format!("output is {:?}, expected {want:?}", out.dims()),
        });
    }
    let SdpaOutputs { mut weights, lse } = extras;
    if let Some(w) = &weights {
        let want = [p.b, p.hq, p.lq, p.lk];
        if w.dims() != want {
            return Err(AttnError::Shape {
                what: format!("weights are {:?}, expected {want:?}", w.dims()),
            });
        }
    }
    if let Some(l) = &lse {
        let n = p.b * p.hq * p.lq;
        if l.len() != n {
            return Err(AttnError::Shape {
                what: format!("lse has {} values, expected B·Hq·Lq = {n}", l.len()),
            });
        }
    }
    let path = match (opts.path, weights.is_some()) {
        (AttnPath::Flash, true) => {
            return Err(AttnError::Option {
                what: "the flash path cannot return attention weights".into(),
            })
        }
        (AttnPath::Auto, true) | (AttnPath::Materialized, _) => AttnPath::Materialized,
        _ => AttnPath::Flash,
    };
    // Nothing to compute; with Dv = 0 the weights and LSE may still be asked for.
    if p.b * p.hq * p.lq == 0 || (p.dv == 0 && weights.is_none() && lse.is_none()) {
        return Ok(());
    }
    let os = out.strides();
    let lse = lse.map(|l| LseOut {
        // SAFETY: tasks write disjoint LSE entries (one task per row or head), and nothing
        // else accesses them during the call (borrowed mutably here).
        ptr: unsafe { SyncPtr::new(l.as_mut_ptr()) },
        sb: p.hq * p.lq,
        sh: p.lq,
    });
    let (k, v) = (
        KvSource::dense(KvMem::of(k), p.lk),
        KvSource::dense(KvMem::of(v), p.lk),
    );
    k.check_scales(p.b, p.hkv)?;
    v.check_scales(p.b, p.hkv)?;
    let job = Job {
        q: AnyRef::of_dyn(q),
        k,
        v,
        // SAFETY: the paths write disjoint elements of the output (one task per row or
        // head), and nothing else accesses it during the call (it is borrowed mutably here).
        out: unsafe { AnyOut::of_dyn(&mut out) },
        out_base: 0,
        os,
        lse,
        p,
    };
    match path {
        AttnPath::Materialized => materialized::run(&job, weights.as_mut()),
        _ => flash::run(std::slice::from_ref(&job)),
    }
}

/// A raw pointer shared by tasks that write disjoint elements. Built only through the
/// `unsafe` [`SyncPtr::new`].
pub(crate) struct SyncPtr<T = f32>(*mut T);

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}

// SAFETY: created only (unsafe `new`) where the sharing tasks write disjoint elements and
// nothing else accesses the buffer meanwhile; T is a plain number type.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// # Safety
    /// Threads receiving it must write disjoint elements, with no other access meanwhile.
    pub(crate) unsafe fn new(p: *mut T) -> Self {
        SyncPtr(p)
    }
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
