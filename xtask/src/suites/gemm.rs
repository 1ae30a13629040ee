//! The `gemm` suite: every variant's `gemm_with` against matrixmultiply and the gemm crate.

use crate::case::{Bound, Case, Impl};
use crate::peers::{matrixmultiply_threads, GEMM_CRATE, MATRIXMULTIPLY};
use crate::torch::TorchOp;
use crate::Result;
use fastattn_benches::{gemm_crate, matrixmultiply_sgemm, random_vec, RECT, SQUARES};
use kernels::gemm::{MatMut, MatRef};
use kernels::{gemm_with, Isa, Parallelism};
use std::sync::Arc;

/// Largest GEMM (in flops) the scalar variant runs in the quick run: 2·256³. Above it the
/// scalar kernel takes seconds per call; `--full` or `--variant scalar` still runs it.
pub const SCALAR_QUICK_MAX_FLOPS: f64 = 2.0 * 256.0 * 256.0 * 256.0;

/// Square sizes only `--full` adds.
pub const FULL_SQUARES: &[usize] = &[2048];

/// The GEMM suite: squares (64 … 1024, and 2048 with `--full`) and the attention- and
/// layer-shaped products of `fastattn_benches::RECT`.
pub fn gemm_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = SQUARES
        .iter()
        .map(|&n| gemm_case(n, n, n))
        .chain(FULL_SQUARES.iter().map(|&n| gemm_case(n, n, n).full_only()))
        .collect();
    cases.extend(RECT.iter().map(|&(m, k, n)| gemm_case(m, k, n)));
    cases
}

/// Parses a GEMM `--shape`: `MxKxN` or `N` (square).
///
/// # Errors
/// Anything else, or a zero dimension.
pub fn parse_gemm_shape(shape: &str) -> Result<(usize, usize, usize)> {
    let dims: Vec<usize> = shape
        .split(['x', 'X', '*', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("--shape {shape:?}: expected MxKxN or N"))?;
    let (m, k, n) = match dims[..] {
        [n] => (n, n, n),
        [m, k, n] => (m, k, n),
        _ => return Err(format!("--shape {shape:?}: expected MxKxN or N").into()),
    };
    if m == 0 || k == 0 || n == 0 {
        return Err(format!("--shape {shape:?}: dimensions must be positive").into());
    }
    Ok((m, k, n))
}

pub(super) fn gemm_from_shape(shape: &str) -> Result<Case> {
    let (m, k, n) = parse_gemm_shape(shape)?;
    Ok(gemm_case(m, k, n))
}

/// `C = A·B` for a row-major `m×k` A and `k×n` B: every variant this CPU runs through
/// `gemm_with(isa, Parallelism::Rayon, ..)` (so it uses the pool it is timed in), the
/// `gemm` crate at the pool's thread count, and matrixmultiply at its fixed thread count.
/// Named `N` when square, else `MxKxN`.
pub fn gemm_case(m: usize, k: usize, n: usize) -> Case {
    let name = if m == k && k == n {
        n.to_string()
    } else {
        format!("{m}x{k}x{n}")
    };
    let flops = 2.0 * m as f64 * k as f64 * n as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    Case::new(
        "gemm",
        name,
        format!("m={m} k={k} n={n}"),
        flops,
        bytes,
        Bound::Compute,
        move || {
            let a = Arc::new(random_vec(m * k, 1));
            let b = Arc::new(random_vec(k * n, 2));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (a, b) = (a.clone(), b.clone());
                let mut c = vec![0.0f32; m * n];
                let run = move |_threads: usize| {
                    let am = MatRef::row_major(&a, m, k).expect("A fits");
                    let bm = MatRef::row_major(&b, k, n).expect("B fits");
                    let cm = MatMut::row_major(&mut c, m, n).expect("C fits");
                    gemm_with(isa, Parallelism::Rayon, 1.0, am, bm, 0.0, cm)
                        .expect("an available ISA runs");
                };
                let slow = isa == Isa::Scalar && flops > SCALAR_QUICK_MAX_FLOPS;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            if let Some(t) = matrixmultiply_threads() {
                let (a, b) = (a.clone(), b.clone());
                let mut c = vec![0.0f32; m * n];
                let run = move |_threads: usize| matrixmultiply_sgemm(m, k, n, &a, &b, &mut c);
                impls.push(Impl::peer(MATRIXMULTIPLY, run).at_threads(t));
            }
            let mut c = vec![0.0f32; m * n];
            let run = move |threads: usize| gemm_crate(m, k, n, &a, &b, &mut c, threads);
            impls.push(Impl::peer(GEMM_CRATE, run));
            impls
        },
    )
    .with_torch(TorchOp::Mm { m, k, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_shapes_parse() {
        assert_eq!(parse_gemm_shape("512").unwrap(), (512, 512, 512));
        assert_eq!(parse_gemm_shape("64x256x128").unwrap(), (64, 256, 128));
        assert_eq!(parse_gemm_shape("64X2X3").unwrap(), (64, 2, 3));
        for bad in ["", "64x64", "ax1x1", "0x4x4", "1x2x3x4", "-1"] {
            assert!(parse_gemm_shape(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gemm_suite_names_and_work() {
        let cases = gemm_cases();
        let ids: Vec<String> = cases.iter().map(Case::id).collect();
        assert!(ids.contains(&"gemm/64".to_string()));
        assert!(ids.contains(&"gemm/512x768x2304".to_string()));
        let big = cases.iter().find(|c| c.name == "2048").unwrap();
        assert!(big.full_only);
        let c = gemm_case(2, 3, 4);
        assert_eq!((c.name.as_str(), c.flops, c.bytes), ("2x3x4", 48.0, 104.0));
        assert_eq!(c.shape, "m=2 k=3 n=4");
    }

    #[test]
    fn every_gemm_impl_runs_on_odd_shapes() {
        let case = gemm_case(5, 7, 3);
        let mut impls = (case.setup)();
        let names: Vec<&str> = impls.iter().map(|i| i.name.as_str()).collect();
        assert!(
            names.contains(&"scalar") && names.contains(&GEMM_CRATE),
            "{names:?}"
        );
        for imp in impls.iter_mut() {
            (imp.run)(1);
            (imp.run)(2);
        }
    }
}
