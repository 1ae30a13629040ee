//! The multi-head attention layer (`fa_mha`) and its KV cache (`fa_kv_cache`) behind opaque
//! handles.

use crate::dtype::{fa_dtype, with_element};
use crate::raw::{check_disjoint, check_ptr, init_versioned, read_versioned, span_of, Versioned};
use crate::sdpa::{attn_options, fa_sdpa_options, read_options, refuse_scales};
use crate::status::{fa_status, ffi_guard, Boundary, FfiError, FfiResult, OK};
use attention::{
    Element, KvCache, MhaConfig, MhaWeights, MultiHeadAttention, RopeConfig, WeightLayout,
};
use kernels::dtype::DTypeEnum;
use std::ffi::{c_int, c_void};
use std::mem::{offset_of, size_of};

/// A multi-head (GQA/MQA) attention layer with packed projection weights, stored as f32,
/// f16 or bf16 (`fa_mha_config.weight_dtype`). Opaque: made by `fa_mha_new` or
/// `fa_mha_new_random`, released by `fa_mha_free`. One layer may run `fa_mha_forward` on
/// several threads at once.
pub struct fa_mha {
    layer: MultiHeadAttention,
}

/// The key/value cache of one layer for incremental decoding, storing keys and values as
/// f32, f16 or bf16. Opaque: made by `fa_kv_cache_new` (f32) or `fa_kv_cache_new_typed`,
/// released by `fa_kv_cache_free`. Not for concurrent use.
pub struct fa_kv_cache {
    cache: Cache,
}

kernels::dtype_enum! {
    /// The cache of one of the element types (chosen at run time by the C caller).
    enum Cache { KvCache<_> }
}

/// `with_cache!(cache, c => body)`: `body` with `c` bound to the typed `KvCache` inside the
/// `Cache` `cache` (a place: `&` or `&mut` as `body` needs).
macro_rules! with_cache {
    ($cache:expr, $c:ident => $body:expr) => {
        kernels::match_dtype!($cache, Cache($c) => $body)
    };
}

/// Sizes of an `fa_mha` layer. Initialise with `fa_mha_config_init(&cfg, sizeof cfg)`
/// (every size 0, no RoPE), then set the sizes; zero fields take their defaults, so
/// `d_model` and `n_heads` alone give plain multi-head attention.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_mha_config {
    /// `sizeof(fa_mha_config)` as the caller was compiled; set by `fa_mha_config_init`.
    pub struct_size: usize,
    /// Model width: input and output features.
    pub d_model: usize,
    /// Query heads Hq.
    pub n_heads: usize,
    /// Key/value heads Hkv (a divisor of Hq); 0 means Hq.
    pub n_kv_heads: usize,
    /// Head dimension D; 0 means d_model / Hq.
    pub head_dim: usize,
    /// 1: rotary embeddings (RoPE) on Q and K; 0: none.
    pub rope: i32,
    /// RoPE frequency base; 0 means 10000.
    pub rope_base: f32,
    /// The type the projection weights are read as by `fa_mha_new` (the element type of
    /// `wq`, `wk`, `wv` and `wo`) and stored in by the layer, an `fa_dtype`:
    /// `FA_DTYPE_F32` (0, the default), `FA_DTYPE_F16` or `FA_DTYPE_BF16` (half the bytes;
    /// products are still accumulated in f32). `fa_mha_new_random` rounds its random
    /// weights to it. Added in ABI version 3: a caller's older, smaller struct gets f32.
    pub weight_dtype: i32,
}

