//! 8-bit keys and values: int8 and fp8 (e4m3fn, e5m2) codes with f32 scales.
//!
//! A [`QuantTensor`] is a `[B, H, L, D]` view of codes (any strides, as a
//! [`TensorRef`]) with its scales: one f32 per row of the first three dimensions, itself a
//! strided view, so one type covers every layout the serving engines use:
//!
//! | scales | dense cache `[B, Hkv, L, D]` | paged cache `[num_blocks, block_size, Hkv, D]` |
//! |---|---|---|
//! | per token and head (int8) | `[B, Hkv, L]`: [`QuantTensor::per_row`] | `[num_blocks, block_size, Hkv]`: [`QuantTensor::per_row`] |
//! | per KV head (fp8 `[Hkv]`) | strides `[0, 1, 0]` ([`QuantTensor::new`]) | strides `[0, 0, 1]` |
//! | per tensor (fp8 scalar) | [`QuantTensor::per_tensor`] | [`QuantTensor::per_tensor`] |
//!
//! The value of a code is `decode(code) × scale`. The attention calls take K and V as a
//! [`KvRef`]: a float view or an 8-bit one. Every path reads the codes in place: the decode
//! kernels widen them in registers and fold the scales into the scores and weights
//! ([`kernels::gemv::dot_rows_quant_with`]); prefill dequantises each key block as it packs
//! it for the GEMM. Scales are checked (finite and positive) for every row a call reads,
//! before any work.

use crate::error::{AttnError, Result};
use crate::tensor::{contiguous_strides, DynTensor, TensorRef};
use kernels::quant::{
    dequant_f8e4m3_row, dequant_f8e5m2_row, dequant_i8_row, Code, QuantType, F8E4M3, F8E5M2,
};
use kernels::{Element, Isa};

/// The scales of a [`QuantTensor`]: one per row `(i0, i1, i2)` at
/// `base + i0·s0 + i1·s1 + i2·s2` of a slice, or one value for all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scales<'a> {
    data: ScaleData<'a>,
    strides: [usize; 3],
    base: usize,
}

#[derive(Debug, Clone, Copy)]
enum ScaleData<'a> {
    Slice(&'a [f32]),
    One(f32),
}

impl Scales<'_> {
    /// Index of the scale of row `(i0, i1, i2)`.
    #[inline]
    pub(crate) fn index(&self, i0: usize, i1: usize, i2: usize) -> usize {
        self.base + i0 * self.strides[0] + i1 * self.strides[1] + i2 * self.strides[2]
    }
    /// The strides over the three row dimensions.
    pub(crate) fn strides(&self) -> [usize; 3] {
        self.strides
    }
    /// The scale at index `i` (from [`index`](Self::index) or a segment's walk).
    #[inline]
    pub(crate) fn at(&self, i: usize) -> f32 {
        match self.data {
            ScaleData::Slice(s) => s[i],
            ScaleData::One(x) => x,
        }
    }
}

/// Whether `x` is a usable scale: finite and positive.
fn scale_ok(x: f32) -> bool {
    x.is_finite() && x > 0.0
}

/// 8-bit keys or values: a `[B, H, L, D]` view of codes (`i8`, [`F8E4M3`] or [`F8E5M2`])
/// and an f32 scale per row of its first three dimensions (see the
/// [module docs](self) for the layouts). A value is `decode(code) × scale`.
///
/// ```
/// use fastattn_attention::{quant::QuantTensor, TensorRef};
/// let codes = [10i8, -20, 30, 40, 5, 6]; // [1, 1, 3, 2]
/// let scales = [0.5f32, 0.25, 1.0]; // one per token
/// let k = QuantTensor::per_row(TensorRef::contiguous(&codes, [1, 1, 3, 2])?, &scales)?;
/// assert_eq!(k.value(0, 0, 1, 1), 10.0);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct QuantTensor<'a, C> {
    codes: TensorRef<'a, C>,
    scales: Scales<'a>,
}

