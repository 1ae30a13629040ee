//! The backward pass: gradients `dQ`, `dK`, `dV` of [`crate::sdpa`] from the forward's
//! output `O`, its log-sum-exp and the output gradient `dO` (FlashAttention-2's algorithm,
//! tile by tile, with O(L) memory beyond the inputs and outputs).
//!
//! With `P = exp(logits − lse)` recomputed from the forward's LSE and
//! `D = rowsum(dO ∘ O)`:
//!
//! ```text
//! dV = Pᵀ·dO      dP = dO·Vᵀ      dS = P ∘ (dP − D) ∘ cap'      dQ = scale·dS·K      dK = scale·dSᵀ·Q
//! ```
//!
//! where `cap' = 1 − tanh²(s/cap)` is the soft-cap's derivative (1 without soft-capping).
//! ALiBi and additive masks shift the logits by constants, so they change `P` but add no
//! factor; the mask and the slopes get no gradient.
//!
//! With attention sinks the forward's LSE already holds the sink, so `P` is normalised over
//! the keys and the sink and the formulas above are unchanged. The sink logit `σ_h` of
//! head `h` gets `dσ_h = −Σ_rows exp(σ_h − lse)·D` over every row of the head in every
//! batch (0 for a sink of `-inf`), summed on the calling thread in a fixed order.
//!
//! # Determinism
//! One task per `(batch, key/value head, chunk of keys)` (chunks of at
//! least [`BWD_KEY_CHUNK`] keys, at most [`BWD_MAX_CHUNKS`] per head, fixed by `Lk`
//! alone). A task walks its keys in blocks of [`BWD_KEY_BLOCK`]; for each block it loops
//! over every query head of the group and every tile of [`BWD_QUERY_TILE`] queries ([`BWD_QUERY_TILE_DENSE`] without a causal mask or
//! window) in a
//! fixed order, accumulating the block's `dK` and `dV` (which it owns) and its share of
//! the group's `dQ` in a buffer of its own. The shares are summed in chunk order at the
//! end. Nothing is reduced across tasks in an order that timing could change, so the
//! gradients are bit-identical at any thread count, without atomics; the memory beyond
//! the inputs and outputs is the row statistics (`D`, O(L)), the shares (at most
//! [`BWD_MAX_CHUNKS`] × dQ's size) and per-thread tiles.
//!
//! Per (block, tile): `S = scale·Q·Kᵀ` and `dP = dO·Vᵀ` with Kᵀ and Vᵀ packed once per
//! block, `dV += Pᵀ·dO` and `dK += dSᵀ·Q` with the group's Q and dO tiles packed once per
//! task, `dQ += dS·K` with K packed once per block: five tile products, as in
//! FlashAttention-2.
//!
//! # Keys a query cannot see
//! Their weight is exactly 0, and their `dS` is set to 0 by selection, never by a multiply,
//! so a NaN or an infinity in a key or value row that no query can see (the padding of a KV
//! cache) does not reach any gradient; blocks of K holding one go through the zero-skipping
//! [`kernels::gemv::axpy_rows_with`] for `dQ`.
//!
//! # Layout
//! - this file: the public API, its shape checks and the split's constants;
//! - `tasks`: the split into tasks (row statistics `D`, one task per key chunk, the dQ
//!   shares summed in chunk order, the gradient rows written out);
//! - `passes`: one task's passes over its key blocks and query tiles (the five tile
//!   products, `P` and `dS` recomputed per tile);
//! - `workspace`: the per-thread scratch and its packing helpers;
//! - `varlen`: the variable-length backward (the dense one per sequence).
//!
//! The element-wise loops of `P` and `dS` are kernels of their own
//! ([`kernels::softmax::backward`]).

mod passes;
mod tasks;
mod varlen;
mod workspace;

pub use varlen::{sdpa_varlen_backward_into, sdpa_varlen_backward_into_dyn};

use crate::error::{AttnError, Result};
use crate::options::Problem;
use crate::tensor::{DynTensor, TensorMut, TensorRef};
use crate::SdpaOptions;
use kernels::dtype::Element;

