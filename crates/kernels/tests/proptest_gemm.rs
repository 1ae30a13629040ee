//! Property tests: the GEMM entry points against the f64 reference over random shapes,
//! strides (padded, gapped, transposed, broadcast inputs, offset views), scalars, variants
//! and parallelism. Elements of C outside its view must survive untouched, `beta == 0`
//! must not read C (it is filled with NaN), and integer-valued problems must be exact.
//!
//! Failures print the proptest seed and the shrunk case; rerun one with
//! `PROPTEST_CASES=1` and the printed values.

use fastattn_kernels::gemm::packed::{gemm_packed_b, PackedB};
use fastattn_kernels::gemm::reference::gemm_ref;
use fastattn_kernels::gemv::{axpy_rows_ref, axpy_rows_with, dot_rows_ref, dot_rows_with};
use fastattn_kernels::{gemm_with, Isa, MatMut, MatRef, Parallelism};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EPS: f64 = f32::EPSILON as f64;
/// Written around C's view; must survive every call.
const SENTINEL: f32 = -777.0;

/// How one operand is laid out in its buffer.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major with `pad` extra elements per row.
    Row { pad: usize },
    /// Column-major with `pad` extra elements per column.
    Col { pad: usize },
    /// Every `step`-th element of every `step`-th row of a larger row-major buffer.
    Gapped { step: usize },
    /// One row repeated (row stride 0; inputs only).
    BroadcastRows,
    /// One column repeated (column stride 0; inputs only).
    BroadcastCols,
}

impl Layout {
    /// `(rs, cs)` for a `rows × cols` view.
    fn strides(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Layout::Row { pad } => (cols + pad, 1),
            Layout::Col { pad } => (1, rows + pad),
            Layout::Gapped { step } => (step * (step * cols.max(1) + 1), step),
            Layout::BroadcastRows => (0, 1),
            Layout::BroadcastCols => (1, 0),
        }
    }
}

fn input_layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        3 => (0usize..3).prop_map(|pad| Layout::Row { pad }),
        3 => (0usize..3).prop_map(|pad| Layout::Col { pad }),
        1 => (2usize..4).prop_map(|step| Layout::Gapped { step }),
        1 => Just(Layout::BroadcastRows),
        1 => Just(Layout::BroadcastCols),
    ]
}

fn output_layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        3 => (0usize..3).prop_map(|pad| Layout::Row { pad }),
        3 => (0usize..3).prop_map(|pad| Layout::Col { pad }),
        1 => (2usize..4).prop_map(|step| Layout::Gapped { step }),
    ]
}

/// A size: mostly small (tile edges), sometimes past a tile or a cache block.
fn dim(max_big: usize) -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..20, 1 => 20usize..=max_big]
}

fn scalar() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(1.0f32),
        Just(-1.0f32),
        Just(0.5f32),
        -2.0f32..2.0
    ]
}

fn isa() -> impl Strategy<Value = Isa> {
    let av = Isa::available();
    (0..av.len()).prop_map(move |i| av[i])
}

fn par() -> impl Strategy<Value = Parallelism> {
    prop_oneof![Just(Parallelism::Sequential), Just(Parallelism::Rayon)]
}