impl<'a, C: Code> QuantTensor<'a, C> {
    /// Codes with scales at explicit strides over the first three dimensions (0 repeats
    /// a scale: `[0, 1, 0]` is one per head of a dense `[B, H, L, D]` view, `[0, 0, 1]` one
    /// per head of a paged `[num_blocks, block_size, H, D]` one).
    ///
    /// # Errors
    /// [`AttnError::Scale`] if the scales' view reaches past `scales`,
    /// [`AttnError::Overflow`] if its extent overflows. Their values are checked where a
    /// call reads them.
    pub fn new(codes: TensorRef<'a, C>, scales: &'a [f32], strides: [usize; 3]) -> Result<Self> {
        let d = codes.dims();
        if d[..3].iter().all(|&n| n > 0) {
            let mut last = 0usize;
            for (n, s) in d[..3].iter().zip(strides) {
                last = (n - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or(AttnError::Overflow { what: "scales" })?;
            }
            if last >= scales.len() {
                return Err(AttnError::Scale {
                    what: format!(
                        "scales for rows {:?} at strides {strides:?} need {} values, got {}",
                        &d[..3],
                        last.saturating_add(1),
                        scales.len()
                    ),
                });
            }
        }
        Ok(QuantTensor {
            codes,
            scales: Scales {
                data: ScaleData::Slice(scales),
                strides,
                base: 0,
            },
        })
    }

    /// Codes with one scale per row, laid out contiguously as the first three dimensions
    /// (`[B, H, L]` for a dense cache, `[num_blocks, block_size, H]` for a paged one): the
    /// int8 layout.
    ///
    /// # Errors
    /// [`AttnError::Scale`] unless there is exactly one scale per row.
    pub fn per_row(codes: TensorRef<'a, C>, scales: &'a [f32]) -> Result<Self> {
        let [a, b, c, _] = codes.dims();
        let rows = a.saturating_mul(b).saturating_mul(c);
        if scales.len() != rows {
            return Err(AttnError::Scale {
                what: format!(
                    "one scale per row expected: {rows} for rows {:?}, got {}",
                    [a, b, c],
                    scales.len()
                ),
            });
        }
        let s = contiguous_strides([a, b, c, 1]);
        Self::new(codes, scales, [s[0], s[1], s[2]])
    }

    /// Codes with one scale for the whole tensor (vLLM's scalar `k_scale`/`v_scale`).
    pub fn per_tensor(codes: TensorRef<'a, C>, scale: f32) -> Self {
        QuantTensor {
            codes,
            scales: Scales {
                data: ScaleData::One(scale),
                strides: [0; 3],
                base: 0,
            },
        }
    }

    /// The codes.
    pub fn codes(&self) -> TensorRef<'a, C> {
        self.codes
    }

    /// `[B, H, L, D]` of the codes.
    pub fn dims(&self) -> [usize; 4] {
        self.codes.dims()
    }

    /// The scale of row `(i0, i1, i2)` (panics when out of range).
    pub fn scale(&self, i0: usize, i1: usize, i2: usize) -> f32 {
        let d = self.dims();
        assert!(
            i0 < d[0] && i1 < d[1] && i2 < d[2],
            "scale index out of range"
        );
        self.scales.at(self.scales.index(i0, i1, i2))
    }

    /// The value of element `(i0, i1, i2, i3)`: `decode(code) × scale`, in f32 (panics when
    /// out of range).
    pub fn value(&self, i0: usize, i1: usize, i2: usize, i3: usize) -> f32 {
        self.codes.get(i0, i1, i2, i3).decode() * self.scale(i0, i1, i2)
    }
}

