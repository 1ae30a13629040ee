//! CPU stand-ins for `candle_flash_attn`: the same function names, arguments and layouts
//! (`[B, L, H, D]`, packed `[T, H, D]` with cumulative `u32` sequence lengths), so a model
//! written for CUDA flash attention runs on the CPU by changing one import.
//!
//! The `[B, L, H, D]` tensors are seen as `[B, H, L, D]` by swapping two strides (a
//! `transpose(1, 2)` view, no copy), and the output is written straight into a new
//! contiguous `[B, L, H, D]` (or `[T, H, D]`) tensor.

use crate::op::{check_input, AttnOp, OutLayout, Varlen};
use crate::{check_shapes, SdpaOptions};
use candle_core::{bail, DType, Result, Tensor};

/// One dense call: `[B, L, H, D]` tensors, options already set except the mask.
fn dense(
    name: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    opts: SdpaOptions,
) -> Result<Tensor> {
    const LAYOUT: &str = "[B, L, H, D]";
    for (n, t) in [("q", q), ("k", k), ("v", v)] {
        check_input(name, n, t, 4, LAYOUT)?;
    }
    let (b, _, hq, d) = q.dims4()?;
    let (kb, lk, hkv, kd) = k.dims4()?;
    let (vb, vl, vh, _) = v.dims4()?;
    check_shapes(name, (b, hq, d), (kb, hkv, lk, kd), (vb, vh, vl))?;
    let alibi_slopes = alibi_slopes.map(|a| slopes(name, a, hq)).transpose()?;
    let op = AttnOp {
        name,
        out: OutLayout::Blhd,
        opts: opts.with_alibi_slopes(alibi_slopes),
        mask: None,
        varlen: None,
    };
    q.transpose(1, 2)?
        .apply_op3(&k.transpose(1, 2)?, &v.transpose(1, 2)?, op)
}

/// One varlen call: packed `[T, H, D]` tensors and cumulative lengths.
#[allow(clippy::too_many_arguments)]
fn varlen(
    name: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    opts: SdpaOptions,
) -> Result<Tensor> {
    const LAYOUT: &str = "[T, H, D]";
    for (n, t) in [("q", q), ("k", k), ("v", v)] {
        check_input(name, n, t, 3, LAYOUT)?;
    }
    let (_, hq, d) = q.dims3()?;
    let (_, hkv, kd) = k.dims3()?;
    let (vt, vh, _) = v.dims3()?;
    let kt = k.dims()[0];
    check_shapes(name, (1, hq, d), (1, hkv, kt, kd), (1, vh, vt))?;
    let cu_q = offsets(name, "seqlens_q", seqlens_q)?;
    let cu_k = offsets(name, "seqlens_k", seqlens_k)?;
    if cu_q.len() != cu_k.len() {
        bail!(
            "{name}: seqlens_q has {} values but seqlens_k has {}; both are [B + 1]",
            cu_q.len(),
            cu_k.len()
        )
    }
    for (what, cu, max) in [("query", &cu_q, max_seqlen_q), ("key", &cu_k, max_seqlen_k)] {
        if let Some((s, n)) = cu
            .windows(2)
            .map(|w| w[1] - w[0])
            .enumerate()
            .find(|&(_, n)| n > max as i64)
        {
            bail!("{name}: sequence {s} has {n} {what} tokens, more than the max_seqlen of {max}")
        }
    }
    let alibi_slopes = alibi_slopes.map(|a| slopes(name, a, hq)).transpose()?;
    let op = AttnOp {
        name,
        out: OutLayout::Packed,
        opts: opts.with_alibi_slopes(alibi_slopes),
        mask: None,
        varlen: Some(Varlen { cu_q, cu_k }),
    };
    // [T, H, D] seen as [1, H, T, D]: views only.
    let bhld = |t: &Tensor| t.unsqueeze(0)?.transpose(1, 2);
    bhld(q)?.apply_op3(&bhld(k)?, &bhld(v)?, op)
}

