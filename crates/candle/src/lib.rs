//! # fastattn-candle
//!
//! Fused scaled dot-product attention on the CPU for [candle](candle_core) tensors.
//! candle's CPU models compute `softmax(Q·Kᵀ)·V` as two matmuls around a softmax, with the
//! whole `Lq × Lk` score matrix in memory, and its fused kernels (`candle-flash-attn`) are
//! CUDA-only. This crate runs fastattn's tiled flash kernels on candle tensors:
//!
//! * [`sdpa`]: `[B, H, L, D]` tensors with every option of fastattn ([`SdpaOptions`]):
//!   causal, additive or boolean masks ([`Mask`]), scale, soft-cap, sliding window, ALiBi,
//!   sinks, per-batch key lengths, and GQA/MQA without repeating K and V.
//! * [`flash_attn`], [`flash_attn_varlen`] and their `_windowed` / `_alibi` / `_softcap`
//!   variants: the signatures and layouts (`[B, L, H, D]`, packed `[T, H, D]`) of
//!   `candle_flash_attn`, so a model written for CUDA flash attention runs on the CPU by
//!   changing one import.
//! * [`reference::attention_matmul_softmax`]: candle's own matmul–softmax–matmul path, the
//!   oracle of the tests and the peer of the benchmarks.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use fastattn_candle::{sdpa, Mask, SdpaOptions};
//! let dev = Device::Cpu;
//! let q = Tensor::randn(0f32, 1.0, (2, 8, 16, 64), &dev)?.to_dtype(DType::BF16)?;
//! let kv = Tensor::randn(0f32, 1.0, (2, 2, 16, 64), &dev)?.to_dtype(DType::BF16)?; // GQA 8/2
//! let out = sdpa(&q, &kv, &kv, &SdpaOptions::new().with_causal(true))?;
//! assert_eq!((out.dims(), out.dtype()), (&[2, 8, 16, 64][..], DType::BF16));
//! // A candle-transformers style u8 mask (1 = hidden) over [Lq, Lk], broadcast over B and H.
//! let hide: Vec<u8> = (0..16 * 16).map(|x| u8::from(x % 16 > x / 16)).collect();
//! let mask = Mask::Block(Tensor::from_vec(hide, (16, 16), &dev)?);
//! let masked = sdpa(&q, &kv, &kv, &SdpaOptions::new().with_mask(mask))?;
//! let diff = (out.to_dtype(DType::F32)? - masked.to_dtype(DType::F32)?)?.abs()?.max_all()?;
//! assert!(diff.to_scalar::<f32>()? < 1e-2);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! ## How the tensors are read
//!
//! Each call is a candle [`CustomOp3`](candle_core::CustomOp3) over Q, K and V: candle
//! hands it each tensor's `CpuStorage` and `Layout`, and the layout's start offset and
//! element strides become a fastattn [`TensorRef`](attention::TensorRef) over the storage's
//! slice. Nothing is copied or made contiguous: transposed, narrowed, sliced and
//! broadcast views are read in place, in f32, f16 or bf16 (Q, K and V may differ). The
//! result is one new contiguous tensor in the query's dtype. Masks are read in place when
//! they are f32 additive masks; f16/bf16/f64 additive masks are converted to f32 and `u8`
//! masks to fastattn's boolean mask first (one copy of the mask, never of Q, K or V).
//!
//! ## Numerics
//!
//! As in candle's `cpu_flash` kernel and PyTorch's CPU flash attention, 16-bit inputs are
//! widened to f32 as they are packed, scores, softmax and the weighted sum accumulate in
//! f32, and a 16-bit output is the f32 result rounded once. A row that sees no key gets a
//! zero output (candle's matmul–softmax path gives NaN there).
//!
//! ## Devices, gradients
//!
//! * CPU tensors only: a CUDA or Metal tensor gets a candle error naming the tensor and
//!   its device, before any work (move it with `.to_device(&Device::Cpu)`).
//! * **No backward pass.** The op has no `bwd`: calling `backward()` through it returns
//!   candle's `BackwardNotSupported` error. Use it for inference. (fastattn has a
//!   backward, `attention::sdpa_backward`; wiring it into candle is future work.)
//! * Errors are candle errors whose text says what is wrong (shape, dtype, device,
//!   option), prefixed with the function's name; a fastattn [`AttnError`](attention::AttnError)
//!   keeps its message. No input makes these functions panic.

mod flash;
mod op;
pub mod options;
pub mod reference;

