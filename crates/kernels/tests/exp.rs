//! The vector exp of every variant the CPU runs, against `f64::exp`: a dense sweep of the
//! whole f32 range with the max ulp error asserted, the edge values, and tails.

use fastattn_kernels::exp::{
    exp_inplace, exp_inplace_with, exp_ref, exp_scalar, exp_slice, exp_slice_with, EXP_OVERFLOW,
    EXP_UNDERFLOW, MAX_ULP_ERROR,
};
use fastattn_kernels::{current_isa, Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use testutil::variants;

/// Smallest positive normal f32, as f64.
const MIN_NORMAL: f64 = f32::MIN_POSITIVE as f64;

/// The ulp of the f32 binade holding `v ≥ 2^-126` (`2^104` from `2^127` up, where an
/// overflowing result is measured as `2^128`).
fn ulp_at(v: f64) -> f64 {
    assert!(
        v >= MIN_NORMAL,
        "ulp_at({v:e}): results below 2^-126 are flushed"
    );
    let e = (((v.to_bits() >> 52) & 0x7ff) as i32 - 1023).min(127);
    2f64.powi(e - 23)
}

/// Error of an f32 result `y` against the exact `r`, in ulps of `r`'s binade (+inf counts
/// as `2^128`, and is exact for an `r` that rounds to it).
fn ulp_error(y: f32, r: f64) -> f64 {
    if y == f32::INFINITY && r >= 2f64.powi(128) - 2f64.powi(103) {
        return 0.0;
    }
    let yv = if y == f32::INFINITY {
        2f64.powi(128)
    } else {
        y as f64
    };
    (yv - r).abs() / ulp_at(r)
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    /// Max error (ulp) on the measured results and the input that gave it.
    max: (f64, f32),
    /// Inputs measured (those with a normal exact result).
    count: usize,
    /// Inputs checked exactly (NaN, overflow to +inf, flush to +0).
    exact: usize,
}

impl Stats {
    const ZERO: Stats = Stats {
        max: (0.0, 0.0),
        count: 0,
        exact: 0,
    };
    fn merge(self, o: Stats) -> Stats {
        Stats {
            max: if o.max.0 > self.max.0 {
                o.max
            } else {
                self.max
            },
            count: self.count + o.count,
            exact: self.exact + o.exact,
        }
    }
}

/// Stride of the bit-pattern sweep: every 211th f32 (about 20 million values, some 40 000
/// per exponent and sign).
const BIT_STRIDE: u64 = 211;
/// Points of the uniform grid over `[-104, 89]`.
const GRID: usize = 4 << 20;
const CHUNK: usize = 1 << 20;

/// The inputs of chunk `c`: first the bit sweep, then the grid, then every f32 near the
/// overflow and underflow (flush) thresholds and the ends of the reduced range.
fn chunk_inputs(c: usize) -> Vec<f32> {
    let n_bits = (1u64 << 32).div_ceil(BIT_STRIDE) as usize;
    let bit_chunks = n_bits.div_ceil(CHUNK);
    let grid_chunks = GRID.div_ceil(CHUNK);
    if c < bit_chunks {
        let lo = c * CHUNK;
        let hi = (lo + CHUNK).min(n_bits);
        (lo..hi)
            .map(|i| f32::from_bits((i as u64 * BIT_STRIDE) as u32))
            .collect()
    } else if c < bit_chunks + grid_chunks {
        let lo = (c - bit_chunks) * CHUNK;
        let hi = (lo + CHUNK).min(GRID);
        (lo..hi)
            .map(|i| (-104.0 + 193.0 * i as f64 / GRID as f64) as f32)
            .collect()
    } else {
        let mut v = Vec::new();
        for (a, b) in [
            (88.70f32, 88.74f32),
            (-87.40, -87.30),
            (-0.35, -0.34),
            (0.34, 0.35),
        ] {
            let mut x = a;
            while x <= b {
                v.push(x);
                x = x.next_up();
            }
        }
        v
    }
}

fn n_chunks() -> usize {
    let n_bits = (1u64 << 32).div_ceil(BIT_STRIDE) as usize;
    n_bits.div_ceil(CHUNK) + GRID.div_ceil(CHUNK) + 1
}

/// Runs `isa` over `xs`, checks the defined edges exactly, and measures the rest.
fn measure(isa: Isa, xs: &[f32], refs: &[f64], out: &mut [f32]) -> Stats {
    exp_slice_with(isa, xs, out).unwrap();
    let mut st = Stats::ZERO;
    for ((&x, &r), &y) in xs.iter().zip(refs).zip(out.iter()) {
        if x.is_nan() {
            assert!(y.is_nan(), "{isa}: exp(NaN {:#x}) = {y}", x.to_bits());
            st.exact += 1;
        } else if x > EXP_OVERFLOW {
            assert_eq!(y, f32::INFINITY, "{isa}: exp({x}) must overflow");
            st.exact += 1;
        } else if x < EXP_UNDERFLOW {
            assert_eq!(y.to_bits(), 0, "{isa}: exp({x}) = {y:e} must flush to +0");
            st.exact += 1;
        } else {
            assert!(
                y >= f32::MIN_POSITIVE,
                "{isa}: exp({x}) = {y:e} is not normal"
            );
            let e = ulp_error(y, r);
            st.count += 1;
            if e > st.max.0 {
                st.max = (e, x);
            }
        }
    }
    st
}

#[test]
fn exp_every_variant_is_within_its_ulp_bound_on_a_dense_sweep() {
    let isas = variants();
    let stats = (0..n_chunks())
        .into_par_iter()
        .map(|c| {
            let xs = chunk_inputs(c);
            let refs: Vec<f64> = xs.iter().map(|&x| exp_ref(x)).collect();
            let mut out = vec![0.0f32; xs.len()];
            isas.iter()
                .map(|&isa| measure(isa, &xs, &refs, &mut out))
                .collect::<Vec<_>>()
        })
        .reduce(
            || vec![Stats::ZERO; isas.len()],
            |a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect(),
        );
    for (isa, st) in isas.iter().zip(&stats) {
        eprintln!(
            "exp {isa:>8}: {} inputs with normal results, max error {:.3} ulp (at x = {:e}); \
             {} NaN / overflow / flush inputs exact",
            st.count, st.max.0, st.max.1, st.exact
        );
    }
    for (isa, st) in isas.iter().zip(&stats) {
        assert!(
            st.count > 10_000_000,
            "{isa}: only {} inputs measured",
            st.count
        );
        assert!(
            st.max.0 <= MAX_ULP_ERROR,
            "{isa}: {:.3} ulp > {MAX_ULP_ERROR} at x = {:e}",
            st.max.0,
            st.max.1
        );
    }
}

#[test]
fn exp_edges_are_defined_and_subnormals_flushed_on_every_variant() {
    let cases: &[(f32, f32)] = &[
        (0.0, 1.0),
        (-0.0, 1.0),
        (f32::NEG_INFINITY, 0.0),
        (f32::INFINITY, f32::INFINITY),
        (f32::MAX, f32::INFINITY),
        (f32::MIN, 0.0),
        (EXP_OVERFLOW.next_up(), f32::INFINITY),
        (89.0, f32::INFINITY),
        (1e10, f32::INFINITY),
        (EXP_UNDERFLOW.next_down(), 0.0),
        (-87.5, 0.0),
        (-100.0, 0.0),
        (-104.0, 0.0),
        (-1e10, 0.0),
        (f32::MIN_POSITIVE, 1.0),
        (-f32::MIN_POSITIVE, 1.0),
        (1e-45, 1.0),
        (-1e-45, 1.0),
    ];
    let nans = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffff_ffff),
    ];
    for isa in variants() {
        let xs: Vec<f32> = cases.iter().map(|c| c.0).chain(nans).collect();
        let mut y = vec![7.0f32; xs.len()];
        exp_slice_with(isa, &xs, &mut y).unwrap();
        for (&(x, want), &got) in cases.iter().zip(&y) {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{isa}: exp({x:e}) = {got:e}, want {want:e}"
            );
        }
        for (x, got) in nans.iter().zip(&y[cases.len()..]) {
            assert!(got.is_nan(), "{isa}: exp(NaN {:#x}) = {got}", x.to_bits());
        }
        // The largest finite result and the smallest normal one are reachable.
        let mut y = [0.0f32; 2];
        exp_slice_with(isa, &[EXP_OVERFLOW, EXP_UNDERFLOW], &mut y).unwrap();
        assert!(
            y[0].is_finite() && y[0] > 3.4e38,
            "{isa}: exp(EXP_OVERFLOW) = {:e}",
            y[0]
        );
        assert!(
            y[1] >= f32::MIN_POSITIVE && y[1] < 1.1755e-38,
            "{isa}: exp(EXP_UNDERFLOW) = {:e}",
            y[1]
        );
    }
    // The thresholds are what the docs say they are: the last inputs whose exact exp does
    // not round to +inf, and whose exact exp is not below 2^-126.
    let inf_edge = 2f64.powi(128) - 2f64.powi(103);
    assert!(exp_ref(EXP_OVERFLOW) < inf_edge && exp_ref(EXP_OVERFLOW.next_up()) >= inf_edge);
    assert!(exp_ref(EXP_UNDERFLOW) >= MIN_NORMAL);
    assert!(exp_ref(EXP_UNDERFLOW.next_down()) < MIN_NORMAL);
}

