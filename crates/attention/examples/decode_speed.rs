//! Decode timing (Lq = 1 against a long cache):
//! `cargo run --release --example decode_speed -- [Lk Hq Hkv D threads]`; prints GB/s of K+V read.

use fastattn_attention::{sdpa, SdpaOptions, TensorRef};
use std::time::Instant;

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (lk, hq, hkv, d, threads) = (arg(1, 32768), arg(2, 32), arg(3, 8), arg(4, 128), arg(5, 1));
    let kv: Vec<f32> = (0..hkv * lk * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let vv: Vec<f32> = (0..hkv * lk * d)
        .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let q: Vec<f32> = (0..hq * d).map(|i| (i % 17) as f32 / 17.0).collect();
    let (qt, kt, vt) = (
        TensorRef::contiguous(&q, [1, hq, 1, d]).unwrap(),
        TensorRef::contiguous(&kv, [1, hkv, lk, d]).unwrap(),
        TensorRef::contiguous(&vv, [1, hkv, lk, d]).unwrap(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let opts = SdpaOptions::default();
    let mut times = vec![];
    for _ in 0..7 {
        let s = Instant::now();
        pool.install(|| sdpa(qt, kt, vt, &opts).unwrap());
        times.push(s.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let bytes = 2.0 * (hkv * lk * d * 4) as f64;
    println!(
        "decode Lk={lk} Hq={hq} Hkv={hkv} D={d} threads={threads}: median {:.2} ms, {:.1} GB/s (K and V read)",
        times[3] * 1e3,
        bytes / times[3] / 1e9
    );
}
