//! Criterion: attention (B = 1, H = 8, D = 64, one thread) fused vs materialised vs a plain
//! materialised baseline on matrixmultiply + scalar softmax; causal; decode.

use attention::{sdpa, AttnPath, SdpaOptions, TensorRef};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastattn_benches::{naive_attention, random_vec};
use kernels::Parallelism;
use std::hint::black_box;

fn prefill(c: &mut Criterion) {
    let (h, d) = (8, 64);
    let mut g = c.benchmark_group("attention_prefill_1thread");
    g.sample_size(10);
    for &l in &[512usize, 1024, 2048] {
        let q = random_vec(h * l * d, 1);
        let k = random_vec(h * l * d, 2);
        let v = random_vec(h * l * d, 3);
        let t = |x| TensorRef::contiguous(x, [1, h, l, d]).unwrap();
        g.throughput(Throughput::Elements((4 * h * l * l * d) as u64));
        for (name, causal, path) in [
            ("flash", false, AttnPath::Flash),
            ("flash_causal", true, AttnPath::Flash),
            ("materialized", false, AttnPath::Materialized),
        ] {
            let opts = SdpaOptions::default()
                .with_causal(causal)
                .with_path(path)
                .with_parallelism(Parallelism::Sequential);
            g.bench_with_input(BenchmarkId::new(name, l), &(), |b, _| {
                b.iter(|| sdpa(t(black_box(&q)), t(&k), t(&v), &opts).unwrap())
            });
        }
        g.bench_with_input(BenchmarkId::new("naive_matrixmultiply", l), &(), |b, _| {
            b.iter(|| naive_attention(h, l, l, d, black_box(&q), &k, &v))
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    // One token against a 32k cache: Hq = 32, Hkv = 8, D = 128 (memory-bound: K and V read
    // once; throughput counted in bytes of K and V).
    let (hq, hkv, lk, d) = (32, 8, 32768, 128);
    let q = random_vec(hq * d, 4);
    let kv = random_vec(hkv * lk * d, 5);
    let mut g = c.benchmark_group("attention_decode");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((2 * hkv * lk * d * 4) as u64));
    for (name, par) in [
        ("1thread", Parallelism::Sequential),
        ("all_threads", Parallelism::Rayon),
    ] {
        let opts = SdpaOptions::default().with_parallelism(par);
        g.bench_with_input(BenchmarkId::new(name, lk), &(), |b, _| {
            b.iter(|| {
                sdpa(
                    TensorRef::contiguous(black_box(&q), [1, hq, 1, d]).unwrap(),
                    TensorRef::contiguous(&kv, [1, hkv, lk, d]).unwrap(),
                    TensorRef::contiguous(&kv, [1, hkv, lk, d]).unwrap(),
                    &opts,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, prefill, decode);
criterion_main!(benches);