/// Caller-given projection weights (copied and packed by `fa_mha_new`; the caller keeps
/// ownership). Every projection is `y = x*W + b`. With `layout == 0` the matrices are
/// row-major `[d_in, d_out]`: wq `[d_model, Hq*D]`, wk and wv `[d_model, Hkv*D]`, wo
/// `[Hq*D, d_model]`; with `layout == 1` they are PyTorch's `nn.Linear.weight`
/// `[d_out, d_in]`. Query head h uses columns `h*D .. (h+1)*D` of wq. The four matrices
/// hold elements of the type `fa_mha_config.weight_dtype` names (`float`, or the 16 bits
/// of each f16 or bf16 value as `uint16_t`, aligned to the element size); the biases are
/// always `float`. Initialise with `fa_mha_weights_init(&w, sizeof w)` (every pointer
/// NULL, layout 0), then set them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_mha_weights {
    /// `sizeof(fa_mha_weights)` as the caller was compiled; set by `fa_mha_weights_init`.
    pub struct_size: usize,
    /// Query projection (elements of `fa_mha_config.weight_dtype`).
    pub wq: *const c_void,
    /// Key projection (elements of `fa_mha_config.weight_dtype`).
    pub wk: *const c_void,
    /// Value projection (elements of `fa_mha_config.weight_dtype`).
    pub wv: *const c_void,
    /// Output projection (elements of `fa_mha_config.weight_dtype`).
    pub wo: *const c_void,
    /// NULL, or the query bias `[Hq*D]`.
    pub bq: *const f32,
    /// NULL, or the key bias `[Hkv*D]`.
    pub bk: *const f32,
    /// NULL, or the value bias `[Hkv*D]`.
    pub bv: *const f32,
    /// NULL, or the output bias `[d_model]`.
    pub bo: *const f32,
    /// 0: `[d_in, d_out]`; 1: `[d_out, d_in]` (PyTorch).
    pub layout: i32,
}

const DEFAULT_CONFIG: fa_mha_config = fa_mha_config {
    struct_size: size_of::<fa_mha_config>(),
    d_model: 0,
    n_heads: 0,
    n_kv_heads: 0,
    head_dim: 0,
    rope: 0,
    rope_base: 0.0,
    weight_dtype: fa_dtype::FA_DTYPE_F32 as i32,
};

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_mha_config {
    const DEFAULT: Self = DEFAULT_CONFIG;
    // ABI version 2, the first with `struct_size`: everything before `weight_dtype`
    // (added in version 3), whose size was `sizeof(fa_mha_config)` then; and 3.
    const LAYOUTS: &'static [usize] = &[
        offset_of!(fa_mha_config, weight_dtype),
        size_of::<fa_mha_config>(),
    ];
    const NAME: &'static str = "fa_mha_config";
    const INIT: &'static str = "fa_mha_config_init(&cfg, sizeof cfg)";
}

impl Default for fa_mha_config {
    /// What `fa_mha_config_init` writes (for Rust callers of the C ABI).
    fn default() -> Self {
        DEFAULT_CONFIG
    }
}

const DEFAULT_WEIGHTS: fa_mha_weights = fa_mha_weights {
    struct_size: size_of::<fa_mha_weights>(),
    wq: std::ptr::null(),
    wk: std::ptr::null(),
    wv: std::ptr::null(),
    wo: std::ptr::null(),
    bq: std::ptr::null(),
    bk: std::ptr::null(),
    bv: std::ptr::null(),
    bo: std::ptr::null(),
    layout: 0,
};

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_mha_weights {
    const DEFAULT: Self = DEFAULT_WEIGHTS;
    // The layout of ABI versions 2 and 3 (3 changed the matrices' pointer type only).
    const LAYOUTS: &'static [usize] = &[size_of::<fa_mha_weights>()];
    const NAME: &'static str = "fa_mha_weights";
    const INIT: &'static str = "fa_mha_weights_init(&w, sizeof w)";
}

impl Default for fa_mha_weights {
    /// What `fa_mha_weights_init` writes (for Rust callers of the C ABI).
    fn default() -> Self {
        DEFAULT_WEIGHTS
    }
}

