//! Every GEMM variant the CPU can run against the f64 reference.

use fastattn_kernels::gemm::{block_sizes, gemm_with_a_read, reference::gemm_ref, tile_of, ARead};
use fastattn_kernels::{gemm_with, Isa, KernelError, MatMut, MatRef, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{rand_vec, variants};

/// Layout of one operand: (row stride, column stride, buffer length) for a rows×cols view.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    ColMajor,
    PaddedRow, // leading dimension cols + 3
    Gapped,    // every other row and column of a larger buffer
}

fn strides(l: Layout, rows: usize, cols: usize) -> (usize, usize, usize) {
    let (rs, cs) = match l {
        Layout::RowMajor => (cols, 1),
        Layout::ColMajor => (1, rows),
        Layout::PaddedRow => (cols + 3, 1),
        Layout::Gapped => (2 * (2 * cols + 1), 2),
    };
    let len = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    (rs, cs, len + 5)
}

const SENTINEL: f32 = -777.0;

/// Runs one case on `isa` and compares with the reference; also checks that C's
/// surroundings are untouched.
#[allow(clippy::too_many_arguments)]
fn check_case(
    isa: Isa,
    par: Parallelism,
    m: usize,
    k: usize,
    n: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    alpha: f32,
    beta: f32,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (rsa, csa, lena) = strides(la, m, k);
    let (rsb, csb, lenb) = strides(lb, k, n);
    let (rsc, csc, lenc) = strides(lc, m, n);
    let a = rand_vec(&mut rng, lena);
    let b = rand_vec(&mut rng, lenb);
    let mut c0 = vec![SENTINEL; lenc];
    // Fill the view of C with random values (or NaN when beta == 0: must not leak).
    for i in 0..m {
        for j in 0..n {
            c0[i * rsc + j * csc] = if beta == 0.0 {
                f32::NAN
            } else {
                rng.random_range(-1.0f32..1.0)
            };
        }
    }
    let mut c_ref = c0.clone();
    let mut c = c0.clone();
    let av = MatRef::new(&a, m, k, rsa, csa).unwrap();
    let bv = MatRef::new(&b, k, n, rsb, csb).unwrap();
    gemm_ref(
        alpha,
        av,
        bv,
        beta,
        MatMut::new(&mut c_ref, m, n, rsc, csc).unwrap(),
    );
    gemm_with(
        isa,
        par,
        alpha,
        av,
        bv,
        beta,
        MatMut::new(&mut c, m, n, rsc, csc).unwrap(),
    )
    .unwrap();
    let label = format!(
        "isa={isa} par={par:?} m={m} k={k} n={n} A={la:?} B={lb:?} C={lc:?} alpha={alpha} beta={beta} seed={seed}"
    );
    let mut in_view = vec![false; lenc];
    for i in 0..m {
        for j in 0..n {
            let idx = i * rsc + j * csc;
            in_view[idx] = true;
            // |error| ≤ c·k·ε·Σ|a||b| (+ the beta term); inputs are in [-1, 1).
            let mut mag = 0.0f64;
            for p in 0..k {
                mag += (a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64).abs();
            }
            let tol =
                4.0 * (k as f64 + 2.0) * f32::EPSILON as f64 * (alpha.abs() as f64 * mag + 1.0);
            let (got, want) = (c[idx], c_ref[idx]);
            assert!(
                got.is_finite() && ((got - want) as f64).abs() <= tol,
                "{label}: C[{i},{j}] = {got}, reference {want}, tol {tol}"
            );
        }
    }
    for (idx, (&v, &inside)) in c.iter().zip(&in_view).enumerate() {
        if !inside {
            assert!(
                v == SENTINEL,
                "{label}: element {idx} outside the view of C changed to {v}"
            );
        }
    }
}