/// Keys per block of the backward pass (a constant: the split never depends on threads).
pub const BWD_KEY_BLOCK: usize = 128;
/// Query rows per tile of the backward pass.
pub const BWD_QUERY_TILE: usize = 128;
/// Query rows per tile when every row sees every key (no causal mask, no window): no
/// diagonal is wasted, and longer tiles amortise the per-tile work better.
pub const BWD_QUERY_TILE_DENSE: usize = 192;

/// Where [`sdpa_backward_into`] writes the gradients: f32 views shaped like Q, K and V,
/// and optionally the sink logits' gradient.
#[derive(Debug)]
#[non_exhaustive]
pub struct SdpaGrads<'g> {
    /// `[B, Hq, Lq, D]`, the gradient of Q.
    pub dq: TensorMut<'g>,
    /// `[B, Hkv, Lk, D]`, the gradient of K (summed over the query heads of each group).
    pub dk: TensorMut<'g>,
    /// `[B, Hkv, Lk, Dv]`, the gradient of V (summed likewise).
    pub dv: TensorMut<'g>,
    /// `[Hq]`, the gradient of [`SdpaOptions::sinks`] (summed over the batch); only with
    /// sinks in the options. `None` skips it.
    pub dsinks: Option<&'g mut [f32]>,
}

impl<'g> SdpaGrads<'g> {
    /// The three gradient views (no sink gradient).
    pub fn new(dq: TensorMut<'g>, dk: TensorMut<'g>, dv: TensorMut<'g>) -> Self {
        SdpaGrads {
            dq,
            dk,
            dv,
            dsinks: None,
        }
    }

    /// Sets [`dsinks`](Self::dsinks).
    pub fn with_dsinks(mut self, dsinks: Option<&'g mut [f32]>) -> Self {
        self.dsinks = dsinks;
        self
    }
}

/// Gradients returned by [`sdpa_backward`], contiguous `[B, H, L, D]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Gradients {
    /// `[B, Hq, Lq, D]`.
    pub dq: Vec<f32>,
    /// `[B, Hkv, Lk, D]`.
    pub dk: Vec<f32>,
    /// `[B, Hkv, Lk, Dv]`.
    pub dv: Vec<f32>,
    /// `[Hq]`, the gradient of the sink logits (summed over the batch); empty without
    /// sinks.
    pub dsinks: Vec<f32>,
}

fn numel(dims: [usize; 4], what: &'static str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(AttnError::Overflow { what })
}

/// The gradients of [`crate::sdpa`] with respect to Q, K and V, into new contiguous
/// buffers.
///
/// `o` is the forward's output and `lse` its log-sum-exp (`[B, Hq, Lq]` contiguous, from
/// [`crate::SdpaOutputs::with_lse`]), both from a call with the same inputs and `opts`;
/// `d_o` is the gradient of the loss with respect to `o`. Q, K, V, O and dO may each be
/// f32, f16 or bf16; the gradients are f32. With [`SdpaOptions::sinks`] the gradient of
/// the sink logits comes back too ([`Gradients::dsinks`]).
///
/// ```
/// use fastattn_attention::{sdpa_into, sdpa_backward, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
/// let dims = [1, 2, 7, 4];
/// let x: Vec<f32> = (0..56).map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5).collect();
/// let t = TensorRef::contiguous(&x, dims)?;
/// let opts = SdpaOptions::new().with_causal(true);
/// let (mut o, mut lse) = (vec![0.0f32; 56], vec![0.0f32; 14]);
/// sdpa_into(t, t, t, TensorMut::contiguous(&mut o, dims)?, &opts,
///           SdpaOutputs::default().with_lse(Some(&mut lse)))?;
/// let d_o = vec![1.0f32; 56]; // the loss is sum(O)
/// let g = sdpa_backward(t, t, t, TensorRef::contiguous(&o, dims)?,
///                       TensorRef::contiguous(&d_o, dims)?, &lse, &opts)?;
/// // Each output row is a convex mix of value rows, so sum(O) grows by exactly one per
/// // unit added to all of a head's values: the dV of a head sums to Lq·Dv.
/// let s: f32 = g.dv[..28].iter().sum();
/// assert!((s - 28.0).abs() < 1e-4);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// The forward's shape and option errors, and shape errors for `o`, `d_o` and `lse`.
pub fn sdpa_backward<Q: Element, K: Element, V: Element, O: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    o: TensorRef<'_, O>,
    d_o: TensorRef<'_, G>,
    lse: &[f32],
    opts: &SdpaOptions<'_>,
) -> Result<Gradients> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let mut dq = vec![0.0f32; numel(q.dims(), "dQ")?];
    let mut dk = vec![0.0f32; numel(k.dims(), "dK")?];
    let mut dv = vec![0.0f32; numel(v.dims(), "dV")?];
    let mut dsinks = vec![0.0f32; if p.sinks.is_some() { p.hq } else { 0 }];
    sdpa_backward_into(
        q,
        k,
        v,
        o,
        d_o,
        lse,
        SdpaGrads::new(
            TensorMut::contiguous(&mut dq, q.dims())?,
            TensorMut::contiguous(&mut dk, k.dims())?,
            TensorMut::contiguous(&mut dv, v.dims())?,
        )
        .with_dsinks(p.sinks.is_some().then_some(&mut dsinks[..])),
        opts,
    )?;
    Ok(Gradients { dq, dk, dv, dsinks })
}