/// The `[Hq]` ALiBi slopes as f32 values.
fn slopes(name: &'static str, a: &Tensor, hq: usize) -> Result<Vec<f32>> {
    if a.dims() != [hq] {
        bail!(
            "{name}: alibi_slopes has shape {:?}, expected [{hq}] (one slope per query head)",
            a.dims()
        )
    }
    if !a.dtype().is_float() {
        bail!(
            "{name}: alibi_slopes has dtype {:?}, expected a float dtype",
            a.dtype()
        )
    }
    a.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Cumulative sequence lengths (`u32` as candle-flash-attn takes them; `i32` and `i64`
/// too) as i64 values.
fn offsets(name: &'static str, what: &str, t: &Tensor) -> Result<Vec<i64>> {
    if t.rank() != 1 {
        bail!("{name}: {what} has shape {:?}, expected [B + 1]", t.dims())
    }
    Ok(match t.dtype() {
        DType::U32 => t.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::I32 => t.to_vec1::<i32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => t.to_vec1::<i64>()?,
        dt => bail!("{name}: {what} has dtype {dt:?}, expected u32 (or i32, i64)"),
    })
}

fn scaled(softmax_scale: f32) -> SdpaOptions {
    SdpaOptions::new().with_scale(softmax_scale)
}

/// CPU `candle_flash_attn::flash_attn`: `softmax(Q·Kᵀ·softmax_scale)·V`.
///
/// * `q`: `[B, Lq, Hq, D]`, `k`: `[B, Lk, Hkv, D]`, `v`: `[B, Lk, Hkv, Dv]`, f32, f16 or
///   bf16 (each may differ; any strides); `Hq` a multiple of `Hkv` (GQA/MQA, no repeat).
/// * `causal`: aligned to the bottom right, as flash-attention ≥ 2.1 does.
///
/// Returns a contiguous `[B, Lq, Hq, Dv]` tensor in `q`'s dtype. Unlike the CUDA kernel,
/// any head size works (not only multiples of 8 up to 256) and f32 is accepted.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let q = Tensor::randn(0f32, 1.0, (1, 5, 4, 8), &Device::Cpu)?;
/// let out = fastattn_candle::flash_attn(&q, &q, &q, 1.0 / 8f32.sqrt(), true)?;
/// assert_eq!(out.dims(), &[1, 5, 4, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// Non-CPU tensors, dtypes other than f32/f16/bf16, ranks other than 4, and shapes that
/// disagree (batch, `D`, K against V, `Hq % Hkv`) give a candle error saying so.
pub fn flash_attn(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> Result<Tensor> {
    dense(
        "fastattn_candle::flash_attn",
        q,
        k,
        v,
        None,
        scaled(softmax_scale).with_causal(causal),
    )
}

/// CPU `candle_flash_attn::flash_attn_windowed`: [`flash_attn`] with a sliding window
/// (keys at most `window_size_left` positions before and `window_size_right` after the
/// query's position; `None` is unbounded). `(None, Some(0))` is causal attention.
///
/// # Errors
/// As [`flash_attn`].
pub fn flash_attn_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    dense(
        "fastattn_candle::flash_attn_windowed",
        q,
        k,
        v,
        None,
        scaled(softmax_scale).with_window(window_size_left, window_size_right),
    )
}

/// CPU `candle_flash_attn::flash_attn_alibi`: [`flash_attn`] with ALiBi slopes, an
/// `[Hq]` float tensor (the score of key `j` for query position `p` gets `− slope·|p − j|`).
///
/// # Errors
/// As [`flash_attn`], and slopes that are not `[Hq]` floats.
pub fn flash_attn_alibi(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> Result<Tensor> {
    dense(
        "fastattn_candle::flash_attn_alibi",
        q,
        k,
        v,
        Some(alibi_slopes),
        scaled(softmax_scale).with_causal(causal),
    )
}

/// CPU `candle_flash_attn::flash_attn_alibi_windowed`: ALiBi and a sliding window.
///
/// # Errors
/// As [`flash_attn_alibi`].
pub fn flash_attn_alibi_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    dense(
        "fastattn_candle::flash_attn_alibi_windowed",
        q,
        k,
        v,
        Some(alibi_slopes),
        scaled(softmax_scale).with_window(window_size_left, window_size_right),
    )
}

/// CPU `candle_flash_attn::flash_attn_alibi_windowed_softcap`: optional ALiBi, a sliding
/// window and logit soft-capping `softcap·tanh(s/softcap)` (Gemma 2).
///
/// # Errors
/// As [`flash_attn_alibi`], and a soft-cap that is not finite and positive.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_alibi_windowed_softcap(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
    softcap: f32,
) -> Result<Tensor> {
    dense(
        "fastattn_candle::flash_attn_alibi_windowed_softcap",
        q,
        k,
        v,
        alibi_slopes,
        scaled(softmax_scale)
            .with_window(window_size_left, window_size_right)
            .with_softcap(softcap),
    )
}

/// CPU `candle_flash_attn::flash_attn_varlen`: many sequences of different lengths packed
/// along the token axis, each its own attention problem.
///
/// * `q`: `[Tq, Hq, D]`, `k`: `[Tk, Hkv, D]`, `v`: `[Tk, Hkv, Dv]` (f32, f16 or bf16, any
///   strides);
/// * `seqlens_q`, `seqlens_k`: `[B + 1]` cumulative lengths (`0, l_1, l_1 + l_2, …`), `u32`
///   as candle-flash-attn takes them (`i32`, `i64` too): sequence `s` owns query tokens
///   `seqlens_q[s]..seqlens_q[s + 1]` and key tokens `seqlens_k[s]..seqlens_k[s + 1]`;
/// * `max_seqlen_q`, `max_seqlen_k`: upper bounds of the sequences' lengths (checked; the
///   CPU kernel schedules by the real lengths);
/// * `causal`: per sequence, aligned to the bottom right (a chunk of new queries sees the
///   keys before it).
///
/// Returns a contiguous `[Tq, Hq, Dv]` tensor in `q`'s dtype. Built on
/// [`attention::sdpa_varlen_into_dyn`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let q = Tensor::randn(0f32, 1.0, (7, 2, 8), &dev)?; // sequences of 3 and 4 tokens
/// let cu = Tensor::new(&[0u32, 3, 7], &dev)?;
/// let out = fastattn_candle::flash_attn_varlen(&q, &q, &q, &cu, &cu, 4, 4, 0.35, true)?;
/// assert_eq!(out.dims(), &[7, 2, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// As [`flash_attn`] (with rank 3), and offsets that are not `[B + 1]` integers, are not
/// 0-based and non-decreasing up to the packed length, differ in count, or describe a
/// sequence longer than its `max_seqlen`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    causal: bool,
) -> Result<Tensor> {
    varlen(
        "fastattn_candle::flash_attn_varlen",
        q,
        k,
        v,
        None,
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        scaled(softmax_scale).with_causal(causal),
    )
}

