//! `fa_sdpa_varlen`: variable-length batches (packed queries, packed or paged keys and
//! values) through `attention::sdpa_varlen_into_dyn`, and the sequence description
//! `fa_varlen_seqs` it reads.

use super::{
    attn_options, fa_sdpa_options, fa_tensor, input_slice, invalid, read_options, KvView, View,
};
use crate::raw::{
    check_outputs_disjoint, check_ptr, init_versioned, read_versioned, span_of, Span, Versioned,
};
use crate::status::{fa_status, ffi_guard, Boundary, FfiError, FfiResult, OK};
use attention::{SeqIdx, VarlenSeqs};
use std::ffi::{c_int, c_void};
use std::mem::size_of;

/// Integer types of the offset and count arrays of `fa_varlen_seqs` (its `index_dtype`
/// field, an `int32_t`): PyTorch's and numpy's `int32` and `int64`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum fa_index_dtype {
    /// `int32_t` (4 bytes; the default, FlashAttention-2's type).
    FA_INDEX_I32 = 0,
    /// `int64_t` (8 bytes).
    FA_INDEX_I64 = 1,
}

impl fa_index_dtype {
    fn from_code(code: i32, what: &str) -> FfiResult<fa_index_dtype> {
        match code {
            0 => Ok(fa_index_dtype::FA_INDEX_I32),
            1 => Ok(fa_index_dtype::FA_INDEX_I64),
            c => Err(invalid(format!(
                "{what} is {c}, not an fa_index_dtype: use FA_INDEX_I32 (0) or FA_INDEX_I64 (1)"
            ))),
        }
    }
}

/// The sequences of an `fa_sdpa_varlen` call (FlashAttention-2's `cu_seqlens_q`,
/// `cu_seqlens_k`, `seqused_k` and `block_table`). Initialise with
/// `fa_varlen_seqs_init(&seqs, sizeof seqs)`, then set `batch`, `cu_seqlens_q` and the
/// keys' description. `struct_size` lets later versions add fields, as in
/// `fa_sdpa_options`.
///
/// The three index arrays (`cu_seqlens_q`, `cu_seqlens_k`, `seqused_k`) all have the
/// type `index_dtype` (`int32_t` or `int64_t`, aligned to their size); the block table
/// is always `int32_t`.
///
/// - **Queries**: sequence `s` owns the packed query tokens `cu_seqlens_q[s] ..
///   cu_seqlens_q[s + 1]` (`batch + 1` values: 0, non-decreasing, the last equal to Tq).
/// - **Packed keys** (`block_table` NULL): sequence `s` owns the key tokens
///   `cu_seqlens_k[s] .. cu_seqlens_k[s + 1]` (required; `batch + 1` values: 0,
///   non-decreasing, the last equal to Tk).
/// - **Paged keys** (`block_table` non-NULL): K and V are caches `[num_blocks,
///   block_size, Hkv, D]`, and key `j` of sequence `s` is row `j % block_size` of page
///   `block_table[s*blocks_per_seq + j / block_size]`. The key count of each sequence is
///   `seqused_k[s]`, else `cu_seqlens_k[s + 1] - cu_seqlens_k[s]` (one of the two is
///   required); it must fit in the sequence's `blocks_per_seq` pages. Entries past a
///   sequence's last used page are never read (they may be -1); an entry that is read must
///   be a page of the caches.
/// - `seqused_k` (NULL, or `batch` values): only the first `seqused_k[s]` keys of the
///   sequence are attended (FlashAttention-2's `seqused_k` / `cache_seqlens`); at most
///   what the sequence holds.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_varlen_seqs {
    /// `sizeof(fa_varlen_seqs)` as the caller was compiled; set by `fa_varlen_seqs_init`.
    pub struct_size: usize,
    /// B, the number of sequences (0 is allowed: nothing to do).
    pub batch: usize,
    /// The type of the three index arrays, an `fa_index_dtype`: `FA_INDEX_I32` (0, the
    /// default) or `FA_INDEX_I64` (1).
    pub index_dtype: i32,
    /// `[batch + 1]` query offsets (required).
    pub cu_seqlens_q: *const c_void,
    /// NULL, or `[batch + 1]` key offsets (required for packed K/V).
    pub cu_seqlens_k: *const c_void,
    /// NULL, or `[batch]` valid key counts.
    pub seqused_k: *const c_void,
    /// NULL (packed K/V), or the `[batch, blocks_per_seq]` row-major page indices of a
    /// paged cache.
    pub block_table: *const i32,
    /// Entries per sequence of `block_table` (0 when `block_table` is NULL).
    pub blocks_per_seq: usize,
}