/// Initialises `*cfg`: every size 0 (its default), no RoPE, f32 weights,
/// `cfg->struct_size = size`. Pass `sizeof *cfg`. Returns `FA_OK`, `FA_ERR_NULL_POINTER`, or
/// `FA_ERR_INVALID_ARGUMENT` (`size` is not a layout this library knows).
///
/// # Safety
/// `cfg` is NULL or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_config_init(cfg: *mut fa_mha_config, size: usize) -> c_int {
    ffi_guard!("fa_mha_config_init", {
        // SAFETY: NULL or `size` writable bytes (caller contract).
        unsafe { init_versioned(cfg, size, "config") }?;
        Ok(OK)
    })
}

/// Initialises `*w`: every pointer NULL, layout 0, `w->struct_size = size`. Pass
/// `sizeof *w`. Returns as `fa_mha_config_init`.
///
/// # Safety
/// `w` is NULL or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_weights_init(w: *mut fa_mha_weights, size: usize) -> c_int {
    ffi_guard!("fa_mha_weights_init", {
        // SAFETY: NULL or `size` writable bytes (caller contract).
        unsafe { init_versioned(w, size, "weights") }?;
        Ok(OK)
    })
}

impl Boundary for usize {
    fn failed(_: fa_status) -> Self {
        0
    }
}

fn invalid(message: String) -> FfiError {
    FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, message)
}

fn bad_shape(message: String) -> FfiError {
    FfiError::new(fa_status::FA_ERR_BAD_SHAPE, message)
}

/// The layer configuration of `c`, defaults filled in.
fn mha_config(c: &fa_mha_config) -> FfiResult<MhaConfig> {
    if c.n_heads == 0 {
        return Err(bad_shape("config->n_heads is 0".into()));
    }
    let mut cfg = MhaConfig::new(c.d_model, c.n_heads);
    if c.n_kv_heads != 0 {
        cfg = cfg.with_kv_heads(c.n_kv_heads);
    }
    if c.head_dim != 0 {
        cfg = cfg.with_head_dim(c.head_dim);
    }
    match c.rope {
        0 => {}
        1 => {
            let mut rope = RopeConfig::default();
            if c.rope_base != 0.0 {
                rope.base = c.rope_base;
            }
            cfg = cfg.with_rope(rope);
        }
        r => return Err(invalid(format!("config->rope is {r}; use 0 or 1"))),
    }
    Ok(cfg)
}

/// Refuses (with `FA_ERR_ALLOC`) an allocation of `count` values of `elem_bytes` bytes
/// each that cannot be made, before a constructor that would abort the process on it. A
/// `count` that overflows (`None`) is `FA_ERR_BAD_SHAPE`.
fn probe_alloc(count: Option<usize>, elem_bytes: usize, what: &str) -> FfiResult<()> {
    let n = count.ok_or_else(|| bad_shape(format!("the size of {what} overflows")))?;
    let cannot = |why: String| {
        FfiError::new(
            fa_status::FA_ERR_ALLOC,
            format!("cannot allocate {n} values of {elem_bytes} bytes for {what}: {why}"),
        )
    };
    let bytes = n
        .checked_mul(elem_bytes)
        .ok_or_else(|| cannot("more bytes than the address space has".into()))?;
    Vec::<u8>::new()
        .try_reserve_exact(bytes)
        .map_err(|e| cannot(e.to_string()))
}

/// Values the weights of `cfg` take (unpacked), if that fits in `usize`.
fn weight_floats(cfg: &MhaConfig) -> Option<usize> {
    let (dm, qd) = (cfg.d_model, cfg.n_heads.checked_mul(cfg.head_dim)?);
    let kvd = cfg.n_kv_heads.checked_mul(cfg.head_dim)?;
    let proj = qd.checked_add(kvd.checked_mul(2)?)?.checked_add(qd)?;
    dm.checked_mul(proj)
}

