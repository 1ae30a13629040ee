//! Results do not depend on the threads: bit-identical at 1, 2 and 3 threads, with helpers
//! that join at once and with helpers that start late (the `set_helper_delay` test hook),
//! for GEMM, the flash prefill, the split decode, the materialised path and the backward.
//!
//! One test function: the helper delay is process-wide, and this binary holds nothing else.

use fastattn_attention::{
    sdpa_backward, sdpa_into, AttnPath, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::gemm::{gemm, MatMut, MatRef};
use kernels::parallel::{set_helper_delay, with_threads};
use std::time::Duration;
use testutil::{rand_vec, seeded};

/// Everything one run computes, flattened.
fn compute() -> Vec<Vec<f32>> {
    let mut rng = seeded(34);
    let mut outs = Vec::new();
    // GEMM: large enough to split (tens of Mflop), with a ragged edge.
    let (m, k, n) = (301, 257, 263);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    let mut c = vec![0.0f32; m * n];
    gemm(
        1.0,
        MatRef::new(&a, m, k, k, 1).unwrap(),
        MatRef::new(&b, k, n, n, 1).unwrap(),
        0.0,
        MatMut::new(&mut c, m, n, n, 1).unwrap(),
    )
    .unwrap();
    outs.push(c);
    // Attention: prefill (causal, GQA), a split decode, a short Lq.
    for &(hq, hkv, lq, lk, causal) in &[
        (4, 2, 300, 300, true),
        (8, 2, 1, 9000, false),
        (4, 1, 5, 4100, true),
    ] {
        let d = 32;
        let qb = rand_vec(&mut rng, hq * lq * d);
        let kb = rand_vec(&mut rng, hkv * lk * d);
        let vb = rand_vec(&mut rng, hkv * lk * d);
        let q = TensorRef::contiguous(&qb, [1, hq, lq, d]).unwrap();
        let kt = TensorRef::contiguous(&kb, [1, hkv, lk, d]).unwrap();
        let vt = TensorRef::contiguous(&vb, [1, hkv, lk, d]).unwrap();
        for path in [AttnPath::Flash, AttnPath::Materialized] {
            let opts = SdpaOptions::default().with_causal(causal).with_path(path);
            let mut o = vec![0.0f32; hq * lq * d];
            let mut lse = vec![0.0f32; hq * lq];
            sdpa_into(
                q,
                kt,
                vt,
                TensorMut::contiguous(&mut o, [1, hq, lq, d]).unwrap(),
                &opts,
                SdpaOutputs::default().with_lse(Some(&mut lse)),
            )
            .unwrap();
            if path == AttnPath::Flash && lq > 1 {
                let gb = rand_vec(&mut rng, hq * lq * d);
                let ot = TensorRef::contiguous(&o, [1, hq, lq, d]).unwrap();
                let g = TensorRef::contiguous(&gb, [1, hq, lq, d]).unwrap();
                let grads = sdpa_backward(q, kt, vt, ot, g, &lse, &opts).unwrap();
                outs.extend([grads.dq, grads.dk, grads.dv]);
            }
            outs.extend([o, lse]);
        }
    }
    outs
}

#[test]
fn results_are_bit_identical_at_any_thread_count_with_early_and_late_helpers() {
    let want = with_threads(1, compute);
    for delay_us in [0u64, 300, 5000] {
        set_helper_delay(Duration::from_micros(delay_us));
        for threads in [2, 3] {
            for round in 0..2 {
                let got = with_threads(threads, compute);
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let same = g.len() == w.len()
                        && g.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "output {i} differs at {threads} threads, helpers {delay_us} µs late, round {round}"
                    );
                }
            }
        }
    }
    set_helper_delay(Duration::ZERO);
}