const DEFAULT_SEQS: fa_varlen_seqs = fa_varlen_seqs {
    struct_size: size_of::<fa_varlen_seqs>(),
    batch: 0,
    index_dtype: fa_index_dtype::FA_INDEX_I32 as i32,
    cu_seqlens_q: std::ptr::null(),
    cu_seqlens_k: std::ptr::null(),
    seqused_k: std::ptr::null(),
    block_table: std::ptr::null(),
    blocks_per_seq: 0,
};

impl Boundary for fa_varlen_seqs {
    fn failed(_: fa_status) -> Self {
        DEFAULT_SEQS
    }
}

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_varlen_seqs {
    const DEFAULT: Self = DEFAULT_SEQS;
    // The layout of ABI version 4, the first with this struct.
    const LAYOUTS: &'static [usize] = &[size_of::<fa_varlen_seqs>()];
    const NAME: &'static str = "fa_varlen_seqs";
    const INIT: &'static str = "fa_varlen_seqs_init(&seqs, sizeof seqs)";
}

impl Default for fa_varlen_seqs {
    /// What `fa_varlen_seqs_init` writes (for Rust callers of the C ABI).
    fn default() -> Self {
        DEFAULT_SEQS
    }
}

/// Initialises `*seqs` to the defaults (no sequences, `FA_INDEX_I32`, every array NULL,
/// `blocks_per_seq` 0) and sets `seqs->struct_size = size`. Pass `sizeof *seqs`.
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER`, or `FA_ERR_INVALID_ARGUMENT` (`size` is not a
/// layout this library knows).
///
/// # Safety
/// `seqs` is NULL or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fa_varlen_seqs_init(seqs: *mut fa_varlen_seqs, size: usize) -> c_int {
    ffi_guard!("fa_varlen_seqs_init", {
        // SAFETY: NULL or `size` writable bytes (caller contract).
        unsafe { init_versioned(seqs, size, "seqs") }?;
        Ok(OK)
    })
}

/// `n` index values of type `dt` at `p` (NULL allowed only when `n == 0`), with their span.
///
/// # Safety
/// When `n > 0`, `p` points to `n` readable values of `dt` that nothing writes during the
/// call.
unsafe fn index_slice<'a>(
    p: *const c_void,
    n: usize,
    dt: fa_index_dtype,
    what: &str,
) -> FfiResult<(SeqIdx<'a>, Span)> {
    Ok(match dt {
        fa_index_dtype::FA_INDEX_I32 => {
            // SAFETY: `n` readable int32 values at `p` (caller contract).
            let (s, span) = unsafe { input_slice(p.cast::<i32>(), n, what) }?;
            (SeqIdx::I32(s), span)
        }
        fa_index_dtype::FA_INDEX_I64 => {
            // SAFETY: `n` readable int64 values at `p` (caller contract).
            let (s, span) = unsafe { input_slice(p.cast::<i64>(), n, what) }?;
            (SeqIdx::I64(s), span)
        }
    })
}

/// The checked sequence description of `s`, with the spans of its arrays.
///
/// # Safety
/// The arrays of `s` are NULL or valid as documented on `fa_varlen_seqs`.
unsafe fn read_seqs<'a>(
    s: &fa_varlen_seqs,
) -> FfiResult<(VarlenSeqs<'a>, [(&'static str, Span); 4])> {
    let dt = fa_index_dtype::from_code(s.index_dtype, "seqs->index_dtype")?;
    let offsets = s
        .batch
        .checked_add(1)
        .ok_or_else(|| FfiError::new(fa_status::FA_ERR_BAD_SHAPE, "seqs->batch + 1 overflows"))?;
    if s.cu_seqlens_q.is_null() {
        return Err(FfiError::null("seqs->cu_seqlens_q"));
    }
    // SAFETY: (the three index arrays) batch + 1 or batch readable values of `dt` where
    // not NULL (caller contract).
    let (cu_q, cu_q_span) =
        unsafe { index_slice(s.cu_seqlens_q, offsets, dt, "seqs->cu_seqlens_q") }?;
    let mut seqs = VarlenSeqs::new(cu_q);
    let mut cu_k_span = Span::default();
    if !s.cu_seqlens_k.is_null() {
        // SAFETY: as above.
        let (cu_k, span) =
            unsafe { index_slice(s.cu_seqlens_k, offsets, dt, "seqs->cu_seqlens_k") }?;
        seqs = seqs.with_cu_seqlens_k(cu_k);
        cu_k_span = span;
    }
    let mut used_span = Span::default();
    if !s.seqused_k.is_null() {
        // SAFETY: as above.
        let (used, span) = unsafe { index_slice(s.seqused_k, s.batch, dt, "seqs->seqused_k") }?;
        seqs = seqs.with_seqused_k(used);
        used_span = span;
    }
    let mut table_span = Span::default();
    if s.block_table.is_null() {
        if s.blocks_per_seq != 0 {
            return Err(FfiError::new(
                fa_status::FA_ERR_NULL_POINTER,
                format!(
                    "seqs->block_table is NULL but seqs->blocks_per_seq is {} (set it to 0 for \
                     packed K/V)",
                    s.blocks_per_seq
                ),
            ));
        }
    } else {
        let n = s.batch.checked_mul(s.blocks_per_seq).ok_or_else(|| {
            FfiError::new(
                fa_status::FA_ERR_BAD_SHAPE,
                "seqs->batch * seqs->blocks_per_seq overflows",
            )
        })?;
        let table: &'a [i32] = if n == 0 {
            &[]
        } else {
            // SAFETY: batch*blocks_per_seq readable int32 values (caller contract).
            let (t, span) = unsafe { input_slice(s.block_table, n, "seqs->block_table") }?;
            table_span = span;
            t
        };
        seqs = seqs.with_block_table(table, s.blocks_per_seq);
    }
    let spans = [
        ("seqs->cu_seqlens_q", cu_q_span),
        ("seqs->cu_seqlens_k", cu_k_span),
        ("seqs->seqused_k", used_span),
        ("seqs->block_table", table_span),
    ];
    Ok((seqs, spans))
}

/// Variable-length attention: many sequences of different lengths in one call, each its
/// own attention problem (FlashAttention-2's `flash_attn_varlen_func` and, with a block
/// table, `flash_attn_with_kvcache`).
///
/// - `q`: the packed queries `[Tq, Hq, D]` as the `[1, Hq, Tq, D]` view of that memory
///   (strides `{Tq*Hq*D, D, Hq*D, 1}` for a packed buffer; any strides are accepted).
/// - `k`, `v`: packed keys and values `[Tk, Hkv, D]` / `[Tk, Hkv, Dv]` as `[1, Hkv, Tk, D]`
///   views (`seqs->block_table` NULL), or paged caches `[num_blocks, block_size, Hkv, D]` /
///   `[.., Dv]` (`seqs->block_table` set), read in place. Either may be 8-bit codes
///   (`FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3`, `FA_DTYPE_F8_E5M2`) with their scales in
///   `opts->k_scale` / `opts->v_scale`, as for `fa_sdpa` (a paged cache's scales are
///   `[num_blocks, block_size, Hkv, 1]`, `[1, 1, Hkv, 1]` or `[1, 1, 1, 1]`, e.g. those
///   `fa_paged_kv_write_scaled` wrote).
/// - `out`: `[Tq, Hq, Dv]` as the `[1, Hq, Tq, Dv]` view, any strides.
/// - `seqs`: the sequences (required; see `fa_varlen_seqs`).
/// - `opts` (NULL for the defaults): every option of `fa_sdpa` per sequence (scale,
///   causal, windows, soft-cap, ALiBi, sinks), with the same semantics: causal masking is
///   bottom-right aligned per sequence, so a chunk of new queries sees its cached prefix
///   and itself. `opts->lse`, when set, receives `[Hq, Tq]` floats (contiguous). The
///   per-sequence key counts come from `seqs`, so `opts->mask`, `opts->kv_lengths` and
///   `opts->weights` must be NULL.
///
/// Q, K, V and the output may each be f32, f16 or bf16, as in `fa_sdpa`. Query head `h`
/// reads key/value head `h / (Hq / Hkv)`. A sequence with no queries adds nothing; a query
/// that sees no key gets a zero output. The results do not depend on the thread count.
/// The outputs (`out`, `opts->lse`) must overlap neither an input (tensors, option arrays,
/// the arrays of `seqs`) nor each other.
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a tensor, its data, `seqs`,
/// `seqs->cu_seqlens_q`, or an array needed is NULL), `FA_ERR_BAD_SHAPE` (Q or the output
/// not `[1, ..]`, heads or head dims that disagree, Hq not a multiple of Hkv, paged caches
/// of different pages, sizes that overflow), `FA_ERR_BAD_STRIDE` (as `fa_sdpa`),
/// `FA_ERR_INVALID_ARGUMENT` (`struct_size` not set by its `*_init`, an unknown
/// `index_dtype` or `dtype`, offsets that do not start at 0, decrease, or whose last entry
/// is not the packed length, no `cu_seqlens_k` for packed K/V or no key count for paged
/// ones, a `seqused_k` below 0 or above the keys or pages a sequence holds, a block table
/// entry that is read and is not a page, a mask, key lengths or weights in `opts`, the
/// option errors of `fa_sdpa`, a misaligned pointer), `FA_ERR_UNSUPPORTED_VARIANT`.
/// Nothing is written unless every check passes.
///
/// # Safety
/// Each tensor pointer points to an `fa_tensor` whose `data` is valid (writable for `out`)
/// for the elements its extents and strides reach; `seqs` points to an `fa_varlen_seqs`
/// whose non-NULL arrays hold the values documented there; `opts` is NULL or valid as for
/// `fa_sdpa`, `lse` holding Hq*Tq writable floats; no other thread writes the inputs or
/// accesses the outputs during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_sdpa_varlen(
    q: *const fa_tensor,
    k: *const fa_tensor,
    v: *const fa_tensor,
    out: *mut fa_tensor,
    seqs: *const fa_varlen_seqs,
    opts: *const fa_sdpa_options,
) -> c_int {
    ffi_guard!("fa_sdpa_varlen", {
        // SAFETY: NULL or a readable fa_varlen_seqs (caller contract).
        let s = unsafe { read_versioned(seqs, "seqs") }?;
        // SAFETY: NULL or a readable fa_sdpa_options (caller contract).
        let o = unsafe { read_options(opts) }?;
        for (set, name) in [
            (!o.mask.is_null(), "opts->mask"),
            (!o.kv_lengths.is_null(), "opts->kv_lengths"),
            (!o.weights.is_null(), "opts->weights"),
        ] {
            if set {
                return Err(invalid(format!(
                    "{name} must be NULL: fa_sdpa_varlen takes key counts from seqs \
                     (seqused_k) and has no weights output"
                )));
            }
        }
        // SAFETY: (all `View::new` calls) each pointer is NULL or points to an fa_tensor.
        let (qv, kv, vv, ov) = unsafe {
            (
                View::new(q, "q", false)?,
                KvView::new(k, "k", o.k_scale, "opts->k_scale")?,
                KvView::new(v, "v", o.v_scale, "opts->v_scale")?,
                View::new(out, "out", false)?,
            )
        };
        // SAFETY: the arrays of `s` are valid (caller contract).
        let (varlen, seq_spans) = unsafe { read_seqs(&s) }?;
        let [_, hq, tq, _] = qv.dims;
        let (lse, lse_span) = if o.lse.is_null() {
            (None, Span::default())
        } else {
            let n = hq
                .checked_mul(tq)
                .ok_or_else(|| FfiError::new(fa_status::FA_ERR_BAD_SHAPE, "Hq*Tq overflows"))?;
            if n > 0 {
                check_ptr(o.lse, "opts->lse")?;
            }
            (Some((o.lse, n)), span_of(o.lse, n, "opts->lse")?)
        };
        let mut lens = Vec::new();
        // SAFETY: the option arrays are valid (caller contract); the outputs, the only
        // mutable slices, are checked against their spans below before they are made.
        let (options, option_spans) = unsafe { attn_options(&o, 1, hq, &mut lens) }?;

        let mut inputs = vec![("q", qv.span)];
        inputs.extend(kv.spans("k", "opts->k_scale"));
        inputs.extend(vv.spans("v", "opts->v_scale"));
        inputs.extend(option_spans);
        inputs.extend(seq_spans);
        check_outputs_disjoint(&[("out", ov.span), ("opts->lse", lse_span)], &inputs)?;

        // SAFETY: the caller guarantees every view's elements are valid; the outputs
        // overlap neither the inputs nor each other (checked above).
        let (qt, kt, vt, ot) =
            unsafe { (qv.as_dyn()?, kv.kv_ref()?, vv.kv_ref()?, ov.as_dyn_mut()?) };
        let lse_s = match lse {
            Some((_, 0)) => Some(<&mut [f32]>::default()),
            // SAFETY: `n` writable floats (caller contract), non-NULL and aligned
            // (checked), disjoint from every other argument (checked).
            Some((p, n)) => Some(unsafe { std::slice::from_raw_parts_mut(p, n) }),
            None => None,
        };
        attention::sdpa_varlen_kv_into(qt, kt, vt, ot, &varlen, &options, lse_s)?;
        Ok(OK)
    })
}
