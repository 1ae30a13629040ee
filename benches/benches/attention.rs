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
            let opts = SdpaOptions {
                causal,
                path,
                parallelism: Parallelism::Sequential,
                ..Default::default()
            };
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

criterion_group!(benches, prefill);
criterion_main!(benches);
