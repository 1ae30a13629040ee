//! What the multi-head layer needs of a KV cache ([`LayerCache`]), so that
//! [`MultiHeadAttention::forward_cached`](crate::MultiHeadAttention::forward_cached) runs
//! over a float [`KvCache`] or an 8-bit [`QuantKvCache`] alike.

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::quant::KvRef;
use crate::quant_cache::QuantKvCache;
use crate::tensor::TensorRef;
use kernels::Element;

mod sealed {
    pub trait Sealed {}
}

/// A KV cache a [`MultiHeadAttention`](crate::MultiHeadAttention) layer appends to and
/// attends over: [`KvCache<T>`] (f32, f16, bf16) or [`QuantKvCache<C>`] (int8, fp8). Sealed.
pub trait LayerCache: sealed::Sealed {
    /// Positions cached.
    fn cached(&self) -> usize;
    /// `Ok` when the cache fits a call with `batch` sequences of a layer with `n_kv_heads`
    /// heads of `head_dim`, and `adding` more positions fit.
    ///
    /// # Errors
    /// [`AttnError::Shape`](crate::AttnError::Shape) or [`AttnError::CacheFull`](crate::AttnError::CacheFull).
    fn check_call(
        &self,
        batch: usize,
        n_kv_heads: usize,
        head_dim: usize,
        adding: usize,
    ) -> Result<()>;
    /// Appends the layer's new K and V rows (`[B, Hkv, n, D]` f32 views).
    ///
    /// # Errors
    /// As the cache's own `append`; the cache is unchanged on error.
    fn append_f32(&mut self, k: TensorRef<'_, f32>, v: TensorRef<'_, f32>) -> Result<()>;
    /// Keeps the first `len` positions.
    fn rewind(&mut self, len: usize);
    /// The cached keys and values, as attention arguments.
    fn kv(&self) -> (KvRef<'_>, KvRef<'_>);
}

impl<T: Element> sealed::Sealed for KvCache<T> {}

impl<T: Element> LayerCache for KvCache<T> {
    fn cached(&self) -> usize {
        self.len()
    }
    fn check_call(&self, batch: usize, hkv: usize, hd: usize, adding: usize) -> Result<()> {
        self.check_layer(batch, hkv, hd)?;
        self.check_room(adding)
    }
    fn append_f32(&mut self, k: TensorRef<'_, f32>, v: TensorRef<'_, f32>) -> Result<()> {
        self.append(k, v)
    }
    fn rewind(&mut self, len: usize) {
        self.truncate(len)
    }
    fn kv(&self) -> (KvRef<'_>, KvRef<'_>) {
        (self.keys().into(), self.values().into())
    }
}

impl<C: kernels::quant::Code> sealed::Sealed for QuantKvCache<C> {}

impl<C: kernels::quant::Code> LayerCache for QuantKvCache<C> {
    fn cached(&self) -> usize {
        self.len()
    }
    fn check_call(&self, batch: usize, hkv: usize, hd: usize, adding: usize) -> Result<()> {
        QuantKvCache::check_call(self, batch, hkv, hd, adding)
    }
    fn append_f32(&mut self, k: TensorRef<'_, f32>, v: TensorRef<'_, f32>) -> Result<()> {
        self.append(k, v)
    }
    fn rewind(&mut self, len: usize) {
        self.truncate(len)
    }
    fn kv(&self) -> (KvRef<'_>, KvRef<'_>) {
        (self.keys().into(), self.values().into())
    }
}
