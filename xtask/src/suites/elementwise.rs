//! The element-wise suites: `exp` (every variant's `exp_slice_with` against `f32::exp`) and
//! `softmax` (row softmax against a plain loop).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::peers::STD;
use crate::Result;
use fastattn_benches::random_vec;
use kernels::exp::exp_slice_with;
use kernels::softmax::{softmax_with, RowOptions};
use kernels::{Isa, Parallelism};
use std::sync::{Arc, Mutex};

/// Elementwise exp sizes: in L1 (16 KiB), in L2 (1 MiB), and streaming from memory
/// (64 MiB in, 64 MiB out).
pub const EXP_SIZES: &[(usize, Bound)] = &[
    (4096, Bound::Cache),
    (1 << 18, Bound::Cache),
    (1 << 24, Bound::Memory),
];

/// The exp suite: [`EXP_SIZES`].
pub fn exp_cases() -> Vec<Case> {
    EXP_SIZES.iter().map(|&(n, b)| exp_case(n, b)).collect()
}

pub(super) fn exp_from_shape(shape: &str) -> Result<Case> {
    let n = parse_dims(shape, 1, "N (elements)")?[0];
    let bound = if n >= 1 << 22 {
        Bound::Memory
    } else {
        Bound::Cache
    };
    Ok(exp_case(n, bound))
}

/// `out[i] = exp(x[i])` on `n` values in [−20, 20): every variant through
/// `kernels::exp::exp_slice_with` (one thread: it takes no `Parallelism`), and `std`, a
/// loop on `f32::exp`. Counts no flops (GFLOP/s is 0); bytes are 4n read + 4n written.
pub fn exp_case(n: usize, bound: Bound) -> Case {
    Case::new(
        "exp",
        n.to_string(),
        format!("n={n}"),
        0.0,
        8.0 * n as f64,
        bound,
        move || {
            let x: Arc<Vec<f32>> = Arc::new(random_vec(n, 3).iter().map(|v| 20.0 * v).collect());
            // One output buffer shared by the implementations (they never run at once).
            let out = Arc::new(Mutex::new(vec![0.0f32; n]));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (x, out) = (x.clone(), out.clone());
                let run = move |_t: usize| {
                    let mut o = out.lock().expect("not poisoned");
                    exp_slice_with(isa, &x, &mut o).expect("an available ISA runs");
                };
                impls.push(Impl::ours(isa, run).at_threads(1));
            }
            let run = move |_t: usize| {
                let mut o = out.lock().expect("not poisoned");
                for (o, x) in o.iter_mut().zip(x.iter()) {
                    *o = x.exp();
                }
            };
            impls.push(Impl::peer(STD, run).at_threads(1));
            impls
        },
    )
}

/// Softmax shapes `(rows, row_len, bound)`: heads × a 1024-key score row (in L2), a
/// decode-like 32 heads × 8192 keys, and a 4096 × 4096 score matrix streamed from memory.
pub const SOFTMAX_SHAPES: &[(usize, usize, Bound)] = &[
    (64, 1024, Bound::Cache),
    (32, 8192, Bound::Cache),
    (4096, 4096, Bound::Memory),
];

/// The softmax suite: [`SOFTMAX_SHAPES`].
pub fn softmax_cases() -> Vec<Case> {
    SOFTMAX_SHAPES
        .iter()
        .map(|&(r, l, b)| softmax_case(r, l, b))
        .collect()
}

pub(super) fn softmax_from_shape(shape: &str) -> Result<Case> {
    let d = parse_dims(shape, 2, "ROWSxLEN")?;
    let bound = if d[0] * d[1] >= 1 << 22 {
        Bound::Memory
    } else {
        Bound::Cache
    };
    Ok(softmax_case(d[0], d[1], bound))
}

/// Row softmax of a `rows × row_len` matrix of logits in [−8, 8), out of place (the input
/// stays the same between calls): every variant through `kernels::softmax::softmax_with`
/// with `Parallelism::Rayon` (so at every thread count), and `std`, a plain loop (max,
/// `f32::exp`, sum, divide) on one thread. Counts no flops; bytes are 4n read + 4n written.
pub fn softmax_case(rows: usize, row_len: usize, bound: Bound) -> Case {
    let n = rows * row_len;
    Case::new(
        "softmax",
        format!("{rows}x{row_len}"),
        format!("rows={rows} len={row_len}"),
        0.0,
        8.0 * n as f64,
        bound,
        move || {
            let x: Arc<Vec<f32>> = Arc::new(random_vec(n, 4).iter().map(|v| 8.0 * v).collect());
            let out = Arc::new(Mutex::new(vec![0.0f32; n]));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (x, out) = (x.clone(), out.clone());
                let run = move |_t: usize| {
                    let mut o = out.lock().expect("not poisoned");
                    let opts = RowOptions::new();
                    softmax_with(isa, Parallelism::Rayon, &x, &mut o, row_len, &opts)
                        .expect("an available ISA runs");
                };
                impls.push(Impl::ours(isa, run));
            }
            let run = move |_t: usize| {
                let mut o = out.lock().expect("not poisoned");
                for (o, x) in o.chunks_mut(row_len).zip(x.chunks(row_len)) {
                    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - m).exp();
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    for o in o.iter_mut() {
                        *o *= inv;
                    }
                }
            };
            impls.push(Impl::peer(STD, run).at_threads(1));
            impls
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_softmax_impls_run_and_shapes_parse() {
        for (case, elems) in [
            (exp_case(37, Bound::Cache), 37.0),
            (softmax_case(3, 13, Bound::Cache), 39.0),
        ] {
            assert_eq!((case.flops, case.bytes), (0.0, 8.0 * elems));
            let mut impls = (case.setup)();
            let names: Vec<&str> = impls.iter().map(|i| i.name.as_str()).collect();
            assert!(
                names.contains(&"scalar") && names.contains(&STD),
                "{names:?}"
            );
            for imp in impls.iter_mut() {
                (imp.run)(1);
            }
        }
        assert_eq!(exp_from_shape("4096").unwrap().id(), "exp/4096");
        assert!(exp_from_shape("1x2").is_err());
        let c = softmax_from_shape("2048x2048").unwrap();
        assert_eq!(
            (c.id().as_str(), c.bound),
            ("softmax/2048x2048", Bound::Memory)
        );
        assert!(softmax_from_shape("64").is_err());
        assert!(softmax_from_shape("0x4").is_err());
    }
}