/// Stores `layer` behind a new handle at `out`.
fn publish_layer(layer: MultiHeadAttention, out: *mut *mut fa_mha) -> FfiResult<c_int> {
    let handle = Box::into_raw(Box::new(fa_mha { layer }));
    // SAFETY: `out` was checked non-NULL and aligned by the caller of this function, and
    // is writable (caller contract).
    unsafe { out.write(handle) };
    Ok(OK)
}

/// The layer of `cfg` with the caller's weights `w` read as `W`.
///
/// # Safety
/// Each weight matrix of `w` holds the number of `W` values its shape (see
/// `fa_mha_weights`) gives, and each non-NULL bias as many floats.
unsafe fn layer_from<W: Element>(
    cfg: MhaConfig,
    w: &fa_mha_weights,
    layout: WeightLayout,
) -> FfiResult<MultiHeadAttention> {
    let (dm, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
    let size = |a: usize, b: usize| {
        a.checked_mul(b)
            .ok_or_else(|| bad_shape("a weight's size overflows".into()))
    };
    /// `n` values of `T` at `p` (checked non-NULL and aligned when `n > 0`).
    ///
    /// # Safety
    /// `p` holds `n` readable values when `n > 0`.
    unsafe fn values<'a, T>(p: *const T, n: usize, what: &str) -> FfiResult<&'a [T]> {
        if n == 0 {
            return Ok(&[]);
        }
        check_ptr(p, what)?;
        span_of(p, n, what)?;
        // SAFETY: non-NULL, aligned, `n` readable values (caller contract), size fits.
        Ok(unsafe { std::slice::from_raw_parts(p, n) })
    }
    let matrix = |p: *const c_void, n: usize, what: &str| {
        // SAFETY: `n` values of `W` at `p` (caller contract: the documented lengths).
        unsafe { values(p.cast::<W>(), n, what) }
    };
    let bias = |p: *const f32, n: usize, what: &str| -> FfiResult<Option<&[f32]>> {
        if p.is_null() {
            Ok(None)
        } else {
            // SAFETY: `n` floats at `p` (caller contract: the documented lengths).
            unsafe { values(p, n, what) }.map(Some)
        }
    };
    let mw = MhaWeights {
        wq: matrix(w.wq, size(dm, qd)?, "weights->wq")?,
        wk: matrix(w.wk, size(dm, kvd)?, "weights->wk")?,
        wv: matrix(w.wv, size(dm, kvd)?, "weights->wv")?,
        wo: matrix(w.wo, size(qd, dm)?, "weights->wo")?,
        bq: bias(w.bq, qd, "weights->bq")?,
        bk: bias(w.bk, kvd, "weights->bk")?,
        bv: bias(w.bv, kvd, "weights->bv")?,
        bo: bias(w.bo, dm, "weights->bo")?,
        layout,
    };
    probe_alloc(weight_floats(&cfg), size_of::<W>(), "the packed weights")?;
    Ok(MultiHeadAttention::new(cfg, mw)?)
}

/// Builds a layer from caller-given weights (copied and packed in their own type,
/// `config->weight_dtype`; the arrays may be freed afterwards) and stores its handle at
/// `*out`. RoPE and the projections' kernel variant are fixed at build time
/// (`fa_set_variant` before this call applies).
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER` (config, weights, a weight matrix or out is
/// NULL), `FA_ERR_BAD_SHAPE` (a zero size, Hq not a multiple of Hkv), `FA_ERR_INVALID_ARGUMENT`
/// (rope or layout not 0/1, `weight_dtype` not an `fa_dtype`, a matrix not aligned to its
/// element size, an odd head_dim with RoPE, a bad RoPE base), `FA_ERR_ALLOC`.
/// `*out` is unchanged on failure.
///
/// # Safety
/// `config`, `weights` and `out` point to valid objects; each weight matrix holds the
/// number of elements of `config->weight_dtype` its shape (see `fa_mha_weights`) gives,
/// and each non-NULL bias that many floats.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_new(
    config: *const fa_mha_config,
    weights: *const fa_mha_weights,
    out: *mut *mut fa_mha,
) -> c_int {
    ffi_guard!("fa_mha_new", {
        check_ptr(config, "config")?;
        check_ptr(weights, "weights")?;
        check_ptr(out, "out")?;
        // SAFETY: readable for their `struct_size` bytes (caller contract).
        let (c, w) = unsafe {
            (
                read_versioned(config, "config")?,
                read_versioned(weights, "weights")?,
            )
        };
        let cfg = mha_config(&c)?;
        let dtype = fa_dtype::from_code(c.weight_dtype, "config->weight_dtype")?;
        let layout = match w.layout {
            0 => WeightLayout::InOut,
            1 => WeightLayout::OutIn,
            l => return Err(invalid(format!("weights->layout is {l}; use 0 or 1"))),
        };
        // SAFETY: `W` is the matrices' element type (the match); the lengths are the
        // caller's contract.
        let layer = with_element!(dtype, W => unsafe { layer_from::<W>(cfg, &w, layout) })?;
        publish_layer(layer, out)
    })
}

/// Builds a layer with seeded random weights (uniform in `+-1/sqrt(d_in)`, as PyTorch
/// initialises `nn.Linear`; biases too when `bias` is 1) and stores its handle at `*out`.
/// The same seed gives the same weights; with a 16-bit `config->weight_dtype` they are
/// rounded to it (to nearest, ties to even) and stored so, the biases staying f32.
/// Returns as `fa_mha_new`.
///
/// # Safety
/// `config` and `out` point to valid objects.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_new_random(
    config: *const fa_mha_config,
    bias: i32,
    seed: u64,
    out: *mut *mut fa_mha,
) -> c_int {
    ffi_guard!("fa_mha_new_random", {
        check_ptr(config, "config")?;
        check_ptr(out, "out")?;
        // SAFETY: readable for its `struct_size` bytes (caller contract).
        let c = unsafe { read_versioned(config, "config") }?;
        let cfg = mha_config(&c)?;
        let dtype = fa_dtype::from_code(c.weight_dtype, "config->weight_dtype")?;
        let bias = match bias {
            0 => false,
            1 => true,
            b => return Err(invalid(format!("bias is {b}; use 0 or 1"))),
        };
        // The unpacked f32 random weights and their packed copy live at the same time
        // (16-bit: the f32 weights, their rounded copy and the packed one; as many bytes).
        probe_alloc(weight_floats(&cfg), 8, "the weights")?;
        let layer = with_element!(dtype, W => MultiHeadAttention::random_of::<W>(cfg, bias, seed))?;
        publish_layer(layer, out)
    })
}

/// Releases a layer (NULL is ignored). Caches made for it stay valid.
///
/// # Safety
/// `layer` is NULL or a handle from `fa_mha_new*` not yet freed, used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_free(layer: *mut fa_mha) {
    ffi_guard!("fa_mha_free", {
        if !layer.is_null() {
            // SAFETY: a live handle from Box::into_raw (caller contract), freed once.
            drop(unsafe { Box::from_raw(layer) });
        }
        Ok(())
    })
}

/// Checks `x` (`rows*d_model` readable floats) and `y` (as many writable ones, disjoint
/// from `x` and from the option arrays) and returns them as slices.
///
/// # Safety
/// As `fa_mha_forward`; the option arrays' spans are `option_spans`.
unsafe fn io<'a>(
    x: *const f32,
    y: *mut f32,
    rows: usize,
    d_model: usize,
    option_spans: &[(&'static str, crate::raw::Span)],
) -> FfiResult<(&'a [f32], &'a mut [f32])> {
    let n = rows
        .checked_mul(d_model)
        .ok_or_else(|| bad_shape(format!("batch*seq*d_model = {rows}*{d_model} overflows")))?;
    if n == 0 {
        return Ok((&[], <&mut [f32]>::default()));
    }
    check_ptr(x, "x")?;
    check_ptr(y, "y")?;
    let xs = span_of(x, n, "x")?;
    let ys = span_of(y, n, "y")?;
    let mut others = vec![("x", xs)];
    others.extend_from_slice(option_spans);
    check_disjoint(("y", ys), &others)?;
    // SAFETY: `n` readable floats at `x` and writable ones at `y` (caller contract),
    // non-NULL, aligned, disjoint (checked), sizes fit in isize (span_of).
    Ok(unsafe {
        (
            std::slice::from_raw_parts(x, n),
            std::slice::from_raw_parts_mut(y, n),
        )
    })
}

fn refuse_extra_outputs(o: &fa_sdpa_options) -> FfiResult<()> {
    if !o.weights.is_null() || !o.lse.is_null() {
        return Err(invalid(
            "opts->weights and opts->lse are not supported by the layer (use fa_sdpa)".into(),
        ));
    }
    refuse_scales(o, "the layer")
}

/// Self-attention of the layer: `y = MHA(x)` for `x` and `y` row-major
/// `[batch, seq, d_model]`. `opts` (NULL for the defaults) sets the attention step's options
/// exactly as for `fa_sdpa` with `Lq = Lk = seq` (pass `causal = 1` for a decoder);
/// `opts->weights` and `opts->lse` must be NULL.
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER`, `FA_ERR_BAD_SHAPE`, `FA_ERR_BAD_STRIDE` (`y`
/// overlaps `x` or an option array), `FA_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `layer` is a live handle; `x` holds `batch*seq*d_model` readable floats, `y` as many
/// writable ones that no other thread accesses during the call; `opts` as for `fa_sdpa`.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_forward(
    layer: *const fa_mha,
    x: *const f32,
    batch: usize,
    seq: usize,
    y: *mut f32,
    opts: *const fa_sdpa_options,
) -> c_int {
    ffi_guard!("fa_mha_forward", {
        check_ptr(layer, "layer")?;
        // SAFETY: a live handle (caller contract), only read.
        let layer = unsafe { &(*layer).layer };
        // SAFETY: NULL or readable (caller contract).
        let o = unsafe { read_options(opts) }?;
        refuse_extra_outputs(&o)?;
        let mut lens = Vec::new();
        // SAFETY: the option arrays are valid (caller contract); `y`, the only mutable
        // slice, is checked against their spans before it is made.
        let (options, spans) =
            unsafe { attn_options(&o, batch, layer.config().n_heads, &mut lens) }?;
        let rows = batch
            .checked_mul(seq)
            .ok_or_else(|| bad_shape("batch*seq overflows".into()))?;
        // SAFETY: forwarded caller contract.
        let (xs, ys) = unsafe { io(x, y, rows, layer.config().d_model, &spans) }?;
        layer.forward_into(xs, batch, seq, ys, &options)?;
        Ok(OK)
    })
}

/// A new empty cache of `T` for `layer`, behind a handle stored at `out`.
fn new_cache<T: Element>(
    layer: &MultiHeadAttention,
    batch: usize,
    capacity: usize,
    out: *mut *mut fa_kv_cache,
) -> FfiResult<c_int> {
    let c = layer.config();
    let values = [batch, c.n_kv_heads, capacity, c.head_dim, 2]
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x));
    probe_alloc(values, size_of::<T>(), "the KV cache")?;
    let cache = Cache::from_typed(layer.new_cache_of::<T>(batch, capacity)?);
    let handle = Box::into_raw(Box::new(fa_kv_cache { cache }));
    // SAFETY: `out` was checked non-NULL and aligned by the caller of this function, and
    // is writable (caller contract).
    unsafe { out.write(handle) };
    Ok(OK)
}

