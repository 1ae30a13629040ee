//! The two fp8 storage types, [`F8E4M3`] (e4m3fn) and [`F8E5M2`], with exact decoding and
//! round-to-nearest-even, saturating encoding.

/// The format parameters the encoder needs (see [`encode`]).
struct Format {
    /// Mantissa bits.
    man: u32,
    /// Exponent bias.
    bias: i32,
    /// Largest finite magnitude.
    max: f32,
    /// Code of the largest finite magnitude (sign bit clear).
    max_code: u8,
    /// The NaN code `from_f32` writes (sign bit clear).
    nan_code: u8,
}

const E4M3: Format = Format {
    man: 3,
    bias: 7,
    max: 448.0,
    max_code: 0x7E,
    nan_code: 0x7F,
};

const E5M2: Format = Format {
    man: 2,
    bias: 15,
    max: 57344.0,
    max_code: 0x7B,
    nan_code: 0x7E,
};

/// Rounds `x` to the nearest code of `f` (ties to even), saturating at `±f.max`; ±inf
/// saturates too, NaN gives `f.nan_code` with `x`'s sign.
#[inline]
fn encode(f: &Format, x: f32) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let a = x.abs();
    if a.is_nan() {
        return sign | f.nan_code;
    }
    if a >= f.max {
        // Everything at or past the largest finite value, ±inf included.
        return sign | f.max_code;
    }
    // Smallest normal magnitude 2^(1-bias).
    let min_normal = f32::from_bits(((1 - f.bias + 127) as u32) << 23);
    let mag = if a < min_normal {
        // Subnormal range: a whole number of the spacing 2^(1-bias-man). Dividing by a power
        // of two is exact; the quotient is at most 2^man, and 2^man is the code of the
        // smallest normal (exponent field 1, mantissa 0), so the code is the quotient.
        let spacing = f32::from_bits(((1 - f.bias - f.man as i32 + 127) as u32) << 23);
        (a / spacing).round_ties_even() as u8
    } else {
        // Normal range: round the f32 mantissa to `man` bits, ties to even, on the bit
        // pattern (a carry moves into the exponent, as it should), then rebias.
        let bits = a.to_bits();
        let shift = 23 - f.man;
        let odd = (bits >> shift) & 1;
        let rounded = (bits + (1 << (shift - 1)) - 1 + odd) >> shift;
        (rounded - (((127 - f.bias) as u32) << f.man)) as u8
    };
    // a < max rounds to at most max (ties at the top go to the even max code or below).
    sign | mag.min(f.max_code)
}

/// An fp8 **e4m3fn** number (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
/// infinities; NaN is `0x7F`/`0xFF`; largest finite value ±448; smallest subnormal 2^-9),
/// the `torch.float8_e4m3fn` and vLLM `fp8_e4m3` format, stored as its bit pattern.
///
/// ```
/// use fastattn_kernels::quant::F8E4M3;
/// assert_eq!(F8E4M3::from_f32(1.0).to_bits(), 0x38);
/// assert_eq!(F8E4M3::from_f32(1000.0).to_f32(), 448.0); // saturates
/// assert!(F8E4M3::from_bits(0x7F).to_f32().is_nan());
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct F8E4M3(u8);

impl F8E4M3 {
    /// The largest finite value, 448.
    pub const MAX: f32 = 448.0;
    /// The NaN code (sign clear) that [`from_f32`](Self::from_f32) writes for NaN.
    pub const NAN: F8E4M3 = F8E4M3(0x7F);

    /// The number with bit pattern `bits`.
    pub const fn from_bits(bits: u8) -> Self {
        F8E4M3(bits)
    }

    /// The bit pattern.
    pub const fn to_bits(self) -> u8 {
        self.0
    }

    /// The value as f32 (exact; `0x7F`/`0xFF` give NaN).
    #[inline]
    pub fn to_f32(self) -> f32 {
        let mag = u32::from(self.0 & 0x7F);
        let v = if mag == 0x7F {
            f32::NAN
        } else if mag < 8 {
            // Subnormal: mantissa · 2^-9 (exact: a small integer times a power of two).
            mag as f32 * (1.0 / 512.0)
        } else {
            // Normal: exponent field e (bias 7) becomes e + 120 (bias 127); the mantissa
            // moves to the top of the f32 mantissa.
            f32::from_bits(((mag >> 3) + 120) << 23 | (mag & 7) << 20)
        };
        if self.0 & 0x80 != 0 {
            -v
        } else {
            v
        }
    }

    /// Rounds `x` to the nearest e4m3fn number, ties to even. Saturating, as vLLM's cast:
    /// finite values beyond ±448 and ±inf give ±448 (the format has no infinity); NaN gives
    /// the NaN code `0x7F` with `x`'s sign (`0xFF` for a negative NaN).
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        F8E4M3(encode(&E4M3, x))
    }
}

/// An fp8 **e5m2** number (1 sign, 5 exponent bits with bias 15, 2 mantissa bits; the top
/// byte of an IEEE f16: ±inf are `0x7C`/`0xFC`, NaN `0x7D..=0x7F` and `0xFD..=0xFF`;
/// largest finite value ±57344; smallest subnormal 2^-16), the `torch.float8_e5m2` and
/// vLLM `fp8_e5m2` format, stored as its bit pattern.
///
/// ```
/// use fastattn_kernels::quant::F8E5M2;
/// assert_eq!(F8E5M2::from_f32(1.0).to_bits(), 0x3C);
/// assert_eq!(F8E5M2::from_f32(f32::INFINITY).to_f32(), 57344.0); // saturates
/// assert_eq!(F8E5M2::from_bits(0x7C).to_f32(), f32::INFINITY);
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct F8E5M2(u8);

impl F8E5M2 {
    /// The largest finite value, 57344.
    pub const MAX: f32 = 57344.0;
    /// The NaN code (sign clear) that [`from_f32`](Self::from_f32) writes for NaN.
    pub const NAN: F8E5M2 = F8E5M2(0x7E);

    /// The number with bit pattern `bits`.
    pub const fn from_bits(bits: u8) -> Self {
        F8E5M2(bits)
    }

    /// The bit pattern.
    pub const fn to_bits(self) -> u8 {
        self.0
    }

    /// The value as f32 (exact: the code is the top byte of an f16, widened exactly).
    #[inline]
    pub fn to_f32(self) -> f32 {
        half::f16::from_bits(u16::from(self.0) << 8).to_f32()
    }

    /// Rounds `x` to the nearest e5m2 number, ties to even. Saturating like
    /// [`F8E4M3::from_f32`], for one rule across both formats: finite values beyond ±57344
    /// and ±inf give ±57344 (the infinity codes are decoded but never written); NaN gives
    /// the NaN code `0x7E` with `x`'s sign.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        F8E5M2(encode(&E5M2, x))
    }
}
