//! `fa_sdpa`: scaled dot-product attention over strided `[B, H, L, D]` tensors of f32, f16
//! or bf16, its backward pass `fa_sdpa_backward` (in `sdpa/backward.rs`) and the
//! variable-length call `fa_sdpa_varlen` (in `sdpa/varlen.rs`), sharing the checked views
//! and the option conversion.

use crate::dtype::{fa_dtype, with_code, with_element};
use crate::raw::{
    check_outputs_disjoint, check_ptr, check_ptr_aligned, init_versioned, read_versioned, span_of,
    strided_span_bytes, Span, Versioned,
};
use crate::status::{fa_status, ffi_guard, Boundary, FfiError, FfiResult, OK};
use attention::{
    DynTensor, DynTensorMut, KvRef, Mask, QuantTensor, SdpaOptions, SdpaOutputs, TensorMut,
    TensorRef,
};
use std::ffi::{c_int, c_void};
use std::mem::size_of;

mod backward;
mod varlen;
pub use backward::fa_sdpa_backward;
pub use varlen::{fa_index_dtype, fa_sdpa_varlen, fa_varlen_seqs, fa_varlen_seqs_init};

/// A four-dimensional strided view `[B, H, L, D]` in caller memory, of `float`s or of a
/// 16-bit type (`dtype`, an `fa_dtype`).
///
/// When no extent is 0, `data` must be valid for `1 + sum_i (dims[i] - 1)*strides[i]`
/// elements of `dtype` (the element with the largest offset, plus one) and aligned to the
/// element size (4 bytes for f32, 2 for f16 and bf16); when an extent is 0 the view is
/// empty and `data` may be NULL. The `[B, L, H, D]` layout of most model code is the
/// strides `{L*H*D, D, H*D, 1}`. A zero-filled `fa_tensor` (then `data`, `dims` and
/// `strides` set) is an f32 view, as before `dtype` existed.
///
/// In `fa_sdpa` Q, K, V and the output may each have any of the three types; masks and the
/// weights output must be f32.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_tensor {
    /// Element `[0, 0, 0, 0]`: `float *` for `FA_DTYPE_F32`, `uint16_t *` (the 16 bits of
    /// each value) for `FA_DTYPE_F16` and `FA_DTYPE_BF16`.
    pub data: *mut c_void,
    /// Extents: B, H, L, D.
    pub dims: [usize; 4],
    /// In elements (not bytes); must be >= 0; 0 broadcasts (masks only: other tensors
    /// refuse a zero stride on an extent above 1).
    pub strides: [isize; 4],
    /// The element type, an `fa_dtype`: `FA_DTYPE_F32` (0, also what a zero-filled struct
    /// holds), `FA_DTYPE_F16` (1) or `FA_DTYPE_BF16` (2); for K and V of `fa_sdpa` /
    /// `fa_sdpa_varlen` and the caches of `fa_paged_kv_write_scaled` also the 8-bit codes
    /// `FA_DTYPE_I8` (3), `FA_DTYPE_F8_E4M3` (4) and `FA_DTYPE_F8_E5M2` (5) (`int8_t` /
    /// `uint8_t` storage). Other values, and 8-bit codes elsewhere, are refused with
    /// `FA_ERR_INVALID_ARGUMENT`.
    pub dtype: i32,
}

impl Default for fa_tensor {
    /// An empty f32 view: NULL data, every extent and stride 0 (for Rust callers of the C
    /// ABI; C zero-fills it: `fa_tensor t = {0};`).
    fn default() -> Self {
        fa_tensor {
            data: std::ptr::null_mut(),
            dims: [0; 4],
            strides: [0; 4],
            dtype: fa_dtype::FA_DTYPE_F32 as i32,
        }
    }
}

