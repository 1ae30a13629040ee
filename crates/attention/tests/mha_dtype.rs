//! The layer with 16-bit weights and a 16-bit KV cache.

use fastattn_attention::{KvCache, MhaConfig, MultiHeadAttention, RopeConfig, SdpaOptions};
use kernels::{bf16, f16, DType, Element, Parallelism};
use testutil::max_abs_diff;

fn input(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.5)
        .collect()
}

fn cfg() -> MhaConfig {
    MhaConfig::new(64, 8)
        .with_kv_heads(2)
        .with_rope(RopeConfig::default())
}

/// 16-bit weights behave as f32 weights holding the same (rounded) values: bit for bit on
/// prefill (the panels are widened exactly for the microkernel), within rounding on
/// decode-sized calls (which read the 16-bit panels in registers).
fn weights_match<W: Element>() {
    let (l16, l32) = (
        MultiHeadAttention::random_of::<W>(cfg(), true, 3).unwrap(),
        MultiHeadAttention::random_of::<W>(cfg(), true, 3).unwrap(),
    );
    assert_eq!(l16.weight_dtype(), W::DTYPE);
    // The f32 layer with the widened weights: rebuild from the same seed, rounded, as f32.
    let w = fastattn_attention::OwnedMhaWeights::random(&cfg(), true, 3).unwrap();
    let r = |x: &[f32]| {
        x.iter()
            .map(|&v| W::from_f32(v).to_f32())
            .collect::<Vec<f32>>()
    };
    let (wq, wk, wv, wo) = (r(&w.wq), r(&w.wk), r(&w.wv), r(&w.wo));
    let mut mw = fastattn_attention::MhaWeights::new(&wq[..], &wk[..], &wv[..], &wo[..]);
    mw.bq = w.bq.as_deref();
    mw.bk = w.bk.as_deref();
    mw.bv = w.bv.as_deref();
    mw.bo = w.bo.as_deref();
    let f32_layer = MultiHeadAttention::new(cfg(), mw).unwrap();
    assert_eq!(2 * l16.weight_bytes(), f32_layer.weight_bytes());
    let causal = SdpaOptions::new().with_causal(true);
    for (b, l) in [(1, 1), (2, 3), (1, 37), (2, 70)] {
        let x = input(b * l * 64);
        let y16 = l16.forward(&x, b, l, &causal).unwrap();
        let y32 = f32_layer.forward(&x, b, l, &causal).unwrap();
        assert_eq!(y16, l32.forward(&x, b, l, &causal).unwrap());
        if b * l > kernels::gemm::packed::HALF_GEMV_ROWS {
            assert_eq!(y16, y32, "{:?} b {b} l {l}", W::DTYPE);
        } else {
            assert!(
                max_abs_diff(&y16, &y32) < 1e-5,
                "{:?} b {b} l {l}",
                W::DTYPE
            );
        }
    }
}

#[test]
fn bf16_weights_equal_f32_weights_of_the_same_values() {
    weights_match::<bf16>();
}

#[test]
fn f16_weights_equal_f32_weights_of_the_same_values() {
    weights_match::<f16>();
}

