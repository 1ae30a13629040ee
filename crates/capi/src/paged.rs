//! `fa_paged_kv_write`: new key/value rows scattered into paged caches
//! (`attention::paged_kv_write`, vLLM's `reshape_and_cache`), and
//! `fa_paged_kv_write_scaled`, its 8-bit form (`attention::quant_cache::paged_kv_write_quant`).

use crate::dtype::{with_code, with_element};
use crate::raw::{check_outputs_disjoint, Span};
use crate::sdpa::{fa_tensor, input_slice, View};
use crate::status::{fa_status, ffi_guard, FfiError, FfiResult, OK};
use attention::quant_cache::{paged_kv_write_quant, PagedScales};
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
        same_type(&kv, &vv, "k and v")?;
        same_type(&kc, &vc, "k_cache and v_cache")?;
        // SAFETY: forwarded caller contract.
        unsafe { write_float(&kv, &vv, &kc, &vc, slot_mapping) }
    })
}

/// The float write of [`fa_paged_kv_write`] on checked views of one type each (rows,
/// caches).
///
/// # Safety
/// As [`fa_paged_kv_write`], for the tensors of the views and `slot_mapping`.
unsafe fn write_float(
    kv: &View,
    vv: &View,
    kc: &View,
    vc: &View,
    slot_mapping: *const i64,
) -> FfiResult<c_int> {
    let tokens = kv.dims[2];
    // SAFETY: `k->dims[2]` readable values (caller contract).
    let (slots, slots_span) = unsafe { input_slice(slot_mapping, tokens, "slot_mapping") }?;
    let inputs: [(&str, Span); 3] = [("k", kv.span), ("v", vv.span), ("slot_mapping", slots_span)];
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
}

/// Checks that `a` and `b` (named `what`) have one type.
fn same_type(a: &View, b: &View, what: &str) -> FfiResult<()> {
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
    Ok(())
}

/// How a paged 8-bit cache's scales are given.
enum ScaleKind {
    /// `[num_blocks, block_size, Hkv, 1]`, contiguous: computed and written.
    PerRow,
    /// `[1, 1, 1, 1]` or `[1, 1, Hkv, 1]`: read.
    Fixed,
}

/// Checks the scale tensor `s` (named `what`) of a paged 8-bit cache `[num_blocks,
/// block_size, Hkv, D]` (`cache`) and says which kind it is.
fn scale_kind(s: &View, cache: [usize; 4], what: &str) -> FfiResult<ScaleKind> {
    s.require_f32(what, "8-bit scales")?;
    let [nb, bs, hkv, _] = cache;
    let invalid = |m: String| FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, m);
    let kind = if s.dims == [nb, bs, hkv, 1] && nb * bs > 1 {
        ScaleKind::PerRow
    } else if s.dims == [1, 1, 1, 1] || s.dims == [1, 1, hkv, 1] {
        ScaleKind::Fixed
    } else {
        return Err(invalid(format!(
            "{what} is {:?}; the scales of a cache {cache:?} are [{nb}, {bs}, {hkv}, 1] (one \
             per slot and head, written), [1, 1, {hkv}, 1] or [1, 1, 1, 1] (read)",
            s.dims
        )));
    };
    // The slices handed to the kernels are contiguous in the order of the dimensions.
    let st = s.strides;
    let contiguous = (s.dims[2] <= 1 || st[2] == 1)
        && (s.dims[1] <= 1 || st[1] == s.dims[2])
        && (s.dims[0] <= 1 || st[0] == s.dims[1] * s.dims[2]);
    if !contiguous {
        return Err(FfiError::new(
            fa_status::FA_ERR_BAD_STRIDE,
            format!(
                "{what}: strides {st:?} are not contiguous over {:?}",
                s.dims
            ),
        ));
    }
    Ok(kind)
}