/// Options of `fa_sdpa`. Initialise with `fa_sdpa_options_init(&opts, sizeof opts)`, then
/// set what you need. `struct_size` lets later versions add fields without breaking
/// programs built against this header: a field the caller's struct does not have takes its
/// default.
///
/// For batch `b`, query head `h`, query `i` and key `j`, with `n_b` the batch's valid key
/// count (`kv_lengths[b]`, else Lk) and `off = n_b - Lq` (queries aligned to the bottom
/// right of the keys, as in FlashAttention-2): key `j` is visible iff `j < n_b`, and
/// (causal) `j <= i + off`, and (windows) `i + off - window_left <= j <= i + off +
/// window_right`. The score is `scale*q*k`, then `softcap*tanh(s/softcap)`, then
/// `- alibi_slopes[h]*|i + off - j|`, then `+ mask`. A row with no visible key gets zero
/// weights, a zero output and a log-sum-exp of `-INFINITY`, never NaN.
/// Query head `h` reads key/value head `h / (Hq / Hkv)` (GQA/MQA). With `sinks`, the
/// softmax of a row of head `h` is `exp(x_j - m) / (sum_j exp(x_j - m) + exp(sinks[h] -
/// m))`: the sink takes weight but gives no value (a row with no visible key still gets a
/// zero output; its log-sum-exp is the sink).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_sdpa_options {
    /// `sizeof(fa_sdpa_options)` as the caller was compiled; set by `fa_sdpa_options_init`.
    pub struct_size: usize,
    /// 0 means 1/sqrt(D).
    pub scale: f32,
    /// 0 or 1, bottom-right aligned.
    pub causal: i32,
    /// NULL, or an additive mask [B|1, H|1, Lq, Lk] of f32 (`dtype` `FA_DTYPE_F32`).
    pub mask: *const fa_tensor,
    /// NULL, or B valid key lengths.
    pub kv_lengths: *const i64,
    /// -1 means unbounded.
    pub window_left: i64,
    /// -1 means unbounded.
    pub window_right: i64,
    /// 0 means off.
    pub softcap: f32,
    /// NULL, or Hq slopes.
    pub alibi_slopes: *const f32,
    /// NULL, or an output [B, Hq, Lq, Lk] of f32 (`dtype` `FA_DTYPE_F32`).
    pub weights: *mut fa_tensor,
    /// NULL, or an output [B, Hq, Lq], contiguous.
    pub lse: *mut f32,
    /// NULL, or Hq attention-sink logits (gpt-oss's `s_aux`): `sinks[h]` joins the softmax
    /// denominator of every row of query head `h` and contributes no value, so the row's
    /// weights sum to less than 1 and its log-sum-exp includes the sink. `-INFINITY` is no
    /// sink; NaN and `+INFINITY` are refused. Added in ABI 4: a caller built against an
    /// older header (a smaller `struct_size`) gets no sinks.
    pub sinks: *const f32,
    /// NULL for a float K; for an 8-bit K (`FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3`,
    /// `FA_DTYPE_F8_E5M2`) its scales, required: an f32 tensor whose `dims[0..3]` are each
    /// K's extent or 1 (1 broadcasts: its stride is not read) and `dims[3] == 1`. A key's
    /// value is `decode(code) * scale` of its row. For a dense `[B, Hkv, Lk, D]` K: `[B,
    /// Hkv, Lk, 1]` per token and head (int8), `[1, Hkv, 1, 1]` per head, `[1, 1, 1, 1]`
    /// per tensor; for a paged cache `[num_blocks, block_size, Hkv, D]` (`fa_sdpa_varlen`):
    /// `[num_blocks, block_size, Hkv, 1]`, `[1, 1, Hkv, 1]` or `[1, 1, 1, 1]`. Every scale
    /// a call reads must be finite and > 0 (else `FA_ERR_INVALID_ARGUMENT`, nothing
    /// written). Read by `fa_sdpa` and `fa_sdpa_varlen` only; the other calls taking
    /// options refuse it. Added in ABI 6: an older caller's smaller `struct_size` means
    /// NULL.
    pub k_scale: *const fa_tensor,
    /// As `k_scale`, for V.
    pub v_scale: *const fa_tensor,
}

const DEFAULT_OPTIONS: fa_sdpa_options = fa_sdpa_options {
    struct_size: size_of::<fa_sdpa_options>(),
    scale: 0.0,
    causal: 0,
    mask: std::ptr::null(),
    kv_lengths: std::ptr::null(),
    window_left: -1,
    window_right: -1,
    softcap: 0.0,
    alibi_slopes: std::ptr::null(),
    weights: std::ptr::null_mut(),
    lse: std::ptr::null_mut(),
    sinks: std::ptr::null(),
    k_scale: std::ptr::null(),
    v_scale: std::ptr::null(),
};

