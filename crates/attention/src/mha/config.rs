//! [`MhaConfig`]: the sizes and options of a layer, and their checks.

use crate::error::{AttnError, Result};
use crate::rope::RopeConfig;
use kernels::Isa;

/// Sizes and options of a [`MultiHeadAttention`](super::MultiHeadAttention) layer.
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
    /// [`SdpaOptions::isa`](crate::SdpaOptions::isa).
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

    pub(super) fn validate(&self) -> Result<()> {
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
