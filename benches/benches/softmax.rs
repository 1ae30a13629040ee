//! Criterion: the vector exp, softmax and log-softmax over rows of 4096 f32, every variant
//! the CPU runs against a straightforward scalar loop on `f32::exp`, one thread.
//!
//! The targets (one thread, rows of 4096): ≥ 2.5 G elements/s for exp, ≥ 1.5 G/s for
//! softmax, and ≥ 8× the scalar `f32::exp` softmax.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastattn_benches::random_vec;
use kernels::exp::exp_slice_with;
use kernels::softmax::online::exp_row_update;
use kernels::softmax::{log_softmax_with, softmax_row_with, softmax_with, RowOptions};
use kernels::{Isa, Parallelism};
use std::hint::black_box;

/// Row length of every group.
const ROW: usize = 4096;
/// Rows per iteration (64 K values: 256 KiB in, 256 KiB out; one row is 16 KiB, in L1).
const ROWS: usize = 16;

/// Logits in [-8, 8).
fn logits(len: usize, seed: u64) -> Vec<f32> {
    random_vec(len, seed).into_iter().map(|v| 8.0 * v).collect()
}

/// The baseline: max, `f32::exp` and sum, divide; three plain loops per row.
fn softmax_scalar_f32_exp(x: &[f32], out: &mut [f32], n: usize) {
    for (xr, or) in x.chunks(n).zip(out.chunks_mut(n)) {
        let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = (v - m).exp();
            sum += *o;
        }
        for o in or.iter_mut() {
            *o /= sum;
        }
    }
}

fn bench_exp(c: &mut Criterion) {
    let x = logits(ROWS * ROW, 1);
    let mut out = vec![0.0f32; x.len()];
    let shape = format!("{ROWS}x{ROW}");
    let mut g = c.benchmark_group("exp");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::available() {
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |b, _| {
            b.iter(|| exp_slice_with(isa, black_box(&x), &mut out).unwrap())
        });
    }
    g.bench_with_input(BenchmarkId::new("f32::exp", &shape), &(), |b, _| {
        b.iter(|| {
            for (o, &v) in out.iter_mut().zip(black_box(&x)) {
                *o = v.exp();
            }
        })
    });
    g.finish();
}

fn bench_softmax(c: &mut Criterion) {
    let x = logits(ROWS * ROW, 2);
    let mut out = vec![0.0f32; x.len()];
    let shape = format!("{ROWS}x{ROW}");
    let opts = RowOptions::new();
    let seq = Parallelism::Sequential;

    let mut g = c.benchmark_group("softmax");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::available() {
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |b, _| {
            b.iter(|| softmax_with(isa, seq, black_box(&x), &mut out, ROW, &opts).unwrap())
        });
    }
    g.bench_with_input(BenchmarkId::new("scalar-f32-exp", &shape), &(), |b, _| {
        b.iter(|| softmax_scalar_f32_exp(black_box(&x), &mut out, ROW))
    });
    g.finish();

    let mut g = c.benchmark_group("log_softmax");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::available() {
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |b, _| {
            b.iter(|| log_softmax_with(isa, seq, black_box(&x), &mut out, ROW, &opts).unwrap())
        });
    }
    g.finish();

    // The attention forms, in place on a copy of the raw scores: the fused row softmax with
    // scale, mask and causal limit, and the online exp-and-sum step.
    let mask: Vec<f32> = (0..ROW)
        .map(|j| if j % 17 == 0 { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    let masked = RowOptions::new()
        .with_scale(0.125)
        .with_mask(&mask)
        .with_causal_limit(ROW - 100);
    let mut g = c.benchmark_group("softmax_row_attention");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::available() {
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |b, _| {
            b.iter(|| {
                out.copy_from_slice(black_box(&x));
                for row in out.chunks_mut(ROW) {
                    softmax_row_with(isa, row, &masked).unwrap();
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("online_exp_row_update");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::available() {
        g.bench_with_input(BenchmarkId::new(isa.name(), &shape), &(), |b, _| {
            b.iter(|| {
                out.copy_from_slice(black_box(&x));
                let mut m = f32::NEG_INFINITY;
                for row in out.chunks_mut(ROW) {
                    m = exp_row_update(isa, row, 0.125, m).unwrap().0;
                }
                m
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_exp, bench_softmax);
criterion_main!(benches);
