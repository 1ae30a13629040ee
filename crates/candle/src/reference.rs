//! candle's own attention: the matmul → masked softmax → matmul sequence that
//! candle-transformers' models run on the CPU, with the full `Lq × Lk` score matrix. It is
//! the oracle of this crate's tests and the peer its benchmarks measure against.

use candle_core::{bail, DType, Result, Tensor, D};

/// `softmax(Q·Kᵀ·scale + mask)·V` through candle ops, in `q`'s dtype (K, V and the mask are
/// converted to it), as candle-transformers computes attention:
///
/// * `q`: `[B, Hq, Lq, D]`, `k`: `[B, Hkv, Lk, D]`, `v`: `[B, Hkv, Lk, Dv]`; for GQA, K and
///   V are repeated to `Hq` heads first (candle-transformers' `repeat_kv`, a copy);
/// * `mask`: an additive float tensor broadcastable to `[B, Hq, Lq, Lk]`;
/// * `causal`: keys after the query's position hidden, aligned to the bottom right (query
///   `i` sits at key position `i + Lk − Lq`), built as an additive `-inf` mask.
///
/// The softmax is written out (`max_keepdim`, `exp`, `sum_keepdim`) as
/// `candle_nn::ops::softmax_last_dim` computes it, so this crate needs no candle-nn. A row
/// whose keys are all hidden gives NaN, as candle's path does (fastattn gives zeros).
///
/// # Errors
/// Ranks other than 4, `Hq` not a multiple of `Hkv`, and any error of the candle ops
/// (shapes that do not broadcast or multiply).
pub fn attention_matmul_softmax(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
    causal: bool,
) -> Result<Tensor> {
    let dt = q.dtype();
    let (_, hq, lq, _) = q.dims4()?;
    let (_, hkv, lk, _) = k.dims4()?;
    if hkv == 0 || hq % hkv != 0 {
        bail!("attention_matmul_softmax: Hq = {hq} is not a multiple of Hkv = {hkv}")
    }
    let k = repeat_kv(&k.to_dtype(dt)?, hq / hkv)?;
    let v = repeat_kv(&v.to_dtype(dt)?, hq / hkv)?;
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * f64::from(scale))?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(&m.to_dtype(dt)?)?;
    }
    if causal {
        let off = lk as i64 - lq as i64;
        let hide: Vec<f32> = (0..lq as i64)
            .flat_map(|i| {
                (0..lk as i64).map(move |j| if j > i + off { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let hide = Tensor::from_vec(hide, (lq, lk), q.device())?.to_dtype(dt)?;
        scores = scores.broadcast_add(&hide)?;
    }
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let w = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    w.matmul(&v.contiguous()?)
}

/// `[B, Hkv, L, D]` → `[B, Hkv·n, L, D]`, each head repeated `n` times in a row
/// (candle-transformers' `repeat_kv`).
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, h, l, d) = x.dims4()?;
    Tensor::cat(&vec![x; n], 2)?.reshape((b, h * n, l, d))
}

/// An additive mask (`0` visible, `-inf` hidden) in `dtype` from a `u8` mask whose non-zero
/// entries are visible (`allow = true`) or hidden (`allow = false`): what a
/// candle-transformers model does with `masked_fill`.
///
/// # Errors
/// A mask that is not `u8`, and candle op errors.
pub fn additive_from_u8(mask: &Tensor, allow: bool, dtype: DType) -> Result<Tensor> {
    if mask.dtype() != DType::U8 {
        bail!(
            "additive_from_u8: the mask is {:?}, expected u8",
            mask.dtype()
        )
    }
    let zeros = Tensor::zeros(mask.shape(), dtype, mask.device())?;
    let inf = Tensor::full(f32::NEG_INFINITY, mask.shape(), mask.device())?.to_dtype(dtype)?;
    let hide = if allow { mask.eq(0u8)? } else { mask.ne(0u8)? };
    hide.where_cond(&inf, &zeros)
}
