//! A fixed-capacity key/value cache for incremental decoding.
//!
//! One [`KvCache`] belongs to one attention layer. It holds keys and values as
//! `[B, Hkv, capacity, D]` (each head's keys contiguous, as the attention's packing reads
//! them) and a length `len` shared by the whole batch: positions `0 .. len` are valid.
//! Appending more than the remaining capacity is an error ([`AttnError::CacheFull`]) that
//! leaves the cache unchanged; nothing is ever evicted or overwritten silently.
//!
//! [`crate::MultiHeadAttention::forward_cached`] drives it: a prefill call appends the
//! prompt's keys and values, each decode step appends one (or a few) tokens and attends
//! over everything cached.

use crate::error::{AttnError, Result};
use crate::tensor::{convert_row, TensorRef};
use kernels::{DType, Element, Isa};

/// Keys and values of one layer, `[B, Hkv, capacity, D]` each, the first `len` positions
/// valid, stored as `T`: f32 (the default), or f16 / bf16, which hold the same tokens in
/// half the bytes ([`KvCache::bytes`]). Appended rows are converted once, when they are
/// appended (rounded to nearest, ties to even); attention then reads the 16-bit rows
/// directly.
///
/// ```
/// use fastattn_attention::{KvCache, TensorRef};
/// let mut cache = KvCache::new(1, 2, 4, 8)?; // batch 1, 2 heads, head dim 4, 8 positions
/// let kv = vec![1.0f32; 2 * 3 * 4];
/// let t = TensorRef::contiguous(&kv, [1, 2, 3, 4])?;
/// cache.append(t, t)?;
/// assert_eq!((cache.len(), cache.keys().dims()), (3, [1, 2, 3, 4]));
/// let too_many = vec![0.0f32; 2 * 6 * 4];
/// let t6 = TensorRef::contiguous(&too_many, [1, 2, 6, 4])?;
/// assert!(cache.append(t6, t6).is_err()); // 3 + 6 > 8
/// assert_eq!(cache.len(), 3); // unchanged
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// A bf16 cache, fed f32 rows:
///
/// ```
/// use fastattn_attention::{KvCache, TensorRef};
/// use kernels::bf16;
/// let mut c16 = KvCache::<bf16>::zeros(1, 2, 4, 8)?;
/// let c32 = KvCache::new(1, 2, 4, 8)?;
/// assert_eq!(2 * c16.bytes(), c32.bytes());
/// let kv = vec![0.5f32; 2 * 3 * 4];
/// let t = TensorRef::contiguous(&kv, [1, 2, 3, 4])?;
/// c16.append(t, t)?;
/// assert_eq!(c16.keys().get(0, 1, 2, 3), bf16::from_f32(0.5));
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct KvCache<T: Element = f32> {
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    k: Vec<T>,
    v: Vec<T>,
}

impl KvCache<f32> {
    /// An empty f32 cache with room for `capacity` positions (allocated now, zero-filled).
    /// [`KvCache::zeros`] makes one of any element type.
    ///
    /// # Errors
    /// [`AttnError::Overflow`] if `B·Hkv·capacity·D` overflows.
    pub fn new(batch: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Result<Self> {
        Self::zeros(batch, n_kv_heads, head_dim, capacity)
    }
}

impl<T: Element> KvCache<T> {
    /// An empty cache of `T` with room for `capacity` positions (allocated now,
    /// zero-filled).
    ///
    /// # Errors
    /// [`AttnError::Overflow`] if `B·Hkv·capacity·D` overflows.
    pub fn zeros(
        batch: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self> {
        let n = [batch, n_kv_heads, capacity, head_dim]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .filter(|&n| n <= isize::MAX as usize / 8)
            .ok_or(AttnError::Overflow { what: "KV cache" })?;
        Ok(KvCache {
            batch,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: vec![T::default(); n],
            v: vec![T::default(); n],
        })
    }

    /// The element type of the stored keys and values.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }
    /// Bytes the keys and values occupy (the whole capacity, allocated up front).
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * std::mem::size_of::<T>()
    }
    /// Batch size `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Key/value heads `Hkv`.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    /// Head dimension `D`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Positions cached (the position of the next token to append).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }
    /// Forgets everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Keeps the first `len` positions (no-op if `len ≥ self.len()`), e.g. to rewind after
    /// a rejected speculative step.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Element strides of the `[B, Hkv, ·, D]` storage.
    fn strides(&self) -> [usize; 4] {
        let hd = self.head_dim;
        [
            self.n_kv_heads * self.capacity * hd,
            self.capacity * hd,
            hd,
            1,
        ]
    }

