//! Readable scalar oracles for the 8-bit codecs, written from the format definitions (never
//! optimised): decoding by the formula, encoding by a search over every code, and the row
//! dequantisation twins of [`super::dequant`].

/// An fp8 format by its definition.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Spec {
    /// Exponent bits.
    pub exp_bits: u32,
    /// Mantissa bits.
    pub man_bits: u32,
    /// Exponent bias.
    pub bias: i32,
    /// Whether the all-ones exponent is reserved for inf (mantissa 0) and NaN (e5m2, IEEE
    /// style); if not, only the all-ones code is NaN and the rest are finite (e4m3fn).
    pub ieee_specials: bool,
}

/// e4m3fn: bias 7, no infinities, NaN only at `S.1111.111`.
pub const E4M3_SPEC: Fp8Spec = Fp8Spec {
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    ieee_specials: false,
};

/// e5m2: bias 15, IEEE infinities and NaNs.
pub const E5M2_SPEC: Fp8Spec = Fp8Spec {
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    ieee_specials: true,
};

/// The value of code `bits` in format `f`, from the definition:
/// `(-1)^s · 2^(e − bias) · (1 + m/2^M)` for `e > 0`, `(-1)^s · 2^(1 − bias) · m/2^M` for
/// `e = 0`, with the format's special codes (NaN, inf).
pub fn fp8_decode_ref(f: Fp8Spec, bits: u8) -> f64 {
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let e_max = (1u32 << f.exp_bits) - 1;
    let m_max = (1u32 << f.man_bits) - 1;
    let e = (u32::from(bits) >> f.man_bits) & e_max;
    let m = u32::from(bits) & m_max;
    let frac = f64::from(m) / f64::from(1u32 << f.man_bits);
    if f.ieee_specials && e == e_max {
        return if m == 0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    if !f.ieee_specials && e == e_max && m == m_max {
        return f64::NAN;
    }
    if e == 0 {
        sign * 2f64.powi(1 - f.bias) * frac
    } else {
        sign * 2f64.powi(e as i32 - f.bias) * (1.0 + frac)
    }
}

/// The nearest finite code of `f` to `x` (ties to the code with an even mantissa, that is an
/// even bit pattern), found by comparing against every finite code; values beyond the
/// largest finite magnitude and ±inf saturate to it; NaN gives `nan_code` with `x`'s sign.
pub fn fp8_encode_ref(f: Fp8Spec, x: f32, nan_code: u8) -> u8 {
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | nan_code;
    }
    // Saturation: anything beyond the largest finite value (±inf included) is clamped to it
    // first (comparing errors of huge values would tie after rounding).
    let largest = (0u8..0x80)
        .map(|c| fp8_decode_ref(f, c))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let a = f64::from(x.abs()).min(largest);
    let mut best = 0u8;
    let mut best_err = f64::INFINITY;
    for code in 0u8..0x80 {
        let v = fp8_decode_ref(f, code);
        if !v.is_finite() {
            continue;
        }
        let err = (v - a).abs();
        if err < best_err || (err == best_err && code % 2 == 0) {
            best = code;
            best_err = err;
        }
    }
    sign | best
}

/// Twin of [`super::dequant_i8_row`]: `q as f32 × scale`, one f32 product per value.
pub fn dequant_i8_row_ref(src: &[i8], scale: f32) -> Vec<f32> {
    src.iter().map(|&q| f32::from(q) * scale).collect()
}

/// Twin of [`super::dequant_f8e4m3_row`]: `decode(c) × scale` in f32 (decode is exact).
pub fn dequant_f8e4m3_row_ref(src: &[super::F8E4M3], scale: f32) -> Vec<f32> {
    src.iter()
        .map(|c| fp8_decode_ref(E4M3_SPEC, c.to_bits()) as f32 * scale)
        .collect()
}

/// Twin of [`super::dequant_f8e5m2_row`]: `decode(c) × scale` in f32 (decode is exact).
pub fn dequant_f8e5m2_row_ref(src: &[super::F8E5M2], scale: f32) -> Vec<f32> {
    src.iter()
        .map(|c| fp8_decode_ref(E5M2_SPEC, c.to_bits()) as f32 * scale)
        .collect()
}
