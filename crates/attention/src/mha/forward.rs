//! The forward passes of [`MultiHeadAttention`]: self-attention (with or without a
//! [`KvCache`]) and cross-attention, their up-front checks, and the projection → attention
//! → projection pipeline.

use super::scratch::{give_buf, take_buf};
use super::MultiHeadAttention;
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCache;
use crate::layer_cache::LayerCache;
use crate::linear::{expect_len, Epilogue};
use crate::options::{Problem, SdpaOptions};
use crate::tensor::{TensorMut, TensorRef};
use crate::{sdpa_into, sdpa_kv_into, SdpaOutputs};

impl MultiHeadAttention {
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
        self.self_attention::<KvCache>(x, batch, seq, None, y, opts, None)
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
        self.self_attention::<KvCache>(x, batch, seq, None, &mut y, opts, Some(&mut w))?;
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
    pub fn forward_cached<C: LayerCache>(
        &self,
        cache: &mut C,
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
    pub fn forward_cached_into<C: LayerCache>(
        &self,
        cache: &mut C,
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
    fn self_attention<C: LayerCache>(
        &self,
        x: &[f32],
        batch: usize,
        seq: usize,
        cache: Option<&mut C>,
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
                cache.check_call(batch, hkv, hd, seq)?;
                cache.cached()
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
                    let old = cache.cached();
                    cache.append_f32(k_new, v_new)?;
                    let (k, v) = cache.kv();
                    let r = sdpa_kv_into(q.into(), k, v, out.into(), opts, extras);
                    if r.is_err() {
                        cache.rewind(old);
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
