//! `fa_sdpa`: scaled dot-product attention over strided `[B, H, L, D]` tensors.

use crate::pool;
use crate::raw::{
    check_disjoint, check_ptr, init_versioned, read_versioned, span_of, strided_span, Span,
    Versioned,
};
use crate::status::{fa_status, ffi_guard, Boundary, FfiError, FfiResult, OK};
use attention::{Mask, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
use std::ffi::c_int;
use std::mem::size_of;
use std::ptr::NonNull;

/// A four-dimensional strided view `[B, H, L, D]` of `float`s in caller memory.
///
/// When no extent is 0, `data` must be valid for `1 + sum_i (dims[i] - 1)*strides[i]` floats
/// (the element with the largest offset, plus one); when an extent is 0 the view is empty
/// and `data` may be NULL. The `[B, L, H, D]` layout of most model code is the strides
/// `{L*H*D, D, H*D, 1}`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_tensor {
    /// Element `[0, 0, 0, 0]`.
    pub data: *mut f32,
    /// Extents: B, H, L, D.
    pub dims: [usize; 4],
    /// In elements; must be >= 0; 0 broadcasts (masks only: other tensors refuse a zero
    /// stride on an extent above 1).
    pub strides: [isize; 4],
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
/// Query head `h` reads key/value head `h / (Hq / Hkv)` (GQA/MQA).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_sdpa_options {
    /// `sizeof(fa_sdpa_options)` as the caller was compiled; set by `fa_sdpa_options_init`.
    pub struct_size: usize,
    /// 0 means 1/sqrt(D).
    pub scale: f32,
    /// 0 or 1, bottom-right aligned.
    pub causal: i32,
    /// NULL, or an additive mask [B|1, H|1, Lq, Lk].
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
    /// NULL, or an output [B, Hq, Lq, Lk].
    pub weights: *mut fa_tensor,
    /// NULL, or an output [B, Hq, Lq], contiguous.
    pub lse: *mut f32,
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
};

impl Boundary for fa_sdpa_options {
    fn failed(_: fa_status) -> Self {
        DEFAULT_OPTIONS
    }
}

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_sdpa_options {
    const DEFAULT: Self = DEFAULT_OPTIONS;
    // The layout of ABI version 2, the first with `struct_size`.
    const MIN_SIZE: usize = size_of::<fa_sdpa_options>();
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
/// outputs) and sets `opts->struct_size = size`. Pass `sizeof *opts`.
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

/// A checked `fa_tensor`: the exact element range it spans, as `usize` strides.
struct View {
    ptr: *mut f32,
    len: usize,
    span: Span,
    dims: [usize; 4],
    strides: [usize; 4],
}

impl View {
    /// Checks the `fa_tensor` at `t` (named `what` in messages).
    ///
    /// # Safety
    /// `t` is NULL or points to a readable `fa_tensor`.
    unsafe fn new(t: *const fa_tensor, what: &str, broadcast: bool) -> FfiResult<View> {
        check_ptr(t, what)?;
        // SAFETY: non-NULL and aligned (checked), readable (caller).
        let t = unsafe { *t };
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
                ptr: NonNull::dangling().as_ptr(),
                len: 0,
                span: Span::default(),
                dims: t.dims,
                strides,
            });
        }
        check_ptr(t.data, &format!("{what}->data"))?;
        let span = strided_span(t.data, &t.dims, &t.strides, what)?;
        Ok(View {
            ptr: t.data,
            len: (span.end - span.start) / size_of::<f32>(),
            span,
            dims: t.dims,
            strides,
        })
    }

    /// # Safety
    /// The caller of `fa_sdpa` guarantees `len` readable floats at `ptr` (or `len == 0`),
    /// and no output overlaps them (checked).
    unsafe fn as_ref<'a>(&self) -> FfiResult<TensorRef<'a>> {
        // SAFETY: see above; `ptr` is non-NULL and aligned, `len*4 <= isize::MAX`.
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const f32, self.len) };
        Ok(TensorRef::new(data, self.dims, self.strides)?)
    }

    /// # Safety
    /// As [`View::as_ref`], and the floats are writable and overlap no other argument.
    unsafe fn as_mut<'a>(&self) -> FfiResult<TensorMut<'a>> {
        // SAFETY: see above.
        let data = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
        Ok(TensorMut::new(data, self.dims, self.strides)?)
    }
}

