//! Element types: f32 and the 16-bit storage types `half::f16` and `half::bf16`.
//!
//! Everything computes in f32. A 16-bit operand is converted where the kernels read it:
//! while it is packed for the GEMM microkernel ([`gemm::packed::PackedB`](crate::gemm::packed::PackedB),
//! [`gemm_with`](crate::gemm::gemm_with)), or in registers by the decode kernels
//! ([`gemv`](crate::gemv)). f16 → f32 and bf16 → f32 are exact; f32 → 16-bit rounds to the
//! nearest value, ties to even (NaN stays NaN, overflow gives ±inf), as the `half` crate
//! does: [`convert`](crate::convert) holds the vector conversions and their scalar twins.

pub use half::{bf16, f16};

/// The element type of a tensor or matrix, for run-time checks and the C ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (`half::f16`): 5 exponent bits, 10 fraction bits.
    F16,
    /// bfloat16 (`half::bf16`): f32's 8 exponent bits, 7 fraction bits.
    BF16,
}

impl DType {
    /// Every type, in the order of the C ABI's `fa_dtype` codes.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Its short name (`f32`, `f16`, `bf16`).
    ///
    /// ```
    /// assert_eq!(fastattn_kernels::DType::BF16.name(), "bf16");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Parses a short name (case-insensitive; `float32`, `half`, `float16` and `bfloat16`
    /// are accepted too).
    pub fn from_name(name: &str) -> Option<DType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f16" | "float16" | "half" | "fp16" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::f16 {}
    impl Sealed for super::bf16 {}
}

/// A slice of any element type (what the type-erased, non-generic code paths take).
#[derive(Debug, Clone, Copy)]
pub enum Slice<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values.
    F16(&'a [f16]),
    /// bf16 values.
    BF16(&'a [bf16]),
}

impl<'a> Slice<'a> {
    /// Its element type.
    pub fn dtype(&self) -> DType {
        match self {
            Slice::F32(_) => DType::F32,
            Slice::F16(_) => DType::F16,
            Slice::BF16(_) => DType::BF16,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Slice::F32(s) => s.len(),
            Slice::F16(s) => s.len(),
            Slice::BF16(s) => s.len(),
        }
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32 (exact). Panics when out of range.
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Slice::F32(s) => s[i],
            Slice::F16(s) => s[i].to_f32(),
            Slice::BF16(s) => s[i].to_f32(),
        }
    }
    /// The elements from `i` on (empty past the end).
    pub fn tail(&self, i: usize) -> Slice<'a> {
        match *self {
            Slice::F32(s) => Slice::F32(s.get(i..).unwrap_or(&[])),
            Slice::F16(s) => Slice::F16(s.get(i..).unwrap_or(&[])),
            Slice::BF16(s) => Slice::BF16(s.get(i..).unwrap_or(&[])),
        }
    }
}

/// A mutable slice of any element type.
#[derive(Debug)]
pub enum SliceMut<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// f16 values.
    F16(&'a mut [f16]),
    /// bf16 values.
    BF16(&'a mut [bf16]),
}

impl SliceMut<'_> {
    /// Its element type.
    pub fn dtype(&self) -> DType {
        match self {
            SliceMut::F32(_) => DType::F32,
            SliceMut::F16(_) => DType::F16,
            SliceMut::BF16(_) => DType::BF16,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            SliceMut::F32(s) => s.len(),
            SliceMut::F16(s) => s.len(),
            SliceMut::BF16(s) => s.len(),
        }
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An element type the kernels read and write: `f32`, [`f16`](struct@f16) or [`bf16`] (sealed).
///
/// ```
/// use fastattn_kernels::{bf16, Element};
/// assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0); // ties to even
/// assert_eq!(<bf16 as Element>::DTYPE, fastattn_kernels::DType::BF16);
/// ```
pub trait Element:
    sealed::Sealed + Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static
{
    /// The run-time tag of the type.
    const DTYPE: DType;
    /// The value as f32 (exact for all three types).
    fn to_f32(self) -> f32;
    /// `x` rounded to the nearest value of the type, ties to even.
    fn from_f32(x: f32) -> Self;
    /// The slice, type-erased.
    fn slice(data: &[Self]) -> Slice<'_>;
    /// The mutable slice, type-erased.
    fn slice_mut(data: &mut [Self]) -> SliceMut<'_>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    fn slice(data: &[Self]) -> Slice<'_> {
        Slice::F32(data)
    }
    fn slice_mut(data: &mut [Self]) -> SliceMut<'_> {
        SliceMut::F32(data)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn slice(data: &[Self]) -> Slice<'_> {
        Slice::F16(data)
    }
    fn slice_mut(data: &mut [Self]) -> SliceMut<'_> {
        SliceMut::F16(data)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn slice(data: &[Self]) -> Slice<'_> {
        Slice::BF16(data)
    }
    fn slice_mut(data: &mut [Self]) -> SliceMut<'_> {
        SliceMut::BF16(data)
    }
}

/// Whether every value of `x` is finite: `v − v` is 0 for a finite `v` and NaN for a NaN
/// or an infinity, and the eight running sums vectorise (no branch per value).
///
/// ```
/// assert!(fastattn_kernels::dtype::all_finite(&[1.0, -2.0, 0.0]));
/// assert!(!fastattn_kernels::dtype::all_finite(&[1.0, f32::INFINITY]));
/// ```
// `v - v` is the point: 0 for finite values, NaN otherwise.
#[allow(clippy::eq_op)]
pub fn all_finite(x: &[f32]) -> bool {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v - v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| v - v).sum();
    acc.iter().sum::<f32>() + tail == 0.0
}
