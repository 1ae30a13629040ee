//! Quick attention timing: `cargo run --release --example attn_speed -- L [H D causal(0|1) threads flash|mat]`.
//! Prints GFLOP/s (4·H·L²·D per call, halved for causal) for the flash and materialised paths.

use fastattn_attention::{sdpa, AttnPath, SdpaOptions, TensorRef};
use std::time::Instant;

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (l, h, d, causal, threads) = (
        arg(1, 1024),
        arg(2, 8),
        arg(3, 64),
        arg(4, 0) == 1,
        arg(5, 1),
    );
    let x: Vec<f32> = (0..h * l * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let t = TensorRef::contiguous(&x, [1, h, l, d]).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let flops = 4.0 * (h * l * l * d) as f64 / if causal { 2.0 } else { 1.0 };
    let only = std::env::args().nth(6).unwrap_or_default();
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        if !only.is_empty() && !format!("{path:?}").to_lowercase().starts_with(&only) {
            continue;
        }
        let opts = SdpaOptions::default().with_causal(causal).with_path(path);
        let mut times = vec![];
        for _ in 0..5 {
            let s = Instant::now();
            pool.install(|| sdpa(t, t, t, &opts).unwrap());
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{path:?} L={l} H={h} D={d} causal={causal} threads={threads}: median {:.2} ms, {:.1} GFLOP/s",
            times[2] * 1e3,
            flops / times[2] / 1e9
        );
    }
}
