//! # fastattn C ABI
//!
//! `libfastattn_capi.so` / `libfastattn_capi.a` and the header `include/fastattn.h`: fastattn's GEMM,
//! softmax and scaled dot-product attention for C, C++ and Python (ctypes) programs.
//!
//! * `cblas_sgemm` (cargo feature `cblas`, on by default): standard CBLAS, so a program
//!   that links CBLAS for `sgemm` can link this library instead.
//! * `fa_sgemm`: GEMM with element strides (matrixmultiply's model), returning a status.
//! * `fa_softmax`: in-place row softmax.
//! * `fa_sdpa`: attention over strided `[B, H, L, D]` tensors (`fa_tensor`) of f32, f16 or
//!   bf16 (`fa_dtype`, any combination of Q, K, V and output) with the options of
//!   `attention::SdpaOptions` (`fa_sdpa_options`, initialised by `fa_sdpa_options_init`):
//!   causal, additive mask, key lengths, sliding windows, soft-capping, ALiBi, GQA/MQA, and
//!   attention sinks, and optional weights and log-sum-exp.
//! * `fa_sdpa_backward`: the gradients of `fa_sdpa` with respect to Q, K and V (f32
//!   `fa_tensor`s of any strides) from the forward's output, its log-sum-exp and the output
//!   gradient (each input f32, f16 or bf16), with the same `fa_sdpa_options`.
//! * `fa_sdpa_varlen`: variable-length batches for serving (FlashAttention-2's varlen and
//!   kvcache calls): packed queries `[Tq, Hq, D]` split by `cu_seqlens_q`, keys and values
//!   packed (`cu_seqlens_k`) or read in place from a paged cache `[num_blocks, block_size,
//!   Hkv, D]` through a block table, with `seqused_k` (`fa_varlen_seqs`, initialised by
//!   `fa_varlen_seqs_init`; int32 or int64 offsets, `fa_index_dtype`) and every option of
//!   `fa_sdpa` per sequence, sinks included.
//! * `fa_paged_kv_write`: new key/value rows scattered into paged caches by slot (vLLM's
//!   `reshape_and_cache`), converted to the caches' type; `fa_paged_kv_write_scaled` into
//!   8-bit caches (int8, fp8 e4m3 / e5m2) with per-slot or fixed scales.
//! * 8-bit keys and values (`FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3`, `FA_DTYPE_F8_E5M2`) for
//!   `fa_sdpa` and `fa_sdpa_varlen`, with their scales in `fa_sdpa_options.k_scale` /
//!   `v_scale`.
//! * `fa_mha_*`: the multi-head attention layer (GQA/MQA, biases, RoPE; weights stored as
//!   f32, f16 or bf16) behind an opaque handle, and `fa_kv_cache_*`, its KV cache for
//!   incremental decoding (f32, f16 or bf16 storage: `fa_kv_cache_new_typed`).
//! * `fa_set_num_threads`, `fa_num_threads`, `fa_set_variant`, `fa_variant_name`,
//!   `fa_version`, `fa_abi_version`, `fa_last_error`.
//!
//! # Threads
//! Every call runs on the calling thread; only its parallel parts (row blocks of a large
//! GEMM, heads and tiles of attention) are shared with helper threads, which join as they
//! wake. `fa_set_num_threads(n)` bounds those parts to `n` threads, the caller's included,
//! without moving calls to a pool thread, so small calls cost the same with or without it.
//!
//! # Element types
//! `fa_dtype` names the three float storage types: `FA_DTYPE_F32` (0), `FA_DTYPE_F16` (1)
//! and `FA_DTYPE_BF16` (2), and the 8-bit codes `FA_DTYPE_I8` (3), `FA_DTYPE_F8_E4M3` (4)
//! and `FA_DTYPE_F8_E5M2` (5), accepted only for K and V of `fa_sdpa` / `fa_sdpa_varlen`
//! (with scales) and the caches of `fa_paged_kv_write_scaled`. A tensor's type is its `fa_tensor.dtype` field (0, so a
//! zero-filled tensor is f32); 16-bit values are passed as their bits (`uint16_t`
//! storage, 2-byte aligned). The field is read once at the boundary and dispatched into
//! the generic Rust call; inside, 16-bit values are widened to f32 as they are read, all
//! arithmetic is f32, and 16-bit outputs are rounded to nearest (ties to even) when
//! stored. Masks, attention weights, log-sum-exp and the layer's `x` / `y` are f32. An
//! unknown code is refused with `FA_ERR_INVALID_ARGUMENT` naming the field and its value.
//!
//! # ABI stability
//! `FA_ABI_VERSION` / `fa_abi_version()` name the ABI. The structs that may grow
//! (`fa_sdpa_options`, `fa_varlen_seqs`, `fa_mha_config`, `fa_mha_weights`) start with `struct_size`, set by
//! their `*_init(&s, sizeof s)` function; fields a caller's older struct lacks take their
//! defaults, and a zero `struct_size` (an uninitialised struct) is refused.
//!
//! # Error model
//! Functions returning `int` return `FA_OK` (0) or a negative `fa_status` code; the
//! message of the last failure on the calling thread is `fa_last_error()`. Every pointer
//! and size is checked before use: NULLs, misalignment, overflowing extents, negative or
//! aliasing strides, and outputs overlapping inputs are refused before any write. Every
//! exported function runs its body through one guard (the `ffi_guard!` macro in `status`)
//! that catches panics (`FA_ERR_INTERNAL`), so no unwind crosses into C. The library
//! must be built with `panic = "unwind"` (the default).
//!
//! C gives no buffer lengths, so a tensor's memory is taken to be exactly the range its
//! extents and strides reach (`1 + sum (dims[i] - 1)*strides[i]` elements); the caller
//! guarantees that range is valid, as documented on each function (`# Safety`).
//!
//! # Header
//! `build.rs` generates the header with cbindgen from these sources into `$OUT_DIR` and,
//! outside CI, refreshes the checked-in `include/fastattn.h`; the test `header_is_current`
//! fails when the checked-in header differs from the generated one.
//!
//! ```
//! use fastattn_capi::{fa_sdpa, fa_sdpa_options, fa_tensor, fa_status};
//! let (b, h, l, d) = (1, 2, 3, 4);
//! let mut x: Vec<f32> = (0..b * h * l * d).map(|i| (i % 5) as f32 * 0.25).collect();
//! let mut out = vec![0.0f32; x.len()];
//! let dims = [b, h, l, d];
//! let strides = [(h * l * d) as isize, (l * d) as isize, d as isize, 1];
//! // dtype 0 (FA_DTYPE_F32): the data are floats.
//! let t = fa_tensor { data: x.as_mut_ptr().cast(), dims, strides, dtype: 0 };
//! let mut o = fa_tensor { data: out.as_mut_ptr().cast(), dims, strides, dtype: 0 };
//! let mut opts = fa_sdpa_options::default(); // C: fa_sdpa_options_init(&opts, sizeof opts)
//! opts.causal = 1;
//! // SAFETY: every tensor describes a live, dense buffer of its size.
//! let rc = unsafe { fa_sdpa(&t, &t, &t, &mut o, &opts) };
//! assert_eq!(rc, fa_status::FA_OK as i32);
//! // The first query sees only the first key: its output is that key's value.
//! assert_eq!(&out[..d], &x[..d]);
//!
//! // The same call with bf16 K and V (the bits of each value) and an f16 output.
//! use fastattn_capi::fa_dtype::{FA_DTYPE_BF16, FA_DTYPE_F16};
//! use kernels::{bf16, f16};
//! let mut kv: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
//! let mut out16 = vec![f16::ZERO; x.len()];
//! let data = kv.as_mut_ptr().cast();
//! let t16 = fa_tensor { data, dims, strides, dtype: FA_DTYPE_BF16 as i32 };
//! let data = out16.as_mut_ptr().cast();
//! let mut o16 = fa_tensor { data, dims, strides, dtype: FA_DTYPE_F16 as i32 };
//! // SAFETY: as above.
//! let rc = unsafe { fa_sdpa(&t, &t16, &t16, &mut o16, &opts) };
//! assert_eq!(rc, fa_status::FA_OK as i32);
//! // x's values are multiples of 1/4, exact in bf16 and f16.
//! assert_eq!(out16[0].to_f32(), x[0]);
//! ```
//!
//! A variable-length call: two sequences of 2 and 1 tokens, packed `[Tq, H, D]` and
//! described by `fa_varlen_seqs` (C: `fa_varlen_seqs_init(&seqs, sizeof seqs)`).
//!
//! ```
//! use fastattn_capi::{fa_sdpa_varlen, fa_status, fa_tensor, fa_varlen_seqs};
//! let (h, t, d) = (2, 3, 4);
//! let x: Vec<f32> = (0..t * h * d).map(|i| (i % 7) as f32 * 0.5).collect();
//! let mut out = vec![0.0f32; x.len()];
//! // The [1, H, T, D] view of a packed [T, H, D] buffer.
//! let strides = [(t * h * d) as isize, d as isize, (h * d) as isize, 1];
//! let dims = [1, h, t, d];
//! let xt = fa_tensor { data: x.as_ptr().cast_mut().cast(), dims, strides, dtype: 0 };
//! let mut o = fa_tensor { data: out.as_mut_ptr().cast(), dims, strides, dtype: 0 };
//! let cu: [i32; 3] = [0, 2, 3];
//! let mut seqs = fa_varlen_seqs::default();
//! seqs.batch = 2;
//! seqs.cu_seqlens_q = cu.as_ptr().cast();
//! seqs.cu_seqlens_k = cu.as_ptr().cast(); // packed K/V of the same lengths
//! // SAFETY: the views describe live buffers; the offsets hold batch + 1 values.
//! let rc = unsafe { fa_sdpa_varlen(&xt, &xt, &xt, &mut o, &seqs, std::ptr::null()) };
//! assert_eq!(rc, fa_status::FA_OK as i32);
//! // The second sequence has one key: its output is that key's value.
//! assert_eq!(&out[2 * h * d..], &x[2 * h * d..]);
//! ```

