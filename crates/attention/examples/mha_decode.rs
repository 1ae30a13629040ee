//! Autoregressive decoding with a KV cache: prefill a prompt, then feed each step's output
//! back in as the next token, and print tokens/s; then time one step's parts (QKV
//! projection, attention over the cache, output projection) to show what the glue costs,
//! with warm caches (`hot`) and with caches flushed before every call (`cold`: what one
//! layer of a many-layer model sees, and the fair comparison for this memory-bound step).
//!
//! `cargo run --release -p fastattn-attention --example mha_decode -- \
//!     [d_model=2048 heads=16 kv_heads=4 prompt=1024 steps=64 threads=all]`
//!
//! The layer is Llama-shaped (GQA, RoPE, no biases) with random weights.

use fastattn_attention::{
    MhaConfig, MultiHeadAttention, RopeConfig, SdpaOptions, TensorMut, TensorRef,
};
use kernels::Parallelism;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Res<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (d_model, hq, hkv) = (arg(1, 2048), arg(2, 16), arg(3, 4));
    let (prompt, steps, threads) = (arg(4, 1024), arg(5, 64), arg(6, 0));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(d_model, hq, hkv, prompt, steps))
}

fn run(d_model: usize, hq: usize, hkv: usize, prompt: usize, steps: usize) -> Res<()> {
    let cfg = MhaConfig::new(d_model, hq)
        .with_kv_heads(hkv)
        .with_rope(RopeConfig::default());
    let hd = cfg.head_dim;
    let t0 = Instant::now();
    let layer = MultiHeadAttention::random(cfg, false, 1)?;
    println!(
        "layer: d_model {d_model}, {hq} query / {hkv} key-value heads of {hd}, RoPE; \
         {} threads; built and packed in {:.0} ms",
        rayon::current_num_threads(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut rng = StdRng::seed_from_u64(2);
    let x: Vec<f32> = (0..prompt * d_model)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let causal = SdpaOptions::default().with_causal(true);
    let mut cache = layer.new_cache(1, prompt + steps)?;

    let t = Instant::now();
    let y = layer.forward_cached(&mut cache, &x, 1, prompt, &causal)?;
    let dt = t.elapsed().as_secs_f64();
    println!(
        "prefill {prompt} tokens: {:.1} ms, {:.0} tokens/s",
        dt * 1e3,
        prompt as f64 / dt
    );

    let mut tok = y[(prompt - 1) * d_model..].to_vec();
    let mut next = vec![0.0f32; d_model];
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        layer.forward_cached_into(&mut cache, &tok, 1, 1, &mut next, &causal)?;
        times.push(t.elapsed().as_secs_f64());
        std::mem::swap(&mut tok, &mut next);
    }
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "decode {steps} tokens (context {prompt} → {}): {:.0} tokens/s, median step {:.3} ms",
        cache.len(),
        steps as f64 / total,
        sorted[steps / 2] * 1e3
    );

    // One step's parts, measured separately on the final cache (median of `reps`), twice:
    // hot (back-to-back calls: each part's data may stay in L3 between its own calls) and
    // cold (caches flushed before every call, untimed, as for one layer of a deep model).
    let n = cache.len();
    let [w, _, _] = layer.qkv_layout();
    let mut qkv = vec![0.0f32; w];
    let mut attn = vec![0.0f32; hq * hd];
    let mut junk = vec![1.0f32; 64 << 20];
    let par = Parallelism::Rayon;
    for cold in [false, true] {
        let reps = 21;
        let mut median = |f: &mut dyn FnMut()| {
            let mut v: Vec<f64> = (0..reps)
                .map(|_| {
                    if cold {
                        junk.iter_mut().step_by(16).for_each(|x| *x += 1.0);
                        std::hint::black_box(&junk);
                    }
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[reps / 2]
        };
        cache.truncate(n - 1);
        let t_layer = median(&mut || {
            layer
                .forward_cached_into(&mut cache, &tok, 1, 1, &mut next, &causal)
                .unwrap();
            cache.truncate(n - 1);
        });
        layer.forward_cached_into(&mut cache, &tok, 1, 1, &mut next, &causal)?;
        let t_qkv = median(&mut || {
            layer
                .qkv_projection()
                .forward_into(&tok, 1, &mut qkv, par)
                .unwrap()
        });
        let t_attn = median(&mut || {
            let q = TensorRef::new(&qkv, [1, hq, 1, hd], [w, hd, w, 1]).unwrap();
            let o = TensorMut::from_blhd(&mut attn, [1, hq, 1, hd]).unwrap();
            fastattn_attention::sdpa_into(
                q,
                cache.keys(),
                cache.values(),
                o,
                &causal,
                Default::default(),
            )
            .unwrap()
        });
        let t_out = median(&mut || {
            layer
                .out_projection()
                .forward_into(&attn, 1, &mut next, par)
                .unwrap()
        });
        let parts = t_qkv + t_attn + t_out;
        println!(
            "one step at context {n}, {}: layer {:.3} ms ({:.0} tokens/s); parts: qkv {:.3} + \
             attention {:.3} + out {:.3} = {:.3} ms; layer / parts = {:.2}",
            if cold { "cold" } else { "hot " },
            t_layer * 1e3,
            1.0 / t_layer,
            t_qkv * 1e3,
            t_attn * 1e3,
            t_out * 1e3,
            parts * 1e3,
            t_layer / parts
        );
    }
    Ok(())
}
