//! Property tests: softmax and log-softmax (slice, in-place and single-row forms) against
//! the f64 references over random row lengths, row counts, scales, masks (broadcast and
//! per-row, with −inf entries), causal limits, special values, variants and parallelism.

use fastattn_kernels::softmax::reference::{log_softmax_ref, logits_ref, softmax_ref};
use fastattn_kernels::softmax::{
    log_softmax_inplace_with, log_softmax_row_with, log_softmax_with, softmax_inplace_with,
    softmax_row_with, softmax_with, RowOptions,
};
use fastattn_kernels::{Isa, Parallelism};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EPS: f64 = f32::EPSILON as f64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Softmax,
    LogSoftmax,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    OutOfPlace,
    InPlace,
    /// `*_row_with` on each row in turn (broadcast masks only; the causal limit is
    /// advanced by the caller, as attention does).
    Row,
}

#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    Broadcast,
    PerRow,
}

#[derive(Debug, Clone)]
struct Case {
    op: Op,
    form: Form,
    rows: usize,
    row_len: usize,
    scale: f32,
    mask: MaskKind,
    causal: Option<usize>,
    /// Logit magnitude.
    amp: f32,
    /// Sprinkle NaN / ±inf into the input.
    specials: bool,
    isa: Isa,
    par: Parallelism,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let av = Isa::available();
    (
        (
            prop_oneof![Just(Op::Softmax), Just(Op::LogSoftmax)],
            prop_oneof![Just(Form::OutOfPlace), Just(Form::InPlace), Just(Form::Row)],
        ),
        (
            prop_oneof![3 => 0usize..6, 1 => 6usize..40],
            prop_oneof![3 => 0usize..40, 1 => 40usize..300],
        ),
        (
            prop_oneof![Just(1.0f32), Just(0.125f32), Just(0.0f32), -2.0f32..2.0],
            prop_oneof![
                Just(MaskKind::None),
                Just(MaskKind::Broadcast),
                Just(MaskKind::PerRow)
            ],
            proptest::option::of(0usize..40),
        ),
        (
            prop_oneof![Just(1.0f32), Just(30.0f32), Just(1e4f32)],
            proptest::bool::weighted(0.2),
        ),
        (
            0..av.len(),
            prop_oneof![Just(Parallelism::Sequential), Just(Parallelism::Rayon)],
            any::<u64>(),
        ),
    )
        .prop_map(
            move |(
                (op, form),
                (rows, row_len),
                (scale, mask, causal),
                (amp, specials),
                (i, par, seed),
            )| {
                // The row form takes one mask row for every row.
                let mask = match (form, mask) {
                    (Form::Row, MaskKind::PerRow) => MaskKind::Broadcast,
                    (_, m) => m,
                };
                Case {
                    op,
                    form,
                    rows,
                    row_len,
                    scale,
                    mask,
                    causal,
                    amp,
                    specials,
                    isa: av[i],
                    par,
                    seed,
                }
            },
        )
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let len = c.rows * c.row_len;
    let x: Vec<f32> = (0..len)
        .map(|_| {
            if c.specials && rng.random_bool(0.1) {
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)]
            } else {
                rng.random_range(-c.amp..c.amp)
            }
        })
        .collect();
    let mask_len = match c.mask {
        MaskKind::None => 0,
        MaskKind::Broadcast => c.row_len,
        MaskKind::PerRow => len,
    };
    let mask: Vec<f32> = (0..mask_len)
        .map(|_| {
            if rng.random_bool(0.2) {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-4.0f32..4.0)
            }
        })
        .collect();
    let mut opts = RowOptions::new().with_scale(c.scale);
    if let Some(l) = c.causal {
        opts = opts.with_causal_limit(l);
    }
    let opts = match c.mask {
        MaskKind::None => opts,
        _ => opts.with_mask(&mask),
    };
    let mut got = vec![f32::NAN; len];
    let label = format!("{c:?}");
    let r = match (c.form, c.op) {
        (Form::OutOfPlace, Op::Softmax) => {
            softmax_with(c.isa, c.par, &x, &mut got, c.row_len, &opts)
        }
        (Form::OutOfPlace, Op::LogSoftmax) => {
            log_softmax_with(c.isa, c.par, &x, &mut got, c.row_len, &opts)
        }
        (Form::InPlace, op) => {
            got.copy_from_slice(&x);
            match op {
                Op::Softmax => softmax_inplace_with(c.isa, c.par, &mut got, c.row_len, &opts),
                Op::LogSoftmax => {
                    log_softmax_inplace_with(c.isa, c.par, &mut got, c.row_len, &opts)
                }
            }
        }
        (Form::Row, op) => {
            got.copy_from_slice(&x);
            let mut r = Ok(());
            for (i, row) in got.chunks_mut(c.row_len.max(1)).enumerate() {
                let mut o = opts;
                o.causal_limit = c.causal.map(|l| l + i);
                r = r.and(match op {
                    Op::Softmax => softmax_row_with(c.isa, row, &o),
                    Op::LogSoftmax => log_softmax_row_with(c.isa, row, &o),
                });
            }
            r
        }
    };
    r.map_err(|e| TestCaseError::fail(format!("{label}: {e}")))?;

    let want = match c.op {
        Op::Softmax => softmax_ref(&x, c.row_len, &opts),
        Op::LogSoftmax => log_softmax_ref(&x, c.row_len, &opts),
    };
    let s = logits_ref(&x, c.row_len, &opts);
    // How large the logits are: computing them in f32 rounds by about EPS of this.
    let slack = 4.0 * (c.amp as f64 * c.scale.abs() as f64 + 4.0);
    for r in 0..c.rows {
        let rs = &s[r * c.row_len..(r + 1) * c.row_len];
        let m = rs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0f64;
        let mut finite_row = true;
        for (j, &sj) in rs.iter().enumerate() {
            let idx = r * c.row_len + j;
            let (g, w) = (got[idx], want[idx]);
            let cut = c.causal.is_some_and(|l| j > l + r);
            if cut {
                // Past the causal limit the kernels always write exactly 0 (−inf), even in
                // a row that a NaN makes NaN; the reference says NaN there (see
                // docs/HARDENING.md, findings).
                let exact = match c.op {
                    Op::Softmax => 0.0,
                    Op::LogSoftmax => f32::NEG_INFINITY,
                };
                prop_assert_eq!(
                    g,
                    exact,
                    "{}: [{},{}] is past the causal limit",
                    label,
                    r,
                    j
                );
                if w.is_nan() {
                    finite_row = false;
                }
                continue;
            }
            if w.is_nan() {
                prop_assert!(g.is_nan(), "{}: [{},{}] = {}, want NaN", label, r, j, g);
                finite_row = false;
                continue;
            }
            if w < f32::MIN as f64 || w.is_infinite() || (w == 0.0 && !sj.is_finite()) {
                // Exact: −inf for masked log-softmax entries, 0 for masked softmax ones.
                let w32 = if w < f32::MIN as f64 {
                    f32::NEG_INFINITY
                } else {
                    w as f32
                };
                prop_assert_eq!(g, w32, "{}: [{},{}] must be exact", label, r, j);
                continue;
            }
            let d = (sj - m).abs();
            let base = 16.0 + c.row_len as f64 / 8.0 + 2.0 * d + slack;
            let tol = match c.op {
                Op::Softmax => w * EPS * base + 1e-37,
                Op::LogSoftmax => EPS * (base + w.abs()),
            };
            prop_assert!(
                (g as f64 - w).abs() <= tol,
                "{}: [{},{}] = {:e}, want {:e}, tol {:e}",
                label,
                r,
                j,
                g,
                w,
                tol
            );
            if c.op == Op::Softmax {
                prop_assert!((0.0..=1.0).contains(&g), "{}: [{},{}] = {}", label, r, j, g);
                sum += g as f64;
            }
        }
        if c.op == Op::Softmax && finite_row && m > f64::NEG_INFINITY {
            prop_assert!(
                (sum - 1.0).abs() <= 1e-5,
                "{}: row {} sums to {}",
                label,
                r,
                sum
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn softmax_matches_ref_over_random_rows_masks_and_options(c in case()) {
        run_case(&c)?;
    }

    #[test]
    fn softmax_is_shift_invariant_on_random_rows(
        row_len in 1usize..100,
        shift in -50.0f32..50.0,
        seed in any::<u64>(),
    ) {
        // Shifts that are exact in f32 (integers, inputs on a 1/8 grid) leave the result
        // unchanged up to the exp's rounding.
        let mut rng = StdRng::seed_from_u64(seed);
        let shift = shift.round();
        let x: Vec<f32> = (0..row_len).map(|_| rng.random_range(-80i32..80) as f32 / 8.0).collect();
        let xs: Vec<f32> = x.iter().map(|v| v + shift).collect();
        let (mut a, mut b) = (vec![0.0; row_len], vec![0.0; row_len]);
        let o = RowOptions::new();
        softmax_with(Isa::best(), Parallelism::Sequential, &x, &mut a, row_len, &o).unwrap();
        softmax_with(Isa::best(), Parallelism::Sequential, &xs, &mut b, row_len, &o).unwrap();
        for (j, (p, q)) in a.iter().zip(&b).enumerate() {
            prop_assert!((p - q).abs() <= 1e-6 * (1.0 + p.abs()), "seed {}: [{}] {} vs {}", seed, j, p, q);
        }
    }
}

/// `cases` cases, no failure files in the source tree (the failing case and its seed are
/// printed instead); `PROPTEST_CASES` still overrides the count.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
