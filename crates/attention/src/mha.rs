//! Multi-head attention layer with learned projections: `X → Q, K, V → attention per
//! head → output projection`, with GQA/MQA, optional biases, rotary embeddings,
//! cross-attention and a KV cache for decoding.
//!
//! # Weights
//! Every projection is `y = x·W + b` with `W` given row-major as `[d_in, d_out]`
//! ([`WeightLayout::InOut`]), or as PyTorch's `nn.Linear.weight` `[d_out, d_in]`
//! ([`WeightLayout::OutIn`]):
//!
//! | weight | `InOut` shape | bias |
//! |--------|---------------|------|
//! | `wq` | `[d_model, Hq·D]` | `[Hq·D]` |
//! | `wk`, `wv` | `[d_model, Hkv·D]` | `[Hkv·D]` |
//! | `wo` | `[Hq·D, d_model]` | `[d_model]` |
//!
//! Query head `h` uses columns `h·D .. (h+1)·D` of `wq` (and rows `h·D ..` of `wo`); query
//! head `h` reads key/value head `h / (Hq/Hkv)`.
//!
//! # Data flow
//! At build, `wq | wk | wv` are concatenated column-wise into one fused `[d_model, W]`
//! matrix (each segment starting on a panel boundary of the microkernel, zero columns in
//! between) and packed once, as is `wo` ([`Linear`]). A forward call then does:
//!
//! ```text
//! QKV = X·Wqkv + b            one GEMM, [B·L, W] (rows split across rayon tasks)
//! RoPE on the Q and K parts   in place, per finished block of rows (while in cache)
//! Q, K, V = strided views     [B, H, L, D] with strides [L·W, D, W, 1]: no copies
//! A = sdpa(Q, K, V)           written straight into [B, L, Hq·D] (strides [L·Hq·D, D, Hq·D, 1])
//! Y = A·Wo + bo               one GEMM
//! ```
//!
//! With a [`KvCache`], the new K and V rows are appended to the cache and attention runs
//! over the cache view; RoPE uses the positions `cache.len() ..`.

use crate::error::{AttnError, Result};
use crate::kv_cache::KvCache;
use crate::linear::{expect_len, Epilogue, Linear, WeightLayout};
use crate::options::{Problem, SdpaOptions};
use crate::rope::{Rope, RopeConfig};
use crate::tensor::{TensorMut, TensorRef};
use crate::{sdpa_into, SdpaOutputs};
use kernels::{Element, Isa};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

/// Sizes and options of a [`MultiHeadAttention`] layer.
///
/// ```
/// use fastattn_attention::{MhaConfig, RopeConfig};
/// // Llama-style: 32 query heads, 8 key/value heads, rotary embeddings.
/// let cfg = MhaConfig::new(4096, 32).with_kv_heads(8).with_rope(RopeConfig::default());
/// assert_eq!((cfg.head_dim, cfg.q_dim(), cfg.kv_dim()), (128, 4096, 1024));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MhaConfig {
    /// Model width (input and output features).
    pub d_model: usize,
    /// Query heads `Hq`.
    pub n_heads: usize,
    /// Key/value heads `Hkv` (`Hq` for MHA, a divisor of `Hq` for GQA, 1 for MQA).
    pub n_kv_heads: usize,
    /// Head dimension `D` (need not equal `d_model / Hq`).
    pub head_dim: usize,
    /// Rotary embeddings on Q and K (self-attention only); `None` = off.
    pub rope: Option<RopeConfig>,
    /// Kernel variant of the projections (the weights are packed for it); `None` =
    /// [`kernels::current_isa`] at build time. The attention itself uses
    /// [`SdpaOptions::isa`].
    pub isa: Option<Isa>,
}

