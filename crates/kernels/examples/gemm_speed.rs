//! Quick GEMM timing of every variant at one shape:
//! `cargo run --release --example gemm_speed -- M [K N]` (row-major, median of 7 runs).

use fastattn_kernels::{gemm_with, Isa, MatMut, MatRef, Parallelism};
use std::time::Instant;

fn main() {
    let arg = |i: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse::<usize>().ok())
    };
    let m = arg(1).unwrap_or(512);
    let (k, n) = (arg(2).unwrap_or(m), arg(3).unwrap_or(m));
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(1.0, 1000.0) as usize;
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    // GEMM_ONLY=avx512 (for example) limits the run to one variant, for profilers.
    let only = std::env::var("GEMM_ONLY").ok();
    // GEMM_PAR=seq (or rayon) limits the run to one parallelism.
    let only_par = std::env::var("GEMM_PAR").ok();
    for isa in Isa::available() {
        if only.as_deref().is_some_and(|o| o != isa.name()) {
            continue;
        }
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let tag = if par == Parallelism::Sequential {
                "seq"
            } else {
                "rayon"
            };
            if only_par.as_deref().is_some_and(|p| p != tag) {
                continue;
            }
            let mut times = Vec::new();
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..reps {
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
                }
                times.push(t.elapsed().as_secs_f64() / reps as f64);
            }
            // A speed figure is worthless if the kernel skipped work: spot-check C.
            let spots = [(0, 0), (m / 2, n / 3), (m - 1, n - 1), (m * 5 / 7, n - 1)];
            for (i, j) in spots.into_iter().filter(|_| m > 0 && n > 0) {
                let want: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{isa} {par:?}: C[{i},{j}] = {got}, want {want}"
                );
            }
            times.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            println!(
                "{isa:>9} {par:?}: {m}x{k}x{n} median {:.3} ms  {:.1} GFLOP/s (best {:.1})",
                times[3] * 1e3,
                gf(times[3]),
                gf(times[0])
            );
        }
    }
}
