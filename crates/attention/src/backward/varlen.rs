//! The backward pass of variable-length attention ([`crate::sdpa_varlen_into_dyn`] with
//! packed K/V): each sequence's gradients are the dense backward of its own `B = 1`
//! problem, run on sub-views of the packed tensors (no copies of Q, K, V, O or dO).
//!
//! The sequences run one after the other, each split over the threads as the dense
//! backward splits it, and the sink gradient is summed over the sequences in order, so
//! the gradients are bit-identical at any thread count.

use super::{sdpa_backward_into_dyn, SdpaGrads};
use crate::error::{AttnError, Result};
use crate::tensor::{DynTensor, TensorMut, TensorRef};
use crate::varlen::{plan, VarlenSeqs};
use crate::SdpaOptions;
use kernels::{match_dtype, Element};

/// [`sdpa_varlen_backward_into_dyn`] for statically typed views.
///
/// # Errors
/// As [`sdpa_varlen_backward_into_dyn`].
#[allow(clippy::too_many_arguments)]
pub fn sdpa_varlen_backward_into<Q: Element, K: Element, V: Element, O: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    o: TensorRef<'_, O>,
    d_o: TensorRef<'_, G>,
    lse: &[f32],
    grads: SdpaGrads<'_>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    sdpa_varlen_backward_into_dyn(
        q.into(),
        k.into(),
        v.into(),
        o.into(),
        d_o.into(),
        lse,
        grads,
        seqs,
        opts,
    )
}

