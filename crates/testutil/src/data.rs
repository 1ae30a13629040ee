//! Random data from a seeded `StdRng`.
//!
//! Each generator draws exactly one `random_range` per element, in order, so a test that
//! switches to these helpers keeps its data bit for bit.

use kernels::Element;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The generator every test uses: `StdRng` from `seed` (print the seed when a check fails).
pub fn seeded(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values uniform in `[-1, 1)`.
pub fn rand_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    rand_vec_amp(rng, len, 1.0)
}

/// `len` values uniform in `[-amp, amp)` (drawn in f32).
pub fn rand_vec_amp(rng: &mut StdRng, len: usize, amp: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-amp..amp)).collect()
}

/// `len` values uniform in `[lo, hi)`, drawn in f64 and rounded to f32, so ranges as wide as
/// ±3e38 work.
pub fn rand_vec_wide(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(lo as f64..hi as f64) as f32)
        .collect()
}

/// `len` values uniform in `[-1, 1)` rounded to the element type `T` (the same draws as
/// [`rand_vec`]).
pub fn rand_t<T: Element>(rng: &mut StdRng, len: usize) -> Vec<T> {
    rand_vec(rng, len).into_iter().map(T::from_f32).collect()
}

/// The values of `x` widened to f32 (exact for every element type).
pub fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// `len` deterministic values `sin((i + 1)·f)` in `[-1, 1]`, for tests that want fixed data
/// without a generator.
pub fn seq(len: usize, f: f32) -> Vec<f32> {
    (0..len).map(|i| ((i as f32 + 1.0) * f).sin()).collect()
}