/// An empty f32 KV cache for `layer`: `batch` sequences of up to `capacity` positions,
/// allocated now (`2*batch*Hkv*capacity*D` floats). Stores the handle at `*out`. The same
/// as `fa_kv_cache_new_typed(layer, batch, capacity, FA_DTYPE_F32, out)`.
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER`, `FA_ERR_BAD_SHAPE` (the size overflows) or
/// `FA_ERR_ALLOC`. `*out` is unchanged on failure.
///
/// # Safety
/// `layer` is a live handle; `out` points to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_new(
    layer: *const fa_mha,
    batch: usize,
    capacity: usize,
    out: *mut *mut fa_kv_cache,
) -> c_int {
    ffi_guard!("fa_kv_cache_new", {
        check_ptr(layer, "layer")?;
        check_ptr(out, "out")?;
        // SAFETY: a live handle (caller contract), only read.
        let layer = unsafe { &(*layer).layer };
        new_cache::<f32>(layer, batch, capacity, out)
    })
}

/// An empty KV cache for `layer` storing keys and values as `dtype` (an `fa_dtype`:
/// `FA_DTYPE_F16` and `FA_DTYPE_BF16` take half the bytes of `FA_DTYPE_F32`): `batch`
/// sequences of up to `capacity` positions, allocated now (`2*batch*Hkv*capacity*D`
/// elements; `fa_kv_cache_bytes`). Keys and values are rounded to `dtype` once, when they
/// are appended, and widened to f32 when attention reads them. Works with a layer of any
/// weight type. Stores the handle at `*out`.
///
/// Returns as `fa_kv_cache_new`, and `FA_ERR_INVALID_ARGUMENT` if `dtype` is not an
/// `fa_dtype`. `*out` is unchanged on failure.
///
/// # Safety
/// `layer` is a live handle; `out` points to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_new_typed(
    layer: *const fa_mha,
    batch: usize,
    capacity: usize,
    dtype: i32,
    out: *mut *mut fa_kv_cache,
) -> c_int {
    ffi_guard!("fa_kv_cache_new_typed", {
        check_ptr(layer, "layer")?;
        check_ptr(out, "out")?;
        let dtype = fa_dtype::from_code(dtype, "dtype")?;
        // SAFETY: a live handle (caller contract), only read.
        let layer = unsafe { &(*layer).layer };
        with_element!(dtype, T => new_cache::<T>(layer, batch, capacity, out))
    })
}

/// Incremental self-attention through `cache`: `x` holds `seq` new tokens per sequence
/// (`[batch, seq, d_model]`) at positions `len .. len + seq` (`len` =
/// `fa_kv_cache_len(cache)`); their keys and values are appended to the cache, then they
/// attend over everything cached (`Lq = seq`, `Lk = len + seq`), writing `y`
/// (`[batch, seq, d_model]`). Call it once with the prompt, then once per generated token.
/// With `causal = 1` each step's output equals the matching rows of a full causal
/// `fa_mha_forward` over the whole sequence. `opts->weights` and `opts->lse` must be NULL.
/// The cache may be of any type (`fa_kv_cache_new_typed`): the new keys and values are
/// rounded to it as they are appended, and `x` and `y` stay f32.
///
/// Returns as `fa_mha_forward`, and `FA_ERR_CACHE_FULL` if the tokens do not fit,
/// `FA_ERR_BAD_SHAPE` if the cache was made for another batch size or layer shape. The
/// cache is unchanged on failure.
///
/// # Safety
/// As `fa_mha_forward`; `cache` is a live handle that no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_mha_forward_cached(
    layer: *const fa_mha,
    cache: *mut fa_kv_cache,
    x: *const f32,
    batch: usize,
    seq: usize,
    y: *mut f32,
    opts: *const fa_sdpa_options,
) -> c_int {
    ffi_guard!("fa_mha_forward_cached", {
        check_ptr(layer, "layer")?;
        check_ptr(cache, "cache")?;
        // SAFETY: live handles (caller contract); the cache is used by this call alone.
        let (layer, cache) = unsafe { (&(*layer).layer, &mut (*cache).cache) };
        // SAFETY: NULL or readable (caller contract).
        let o = unsafe { read_options(opts) }?;
        refuse_extra_outputs(&o)?;
        let mut lens = Vec::new();
        // SAFETY: as in fa_mha_forward.
        let (options, spans) =
            unsafe { attn_options(&o, batch, layer.config().n_heads, &mut lens) }?;
        let rows = batch
            .checked_mul(seq)
            .ok_or_else(|| bad_shape("batch*seq overflows".into()))?;
        // SAFETY: forwarded caller contract.
        let (xs, ys) = unsafe { io(x, y, rows, layer.config().d_model, &spans) }?;
        with_cache!(cache, c => {
            layer.forward_cached_into(c, xs, batch, seq, ys, &options)
        })?;
        Ok(OK)
    })
}

/// Positions cached (the position of the next token); 0 for NULL.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_len(cache: *const fa_kv_cache) -> usize {
    ffi_guard!("fa_kv_cache_len", {
        check_ptr(cache, "cache")?;
        // SAFETY: a live handle (caller contract).
        Ok(with_cache!(unsafe { &(*cache).cache }, c => c.len()))
    })
}

/// Positions the cache can hold; 0 for NULL.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_capacity(cache: *const fa_kv_cache) -> usize {
    ffi_guard!("fa_kv_cache_capacity", {
        check_ptr(cache, "cache")?;
        // SAFETY: a live handle (caller contract).
        Ok(with_cache!(unsafe { &(*cache).cache }, c => c.capacity()))
    })
}

/// Keeps the first `len` cached positions (no-op if `len >= fa_kv_cache_len(cache)`);
/// `len = 0` empties the cache (keeping its memory), e.g. for a new sequence.
///
/// # Safety
/// `cache` is NULL or a live handle that no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_truncate(cache: *mut fa_kv_cache, len: usize) -> c_int {
    ffi_guard!("fa_kv_cache_truncate", {
        check_ptr(cache, "cache")?;
        // SAFETY: a live handle used by this call alone (caller contract).
        with_cache!(unsafe { &mut (*cache).cache }, c => c.truncate(len));
        Ok(OK)
    })
}

/// Bytes the cache's keys and values occupy (its whole capacity, allocated when it was
/// made): `2*batch*Hkv*capacity*D` times 4 for an f32 cache, times 2 for f16 and bf16. 0
/// for NULL.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_bytes(cache: *const fa_kv_cache) -> usize {
    ffi_guard!("fa_kv_cache_bytes", {
        check_ptr(cache, "cache")?;
        // SAFETY: a live handle (caller contract).
        Ok(with_cache!(unsafe { &(*cache).cache }, c => c.bytes()))
    })
}

/// The element type the cache stores keys and values in, an `fa_dtype` (`FA_DTYPE_F32`
/// for a cache from `fa_kv_cache_new`); `FA_ERR_NULL_POINTER` (negative, never an
/// `fa_dtype`) for NULL.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_dtype(cache: *const fa_kv_cache) -> i32 {
    ffi_guard!("fa_kv_cache_dtype", {
        check_ptr(cache, "cache")?;
        // SAFETY: a live handle (caller contract).
        Ok(fa_dtype::of(unsafe { &(*cache).cache }.dtype()).code())
    })
}

/// Releases a cache (NULL is ignored).
///
/// # Safety
/// `cache` is NULL or a handle from `fa_kv_cache_new` or `fa_kv_cache_new_typed` not yet
/// freed, used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn fa_kv_cache_free(cache: *mut fa_kv_cache) {
    ffi_guard!("fa_kv_cache_free", {
        if !cache.is_null() {
            // SAFETY: a live handle from Box::into_raw (caller contract), freed once.
            drop(unsafe { Box::from_raw(cache) });
        }
        Ok(())
    })
}