/// The gradients of variable-length attention ([`crate::sdpa_varlen_into_dyn`]) with packed
/// K/V, for the same `q`, `k`, `v`, `seqs` and `opts` as the forward: `o` is its output
/// (`[1, Hq, Tq, Dv]`), `lse` its log-sum-exp (`[Hq, Tq]`) and `d_o` the loss's gradient
/// with respect to `o` (`[1, Hq, Tq, Dv]`). Q, K, V, O and dO may each be f32, f16 or bf16.
///
/// The gradients are f32 views: dQ `[1, Hq, Tq, D]`, dK `[1, Hkv, Tk, D]`, dV
/// `[1, Hkv, Tk, Dv]` (any strides, such as the packed `[Tq, Hq, D]` seen through
/// [`TensorMut::from_blhd`]), and with [`SdpaGrads::with_dsinks`] the sink logits'
/// gradient `[Hq]`, summed over the sequences. Key rows that no sequence uses (past
/// `seqused_k`, or of a sequence without queries) get zero gradients.
///
/// ```
/// use fastattn_attention::{sdpa_varlen_backward_into, sdpa_varlen_into, SdpaGrads,
///                          SdpaOptions, TensorMut, TensorRef, VarlenSeqs};
/// let (hq, t, d) = (2, 5, 4);
/// let x: Vec<f32> = (0..t * hq * d).map(|i| (i % 11) as f32 * 0.1).collect();
/// let dims = [1, hq, t, d];
/// let xt = TensorRef::from_blhd(&x, dims)?;
/// let cu: &[i32] = &[0, 3, 5];
/// let seqs = VarlenSeqs::new(cu).with_cu_seqlens_k(cu);
/// let opts = SdpaOptions::new().with_causal(true);
/// let (mut o, mut lse) = (vec![0.0f32; x.len()], vec![0.0f32; hq * t]);
/// sdpa_varlen_into(xt, xt, xt, TensorMut::from_blhd(&mut o, dims)?, &seqs, &opts,
///                  Some(&mut lse))?;
/// let d_o = vec![1.0f32; x.len()]; // the loss is sum(O)
/// let (mut dq, mut dk, mut dv) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()],
///                                 vec![0.0f32; x.len()]);
/// sdpa_varlen_backward_into(
///     xt, xt, xt, TensorRef::from_blhd(&o, dims)?, TensorRef::from_blhd(&d_o, dims)?, &lse,
///     SdpaGrads::new(TensorMut::from_blhd(&mut dq, dims)?,
///                    TensorMut::from_blhd(&mut dk, dims)?,
///                    TensorMut::from_blhd(&mut dv, dims)?),
///     &seqs, &opts)?;
/// // Each output row mixes value rows with weights summing to 1: dV sums to Tq·Hq·Dv.
/// assert!((dv.iter().sum::<f32>() - (t * hq * d) as f32).abs() < 1e-3);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// Before anything is written: [`AttnError::Option`] for a block table (the backward
/// takes packed K/V only) and the forward's errors ([`crate::sdpa_varlen_into_dyn`]);
/// [`AttnError::Shape`] for `d_o` unlike `o`, an `lse` that is not `Hq·Tq` long,
/// gradient views unlike Q, K and V, and a `dsinks` that is not `Hq` long;
/// [`AttnError::Option`] for a `dsinks` without sinks in `opts`.
#[allow(clippy::too_many_arguments)]
pub fn sdpa_varlen_backward_into_dyn(
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    o: DynTensor<'_>,
    d_o: DynTensor<'_>,
    lse: &[f32],
    mut grads: SdpaGrads<'_>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    if seqs.block_table.is_some() {
        return Err(AttnError::Option {
            what: "the varlen backward takes packed K/V (cu_seqlens_k), not a block table".into(),
        });
    }
    let plan = plan(q.dims(), k.dims(), v.dims(), o.dims(), seqs, opts)?;
    let shape = |what: String| Err(AttnError::Shape { what });
    if d_o.dims() != o.dims() {
        return shape(format!(
            "output gradient is {:?}, expected {:?}",
            d_o.dims(),
            o.dims()
        ));
    }
    let [_, hq, tq, _] = q.dims();
    if lse.len() != hq * tq {
        return shape(format!(
            "lse has {} values, expected Hq·Tq = {}",
            lse.len(),
            hq * tq
        ));
    }
    for (what, g, want) in [
        ("dQ", grads.dq.dims(), q.dims()),
        ("dK", grads.dk.dims(), k.dims()),
        ("dV", grads.dv.dims(), v.dims()),
    ] {
        if g != want {
            return shape(format!("{what} is {g:?}, expected {want:?}"));
        }
    }
    if let Some(ds) = &grads.dsinks {
        if opts.sinks.is_none() {
            return Err(AttnError::Option {
                what: "a sink gradient (dsinks) was asked for, but the options have no sinks"
                    .into(),
            });
        }
        if ds.len() != hq {
            return shape(format!(
                "dsinks has {} values, expected Hq = {hq}",
                ds.len()
            ));
        }
    }
    // Keys no sequence reads keep zero gradients; every query belongs to a sequence.
    zero(&mut grads.dk);
    zero(&mut grads.dv);
    let mut dsinks = grads.dsinks.take();
    if let Some(ds) = dsinks.as_deref_mut() {
        ds.fill(0.0);
    }
    let mut part = vec![0.0f32; if dsinks.is_some() { hq } else { 0 }];
    let mut seq_lse = Vec::new();
    for s in &plan {
        let (lq, nk) = (s.p.lq, s.keys);
        // The sequence's LSE rows, `[Hq, lq]` contiguous.
        seq_lse.clear();
        for h in 0..hq {
            seq_lse.extend_from_slice(&lse[h * tq + s.q0..][..lq]);
        }
        let seq_grads = SdpaGrads::new(
            sub_mut(&mut grads.dq, s.q0, lq)?,
            sub_mut(&mut grads.dk, s.k0, nk)?,
            sub_mut(&mut grads.dv, s.k0, nk)?,
        )
        .with_dsinks(dsinks.is_some().then_some(&mut part[..]));
        sdpa_backward_into_dyn(
            sub(q, s.q0, lq)?,
            sub(k, s.k0, nk)?,
            sub(v, s.k0, nk)?,
            sub(o, s.q0, lq)?,
            sub(d_o, s.q0, lq)?,
            &seq_lse,
            seq_grads,
            opts,
        )?;
        if let Some(ds) = dsinks.as_deref_mut() {
            for (a, &x) in ds.iter_mut().zip(&part) {
                *a += x;
            }
        }
    }
    Ok(())
}

/// Rows `l0 .. l0 + n` (dimension 2) of `t`, as a view of their own.
fn sub(t: DynTensor<'_>, l0: usize, n: usize) -> Result<DynTensor<'_>> {
    match_dtype!(t, DynTensor(t) => {
        let [b, h, _, x] = t.dims();
        let data = t.data();
        let off = (l0 * t.strides()[2]).min(data.len());
        TensorRef::new(&data[off..], [b, h, n, x], t.strides()).map(DynTensor::from)
    })
}

/// Rows `l0 .. l0 + n` (dimension 2) of a gradient view, as a view of their own.
fn sub_mut<'t>(t: &'t mut TensorMut<'_>, l0: usize, n: usize) -> Result<TensorMut<'t>> {
    let ([b, h, _, x], st) = (t.dims(), t.strides());
    let data = t.data_mut();
    let off = (l0 * st[2]).min(data.len());
    TensorMut::new(&mut data[off..], [b, h, n, x], st)
}

/// Sets every element of the view `t` to 0.
fn zero(t: &mut TensorMut<'_>) {
    let ([nb, nh, nl, nx], st) = (t.dims(), t.strides());
    let data = t.data_mut();
    for b in 0..nb {
        for h in 0..nh {
            for l in 0..nl {
                for x in 0..nx {
                    data[b * st[0] + h * st[1] + l * st[2] + x * st[3]] = 0.0;
                }
            }
        }
    }
}