#[test]
fn exp_scalar_twin_matches_the_scalar_variant_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(11);
    let xs: Vec<f32> = (0..10_000)
        .map(|_| rng.random_range(-110.0f32..95.0))
        .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0])
        .collect();
    let mut y = vec![0.0f32; xs.len()];
    exp_slice_with(Isa::Scalar, &xs, &mut y).unwrap();
    for (&x, &v) in xs.iter().zip(&y) {
        assert_eq!(v.to_bits(), exp_scalar(x).to_bits(), "seed 11, x = {x:e}");
    }
}

#[test]
fn exp_every_variant_gives_the_same_bits_in_the_body_and_in_the_tail() {
    for isa in variants() {
        let seed = 20;
        let mut rng = StdRng::seed_from_u64(seed);
        for len in (0..=40).chain([63, 64, 65, 100, 1000]) {
            let xs: Vec<f32> = (0..len)
                .map(|_| rng.random_range(-100.0f32..90.0))
                .collect();
            let mut out = vec![f32::NAN; len];
            exp_slice_with(isa, &xs, &mut out).unwrap();
            let mut inplace = xs.clone();
            exp_inplace_with(isa, &mut inplace).unwrap();
            for (j, &x) in xs.iter().enumerate() {
                let mut one = [0.0f32];
                exp_slice_with(isa, &[x], &mut one).unwrap();
                assert_eq!(
                    out[j].to_bits(),
                    one[0].to_bits(),
                    "{isa} len {len} j {j} seed {seed}"
                );
                assert_eq!(
                    out[j].to_bits(),
                    inplace[j].to_bits(),
                    "{isa} len {len} j {j}"
                );
                if x >= EXP_UNDERFLOW {
                    let e = ulp_error(out[j], exp_ref(x));
                    assert!(e <= MAX_ULP_ERROR, "{isa} x {x}: {e} ulp");
                } else {
                    assert_eq!(out[j], 0.0, "{isa} x {x}: flushed");
                }
            }
        }
    }
}

