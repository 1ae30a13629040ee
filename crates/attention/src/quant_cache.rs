//! 8-bit KV caches: [`QuantKvCache`], a dense cache for incremental decoding, and
//! [`paged_kv_write_quant`], which writes new rows into a paged 8-bit cache. Both quantise
//! on write (round to nearest even, saturating; [`kernels::quant::quantize_row`]) and
//! refuse NaN and infinite input before anything is written.
//!
//! Where the scales come from:
//! - **per row** (one per token and KV head: int8's layout, allowed for fp8 too): each
//!   row's scale is computed as it is written, `amax / C::MAX`;
//! - **per head or per tensor** (fp8's layout, vLLM's `k_scale`/`v_scale`): the caller's
//!   scales; a [`QuantKvCache`] built without them computes one per head from the rows of
//!   its first append (so a cache filled in one call uses its whole range) and keeps it:
//!   later rows beyond it saturate.

use crate::error::{AttnError, Result};
use crate::quant::QuantTensor;
use crate::tensor::{convert_row, TensorMut, TensorRef};
use kernels::quant::{quantize_row, Code};
use kernels::{Element, Isa};

/// How a [`QuantKvCache`] keeps its scales.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// One per token and head, `[B, Hkv, capacity]`.
    Row,
    /// One per head (`[Hkv]`), set (by the caller or the first append) or not yet.
    Head { set: bool },
}

/// Keys and values of one layer as 8-bit codes (`i8`, `F8E4M3` or `F8E5M2`),
/// `[B, Hkv, capacity, D]`, with their scales; the first `len` positions valid. It holds
/// a token in a quarter of an f32 cache's bytes plus its scales ([`bytes`](Self::bytes)),
/// and attention reads the codes in place ([`keys`](Self::keys) and
/// [`values`](Self::values) are [`QuantTensor`]s for [`crate::sdpa_kv_into`]).
///
/// ```
/// use fastattn_attention::{quant_cache::QuantKvCache, sdpa_kv_into, SdpaOptions, SdpaOutputs,
///                          TensorMut, TensorRef};
/// let (hkv, d) = (2, 4);
/// let mut cache = QuantKvCache::<i8>::new(1, hkv, d, 16)?; // a scale per token and head
/// let kv: Vec<f32> = (0..hkv * 3 * d).map(|i| i as f32 * 0.1).collect();
/// let t = TensorRef::contiguous(&kv, [1, hkv, 3, d])?;
/// cache.append(t, t)?;
/// // Codes and scales: at most half an f32 cache even at D = 4 (a quarter plus 4/D at large D).
/// assert!(2 * cache.bytes() <= fastattn_attention::KvCache::new(1, hkv, d, 16)?.bytes());
/// let q = vec![0.5f32; hkv * d];
/// let mut out = vec![0.0f32; hkv * d];
/// sdpa_kv_into(TensorRef::contiguous(&q, [1, hkv, 1, d])?.into(), cache.keys().into(),
///              cache.values().into(), TensorMut::contiguous(&mut out, [1, hkv, 1, d])?.into(),
///              &SdpaOptions::new(), SdpaOutputs::default())?;
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantKvCache<C: Code> {
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    k: Vec<C>,
    v: Vec<C>,
    k_scales: Vec<f32>,
    v_scales: Vec<f32>,
    mode: Mode,
}

/// `B·Hkv·capacity·D` and `B·Hkv·capacity`, checked.
fn sizes(batch: usize, hkv: usize, d: usize, cap: usize) -> Result<(usize, usize)> {
    let rows = batch
        .checked_mul(hkv)
        .and_then(|x| x.checked_mul(cap))
        .ok_or(AttnError::Overflow { what: "KV cache" })?;
    let n = rows
        .checked_mul(d)
        .ok_or(AttnError::Overflow { what: "KV cache" })?;
    Ok((n, rows))
}

/// Checks caller scales (1 or `hkv` values, finite and positive) and widens them to `hkv`.
fn head_scales(what: &str, s: &[f32], hkv: usize) -> Result<Vec<f32>> {
    if s.len() != 1 && s.len() != hkv {
        return Err(AttnError::Scale {
            what: format!(
                "{what}: 1 or {hkv} (one per KV head) scales expected, got {}",
                s.len()
            ),
        });
    }
    if let Some(x) = s.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(AttnError::Scale {
            what: format!("{what}: scale {x} is not finite and positive"),
        });
    }
    Ok((0..hkv)
        .map(|h| s[if s.len() == 1 { 0 } else { h }])
        .collect())
}

