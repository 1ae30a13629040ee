//! The element-wise row loops of the attention backward pass: `P = exp(s − lse)` recomputed
//! from the forward's log-sum-exp, and `dS = P ∘ (dP − D) ∘ cap'`.
//!
//! Written once over the crate's SIMD-ops trait and run through its ISA dispatcher with
//! the ops of the ISA the call names (no feature detection per row). Both loops are
//! purely element-wise (no reduction), so every variant gives the same bits: each element
//! goes through the same IEEE operations in the same order as in the scalar formulation
//! (`s − lse`, then the exp; `(p·(dp − D))·cap'`).

use crate::dispatch::Isa;
use crate::error::{KernelError, Result};
use crate::exp::exp_stream;
use crate::simd::{dispatch, IsaKernel, SimdOps};

/// `2^64`: multiplying by it turns every subnormal into a normal number, exactly.
const TWO_POW_64: f32 = 18_446_744_073_709_551_616.0;

/// `row[j] −= lse`, then `row[j] = exp(row[j])`.
struct SubExp<'a> {
    row: &'a mut [f32],
    lse: f32,
}

impl IsaKernel for SubExp<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let n = self.row.len();
        let p = self.row.as_mut_ptr();
        let l = S::LANES;
        let mut j = 0;
        // SAFETY: accesses inside `0..n` by the loop conditions (the row holds `n`
        // values); the exp reads and writes the same `n` values in place; the ISA is
        // present (caller contract).
        unsafe {
            let lse = S::splat(self.lse);
            while j + l <= n {
                S::store(p.add(j), S::sub(S::load(p.add(j)), lse));
                j += l;
            }
            if j < n {
                let k = n - j;
                S::store_partial(p.add(j), k, S::sub(S::load_partial(p.add(j), k), lse));
            }
            exp_stream::<S>(p, p, n);
        }
    }
}

/// `dS` in place of `dp` (see [`ds_row_with`]).
struct Ds<'a> {
    dp: &'a mut [f32],
    p: &'a [f32],
    cap: Option<&'a [f32]>,
    dsum: f32,
}

/// `dS` of one vector: `(p·(g − D))·c` (no `c` without soft-capping), `+0` where `p == 0`.
///
/// The selection: `m = |p|·2^64` is below `f32::MIN_POSITIVE` exactly when `p` is ±0 (a
/// subnormal `p` becomes a normal number; a NaN `p` gives a NaN `m`, which keeps the
/// value, as `p == 0` is false for it). Where the CPU treats subnormal inputs as zero,
/// a subnormal `p` counts as 0 here as it does in the scalar `p == 0.0` comparison.
///
/// # Safety
/// The ISA is present.
#[inline(always)]
unsafe fn ds_v<S: SimdOps, const CAP: bool>(g: S::V, p: S::V, c: S::V, dsum: S::V) -> S::V {
    // SAFETY: the ISA is present (caller contract).
    unsafe {
        let t = S::mul(p, S::sub(g, dsum));
        let t = if CAP { S::mul(t, c) } else { t };
        let abs = S::max(p, S::sub(S::splat(0.0), p));
        let m = S::mul(abs, S::splat(TWO_POW_64));
        S::zero_below(t, m, S::splat(f32::MIN_POSITIVE))
    }
}

/// The `dS` loop over `n` values, with or without the soft-cap factor.
///
/// # Safety
/// `dp` readable and writable, `p` (and `cap` when `CAP`) readable for `n` values; the ISA
/// is present.
#[inline(always)]
unsafe fn ds_loop<S: SimdOps, const CAP: bool>(
    dp: *mut f32,
    p: *const f32,
    cap: *const f32,
    n: usize,
    dsum: f32,
) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: accesses inside `0..n` by the loop conditions; `cap` is read only when
    // `CAP`; the ISA is present (caller contract).
    unsafe {
        let d = S::splat(dsum);
        let one = S::splat(1.0);
        while j + l <= n {
            let c = if CAP { S::load(cap.add(j)) } else { one };
            let v = ds_v::<S, CAP>(S::load(dp.add(j)), S::load(p.add(j)), c, d);
            S::store(dp.add(j), v);
            j += l;
        }
        if j < n {
            let k = n - j;
            let c = if CAP {
                S::load_partial(cap.add(j), k)
            } else {
                one
            };
            let v = ds_v::<S, CAP>(
                S::load_partial(dp.add(j), k),
                S::load_partial(p.add(j), k),
                c,
                d,
            );
            S::store_partial(dp.add(j), k, v);
        }
    }
}

impl IsaKernel for Ds<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let n = self.dp.len();
        let (dp, p) = (self.dp.as_mut_ptr(), self.p.as_ptr());
        // SAFETY: `dp`, `p` and `cap` hold `n` values (checked by the caller); the ISA is
        // present (caller contract).
        unsafe {
            match self.cap {
                Some(c) => ds_loop::<S, true>(dp, p, c.as_ptr(), n, self.dsum),
                None => ds_loop::<S, false>(dp, p, std::ptr::null(), n, self.dsum),
            }
        }
    }
}