/// Elements a `rows × cols` view with strides `(rs, cs)` needs from its start.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// Random values: small integers (exact products) or uniform in ±1.
fn values(rng: &mut StdRng, len: usize, ints: bool) -> Vec<f32> {
    (0..len)
        .map(|_| {
            if ints {
                rng.random_range(-4i32..=4) as f32
            } else {
                rng.random_range(-1.0f32..1.0)
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct GemmCase {
    m: usize,
    k: usize,
    n: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    /// Offsets of the views into their buffers.
    offs: (usize, usize, usize),
    /// Transpose A and B through `MatRef::t` (the strides are swapped).
    trans: (bool, bool),
    alpha: f32,
    beta: f32,
    ints: bool,
    isa: Isa,
    par: Parallelism,
    seed: u64,
}

fn gemm_case() -> impl Strategy<Value = GemmCase> {
    (
        (dim(70), dim(300), dim(70)),
        (input_layout(), input_layout(), output_layout()),
        (0usize..4, 0usize..4, 0usize..4),
        (any::<bool>(), any::<bool>()),
        (scalar(), scalar(), any::<bool>()),
        (isa(), par(), any::<u64>()),
    )
        .prop_map(
            |((m, k, n), (la, lb, lc), offs, trans, (alpha, beta, ints), (isa, par, seed))| {
                // Integer problems stay exact only with scalars on a grid of 1/2.
                let snap = |x: f32| if ints { (x * 2.0).round() / 2.0 } else { x };
                let (alpha, beta) = (snap(alpha), snap(beta));
                GemmCase {
                    m,
                    k,
                    n,
                    la,
                    lb,
                    lc,
                    offs,
                    trans,
                    alpha,
                    beta,
                    ints,
                    isa,
                    par,
                    seed,
                }
            },
        )
}

/// Builds a view of `rows × cols` (stored transposed when `trans`) at `off` in a fresh
/// buffer; returns the buffer and `(rs, cs)` of the logical view.
fn input(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    l: Layout,
    trans: bool,
    off: usize,
    ints: bool,
) -> (Vec<f32>, usize, usize) {
    let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
    let (rs, cs) = l.strides(sr, sc);
    let buf = values(rng, off + extent(sr, sc, rs, cs) + 2, ints);
    if trans {
        (buf, cs, rs)
    } else {
        (buf, rs, cs)
    }
}

fn run_gemm_case(c: &GemmCase) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let (a, rsa, csa) = input(&mut rng, c.m, c.k, c.la, c.trans.0, c.offs.0, c.ints);
    let (b, rsb, csb) = input(&mut rng, c.k, c.n, c.lb, c.trans.1, c.offs.1, c.ints);
    let (rsc, csc) = c.lc.strides(c.m, c.n);
    let lenc = c.offs.2 + extent(c.m, c.n, rsc, csc) + 3;
    let mut c0 = vec![SENTINEL; lenc];
    for i in 0..c.m {
        for j in 0..c.n {
            c0[c.offs.2 + i * rsc + j * csc] = if c.beta == 0.0 {
                f32::NAN
            } else {
                values(&mut rng, 1, c.ints)[0]
            };
        }
    }
    let av = MatRef::new(&a[c.offs.0..], c.m, c.k, rsa, csa).unwrap();
    let bv = MatRef::new(&b[c.offs.1..], c.k, c.n, rsb, csb).unwrap();
    let mut want = c0.clone();
    gemm_ref(
        c.alpha,
        av,
        bv,
        c.beta,
        MatMut::new(&mut want[c.offs.2..], c.m, c.n, rsc, csc).unwrap(),
    );
    let mut got = c0.clone();
    gemm_with(
        c.isa,
        c.par,
        c.alpha,
        av,
        bv,
        c.beta,
        MatMut::new(&mut got[c.offs.2..], c.m, c.n, rsc, csc).unwrap(),
    )
    .map_err(|e| TestCaseError::fail(format!("{c:?}: {e}")))?;

    let mut in_view = vec![None; lenc];
    for i in 0..c.m {
        for j in 0..c.n {
            in_view[c.offs.2 + i * rsc + j * csc] = Some((i, j));
        }
    }
    for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
        match in_view[idx] {
            None => prop_assert!(
                g == SENTINEL,
                "{c:?}: element {idx} outside C's view was written ({g})"
            ),
            Some((i, j)) if c.ints => {
                prop_assert_eq!(g, w, "{:?}: C[{},{}] of an integer problem", c, i, j)
            }
            Some((i, j)) => {
                let mut mag = 0.0f64;
                for p in 0..c.k {
                    mag += (av.get(i, p) as f64 * bv.get(p, j) as f64).abs();
                }
                let cij = c0[idx];
                let bc = if c.beta == 0.0 {
                    0.0
                } else {
                    (c.beta as f64 * cij as f64).abs()
                };
                let tol =
                    2.0 * (c.k as f64 + 2.0) * EPS * (c.alpha.abs() as f64 * mag + bc) + 1e-30;
                prop_assert!(
                    (g as f64 - w as f64).abs() <= tol,
                    "{:?}: C[{},{}] = {}, want {}, tol {:e}",
                    c,
                    i,
                    j,
                    g,
                    w,
                    tol
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct PackedCase {
    m: usize,
    /// Depth packed, and the leading part of it that A uses.
    k: usize,
    k_used: usize,
    /// Columns packed, the panel where C starts, and C's width.
    n: usize,
    panel: usize,
    n_used: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    alpha: f32,
    beta: f32,
    isa: Isa,
    seed: u64,
}

fn packed_case() -> impl Strategy<Value = PackedCase> {
    (
        (
            dim(40),
            dim(80),
            0.0f64..=1.0,
            dim(80),
            0.0f64..=1.0,
            0.0f64..=1.0,
        ),
        (input_layout(), input_layout(), output_layout()),
        (scalar(), scalar(), isa(), any::<u64>()),
    )
        .prop_map(
            |((m, k, fk, n, fp, fn_), (la, lb, lc), (alpha, beta, isa, seed))| {
                let nr = fastattn_kernels::gemm::tile_of(isa).1;
                let k_used = ((k as f64) * fk) as usize;
                let panel = ((n.div_ceil(nr) as f64) * fp) as usize;
                let col0 = (panel * nr).min(n);
                let n_used = (((n - col0) as f64) * fn_) as usize;
                PackedCase {
                    m,
                    k,
                    k_used,
                    n,
                    panel: col0 / nr,
                    n_used,
                    la,
                    lb,
                    lc,
                    alpha,
                    beta,
                    isa,
                    seed,
                }
            },
        )
}

fn run_packed_case(c: &PackedCase) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let nr = fastattn_kernels::gemm::tile_of(c.isa).1;
    let col0 = c.panel * nr;
    let (a, rsa, csa) = input(&mut rng, c.m, c.k_used, c.la, false, 0, false);
    let (b, rsb, csb) = input(&mut rng, c.k, c.n, c.lb, false, 0, false);
    let (rsc, csc) = c.lc.strides(c.m, c.n_used);
    let mut c0 = vec![SENTINEL; extent(c.m, c.n_used, rsc, csc) + 2];
    for i in 0..c.m {
        for j in 0..c.n_used {
            c0[i * rsc + j * csc] = if c.beta == 0.0 {
                f32::NAN
            } else {
                rng.random_range(-1.0f32..1.0)
            };
        }
    }
    let av = MatRef::new(&a, c.m, c.k_used, rsa, csa).unwrap();
    let bv = MatRef::new(&b, c.k, c.n, rsb, csb).unwrap();
    let mut pb = PackedB::new(c.isa).unwrap();
    pb.pack(bv).unwrap();
    let mut got = c0.clone();
    gemm_packed_b(
        c.alpha,
        av,
        &pb,
        col0,
        c.beta,
        MatMut::new(&mut got, c.m, c.n_used, rsc, csc).unwrap(),
    )
    .map_err(|e| TestCaseError::fail(format!("{c:?}: {e}")))?;
    // The reference on B's sub-view rows 0..k_used, columns col0..col0+n_used.
    let b_sub = if c.k_used == 0 || c.n_used == 0 {
        MatRef::<f32>::new(&[], c.k_used, c.n_used, 1, 1).unwrap()
    } else {
        MatRef::new(&b[col0 * csb..], c.k_used, c.n_used, rsb, csb).unwrap()
    };
    let mut want = c0.clone();
    gemm_ref(
        c.alpha,
        av,
        b_sub,
        c.beta,
        MatMut::new(&mut want, c.m, c.n_used, rsc, csc).unwrap(),
    );
    let mut in_view = vec![false; c0.len()];
    for i in 0..c.m {
        for j in 0..c.n_used {
            in_view[i * rsc + j * csc] = true;
        }
    }
    // Inputs are in ±1, so Σ|a·b| ≤ k_used.
    let mag = c.alpha.abs() as f64 * c.k_used as f64 + c.beta.abs() as f64;
    let tol = 2.0 * (c.k_used as f64 + 2.0) * EPS * mag + 1e-30;
    for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if !in_view[idx] {
            prop_assert!(g == SENTINEL, "{:?}: element {} outside C written", c, idx);
            continue;
        }
        prop_assert!(
            (g as f64 - w as f64).abs() <= tol,
            "{:?}: element {}: {} vs {}",
            c,
            idx,
            g,
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn gemm_matches_ref_over_random_shapes_strides_and_scalars(c in gemm_case()) {
        run_gemm_case(&c)?;
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn gemm_packed_b_matches_ref_on_random_sub_blocks(c in packed_case()) {
        run_packed_case(&c)?;
    }

    #[test]
    fn gemm_sequential_and_rayon_are_bit_identical(
        (m, k, n) in (dim(70), dim(300), dim(70)),
        isa in isa(),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let a = values(&mut rng, m * k, false);
        let b = values(&mut rng, k * n, false);
        let run = |par| {
            let mut c = vec![0.0f32; m * n];
            gemm_with(
                isa,
                par,
                1.0,
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, m, n).unwrap(),
            )
            .unwrap();
            c
        };
        let (s, p) = (run(Parallelism::Sequential), run(Parallelism::Rayon));
        prop_assert!(
            s.iter().zip(&p).all(|(x, y)| x.to_bits() == y.to_bits()),
            "seed {}: {}x{}x{} on {}", seed, m, k, n, isa
        );
    }

    #[test]
    fn dot_and_axpy_rows_match_their_refs(
        rows in 0usize..6,
        n in dim(60),
        d in dim(70),
        pads in (0usize..3, 0usize..3, 0usize..3),
        isa in isa(),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (ldq, ldk, lds) = (d + pads.0, d + pads.1, n + pads.2);
        let q = values(&mut rng, rows * ldq + 1, false);
        let k = values(&mut rng, n * ldk + 1, false);
        let qm = MatRef::new(&q, rows, d, ldq, 1).unwrap();
        let km = MatRef::new(&k, n, d, ldk, 1).unwrap();
        let mut s = vec![SENTINEL; rows * lds + 1];
        let mut s_ref = s.clone();
        dot_rows_with(isa, 0.5, qm, km, MatMut::new(&mut s, rows, n, lds, 1).unwrap()).unwrap();
        dot_rows_ref(0.5, qm, km, MatMut::new(&mut s_ref, rows, n, lds, 1).unwrap());
        for (i, (&g, &w)) in s.iter().zip(&s_ref).enumerate() {
            let tol = 4.0 * (d as f64 + 2.0) * EPS * 0.5 * d as f64 + 1e-30;
            prop_assert!((g as f64 - w as f64).abs() <= tol, "seed {}: S[{}] {} vs {}", seed, i, g, w);
        }
        // P (rows × n, with zeros: skipped keys), V (n × d), O (rows × d) += P·V.
        let p: Vec<f32> = (0..rows * lds + 1)
            .map(|_| if rng.random_bool(0.3) { 0.0 } else { rng.random_range(0.0f32..1.0) })
            .collect();
        let pm = MatRef::new(&p, rows, n, lds, 1).unwrap();
        let vm = MatRef::new(&k, n, d, ldk, 1).unwrap();
        let o0 = values(&mut rng, rows * ldq + 1, false);
        let (mut o, mut o_ref) = (o0.clone(), o0.clone());
        axpy_rows_with(isa, pm, vm, MatMut::new(&mut o, rows, d, ldq, 1).unwrap()).unwrap();
        axpy_rows_ref(pm, vm, MatMut::new(&mut o_ref, rows, d, ldq, 1).unwrap());
        for (i, (&g, &w)) in o.iter().zip(&o_ref).enumerate() {
            let tol = 4.0 * (n as f64 + 2.0) * EPS * (n as f64 + 1.0) + 1e-30;
            prop_assert!((g as f64 - w as f64).abs() <= tol, "seed {}: O[{}] {} vs {}", seed, i, g, w);
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