impl<C: Code> QuantKvCache<C> {
    /// An empty cache with a scale per token and head, computed as rows are appended
    /// (int8's layout).
    ///
    /// # Errors
    /// [`AttnError::Overflow`] if `B·Hkv·capacity·D` overflows.
    pub fn new(batch: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Result<Self> {
        let (n, rows) = sizes(batch, n_kv_heads, head_dim, capacity)?;
        Ok(QuantKvCache {
            batch,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: vec![C::default(); n],
            v: vec![C::default(); n],
            k_scales: vec![1.0; rows],
            v_scales: vec![1.0; rows],
            mode: Mode::Row,
        })
    }

    /// An empty cache with one scale per KV head for K and one for V (fp8's layout): the
    /// caller's (`Some`: 1 value for the tensor or `n_kv_heads`), or, for `None`, computed
    /// from the rows of the first append (`amax / C::MAX` per head) and kept.
    ///
    /// # Errors
    /// [`AttnError::Scale`] for a wrong count or a scale that is not finite and positive;
    /// [`AttnError::Overflow`] as [`new`](Self::new).
    pub fn per_head(
        batch: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        k_scale: Option<&[f32]>,
        v_scale: Option<&[f32]>,
    ) -> Result<Self> {
        let (n, _) = sizes(batch, n_kv_heads, head_dim, capacity)?;
        let given = |what, s: Option<&[f32]>| match s {
            Some(s) => head_scales(what, s, n_kv_heads),
            None => Ok(vec![1.0; n_kv_heads]),
        };
        let (ks, vs) = (given("k_scale", k_scale)?, given("v_scale", v_scale)?);
        if k_scale.is_some() != v_scale.is_some() {
            return Err(AttnError::Scale {
                what: "give both k_scale and v_scale, or neither".into(),
            });
        }
        Ok(QuantKvCache {
            batch,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: vec![C::default(); n],
            v: vec![C::default(); n],
            k_scales: ks,
            v_scales: vs,
            mode: Mode::Head {
                set: k_scale.is_some(),
            },
        })
    }

    /// Bytes held: the codes and the scales, of K and V.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() + 4 * (self.k_scales.len() + self.v_scales.len())
    }
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `[batch, kv heads, head dim]` the cache was made for.
    pub fn layout(&self) -> [usize; 3] {
        [self.batch, self.n_kv_heads, self.head_dim]
    }
    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position (a per-head scale computed from the first append is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Keeps the first `len` positions (no-op if `len ≥ self.len()`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// The per-head K and V scales, when the cache keeps one per head (`None` for a
    /// per-row cache, or before the first append computed them).
    pub fn head_scales(&self) -> Option<(&[f32], &[f32])> {
        match self.mode {
            Mode::Head { set: true } => Some((&self.k_scales, &self.v_scales)),
            _ => None,
        }
    }

    /// Element strides of the `[B, Hkv, ·, D]` codes.
    fn strides(&self) -> [usize; 4] {
        let hd = self.head_dim;
        [
            self.n_kv_heads * self.capacity * hd,
            self.capacity * hd,
            hd,
            1,
        ]
    }

    fn view<'a>(&'a self, codes: &'a [C], scales: &'a [f32]) -> QuantTensor<'a, C> {
        let dims = [self.batch, self.n_kv_heads, self.len, self.head_dim];
        let sst = match self.mode {
            Mode::Row => [self.n_kv_heads * self.capacity, self.capacity, 1],
            Mode::Head { .. } => [0, 1, 0],
        };
        TensorRef::new(codes, dims, self.strides())
            .and_then(|c| QuantTensor::new(c, scales, sst))
            .expect("invariant: len ≤ capacity, so the views fit the storage")
    }

