//! 8-bit storage codecs for a quantised KV cache (issue 32, first step): the fp8 types
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
//! format definitions. These types are not (yet) [`Element`](crate::Element)s.

pub mod dequant;
mod fp8;
mod quantize;
pub mod reference;

pub use dequant::{dequant_f8e4m3_row, dequant_f8e5m2_row, dequant_i8_row};
pub use fp8::{F8E4M3, F8E5M2};
pub use quantize::{f8_scale_for, quantize_f8e4m3_row, quantize_f8e5m2_row, quantize_i8_row};
