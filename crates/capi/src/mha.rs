//! The multi-head attention layer (`fa_mha`) and its KV cache (`fa_kv_cache`) behind opaque
//! handles.

use crate::pool;
use crate::raw::{check_disjoint, check_ptr, init_versioned, read_versioned, span_of, Versioned};
use crate::sdpa::{attn_options, fa_sdpa_options, read_options};
use crate::status::{fa_status, ffi_guard, Boundary, FfiError, FfiResult, OK};
use attention::{KvCache, MhaConfig, MhaWeights, MultiHeadAttention, RopeConfig, WeightLayout};
use std::ffi::c_int;

/// A multi-head (GQA/MQA) attention layer with packed projection weights. Opaque: made by
/// `fa_mha_new` or `fa_mha_new_random`, released by `fa_mha_free`. One layer may run
/// `fa_mha_forward` on several threads at once.
pub struct fa_mha {
    layer: MultiHeadAttention,
}

/// The key/value cache of one layer for incremental decoding. Opaque: made by
/// `fa_kv_cache_new`, released by `fa_kv_cache_free`. Not for concurrent use.
pub struct fa_kv_cache {
    cache: KvCache,
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
}

/// Caller-given projection weights (copied and packed by `fa_mha_new`; the caller keeps
/// ownership). Every projection is `y = x*W + b`. With `layout == 0` the matrices are
/// row-major `[d_in, d_out]`: wq `[d_model, Hq*D]`, wk and wv `[d_model, Hkv*D]`, wo
/// `[Hq*D, d_model]`; with `layout == 1` they are PyTorch's `nn.Linear.weight`
/// `[d_out, d_in]`. Query head h uses columns `h*D .. (h+1)*D` of wq. Initialise with
/// `fa_mha_weights_init(&w, sizeof w)` (every pointer NULL, layout 0), then set them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fa_mha_weights {
    /// `sizeof(fa_mha_weights)` as the caller was compiled; set by `fa_mha_weights_init`.
    pub struct_size: usize,
    /// Query projection.
    pub wq: *const f32,
    /// Key projection.
    pub wk: *const f32,
    /// Value projection.
    pub wv: *const f32,
    /// Output projection.
    pub wo: *const f32,
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
    struct_size: std::mem::size_of::<fa_mha_config>(),
    d_model: 0,
    n_heads: 0,
    n_kv_heads: 0,
    head_dim: 0,
    rope: 0,
    rope_base: 0.0,
};

// SAFETY: repr(C), plain data only, first field `struct_size: usize`.
unsafe impl Versioned for fa_mha_config {
    const DEFAULT: Self = DEFAULT_CONFIG;
    // The layout of ABI version 2, the first with `struct_size`.
    const MIN_SIZE: usize = std::mem::size_of::<fa_mha_config>();
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
    struct_size: std::mem::size_of::<fa_mha_weights>(),
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
    // The layout of ABI version 2, the first with `struct_size`.
    const MIN_SIZE: usize = std::mem::size_of::<fa_mha_weights>();
    const NAME: &'static str = "fa_mha_weights";
    const INIT: &'static str = "fa_mha_weights_init(&w, sizeof w)";
}

impl Default for fa_mha_weights {
    /// What `fa_mha_weights_init` writes (for Rust callers of the C ABI).
    fn default() -> Self {
        DEFAULT_WEIGHTS
    }
}

/// Initialises `*cfg`: every size 0 (its default), no RoPE, `cfg->struct_size = size`.
/// Pass `sizeof *cfg`. Returns `FA_OK`, `FA_ERR_NULL_POINTER`, or
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

/// Refuses (with `FA_ERR_ALLOC`) an allocation of `floats` values that cannot be made,
/// before a constructor that would abort the process on it.
fn probe_alloc(floats: Option<usize>, what: &str) -> FfiResult<()> {
    let n = floats.ok_or_else(|| bad_shape(format!("the size of {what} overflows")))?;
    Vec::<f32>::new().try_reserve_exact(n).map_err(|e| {
        FfiError::new(
            fa_status::FA_ERR_ALLOC,
            format!("cannot allocate {n} floats for {what}: {e}"),
        )
    })
}

/// Floats the weights of `cfg` take (unpacked), if that fits in `usize`.
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