    /// The cached keys, `[B, Hkv, len, D]`, with their scales.
    pub fn keys(&self) -> QuantTensor<'_, C> {
        self.view(&self.k, &self.k_scales)
    }

    /// The cached values, `[B, Hkv, len, D]`, with their scales.
    pub fn values(&self) -> QuantTensor<'_, C> {
        self.view(&self.v, &self.v_scales)
    }

    /// `Ok` when the cache fits a call with `batch` sequences, `n_kv_heads` heads of
    /// `head_dim`, and `adding` more positions fit.
    pub(crate) fn check_call(
        &self,
        batch: usize,
        n_kv_heads: usize,
        head_dim: usize,
        adding: usize,
    ) -> Result<()> {
        let (have, want) = (self.layout(), [batch, n_kv_heads, head_dim]);
        if have != want {
            return Err(AttnError::Shape {
                what: format!(
                    "8-bit KV cache is for [batch, kv heads, head dim] = {have:?}, the call needs {want:?}"
                ),
            });
        }
        if adding > self.capacity - self.len {
            return Err(AttnError::CacheFull {
                capacity: self.capacity,
                len: self.len,
                adding,
            });
        }
        Ok(())
    }

    /// Appends `n` positions: `k` and `v` are `[B, Hkv, n, D]` views of any element type
    /// and strides, quantised here.
    ///
    /// # Errors
    /// [`AttnError::Shape`] if the views do not match the cache or each other;
    /// [`AttnError::CacheFull`] if `len + n > capacity`; [`AttnError::Kernel`] for a NaN
    /// or infinite value. The cache is unchanged on error.
    pub fn append<K: Element, V: Element>(
        &mut self,
        k: TensorRef<'_, K>,
        v: TensorRef<'_, V>,
    ) -> Result<()> {
        let [b, h, n, d] = crate::kv_cache::appended_dims(&k, &v)?;
        self.check_call(b, h, d, n)?;
        if b * h * n * d == 0 {
            self.len += n;
            return Ok(());
        }
        let isa = kernels::current_isa().unwrap_or(Isa::Scalar);
        let (kf, vf) = (widen(isa, &k)?, widen(isa, &v)?);
        for x in [&kf, &vf] {
            if let Some(bad) = x.iter().find(|x| !x.is_finite()) {
                return Err(AttnError::Kernel(kernels::KernelError::InvalidArgument {
                    op: "QuantKvCache::append",
                    reason: format!("value {bad} is not finite (NaN/inf cannot be quantised)"),
                }));
            }
        }
        if self.mode == (Mode::Head { set: false }) {
            self.k_scales = first_scales::<C>(&kf, h, n, d);
            self.v_scales = first_scales::<C>(&vf, h, n, d);
            self.mode = Mode::Head { set: true };
        }
        let st = self.strides();
        let (row, len, cap) = (self.mode == Mode::Row, self.len, self.capacity);
        for (src, codes, scales) in [
            (&kf, &mut self.k, &mut self.k_scales),
            (&vf, &mut self.v, &mut self.v_scales),
        ] {
            for bb in 0..b {
                for hh in 0..h {
                    for i in 0..n {
                        let s = &src[((bb * h + hh) * n + i) * d..][..d];
                        let o = bb * st[0] + hh * st[1] + (len + i) * st[2];
                        let given = (!row).then(|| scales[hh]);
                        let sc = quantize_row(s, given, &mut codes[o..o + d])?;
                        if row {
                            scales[(bb * h + hh) * cap + len + i] = sc;
                        }
                    }
                }
            }
        }
        self.len += n;
        Ok(())
    }
}

/// `t` (`[B, H, n, D]`, any strides) as contiguous f32.
fn widen<T: Element>(isa: Isa, t: &TensorRef<'_, T>) -> Result<Vec<f32>> {
    let [b, h, n, d] = t.dims();
    let mut out = vec![0.0f32; b * h * n * d];
    let ss = t.strides()[3];
    for bb in 0..b {
        for hh in 0..h {
            for i in 0..n {
                let o = ((bb * h + hh) * n + i) * d;
                convert_row(isa, t.data(), t.offset(bb, hh, i, 0), ss, &mut out, o, 1, d)?;
            }
        }
    }
    Ok(out)
}

/// One scale per head from the rows of `x` (`[B, H, n, D]` contiguous): `amax / C::MAX`,
/// 1 for an all-zero head.
fn first_scales<C: Code>(x: &[f32], h: usize, n: usize, d: usize) -> Vec<f32> {
    let mut amax = vec![0.0f32; h];
    for (r, row) in x.chunks_exact(d).enumerate() {
        let hh = (r / n) % h;
        amax[hh] = row.iter().fold(amax[hh], |m, v| m.max(v.abs()));
    }
    amax.into_iter()
        .map(|a| {
            if a == 0.0 {
                1.0
            } else {
                (a / C::MAX).max(f32::MIN_POSITIVE)
            }
        })
        .collect()
}