impl MhaConfig {
    /// Plain multi-head attention: `Hkv = Hq`, `D = d_model / Hq`, no RoPE.
    pub fn new(d_model: usize, n_heads: usize) -> Self {
        MhaConfig {
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: d_model / n_heads.max(1),
            rope: None,
            isa: None,
        }
    }
    /// Sets the key/value head count (GQA/MQA).
    pub fn with_kv_heads(mut self, n_kv_heads: usize) -> Self {
        self.n_kv_heads = n_kv_heads;
        self
    }
    /// Sets the head dimension.
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        self.head_dim = head_dim;
        self
    }
    /// Turns rotary embeddings on.
    pub fn with_rope(mut self, rope: RopeConfig) -> Self {
        self.rope = Some(rope);
        self
    }
    /// Forces the projections' kernel variant.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }
    /// `Hq·D`, the width of the query projection and of the attention output.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// `Hkv·D`, the width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn validate(&self) -> Result<()> {
        let (hq, hkv) = (self.n_heads, self.n_kv_heads);
        if self.d_model == 0 || self.head_dim == 0 || hq == 0 || hkv == 0 {
            return Err(AttnError::Shape {
                what: format!(
                    "d_model ({}), heads ({hq}), kv heads ({hkv}) and head dim ({}) must be > 0",
                    self.d_model, self.head_dim
                ),
            });
        }
        if !hq.is_multiple_of(hkv) {
            return Err(AttnError::HeadGroups { hq, hkv });
        }
        let w = hkv
            .checked_mul(2)
            .and_then(|k| k.checked_add(hq))
            .and_then(|h| h.checked_mul(self.head_dim))
            .and_then(|w| w.checked_add(64))
            .and_then(|w| w.checked_mul(self.d_model));
        if w.is_none() {
            return Err(AttnError::Overflow { what: "weights" });
        }
        Ok(())
    }
}

/// Caller-given weights and biases, borrowed (copied into packed form by
/// [`MultiHeadAttention::new`]). Shapes: see the [module docs](self). The weights are f32
/// (the default) or a 16-bit type `W` ([`Element`]), which the layer keeps in 16 bits;
/// biases are f32.
#[derive(Debug)]
pub struct MhaWeights<'a, W = f32> {
    /// Query projection.
    pub wq: &'a [W],
    /// Key projection.
    pub wk: &'a [W],
    /// Value projection.
    pub wv: &'a [W],
    /// Output projection.
    pub wo: &'a [W],
    /// Query bias `[Hq·D]`.
    pub bq: Option<&'a [f32]>,
    /// Key bias `[Hkv·D]`.
    pub bk: Option<&'a [f32]>,
    /// Value bias `[Hkv·D]`.
    pub bv: Option<&'a [f32]>,
    /// Output bias `[d_model]`.
    pub bo: Option<&'a [f32]>,
    /// Layout of all four weight matrices.
    pub layout: WeightLayout,
}

impl<W> Clone for MhaWeights<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W> Copy for MhaWeights<'_, W> {}

impl<'a, W: Element> MhaWeights<'a, W> {
    /// Weights in the `[d_in, d_out]` layout, without biases (set the `b*` fields to add
    /// them).
    pub fn new(wq: &'a [W], wk: &'a [W], wv: &'a [W], wo: &'a [W]) -> Self {
        MhaWeights {
            wq,
            wk,
            wv,
            wo,
            bq: None,
            bk: None,
            bv: None,
            bo: None,
            layout: WeightLayout::InOut,
        }
    }
}

/// Owned weights in the `[d_in, d_out]` layout, e.g. from [`OwnedMhaWeights::random`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedMhaWeights {
    /// `[d_model, Hq·D]`.
    pub wq: Vec<f32>,
    /// `[d_model, Hkv·D]`.
    pub wk: Vec<f32>,
    /// `[d_model, Hkv·D]`.
    pub wv: Vec<f32>,
    /// `[Hq·D, d_model]`.
    pub wo: Vec<f32>,
    /// `[Hq·D]`.
    pub bq: Option<Vec<f32>>,
    /// `[Hkv·D]`.
    pub bk: Option<Vec<f32>>,
    /// `[Hkv·D]`.
    pub bv: Option<Vec<f32>>,
    /// `[d_model]`.
    pub bo: Option<Vec<f32>>,
}