#![allow(non_camel_case_types, non_upper_case_globals)]

#[cfg(feature = "cblas")]
pub mod cblas;
pub mod dtype;
pub mod gemm;
pub mod mha;
pub mod paged;
mod pool;
mod raw;
pub mod runtime;
pub mod sdpa;
pub mod softmax;
pub mod status;

#[cfg(feature = "cblas")]
pub use cblas::{
    cblas_sgemm, CblasColMajor, CblasConjTrans, CblasNoTrans, CblasRowMajor, CblasTrans,
    CBLAS_ORDER, CBLAS_TRANSPOSE,
};
pub use dtype::fa_dtype;
pub use gemm::fa_sgemm;
pub use mha::{
    fa_kv_cache, fa_kv_cache_bytes, fa_kv_cache_capacity, fa_kv_cache_dtype, fa_kv_cache_free,
    fa_kv_cache_len, fa_kv_cache_new, fa_kv_cache_new_typed, fa_kv_cache_truncate, fa_mha,
    fa_mha_config, fa_mha_config_init, fa_mha_forward, fa_mha_forward_cached, fa_mha_free,
    fa_mha_new, fa_mha_new_random, fa_mha_weights, fa_mha_weights_init,
};
pub use paged::{fa_paged_kv_write, fa_paged_kv_write_scaled};
pub use runtime::{
    fa_abi_version, fa_blocktime_us, fa_last_error, fa_num_threads, fa_set_blocktime_us,
    fa_set_num_threads, fa_set_variant, fa_test_panic_boundary, fa_variant_name, fa_version,
    FA_ABI_VERSION,
};
pub use sdpa::{
    fa_index_dtype, fa_sdpa, fa_sdpa_backward, fa_sdpa_options, fa_sdpa_options_init,
    fa_sdpa_varlen, fa_tensor, fa_varlen_seqs, fa_varlen_seqs_init,
};
pub use softmax::fa_softmax;
pub use status::{fa_status, FfiError, FfiResult};