/// CPU `candle_flash_attn::flash_attn_varlen_windowed`: [`flash_attn_varlen`] with a
/// sliding window (see [`flash_attn_windowed`]).
///
/// # Errors
/// As [`flash_attn_varlen`].
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    varlen(
        "fastattn_candle::flash_attn_varlen_windowed",
        q,
        k,
        v,
        None,
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        scaled(softmax_scale).with_window(window_size_left, window_size_right),
    )
}

/// CPU `candle_flash_attn::flash_attn_varlen_alibi`: [`flash_attn_varlen`] with `[Hq]`
/// ALiBi slopes.
///
/// # Errors
/// As [`flash_attn_varlen`], and slopes that are not `[Hq]` floats.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_alibi(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    causal: bool,
) -> Result<Tensor> {
    varlen(
        "fastattn_candle::flash_attn_varlen_alibi",
        q,
        k,
        v,
        Some(alibi_slopes),
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        scaled(softmax_scale).with_causal(causal),
    )
}

/// CPU `candle_flash_attn::flash_attn_varlen_alibi_windowed`: ALiBi and a sliding window.
///
/// # Errors
/// As [`flash_attn_varlen_alibi`].
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_alibi_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    varlen(
        "fastattn_candle::flash_attn_varlen_alibi_windowed",
        q,
        k,
        v,
        Some(alibi_slopes),
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        scaled(softmax_scale).with_window(window_size_left, window_size_right),
    )
}

/// CPU `candle_flash_attn::flash_attn_varlen_alibi_windowed_softcap`: optional ALiBi, a
/// sliding window and logit soft-capping.
///
/// # Errors
/// As [`flash_attn_varlen_alibi`], and a soft-cap that is not finite and positive.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_alibi_windowed_softcap(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
    softcap: f32,
) -> Result<Tensor> {
    varlen(
        "fastattn_candle::flash_attn_varlen_alibi_windowed_softcap",
        q,
        k,
        v,
        alibi_slopes,
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        scaled(softmax_scale)
            .with_window(window_size_left, window_size_right)
            .with_softcap(softcap),
    )
}