impl OwnedMhaWeights {
    /// Seeded random weights, uniform in `±1/√d_in` as PyTorch's `nn.Linear` initialises
    /// them, with biases (same bound) when `bias` is set. Same seed, same weights.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::new`] for an invalid configuration.
    pub fn random(cfg: &MhaConfig, bias: bool, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (dm, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
        let mut gen = |len: usize, d_in: usize| -> Vec<f32> {
            let a = 1.0 / (d_in as f32).sqrt();
            (0..len).map(|_| rng.random_range(-a..a)).collect()
        };
        let wq = gen(dm * qd, dm);
        let wk = gen(dm * kvd, dm);
        let wv = gen(dm * kvd, dm);
        let wo = gen(qd * dm, qd);
        let (bq, bk, bv, bo) = if bias {
            (
                Some(gen(qd, dm)),
                Some(gen(kvd, dm)),
                Some(gen(kvd, dm)),
                Some(gen(dm, qd)),
            )
        } else {
            (None, None, None, None)
        };
        Ok(OwnedMhaWeights {
            wq,
            wk,
            wv,
            wo,
            bq,
            bk,
            bv,
            bo,
        })
    }

    /// Borrows as [`MhaWeights`] (layout [`WeightLayout::InOut`]).
    pub fn as_weights(&self) -> MhaWeights<'_> {
        MhaWeights {
            wq: &self.wq,
            wk: &self.wk,
            wv: &self.wv,
            wo: &self.wo,
            bq: self.bq.as_deref(),
            bk: self.bk.as_deref(),
            bv: self.bv.as_deref(),
            bo: self.bo.as_deref(),
            layout: WeightLayout::InOut,
        }
    }
}

/// A multi-head (GQA/MQA) attention layer with packed projection weights.
///
/// Inputs and outputs are row-major `[B, L, d_model]` slices; every call takes the
/// attention options ([`SdpaOptions`]: causal, masks `[B|1, Hq|1, Lq, Lk]`, padding
/// lengths, windows, ...), which apply to the attention step exactly as in
/// [`crate::sdpa`]. Note the attention's bottom-right alignment: with `kv_lengths` and
/// `causal`, query `i` of batch `b` sits at position `i + n_b − L`; for right-padded
/// batches, `causal` alone already gives the valid rows their correct result.
///
/// ```
/// use fastattn_attention::{MhaConfig, MultiHeadAttention, SdpaOptions};
/// let cfg = MhaConfig::new(16, 4).with_kv_heads(2);
/// let layer = MultiHeadAttention::random(cfg, true, 7)?;
/// let (b, l) = (2, 5);
/// let x = vec![0.1f32; b * l * 16];
/// let causal = SdpaOptions::new().with_causal(true);
/// let y = layer.forward(&x, b, l, &causal)?;
/// assert_eq!(y.len(), b * l * 16);
/// // The same layer decoding token by token through a KV cache.
/// let mut cache = layer.new_cache(b, 8)?;
/// let step0 = layer.forward_cached(&mut cache, &x[..16], 1, 1, &causal);
/// assert!(step0.is_err()); // the cache was made for batch 2
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    cfg: MhaConfig,
    qkv: Linear,
    out: Linear,
    /// Fused row width `W` and the column offsets of the K and V segments.
    width: usize,
    k_off: usize,
    v_off: usize,
    rope: Option<Rope>,
}

