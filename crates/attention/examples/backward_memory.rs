//! Peak memory of the backward pass beyond its inputs and outputs.
//!
//! Allocates Q, K, V, O, dO, the LSE and the three gradients (`[1, H, L, D]` f32), runs the
//! forward once, records the process's peak resident set (`VmHWM`, Linux), then runs the
//! backward and records it again: the difference is what the backward needed on top,
//! which is O(L) (row statistics and per-thread tiles), never an `L × L` buffer.
//!
//! `cargo run --release -p fastattn-attention --example backward_memory -- [L] [H] [D]`
//! (defaults 8192 8 64).

use fastattn_attention::{
    sdpa_backward_into, sdpa_into, SdpaGrads, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use std::time::Instant;

/// The peak resident set in KiB (`VmHWM` of /proc/self/status), where Linux reports it.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A buffer of `n` values in [-1, 1), every page touched.
fn filled(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let l = args.first().copied().unwrap_or(8192);
    let h = args.get(1).copied().unwrap_or(8);
    let d = args.get(2).copied().unwrap_or(64);
    let dims = [1, h, l, d];
    let n = h * l * d;
    let (q, k, v, g) = (filled(n, 1), filled(n, 2), filled(n, 3), filled(n, 4));
    let mut o = filled(n, 5);
    let mut lse = filled(h * l, 6);
    let (mut dq, mut dk, mut dv) = (filled(n, 7), filled(n, 8), filled(n, 9));
    let opts = SdpaOptions::new().with_causal(true);
    let t = |x| TensorRef::contiguous(x, dims);
    sdpa_into(
        t(&q)?,
        t(&k)?,
        t(&v)?,
        TensorMut::contiguous(&mut o, dims)?,
        &opts,
        SdpaOutputs::default().with_lse(Some(&mut lse)),
    )?;
    let before = peak_rss_kib();
    let t0 = Instant::now();
    sdpa_backward_into(
        t(&q)?,
        t(&k)?,
        t(&v)?,
        t(&o)?,
        t(&g)?,
        &lse,
        SdpaGrads::new(
            TensorMut::contiguous(&mut dq, dims)?,
            TensorMut::contiguous(&mut dk, dims)?,
            TensorMut::contiguous(&mut dv, dims)?,
        ),
        &opts,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let after = peak_rss_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let io = (8 * n + h * l) * 4;
    let lxl = h * l * l * 4;
    println!("backward, causal, [1, {h}, {l}, {d}] f32: {secs:.2} s");
    println!(
        "inputs and outputs: {:.1} MiB; one L×L f32 buffer per head would be {:.1} MiB",
        io as f64 / (1 << 20) as f64,
        lxl as f64 / (1 << 20) as f64
    );
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "peak RSS: {:.1} MiB after the forward, {:.1} MiB after the backward: +{:.1} MiB",
            mib(b),
            mib(a),
            mib(a.saturating_sub(b))
        ),
        _ => println!("peak RSS: not reported on this OS"),
    }
    Ok(())
}
