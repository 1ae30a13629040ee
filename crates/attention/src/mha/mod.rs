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

mod config;
mod forward;
mod scratch;
mod weights;

pub use config::MhaConfig;
pub use weights::{MhaWeights, OwnedMhaWeights};

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::linear::{expect_len, Linear, WeightLayout};
use crate::rope::Rope;
use kernels::Element;

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
///
/// [`SdpaOptions`]: crate::SdpaOptions
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
    ///
    /// [`AttnError::Shape`]: crate::AttnError::Shape
    /// [`AttnError::HeadGroups`]: crate::AttnError::HeadGroups
    /// [`AttnError::Option`]: crate::AttnError::Option
    /// [`AttnError::Kernel`]: crate::AttnError::Kernel
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
    /// [`AttnError::Overflow`](crate::AttnError::Overflow) if the cache size overflows.
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

    /// An empty 8-bit cache for this layer: int8, fp8 e4m3 or e5m2 codes with a scale per
    /// token and head (about a quarter of an f32 cache's bytes at D = 128, scales
    /// counted). [`Self::forward_cached`] takes it as it takes a [`KvCache`].
    ///
    /// ```
    /// use fastattn_attention::{MhaConfig, MultiHeadAttention, SdpaOptions};
    /// let layer = MultiHeadAttention::random(MhaConfig::new(32, 4).with_kv_heads(2), false, 7)?;
    /// let mut cache = layer.new_quant_cache::<i8>(1, 16)?;
    /// let x = vec![0.1f32; 3 * 32];
    /// let y = layer.forward_cached(&mut cache, &x, 1, 3, &SdpaOptions::new().with_causal(true))?;
    /// assert_eq!((y.len(), cache.len()), (3 * 32, 3));
    /// # Ok::<(), fastattn_attention::AttnError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Self::new_cache`].
    pub fn new_quant_cache<C: kernels::quant::Code>(
        &self,
        batch: usize,
        capacity: usize,
    ) -> Result<crate::quant_cache::QuantKvCache<C>> {
        crate::quant_cache::QuantKvCache::new(
            batch,
            self.cfg.n_kv_heads,
            self.cfg.head_dim,
            capacity,
        )
    }

    /// The element type the projection weights are stored in.
    pub fn weight_dtype(&self) -> kernels::DType {
        self.qkv.dtype()
    }

    /// Bytes of packed projection weights.
    pub fn weight_bytes(&self) -> usize {
        self.qkv.weight_bytes() + self.out.weight_bytes()
    }
}