impl MultiHeadAttention {
    /// Builds the layer from caller-given weights: checks every shape, concatenates
    /// `wq | wk | wv` and packs it and `wo` once.
    ///
    /// # Errors
    /// [`AttnError::Shape`] naming the weight or bias whose length is wrong (and the
    /// expected shape); [`AttnError::HeadGroups`] if `Hq` is not a multiple of `Hkv`;
    /// [`AttnError::Option`] for an odd head dim with RoPE or a bad RoPE base;
    /// [`AttnError::Kernel`] if the CPU lacks the forced ISA.
    pub fn new<W: Element>(cfg: MhaConfig, w: MhaWeights<'_, W>) -> Result<Self> {
        cfg.validate()?;
        let isa = match cfg.isa {
            Some(i) => i.check()?,
            None => kernels::current_isa()?,
        };
        let (dm, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
        let shape = |d_in: usize, d_out: usize| match w.layout {
            WeightLayout::InOut => format!("[{d_in}, {d_out}]"),
            WeightLayout::OutIn => format!("[{d_out}, {d_in}]"),
        };
        for (name, m, d_in, d_out) in [
            ("wq", w.wq, dm, qd),
            ("wk", w.wk, dm, kvd),
            ("wv", w.wv, dm, kvd),
            ("wo", w.wo, qd, dm),
        ] {
            expect_len(name, m.len(), d_in * d_out, &shape(d_in, d_out))?;
        }
        for (name, b, n) in [
            ("bq", w.bq, qd),
            ("bk", w.bk, kvd),
            ("bv", w.bv, kvd),
            ("bo", w.bo, dm),
        ] {
            if let Some(b) = b {
                expect_len(name, b.len(), n, &format!("[{n}]"))?;
            }
        }
        let rope = cfg.rope.map(|r| Rope::new(cfg.head_dim, r)).transpose()?;
        // Segments start on panel boundaries so that Q alone and K|V alone can be computed
        // from the same packed matrix (cross-attention).
        let nr = kernels::gemm::tile_of(isa).1;
        let k_off = qd.next_multiple_of(nr);
        let v_off = k_off + kvd;
        let width = v_off + kvd;
        let mut fused = vec![W::default(); dm * width];
        for (m, off, d_out) in [(w.wq, 0, qd), (w.wk, k_off, kvd), (w.wv, v_off, kvd)] {
            for (i, row) in fused.chunks_exact_mut(width).enumerate() {
                let dst = &mut row[off..off + d_out];
                match w.layout {
                    WeightLayout::InOut => dst.copy_from_slice(&m[i * d_out..(i + 1) * d_out]),
                    WeightLayout::OutIn => {
                        for (j, x) in dst.iter_mut().enumerate() {
                            *x = m[j * dm + i];
                        }
                    }
                }
            }
        }
        let any_bias = w.bq.is_some() || w.bk.is_some() || w.bv.is_some();
        let fused_bias = any_bias.then(|| {
            let mut b = vec![0.0f32; width];
            for (src, off, n) in [(w.bq, 0, qd), (w.bk, k_off, kvd), (w.bv, v_off, kvd)] {
                if let Some(s) = src {
                    b[off..off + n].copy_from_slice(s);
                }
            }
            b
        });
        let qkv = Linear::new(
            isa,
            &fused,
            dm,
            width,
            WeightLayout::InOut,
            fused_bias.as_deref(),
        )?;
        let out = Linear::new(isa, w.wo, qd, dm, w.layout, w.bo)?;
        Ok(MultiHeadAttention {
            cfg,
            qkv,
            out,
            width,
            k_off,
            v_off,
            rope,
        })
    }

    /// A layer with seeded random weights ([`OwnedMhaWeights::random`]).
    ///
    /// # Errors
    /// As [`MultiHeadAttention::new`].
    pub fn random(cfg: MhaConfig, bias: bool, seed: u64) -> Result<Self> {
        let w = OwnedMhaWeights::random(&cfg, bias, seed)?;
        Self::new(cfg, w.as_weights())
    }

    /// [`Self::random`] with the weights rounded to `W` and stored so (the biases stay
    /// f32): the same seed gives the same weights as `random`, to `W`'s precision.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::new`].
    pub fn random_of<W: Element>(cfg: MhaConfig, bias: bool, seed: u64) -> Result<Self> {
        let w = OwnedMhaWeights::random(&cfg, bias, seed)?;
        let round = |x: &[f32]| x.iter().map(|&v| W::from_f32(v)).collect::<Vec<W>>();
        let (wq, wk, wv, wo) = (round(&w.wq), round(&w.wk), round(&w.wv), round(&w.wo));
        let mut mw = MhaWeights::new(&wq[..], &wk[..], &wv[..], &wo[..]);
        mw.bq = w.bq.as_deref();
        mw.bk = w.bk.as_deref();
        mw.bv = w.bv.as_deref();
        mw.bo = w.bo.as_deref();
        Self::new(cfg, mw)
    }

    /// The configuration.
    pub fn config(&self) -> &MhaConfig {
        &self.cfg
    }

    /// The fused Q|K|V projection (`[d_model, W]`, see [`Self::qkv_layout`]).
    pub fn qkv_projection(&self) -> &Linear {
        &self.qkv
    }

    /// The output projection (`[Hq·D, d_model]`).
    pub fn out_projection(&self) -> &Linear {
        &self.out
    }

    /// `[W, k_off, v_off]`: the fused QKV row width and the column offsets of the K and V
    /// segments (Q starts at 0). Head `h` of Q is columns `h·D .. (h+1)·D`, and likewise
    /// from `k_off` / `v_off` for K and V.
    pub fn qkv_layout(&self) -> [usize; 3] {
        [self.width, self.k_off, self.v_off]
    }

    /// An empty cache for this layer: `batch` sequences of up to `capacity` positions.
    ///
    /// # Errors
    /// [`AttnError::Overflow`] if the cache size overflows.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        KvCache::new(batch, self.cfg.n_kv_heads, self.cfg.head_dim, capacity)
    }