/// Keys or values for an attention call: a float view ([`DynTensor`]: f32, f16, bf16) or
/// 8-bit codes with scales ([`QuantTensor`]). Every `TensorRef` of an [`Element`] type and
/// every `QuantTensor` converts into one (`.into()`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum KvRef<'a> {
    /// f32, f16 or bf16 values.
    Float(DynTensor<'a>),
    /// int8 codes with scales.
    I8(QuantTensor<'a, i8>),
    /// fp8 e4m3fn codes with scales.
    F8E4M3(QuantTensor<'a, F8E4M3>),
    /// fp8 e5m2 codes with scales.
    F8E5M2(QuantTensor<'a, F8E5M2>),
}

impl KvRef<'_> {
    /// `[B, H, L, D]` (or the paged `[num_blocks, block_size, H, D]`).
    pub fn dims(&self) -> [usize; 4] {
        match self {
            KvRef::Float(t) => t.dims(),
            KvRef::I8(t) => t.dims(),
            KvRef::F8E4M3(t) => t.dims(),
            KvRef::F8E5M2(t) => t.dims(),
        }
    }

    /// The 8-bit format, or `None` for a float view.
    pub fn quant_type(&self) -> Option<QuantType> {
        match self {
            KvRef::Float(_) => None,
            KvRef::I8(_) => Some(QuantType::I8),
            KvRef::F8E4M3(_) => Some(QuantType::F8E4M3),
            KvRef::F8E5M2(_) => Some(QuantType::F8E5M2),
        }
    }
}

impl<'a> From<DynTensor<'a>> for KvRef<'a> {
    fn from(t: DynTensor<'a>) -> Self {
        KvRef::Float(t)
    }
}

impl<'a, T: Element> From<TensorRef<'a, T>> for KvRef<'a> {
    fn from(t: TensorRef<'a, T>) -> Self {
        KvRef::Float(t.into())
    }
}

impl<'a, C: Code> From<QuantTensor<'a, C>> for KvRef<'a> {
    fn from(t: QuantTensor<'a, C>) -> Self {
        /// `t` as a view of `D` codes.
        ///
        /// # Safety
        /// `C` and `D` are the same type.
        unsafe fn retype<'a, C: Code, D: Code>(t: QuantTensor<'a, C>) -> QuantTensor<'a, D> {
            let c = t.codes;
            // SAFETY: `C` is `D` (caller contract): the slice is reinterpreted as itself.
            let data = unsafe {
                std::slice::from_raw_parts(c.data().as_ptr().cast::<D>(), c.data().len())
            };
            QuantTensor {
                codes: c.with_data(data),
                scales: t.scales,
            }
        }
        // `Code` is sealed and its three types have distinct tags, so the tag names `C`.
        match C::QTYPE {
            // SAFETY: the tag is `i8`'s, so `C` is `i8`.
            QuantType::I8 => KvRef::I8(unsafe { retype(t) }),
            // SAFETY: the tag is `F8E4M3`'s, so `C` is `F8E4M3`.
            QuantType::F8E4M3 => KvRef::F8E4M3(unsafe { retype(t) }),
            // SAFETY: the tag is `F8E5M2`'s, so `C` is `F8E5M2`.
            QuantType::F8E5M2 => KvRef::F8E5M2(unsafe { retype(t) }),
        }
    }
}

