//! `fa_paged_kv_write`: new key/value rows scattered into paged caches
//! (`attention::paged_kv_write`, vLLM's `reshape_and_cache`).

use crate::dtype::with_element;
use crate::raw::{check_outputs_disjoint, Span};
use crate::sdpa::{fa_tensor, input_slice, View};
use crate::status::{fa_status, ffi_guard, FfiError, OK};
use std::ffi::c_int;

/// Writes the key and value rows of T new tokens into paged caches, converted to the
/// caches' element type (exact, or rounded to nearest, ties to even).
///
/// - `k`, `v`: the new rows `[T, Hkv, D]` / `[T, Hkv, Dv]` as `[1, Hkv, T, D]` views
///   (strides `{T*Hkv*D, D, Hkv*D, 1}` for a packed buffer; any strides), of one type
///   (f32, f16 or bf16).
/// - `k_cache`, `v_cache`: `[num_blocks, block_size, Hkv, D]` / `[.., Dv]` views, the same
///   `num_blocks` and `block_size`, of one type (any of the three; it may differ from the
///   rows'). They are the caches `fa_sdpa_varlen` reads through a block table.
/// - `slot_mapping`: T `int64_t` slots (`k->dims[2]` values), `block * block_size +
///   offset` for token `t`; -1 skips the token (padding). Two tokens with one slot: the
///   later one wins.
///
/// Only the slots named are written. The caches must overlap neither each other nor an
/// input (checked by address range, so K and V interleaved in one buffer are refused).
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a tensor, its data, or `slot_mapping` when
/// T > 0 is NULL), `FA_ERR_BAD_SHAPE` (rows not `[1, ..]`, token, head or head-dim counts
/// that disagree, caches of different pages), `FA_ERR_BAD_STRIDE` (a negative stride, a
/// zero stride over an extent above 1, a cache aliasing itself or overlapping another
/// argument), `FA_ERR_INVALID_ARGUMENT` (a `dtype` that is not an `fa_dtype`, `k` and `v`
/// or the two caches of different types, a slot below -1 or at or past `num_blocks *
/// block_size`, a misaligned pointer), `FA_ERR_UNSUPPORTED_VARIANT`. Nothing is written
/// unless every check passes.
///
/// # Safety
/// Each tensor pointer points to an `fa_tensor` whose `data` is valid (writable for the
/// caches) for the elements its extents and strides reach; `slot_mapping` holds
/// `k->dims[2]` readable values; no other thread writes the inputs or accesses the caches
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_paged_kv_write(
    k: *const fa_tensor,
    v: *const fa_tensor,
    k_cache: *mut fa_tensor,
    v_cache: *mut fa_tensor,
    slot_mapping: *const i64,
) -> c_int {
    ffi_guard!("fa_paged_kv_write", {
        // SAFETY: (all `View::new` calls) each pointer is NULL or points to an fa_tensor.
        let (kv, vv, kc, vc) = unsafe {
            (
                View::new(k, "k", false)?,
                View::new(v, "v", false)?,
                View::new(k_cache, "k_cache", false)?,
                View::new(v_cache, "v_cache", false)?,
            )
        };
        for (a, b, what) in [(&kv, &vv, "k and v"), (&kc, &vc, "k_cache and v_cache")] {
            if a.dtype != b.dtype {
                return Err(FfiError::new(
                    fa_status::FA_ERR_INVALID_ARGUMENT,
                    format!(
                        "{what} must have one type, got {} and {}",
                        a.dtype.describe(),
                        b.dtype.describe()
                    ),
                ));
            }
        }
        let tokens = kv.dims[2];
        // SAFETY: `k->dims[2]` readable values (caller contract).
        let (slots, slots_span) = unsafe { input_slice(slot_mapping, tokens, "slot_mapping") }?;
        let inputs: [(&str, Span); 3] =
            [("k", kv.span), ("v", vv.span), ("slot_mapping", slots_span)];
        check_outputs_disjoint(&[("k_cache", kc.span), ("v_cache", vc.span)], &inputs)?;
        with_element!(kv.dtype, S => with_element!(kc.dtype, T => {
            // SAFETY: `S` and `T` are the views' element types (the matches, and k/v and
            // the caches share theirs: checked); the caller guarantees their elements;
            // the caches overlap neither the inputs nor each other (checked above).
            let (kt, vt, kct, vct) = unsafe {
                (kv.typed::<S>()?, vv.typed::<S>()?, kc.typed_mut::<T>()?, vc.typed_mut::<T>()?)
            };
            attention::paged_kv_write(kt, vt, kct, vct, slots)?;
            Ok(OK)
        }))
    })
}