/// The scales of a paged 8-bit cache that [`paged_kv_write_quant`] writes into.
#[derive(Debug)]
pub enum PagedScales<'a> {
    /// One per token and head, `[num_blocks, block_size, Hkv]` contiguous: each written
    /// row's scale is computed (`amax / C::MAX`) and stored (int8's layout).
    PerRow(&'a mut [f32]),
    /// The caller's scales, 1 (per tensor) or `Hkv` (per head) values: fp8's layout.
    Fixed(&'a [f32]),
}

/// [`crate::paged_kv_write`] into paged 8-bit caches `[num_blocks, block_size, Hkv, D]`
/// (any strides), quantising each row with its scale ([`PagedScales`]).
///
/// ```
/// use fastattn_attention::quant_cache::{paged_kv_write_quant, PagedScales};
/// use fastattn_attention::{TensorMut, TensorRef};
/// // Two tokens, one KV head of 4, into int8 caches of 3 pages of 2 slots.
/// let k = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let (mut kc, mut vc) = (vec![0i8; 3 * 2 * 4], vec![0i8; 3 * 2 * 4]);
/// let (mut ks, mut vs) = (vec![0.0f32; 3 * 2], vec![0.0f32; 3 * 2]);
/// let rows = TensorRef::new(&k, [1, 1, 2, 4], [8, 4, 4, 1])?;
/// paged_kv_write_quant(rows, rows, TensorMut::contiguous(&mut kc, [3, 2, 1, 4])?,
///                      PagedScales::PerRow(&mut ks), TensorMut::contiguous(&mut vc, [3, 2, 1, 4])?,
///                      PagedScales::PerRow(&mut vs), &[5, 0])?;
/// assert_eq!((kc[5 * 4 + 3], ks[5]), (127, 4.0 / 127.0)); // token 0 → slot 5
/// assert_eq!(kc[3] as f32 * ks[0], 8.0); // token 1 → slot 0
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// As [`crate::paged_kv_write`], and [`AttnError::Scale`] for per-row scales that are not
/// one per slot and head, or fixed scales of the wrong count or not finite and positive;
/// [`AttnError::Kernel`] for a NaN or infinite value among the rows written. Nothing is
/// written on error.
#[allow(clippy::too_many_arguments)]
pub fn paged_kv_write_quant<S: Element, C: Code>(
    k: TensorRef<'_, S>,
    v: TensorRef<'_, S>,
    mut k_cache: TensorMut<'_, C>,
    mut k_scales: PagedScales<'_>,
    mut v_cache: TensorMut<'_, C>,
    mut v_scales: PagedScales<'_>,
    slot_mapping: &[i64],
) -> Result<()> {
    let hkv = k.dims()[1];
    crate::paged::check_write(
        k.dims(),
        v.dims(),
        k_cache.dims(),
        v_cache.dims(),
        slot_mapping,
    )?;
    let [nblk, bs, _, _] = k_cache.dims();
    for (what, s) in [("k scales", &k_scales), ("v scales", &v_scales)] {
        match s {
            PagedScales::PerRow(x) if x.len() != nblk * bs * hkv => {
                return Err(AttnError::Scale {
                    what: format!(
                    "{what}: one per slot and head expected ([{nblk}, {bs}, {hkv}] = {}), got {}",
                    nblk * bs * hkv,
                    x.len()
                ),
                })
            }
            PagedScales::PerRow(_) => {}
            PagedScales::Fixed(x) => {
                head_scales(what, x, hkv)?;
            }
        }
    }
    let isa = kernels::current_isa()?;
    // Every row to be written, widened, and checked finite before anything is written.
    let mut rows: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for (t, &s) in slot_mapping.iter().enumerate() {
        if s < 0 {
            continue;
        }
        for h in 0..hkv {
            let get = |x: &TensorRef<'_, S>| -> Result<Vec<f32>> {
                let n = x.dims()[3];
                let mut r = vec![0.0f32; n];
                convert_row(
                    isa,
                    x.data(),
                    x.offset(0, h, t, 0),
                    x.strides()[3],
                    &mut r,
                    0,
                    1,
                    n,
                )?;
                Ok(r)
            };
            let (kr, vr) = (get(&k)?, get(&v)?);
            if let Some(bad) = kr.iter().chain(&vr).find(|x| !x.is_finite()) {
                return Err(AttnError::Kernel(kernels::KernelError::InvalidArgument {
                    op: "paged_kv_write_quant",
                    reason: format!("value {bad} of token {t} is not finite"),
                }));
            }
            rows.push((s as usize, h, kr, vr));
        }
    }
    let mut code_row = Vec::new();
    for (slot, h, kr, vr) in rows {
        let at = (slot / bs, slot % bs, h, hkv);
        put_row(&kr, &mut k_cache, &mut k_scales, at, &mut code_row)?;
        put_row(&vr, &mut v_cache, &mut v_scales, at, &mut code_row)?;
    }
    Ok(())
}

/// Quantises `src` into row `(page, off, h)` of `cache` with its scale (`hkv` heads).
fn put_row<C: Code>(
    src: &[f32],
    cache: &mut TensorMut<'_, C>,
    scales: &mut PagedScales<'_>,
    (page, off, h, hkv): (usize, usize, usize, usize),
    code_row: &mut Vec<C>,
) -> Result<()> {
    let bs = cache.dims()[1];
    let given = match scales {
        PagedScales::PerRow(_) => None,
        PagedScales::Fixed(x) => Some(x[if x.len() == 1 { 0 } else { h }]),
    };
    code_row.clear();
    code_row.resize(src.len(), C::default());
    let sc = quantize_row(src, given, code_row)?;
    if let PagedScales::PerRow(x) = scales {
        x[(page * bs + off) * hkv + h] = sc;
    }
    let (d0, ds) = (cache.offset(page, off, h, 0), cache.strides()[3]);
    let data = cache.data_mut();
    for (x, &c) in code_row.iter().enumerate() {
        data[d0 + x * ds] = c;
    }
    Ok(())
}