    /// The cached keys, `[B, Hkv, len, D]`.
    pub fn keys(&self) -> TensorRef<'_, T> {
        self.view(&self.k)
    }

    /// The cached values, `[B, Hkv, len, D]`.
    pub fn values(&self) -> TensorRef<'_, T> {
        self.view(&self.v)
    }

    fn view<'a>(&self, data: &'a [T]) -> TensorRef<'a, T> {
        let dims = [self.batch, self.n_kv_heads, self.len, self.head_dim];
        TensorRef::new(data, dims, self.strides())
            .expect("invariant: len ≤ capacity, so the view fits the storage")
    }

    /// Checks that the cache fits a layer with `n_kv_heads` heads of `head_dim` and a call
    /// with batch `batch`.
    pub(crate) fn check_layer(
        &self,
        batch: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let (have, want) = (
            [self.batch, self.n_kv_heads, self.head_dim],
            [batch, n_kv_heads, head_dim],
        );
        if have != want {
            return Err(AttnError::Shape {
                what: format!(
                    "KV cache is for [batch, kv heads, head dim] = {have:?}, the call needs {want:?}"
                ),
            });
        }
        Ok(())
    }

    /// [`AttnError::CacheFull`] unless `adding` more positions fit.
    pub(crate) fn check_room(&self, adding: usize) -> Result<()> {
        if adding > self.remaining() {
            return Err(AttnError::CacheFull {
                capacity: self.capacity,
                len: self.len,
                adding,
            });
        }
        Ok(())
    }

    /// Appends `n` positions: `k` and `v` are `[B, Hkv, n, D]` views (any strides, any
    /// element type: converted to `T` here, rounded to nearest, ties to even).
    ///
    /// # Errors
    /// [`AttnError::Shape`] if the views do not match the cache's `B`, `Hkv`, `D` or each
    /// other; [`AttnError::CacheFull`] if `len + n > capacity`. The cache is unchanged on
    /// error.
    pub fn append<K: Element, V: Element>(
        &mut self,
        k: TensorRef<'_, K>,
        v: TensorRef<'_, V>,
    ) -> Result<()> {
        let [b, h, n, d] = crate::kv_cache::appended_dims(&k, &v)?;
        self.check_layer(b, h, d)?;
        self.check_room(n)?;
        if b * h * n * d == 0 {
            self.len += n;
            return Ok(());
        }
        let (st, len) = (self.strides(), self.len);
        append_rows(&mut self.k, st, len, k)?;
        append_rows(&mut self.v, st, len, v)?;
        self.len += n;
        Ok(())
    }
}

/// The dims `[B, Hkv, n, D]` of K and V rows to append, which must agree.
pub(crate) fn appended_dims<K: Copy, V: Copy>(
    k: &TensorRef<'_, K>,
    v: &TensorRef<'_, V>,
) -> Result<[usize; 4]> {
    if v.dims() != k.dims() {
        return Err(AttnError::Shape {
            what: format!("appended K is {:?} but V is {:?}", k.dims(), v.dims()),
        });
    }
    Ok(k.dims())
}

/// Writes the rows of `src` (`[B, H, n, D]`) at positions `len ..` of `dst` (strides
/// `st`), converted to `T` (the conversions are exact or correctly rounded whatever the
/// variant, so any supported one gives the same bits).
fn append_rows<T: Element, S: Element>(
    dst: &mut [T],
    st: [usize; 4],
    len: usize,
    src: TensorRef<'_, S>,
) -> Result<()> {
    let [b, h, n, d] = src.dims();
    let ss = src.strides();
    let isa = kernels::current_isa().unwrap_or(Isa::Scalar);
    for bb in 0..b {
        for hh in 0..h {
            for i in 0..n {
                let o = bb * st[0] + hh * st[1] + (len + i) * st[2];
                let s0 = src.offset(bb, hh, i, 0);
                convert_row(isa, src.data(), s0, ss[3], dst, o, 1, d)?;
            }
        }
    }
    Ok(())
}