/// A 16-bit cache holds exactly the rounded keys and values of an f32 cache, in half the
/// bytes; decoding from it stays close to decoding from f32.
fn cache_matches<T: Element>() {
    let layer = MultiHeadAttention::random(cfg(), true, 5).unwrap();
    let causal = SdpaOptions::new()
        .with_causal(true)
        .with_parallelism(Parallelism::Sequential);
    let (b, prompt, steps) = (2, 9, 6);
    let mut c32 = layer.new_cache(b, 32).unwrap();
    let mut c16: KvCache<T> = layer.new_cache_of::<T>(b, 32).unwrap();
    assert_eq!(c16.dtype(), T::DTYPE);
    assert_eq!(2 * c16.bytes(), c32.bytes());
    let x = input(b * prompt * 64);
    let y32 = layer
        .forward_cached(&mut c32, &x, b, prompt, &causal)
        .unwrap();
    let y16 = layer
        .forward_cached(&mut c16, &x, b, prompt, &causal)
        .unwrap();
    let tol = match T::DTYPE {
        DType::BF16 => 3e-2,
        DType::F32 | DType::F16 => 4e-3,
    };
    assert!(max_abs_diff(&y16, &y32) < tol, "{:?} prefill", T::DTYPE);
    for s in 0..steps {
        let xt = input(b * 64 + s);
        let xt = &xt[s..];
        let y32 = layer.forward_cached(&mut c32, xt, b, 1, &causal).unwrap();
        let y16 = layer.forward_cached(&mut c16, xt, b, 1, &causal).unwrap();
        assert!(max_abs_diff(&y16, &y32) < tol, "{:?} step {s}", T::DTYPE);
    }
    // K and V rows are projections of the same inputs in both runs: the 16-bit cache holds
    // them rounded once.
    let (k32, k16) = (c32.keys(), c16.keys());
    for bb in 0..b {
        for h in 0..2 {
            for i in 0..c16.len() {
                for d in 0..8 {
                    assert_eq!(
                        k16.get(bb, h, i, d).to_f32().to_bits(),
                        T::from_f32(k32.get(bb, h, i, d)).to_f32().to_bits()
                    );
                    assert_eq!(
                        c16.values().get(bb, h, i, d).to_f32().to_bits(),
                        T::from_f32(c32.values().get(bb, h, i, d))
                            .to_f32()
                            .to_bits()
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_cache_holds_the_rounded_rows_in_half_the_bytes() {
    cache_matches::<bf16>();
}

#[test]
fn f16_cache_holds_the_rounded_rows_in_half_the_bytes() {
    cache_matches::<f16>();
}

#[test]
fn bf16_layer_with_bf16_cache_decodes_at_any_thread_count_identically() {
    let layer = MultiHeadAttention::random_of::<bf16>(cfg(), false, 9).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut c = layer.new_cache_of::<bf16>(1, 64).unwrap();
            let causal = SdpaOptions::new().with_causal(true);
            let mut out = layer
                .forward_cached(&mut c, &input(20 * 64), 1, 20, &causal)
                .unwrap();
            for s in 0..4 {
                out.extend(
                    layer
                        .forward_cached(&mut c, &input(64 + s)[s..], 1, 1, &causal)
                        .unwrap(),
                );
            }
            out
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// An 8-bit layer cache (`new_quant_cache`) holds exactly the quantised rows of an f32
/// cache fed the same tokens (codes and per-row scales), in under half the bytes at this
/// head size (D = 8: the per-row scales weigh), and decoding from it stays close to
/// decoding from f32.
fn quant_cache_matches<C: kernels::quant::Code>(tol: f32) {
    use kernels::quant::quantize_row;
    let layer = MultiHeadAttention::random(cfg(), true, 5).unwrap();
    let causal = SdpaOptions::new()
        .with_causal(true)
        .with_parallelism(Parallelism::Sequential);
    let (b, prompt, steps) = (2, 9, 6);
    let mut c32 = layer.new_cache(b, 32).unwrap();
    let mut c8 = layer.new_quant_cache::<C>(b, 32).unwrap();
    assert!(2 * c8.bytes() < c32.bytes());
    let x = input(b * prompt * 64);
    let y32 = layer
        .forward_cached(&mut c32, &x, b, prompt, &causal)
        .unwrap();
    let y8 = layer
        .forward_cached(&mut c8, &x, b, prompt, &causal)
        .unwrap();
    let err = max_abs_diff(&y8, &y32);
    assert!(err < tol, "{:?} prefill: {err}", C::QTYPE);
    for s in 0..steps {
        let xt = input(b * 64 + s);
        let xt = &xt[s..];
        let y32 = layer.forward_cached(&mut c32, xt, b, 1, &causal).unwrap();
        let y8 = layer.forward_cached(&mut c8, xt, b, 1, &causal).unwrap();
        assert!(max_abs_diff(&y8, &y32) < tol, "{:?} step {s}", C::QTYPE);
    }
    assert_eq!(c8.len(), c32.len());
    for (q8, f) in [(c8.keys(), c32.keys()), (c8.values(), c32.values())] {
        for bb in 0..b {
            for h in 0..2 {
                for i in 0..c8.len() {
                    let row: Vec<f32> = (0..8).map(|d| f.get(bb, h, i, d)).collect();
                    let mut codes = vec![C::default(); 8];
                    let scale = quantize_row(&row, None, &mut codes).unwrap();
                    assert_eq!(q8.scale(bb, h, i), scale);
                    for (d, &c) in codes.iter().enumerate() {
                        assert_eq!(q8.codes().get(bb, h, i, d), c);
                    }
                }
            }
        }
    }
    // A call that does not fit changes nothing.
    let before = c8.len();
    let big = input(b * 30 * 64);
    assert!(layer.forward_cached(&mut c8, &big, b, 30, &causal).is_err());
    assert_eq!(c8.len(), before);
}

#[test]
fn int8_and_fp8_layer_caches_hold_the_quantised_rows_of_an_f32_cache() {
    quant_cache_matches::<i8>(2e-2);
    quant_cache_matches::<kernels::quant::F8E4M3>(6e-2);
    quant_cache_matches::<kernels::quant::F8E5M2>(1.2e-1);
}