/// [`sdpa_backward`] into caller-given (strided) gradient views.
///
/// With [`SdpaGrads::with_dsinks`] it also writes the gradient of the sink logits
/// (`[Hq]`, summed over the batch).
///
/// # Errors
/// As [`sdpa_backward`], shape errors for the gradient views (and a `dsinks` whose length
/// is not `Hq`), and [`AttnError::Option`] for a `dsinks` without sinks in `opts`.
#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward_into<Q: Element, K: Element, V: Element, O: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    o: TensorRef<'_, O>,
    d_o: TensorRef<'_, G>,
    lse: &[f32],
    grads: SdpaGrads<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    sdpa_backward_into_dyn(
        q.into(),
        k.into(),
        v.into(),
        o.into(),
        d_o.into(),
        lse,
        grads,
        opts,
    )
}

/// [`sdpa_backward_into`] for tensors whose element types are known only at run time (what
/// the C ABI and the Python package call).
///
/// # Errors
/// As [`sdpa_backward_into`].
#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward_into_dyn(
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    o: DynTensor<'_>,
    d_o: DynTensor<'_>,
    lse: &[f32],
    grads: SdpaGrads<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let out_dims = [p.b, p.hq, p.lq, p.dv];
    for (what, t) in [("output", o.dims()), ("output gradient", d_o.dims())] {
        if t != out_dims {
            return Err(AttnError::Shape {
                what: format!("{what} is {t:?}, expected {out_dims:?}"),
            });
        }
    }
    let rows = p.b * p.hq * p.lq;
    if lse.len() != rows {
        return Err(AttnError::Shape {
            what: format!("lse has {} values, expected B·Hq·Lq = {rows}", lse.len()),
        });
    }
    for (what, g, want) in [
        ("dQ", grads.dq.dims(), q.dims()),
        ("dK", grads.dk.dims(), k.dims()),
        ("dV", grads.dv.dims(), v.dims()),
    ] {
        if g != want {
            return Err(AttnError::Shape {
                what: format!("{what} is {g:?}, expected {want:?}"),
            });
        }
    }
    if let Some(ds) = &grads.dsinks {
        if p.sinks.is_none() {
            return Err(AttnError::Option {
                what: "a sink gradient (dsinks) was asked for, but the options have no sinks"
                    .into(),
            });
        }
        if ds.len() != p.hq {
            return Err(AttnError::Shape {
                what: format!("dsinks has {} values, expected Hq = {}", ds.len(), p.hq),
            });
        }
    }
    tasks::run(p, q, k, v, o, d_o, lse, grads)
}

/// Keys per task, at least (the chunk count is `ceil(Lk / BWD_KEY_CHUNK)`, at most [`BWD_MAX_CHUNKS`]).
pub const BWD_KEY_CHUNK: usize = 1024;
/// Key chunks per key/value head, at most.
pub const BWD_MAX_CHUNKS: usize = 4;