/// Codes of any 8-bit type (type-erased).
#[derive(Debug, Clone, Copy)]
pub(crate) enum QSlice<'a> {
    I8(&'a [i8]),
    F8E4M3(&'a [F8E4M3]),
    F8E5M2(&'a [F8E5M2]),
}

/// `match_q!(slice, s => body)`: `body` with `s` bound to the typed codes.
macro_rules! match_q {
    ($q:expr, $s:ident => $body:expr) => {
        match $q {
            $crate::quant::QSlice::I8($s) => $body,
            $crate::quant::QSlice::F8E4M3($s) => $body,
            $crate::quant::QSlice::F8E5M2($s) => $body,
        }
    };
}
pub(crate) use match_q;

/// A [`QuantTensor`] with its code type erased: what the attention paths carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QRef<'a> {
    pub(crate) codes: QSlice<'a>,
    strides: [usize; 4],
    pub(crate) scales: Scales<'a>,
}

impl<'a> QRef<'a> {
    /// `t` with its code type erased (`codes` is `t`'s data).
    pub(crate) fn erase<C: Code>(t: &QuantTensor<'a, C>, codes: QSlice<'a>) -> Self {
        QRef {
            codes,
            strides: t.codes.strides(),
            scales: t.scales,
        }
    }
    pub(crate) fn strides(&self) -> [usize; 4] {
        self.strides
    }
    #[inline]
    pub(crate) fn offset(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + l * self.strides[2] + d * self.strides[3]
    }
    /// The same view from row `l0` of the third dimension on (a sequence's rows of packed
    /// variable-length K/V).
    pub(crate) fn skip_rows(&self, l0: usize) -> Self {
        let off = l0 * self.strides[2];
        let codes = match self.codes {
            QSlice::I8(s) => QSlice::I8(s.get(off..).unwrap_or(&[])),
            QSlice::F8E4M3(s) => QSlice::F8E4M3(s.get(off..).unwrap_or(&[])),
            QSlice::F8E5M2(s) => QSlice::F8E5M2(s.get(off..).unwrap_or(&[])),
        };
        let mut scales = self.scales;
        scales.base += l0 * scales.strides[2];
        QRef {
            codes,
            strides: self.strides,
            scales,
        }
    }
}

/// A run of rows of one 8-bit key/value head: row `r`'s codes start at
/// `base + r·row_stride` (values `col_stride` apart), its scale is at
/// `sbase + r·srow_stride` of the scales.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuantSeg<'a> {
    pub(crate) mem: QRef<'a>,
    pub(crate) base: usize,
    pub(crate) rows: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
    pub(crate) sbase: usize,
    pub(crate) srow_stride: usize,
}

impl QuantSeg<'_> {
    /// The run's scales, one per row, into `out` (cleared first).
    pub(crate) fn scales_into(&self, out: &mut Vec<f32>) {
        out.clear();
        let s = &self.mem.scales;
        out.extend((0..self.rows).map(|r| s.at(self.sbase + r * self.srow_stride)));
    }

    /// Checks that every scale of the run is finite and positive.
    pub(crate) fn check_scales(&self) -> Result<()> {
        let s = &self.mem.scales;
        for r in 0..self.rows {
            let x = s.at(self.sbase + r * self.srow_stride);
            if !scale_ok(x) {
                return Err(AttnError::Scale {
                    what: format!("scale {x} of a row the call reads is not finite and positive"),
                });
            }
        }
        Ok(())
    }

    /// Dequantises the run's rows (`cols` values each) into `dst` (`rows × cols`, dense
    /// f32): `decode(code) × scale`, one rounding, the same bits on every ISA.
    pub(crate) fn gather(&self, isa: Isa, cols: usize, dst: &mut [f32]) -> Result<()> {
        if cols == 0 {
            return Ok(());
        }
        let s = &self.mem.scales;
        for (r, row) in dst.chunks_exact_mut(cols).take(self.rows).enumerate() {
            let base = self.base + r * self.row_stride;
            let scale = s.at(self.sbase + r * self.srow_stride);
            if self.col_stride == 1 {
                match self.mem.codes {
                    QSlice::I8(c) => dequant_i8_row(isa, &c[base..base + cols], scale, row)?,
                    QSlice::F8E4M3(c) => {
                        dequant_f8e4m3_row(isa, &c[base..base + cols], scale, row)?
                    }
                    QSlice::F8E5M2(c) => {
                        dequant_f8e5m2_row(isa, &c[base..base + cols], scale, row)?
                    }
                }
            } else {
                match_q!(self.mem.codes, c => {
                    for (x, d) in row.iter_mut().enumerate() {
                        *d = c[base + x * self.col_stride].decode() * scale;
                    }
                });
            }
        }
        Ok(())
    }
}