    /// [`Self::new_cache`] storing keys and values as `T` (f16 or bf16: half the bytes).
    ///
    /// # Errors
    /// As [`Self::new_cache`].
    pub fn new_cache_of<T: Element>(&self, batch: usize, capacity: usize) -> Result<KvCache<T>> {
        KvCache::zeros(batch, self.cfg.n_kv_heads, self.cfg.head_dim, capacity)
    }

    /// The element type the projection weights are stored in.
    pub fn weight_dtype(&self) -> kernels::DType {
        self.qkv.dtype()
    }

    /// Bytes of packed projection weights.
    pub fn weight_bytes(&self) -> usize {
        self.qkv.weight_bytes() + self.out.weight_bytes()
    }

    /// Self-attention over `x` (`[batch, seq, d_model]`), returning `[batch, seq, d_model]`.
    ///
    /// # Errors
    /// [`AttnError::Shape`] if `x` is not `batch·seq·d_model` long; option errors as in
    /// [`crate::sdpa`] (with `Lq = Lk = seq`), all before any work.
    pub fn forward(
        &self,
        x: &[f32],
        batch: usize,
        seq: usize,
        opts: &SdpaOptions<'_>,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; self.out_len(batch, seq)?];
        self.forward_into(x, batch, seq, &mut y, opts)?;
        Ok(y)
    }

    /// [`Self::forward`] into a caller-given `[batch, seq, d_model]` buffer.
    ///
    /// # Errors
    /// As [`Self::forward`], and [`AttnError::Shape`] if `y` has the wrong length.
    pub fn forward_into(
        &self,
        x: &[f32],
        batch: usize,
        seq: usize,
        y: &mut [f32],
        opts: &SdpaOptions<'_>,
    ) -> Result<()> {
        self.self_attention::<f32>(x, batch, seq, None, y, opts, None)
    }