/// `row[j] = exp(row[j] − lse)`: the attention weights of a score row recomputed from the
/// forward's log-sum-exp (`row[j] − lse` rounded once, then [`crate::exp`]'s vector exp, in
/// one pass per vector).
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::softmax::backward::sub_exp_row_with;
/// let mut row = [2.0f32, f32::NEG_INFINITY];
/// sub_exp_row_with(fastattn_kernels::Isa::best(), &mut row, 2.0)?;
/// assert_eq!(row, [1.0, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn sub_exp_row_with(isa: Isa, row: &mut [f32], lse: f32) -> Result<()> {
    isa.check()?;
    // SAFETY: `isa` was checked above.
    unsafe { dispatch(isa, SubExp { row, lse }) };
    Ok(())
}

/// `dp[j] = p[j]·(dp[j] − dsum)·cap[j]` (without the last factor when `cap` is `None`),
/// and exactly `+0` where `p[j] == 0`: the gradient of the scores, `dS = P ∘ (dP − D) ∘
/// cap'`. A key the row cannot see has weight 0, and its `dS` is 0 by selection, never by
/// a multiply, so a NaN or an infinity in its `dP` stays out.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if `p` (or `cap`) is not as long as `dp`;
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::softmax::backward::ds_row_with;
/// let mut dp = [3.0f32, f32::NAN];
/// ds_row_with(fastattn_kernels::Isa::best(), &mut dp, &[0.5, 0.0], None, 1.0)?;
/// assert_eq!(dp, [1.0, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn ds_row_with(
    isa: Isa,
    dp: &mut [f32],
    p: &[f32],
    cap: Option<&[f32]>,
    dsum: f32,
) -> Result<()> {
    let n = dp.len();
    if p.len() != n || cap.is_some_and(|c| c.len() != n) {
        return Err(KernelError::ShapeMismatch {
            op: "ds_row_with",
            expected: format!("p (and cap) of {n} values"),
            got: format!("{} and {:?}", p.len(), cap.map(<[f32]>::len)),
        });
    }
    isa.check()?;
    // SAFETY: `isa` was checked above; the lengths match.
    unsafe { dispatch(isa, Ds { dp, p, cap, dsum }) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward's former scalar loops: `row −= lse`, then the exp.
    fn sub_exp_ref(isa: Isa, row: &mut [f32], lse: f32) {
        for s in row.iter_mut() {
            *s -= lse;
        }
        crate::exp::exp_inplace_with(isa, row).unwrap();
    }

    fn ds_ref(dp: &mut [f32], p: &[f32], cap: Option<&[f32]>, dsum: f32) {
        match cap {
            Some(cap) => {
                for ((g, &pr), &c) in dp.iter_mut().zip(p).zip(cap) {
                    *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) * c };
                }
            }
            None => {
                for (g, &pr) in dp.iter_mut().zip(p) {
                    *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) };
                }
            }
        }
    }

    /// A small xorshift generator (no dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        }
        /// Mostly ordinary values, some special ones.
        fn special(&mut self, ordinary: f32) -> f32 {
            match self.next() % 16 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                3 => f32::INFINITY,
                4 => f32::NEG_INFINITY,
                5 => f32::from_bits(1 + (self.next() % 0x7f_ffff) as u32),
                6 => 1e30,
                _ => ordinary,
            }
        }
    }

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn rows_match_the_scalar_formulation_bit_for_bit_on_every_isa() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for isa in Isa::available() {
            for n in (0..70).chain([127, 128, 129, 192, 512]) {
                for _ in 0..4 {
                    let lse = rng.f();
                    let row: Vec<f32> = (0..n)
                        .map(|_| {
                            let x = rng.f();
                            rng.special(x)
                        })
                        .collect();
                    let (mut a, mut b) = (row.clone(), row.clone());
                    sub_exp_row_with(isa, &mut a, lse).unwrap();
                    sub_exp_ref(isa, &mut b, lse);
                    assert!(same(&a, &b), "{isa:?} n={n}: sub_exp {a:?} vs {b:?}");

                    let p: Vec<f32> = (0..n)
                        .map(|_| {
                            let x = rng.f().abs() / 4.0;
                            rng.special(x)
                        })
                        .collect();
                    let dp: Vec<f32> = (0..n)
                        .map(|_| {
                            let x = rng.f();
                            rng.special(x)
                        })
                        .collect();
                    let cap: Vec<f32> = (0..n).map(|_| rng.f().abs() / 4.0).collect();
                    let dsum = rng.f();
                    for c in [None, Some(&cap[..])] {
                        let (mut a, mut b) = (dp.clone(), dp.clone());
                        ds_row_with(isa, &mut a, &p, c, dsum).unwrap();
                        ds_ref(&mut b, &p, c, dsum);
                        assert!(same(&a, &b), "{isa:?} n={n}: ds {a:?} vs {b:?}");
                        for (x, &pr) in a.iter().zip(&p) {
                            if pr == 0.0 {
                                assert_eq!(x.to_bits(), 0);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ds_checks_lengths() {
        let mut dp = [0.0f32; 3];
        assert!(ds_row_with(Isa::Scalar, &mut dp, &[0.0; 2], None, 0.0).is_err());
        assert!(ds_row_with(Isa::Scalar, &mut dp, &[0.0; 3], Some(&[0.0; 4]), 0.0).is_err());
    }
}
