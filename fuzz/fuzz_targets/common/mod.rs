//! Helpers shared by the fuzz targets: bounded sizes and values drawn from the fuzzer's
//! bytes, and the switch for inputs that hit known bugs.

#![allow(dead_code)]

use arbitrary::{Result, Unstructured};

/// Whether to feed inputs that hit known, reported bugs (each skip names its ignored test).
/// Off by default so that CI's bounded runs look for new bugs; set
/// `FASTATTN_FUZZ_KNOWN_BUGS=1` to reproduce the known ones.
pub fn known_bugs() -> bool {
    std::env::var_os("FASTATTN_FUZZ_KNOWN_BUGS").is_some()
}

/// A value on a grid of 1/16 in `[-2, 2)`: products and sums stay small and exactly
/// representable enough for tight tolerances.
pub fn small(u: &mut Unstructured<'_>) -> Result<f32> {
    Ok(u.int_in_range(-32i8..=31)? as f32 / 16.0)
}

/// Special values that must never crash anything.
pub const SPECIALS: [f32; 9] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e30,
    -1e30,
    0.0,
    -0.0,
    1e-40, // subnormal
    f32::MAX,
];

/// `small`, or (when `special`) sometimes one of [`SPECIALS`].
pub fn value(u: &mut Unstructured<'_>, special: bool) -> Result<f32> {
    if special && u.ratio(1u8, 6)? {
        Ok(*u.choose(&SPECIALS)?)
    } else {
        small(u)
    }
}

/// `len` values (see [`value`]); runs out of fuzzer bytes gracefully (zeros).
pub fn values(u: &mut Unstructured<'_>, len: usize, special: bool) -> Vec<f32> {
    (0..len).map(|_| value(u, special).unwrap_or(0.0)).collect()
}

/// Whether all values are finite.
pub fn finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}