#[test]
fn exp_tail_does_not_write_past_the_slice() {
    for isa in variants() {
        for len in 0..40 {
            let xs = vec![0.5f32; len];
            let mut buf = vec![-7.0f32; len + 20];
            exp_slice_with(isa, &xs, &mut buf[3..3 + len]).unwrap();
            assert!(buf[..3].iter().all(|&v| v == -7.0), "{isa} len {len}");
            assert!(buf[3 + len..].iter().all(|&v| v == -7.0), "{isa} len {len}");
        }
    }
}

#[test]
fn exp_rejects_bad_lengths_and_unsupported_isas() {
    let mut out = [0.0f32; 3];
    assert!(matches!(
        exp_slice_with(Isa::Scalar, &[1.0, 2.0], &mut out),
        Err(KernelError::ShapeMismatch {
            op: "exp_slice",
            ..
        })
    ));
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        assert!(matches!(
            exp_slice_with(isa, &[1.0], &mut out[..1]),
            Err(KernelError::UnsupportedIsa { .. })
        ));
        assert!(exp_inplace_with(isa, &mut out).is_err());
    }
}

#[test]
fn exp_dispatcher_uses_the_current_isa() {
    let isa = current_isa().unwrap();
    let xs: Vec<f32> = (0..77).map(|i| i as f32 * 0.37 - 14.0).collect();
    let mut a = vec![0.0f32; xs.len()];
    let mut b = vec![0.0f32; xs.len()];
    exp_slice(&xs, &mut a).unwrap();
    exp_slice_with(isa, &xs, &mut b).unwrap();
    assert_eq!(a, b);
    let mut c = xs.clone();
    exp_inplace(&mut c).unwrap();
    assert_eq!(a, c);
}