    /// [`Self::forward`] that also returns the attention weights `[batch, Hq, seq, seq]`
    /// (row `i` of head `h`: how much token `i` looked at each token). Runs the
    /// materialised attention path.
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn forward_with_weights(
        &self,
        x: &[f32],
        batch: usize,
        seq: usize,
        opts: &SdpaOptions<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut y = vec![0.0f32; self.out_len(batch, seq)?];
        let mut w = vec![0.0f32; self.weights_len(batch, seq, seq)?];
        self.self_attention::<f32>(x, batch, seq, None, &mut y, opts, Some(&mut w))?;
        Ok((y, w))
    }

    /// Cross-attention: queries from `x` (`[batch, seq_q, d_model]`), keys and values from
    /// `ctx` (`[batch, seq_kv, d_model]`, e.g. an encoder's output). RoPE, if configured,
    /// is not applied (positions of two different sequences are not comparable).
    ///
    /// # Errors
    /// As [`Self::forward`], with `Lq = seq_q`, `Lk = seq_kv`.
    pub fn forward_cross(
        &self,
        x: &[f32],
        ctx: &[f32],
        batch: usize,
        seq_q: usize,
        seq_kv: usize,
        opts: &SdpaOptions<'_>,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; self.out_len(batch, seq_q)?];
        self.cross_attention(x, ctx, batch, seq_q, seq_kv, &mut y, opts, None)?;
        Ok(y)
    }

    /// [`Self::forward_cross`] that also returns the weights `[batch, Hq, seq_q, seq_kv]`.
    ///
    /// # Errors
    /// As [`Self::forward_cross`].
    pub fn forward_cross_with_weights(
        &self,
        x: &[f32],
        ctx: &[f32],
        batch: usize,
        seq_q: usize,
        seq_kv: usize,
        opts: &SdpaOptions<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut y = vec![0.0f32; self.out_len(batch, seq_q)?];
        let mut w = vec![0.0f32; self.weights_len(batch, seq_q, seq_kv)?];
        self.cross_attention(x, ctx, batch, seq_q, seq_kv, &mut y, opts, Some(&mut w))?;
        Ok((y, w))
    }

    /// Incremental self-attention: `x` holds `seq` new tokens per sequence
    /// (`[batch, seq, d_model]`), at positions `cache.len() .. cache.len() + seq`. Their
    /// keys and values are appended to `cache`, then they attend over everything cached
    /// (`Lq = seq`, `Lk = cache.len()` after the append). Use it once with the prompt
    /// (prefill), then with one token (or a few) per step.
    ///
    /// Pass `causal: true` for a decoder: with the attention's bottom-right alignment, new
    /// token `i` then sees the cached tokens and new tokens `0 ..= i`, so a step's output
    /// equals the matching row of a full causal [`Self::forward`] over the whole sequence.
    /// Masks, if any, are `[B|1, Hq|1, seq, cache.len() + seq]`.
    ///
    /// # Errors
    /// [`AttnError::CacheFull`] if the tokens do not fit; [`AttnError::Shape`] if the cache
    /// was made for another batch size or layer; as [`Self::forward`] otherwise. On error
    /// the cache is unchanged.
    pub fn forward_cached<T: Element>(
        &self,
        cache: &mut KvCache<T>,
        x: &[f32],
        batch: usize,
        seq: usize,
        opts: &SdpaOptions<'_>,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; self.out_len(batch, seq)?];
        self.forward_cached_into(cache, x, batch, seq, &mut y, opts)?;
        Ok(y)
    }

    /// [`Self::forward_cached`] into a caller-given `[batch, seq, d_model]` buffer.
    ///
    /// # Errors
    /// As [`Self::forward_cached`].
    pub fn forward_cached_into<T: Element>(
        &self,
        cache: &mut KvCache<T>,
        x: &[f32],
        batch: usize,
        seq: usize,
        y: &mut [f32],
        opts: &SdpaOptions<'_>,
    ) -> Result<()> {
        self.self_attention(x, batch, seq, Some(cache), y, opts, None)
    }

