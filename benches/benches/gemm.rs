//! Criterion: square and attention-shaped SGEMM, every variant the CPU runs against
//! matrixmultiply and the `gemm` crate, one thread, in one group per shape.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastattn_benches::{gemm_crate, matrixmultiply_sgemm, random_vec, RECT, SQUARES};
use kernels::{gemm_with, Isa, MatMut, MatRef, Parallelism};
use std::hint::black_box;

fn bench_shape(c: &mut Criterion, group: &str, m: usize, k: usize, n: usize) {
    let a = random_vec(m * k, 1);
    let b = random_vec(k * n, 2);
    let mut out = vec![0.0f32; m * n];
    let shape = format!("{m}x{k}x{n}");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    g.sample_size(10);
    for isa in Isa::available() {
        if isa == Isa::Scalar && m * n * k > 256 * 256 * 256 {
            continue;
        }
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |bch, _| {
            bch.iter(|| {
                gemm_with(
                    isa,
                    Parallelism::Sequential,
                    1.0,
                    MatRef::row_major(black_box(&a), m, k).unwrap(),
                    MatRef::row_major(black_box(&b), k, n).unwrap(),
                    0.0,
                    MatMut::row_major(&mut out, m, n).unwrap(),
                )
                .unwrap()
            })
        });
    }
    g.bench_with_input(BenchmarkId::new("matrixmultiply", &shape), &(), |bch, _| {
        bch.iter(|| matrixmultiply_sgemm(m, k, n, black_box(&a), black_box(&b), &mut out))
    });
    g.bench_with_input(BenchmarkId::new("gemm-crate", &shape), &(), |bch, _| {
        bch.iter(|| gemm_crate(m, k, n, black_box(&a), black_box(&b), &mut out, 1))
    });
    g.finish();
}

fn gemm_benches(c: &mut Criterion) {
    for &n in SQUARES {
        bench_shape(c, "sgemm_square", n, n, n);
    }
    for &(m, k, n) in RECT {
        bench_shape(c, "sgemm_rect", m, k, n);
    }
}

criterion_group!(benches, gemm_benches);
criterion_main!(benches);
