//! Softmax, log-softmax and the online building blocks of every variant the CPU runs,
//! against the f64 references: the issue's row lengths, huge and tiny logits, masks, causal
//! limits, the edge semantics, parallel splits, and online merges against one-shot rows.

use fastattn_kernels::softmax::online::{
    exp_row_update, finish, merge, rescale, rescale_factor, OnlineState,
};
use fastattn_kernels::softmax::reference::{log_softmax_ref, logits_ref, softmax_ref};
use fastattn_kernels::softmax::{
    log_softmax, log_softmax_inplace, log_softmax_inplace_with, log_softmax_row_with,
    log_softmax_with, softmax, softmax_inplace, softmax_inplace_with, softmax_row_with,
    softmax_with, RowOptions, PAR_MIN_ELEMENTS,
};
use fastattn_kernels::{current_isa, Isa, KernelError, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{rand_vec_wide, variants};

const EPS: f64 = f32::EPSILON as f64;
const NEG_INF: f32 = f32::NEG_INFINITY;

/// The lengths the issue asks for, plus the lane counts ±1 of every variant.
const LENGTHS: &[usize] = &[
    1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 1000, 4097,
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Softmax,
    LogSoftmax,
}

/// Runs `op` in place and out of place, asserts both give the same bits, returns the result.
fn run(
    isa: Isa,
    par: Parallelism,
    op: Op,
    x: &[f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Vec<f32> {
    let mut inplace = x.to_vec();
    let mut out = vec![f32::NAN; x.len()];
    match op {
        Op::Softmax => {
            softmax_inplace_with(isa, par, &mut inplace, row_len, opts).unwrap();
            softmax_with(isa, par, x, &mut out, row_len, opts).unwrap();
        }
        Op::LogSoftmax => {
            log_softmax_inplace_with(isa, par, &mut inplace, row_len, opts).unwrap();
            log_softmax_with(isa, par, x, &mut out, row_len, opts).unwrap();
        }
    }
    assert!(
        inplace
            .iter()
            .zip(&out)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{isa} {op:?}: in-place and out-of-place results differ (row_len {row_len})"
    );
    out
}

/// Compares with the f64 reference, row by row. The tolerance follows the error sources:
/// the exp (~1 ulp) and the division, the sum (grows with the row length), the rounding of
/// `d = s − max` (relative to `|d|`), and `slack`: the size of the logits when computing
/// them in f32 rounds (a scale that is not a power of two, or a mask), else 0.
fn assert_close(
    label: &str,
    op: Op,
    got: &[f32],
    x: &[f32],
    row_len: usize,
    opts: &RowOptions<'_>,
    slack: f64,
) {
    let want = match op {
        Op::Softmax => softmax_ref(x, row_len, opts),
        Op::LogSoftmax => log_softmax_ref(x, row_len, opts),
    };
    let s = logits_ref(x, row_len, opts);
    assert_eq!(got.len(), want.len());
    for (r, ((g, w), s)) in got
        .chunks(row_len)
        .zip(want.chunks(row_len))
        .zip(s.chunks(row_len))
        .enumerate()
    {
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for j in 0..row_len {
            let (gj, wj) = (g[j], w[j]);
            if wj.is_nan() {
                assert!(gj.is_nan(), "{label}: row {r} col {j}: got {gj}, want NaN");
                continue;
            }
            if wj < f32::MIN as f64 {
                // Below −f32::MAX (log-softmax of logits ±3e38): rounds to −inf in f32.
                assert_eq!(
                    gj, NEG_INF,
                    "{label}: row {r} col {j}: {wj:e} overflows f32"
                );
                continue;
            }
            if wj.is_infinite() || wj == 0.0 && !s[j].is_finite() {
                assert_eq!(
                    gj as f64, wj,
                    "{label}: row {r} col {j} must be exactly {wj}"
                );
                continue;
            }
            let d = (s[j] - m).abs();
            let base = 16.0 + row_len as f64 / 8.0 + 2.0 * d + slack;
            let tol = match op {
                Op::Softmax => wj * EPS * base + 1e-37,
                Op::LogSoftmax => EPS * (base + wj.abs()),
            };
            let err = (gj as f64 - wj).abs();
            assert!(
                err <= tol,
                "{label}: row {r} col {j}: got {gj:e}, want {wj:e}, error {err:e} > tol {tol:e}"
            );
        }
    }
}

/// The slack for logits computed with `scale` and `mask` (see [`assert_close`]).
fn slack_of(x: &[f32], opts: &RowOptions<'_>) -> f64 {
    let pow2 = opts.scale != 0.0 && opts.scale.abs().log2().fract() == 0.0;
    if pow2 && opts.mask.is_none() {
        return 0.0;
    }
    let xs = x
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, &v| a.max((v * opts.scale).abs() as f64));
    let ms = opts
        .mask
        .unwrap_or(&[])
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, &v| a.max(v.abs() as f64));
    4.0 * (xs + ms)
}

#[test]
fn softmax_every_variant_matches_ref_on_the_issue_lengths() {
    let scales = [1.0f32, 0.125, 0.088_388_35, 3.7];
    for isa in variants() {
        for (li, &n) in LENGTHS.iter().enumerate() {
            for (si, &scale) in scales.iter().enumerate() {
                let seed = 1000 + (li * 10 + si) as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let rows = 3;
                let x = rand_vec_wide(&mut rng, rows * n, -10.0, 10.0);
                let opts = RowOptions::new().with_scale(scale);
                for op in [Op::Softmax, Op::LogSoftmax] {
                    let got = run(isa, Parallelism::Sequential, op, &x, n, &opts);
                    let label = format!("{isa} {op:?} n={n} scale={scale} seed={seed}");
                    assert_close(&label, op, &got, &x, n, &opts, slack_of(&x, &opts));
                }
            }
        }
    }
}

#[test]
fn softmax_rows_sum_to_one_and_lie_in_the_unit_interval() {
    for isa in variants() {
        let seed = 2000;
        let mut rng = StdRng::seed_from_u64(seed);
        for &n in LENGTHS {
            let x = rand_vec_wide(&mut rng, 4 * n, -30.0, 30.0);
            let got = run(
                isa,
                Parallelism::Sequential,
                Op::Softmax,
                &x,
                n,
                &RowOptions::new(),
            );
            for (r, row) in got.chunks(n).enumerate() {
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                assert!(
                    (sum - 1.0).abs() <= EPS * (4.0 + n as f64 / 4.0),
                    "{isa} n={n} row {r} seed {seed}: sum {sum}"
                );
                assert!(
                    row.iter().all(|&v| (0.0..=1.0).contains(&v)),
                    "{isa} n={n} row {r} seed {seed}: value outside [0, 1]"
                );
            }
        }
    }
}

#[test]
fn softmax_is_shift_invariant() {
    for isa in variants() {
        let seed = 2100;
        let mut rng = StdRng::seed_from_u64(seed);
        for &n in &[1usize, 9, 64, 65, 1000] {
            // Multiples of 1/64 below 2^13: adding an integer shift is exact, so the
            // differences s − max, hence every output, are bit-identical.
            let x: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-640i32..640) as f32 / 64.0)
                .collect();
            for op in [Op::Softmax, Op::LogSoftmax] {
                let base = run(isa, Parallelism::Sequential, op, &x, n, &RowOptions::new());
                for c in [-1000.0f32, 37.0, 5000.0] {
                    let xs: Vec<f32> = x.iter().map(|v| v + c).collect();
                    let got = run(isa, Parallelism::Sequential, op, &xs, n, &RowOptions::new());
                    if op == Op::Softmax {
                        assert_eq!(got, base, "{isa} {op:?} n={n} shift {c} seed {seed}");
                    } else {
                        // log-softmax is (x − max) − ln Σ: also exact in the shift.
                        assert_eq!(got, base, "{isa} {op:?} n={n} shift {c} seed {seed}");
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_huge_and_tiny_logits_give_no_nan_or_inf() {
    for isa in variants() {
        for (ci, &(lo, hi)) in [
            (1e4f32, 1e4 + 10.0),
            (-1e4 - 10.0, -1e4),
            (-1e4, 1e4),
            (-1e6, 1e6),
            (1e30, 3e30),
            (-3e38, 3e38),
            (-1e-30, 1e-30),
            (-1e-40, 1e-40),
        ]
        .iter()
        .enumerate()
        {
            for &n in &[1usize, 7, 16, 17, 65, 1000] {
                let seed = 2200 + ci as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let x = rand_vec_wide(&mut rng, 2 * n, lo, hi);
                for scale in [1.0f32, 0.125] {
                    let opts = RowOptions::new().with_scale(scale);
                    for op in [Op::Softmax, Op::LogSoftmax] {
                        let got = run(isa, Parallelism::Sequential, op, &x, n, &opts);
                        let label =
                            format!("{isa} {op:?} n={n} logits in [{lo:e}, {hi:e}) seed {seed}");
                        match op {
                            Op::Softmax => {
                                assert!(got.iter().all(|v| v.is_finite()), "{label}: NaN or inf")
                            }
                            Op::LogSoftmax => assert!(
                                got.iter().all(|v| !v.is_nan() && *v != f32::INFINITY),
                                "{label}: NaN or +inf"
                            ),
                        }
                        assert_close(&label, op, &got, &x, n, &opts, slack_of(&x, &opts));
                    }
                }
            }
        }
        // One logit far above the rest: one-hot, exactly.
        let mut x = vec![-1e4f32; 33];
        x[20] = 1e4;
        let got = run(
            isa,
            Parallelism::Sequential,
            Op::Softmax,
            &x,
            33,
            &RowOptions::new(),
        );
        let mut want = vec![0.0f32; 33];
        want[20] = 1.0;
        assert_eq!(got, want, "{isa}: one-hot");
    }
}

#[test]
fn softmax_masked_rows_match_ref() {
    for isa in variants() {
        for (li, &n) in LENGTHS.iter().enumerate() {
            let seed = 3000 + li as u64;
            let mut rng = StdRng::seed_from_u64(seed);
            let rows = 3;
            let x = rand_vec_wide(&mut rng, rows * n, -8.0, 8.0);
            let mut mask_of = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        if rng.random_bool(0.3) {
                            NEG_INF
                        } else {
                            rng.random_range(-2.0f32..2.0)
                        }
                    })
                    .collect()
            };
            let broadcast = mask_of(n);
            let per_row = mask_of(rows * n);
            for mask in [&broadcast, &per_row] {
                let opts = RowOptions::new().with_scale(0.25).with_mask(mask);
                for op in [Op::Softmax, Op::LogSoftmax] {
                    let got = run(isa, Parallelism::Sequential, op, &x, n, &opts);
                    let label = format!(
                        "{isa} {op:?} n={n} mask of {} seed {seed}",
                        if mask.len() == n {
                            "one row"
                        } else {
                            "every row"
                        }
                    );
                    assert_close(&label, op, &got, &x, n, &opts, slack_of(&x, &opts));
                    // Masked columns are exactly 0 (log: −inf), unless the row is all masked.
                    for (r, row) in got.chunks(n).enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            let mj = if mask.len() == n {
                                mask[j]
                            } else {
                                mask[r * n + j]
                            };
                            if mj == NEG_INF {
                                let want = if op == Op::Softmax { 0.0 } else { NEG_INF };
                                assert_eq!(v, want, "{label}: row {r} col {j}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_causal_rows_match_ref() {
    for isa in variants() {
        for &n in &[1usize, 7, 16, 17, 64, 65, 200] {
            for &c in &[0usize, 1, 5, 63, 1000, usize::MAX] {
                let seed = 4000 + n as u64 * 7 + c.min(5000) as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let rows = 5;
                let x = rand_vec_wide(&mut rng, rows * n, -10.0, 10.0);
                let mask = rand_vec_wide(&mut rng, n, -1.0, 1.0);
                for opts in [
                    RowOptions::new().with_causal_limit(c),
                    RowOptions::new()
                        .with_scale(0.3)
                        .with_mask(&mask)
                        .with_causal_limit(c),
                ] {
                    for op in [Op::Softmax, Op::LogSoftmax] {
                        let got = run(isa, Parallelism::Sequential, op, &x, n, &opts);
                        let label = format!(
                            "{isa} {op:?} n={n} causal {c} mask {} seed {seed}",
                            opts.mask.is_some()
                        );
                        assert_close(&label, op, &got, &x, n, &opts, slack_of(&x, &opts));
                        let cut = if op == Op::Softmax { 0.0 } else { NEG_INF };
                        for (r, row) in got.chunks(n).enumerate() {
                            for (j, &v) in row.iter().enumerate() {
                                if j as u128 > c as u128 + r as u128 {
                                    assert_eq!(
                                        v, cut,
                                        "{label}: row {r} col {j} is past the limit"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_fully_masked_rows_are_zero_not_nan() {
    for isa in variants() {
        for &n in &[1usize, 7, 16, 17, 100] {
            let mut rng = StdRng::seed_from_u64(5000);
            // Row 0: logits −inf. Row 1: finite logits under an all −inf mask row.
            // Row 2: ordinary.
            let mut x = vec![NEG_INF; n];
            x.extend(rand_vec_wide(&mut rng, 2 * n, -5.0, 5.0));
            let mut mask = vec![0.0f32; 3 * n];
            mask[n..2 * n].fill(NEG_INF);
            let opts = RowOptions::new().with_mask(&mask);
            for op in [Op::Softmax, Op::LogSoftmax] {
                let got = run(isa, Parallelism::Sequential, op, &x, n, &opts);
                let want = if op == Op::Softmax { 0.0 } else { NEG_INF };
                assert!(
                    got[..2 * n].iter().all(|&v| v == want),
                    "{isa} {op:?} n={n} seed 5000: fully masked rows must be {want}: {:?}",
                    &got[..2 * n]
                );
                assert_close(
                    &format!("{isa} {op:?} n={n} seed 5000"),
                    op,
                    &got,
                    &x,
                    n,
                    &opts,
                    8.0,
                );
            }
            // The single-row form and the online step agree.
            let mut row = vec![NEG_INF; n];
            softmax_row_with(isa, &mut row, &RowOptions::new()).unwrap();
            assert!(row.iter().all(|&v| v == 0.0), "{isa} n={n}");
            let mut row = vec![NEG_INF; n];
            assert_eq!(
                exp_row_update(isa, &mut row, 0.5, NEG_INF).unwrap(),
                (NEG_INF, 0.0)
            );
            assert!(row.iter().all(|&v| v == 0.0), "{isa} n={n}");
        }
    }
}

#[test]
fn softmax_nan_poisons_only_its_row() {
    for isa in variants() {
        for &n in &[1usize, 2, 7, 16, 17, 33, 100] {
            for pos in [0, n / 2, n - 1] {
                let seed = 6000 + n as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                // Row 0 has a NaN among finite values, row 1 a NaN among −inf (the fully
                // masked path), row 2 a +inf, row 3 is clean.
                let mut x = rand_vec_wide(&mut rng, 4 * n, -5.0, 5.0);
                x[pos] = f32::NAN;
                x[n..2 * n].fill(NEG_INF);
                x[n + pos] = f32::NAN;
                x[2 * n + pos] = f32::INFINITY;
                for op in [Op::Softmax, Op::LogSoftmax] {
                    let got = run(isa, Parallelism::Sequential, op, &x, n, &RowOptions::new());
                    let label = format!("{isa} {op:?} n={n} pos={pos} seed {seed}");
                    assert!(
                        got[..3 * n].iter().all(|v| v.is_nan()),
                        "{label}: {:?}",
                        &got[..3 * n]
                    );
                    assert_close(&label, op, &got, &x, n, &RowOptions::new(), 0.0);
                }
                // A NaN in the mask poisons the row too.
                let mut mask = vec![0.0f32; n];
                mask[pos] = f32::NAN;
                let mut row = rand_vec_wide(&mut rng, n, -1.0, 1.0);
                softmax_row_with(isa, &mut row, &RowOptions::new().with_mask(&mask)).unwrap();
                assert!(row.iter().all(|v| v.is_nan()), "{isa} n={n}: NaN mask");
            }
        }
    }
}

#[test]
fn softmax_empty_rows_and_inputs_are_fine() {
    for isa in variants() {
        let mut empty: [f32; 0] = [];
        softmax_row_with(isa, &mut empty, &RowOptions::new()).unwrap();
        log_softmax_row_with(isa, &mut empty, &RowOptions::new()).unwrap();
        for row_len in [0usize, 1, 5] {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                softmax_inplace_with(isa, par, &mut empty, row_len, &RowOptions::new()).unwrap();
                log_softmax_with(isa, par, &[], &mut empty, row_len, &RowOptions::new()).unwrap();
            }
        }
        assert_eq!(
            exp_row_update(isa, &mut empty, 1.0, 3.0).unwrap(),
            (3.0, 0.0)
        );
        rescale(isa, &mut empty, 2.0).unwrap();
    }
    softmax_inplace(&mut [], 0).unwrap();
    softmax(&[], &mut [], 3).unwrap();
}

#[test]
fn softmax_rejects_bad_shapes_and_unsupported_isas() {
    let isa = Isa::Scalar;
    let seq = Parallelism::Sequential;
    let o = RowOptions::new();
    let mut x = [0.0f32; 6];
    let mut y = [0.0f32; 5];
    assert!(matches!(
        softmax_inplace_with(isa, seq, &mut x, 4, &o),
        Err(KernelError::ShapeMismatch {
            op: "softmax_inplace",
            ..
        })
    ));
    assert!(matches!(
        log_softmax_inplace_with(isa, seq, &mut x, 0, &o),
        Err(KernelError::InvalidArgument { .. })
    ));
    assert!(matches!(
        softmax_with(isa, seq, &x, &mut y, 3, &o),
        Err(KernelError::ShapeMismatch { op: "softmax", .. })
    ));
    assert!(log_softmax(&x, &mut y, 3).is_err());
    let bad_mask = [0.0f32; 4];
    let m = RowOptions::new().with_mask(&bad_mask);
    assert!(matches!(
        softmax_inplace_with(isa, seq, &mut x, 3, &m),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        softmax_row_with(isa, &mut x[..3], &m),
        Err(KernelError::ShapeMismatch {
            op: "softmax_row",
            ..
        })
    ));
    let mut z = [0.0f32; 2];
    assert!(merge(
        OnlineState::EMPTY,
        &[0.0],
        OnlineState::EMPTY,
        &[0.0, 0.0],
        &mut z
    )
    .is_err());
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        let unsupported = |r: Result<(), KernelError>| {
            assert!(
                matches!(r, Err(KernelError::UnsupportedIsa { .. })),
                "{isa}"
            )
        };
        unsupported(softmax_inplace_with(isa, seq, &mut x, 3, &o));
        unsupported(softmax_with(isa, seq, &[0.0; 6], &mut x, 3, &o));
        unsupported(log_softmax_inplace_with(isa, seq, &mut x, 3, &o));
        unsupported(softmax_row_with(isa, &mut x, &o));
        unsupported(rescale(isa, &mut x, 1.0));
        assert!(exp_row_update(isa, &mut x, 1.0, 0.0).is_err());
    }
}

#[test]
fn softmax_parallel_is_bit_identical_to_sequential() {
    let (rows, n) = (300usize, 1000usize);
    assert!(rows * n >= PAR_MIN_ELEMENTS);
    let seed = 7000;
    let mut rng = StdRng::seed_from_u64(seed);
    let x = rand_vec_wide(&mut rng, rows * n, -10.0, 10.0);
    let mask: Vec<f32> = (0..rows * n)
        .map(|_| if rng.random_bool(0.1) { NEG_INF } else { 0.0 })
        .collect();
    let opts = RowOptions::new()
        .with_scale(0.1)
        .with_mask(&mask)
        .with_causal_limit(600);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for isa in variants() {
        for op in [Op::Softmax, Op::LogSoftmax] {
            let seq = run(isa, Parallelism::Sequential, op, &x, n, &opts);
            let par = run(isa, Parallelism::Rayon, op, &x, n, &opts);
            let par3 = pool.install(|| run(isa, Parallelism::Rayon, op, &x, n, &opts));
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same(&seq, &par),
                "{isa} {op:?}: rayon differs from sequential"
            );
            assert!(
                same(&seq, &par3),
                "{isa} {op:?}: 3 threads differ from sequential"
            );
            assert_close(
                &format!("{isa} {op:?} parallel seed {seed}"),
                op,
                &par,
                &x,
                n,
                &opts,
                slack_of(&x, &opts),
            );
        }
    }
}

#[test]
fn softmax_row_form_matches_the_slice_form() {
    for isa in variants() {
        let seed = 7100;
        let mut rng = StdRng::seed_from_u64(seed);
        for &n in LENGTHS {
            let x = rand_vec_wide(&mut rng, n, -10.0, 10.0);
            let mask = rand_vec_wide(&mut rng, n, -3.0, 0.0);
            let opts = RowOptions::new()
                .with_scale(0.2)
                .with_mask(&mask)
                .with_causal_limit(n / 2);
            let mut row = x.clone();
            softmax_row_with(isa, &mut row, &opts).unwrap();
            assert_eq!(
                row,
                run(isa, Parallelism::Sequential, Op::Softmax, &x, n, &opts)
            );
            let mut row = x.clone();
            log_softmax_row_with(isa, &mut row, &opts).unwrap();
            assert_eq!(
                row,
                run(isa, Parallelism::Sequential, Op::LogSoftmax, &x, n, &opts)
            );
        }
    }
}

#[test]
fn softmax_dispatcher_uses_the_current_isa() {
    let isa = current_isa().unwrap();
    let mut rng = StdRng::seed_from_u64(7200);
    let x = rand_vec_wide(&mut rng, 5 * 37, -4.0, 4.0);
    let o = RowOptions::new();
    let want = run(isa, Parallelism::Rayon, Op::Softmax, &x, 37, &o);
    let mut a = x.clone();
    softmax_inplace(&mut a, 37).unwrap();
    let mut b = vec![0.0; x.len()];
    softmax(&x, &mut b, 37).unwrap();
    assert_eq!(a, want);
    assert_eq!(b, want);
    let want = run(isa, Parallelism::Rayon, Op::LogSoftmax, &x, 37, &o);
    let mut a = x.clone();
    log_softmax_inplace(&mut a, 37).unwrap();
    log_softmax(&x, &mut b, 37).unwrap();
    assert_eq!(a, want);
    assert_eq!(b, want);
}

// ---- online building blocks -------------------------------------------------------------

#[test]
fn online_exp_row_update_matches_ref() {
    for isa in variants() {
        for (li, &n) in LENGTHS.iter().enumerate() {
            for prev in [NEG_INF, -3.0, 0.0, 20.0] {
                let seed = 8000 + li as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let x = rand_vec_wide(&mut rng, n, -10.0, 10.0);
                let scale = 0.7f32;
                let mut row = x.clone();
                let (m, l) = exp_row_update(isa, &mut row, scale, prev).unwrap();
                let label = format!("{isa} n={n} prev={prev} seed {seed}");
                // The max is exact: the max of the f32 products.
                let want_m = x.iter().map(|&v| v * scale).fold(prev, f32::max);
                assert_eq!(m, want_m, "{label}");
                let (mut sum, mut sum_tol) = (0.0f64, 0.0f64);
                for (j, (&v, &e)) in x.iter().zip(&row).enumerate() {
                    let d = (v * scale) as f64 - m as f64;
                    let want = d.exp();
                    sum += want;
                    // Base-2 evaluation: rounding d·log2 e costs about |d|·2^-24 relative.
                    let tol = want * EPS * (4.0 + 2.0 * d.abs());
                    sum_tol += tol;
                    assert!(
                        (e as f64 - want).abs() <= tol,
                        "{label} col {j}: {e} vs {want}"
                    );
                }
                assert!(
                    (l as f64 - sum).abs() <= sum_tol + sum * EPS * (4.0 + n as f64 / 8.0) + 1e-37,
                    "{label}: sum {l} vs {sum}"
                );
            }
        }
    }
}

#[test]
fn online_exp_row_update_edges() {
    for isa in variants() {
        for &n in &[1usize, 7, 17, 40] {
            // NaN in the row, or as the previous max.
            let mut row = vec![1.0f32; n];
            row[n / 2] = f32::NAN;
            let (m, l) = exp_row_update(isa, &mut row, 1.0, 0.0).unwrap();
            assert!(
                m.is_nan() && l.is_nan(),
                "{isa} n={n}: NaN row gives ({m}, {l})"
            );
            let mut row = vec![NEG_INF; n];
            row[n - 1] = f32::NAN;
            let (m, l) = exp_row_update(isa, &mut row, 1.0, NEG_INF).unwrap();
            assert!(m.is_nan() && l.is_nan(), "{isa} n={n}: NaN among −inf");
            let mut row = vec![1.0f32; n];
            let (m, l) = exp_row_update(isa, &mut row, 1.0, f32::NAN).unwrap();
            assert!(m.is_nan() && l.is_nan(), "{isa} n={n}: NaN prev_max");
            // A masked tile after real scores: zeros, the max is kept.
            let mut row = vec![NEG_INF; n];
            assert_eq!(exp_row_update(isa, &mut row, 1.0, 2.5).unwrap(), (2.5, 0.0));
            assert!(row.iter().all(|&v| v == 0.0));
            // Huge scores do not overflow.
            let mut row = vec![1e4f32; n];
            let (m, l) = exp_row_update(isa, &mut row, 1.0, NEG_INF).unwrap();
            assert_eq!((m, l), (1e4, n as f32), "{isa} n={n}");
        }
    }
}

/// `Σ_j p_j·v[j][..]` of one score row with the f64 reference softmax.
fn attend_ref(scores: &[f32], v: &[f32], d: usize, scale: f32) -> Vec<f64> {
    let p = softmax_ref(scores, scores.len(), &RowOptions::new().with_scale(scale));
    let mut o = vec![0.0f64; d];
    for (j, &pj) in p.iter().enumerate() {
        for (k, ok) in o.iter_mut().enumerate() {
            *ok += pj * v[j * d + k] as f64;
        }
    }
    o
}

/// Processes `scores[range]` as tiles of `tile` keys; returns the state and unnormalised output.
fn attend_tiles(
    isa: Isa,
    scores: &[f32],
    v: &[f32],
    d: usize,
    scale: f32,
    range: std::ops::Range<usize>,
    tile: usize,
) -> (OnlineState, Vec<f32>) {
    let mut st = OnlineState::EMPTY;
    let mut out = vec![0.0f32; d];
    let mut j0 = range.start;
    while j0 < range.end {
        let j1 = (j0 + tile).min(range.end);
        let mut p = scores[j0..j1].to_vec();
        let (m, l) = exp_row_update(isa, &mut p, scale, st.max).unwrap();
        let alpha = st.advance(m, l);
        rescale(isa, &mut out, alpha).unwrap();
        for (jj, &pj) in p.iter().enumerate() {
            for (k, ok) in out.iter_mut().enumerate() {
                *ok += pj * v[(j0 + jj) * d + k];
            }
        }
        j0 = j1;
    }
    (st, out)
}

fn assert_attn_close(label: &str, got: &[f32], want: &[f64]) {
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()),
            "{label} k={k}: got {g}, want {w}"
        );
    }
}

#[test]
fn online_tiles_equal_the_one_shot_softmax() {
    let d = 5;
    for isa in variants() {
        for &n in &[1usize, 7, 64, 65, 1000] {
            for &tile in &[1usize, 7, 16, 33, 128] {
                let seed = 9000 + n as u64 * 3 + tile as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let mut scores = rand_vec_wide(&mut rng, n, -20.0, 20.0);
                // A fully masked leading stretch exercises the (−inf, 0) state.
                for s in scores.iter_mut().take(n / 3) {
                    *s = NEG_INF;
                }
                let v = rand_vec_wide(&mut rng, n * d, -1.0, 1.0);
                let scale = 0.35;
                let (st, mut out) = attend_tiles(isa, &scores, &v, d, scale, 0..n, tile);
                finish(&mut out, st);
                let label = format!("{isa} n={n} tile={tile} seed {seed}");
                assert_attn_close(&label, &out, &attend_ref(&scores, &v, d, scale));
            }
        }
    }
}

#[test]
fn online_merge_equals_the_one_shot_softmax_on_split_rows() {
    let d = 4;
    for isa in variants() {
        for &n in &[1usize, 2, 9, 64, 1000] {
            for split in [0, 1, n / 2, n - 1, n] {
                for masked_half in [None, Some(0), Some(1)] {
                    let seed = 9500 + n as u64 + split as u64;
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut scores = rand_vec_wide(&mut rng, n, -15.0, 15.0);
                    match masked_half {
                        Some(0) => scores[..split].fill(NEG_INF),
                        Some(_) => scores[split..].fill(NEG_INF),
                        None => {}
                    }
                    let v = rand_vec_wide(&mut rng, n * d, -1.0, 1.0);
                    let scale = 1.0;
                    let (a, a_out) = attend_tiles(isa, &scores, &v, d, scale, 0..split, 16);
                    let (b, b_out) = attend_tiles(isa, &scores, &v, d, scale, split..n, 16);
                    let mut out = vec![f32::NAN; d];
                    let st = merge(a, &a_out, b, &b_out, &mut out).unwrap();
                    let (st_ba, ..) = b.merge_weights(a);
                    assert_eq!(st.max, st_ba.max);
                    finish(&mut out, st);
                    let label =
                        format!("{isa} n={n} split={split} masked {masked_half:?} seed {seed}");
                    let want = attend_ref(&scores, &v, d, scale);
                    assert_attn_close(&label, &out, &want);
                    // The merged log-sum-exp is that of the whole row.
                    let s = logits_ref(&scores, n, &RowOptions::new());
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lse = if m == f64::NEG_INFINITY {
                        m
                    } else {
                        m + s.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
                    };
                    let got = st.log_sum_exp() as f64;
                    assert!(
                        got == lse || (got - lse).abs() <= 1e-5 * (1.0 + lse.abs()),
                        "{label}: lse {got} vs {lse}"
                    );
                }
            }
        }
    }
}

#[test]
fn online_merge_and_finish_conventions() {
    // Two empty states: empty, zeros.
    let mut out = [f32::NAN; 3];
    let st = merge(
        OnlineState::EMPTY,
        &[0.0; 3],
        OnlineState::EMPTY,
        &[0.0; 3],
        &mut out,
    )
    .unwrap();
    assert_eq!(st, OnlineState::EMPTY);
    finish(&mut out, st);
    assert_eq!(out, [0.0; 3]);
    // A NaN state poisons the merge.
    let nan = OnlineState {
        max: f32::NAN,
        sum: f32::NAN,
    };
    let ok = OnlineState { max: 1.0, sum: 2.0 };
    let st = merge(ok, &[1.0; 3], nan, &[1.0; 3], &mut out).unwrap();
    assert!(st.max.is_nan() && st.sum.is_nan() && out.iter().all(|v| v.is_nan()));
    let mut o = [1.0f32; 2];
    finish(
        &mut o,
        OnlineState {
            max: 0.0,
            sum: f32::NAN,
        },
    );
    assert!(o.iter().all(|v| v.is_nan()));
    // Factors.
    assert_eq!(rescale_factor(NEG_INF, NEG_INF), 1.0);
    assert_eq!(rescale_factor(NEG_INF, 3.0), 0.0);
    assert!(rescale_factor(f32::NAN, 3.0).is_nan());
    assert!(rescale_factor(0.0, f32::NAN).is_nan());
    let mut st = OnlineState::EMPTY;
    assert_eq!(st.advance(NEG_INF, 0.0), 1.0);
    assert_eq!(st, OnlineState::EMPTY);
}

#[test]
fn online_rescale_multiplies_every_lane() {
    for isa in variants() {
        let mut rng = StdRng::seed_from_u64(9900);
        for n in 0..70 {
            let x = rand_vec_wide(&mut rng, n, -5.0, 5.0);
            let f = rng.random_range(0.0f32..1.0);
            let mut buf = vec![-7.0f32; n + 4];
            buf[2..2 + n].copy_from_slice(&x);
            rescale(isa, &mut buf[2..2 + n], f).unwrap();
            let want: Vec<f32> = x.iter().map(|v| v * f).collect();
            assert_eq!(&buf[2..2 + n], &want[..], "{isa} n={n} seed 9900");
            assert!(
                buf[..2].iter().chain(&buf[2 + n..]).all(|&v| v == -7.0),
                "{isa} n={n}"
            );
        }
    }
}
