//! Times the decode kernels' parts apart: `cargo run --release --example decode_parts`.
use fastattn_kernels::gemv::{axpy_rows_with, dot_rows_with};
use fastattn_kernels::{bf16, Element, Isa, MatMut, MatRef};
use std::time::Instant;

fn run<E: Element>(name: &str, isa: Isa, n: usize, d: usize, r: usize, iters: usize) {
    let k: Vec<E> = (0..n * d)
        .map(|i| E::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5))
        .collect();
    let q: Vec<f32> = (0..r * d).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut s = vec![0f32; r * n];
    let p: Vec<f32> = (0..r * n).map(|i| 1.0 + (i % 5) as f32).collect();
    let mut o = vec![0f32; r * d];
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..iters {
        let t = Instant::now();
        dot_rows_with(
            isa,
            1.0,
            MatRef::row_major(&q, r, d).unwrap(),
            MatRef::row_major(&k, n, d).unwrap(),
            MatMut::row_major(&mut s, r, n).unwrap(),
        )
        .unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        axpy_rows_with(
            isa,
            MatRef::row_major(&p, r, n).unwrap(),
            MatRef::row_major(&k, n, d).unwrap(),
            MatMut::row_major(&mut o, r, d).unwrap(),
        )
        .unwrap();
        let t2 = t.elapsed().as_secs_f64();
        best = (best.0.min(t1), best.1.min(t2));
    }
    // Interleaved as the decode does: per block of 512 keys, scores on K then P·V on V.
    let v: Vec<E> = k.iter().rev().copied().collect();
    let mut bi = f64::MAX;
    for _ in 0..iters {
        let t = Instant::now();
        for j0 in (0..n).step_by(512) {
            let j1 = (j0 + 512).min(n);
            let m = j1 - j0;
            dot_rows_with(
                isa,
                1.0,
                MatRef::row_major(&q, r, d).unwrap(),
                MatRef::row_major(&k[j0 * d..j1 * d], m, d).unwrap(),
                MatMut::new(&mut s, r, m, n, 1).unwrap(),
            )
            .unwrap();
            axpy_rows_with(
                isa,
                MatRef::new(&p, r, m, n, 1).unwrap(),
                MatRef::row_major(&v[j0 * d..j1 * d], m, d).unwrap(),
                MatMut::row_major(&mut o, r, d).unwrap(),
            )
            .unwrap();
        }
        bi = bi.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name:6} interleaved K/V blocks: {:.3} ms (separate sum {:.3} ms)",
        bi * 1e3,
        (best.0 + best.1) * 1e3
    );
    let bytes = (n * d * std::mem::size_of::<E>()) as f64;
    let fma = (n * d * r) as f64 / 8.0;
    println!("{name:6} dot {:.3} ms {:.1} GB/s  axpy {:.3} ms {:.1} GB/s   (vector FMAs/ns dot {:.2} axpy {:.2})",
        best.0 * 1e3, bytes / best.0 / 1e9, best.1 * 1e3, bytes / best.1 / 1e9, fma / best.0 / 1e9, fma / best.1 / 1e9);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32768);
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let isa = Isa::best();
    for &(n, label) in &[(n, "dram"), (512, "L1/L2")] {
        println!("n = {n} ({label})");
        let it = if n < 4096 { iters * 64 } else { iters };
        run::<f32>("f32", isa, n, 128, 4, it);
        run::<bf16>("bf16", isa, n, 128, 4, it);
    }
}