/// `n` values of `T` at `p` as a slice (`p` may be NULL when `n == 0`), with their span.
///
/// # Safety
/// When `n > 0`, `p` points to `n` readable values that nothing writes during the call.
unsafe fn input_slice<'a, T>(p: *const T, n: usize, what: &str) -> FfiResult<(&'a [T], Span)> {
    if n == 0 {
        return Ok((&[], Span::default()));
    }
    check_ptr(p, what)?;
    let span = span_of(p, n, what)?;
    // SAFETY: non-NULL, aligned, `n` readable values (caller), size fits in isize (span_of).
    Ok((unsafe { std::slice::from_raw_parts(p, n) }, span))
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
/// `o.mask`, `o.kv_lengths` and `o.alibi_slopes` are NULL or valid as documented on
/// `fa_sdpa_options` (a mask tensor, B lengths, Hq slopes), and nothing writes them during
/// the call. No mutable slice overlapping the returned spans may be made while the
/// options live.
pub(crate) unsafe fn attn_options<'a>(
    o: &fa_sdpa_options,
    b: usize,
    hq: usize,
    lens: &'a mut Vec<usize>,
) -> FfiResult<(SdpaOptions<'a>, [(&'static str, Span); 3])> {
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
        // SAFETY: as above; no mutable slice overlaps it (caller contract).
        (Some(Mask::Additive(unsafe { m.as_ref() }?)), m.span)
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
    let options = SdpaOptions::default()
        .with_scale((o.scale != 0.0).then_some(o.scale))
        .with_causal(causal)
        .with_mask(mask)
        .with_kv_lengths(kv_span.map(|_| lens))
        .with_window_left(window(o.window_left, "opts->window_left")?)
        .with_window_right(window(o.window_right, "opts->window_right")?)
        .with_alibi_slopes(alibi)
        .with_softcap((o.softcap != 0.0).then_some(o.softcap));
    let spans = [
        ("opts->mask", mask_span),
        ("opts->kv_lengths", kv_span.unwrap_or_default()),
        ("opts->alibi_slopes", alibi_span),
    ];
    Ok((options, spans))
}

/// Scaled dot-product attention `out = softmax(scale*Q*K^T + mask)*V` per batch and head.
///
/// Q is `[B, Hq, Lq, D]`, K `[B, Hkv, Lk, D]`, V `[B, Hkv, Lk, Dv]`, out `[B, Hq, Lq, Dv]`,
/// each in any layout its strides describe (`Hq` a multiple of `Hkv`). `opts` may be NULL
/// for the defaults (`fa_sdpa_options_init`); see `fa_sdpa_options` for the semantics. Q, K and V may
/// share memory; the outputs (`out`, `opts->weights`, `opts->lse`) must overlap neither the
/// inputs nor each other (checked by address range: `FA_ERR_BAD_STRIDE`).
///
/// Returns `FA_OK`, or `FA_ERR_NULL_POINTER` (a tensor, its data, or an option array is
/// NULL where values are needed), `FA_ERR_BAD_SHAPE` (extents disagree, Hq is not a
/// multiple of Hkv, sizes overflow), `FA_ERR_BAD_STRIDE` (a negative stride, a zero stride
/// outside a mask, an output aliasing itself or overlapping another argument),
/// `FA_ERR_INVALID_ARGUMENT` (`opts->struct_size` not set by `fa_sdpa_options_init` or
/// from a newer header, a non-finite scale, a causal flag other than 0/1, a window
/// below -1, a key length outside 0..=Lk, a non-positive or non-finite softcap, non-finite
/// slopes, a misaligned pointer), `FA_ERR_UNSUPPORTED_VARIANT`. Nothing is written unless
/// every check passes.
///
/// # Safety
/// Each non-NULL tensor pointer points to an `fa_tensor` whose `data` is valid (readable;
/// writable for `out` and `weights`) for the elements its extents and strides reach;
/// `kv_lengths` holds B values, `alibi_slopes` Hq values, `lse` B*Hq*Lq writable floats;
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
                View::new(k, "k", false)?,
                View::new(v, "v", false)?,
                View::new(out, "out", false)?,
            )
        };
        let weights = match o.weights.is_null() {
            true => None,
            // SAFETY: as above.
            false => Some(unsafe { View::new(o.weights, "opts->weights", false) }?),
        };
        let [b, hq, lq, _] = qv.dims;
        let (lse, lse_span) = if o.lse.is_null() {
            (None, Span::default())
        } else {
            let n = b
                .checked_mul(hq)
                .and_then(|x| x.checked_mul(lq))
                .ok_or_else(|| FfiError::new(fa_status::FA_ERR_BAD_SHAPE, "B*Hq*Lq overflows"))?;
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
        let mut inputs = vec![("q", qv.span), ("k", kv.span), ("v", vv.span)];
        inputs.extend(option_spans);
        let outputs = [
            ("out", ov.span),
            (
                "opts->weights",
                weights.as_ref().map_or(Span::default(), |w| w.span),
            ),
            ("opts->lse", lse_span),
        ];
        for (i, &o) in outputs.iter().enumerate() {
            let mut others = inputs.clone();
            others.extend(outputs.iter().take(i).copied());
            check_disjoint(o, &others)?;
        }

        // SAFETY: (the four views here, and the weights and lse below) the caller
        // guarantees every view's elements are valid; the outputs overlap neither the
        // inputs nor each other (checked above).
        let (qt, kt, vt, ot) = unsafe { (qv.as_ref()?, kv.as_ref()?, vv.as_ref()?, ov.as_mut()?) };
        let weights_t = match &weights {
            // SAFETY: as above.
            Some(w) => Some(unsafe { w.as_mut() }?),
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
        pool::run(move || attention::sdpa_into(qt, kt, vt, ot, &options, extras))?;
        Ok(OK)
    })
}