/// Builds a layer from caller-given weights (copied and packed; the arrays may be freed
/// afterwards) and stores its handle at `*out`. RoPE and the projections' kernel variant
/// are fixed at build time (`fa_set_variant` before this call applies).
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER` (config, weights, a weight matrix or out is
/// NULL), `FA_ERR_BAD_SHAPE` (a zero size, Hq not a multiple of Hkv), `FA_ERR_INVALID_ARGUMENT`
/// (rope or layout not 0/1, an odd head_dim with RoPE, a bad RoPE base), `FA_ERR_ALLOC`.
/// `*out` is unchanged on failure.
///
/// # Safety
/// `config`, `weights` and `out` point to valid objects; each weight matrix and non-NULL
/// bias holds the number of floats its shape (see `fa_mha_weights`) gives.
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
        let layout = match w.layout {
            0 => WeightLayout::InOut,
            1 => WeightLayout::OutIn,
            l => return Err(invalid(format!("weights->layout is {l}; use 0 or 1"))),
        };
        let (dm, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
        let size = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| bad_shape("a weight's size overflows".into()))
        };
        // SAFETY (every `matrix` call): the caller guarantees the documented lengths.
        let matrix = |p: *const f32, n: usize, what: &str| -> FfiResult<&[f32]> {
            if n == 0 {
                return Ok(&[]);
            }
            check_ptr(p, what)?;
            span_of(p, n, what)?;
            // SAFETY: non-NULL, aligned, `n` readable floats (caller contract), size fits.
            Ok(unsafe { std::slice::from_raw_parts(p, n) })
        };
        let bias = |p: *const f32, n: usize, what: &str| -> FfiResult<Option<&[f32]>> {
            if p.is_null() {
                Ok(None)
            } else {
                matrix(p, n, what).map(Some)
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
        probe_alloc(weight_floats(&cfg), "the packed weights")?;
        let layer = pool::run(move || MultiHeadAttention::new(cfg, mw))?;
        publish_layer(layer, out)
    })
}

/// Builds a layer with seeded random weights (uniform in `+-1/sqrt(d_in)`, as PyTorch
/// initialises `nn.Linear`; biases too when `bias` is 1) and stores its handle at `*out`.
/// The same seed gives the same weights. Returns as `fa_mha_new`.
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
        let cfg = mha_config(&unsafe { read_versioned(config, "config") }?)?;
        let bias = match bias {
            0 => false,
            1 => true,
            b => return Err(invalid(format!("bias is {b}; use 0 or 1"))),
        };
        // The unpacked random weights and their packed copy live at the same time.
        probe_alloc(
            weight_floats(&cfg).and_then(|n| n.checked_mul(2)),
            "the weights",
        )?;
        let layer = pool::run(move || MultiHeadAttention::random(cfg, bias, seed))?;
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
    Ok(())
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
        pool::run(move || layer.forward_into(xs, batch, seq, ys, &options))?;
        Ok(OK)
    })
}

/// An empty KV cache for `layer`: `batch` sequences of up to `capacity` positions,
/// allocated now (`2*batch*Hkv*capacity*D` floats). Stores the handle at `*out`.
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
        let c = layer.config();
        let floats = [batch, c.n_kv_heads, capacity, c.head_dim, 2]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x));
        probe_alloc(floats, "the KV cache")?;
        let cache = layer.new_cache(batch, capacity)?;
        let handle = Box::into_raw(Box::new(fa_kv_cache { cache }));
        // SAFETY: non-NULL, aligned (checked), writable (caller contract).
        unsafe { out.write(handle) };
        Ok(OK)
    })
}

/// Incremental self-attention through `cache`: `x` holds `seq` new tokens per sequence
/// (`[batch, seq, d_model]`) at positions `len .. len + seq` (`len` =
/// `fa_kv_cache_len(cache)`); their keys and values are appended to the cache, then they
/// attend over everything cached (`Lq = seq`, `Lk = len + seq`), writing `y`
/// (`[batch, seq, d_model]`). Call it once with the prompt, then once per generated token.
/// With `causal = 1` each step's output equals the matching rows of a full causal
/// `fa_mha_forward` over the whole sequence. `opts->weights` and `opts->lse` must be NULL.
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
        pool::run(move || layer.forward_cached_into(cache, xs, batch, seq, ys, &options))?;
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
        Ok(unsafe { &(*cache).cache }.len())
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
        Ok(unsafe { &(*cache).cache }.capacity())
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
        unsafe { &mut (*cache).cache }.truncate(len);
        Ok(OK)
    })
}

/// Releases a cache (NULL is ignored).
///
/// # Safety
/// `cache` is NULL or a handle from `fa_kv_cache_new` not yet freed, used by no other
/// thread.
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
