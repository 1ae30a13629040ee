//! Max-abs comparisons with the case label in the failure message (candle's
//! `assert_close`). Put the seed into the label.

use std::fmt::Display;

/// Largest `|a − b|` over two slices of equal length: equal values (equal infinities too)
/// differ by 0, and a NaN on either side makes the result NaN, so `err < tol` fails.
///
/// # Panics
/// If the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0f32, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// Asserts `|got[i] − want[i]| ≤ tol` for every `i` (in f64; a NaN fails), naming the
/// worst element, its values and `label` otherwise.
///
/// # Panics
/// If the lengths differ or an element is further than `tol` from its target.
pub fn assert_close<G, W>(label: impl Display, got: &[G], want: &[W], tol: f64)
where
    G: Copy + Into<f64>,
    W: Copy + Into<f64>,
{
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g.into() - w.into()).abs();
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{label}: max |err| = {:e} at {} (got {}, want {}), tol {tol:e}",
        worst.0,
        worst.1,
        got[worst.1].into(),
        want[worst.1].into()
    );
}

/// Asserts `|got[i] − want[i]| ≤ tol·(1 + max|want|)` for every `i`: an absolute tolerance
/// that grows with the size of the target (gradients, whose scale varies by case).
///
/// # Panics
/// If the lengths differ or an element is outside the tolerance.
pub fn assert_close_scaled(label: impl Display, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let amax = want.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + amax),
            "{label}[{i}] = {g}, want {w} (max |want| {amax})"
        );
    }
}