    fn out_len(&self, batch: usize, seq: usize) -> Result<usize> {
        batch
            .checked_mul(seq)
            .and_then(|r| r.checked_mul(self.cfg.d_model))
            .ok_or(AttnError::Overflow { what: "output" })
    }

    /// The attention call's checks, done before any projection: the options against the
    /// head shapes, and the length of the weights buffer if one is given.
    fn check_attention(
        &self,
        batch: usize,
        lq: usize,
        lk: usize,
        opts: &SdpaOptions<'_>,
        weights: Option<&[f32]>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (hq, hkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        Problem::new(
            [batch, hq, lq, hd],
            [batch, hkv, lk, hd],
            [batch, hkv, lk, hd],
            opts,
        )?;
        if let Some(w) = weights {
            expect_len(
                "weights",
                w.len(),
                self.weights_len(batch, lq, lk)?,
                "B·Hq·Lq·Lk",
            )?;
        }
        Ok(())
    }

    fn weights_len(&self, batch: usize, lq: usize, lk: usize) -> Result<usize> {
        [batch, self.cfg.n_heads, lq, lk]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or(AttnError::Overflow { what: "weights" })
    }

    /// Checks `x` / `y` lengths for `rows` tokens.
    fn check_io(&self, what: &str, x_len: usize, rows: usize) -> Result<()> {
        let dm = self.cfg.d_model;
        let n = rows
            .checked_mul(dm)
            .ok_or(AttnError::Overflow { what: "input" })?;
        expect_len(what, x_len, n, &format!("tokens·d_model = {rows}·{dm}"))
    }

    /// Self-attention, with or without a cache.
    #[allow(clippy::too_many_arguments)]
    fn self_attention<T: Element>(
        &self,
        x: &[f32],
        batch: usize,
        seq: usize,
        cache: Option<&mut KvCache<T>>,
        y: &mut [f32],
        opts: &SdpaOptions<'_>,
        weights: Option<&mut [f32]>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (hq, hkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let rows = batch
            .checked_mul(seq)
            .ok_or(AttnError::Overflow { what: "input" })?;
        self.check_io("input", x.len(), rows)?;
        self.check_io("output", y.len(), rows)?;
        let pos0 = match &cache {
            Some(cache) => {
                cache.check_layer(batch, hkv, hd)?;
                cache.check_room(seq)?;
                cache.len()
            }
            None => 0,
        };
        let lk = pos0 + seq;
        self.check_attention(batch, seq, lk, opts, weights.as_deref())?;
        if rows == 0 {
            return Ok(());
        }
        let (w, k_off, v_off) = (self.width, self.k_off, self.v_off);
        let mut qkv = take_buf(rows * w);
        let mut attn = take_buf(rows * hq * hd);
        let r = (|| -> Result<()> {
            let rope = self.rope.as_ref();
            let rope_rows = |r0: usize, block: &mut [f32]| {
                if let Some(rope) = rope {
                    let mut scratch = Vec::new();
                    for (i, row) in block.chunks_exact_mut(w).enumerate() {
                        let pos = pos0 + (r0 + i) % seq;
                        rope.apply_heads(&mut row[..hq * hd], pos, &mut scratch);
                        rope.apply_heads(&mut row[k_off..k_off + hkv * hd], pos, &mut scratch);
                    }
                }
            };
            let epilogue: Option<Epilogue<'_>> = rope.map(|_| &rope_rows as _);
            self.qkv
                .forward_cols(x, rows, 0..w, &mut qkv, opts.parallelism, epilogue)?;
            let st = [seq * w, hd, w, 1];
            let q = TensorRef::new(&qkv, [batch, hq, seq, hd], st)?;
            let k_new = TensorRef::new(&qkv[k_off..], [batch, hkv, seq, hd], st)?;
            let v_new = TensorRef::new(&qkv[v_off..], [batch, hkv, seq, hd], st)?;
            let out = TensorMut::from_blhd(&mut attn, [batch, hq, seq, hd])?;
            let extras = SdpaOutputs::default()
                .with_weights(
                    weights
                        .map(|wb| TensorMut::contiguous(wb, [batch, hq, seq, lk]))
                        .transpose()?,
                )
                .with_lse(None);
            match cache {
                Some(cache) => {
                    let old = cache.len();
                    cache.append(k_new, v_new)?;
                    let r = sdpa_into(q, cache.keys(), cache.values(), out, opts, extras);
                    if r.is_err() {
                        cache.truncate(old);
                    }
                    r?;
                }
                None => sdpa_into(q, k_new, v_new, out, opts, extras)?,
            }
            self.out
                .forward_cols(&attn, rows, 0..c.d_model, y, opts.parallelism, None)
        })();
        give_buf(attn);
        give_buf(qkv);
        r
    }

    /// Cross-attention: Q from `x`, K|V from `ctx`, each from its segment of the fused
    /// packed weight.
    #[allow(clippy::too_many_arguments)]
    fn cross_attention(
        &self,
        x: &[f32],
        ctx: &[f32],
        batch: usize,
        seq_q: usize,
        seq_kv: usize,
        y: &mut [f32],
        opts: &SdpaOptions<'_>,
        weights: Option<&mut [f32]>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (hq, hkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let rows_q = batch
            .checked_mul(seq_q)
            .ok_or(AttnError::Overflow { what: "input" })?;
        let rows_k = batch
            .checked_mul(seq_kv)
            .ok_or(AttnError::Overflow { what: "context" })?;
        self.check_io("input", x.len(), rows_q)?;
        self.check_io("context", ctx.len(), rows_k)?;
        self.check_io("output", y.len(), rows_q)?;
        self.check_attention(batch, seq_q, seq_kv, opts, weights.as_deref())?;
        if rows_q == 0 {
            return Ok(());
        }
        let (qd, wkv) = (c.q_dim(), self.width - self.k_off);
        let mut qb = take_buf(rows_q * qd);
        let mut kvb = take_buf(rows_k * wkv);
        let mut attn = take_buf(rows_q * qd);
        let r = (|| -> Result<()> {
            let par = opts.parallelism;
            self.qkv
                .forward_cols(x, rows_q, 0..qd, &mut qb, par, None)?;
            self.qkv
                .forward_cols(ctx, rows_k, self.k_off..self.width, &mut kvb, par, None)?;
            let st = [seq_kv * wkv, hd, wkv, 1];
            let q = TensorRef::from_blhd(&qb, [batch, hq, seq_q, hd])?;
            let k = TensorRef::new(&kvb, [batch, hkv, seq_kv, hd], st)?;
            let v = TensorRef::new(
                &kvb[self.v_off - self.k_off..],
                [batch, hkv, seq_kv, hd],
                st,
            )?;
            let out = TensorMut::from_blhd(&mut attn, [batch, hq, seq_q, hd])?;
            let extras = SdpaOutputs::default()
                .with_weights(
                    weights
                        .map(|wb| TensorMut::contiguous(wb, [batch, hq, seq_q, seq_kv]))
                        .transpose()?,
                )
                .with_lse(None);
            sdpa_into(q, k, v, out, opts, extras)?;
            self.out
                .forward_cols(&attn, rows_q, 0..c.d_model, y, par, None)
        })();
        give_buf(attn);
        give_buf(kvb);
        give_buf(qb);
        r
    }
}

thread_local! {
    /// Reused intermediate buffers (QKV, attention output), so a warm layer does not
    /// allocate, zero or page-fault its scratch on every call.
    static BUFS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values from this thread's pool (contents unspecified: every caller
/// overwrites it completely).
fn take_buf(len: usize) -> Vec<f32> {
    let mut v = BUFS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    } else {
        v.truncate(len);
    }
    v
}

/// Returns a buffer to the pool (at most four are kept).
fn give_buf(v: Vec<f32>) {
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < 4 {
            b.push(v);
        }
    });
}
