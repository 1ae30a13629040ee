//! Peak memory of one attention call on candle tensors: candle's matmul → softmax → matmul
//! path (the whole `H × L × L` score matrix and its softmax temporaries) against
//! `fastattn_candle::sdpa` (key blocks, never the matrix).
//!
//! ```text
//! cargo run --release -p fastattn-candle --example peak_memory -- candle 8192
//! cargo run --release -p fastattn-candle --example peak_memory -- fastattn 8192
//! ```
//!
//! Arguments: the implementation (`candle` or `fastattn`), `L` (default 8192), the heads
//! (default 8) and `D` (default 64). Q, K and V are f32 `[1, H, L, D]`, not causal. One
//! implementation per process: the process's high-water mark of resident memory (Linux
//! `VmHWM`, read from `/proc/self/status`) is printed before the call (inputs built) and
//! after it; the difference is what the call added at its peak. Elsewhere than Linux it
//! prints that the mark is unavailable.

use candle_core::{Device, Result, Tensor};

/// The process's peak resident set in bytes (`VmHWM`), where Linux reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(x: u64) -> f64 {
    x as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("fastattn");
    let num = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (l, h, d) = (num(1, 8192), num(2, 8), num(3, 64));
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, h, l, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, h, l, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, h, l, d), &dev)?;
    let before = peak_rss();
    let scale = 1.0 / (d as f32).sqrt();
    let t0 = std::time::Instant::now();
    let out = match which {
        "candle" => {
            fastattn_candle::reference::attention_matmul_softmax(&q, &k, &v, None, scale, false)?
        }
        "fastattn" => fastattn_candle::sdpa(&q, &k, &v, &fastattn_candle::SdpaOptions::new())?,
        other => candle_core::bail!("the implementation is `candle` or `fastattn`, got {other:?}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    let after = peak_rss();
    let inputs = 3 * h * l * d * 4;
    println!(
        "{which}: L {l}, H {h}, D {d}, f32; inputs {:.1} MiB; scores alone would be {:.1} MiB; {:.2} s",
        mib(inputs as u64),
        mib((h * l * l * 4) as u64),
        secs
    );
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "peak RSS: {:.1} MiB before the call, {:.1} MiB after: the call added {:.1} MiB at its peak",
            mib(b),
            mib(a),
            mib(a - b)
        ),
        _ => println!("peak RSS: unavailable (no /proc/self/status VmHWM on this system)"),
    }
    std::hint::black_box(out);
    Ok(())
}
