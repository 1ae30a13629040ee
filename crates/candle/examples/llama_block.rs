//! A small Llama-style attention block in candle, decoding greedily with fastattn's fused
//! attention and with candle's matmul–softmax attention, which must give the same tokens.
//!
//! The block: token embedding → RMSNorm → Q/K/V projections (GQA: 8 query heads, 2
//! key/value heads) → rotary embeddings → a KV cache grown with `Tensor::cat` → attention →
//! output projection and residual → RMSNorm → LM head. Weights are random from a seeded
//! RNG. The prompt is prefilled in one call (causal attention), then each new token is one
//! decode step (`Lq = 1` against the cache).
//!
//! ```text
//! cargo run -p fastattn-candle --example llama_block
//! ```
//!
//! It prints both token lists and exits with status 1 if they differ. The test
//! `tests/llama_block.rs` runs the same code.

use candle_core::{DType, Device, Result, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which attention the block runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attn {
    /// candle's matmul → softmax → matmul (`fastattn_candle::reference`).
    Candle,
    /// `fastattn_candle::sdpa`, reading the strided Q and the cache in place.
    Fastattn,
}

/// Sizes of the block.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA groups of `heads / kv_heads`).
    pub kv_heads: usize,
    /// Head dimension (even, for RoPE).
    pub head_dim: usize,
    /// Longest sequence the RoPE tables cover.
    pub max_pos: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vocab: 96,
            hidden: 64,
            heads: 8,
            kv_heads: 2,
            head_dim: 16,
            max_pos: 64,
        }
    }
}

/// The block's weights and RoPE tables (f32, CPU).
pub struct Block {
    cfg: Config,
    embed: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of the tokens seen so far, `[1, Hkv, L, head_dim]` each.
#[derive(Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let cat = |old: &Option<Tensor>, new: &Tensor| match old {
            Some(o) => Tensor::cat(&[o, new], 2),
            None => Ok(new.clone()),
        };
        let (k, v) = (cat(&self.k, k)?, cat(&self.v, v)?);
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

fn random(rng: &mut StdRng, shape: (usize, usize), scale: f32) -> Result<Tensor> {
    let data: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

fn rms_norm(x: &Tensor) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + 1e-5)?.sqrt()?)
}

impl Block {
    /// A block with random weights from `seed`.
    pub fn new(cfg: Config, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let s = 1.0 / (h as f32).sqrt();
        let half = hd / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let angles: Vec<f32> = (0..cfg.max_pos)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (cfg.max_pos, half), &Device::Cpu)?;
        Ok(Block {
            embed: random(&mut rng, (cfg.vocab, h), 1.0)?,
            wq: random(&mut rng, (h, cfg.heads * hd), s)?,
            wk: random(&mut rng, (h, cfg.kv_heads * hd), s)?,
            wv: random(&mut rng, (h, cfg.kv_heads * hd), s)?,
            wo: random(&mut rng, (cfg.heads * hd, h), s)?,
            lm_head: random(&mut rng, (h, cfg.vocab), s)?,
            cos: angles.cos()?,
            sin: angles.sin()?,
            cfg,
        })
    }

    /// Rotary embedding (rotate-half form) of `x: [1, H, L, hd]` at positions `pos..`.
    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, _, l, hd) = x.dims4()?;
        let half = hd / 2;
        let cos = self.cos.narrow(0, pos, l)?;
        let sin = self.sin.narrow(0, pos, l)?;
        let (cos, sin) = (
            Tensor::cat(&[&cos, &cos], 1)?,
            Tensor::cat(&[&sin, &sin], 1)?,
        );
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }

    /// Runs `tokens` at positions `pos..` through the block, appending to `cache`, and
    /// returns the logits of the last token, `[vocab]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        pos: usize,
        cache: &mut KvCache,
        attn: Attn,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let l = tokens.len();
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let x = self.embed.index_select(&ids, 0)?; // [L, hidden]
        let h = rms_norm(&x)?;
        // [L, H·hd] → [1, L, H, hd] → [1, H, L, hd]: a transposed view, not contiguous.
        let heads = |w: &Tensor, n: usize| -> Result<Tensor> {
            h.matmul(w)?.reshape((1, l, n, c.head_dim))?.transpose(1, 2)
        };
        let q = self.rope(&heads(&self.wq, c.heads)?, pos)?;
        let k = self.rope(&heads(&self.wk, c.kv_heads)?, pos)?;
        let v = heads(&self.wv, c.kv_heads)?;
        let (k, v) = cache.append(&k, &v)?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        // Causal, aligned to the bottom right: the prompt sees its prefix, a decode step
        // (L = 1) sees the whole cache.
        let o = match attn {
            Attn::Candle => {
                fastattn_candle::reference::attention_matmul_softmax(&q, &k, &v, None, scale, true)?
            }
            Attn::Fastattn => fastattn_candle::sdpa(
                &q,
                &k,
                &v,
                &fastattn_candle::SdpaOptions::new()
                    .with_scale(scale)
                    .with_causal(true),
            )?,
        };
        let o = o.transpose(1, 2)?.reshape((l, c.heads * c.head_dim))?;
        let x = (x + o.matmul(&self.wo)?)?;
        let logits = rms_norm(&x)?.matmul(&self.lm_head)?;
        logits.get(l - 1)
    }

    /// Greedy decoding: the prompt in one prefill step, then `n` tokens one by one.
    /// Returns the new tokens and the logits that chose them.
    pub fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        attn: Attn,
    ) -> Result<(Vec<u32>, Vec<Tensor>)> {
        let mut cache = KvCache::default();
        let mut logits = self.forward(prompt, 0, &mut cache, attn)?;
        let (mut out, mut all) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for step in 0..n {
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            out.push(next);
            all.push(logits.to_dtype(DType::F32)?);
            logits = self.forward(&[next], prompt.len() + step, &mut cache, attn)?;
        }
        Ok((out, all))
    }
}

fn main() -> Result<()> {
    let block = Block::new(Config::default(), 20261206)?;
    let prompt = [3u32, 14, 15, 92, 65, 35, 89];
    let (plain, _) = block.generate(&prompt, 12, Attn::Candle)?;
    let (fused, _) = block.generate(&prompt, 12, Attn::Fastattn)?;
    println!("prompt:                {prompt:?}");
    println!("candle attention:      {plain:?}");
    println!("fastattn_candle::sdpa: {fused:?}");
    if plain != fused {
        eprintln!("the token lists differ");
        std::process::exit(1);
    }
    println!("same tokens");
    Ok(())
}
