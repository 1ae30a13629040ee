//! 8-bit storage codecs for a quantised KV cache (issue 32): the fp8 types
//! [`F8E4M3`] and [`F8E5M2`], row dequantisation kernels per ISA, and quantise-on-write.
//!
//! # Formats
//!
//! | format | layout | bias | largest finite | smallest subnormal | specials |
//! |--------|--------|------|----------------|--------------------|----------|
//! | int8 | two's complement, codes −127..=127 | | 127 × scale | | none (−128 never written) |
//! | e4m3fn ([`F8E4M3`]) | s eeee mmm | 7 | 448 | 2^-9 | NaN = `0x7F`/`0xFF`, no inf |
//! | e5m2 ([`F8E5M2`]) | s eeeee mm | 15 | 57344 | 2^-16 | ±inf `0x7C`/`0xFC`, NaN `0x7D..=0x7F` (and negative) |
//!
//! A stored value means `code × scale`, with an f32 scale: per token and KV head for int8
//! (symmetric, `scale = amax / 127`, [`quantize_i8_row`]); per tensor or per KV head for fp8
//! (vLLM's `k_scale`/`v_scale`, given by the caller; [`f8_scale_for`] computes
//! `amax / max_finite` for a cache filled in one call).
//!
//! # Rounding and saturation
//!
//! Encoding rounds to nearest, ties to even. int8 clamps to ±127. fp8 saturates: finite
//! values beyond the largest finite value, and ±inf, give ±448 (e4m3fn) or ±57344 (e5m2),
//! as vLLM's saturating cast does (e5m2 saturates too, for one rule; its infinity codes are
//! decoded but never written). [`F8E4M3::from_f32`] and [`F8E5M2::from_f32`] map NaN to a NaN
//! code; the row quantisers refuse NaN and inf inputs with
//! [`KernelError::InvalidArgument`](crate::KernelError::InvalidArgument) instead of writing
//! silently wrong codes. Decoding is exact, and the row dequantisers compute
//! `decode(code) × scale` with one f32 rounding, bit-identical on every ISA.
//!
//! # Error bounds
//!
//! * int8: `|x − deq(q(x))| ≤ scale/2` (plus the f32 rounding of `x / scale` and of the
//!   product, a few ulps of `x`).
//! * fp8, for `|x| / scale` in the normal range (≥ 2^-6 for e4m3, ≥ 2^-14 for e5m2) and
//!   not saturated: relative error ≤ 2^-4 (e4m3, 3 mantissa bits) or 2^-3 (e5m2, 2 bits),
//!   half an ulp of the format.
//! * fp8 below the normal range: absolute error ≤ half the subnormal spacing × scale, that
//!   is `2^-10 × scale` (e4m3) or `2^-17 × scale` (e5m2).
//!
//! # Kernels
//!
//! The dequantisers are SIMD on AVX2 and AVX-512 (see [`dequant`](mod@dequant)'s notes); Scalar and
//! Portable decode code by code. The scalar oracles are in [`reference`](mod@reference), written from the
//! format definitions.
//!
//! The three code types are [`Code`]s, not [`Element`](crate::Element)s: they are storage
//! for keys and values only (the decode kernels [`gemv::dot_rows_quant_with`](crate::gemv::dot_rows_quant_with)
//! and friends read them with per-row scales), never a GEMM operand or an output.

pub mod dequant;
mod fp8;
mod quantize;
pub mod reference;

pub use dequant::{dequant_f8e4m3_row, dequant_f8e5m2_row, dequant_i8_row};
pub use fp8::{F8E4M3, F8E5M2};
pub use quantize::{
    f8_scale_for, quantize_f8e4m3_row, quantize_f8e5m2_row, quantize_i8_row, quantize_row,
};

/// The 8-bit storage formats, as run-time tags (the C ABI's and Python's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// Two's-complement int8 (symmetric, a scale per token and KV head).
    I8,
    /// fp8 e4m3fn ([`F8E4M3`]).
    F8E4M3,
    /// fp8 e5m2 ([`F8E5M2`]).
    F8E5M2,
}

impl QuantType {
    /// Every format.
    pub const ALL: [QuantType; 3] = [QuantType::I8, QuantType::F8E4M3, QuantType::F8E5M2];

    /// Its short name (`i8`, `f8e4m3`, `f8e5m2`).
    ///
    /// ```
    /// assert_eq!(fastattn_kernels::quant::QuantType::F8E5M2.name(), "f8e5m2");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            QuantType::I8 => "i8",
            QuantType::F8E4M3 => "f8e4m3",
            QuantType::F8E5M2 => "f8e5m2",
        }
    }

    /// Parses a short name (case-insensitive; `int8`, `float8_e4m3fn`, `e4m3`,
    /// `float8_e5m2` and `e5m2` are accepted too).
    pub fn from_name(name: &str) -> Option<QuantType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "i8" | "int8" => Some(QuantType::I8),
            "f8e4m3" | "float8_e4m3fn" | "e4m3" | "e4m3fn" | "fp8_e4m3" => Some(QuantType::F8E4M3),
            "f8e5m2" | "float8_e5m2" | "e5m2" | "fp8_e5m2" => Some(QuantType::F8E5M2),
            _ => None,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for super::F8E4M3 {}
    impl Sealed for super::F8E5M2 {}
}

/// An 8-bit storage code: `i8`, [`F8E4M3`] or [`F8E5M2`] (sealed). A stored value is
/// `decode(code) × scale`, with its scale kept beside the codes.
///
/// ```
/// use fastattn_kernels::quant::{Code, QuantType, F8E5M2};
/// assert_eq!(<i8 as Code>::QTYPE, QuantType::I8);
/// assert_eq!(F8E5M2::from_f32(-1.5).decode(), -1.5);
/// ```
pub trait Code:
    sealed::Sealed
    + crate::dtype::RowElem
    + Copy
    + Default
    + PartialEq
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// The run-time tag.
    const QTYPE: QuantType;
    /// The largest finite value (127 for int8, 448 for e4m3fn, 57344 for e5m2): the code a
    /// row's largest magnitude maps to when its scale is computed from it.
    const MAX: f32;
    /// The code's value as f32, without its scale (exact).
    fn decode(self) -> f32;
    /// The code nearest `x` (a value already divided by its scale): ties to even,
    /// saturating (int8 at ±127, fp8 at its largest finite value); NaN gives 0 for int8
    /// and a NaN code for fp8. The row quantisers ([`quantize_i8_row`], …) refuse
    /// non-finite input instead.
    fn encode(x: f32) -> Self;
}

impl Code for i8 {
    const QTYPE: QuantType = QuantType::I8;
    const MAX: f32 = 127.0;
    #[inline(always)]
    fn decode(self) -> f32 {
        f32::from(self)
    }
    #[inline]
    fn encode(x: f32) -> Self {
        // `as` maps NaN to 0; the clamp keeps −128 unused.
        x.round_ties_even().clamp(-127.0, 127.0) as i8
    }
}

impl Code for F8E4M3 {
    const QTYPE: QuantType = QuantType::F8E4M3;
    const MAX: f32 = F8E4M3::MAX;
    #[inline(always)]
    fn decode(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn encode(x: f32) -> Self {
        F8E4M3::from_f32(x)
    }
}

impl Code for F8E5M2 {
    const QTYPE: QuantType = QuantType::F8E5M2;
    const MAX: f32 = F8E5M2::MAX;
    #[inline(always)]
    fn decode(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn encode(x: f32) -> Self {
        F8E5M2::from_f32(x)
    }
}