/// [`fa_paged_kv_write`] with 8-bit caches: writes the key and value rows of T new tokens
/// into paged caches of `FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3` or `FA_DTYPE_F8_E5M2` codes,
/// quantising each row with its scale, so that `fa_sdpa_varlen` can read them with
/// `opts->k_scale` / `opts->v_scale` set to the same scale tensors.
///
/// - `k`, `v`, `slot_mapping`: as in `fa_paged_kv_write` (f32, f16 or bf16 rows).
/// - `k_cache`, `v_cache`: `[num_blocks, block_size, Hkv, D]` / `[.., Dv]` views of one
///   8-bit type, or of one float type (then both scales must be NULL and the call is
///   `fa_paged_kv_write`).
/// - `k_scale`, `v_scale` (required for 8-bit caches): f32 tensors, either
///   `[num_blocks, block_size, Hkv, 1]` contiguous, one scale per slot and head, which
///   the call computes (`max |row| / max code`: 127 for int8, 448 for e4m3, 57344 for
///   e5m2) and writes for each slot it writes (int8's layout); or `[1, 1, Hkv, 1]` (per
///   head) / `[1, 1, 1, 1]` (per tensor) scales the call reads (finite and > 0; fp8's
///   layout), dividing each value by its scale before rounding (saturating). A cache of a
///   single slot (`num_blocks * block_size == 1`) reads its scales.
///
/// Only the slots named are written. No cache or written scale tensor may overlap another
/// argument.
///
/// Returns `FA_OK`, or as `fa_paged_kv_write`, and `FA_ERR_INVALID_ARGUMENT` also for an
/// 8-bit cache without its scales, scales given for a float cache, a scale tensor that is
/// not f32 or of other extents than above, read scales that are not finite and > 0, or a
/// NaN or infinite value among the rows written; `FA_ERR_BAD_STRIDE` also for scales that
/// are not contiguous. Nothing is written unless every check passes.
///
/// # Safety
/// As `fa_paged_kv_write`; `k_scale` and `v_scale` are NULL or point to `fa_tensor`s
/// whose `data` is valid (writable for per-slot scales) for the floats their extents and
/// strides reach, which no other thread accesses during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_paged_kv_write_scaled(
    k: *const fa_tensor,
    v: *const fa_tensor,
    k_cache: *mut fa_tensor,
    v_cache: *mut fa_tensor,
    k_scale: *mut fa_tensor,
    v_scale: *mut fa_tensor,
    slot_mapping: *const i64,
) -> c_int {
    ffi_guard!("fa_paged_kv_write_scaled", {
        // SAFETY: (all `View::new*` calls) each pointer is NULL or points to an fa_tensor.
        let (kv, vv, kc, vc) = unsafe {
            (
                View::new(k, "k", false)?,
                View::new(v, "v", false)?,
                View::new_8bit(k_cache, "k_cache")?,
                View::new_8bit(v_cache, "v_cache")?,
            )
        };
        same_type(&kv, &vv, "k and v")?;
        same_type(&kc, &vc, "k_cache and v_cache")?;
        let Some(q) = kc.dtype.quant() else {
            if !k_scale.is_null() || !v_scale.is_null() {
                return Err(FfiError::new(
                    fa_status::FA_ERR_INVALID_ARGUMENT,
                    format!(
                        "k_scale and v_scale must be NULL for caches of {} (scales are for \
                         8-bit caches only)",
                        kc.dtype.describe()
                    ),
                ));
            }
            // SAFETY: forwarded caller contract.
            return unsafe { write_float(&kv, &vv, &kc, &vc, slot_mapping) };
        };
        let mut scales = Vec::with_capacity(2);
        for (p, what, cache) in [(k_scale, "k_scale", &kc), (v_scale, "v_scale", &vc)] {
            if p.is_null() {
                return Err(FfiError::new(
                    fa_status::FA_ERR_INVALID_ARGUMENT,
                    format!(
                        "{what} is NULL; the caches are {}, 8-bit: their scales are required",
                        cache.dtype.describe()
                    ),
                ));
            }
            // SAFETY: as above.
            let s = unsafe { View::new(p, what, false) }?;
            let kind = scale_kind(&s, cache.dims, what)?;
            scales.push((s, kind));
        }
        let tokens = kv.dims[2];
        // SAFETY: `k->dims[2]` readable values (caller contract).
        let (slots, slots_span) = unsafe { input_slice(slot_mapping, tokens, "slot_mapping") }?;
        let mut inputs: Vec<(&str, Span)> =
            vec![("k", kv.span), ("v", vv.span), ("slot_mapping", slots_span)];
        let mut outputs: Vec<(&str, Span)> = vec![("k_cache", kc.span), ("v_cache", vc.span)];
        for ((s, kind), what) in scales.iter().zip(["k_scale", "v_scale"]) {
            match kind {
                ScaleKind::PerRow => outputs.push((what, s.span)),
                ScaleKind::Fixed => inputs.push((what, s.span)),
            }
        }
        check_outputs_disjoint(&outputs, &inputs)?;
        let paged = |(s, kind): &(View, ScaleKind)| -> PagedScales<'_> {
            match kind {
                // SAFETY: f32 scales (checked), valid and writable per the caller,
                // overlapping no other argument (checked above).
                ScaleKind::PerRow => PagedScales::PerRow(unsafe { s.slice_mut::<f32>() }),
                // SAFETY: f32 scales (checked), valid per the caller, overlapping no
                // output (checked above).
                ScaleKind::Fixed => PagedScales::Fixed(unsafe { s.slice::<f32>() }),
            }
        };
        let (ks, vs) = (paged(&scales[0]), paged(&scales[1]));
        with_element!(kv.dtype, S => with_code!(q, C => {
            // SAFETY: `S` and `C` are the views' element types (the matches, and k/v and
            // the caches share theirs: checked); the caller guarantees their elements;
            // the caches overlap neither the inputs nor each other (checked above).
            let (kt, vt, kct, vct) = unsafe {
                (kv.typed::<S>()?, vv.typed::<S>()?, kc.typed_mut::<C>()?, vc.typed_mut::<C>()?)
            };
            paged_kv_write_quant(kt, vt, kct, ks, vct, vs, slots)?;
            Ok(OK)
        }))
    })
}