#[test]
fn gemm_every_variant_matches_ref_on_small_and_prime_sizes() {
    let sizes = [0usize, 1, 2, 3, 5, 7, 13, 17, 31];
    for isa in variants() {
        let mut seed = 1;
        for &m in &sizes {
            for &k in &[0usize, 1, 7, 16, 31] {
                for &n in &sizes {
                    seed += 1;
                    check_case(
                        isa,
                        Parallelism::Sequential,
                        m,
                        k,
                        n,
                        Layout::RowMajor,
                        Layout::RowMajor,
                        Layout::RowMajor,
                        1.0,
                        0.0,
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_every_variant_matches_ref_around_tile_edges() {
    for isa in variants() {
        let (mr, nr) = tile_of(isa);
        let mut seed = 100;
        for m in [mr - 1, mr, mr + 1, 2 * mr + 1] {
            for n in [nr - 1, nr, nr + 1, 2 * nr + 3] {
                for k in [1, 4, 61] {
                    seed += 1;
                    check_case(
                        isa,
                        Parallelism::Sequential,
                        m,
                        k,
                        n,
                        Layout::RowMajor,
                        Layout::RowMajor,
                        Layout::RowMajor,
                        1.5,
                        0.5,
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_every_variant_matches_ref_around_block_edges() {
    for isa in variants() {
        let bs = block_sizes(isa);
        let (mr, _) = tile_of(isa);
        let mut seed = 200;
        for (m, k, n) in [
            (bs.mc + 1, bs.kc + 1, 37),
            (bs.mc - mr + 1, bs.kc - 1, 70),
            (13, 2 * bs.kc + 5, 29),
            (3, 9, bs.nc + 17),
        ] {
            seed += 1;
            check_case(
                isa,
                Parallelism::Sequential,
                m,
                k,
                n,
                Layout::RowMajor,
                Layout::RowMajor,
                Layout::RowMajor,
                1.0,
                1.0,
                seed,
            );
        }
    }
}

#[test]
fn gemm_every_variant_handles_every_layout() {
    use Layout::*;
    let layouts = [RowMajor, ColMajor, PaddedRow, Gapped];
    for isa in variants() {
        let mut seed = 300;
        for la in layouts {
            for lb in layouts {
                for lc in layouts {
                    seed += 1;
                    check_case(
                        isa,
                        Parallelism::Rayon,
                        23,
                        41,
                        37,
                        la,
                        lb,
                        lc,
                        0.75,
                        -1.25,
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_alpha_beta_combinations_and_nan_c_with_beta_zero() {
    for isa in variants() {
        let mut seed = 400;
        for (alpha, beta) in [
            (1.0, 0.0),
            (2.0, 0.0),
            (1.0, 1.0),
            (-0.5, 2.0),
            (0.0, 0.5),
            (0.0, 0.0),
        ] {
            for k in [0, 5, 300] {
                seed += 1;
                check_case(
                    isa,
                    Parallelism::Sequential,
                    19,
                    k,
                    21,
                    Layout::RowMajor,
                    Layout::ColMajor,
                    Layout::PaddedRow,
                    alpha,
                    beta,
                    seed,
                );
            }
        }
    }
}

#[test]
fn gemm_large_parallel_matches_ref() {
    for isa in variants() {
        check_case(
            isa,
            Parallelism::Rayon,
            301,
            257,
            263,
            Layout::RowMajor,
            Layout::RowMajor,
            Layout::RowMajor,
            1.0,
            0.0,
            500,
        );
    }
}

#[test]
fn gemm_integer_inputs_give_exact_results() {
    // Small integers: every partial sum is exact in f32, so results must be equal.
    let (m, k, n) = (37, 53, 41);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
    let mut want = vec![0.0; m * n];
    gemm_ref(
        1.0,
        MatRef::row_major(&a, m, k).unwrap(),
        MatRef::row_major(&b, k, n).unwrap(),
        0.0,
        MatMut::row_major(&mut want, m, n).unwrap(),
    );
    for isa in variants() {
        let mut c = vec![f32::NAN; m * n];
        gemm_with(
            isa,
            Parallelism::Rayon,
            1.0,
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            0.0,
            MatMut::row_major(&mut c, m, n).unwrap(),
        )
        .unwrap();
        assert_eq!(c, want, "isa={isa}");
    }
}

#[test]
fn gemm_results_are_bit_identical_at_any_thread_count() {
    // One depth block; several depth blocks with a column-major B (packed panel by panel)
    // and few rows (columns split between tasks); A packed (by the fused kernels) with
    // more columns than one NC block. Threads claim and pack the B panels as they first
    // need them, so each case runs on pools of several sizes.
    let cases = [
        (390, 700, 333, false, ARead::Auto),
        (97, 2100, 170, true, ARead::Auto),
        (150, 512, 4100, false, ARead::Packed),
    ];
    for (case, &(m, k, n, b_col_major, a_read)) in cases.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(600 + case as u64);
        let a = rand_vec(&mut rng, m * k);
        let b = rand_vec(&mut rng, k * n);
        let b_view = || {
            if b_col_major {
                MatRef::col_major(&b, k, n).unwrap()
            } else {
                MatRef::row_major(&b, k, n).unwrap()
            }
        };
        for isa in variants() {
            let product = |par: Parallelism| {
                let mut c = vec![0.0; m * n];
                gemm_with_a_read(
                    isa,
                    par,
                    a_read,
                    1.0,
                    MatRef::row_major(&a, m, k).unwrap(),
                    b_view(),
                    0.0,
                    MatMut::row_major(&mut c, m, n).unwrap(),
                )
                .unwrap();
                c
            };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| product(Parallelism::Rayon))
            };
            let one = run(1);
            let tag = format!("isa={isa} {m}x{k}x{n}");
            for t in [2, 3, 7] {
                assert!(one == run(t), "{tag}: {t} threads differ from 1");
            }
            let seq = product(Parallelism::Sequential);
            assert!(one == seq, "{tag}: sequential differs");
            // And right, not only repeatable (inputs in [-1, 1): |error| ≤ 4·k·ε·k).
            let mut want = vec![0.0; m * n];
            gemm_ref(
                1.0,
                MatRef::row_major(&a, m, k).unwrap(),
                b_view(),
                0.0,
                MatMut::row_major(&mut want, m, n).unwrap(),
            );
            let tol = 4.0 * (k * k) as f32 * f32::EPSILON;
            for (i, (x, y)) in seq.iter().zip(&want).enumerate() {
                assert!((x - y).abs() <= tol, "{tag}: C[{i}] = {x}, reference {y}");
            }
        }
    }
}

#[test]
fn gemm_inside_rayon_tasks_does_not_deadlock() {
    use rayon::prelude::*;
    let (m, k, n) = (200, 150, 180);
    let mut rng = StdRng::seed_from_u64(700);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    let mut want = vec![0.0; m * n];
    fastattn_kernels::gemm(
        1.0,
        MatRef::row_major(&a, m, k).unwrap(),
        MatRef::row_major(&b, k, n).unwrap(),
        0.0,
        MatMut::row_major(&mut want, m, n).unwrap(),
    )
    .unwrap();
    let outs: Vec<Vec<f32>> = (0..8)
        .into_par_iter()
        .map(|_| {
            let mut c = vec![0.0; m * n];
            fastattn_kernels::gemm(
                1.0,
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, m, n).unwrap(),
            )
            .unwrap();
            c
        })
        .collect();
    for c in outs {
        assert!(c == want);
    }
}

#[test]
fn gemm_safe_api_rejects_bad_input() {
    let a = vec![0.0f32; 12];
    let mut c = vec![0.0f32; 12];
    // Buffer too small.
    assert!(matches!(
        MatRef::row_major(&a, 4, 4),
        Err(KernelError::BufferTooSmall { .. })
    ));
    // Overflowing extent.
    assert!(matches!(
        MatRef::new(&a, usize::MAX, 2, usize::MAX, 1),
        Err(KernelError::Overflow { .. })
    ));
    // Self-aliasing output.
    assert!(matches!(
        MatMut::new(&mut c, 3, 3, 1, 1),
        Err(KernelError::BadStride { .. })
    ));
    assert!(matches!(
        MatMut::new(&mut c, 3, 1, 0, 1),
        Err(KernelError::BadStride { .. })
    ));
    // Shape mismatch.
    let av = MatRef::row_major(&a, 3, 4).unwrap();
    let bv = MatRef::row_major(&a, 3, 4).unwrap();
    let r = gemm_with(
        Isa::Scalar,
        Parallelism::Sequential,
        1.0,
        av,
        bv,
        0.0,
        MatMut::row_major(&mut c, 3, 4).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })), "{r:?}");
    // Unsupported ISA.
    let r = gemm_with(
        Isa::Neon,
        Parallelism::Sequential,
        1.0,
        av,
        av.t(),
        0.0,
        MatMut::row_major(&mut c, 3, 3).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::UnsupportedIsa { .. })));
}

#[test]
fn raw_sgemm_supports_negative_strides() {
    // A read bottom-up through a negative row stride equals A with its rows reversed.
    let (m, k, n) = (9, 11, 10);
    let mut rng = StdRng::seed_from_u64(800);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    let mut rev = vec![0.0; m * k];
    for i in 0..m {
        rev[i * k..(i + 1) * k].copy_from_slice(&a[(m - 1 - i) * k..(m - i) * k]);
    }
    let mut want = vec![0.0; m * n];
    gemm_ref(
        1.0,
        MatRef::row_major(&rev, m, k).unwrap(),
        MatRef::row_major(&b, k, n).unwrap(),
        0.0,
        MatMut::row_major(&mut want, m, n).unwrap(),
    );
    let mut c = vec![0.0; m * n];
    // SAFETY: the view starts at the last row and steps back by k: all inside `a`.
    unsafe {
        fastattn_kernels::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr().add((m - 1) * k),
            -(k as isize),
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    };
    for (x, y) in c.iter().zip(&want) {
        assert!((x - y).abs() < 1e-4);
    }
}

#[test]
fn gemm_packed_b_matches_ref_for_every_variant_and_a_layout() {
    use fastattn_kernels::gemm::packed::{gemm_packed_b, PackedB};
    let mut seed = 900;
    for isa in variants() {
        let (mr, nr) = tile_of(isa);
        for &(m, k, n_total) in &[
            (1, 1, 1),
            (mr + 1, 7, 3 * nr + 5),
            (5 * mr, 64, 2 * nr),
            (61, 33, 257),
        ] {
            seed += 1;
            let mut rng = StdRng::seed_from_u64(seed);
            let b = rand_vec(&mut rng, k * n_total);
            let bv = MatRef::row_major(&b, k, n_total).unwrap();
            let mut pb = PackedB::new(isa).unwrap();
            // Pack something bigger first: the buffer is reused.
            let big = rand_vec(&mut rng, 3 * k * n_total);
            pb.pack(MatRef::row_major(&big, 3 * k, n_total).unwrap())
                .unwrap();
            pb.pack(bv).unwrap();
            for col0 in (0..n_total).step_by(nr).take(3) {
                let n = (n_total - col0).min(2 * nr + 1);
                for a_layout in [Layout::RowMajor, Layout::ColMajor, Layout::PaddedRow] {
                    let (rsa, csa, lena) = strides(a_layout, m, k);
                    let a = rand_vec(&mut rng, lena);
                    let av = MatRef::new(&a, m, k, rsa, csa).unwrap();
                    let c0 = rand_vec(&mut rng, m * n);
                    let (mut c, mut want) = (c0.clone(), c0.clone());
                    let bsub = MatRef::new(&b[col0..], k, n, n_total, 1).unwrap();
                    gemm_ref(
                        0.5,
                        av,
                        bsub,
                        1.0,
                        MatMut::row_major(&mut want, m, n).unwrap(),
                    );
                    gemm_packed_b(
                        0.5,
                        av,
                        &pb,
                        col0,
                        1.0,
                        MatMut::row_major(&mut c, m, n).unwrap(),
                    )
                    .unwrap();
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - y).abs() <= 1e-4 * (k as f32 + 1.0),
                            "isa={isa} m={m} k={k} n={n} col0={col0} A={a_layout:?} seed={seed}: {x} vs {y}");
                    }
                }
            }
            // Misaligned column offset is refused.
            let mut c = vec![0.0; m];
            if n_total > 1 && nr > 1 {
                assert!(gemm_packed_b(
                    1.0,
                    MatRef::new(&b, m.min(1), k, k, 1).unwrap_or(bv),
                    &pb,
                    1,
                    0.0,
                    MatMut::row_major(&mut c, m.min(1), 1).unwrap()
                )
                .is_err());
            }
        }
    }
}

#[test]
fn gemm_packed_row_major_a_matches_ref() {
    // Row-major A packed instead of read in place (by the fused kernels, or for the scalar
    // variant by 4×4 transposes on x86-64); 37 rows leave a partial row group on every
    // variant, and k = 299, 301 leave columns past the last 4×4 block.
    for k in [300, 299, 301, 3] {
        packed_a_case(37, k, 45, 512);
    }
}

fn packed_a_case(m: usize, k: usize, n: usize, lda: usize) {
    let mut rng = StdRng::seed_from_u64(1000 + k as u64);
    let a = rand_vec(&mut rng, m * lda);
    let b = rand_vec(&mut rng, k * n);
    let av = MatRef::new(&a, m, k, lda, 1).unwrap();
    let bv = MatRef::row_major(&b, k, n).unwrap();
    let mut want = vec![0.0; m * n];
    gemm_ref(
        1.0,
        av,
        bv,
        0.0,
        MatMut::row_major(&mut want, m, n).unwrap(),
    );
    for isa in variants() {
        let mut c = vec![f32::NAN; m * n];
        gemm_with_a_read(
            isa,
            Parallelism::Rayon,
            ARead::Packed,
            1.0,
            av,
            bv,
            0.0,
            MatMut::row_major(&mut c, m, n).unwrap(),
        )
        .unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-4, "isa={isa} k={k}: {x} vs {y}");
        }
    }
}

#[test]
fn gemm_fused_packing_matches_ref_across_blocks_and_edges() {
    // Packed row-major A is packed inside the kernel calls on each task's first B panel
    // (fused kernels), which later panels then read packed. Cover several row blocks
    // (m > MC), depth blocks (k > KC, later blocks accumulate onto C), a partial last row
    // group and B panel, exactly one row group, fewer rows than that (nothing fused) and a
    // B narrower than one panel (the fused call writes a scratch tile); on one thread and
    // on the pool; with beta ≠ 0 over a random C; packed, in place and by the automatic
    // choice (strides of 2, 8 and 16 KiB and one of 2800 bytes).
    for isa in variants() {
        let bs = block_sizes(isa);
        let (mr, nr) = tile_of(isa);
        let mut seed = 900;
        for (m, k, n, lda) in [
            (bs.mc + mr + 5, bs.kc + 7, 3 * nr + 5, 2048),
            (2 * bs.mc + 1, 40, 2 * nr, 512),
            (mr, 2 * bs.kc + 3, nr + 1, 4096),
            (mr - 1, 50, 2 * nr + 3, 512),
            (3 * mr, 33, nr - 1, 512),
            (3 * mr + 2, 300, 5 * nr, 700),
        ] {
            for (par, a_read) in [
                (Parallelism::Sequential, ARead::Packed),
                (Parallelism::Rayon, ARead::Packed),
                (Parallelism::Rayon, ARead::InPlace),
                (Parallelism::Sequential, ARead::Auto),
            ] {
                seed += 1;
                let mut rng = StdRng::seed_from_u64(seed);
                let a = rand_vec(&mut rng, m * lda);
                let b = rand_vec(&mut rng, k * n);
                let c0 = rand_vec(&mut rng, m * n);
                let av = MatRef::new(&a, m, k, lda, 1).unwrap();
                let bv = MatRef::row_major(&b, k, n).unwrap();
                let mut want = c0.clone();
                gemm_ref(
                    0.75,
                    av,
                    bv,
                    0.5,
                    MatMut::row_major(&mut want, m, n).unwrap(),
                );
                let mut c = c0.clone();
                gemm_with_a_read(
                    isa,
                    par,
                    a_read,
                    0.75,
                    av,
                    bv,
                    0.5,
                    MatMut::row_major(&mut c, m, n).unwrap(),
                )
                .unwrap();
                let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= tol,
                        "{isa} {par:?} {a_read:?} m={m} k={k} n={n} lda={lda}: C[{}, {}] = {x}, want {y}",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }
}