impl Boundary for fa_sdpa_options {
    fn failed(_: fa_status) -> Self {
        DEFAULT_OPTIONS
    }
}

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_sdpa_options {
    const DEFAULT: Self = DEFAULT_OPTIONS;
    // ABI versions 2 and 3 (the first with `struct_size`: every field up to `lse`), 4
    // and 5 (`sinks` appended), and 6 (`k_scale` and `v_scale` appended).
    const LAYOUTS: &'static [usize] = &[
        std::mem::offset_of!(fa_sdpa_options, sinks),
        std::mem::offset_of!(fa_sdpa_options, k_scale),
        size_of::<fa_sdpa_options>(),
    ];
    const NAME: &'static str = "fa_sdpa_options";
    const INIT: &'static str = "fa_sdpa_options_init(&opts, sizeof opts)";
}

impl Default for fa_sdpa_options {
    /// What `fa_sdpa_options_init` writes (for Rust callers of the C ABI).
    fn default() -> Self {
        DEFAULT_OPTIONS
    }
}

/// Initialises `*opts` to the defaults (scale 1/sqrt(D), not causal, no mask, no key
/// lengths, unbounded windows, no soft-capping, no ALiBi, no weights or log-sum-exp
/// outputs, no sinks, no 8-bit scales) and sets `opts->struct_size = size`. Pass `sizeof *opts`.
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER`, or `FA_ERR_INVALID_ARGUMENT` (`size` is not a
/// layout this library knows).
///
/// # Safety
/// `opts` is NULL or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fa_sdpa_options_init(opts: *mut fa_sdpa_options, size: usize) -> c_int {
    ffi_guard!("fa_sdpa_options_init", {
        // SAFETY: NULL or `size` writable bytes (caller contract).
        unsafe { init_versioned(opts, size, "opts") }?;
        Ok(OK)
    })
}

/// A checked `fa_tensor`: its element type and the exact element range it spans, as
/// `usize` strides (`fa_sdpa` and `fa_sdpa_backward` build their tensors through it).
pub(crate) struct View {
    ptr: *mut c_void,
    pub(crate) dtype: fa_dtype,
    len: usize,
    pub(crate) span: Span,
    pub(crate) dims: [usize; 4],
    pub(crate) strides: [usize; 4],
}

impl View {
    /// Checks the `fa_tensor` at `t` (named `what` in messages): its dtype code, strides
    /// (zero ones only when `broadcast`), data pointer (non-NULL and aligned to the element
    /// size when the view is not empty) and the bytes it spans.
    ///
    /// # Safety
    /// `t` is NULL or points to a readable `fa_tensor`.
    pub(crate) unsafe fn new(t: *const fa_tensor, what: &str, broadcast: bool) -> FfiResult<View> {
        // SAFETY: forwarded.
        unsafe { Self::checked(t, what, broadcast, false) }
    }

    /// As [`View::new`] (no broadcasting), also accepting the 8-bit types: for K and V of
    /// attention and paged caches, whose callers dispatch on [`fa_dtype::quant`].
    ///
    /// # Safety
    /// As [`View::new`].
    pub(crate) unsafe fn new_8bit(t: *const fa_tensor, what: &str) -> FfiResult<View> {
        // SAFETY: forwarded.
        unsafe { Self::checked(t, what, false, true) }
    }

    /// # Safety
    /// As [`View::new`].
    unsafe fn checked(
        t: *const fa_tensor,
        what: &str,
        broadcast: bool,
        eight_bit: bool,
    ) -> FfiResult<View> {
        check_ptr(t, what)?;
        // SAFETY: non-NULL and aligned (checked), readable (caller).
        let t = unsafe { *t };
        let field = format!("{what}->dtype");
        let dtype = match eight_bit {
            true => fa_dtype::from_code_8bit(t.dtype, &field)?,
            false => fa_dtype::from_code(t.dtype, &field)?,
        };
        let mut strides = [0usize; 4];
        for (i, (&s, &d)) in t.strides.iter().zip(&t.dims).enumerate() {
            if s < 0 {
                return Err(FfiError::new(
                    fa_status::FA_ERR_BAD_STRIDE,
                    format!("{what}: stride {i} is {s}; strides must be >= 0"),
                ));
            }
            if s == 0 && d > 1 && !broadcast {
                return Err(FfiError::new(
                    fa_status::FA_ERR_BAD_STRIDE,
                    format!("{what}: stride {i} is 0 over an extent of {d} (only masks broadcast)"),
                ));
            }
            strides[i] = s as usize;
        }
        if t.dims.contains(&0) {
            return Ok(View {
                ptr: std::ptr::null_mut(),
                dtype,
                len: 0,
                span: Span::default(),
                dims: t.dims,
                strides,
            });
        }
        check_ptr_aligned(t.data, dtype.size(), &format!("{what}->data"))?;
        let span = strided_span_bytes(t.data, dtype.size(), &t.dims, &t.strides, what)?;
        Ok(View {
            ptr: t.data,
            dtype,
            len: (span.end - span.start) / dtype.size(),
            span,
            dims: t.dims,
            strides,
        })
    }

    /// Refuses a view that is not f32 (masks, the weights output, gradients): `role` says
    /// what the view is for.
    pub(crate) fn require_f32(&self, what: &str, role: &str) -> FfiResult<()> {
        if self.dtype != fa_dtype::FA_DTYPE_F32 {
            return Err(FfiError::new(
                fa_status::FA_ERR_INVALID_ARGUMENT,
                format!(
                    "{what}->dtype is {}; {role} must be f32 (FA_DTYPE_F32 = 0)",
                    self.dtype.describe()
                ),
            ));
        }
        Ok(())
    }

    /// The view as a typed read-only tensor.
    ///
    /// # Safety
    /// `T` is the view's element type; the caller of `fa_sdpa` guarantees `len` readable
    /// elements at `ptr` (or `len == 0`), and no output overlaps them (checked).
    pub(crate) unsafe fn typed<'a, T: Copy>(&self) -> FfiResult<TensorRef<'a, T>> {
        // SAFETY: forwarded.
        let data = unsafe { self.slice::<T>() };
        Ok(TensorRef::new(data, self.dims, self.strides)?)
    }

    /// The elements the view spans, from element `[0, 0, 0, 0]`, as a slice.
    ///
    /// # Safety
    /// As [`View::typed`].
    pub(crate) unsafe fn slice<'a, T: Copy>(&self) -> &'a [T] {
        debug_assert_eq!(size_of::<T>(), self.dtype.size());
        if self.len == 0 {
            &[]
        } else {
            // SAFETY: see above; `ptr` is non-NULL and aligned for `T` (checked for the
            // element size, which is `T`'s alignment), `len*size <= isize::MAX` (span).
            unsafe { std::slice::from_raw_parts(self.ptr.cast_const().cast::<T>(), self.len) }
        }
    }

    /// The elements the view spans as a mutable slice.
    ///
    /// # Safety
    /// As [`View::typed_mut`].
    pub(crate) unsafe fn slice_mut<'a, T: Copy>(&self) -> &'a mut [T] {
        debug_assert_eq!(size_of::<T>(), self.dtype.size());
        if self.len == 0 {
            &mut []
        } else {
            // SAFETY: see above.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len) }
        }
    }

    /// The view as a typed mutable tensor.
    ///
    /// # Safety
    /// As [`View::typed`], and the elements are writable and overlap no other argument.
    pub(crate) unsafe fn typed_mut<'a, T: Copy>(&self) -> FfiResult<TensorMut<'a, T>> {
        // SAFETY: forwarded.
        let data = unsafe { self.slice_mut::<T>() };
        Ok(TensorMut::new(data, self.dims, self.strides)?)
    }

    /// The view as a tensor of its run-time element type.
    ///
    /// # Safety
    /// As [`View::typed`].
    pub(crate) unsafe fn as_dyn<'a>(&self) -> FfiResult<DynTensor<'a>> {
        // SAFETY: `T` is the view's element type (the match); the rest is the caller's.
        with_element!(self.dtype, T => Ok(unsafe { self.typed::<T>() }?.into()))
    }

    /// The view as a mutable tensor of its run-time element type.
    ///
    /// # Safety
    /// As [`View::typed_mut`].
    pub(crate) unsafe fn as_dyn_mut<'a>(&self) -> FfiResult<DynTensorMut<'a>> {
        // SAFETY: `T` is the view's element type (the match); the rest is the caller's.
        with_element!(self.dtype, T => Ok(unsafe { self.typed_mut::<T>() }?.into()))
    }
}

/// A checked K or V: its view (f32, f16, bf16 or 8-bit) and, for 8-bit codes, the view of
/// its scales (`fa_sdpa_options.k_scale` / `v_scale`).
pub(crate) struct KvView {
    pub(crate) view: View,
    scale: Option<View>,
}

impl KvView {
    /// Checks the K or V tensor at `t` (named `what`) and its scale tensor at `scale`
    /// (named `scale_what`): scales are required for 8-bit codes and refused for floats;
    /// they are f32 with each of `dims[0..3]` the codes' extent or 1, and `dims[3] == 1`.
    ///
    /// # Safety
    /// `t` and `scale` are NULL or point to readable `fa_tensor`s.
    pub(crate) unsafe fn new(
        t: *const fa_tensor,
        what: &str,
        scale: *const fa_tensor,
        scale_what: &str,
    ) -> FfiResult<KvView> {
        // SAFETY: NULL or an fa_tensor (caller contract).
        let view = unsafe { View::new_8bit(t, what) }?;
        let scale = match (view.dtype.quant(), scale.is_null()) {
            (None, true) => None,
            (None, false) => {
                return Err(invalid(format!(
                    "{scale_what} is set but {what} is {}: scales are for 8-bit codes only \
                     (set {scale_what} to NULL)",
                    view.dtype.describe()
                )))
            }
            (Some(_), true) => {
                return Err(invalid(format!(
                    "{what} is {}, 8-bit: its scales ({scale_what}) are required",
                    view.dtype.describe()
                )))
            }
            (Some(_), false) => {
                // SAFETY: non-NULL, an fa_tensor (caller contract).
                let sv = unsafe { View::new(scale, scale_what, false) }?;
                sv.require_f32(scale_what, "8-bit scales")?;
                let fits = sv.dims[3] == 1
                    && (0..3).all(|i| sv.dims[i] == view.dims[i] || sv.dims[i] == 1);
                if !fits {
                    let [a, b, c, _] = view.dims;
                    return Err(invalid(format!(
                        "{scale_what} is {:?}; scales for {what} {:?} are [{a}|1, {b}|1, \
                         {c}|1, 1]",
                        sv.dims, view.dims
                    )));
                }
                Some(sv)
            }
        };
        Ok(KvView { view, scale })
    }

    /// The spans of the codes and the scales (inputs of the call).
    pub(crate) fn spans(
        &self,
        what: &'static str,
        scale_what: &'static str,
    ) -> [(&'static str, Span); 2] {
        [
            (what, self.view.span),
            (
                scale_what,
                self.scale.as_ref().map_or(Span::default(), |s| s.span),
            ),
        ]
    }

    /// K or V as attention reads it: a float tensor, or codes with their scales (a scale
    /// dimension of 1 is read at stride 0).
    ///
    /// # Safety
    /// As [`View::typed`], for the codes and the scales.
    pub(crate) unsafe fn kv_ref<'a>(&self) -> FfiResult<KvRef<'a>> {
        let (Some(q), Some(s)) = (self.view.dtype.quant(), self.scale.as_ref()) else {
            // SAFETY: forwarded.
            return Ok(unsafe { self.view.as_dyn() }?.into());
        };
        let strides = [0, 1, 2].map(|i| if s.dims[i] == 1 { 0 } else { s.strides[i] });
        with_code!(q, C => {
            // SAFETY: `C` is the codes' type (the match), the scales are f32 (checked);
            // forwarded caller contract.
            let (codes, scales) = unsafe { (self.view.typed::<C>()?, s.slice::<f32>()) };
            Ok(QuantTensor::new(codes, scales, strides)?.into())
        })
    }
}

/// Refuses 8-bit scales in the options of a call that does not read them (`op`).
pub(crate) fn refuse_scales(o: &fa_sdpa_options, op: &str) -> FfiResult<()> {
    if !o.k_scale.is_null() || !o.v_scale.is_null() {
        return Err(invalid(format!(
            "opts->k_scale and opts->v_scale must be NULL: {op} does not take 8-bit keys or \
             values (use fa_sdpa or fa_sdpa_varlen)"
        )));
    }
    Ok(())
}

/// `n` values of `T` at `p` as a slice (`p` may be NULL when `n == 0`), with their span.
///
/// # Safety
/// When `n > 0`, `p` points to `n` readable values that nothing writes during the call.
pub(crate) unsafe fn input_slice<'a, T>(
    p: *const T,
    n: usize,
    what: &str,
) -> FfiResult<(&'a [T], Span)> {
    if n == 0 {
        return Ok((&[], Span::default()));
    }
    check_ptr(p, what)?;
    let span = span_of(p, n, what)?;
    // SAFETY: non-NULL, aligned, `n` readable values (caller), size fits in isize (span_of).
    Ok((unsafe { std::slice::from_raw_parts(p, n) }, span))
}

/// `B*Hq*Lq` for a Q of extents `q_dims`: the number of log-sum-exp values.
fn lse_rows(q_dims: [usize; 4]) -> FfiResult<usize> {
    let [b, hq, lq, _] = q_dims;
    b.checked_mul(hq)
        .and_then(|x| x.checked_mul(lq))
        .ok_or_else(|| FfiError::new(fa_status::FA_ERR_BAD_SHAPE, "B*Hq*Lq overflows"))
}

fn invalid(message: String) -> FfiError {
    FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, message)
}

fn window(v: i64, what: &str) -> FfiResult<Option<usize>> {
    match v {
        -1 => Ok(None),
        v if v < 0 => Err(invalid(format!(
            "{what} is {v}; use -1 (unbounded) or >= 0"
        ))),
        v => usize::try_from(v)
            .map(Some)
            .map_err(|_| invalid(format!("{what} = {v} does not fit in size_t"))),
    }
}

/// The options at `opts` (NULL: the defaults).
///
/// # Safety
/// `opts` is NULL or points to a readable `fa_sdpa_options`.
pub(crate) unsafe fn read_options(opts: *const fa_sdpa_options) -> FfiResult<fa_sdpa_options> {
    if opts.is_null() {
        return Ok(DEFAULT_OPTIONS);
    }
    // SAFETY: readable for its `struct_size` bytes per the caller's contract.
    unsafe { read_versioned(opts, "opts") }
}

/// The attention options of `o` (everything but the `weights` and `lse` outputs) for a
/// call with batch `b` and `hq` query heads, checked, with the spans of the arrays they
/// read (for the overlap checks against outputs). `lens` stores the converted key lengths.
///
/// # Safety
/// `o.mask`, `o.kv_lengths`, `o.alibi_slopes` and `o.sinks` are NULL or valid as
/// documented on `fa_sdpa_options` (a mask tensor, B lengths, Hq slopes, Hq sinks), and
/// nothing writes them during the call. No mutable slice overlapping the returned spans may be made while the
/// options live.
pub(crate) unsafe fn attn_options<'a>(
    o: &fa_sdpa_options,
    b: usize,
    hq: usize,
    lens: &'a mut Vec<usize>,
) -> FfiResult<(SdpaOptions<'a>, [(&'static str, Span); 4])> {
    let causal = match o.causal {
        0 => false,
        1 => true,
        c => return Err(invalid(format!("opts->causal is {c}; use 0 or 1"))),
    };
    let (mask, mask_span) = if o.mask.is_null() {
        (None, Span::default())
    } else {
        // SAFETY: a readable fa_tensor whose elements are readable (caller contract).
        let m = unsafe { View::new(o.mask, "opts->mask", true) }?;
        m.require_f32("opts->mask", "an additive mask")?;
        // SAFETY: f32 (checked) elements readable as above; no mutable slice overlaps them
        // (caller contract).
        (Some(Mask::Additive(unsafe { m.typed::<f32>() }?)), m.span)
    };
    let kv_span =
        if o.kv_lengths.is_null() {
            None
        } else {
            // SAFETY: B readable values (caller contract).
            let (raw, span) = unsafe { input_slice(o.kv_lengths, b, "opts->kv_lengths") }?;
            lens.clear();
            for &n in raw {
                lens.push(usize::try_from(n).map_err(|_| {
                    invalid(format!("opts->kv_lengths holds {n}; lengths are >= 0"))
                })?);
            }
            Some(span)
        };
    let lens: &'a [usize] = lens;
    let (alibi, alibi_span) = if o.alibi_slopes.is_null() {
        (None, Span::default())
    } else {
        // SAFETY: Hq readable values (caller contract).
        let (s, span) = unsafe { input_slice(o.alibi_slopes, hq, "opts->alibi_slopes") }?;
        (Some(s), span)
    };
    let (sinks, sinks_span) = if o.sinks.is_null() {
        (None, Span::default())
    } else {
        // SAFETY: Hq readable values (caller contract).
        let (s, span) = unsafe { input_slice(o.sinks, hq, "opts->sinks") }?;
        (Some(s), span)
    };
    let options = SdpaOptions::default()
        .with_scale((o.scale != 0.0).then_some(o.scale))
        .with_causal(causal)
        .with_mask(mask)
        .with_kv_lengths(kv_span.map(|_| lens))
        .with_window_left(window(o.window_left, "opts->window_left")?)
        .with_window_right(window(o.window_right, "opts->window_right")?)
        .with_alibi_slopes(alibi)
        .with_softcap((o.softcap != 0.0).then_some(o.softcap))
        .with_sinks(sinks);
    let spans = [
        ("opts->mask", mask_span),
        ("opts->kv_lengths", kv_span.unwrap_or_default()),
        ("opts->alibi_slopes", alibi_span),
        ("opts->sinks", sinks_span),
    ];
    Ok((options, spans))
}

/// Scaled dot-product attention `out = softmax(scale*Q*K^T + mask)*V` per batch and head.
///
/// Q is `[B, Hq, Lq, D]`, K `[B, Hkv, Lk, D]`, V `[B, Hkv, Lk, Dv]`, out `[B, Hq, Lq, Dv]`,
/// each in any layout its strides describe (`Hq` a multiple of `Hkv`), and each of any
/// element type (`fa_tensor.dtype`: f32, f16 or bf16, independently): 16-bit inputs are
/// widened to f32 as they are read, scores, softmax and sums are computed in f32, and a
/// 16-bit output is rounded once (to nearest, ties to even) when it is stored. The result
/// equals the all-f32 call on the widened inputs, rounded to the output's type. K and V
/// may also be 8-bit codes (`FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3`, `FA_DTYPE_F8_E5M2`, each
/// independently) with their scales in `opts->k_scale` / `opts->v_scale` (see
/// `fa_sdpa_options`): the result equals the call on f32 K/V holding `decode(code) *
/// scale`. The mask,
/// the weights output and the log-sum-exp output are f32. `opts` may be NULL
/// for the defaults (`fa_sdpa_options_init`); see `fa_sdpa_options` for the semantics. Q, K and V may
/// share memory; the outputs (`out`, `opts->weights`, `opts->lse`) must overlap neither the
/// inputs nor each other (checked by address range: `FA_ERR_BAD_STRIDE`).
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a tensor, its data, or an option array is
/// NULL where values are needed), `FA_ERR_BAD_SHAPE` (extents disagree, Hq is not a
/// multiple of Hkv, sizes overflow), `FA_ERR_BAD_STRIDE` (a negative stride, a zero stride
/// outside a mask, an output aliasing itself or overlapping another argument),
/// `FA_ERR_INVALID_ARGUMENT` (`opts->struct_size` not set by `fa_sdpa_options_init` or
/// from a newer header, a `dtype` that is not an `fa_dtype`, a mask or weights output that
/// is not f32, a non-finite scale, a causal flag other than 0/1, a window below -1, a key
/// length outside 0..=Lk, a non-positive or non-finite softcap, non-finite slopes, a NaN
/// or `+INFINITY` sink, a pointer not aligned to its element size, an 8-bit Q, output,
/// mask or weights, an 8-bit K or V without its scale tensor or a scale tensor for a float
/// one, a scale tensor not f32 or of other extents, a scale read that is not finite and >
/// 0), `FA_ERR_UNSUPPORTED_VARIANT`. Nothing is
/// written unless every check passes.
///
/// # Safety
/// Each non-NULL tensor pointer points to an `fa_tensor` whose `data` is valid (readable;
/// writable for `out` and `weights`) for the elements of its `dtype` that its extents and
/// strides reach;
/// `kv_lengths` holds B values, `alibi_slopes` and `sinks` Hq values, `lse` B*Hq*Lq
/// writable floats;
/// no other thread writes the inputs or accesses the outputs during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_sdpa(
    q: *const fa_tensor,
    k: *const fa_tensor,
    v: *const fa_tensor,
    out: *mut fa_tensor,
    opts: *const fa_sdpa_options,
) -> c_int {
    ffi_guard!("fa_sdpa", {
        // SAFETY: NULL or a readable fa_sdpa_options (caller contract).
        let o = unsafe { read_options(opts) }?;
        // SAFETY: (all `View::new` calls) each pointer is NULL or points to an fa_tensor.
        let (qv, kv, vv, ov) = unsafe {
            (
                View::new(q, "q", false)?,
                KvView::new(k, "k", o.k_scale, "opts->k_scale")?,
                KvView::new(v, "v", o.v_scale, "opts->v_scale")?,
                View::new(out, "out", false)?,
            )
        };
        let weights = match o.weights.is_null() {
            true => None,
            // SAFETY: as above.
            false => Some(unsafe { View::new(o.weights, "opts->weights", false) }?),
        };
        if let Some(w) = &weights {
            w.require_f32("opts->weights", "the attention weights output")?;
        }
        let [b, hq, _, _] = qv.dims;
        let (lse, lse_span) = if o.lse.is_null() {
            (None, Span::default())
        } else {
            let n = lse_rows(qv.dims)?;
            if n > 0 {
                check_ptr(o.lse, "opts->lse")?;
            }
            let span = span_of(o.lse, n, "opts->lse")?;
            (Some((o.lse, n)), span)
        };
        let mut lens = Vec::new();
        // SAFETY: the option arrays are valid (caller contract); the outputs, the only
        // mutable slices, are checked against their spans below before they are made.
        let (options, option_spans) = unsafe { attn_options(&o, b, hq, &mut lens) }?;

        // Outputs must not overlap any other argument (slices of them would alias).
        let mut inputs = vec![("q", qv.span)];
        inputs.extend(kv.spans("k", "opts->k_scale"));
        inputs.extend(vv.spans("v", "opts->v_scale"));
        inputs.extend(option_spans);
        let outputs = [
            ("out", ov.span),
            (
                "opts->weights",
                weights.as_ref().map_or(Span::default(), |w| w.span),
            ),
            ("opts->lse", lse_span),
        ];
        check_outputs_disjoint(&outputs, &inputs)?;

        // SAFETY: (the four views here, and the weights and lse below) the caller
        // guarantees every view's elements are valid; the outputs overlap neither the
        // inputs nor each other (checked above).
        let (qt, kt, vt, ot) =
            unsafe { (qv.as_dyn()?, kv.kv_ref()?, vv.kv_ref()?, ov.as_dyn_mut()?) };
        let weights_t = match &weights {
            // SAFETY: as above; the weights are f32 (checked).
            Some(w) => Some(unsafe { w.typed_mut::<f32>() }?),
            None => None,
        };
        let lse_s = match lse {
            Some((_, 0)) => Some(<&mut [f32]>::default()),
            // SAFETY: `n` writable floats (caller contract), non-NULL and aligned
            // (checked), disjoint from every other argument (checked).
            Some((p, n)) => Some(unsafe { std::slice::from_raw_parts_mut(p, n) }),
            None => None,
        };
        let extras = SdpaOutputs::default()
            .with_weights(weights_t)
            .with_lse(lse_s);
        attention::sdpa_kv_into(qt, kt, vt, ot, &options, extras)?;
        Ok(OK)
    })
}
