//! The `layer` suite: the whole multi-head attention layer (prefill, and decoding against a
//! cache).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::Result;
use fastattn_benches::random_vec;
use kernels::{DType, Isa};
use std::sync::Arc;

/// Layer cases: GPT-2-small-shaped prefill (d_model 768, 12 heads, L = 512, causal) and
/// decoding one token against 4096 cached tokens (d_model 2048, 16 query / 4 key-value
/// heads of 128, RoPE).
pub fn layer_cases() -> Vec<Case> {
    vec![
        layer_case(768, 12, 12, 512, 0),
        layer_case(2048, 16, 4, 1, 4096),
    ]
}

pub(super) fn layer_from_shape(shape: &str) -> Result<Case> {
    let (dims, cache) = match shape.split_once('+') {
        Some((d, c)) => (d, parse_dims(c, 1, "CACHE")?[0]),
        None => (shape, 0),
    };
    let d = parse_dims(dims, 4, "DMODELxHQxHKVxL[+CACHE]")?;
    Ok(layer_case(d[0], d[1], d[2], d[3], cache))
}

/// One layer case: `l` new tokens (batch 1) after `cache` cached ones (`cache = 0`: a causal
/// prefill of `l` tokens without a cache). Flops count the projections and the attention.
/// Every variant with f32 weights and cache, the best one with bf16 weights and cache
/// (`avx2-bf16`: the weights and cached keys/values take half the bytes), and for decode
/// the best one with bf16 weights and an int8 cache (`avx2-bf16-i8kv`: a scale per token
/// and head).
pub fn layer_case(d_model: usize, hq: usize, hkv: usize, l: usize, cache: usize) -> Case {
    let hd = d_model / hq;
    let proj = 2.0 * l as f64 * d_model as f64 * ((hq + 2 * hkv) * hd + hq * hd) as f64;
    let keys = (cache + l) as f64;
    let attn = if cache == 0 {
        2.0 * (hq * l) as f64 * keys * hd as f64
    } else {
        4.0 * (hq * l) as f64 * keys * hd as f64
    };
    let weights = (d_model * (hq + 2 * hkv) * hd + hq * hd * d_model) as f64;
    let stored = weights + 2.0 * (hkv * hd) as f64 * keys;
    let bytes = 4.0 * (stored + 2.0 * (l * d_model) as f64);
    let bytes_16 = 2.0 * stored + 4.0 * 2.0 * (l * d_model) as f64;
    // bf16 weights, int8 keys and values with an f32 scale per token and head.
    let bytes_i8 = 2.0 * weights
        + 2.0 * (hkv * hd) as f64 * keys
        + 2.0 * 4.0 * hkv as f64 * keys
        + 4.0 * 2.0 * (l * d_model) as f64;
    let name = if cache == 0 {
        format!("{d_model}x{hq}x{hkv}x{l}")
    } else {
        format!("{d_model}x{hq}x{hkv}x{l}+{cache}")
    };
    let bound = if cache == 0 {
        Bound::Compute
    } else {
        Bound::Memory
    };
    Case::new(
        "layer",
        name,
        if cache == 0 {
            format!("d_model={d_model} hq={hq} hkv={hkv} tokens={l} cached=0")
        } else {
            // What the caches hold (`KvCache::bytes`: 2·Hkv·D·capacity elements).
            let mib = |size: usize| (2 * hkv * hd * (cache + l) * size) as f64 / (1 << 20) as f64;
            format!(
                "d_model={d_model} hq={hq} hkv={hkv} tokens={l} cached={cache} \
                 (KV cache: f32 {:.0} MiB, bf16 {:.0} MiB)",
                mib(4),
                mib(2)
            )
        },
        proj + attn,
        bytes,
        bound,
        move || {
            let x = Arc::new(random_vec(l * d_model, 8));
            let mut impls = Vec::new();
            let shape = [d_model, hq, hkv, l, cache];
            for isa in Isa::available() {
                let run =
                    layer_run::<f32, _>(isa, shape, x.clone(), |l, c| l.new_cache_of::<f32>(1, c));
                let slow = matches!(isa, Isa::Scalar | Isa::Portable) && proj + attn > 2e8;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            let best = Isa::best();
            let run = layer_run::<kernels::bf16, _>(best, shape, x.clone(), |l, c| {
                l.new_cache_of::<kernels::bf16>(1, c)
            });
            impls.push(Impl::ours_dtype(best, DType::BF16, bytes_16, run));
            if cache > 0 {
                let run = layer_run::<kernels::bf16, _>(best, shape, x, |l, c| {
                    l.new_quant_cache::<i8>(1, c)
                });
                let mut imp = Impl::ours_dtype(best, DType::BF16, bytes_i8, run);
                imp.name = format!("{}-bf16-i8kv", best.name());
                impls.push(imp);
            }
            impls
        },
    )
}

/// One call of a layer with weights stored as `W` (the same seeded weights, rounded) and
/// the cache `new_cache` makes: a causal prefill of `l` tokens, or one decode step of `l` tokens after `cache`
/// cached ones (the cache is truncated back after each call).
fn layer_run<W: kernels::Element, K: attention::LayerCache + Send + 'static>(
    isa: Isa,
    [d_model, hq, hkv, l, cache]: [usize; 5],
    x: Arc<Vec<f32>>,
    new_cache: impl FnOnce(&attention::MultiHeadAttention, usize) -> attention::Result<K>,
) -> impl FnMut(usize) + Send + 'static {
    let mut cfg = attention::MhaConfig::new(d_model, hq)
        .with_kv_heads(hkv)
        .with_isa(isa);
    if cache > 0 {
        cfg = cfg.with_rope(attention::RopeConfig::default());
    }
    let layer =
        attention::MultiHeadAttention::random_of::<W>(cfg, false, 9).expect("valid layer shape");
    let opts = attention::SdpaOptions::default().with_causal(true);
    let mut kv = None;
    if cache > 0 {
        let mut c = new_cache(&layer, cache + l).expect("cache fits");
        let prompt = random_vec(cache * d_model, 10);
        layer
            .forward_cached(&mut c, &prompt, 1, cache, &opts)
            .expect("prefill fits");
        kv = Some(c);
    }
    let mut y = vec![0.0f32; l * d_model];
    move |_threads: usize| match kv.as_mut() {
        Some(c) => {
            layer
                .forward_cached_into(c, &x, 1, l, &mut y, &opts)
                .expect("step fits");
            c.rewind(cache);
        }
        None => layer
            .forward_into(&x, 1, l, &mut y, &opts)
            .expect("valid input"),
    }
}
