//! Peak memory of a long causal attention on the fused path:
//! `cargo run --release --example long_context -- [L H D]` (default 32768 8 64).
//! Prints the process's peak resident set (VmHWM) beyond the inputs and the output.

use fastattn_attention::{sdpa_into, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
use std::time::Instant;

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (l, h, d) = (arg(1, 32768), arg(2, 8), arg(3, 64));
    let n = h * l * d;
    let fill = |seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (q, k, v) = (fill(1), fill(2), fill(3));
    let mut out = vec![0.0f32; n];
    out.iter_mut().for_each(|x| *x = 0.0);
    let before = vm_hwm_kib().unwrap_or(0);
    let t = Instant::now();
    sdpa_into(
        TensorRef::contiguous(&q, [1, h, l, d]).unwrap(),
        TensorRef::contiguous(&k, [1, h, l, d]).unwrap(),
        TensorRef::contiguous(&v, [1, h, l, d]).unwrap(),
        TensorMut::contiguous(&mut out, [1, h, l, d]).unwrap(),
        &SdpaOptions::default().with_causal(true),
        SdpaOutputs::default(),
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let after = vm_hwm_kib().unwrap_or(0);
    let flops = 2.0 * (h * l * l * d) as f64;
    println!(
        "causal L={l} H={h} D={d}: {secs:.2} s, {:.1} GFLOP/s; inputs+output {} MiB; peak RSS before the call {} MiB, after {} MiB: {} MiB beyond inputs and output",
        flops / secs / 1e9,
        (4 * n * 4) >> 20,
        before >> 10,
        after >> 10,
        (after.saturating_sub(before)) >> 10
    );
    assert!(out.iter().all(|x| x.is_finite()));
}
