//! Criterion: the multi-head attention layer against its parts measured separately, in one
//! run, so the glue cost is `layer / (qkv_proj + attention + out_proj)`.
//!
//! * `layer_prefill`: d_model 768, 12 heads of 64, causal, B = 1, L = 512 (GPT-2 small).
//! * `layer_decode`: d_model 2048, 16 query / 4 key-value heads of 128, RoPE, one token
//!   against 4096 cached tokens (throughput in tokens), `hot` (back-to-back calls) and
//!   `cold` (caches flushed before each call, the fair comparison for this memory-bound
//!   step; see the comment in `decode`).
//!
//! The default thread count (rayon's pool size); the parts use the same calls the layer makes. The
//! prefill group also times the fused QKV product with the blocked GEMM on the unpacked
//! weight (`qkv_gemm_blocked`) to compare with the packed-once weight.

use attention::{
    sdpa_into, KvCache, MhaConfig, MultiHeadAttention, OwnedMhaWeights, RopeConfig, SdpaOptions,
    SdpaOutputs, TensorMut, TensorRef,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use fastattn_benches::random_vec;
use kernels::gemm::{gemm_with, MatMut, MatRef};
use kernels::Parallelism;
use std::hint::black_box;

fn causal() -> SdpaOptions<'static> {
    SdpaOptions::default().with_causal(true)
}

/// The layer's three calls on a prepared `[rows, W]` QKV buffer.
struct Parts<'a> {
    layer: &'a MultiHeadAttention,
    hq: usize,
    hkv: usize,
    hd: usize,
}

impl Parts<'_> {
    fn qkv(&self, x: &[f32], rows: usize, qkv: &mut [f32]) {
        self.layer
            .qkv_projection()
            .forward_into(x, rows, qkv, Parallelism::Rayon)
            .unwrap()
    }
    fn out(&self, attn: &[f32], rows: usize, y: &mut [f32]) {
        self.layer
            .out_projection()
            .forward_into(attn, rows, y, Parallelism::Rayon)
            .unwrap()
    }
    /// Self-attention over the QKV buffer (K/V from it when `cache` is `None`).
    fn attend(&self, qkv: &[f32], l: usize, cache: Option<&KvCache>, attn: &mut [f32]) {
        let [w, k_off, v_off] = self.layer.qkv_layout();
        let (hq, hkv, hd) = (self.hq, self.hkv, self.hd);
        let st = [l * w, hd, w, 1];
        let q = TensorRef::new(qkv, [1, hq, l, hd], st).unwrap();
        let (k, v) = match cache {
            Some(c) => (c.keys(), c.values()),
            None => (
                TensorRef::new(&qkv[k_off..], [1, hkv, l, hd], st).unwrap(),
                TensorRef::new(&qkv[v_off..], [1, hkv, l, hd], st).unwrap(),
            ),
        };
        let o = TensorMut::from_blhd(attn, [1, hq, l, hd]).unwrap();
        sdpa_into(q, k, v, o, &causal(), SdpaOutputs::default()).unwrap();
    }
}