pub use flash::{
    flash_attn, flash_attn_alibi, flash_attn_alibi_windowed, flash_attn_alibi_windowed_softcap,
    flash_attn_varlen, flash_attn_varlen_alibi, flash_attn_varlen_alibi_windowed,
    flash_attn_varlen_alibi_windowed_softcap, flash_attn_varlen_windowed, flash_attn_windowed,
};
/// Whether a call may use fastattn's thread team ([`SdpaOptions::parallelism`]).
pub use kernels::Parallelism;
pub use options::{Mask, SdpaOptions};

use candle_core::{bail, Result, Tensor};
use op::{check_input, prepare_mask, AttnOp, OutLayout};

/// Scaled dot-product attention `softmax(Q·Kᵀ·scale + mask)·V` on candle CPU tensors.
///
/// * `q`: `[B, Hq, Lq, D]`, `k`: `[B, Hkv, Lk, D]`, `v`: `[B, Hkv, Lk, Dv]`, each f32, f16
///   or bf16, with any strides (a `transpose(1, 2)` view of `[B, L, H, D]` data is read in
///   place); `Hq` a multiple of `Hkv` (query head `h` reads K/V head `h / (Hq/Hkv)`).
/// * `opts`: see [`SdpaOptions`]; the semantics are those of [`attention::SdpaOptions`].
///
/// Returns a new contiguous `[B, Hq, Lq, Dv]` tensor in `q`'s dtype.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use fastattn_candle::{reference::attention_matmul_softmax, sdpa, SdpaOptions};
/// let q = Tensor::randn(0f32, 1.0, (1, 4, 7, 16), &Device::Cpu)?;
/// let k = Tensor::randn(0f32, 1.0, (1, 2, 9, 16), &Device::Cpu)?;
/// let fused = sdpa(&q, &k, &k, &SdpaOptions::new().with_causal(true))?;
/// let plain = attention_matmul_softmax(&q, &k, &k, None, 0.25, true)?;
/// let diff = (fused - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// A candle error, before any work, for: a tensor not on the CPU; a dtype other than
/// f32/f16/bf16; a rank other than 4; batch sizes, head dims, or K/V heads and lengths that
/// disagree; `Hq` not a multiple of `Hkv`; a mask that is not broadcastable to
/// `[B, Hq, Lq, Lk]` or has the wrong dtype for its kind; and any option fastattn refuses
/// (slopes or sinks not `Hq` long, a bad soft-cap or scale, `kv_lengths` above `Lk`).
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, opts: &SdpaOptions) -> Result<Tensor> {
    const OP: &str = "fastattn_candle::sdpa";
    for (n, t) in [("q", q), ("k", k), ("v", v)] {
        check_input(OP, n, t, 4, "[B, H, L, D]")?;
    }
    let (b, hq, lq, d) = q.dims4()?;
    let (kb, hkv, lk, kd) = k.dims4()?;
    let (vb, vh, vl, _) = v.dims4()?;
    check_shapes(OP, (b, hq, d), (kb, hkv, lk, kd), (vb, vh, vl))?;
    let mask = opts
        .mask
        .as_ref()
        .map(|m| prepare_mask(OP, m, [b, hq, lq, lk]))
        .transpose()?;
    let op = AttnOp {
        name: OP,
        out: OutLayout::Bhld,
        opts: SdpaOptions {
            mask: None,
            ..opts.clone()
        },
        mask,
        varlen: None,
    };
    q.apply_op3(k, v, op)
}

/// The shape checks every entry point makes, in the caller's terms: `q` is
/// `(batch, heads, D)`, `k` `(batch, heads, length, D)`, `v` `(batch, heads, length)`.
pub(crate) fn check_shapes(
    op: &'static str,
    (b, hq, d): (usize, usize, usize),
    (kb, hkv, lk, kd): (usize, usize, usize, usize),
    (vb, vh, vl): (usize, usize, usize),
) -> Result<()> {
    if kb != b || vb != b {
        bail!("{op}: batch sizes differ: q {b}, k {kb}, v {vb}")
    }
    if kd != d {
        bail!("{op}: head dims differ: q has D = {d}, k has D = {kd}")
    }
    if vh != hkv || vl != lk {
        bail!("{op}: k has {hkv} heads of {lk} keys but v has {vh} heads of {vl}")
    }
    if hkv == 0 && hq > 0 || hkv > 0 && hq % hkv != 0 {
        bail!("{op}: q has {hq} heads, not a multiple of the {hkv} heads of k and v (GQA needs whole groups)")
    }
    Ok(())
}

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
