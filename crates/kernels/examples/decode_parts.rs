//! Times the decode kernels' parts apart, per K/V type: `cargo run --release --example
//! decode_parts -- [N] [ITERS]` (scores against N key rows of D = 128 for a group of four
//! query rows, then the weighted sum of N value rows; default N = 32768, and 512 for L1/L2).
use fastattn_kernels::gemv::{
    axpy_rows_quant_with, axpy_rows_with, dot_rows_quant_with, dot_rows_with,
};
use fastattn_kernels::quant::{Code, F8E4M3, F8E5M2};
use fastattn_kernels::{bf16, Element, Isa, MatMut, MatRef};
use std::time::Instant;

/// One row type's calls: scores into S, then P·V into O (8-bit rows take their scales).
trait Rows: Copy {
    fn of(x: f32) -> Self;
    fn dot(isa: Isa, q: MatRef<'_>, k: MatRef<'_, Self>, sc: &[f32], s: MatMut<'_>);
    fn axpy(isa: Isa, p: MatRef<'_>, v: MatRef<'_, Self>, sc: &[f32], o: MatMut<'_>);
}

macro_rules! float_rows {
    ($t:ty) => {
        impl Rows for $t {
            fn of(x: f32) -> Self {
                <$t as Element>::from_f32(x)
            }
            fn dot(isa: Isa, q: MatRef<'_>, k: MatRef<'_, Self>, _: &[f32], s: MatMut<'_>) {
                dot_rows_with(isa, 1.0, q, k, s).unwrap()
            }
            fn axpy(isa: Isa, p: MatRef<'_>, v: MatRef<'_, Self>, _: &[f32], o: MatMut<'_>) {
                axpy_rows_with(isa, p, v, o).unwrap()
            }
        }
    };
}
macro_rules! code_rows {
    ($t:ty) => {
        impl Rows for $t {
            fn of(x: f32) -> Self {
                <$t as Code>::encode(x * 100.0)
            }
            fn dot(isa: Isa, q: MatRef<'_>, k: MatRef<'_, Self>, sc: &[f32], s: MatMut<'_>) {
                dot_rows_quant_with(isa, 1.0, q, k, sc, s).unwrap()
            }
            fn axpy(isa: Isa, p: MatRef<'_>, v: MatRef<'_, Self>, sc: &[f32], o: MatMut<'_>) {
                axpy_rows_quant_with(isa, p, v, sc, o).unwrap()
            }
        }
    };
}
float_rows!(f32);
float_rows!(bf16);
code_rows!(i8);
code_rows!(F8E4M3);
code_rows!(F8E5M2);

fn run<E: Rows>(name: &str, isa: Isa, n: usize, iters: usize) {
    let (d, r) = (128, 4);
    let k: Vec<E> = (0..n * d)
        .map(|i| E::of(((i * 7919) % 1000) as f32 / 1000.0 - 0.5))
        .collect();
    let sc = vec![0.01f32; n];
    let q: Vec<f32> = (0..r * d).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut s = vec![0f32; r * n];
    let p: Vec<f32> = (0..r * n).map(|i| 1.0 + (i % 5) as f32).collect();
    let mut o = vec![0f32; r * d];
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..iters {
        let t = Instant::now();
        let (qm, km) = (
            MatRef::row_major(&q, r, d).unwrap(),
            MatRef::row_major(&k, n, d).unwrap(),
        );
        E::dot(isa, qm, km, &sc, MatMut::row_major(&mut s, r, n).unwrap());
        let t1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let pm = MatRef::row_major(&p, r, n).unwrap();
        E::axpy(isa, pm, km, &sc, MatMut::row_major(&mut o, r, d).unwrap());
        let t2 = t.elapsed().as_secs_f64();
        best = (best.0.min(t1), best.1.min(t2));
    }
    let bytes = (n * d * std::mem::size_of::<E>()) as f64;
    let fma = (n * d * r) as f64 / 8.0;
    println!(
        "{name:7} dot {:.3} ms {:5.1} GB/s  axpy {:.3} ms {:5.1} GB/s  (8-wide FMAs/ns: dot {:.2}, axpy {:.2})",
        best.0 * 1e3,
        bytes / best.0 / 1e9,
        best.1 * 1e3,
        bytes / best.1 / 1e9,
        fma / best.0 / 1e9,
        fma / best.1 / 1e9
    );
}

/// The read bandwidth the decode could reach: the sum of K and V (f32, `n` rows of 128
/// each) read as the decode reads them, 512 rows of K then 512 of V, with 8 accumulators
/// (vectorised by the compiler; no FMAs to wait for).
fn stream(n: usize, iters: usize) {
    let d = 128;
    let k: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32).collect();
    let v: Vec<f32> = (0..n * d).map(|i| (i % 5) as f32).collect();
    let sum = |x: &[f32]| {
        let mut acc = [0.0f32; 32];
        for c in x.chunks_exact(32) {
            for (a, &b) in acc.iter_mut().zip(c) {
                *a += b;
            }
        }
        acc.iter().sum::<f32>()
    };
    let mut best = f64::MAX;
    let mut total = 0.0;
    for _ in 0..iters {
        let t = Instant::now();
        for j0 in (0..n).step_by(512) {
            let j1 = (j0 + 512).min(n);
            total += sum(&k[j0 * d..j1 * d]) + sum(&v[j0 * d..j1 * d]);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let bytes = (2 * n * d * 4) as f64;
    println!(
        "read K and V blocks (f32, no compute): {:.3} ms {:.1} GB/s ({total:.0})",
        best * 1e3,
        bytes / best / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32768);
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let isa = Isa::best();
    for (n, it) in [(n, iters), (512, iters * 64)] {
        println!("n = {n}, {isa}");
        run::<f32>("f32", isa, n, it);
        run::<bf16>("bf16", isa, n, it);
        run::<i8>("int8", isa, n, it);
        run::<F8E4M3>("f8e4m3", isa, n, it);
        run::<F8E5M2>("f8e5m2", isa, n, it);
    }
    stream(8 * n, iters.div_ceil(4));
}
