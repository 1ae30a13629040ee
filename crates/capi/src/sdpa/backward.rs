//! `fa_sdpa_backward`: the gradients of `fa_sdpa` with respect to Q, K and V.

use super::{
    attn_options, fa_sdpa_options, fa_tensor, input_slice, lse_rows, read_options, refuse_scales,
    View,
};
use crate::raw::check_outputs_disjoint;
use crate::status::{fa_status, ffi_guard, FfiError, OK};
use attention::SdpaGrads;
use std::ffi::c_int;

/// The backward pass of `fa_sdpa`: writes `grad_q`, `grad_k` and `grad_v`, the gradients
/// of a loss with respect to Q, K and V, given the forward's output `out`, its log-sum-exp
/// `lse` and `grad_out`, the gradient of the loss with respect to `out`
/// (FlashAttention-2's algorithm: the weights are recomputed tile by tile from `lse`, so
/// no `[Lq, Lk]` buffer is needed).
///
/// Q is `[B, Hq, Lq, D]`, K `[B, Hkv, Lk, D]`, V `[B, Hkv, Lk, Dv]`, `out` and `grad_out`
/// `[B, Hq, Lq, Dv]`, each in any layout its strides describe and of any element type
/// (`fa_tensor.dtype`: f32, f16 or bf16, independently; 16-bit values are widened to f32
/// as they are read). `lse` holds the `lse_len = B*Hq*Lq` floats `fa_sdpa` wrote to
/// `opts->lse` (`[B, Hq, Lq]`, contiguous), and `out` and `lse` must come from a forward
/// call with the same Q, K, V and options. The gradients are f32 (`dtype`
/// `FA_DTYPE_F32`), shaped like Q, K and V, in any layout; every element of each view is
/// overwritten (not accumulated into). With GQA/MQA, `grad_k` and `grad_v` sum over the
/// query heads of each group. The results do not depend on the thread count.
///
/// `opts` (NULL for the defaults) is read as by `fa_sdpa`: scale, causal, mask, key
/// lengths, windows, soft-capping, ALiBi. The mask and the slopes get no gradient. The
/// forward's outputs `opts->weights` and `opts->lse` are ignored (never read or written),
/// so the options struct of the forward call can be passed as it is. Q, K, V, `out`,
/// `grad_out` and `lse` may share memory; the gradients must overlap neither them, nor
/// the option arrays, nor each other (checked by address range: `FA_ERR_BAD_STRIDE`).
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a tensor, its data, `lse` when `lse_len >
/// 0`, or an option array is NULL where values are needed), `FA_ERR_BAD_SHAPE` (extents
/// disagree: `out` or `grad_out` not `[B, Hq, Lq, Dv]`, a gradient not shaped like its
/// input, Hq not a multiple of Hkv, `lse_len` not `B*Hq*Lq`; sizes overflow),
/// `FA_ERR_BAD_STRIDE` (a negative stride, a zero stride over an extent above 1, a
/// gradient aliasing itself or overlapping another argument), `FA_ERR_INVALID_ARGUMENT` (a
/// gradient that is not f32, a `dtype` that is not an `fa_dtype`, a misaligned pointer,
/// and the option errors of `fa_sdpa`), `FA_ERR_UNSUPPORTED_VARIANT`. Nothing is written
/// unless every check passes.
///
/// # Safety
/// Each non-NULL tensor pointer points to an `fa_tensor` whose `data` is valid (readable;
/// writable for the gradients) for the elements of its `dtype` that its extents and
/// strides reach; `lse` holds `lse_len` readable floats; `opts` is NULL or valid as for
/// `fa_sdpa` (its `weights` and `lse` are not accessed); no other thread writes the inputs
/// or accesses the gradients during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn fa_sdpa_backward(
    q: *const fa_tensor,
    k: *const fa_tensor,
    v: *const fa_tensor,
    out: *const fa_tensor,
    grad_out: *const fa_tensor,
    lse: *const f32,
    lse_len: usize,
    grad_q: *mut fa_tensor,
    grad_k: *mut fa_tensor,
    grad_v: *mut fa_tensor,
    opts: *const fa_sdpa_options,
) -> c_int {
    ffi_guard!("fa_sdpa_backward", {
        // SAFETY: NULL or a readable fa_sdpa_options (caller contract).
        let o = unsafe { read_options(opts) }?;
        refuse_scales(&o, "fa_sdpa_backward")?;
        // SAFETY: (all `View::new` calls) each pointer is NULL or points to an fa_tensor.
        let (qv, kv, vv, ov, gov) = unsafe {
            (
                View::new(q, "q", false)?,
                View::new(k, "k", false)?,
                View::new(v, "v", false)?,
                View::new(out, "out", false)?,
                View::new(grad_out, "grad_out", false)?,
            )
        };
        // SAFETY: as above.
        let (gq, gk, gv) = unsafe {
            (
                View::new(grad_q, "grad_q", false)?,
                View::new(grad_k, "grad_k", false)?,
                View::new(grad_v, "grad_v", false)?,
            )
        };
        for (g, what) in [(&gq, "grad_q"), (&gk, "grad_k"), (&gv, "grad_v")] {
            g.require_f32(what, "a gradient")?;
        }
        let rows = lse_rows(qv.dims)?;
        if lse_len != rows {
            return Err(FfiError::new(
                fa_status::FA_ERR_BAD_SHAPE,
                format!(
                    "lse_len is {lse_len}; the log-sum-exp of Q {:?} holds B*Hq*Lq = {rows} values",
                    qv.dims
                ),
            ));
        }
        // SAFETY: `lse_len` readable floats that nothing writes (caller contract; the
        // gradients, the only mutable slices, are checked against its span below).
        let (lse_s, lse_span) = unsafe { input_slice(lse, lse_len, "lse") }?;
        let [b, hq, _, _] = qv.dims;
        let mut lens = Vec::new();
        // SAFETY: the option arrays are valid (caller contract); the gradients, the only
        // mutable slices, are checked against their spans below before they are made.
        let (options, option_spans) = unsafe { attn_options(&o, b, hq, &mut lens) }?;

        // Gradients must not overlap any other argument (slices of them would alias).
        let mut inputs = vec![
            ("q", qv.span),
            ("k", kv.span),
            ("v", vv.span),
            ("out", ov.span),
            ("grad_out", gov.span),
            ("lse", lse_span),
        ];
        inputs.extend(option_spans);
        let outputs = [
            ("grad_q", gq.span),
            ("grad_k", gk.span),
            ("grad_v", gv.span),
        ];
        check_outputs_disjoint(&outputs, &inputs)?;

        // SAFETY: (the five inputs and the three gradients) the caller guarantees every
        // view's elements are valid; the gradients are f32 (checked) and overlap neither
        // the inputs nor each other (checked above).
        let (qt, kt, vt, ot, got) = unsafe {
            (
                qv.as_dyn()?,
                kv.as_dyn()?,
                vv.as_dyn()?,
                ov.as_dyn()?,
                gov.as_dyn()?,
            )
        };
        // SAFETY: as above.
        let grads = unsafe {
            SdpaGrads::new(
                gq.typed_mut::<f32>()?,
                gk.typed_mut::<f32>()?,
                gv.typed_mut::<f32>()?,
            )
        };
        attention::sdpa_backward_into_dyn(qt, kt, vt, ot, got, lse_s, grads, &options)?;
        Ok(OK)
    })
}