fn prefill(c: &mut Criterion) {
    let (dm, h, l) = (768, 12, 512);
    let cfg = MhaConfig::new(dm, h);
    let hd = cfg.head_dim;
    let w = OwnedMhaWeights::random(&cfg, true, 1).unwrap();
    let layer = MultiHeadAttention::new(cfg, w.as_weights()).unwrap();
    let parts = Parts {
        layer: &layer,
        hq: h,
        hkv: h,
        hd,
    };
    let [width, _, _] = layer.qkv_layout();
    let x = random_vec(l * dm, 2);
    let mut y = vec![0.0f32; l * dm];
    let mut qkv = vec![0.0f32; l * width];
    let mut attn = vec![0.0f32; l * dm];
    parts.qkv(&x, l, &mut qkv);
    parts.attend(&qkv, l, None, &mut attn);
    // The fused weight unpacked, for the blocked-GEMM comparison.
    let fused: Vec<f32> = (0..dm)
        .flat_map(|i| {
            [(&w.wq, dm), (&w.wk, dm), (&w.wv, dm)]
                .into_iter()
                .flat_map(move |(m, n)| m[i * n..(i + 1) * n].iter().copied())
        })
        .collect();
    let (f_qkv, f_attn, f_out) = (
        2 * l * dm * 3 * dm,
        2 * h * l * l * hd, // causal: half of 4·H·L²·D
        2 * l * dm * dm,
    );
    let mut g = c.benchmark_group(format!("layer_prefill_d{dm}_h{h}_l{l}"));
    g.sample_size(10);
    let shape = format!("l{l}");
    let mut bench = |name: &str, flops: usize, f: &mut dyn FnMut()| {
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(BenchmarkId::new(name, &shape), |b| b.iter(&mut *f));
    };
    bench("layer", f_qkv + f_attn + f_out, &mut || {
        layer
            .forward_into(black_box(&x), 1, l, &mut y, &causal())
            .unwrap()
    });
    bench("qkv_proj", f_qkv, &mut || {
        parts.qkv(black_box(&x), l, &mut qkv)
    });
    bench("attention", f_attn, &mut || {
        parts.attend(black_box(&qkv), l, None, &mut attn)
    });
    bench("out_proj", f_out, &mut || {
        parts.out(black_box(&attn), l, &mut y)
    });
    let mut c2 = vec![0.0f32; l * 3 * dm];
    bench("qkv_gemm_blocked", f_qkv, &mut || {
        gemm_with(
            layer.qkv_projection().isa(),
            Parallelism::Rayon,
            1.0,
            MatRef::row_major(black_box(&x), l, dm).unwrap(),
            MatRef::row_major(&fused, dm, 3 * dm).unwrap(),
            0.0,
            MatMut::row_major(&mut c2, l, 3 * dm).unwrap(),
        )
        .unwrap()
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let (dm, hq, hkv, ctx) = (2048, 16, 4, 4096);
    let cfg = MhaConfig::new(dm, hq)
        .with_kv_heads(hkv)
        .with_rope(RopeConfig::default());
    let hd = cfg.head_dim;
    let layer = MultiHeadAttention::random(cfg, false, 3).unwrap();
    let parts = Parts {
        layer: &layer,
        hq,
        hkv,
        hd,
    };
    let [width, _, _] = layer.qkv_layout();
    // A cache holding `ctx` tokens of random keys/values (the step's cost does not depend
    // on their values).
    let mut cache = layer.new_cache(1, ctx + 1).unwrap();
    let kv = random_vec(hkv * ctx * hd, 4);
    let t = TensorRef::contiguous(&kv, [1, hkv, ctx, hd]).unwrap();
    cache.append(t, t).unwrap();
    let x = random_vec(dm, 5);
    let mut y = vec![0.0f32; dm];
    let mut qkv = vec![0.0f32; width];
    let mut attn = vec![0.0f32; hq * hd];
    // The parts' attention sees the same ctx + 1 keys as the layer's step.
    let mut full = cache.clone();
    layer
        .forward_cached_into(&mut full, &x, 1, 1, &mut y, &causal())
        .unwrap();
    parts.qkv(&x, 1, &mut qkv);
    let mut g = c.benchmark_group(format!("layer_decode_d{dm}_h{hq}_kv{hkv}_ctx{ctx}"));
    g.sample_size(20);
    g.throughput(Throughput::Elements(1)); // tokens
                                           // `hot`: back-to-back calls, so each part's data (25 MB of QKV weight, 16 MB of cache,
                                           // 16 MB of Wo) may stay in L3 between its own calls while the layer streams all 57 MB.
                                           // `cold`: caches flushed before every call (untimed), as for one layer of a model
                                           // whose other layers evict it: the fair basis for layer / sum of parts.
    let mut junk = vec![1.0f32; FLUSH_BYTES / 4];
    for cold in [false, true] {
        let shape = format!("{}_ctx{ctx}", if cold { "cold" } else { "hot" });
        let mut bench = |name: &str, f: &mut dyn FnMut()| {
            g.bench_function(BenchmarkId::new(name, &shape), |b| {
                if cold {
                    b.iter_batched(|| flush(&mut junk), |()| f(), BatchSize::PerIteration)
                } else {
                    b.iter(&mut *f)
                }
            });
        };
        bench("layer_step", &mut || {
            layer
                .forward_cached_into(&mut cache, black_box(&x), 1, 1, &mut y, &causal())
                .unwrap();
            cache.truncate(ctx);
        });
        bench("qkv_proj", &mut || parts.qkv(black_box(&x), 1, &mut qkv));
        bench("attention", &mut || {
            parts.attend(black_box(&qkv), 1, Some(&full), &mut attn)
        });
        bench("out_proj", &mut || parts.out(black_box(&attn), 1, &mut y));
    }
    g.finish();
}

/// Bytes written to evict the caches in the `cold` decode variants (well above the L3 this
/// process can hold).
const FLUSH_BYTES: usize = 256 << 20;

/// Touches every cache line of `junk`.
fn flush(junk: &mut [f32]) {
    for v in junk.iter_mut().step_by(16) {
        *v += 1.0;
    }
    black_box(&junk);
}

criterion_group!(benches, prefill, decode);
criterion_main!(benches);
