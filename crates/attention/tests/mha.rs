//! The multi-head attention layer, its dense projections and the KV cache against a
//! straightforward reference layer (f64 projections and RoPE, `sdpa_ref` attention).

use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    AttnError, KvCache, Linear, Mask, MhaConfig, MhaWeights, MultiHeadAttention, OwnedMhaWeights,
    RopeConfig, SdpaOptions, TensorRef, WeightLayout,
};
use kernels::{Isa, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{assert_close, rand_vec};

/// `x·W + b` in f64: `x` is `[rows, d_in]`, `w` `[d_in, d_out]`, both row-major.
fn linear_ref(
    x: &[f32],
    rows: usize,
    d_in: usize,
    w: &[f32],
    d_out: usize,
    b: Option<&[f32]>,
) -> Vec<f64> {
    let mut y = vec![0.0f64; rows * d_out];
    for r in 0..rows {
        for j in 0..d_out {
            let mut acc = b.map_or(0.0, |b| b[j] as f64);
            for i in 0..d_in {
                acc += x[r * d_in + i] as f64 * w[i * d_out + j] as f64;
            }
            y[r * d_out + j] = acc;
        }
    }
    y
}

/// Rotate-half RoPE in f64 on `[rows, heads·hd]`, row `r` at position `pos0 + r % seq`.
fn rope_ref(v: &mut [f64], seq: usize, pos0: usize, heads: usize, hd: usize, base: f64) {
    let half = hd / 2;
    for (r, row) in v.chunks_exact_mut(heads * hd).enumerate() {
        let pos = (pos0 + r % seq) as f64;
        for head in row.chunks_exact_mut(hd) {
            for j in 0..half {
                let theta = pos * base.powf(-2.0 * j as f64 / hd as f64);
                let (s, c) = theta.sin_cos();
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * c - b * s;
                head[j + half] = b * c + a * s;
            }
        }
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The reference layer: returns `[b, lq, d_model]` and the weights `[b, Hq, lq, lk]`.
/// Keys and values come from `ctx` (`[b, lk, d_model]`) when given, else from `x`.
#[allow(clippy::too_many_arguments)]
fn layer_ref(
    cfg: &MhaConfig,
    w: &OwnedMhaWeights,
    x: &[f32],
    ctx: Option<&[f32]>,
    b: usize,
    lq: usize,
    lk: usize,
    opts: &SdpaOptions<'_>,
) -> (Vec<f64>, Vec<f32>) {
    let (dm, hq, hkv, hd) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let src = ctx.unwrap_or(x);
    let mut q = linear_ref(x, b * lq, dm, &w.wq, hq * hd, w.bq.as_deref());
    let mut k = linear_ref(src, b * lk, dm, &w.wk, hkv * hd, w.bk.as_deref());
    let v = linear_ref(src, b * lk, dm, &w.wv, hkv * hd, w.bv.as_deref());
    if let (Some(r), None) = (cfg.rope, ctx) {
        rope_ref(&mut q, lq, 0, hq, hd, r.base as f64);
        rope_ref(&mut k, lk, 0, hkv, hd, r.base as f64);
    }
    let (qf, kf, vf) = (to_f32(&q), to_f32(&k), to_f32(&v));
    let qt = TensorRef::from_blhd(&qf, [b, hq, lq, hd]).unwrap();
    let kt = TensorRef::from_blhd(&kf, [b, hkv, lk, hd]).unwrap();
    let vt = TensorRef::from_blhd(&vf, [b, hkv, lk, hd]).unwrap();
    let r = sdpa_ref(qt, kt, vt, opts).unwrap();
    let mut a = vec![0.0f32; b * lq * hq * hd];
    for bb in 0..b {
        for h in 0..hq {
            for i in 0..lq {
                for x in 0..hd {
                    a[((bb * lq + i) * hq + h) * hd + x] = r.out[((bb * hq + h) * lq + i) * hd + x];
                }
            }
        }
    }
    (
        linear_ref(&a, b * lq, hq * hd, &w.wo, dm, w.bo.as_deref()),
        r.weights,
    )
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MaskKind {
    None,
    Causal,
    Bool,
    Additive,
    Padding,
    CausalWindow,
}

#[derive(Debug, Clone)]
struct Case {
    b: usize,
    l: usize,
    /// `Some(lk)`: cross-attention over a context of `lk` tokens.
    cross: Option<usize>,
    dm: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
    bias: bool,
    rope: Option<RopeConfig>,
    mask: MaskKind,
    seed: u64,
}

impl Case {
    fn new(b: usize, l: usize, dm: usize, hq: usize, hkv: usize, hd: usize) -> Self {
        Case {
            b,
            l,
            cross: None,
            dm,
            hq,
            hkv,
            hd,
            bias: false,
            rope: None,
            mask: MaskKind::None,
            seed: 1,
        }
    }
}

/// Runs the layer on `c` for every ISA, with and without weights, against the reference.
fn check(c: &Case) {
    let label = format!("{c:?}");
    let mut rng = StdRng::seed_from_u64(c.seed);
    let mut cfg = MhaConfig::new(c.dm, c.hq)
        .with_kv_heads(c.hkv)
        .with_head_dim(c.hd);
    cfg.rope = c.rope;
    let w = OwnedMhaWeights::random(&cfg, c.bias, c.seed).unwrap();
    let lk = c.cross.unwrap_or(c.l);
    let x = rand_vec(&mut rng, c.b * c.l * c.dm);
    let ctx = c.cross.map(|lk| rand_vec(&mut rng, c.b * lk * c.dm));
    let bool_mask: Vec<bool> = (0..c.l * lk).map(|_| rng.random_bool(0.7)).collect();
    let add_mask: Vec<f32> = (0..c.l * lk)
        .map(|_| {
            if rng.random_bool(0.2) {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-2.0..2.0)
            }
        })
        .collect();
    let lens: Vec<usize> = (0..c.b).map(|i| lk - (i * 3) % lk.max(1)).collect();
    let mut opts = SdpaOptions::default();
    match c.mask {
        MaskKind::None => {}
        MaskKind::Causal => opts.causal = true,
        MaskKind::Bool => {
            opts.mask = Some(Mask::Bool(
                TensorRef::contiguous(&bool_mask, [1, 1, c.l, lk]).unwrap(),
            ))
        }
        MaskKind::Additive => {
            opts.mask = Some(Mask::Additive(
                TensorRef::contiguous(&add_mask, [1, 1, c.l, lk]).unwrap(),
            ))
        }
        MaskKind::Padding => opts.kv_lengths = Some(&lens),
        MaskKind::CausalWindow => {
            opts.causal = true;
            opts.window_left = Some(3);
        }
    }
    let (want, want_w) = layer_ref(&cfg, &w, &x, ctx.as_deref(), c.b, c.l, lk, &opts);
    let tol = 2e-5 * (c.dm as f64).sqrt().max(c.hd as f64 / 4.0) + 1e-5;
    for isa in Isa::available() {
        let layer = MultiHeadAttention::new(cfg.clone().with_isa(isa), w.as_weights()).unwrap();
        let l2 = format!("{label} isa={isa}");
        let (y, (yw, wts)) = match &ctx {
            Some(ctx) => (
                layer.forward_cross(&x, ctx, c.b, c.l, lk, &opts).unwrap(),
                layer
                    .forward_cross_with_weights(&x, ctx, c.b, c.l, lk, &opts)
                    .unwrap(),
            ),
            None => (
                layer.forward(&x, c.b, c.l, &opts).unwrap(),
                layer.forward_with_weights(&x, c.b, c.l, &opts).unwrap(),
            ),
        };
        assert_close(format!("{l2} output"), &y, &want, tol);
        assert_close(format!("{l2} output (weights path)"), &yw, &want, tol);
        assert_close(format!("{l2} weights"), &wts, &f64s(&want_w), 1e-5);
        for (r, row) in wts.chunks(lk.max(1)).enumerate() {
            let s: f32 = row.iter().sum();
            assert!(
                s == 0.0 || (s - 1.0).abs() < 1e-4,
                "{l2}: weight row {r} sums to {s}"
            );
        }
    }
}

#[test]
fn mha_matches_reference_layer_over_shapes() {
    let mut seed = 0;
    for &(b, l) in &[(1, 1), (2, 7), (1, 31), (3, 65), (1, 130)] {
        for &(dm, hq, hd) in &[
            (8, 1, 8),
            (16, 4, 4),
            (24, 3, 8),
            (20, 2, 7),
            (64, 4, 16),
            (48, 2, 33),
        ] {
            seed += 1;
            check(&Case {
                seed,
                ..Case::new(b, l, dm, hq, hq, hd)
            });
        }
    }
}

#[test]
fn mha_gqa_and_mqa_match_reference() {
    let mut seed = 100;
    for &(hq, hkv) in &[(4, 2), (8, 2), (6, 1), (4, 1)] {
        for mask in [MaskKind::None, MaskKind::Causal] {
            seed += 1;
            check(&Case {
                mask,
                seed,
                ..Case::new(2, 19, 32, hq, hkv, 8)
            });
        }
    }
}

#[test]
fn mha_biases_on_and_off_match_reference() {
    for (i, bias) in [false, true].into_iter().enumerate() {
        check(&Case {
            bias,
            seed: 200 + i as u64,
            ..Case::new(2, 13, 32, 4, 2, 8)
        });
        check(&Case {
            bias,
            mask: MaskKind::Causal,
            seed: 210 + i as u64,
            ..Case::new(1, 70, 40, 5, 5, 8)
        });
    }
}

#[test]
fn mha_rope_matches_reference_at_both_bases_and_past_the_table() {
    let mut seed = 300;
    for base in [10_000.0f32, 500_000.0, 100.0] {
        for table_positions in [4096, 5, 0] {
            seed += 1;
            let rope = Some(
                RopeConfig::new()
                    .with_base(base)
                    .with_table_positions(table_positions),
            );
            check(&Case {
                rope,
                mask: MaskKind::Causal,
                bias: true,
                seed,
                ..Case::new(2, 23, 32, 4, 2, 8)
            });
        }
    }
    check(&Case {
        rope: Some(RopeConfig::default()),
        seed: 320,
        ..Case::new(1, 66, 48, 2, 1, 24)
    });
}

#[test]
fn mha_masks_padding_and_window_match_reference() {
    let mut seed = 400;
    for mask in [
        MaskKind::Causal,
        MaskKind::Bool,
        MaskKind::Additive,
        MaskKind::Padding,
        MaskKind::CausalWindow,
    ] {
        for &(b, l) in &[(2, 17), (3, 70)] {
            seed += 1;
            check(&Case {
                mask,
                seed,
                bias: true,
                ..Case::new(b, l, 32, 4, 2, 8)
            });
            seed += 1;
            let rope = Some(RopeConfig::default());
            check(&Case {
                mask,
                seed,
                rope,
                ..Case::new(b, l, 24, 2, 2, 12)
            });
        }
    }
}

#[test]
fn mha_cross_attention_matches_reference() {
    let mut seed = 500;
    for &(b, l, lk) in &[(1, 1, 9), (2, 7, 33), (2, 40, 3), (1, 70, 130)] {
        for mask in [MaskKind::None, MaskKind::Bool, MaskKind::Padding] {
            for bias in [false, true] {
                seed += 1;
                // RoPE configured: cross-attention must ignore it.
                let rope = bias.then(RopeConfig::default);
                check(&Case {
                    cross: Some(lk),
                    mask,
                    bias,
                    rope,
                    seed,
                    ..Case::new(b, l, 40, 4, 2, 10)
                });
            }
        }
    }
}

/// Rows `[p0, p1)` of every sequence of `[b, t, dm]`.
fn rows_of(x: &[f32], b: usize, t: usize, dm: usize, p0: usize, p1: usize) -> Vec<f32> {
    (0..b)
        .flat_map(|bb| x[(bb * t + p0) * dm..(bb * t + p1) * dm].iter().copied())
        .collect()
}

#[test]
fn kv_cache_prefill_and_decode_equal_the_full_causal_forward() {
    for (seed, &(b, dm, hq, hkv, hd, bias, rope)) in [
        (2, 32, 4, 2, 8, true, true),
        (1, 48, 6, 1, 8, false, true),
        (3, 24, 2, 2, 12, true, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 600 + seed as u64;
        let mut cfg = MhaConfig::new(dm, hq).with_kv_heads(hkv).with_head_dim(hd);
        if rope {
            cfg = cfg.with_rope(RopeConfig::new().with_table_positions(16));
        }
        let w = OwnedMhaWeights::random(&cfg, bias, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let t = 29;
        let x = rand_vec(&mut rng, b * t * dm);
        let causal = SdpaOptions::default().with_causal(true);
        let (want, _) = layer_ref(&cfg, &w, &x, None, b, t, t, &causal);
        for isa in Isa::available() {
            let label = format!("seed={seed} b={b} dm={dm} hq={hq} hkv={hkv} hd={hd} bias={bias} rope={rope} isa={isa}");
            let layer = MultiHeadAttention::new(cfg.clone().with_isa(isa), w.as_weights()).unwrap();
            let full = layer.forward(&x, b, t, &causal).unwrap();
            assert_close(format!("{label} full"), &full, &want, 1e-4);
            let mut cache = layer.new_cache(b, t).unwrap();
            let mut pos = 0;
            for n in [9, 1, 1, 3, 1, 2, 1, 1, 5, 1, 4] {
                let xs = rows_of(&x, b, t, dm, pos, pos + n);
                let y = layer
                    .forward_cached(&mut cache, &xs, b, n, &causal)
                    .unwrap();
                let l3 = format!("{label} tokens {pos}..{}", pos + n);
                assert_close(
                    &l3,
                    &y,
                    &f64s(&rows_of(&full, b, t, dm, pos, pos + n)),
                    2e-6,
                );
                let want_rows: Vec<f64> = (0..b)
                    .flat_map(|bb| {
                        want[(bb * t + pos) * dm..(bb * t + pos + n) * dm]
                            .iter()
                            .copied()
                    })
                    .collect();
                assert_close(format!("{l3} vs reference"), &y, &want_rows, 1e-4);
                pos += n;
                assert_eq!(cache.len(), pos, "{l3}");
            }
            assert_eq!(pos, t);
            assert_eq!(cache.remaining(), 0);
        }
    }
}

#[test]
fn kv_cache_long_decode_uses_the_split_path_and_matches_full_forward() {
    // 4500 cached keys: attention takes the flash-decoding split; RoPE positions go past
    // the default 4096-entry table.
    let seed = 650;
    let (b, dm, hq, hkv, hd, t, p) = (1, 16, 4, 2, 8, 4500, 4496);
    let cfg = MhaConfig::new(dm, hq)
        .with_kv_heads(hkv)
        .with_head_dim(hd)
        .with_rope(RopeConfig::default());
    let layer = MultiHeadAttention::random(cfg, true, seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let x = rand_vec(&mut rng, b * t * dm);
    let causal = SdpaOptions::default().with_causal(true);
    let full = layer.forward(&x, b, t, &causal).unwrap();
    let mut cache = layer.new_cache(b, t).unwrap();
    let y = layer
        .forward_cached(&mut cache, &x[..p * dm], b, p, &causal)
        .unwrap();
    assert_close(
        format!("seed={seed} prefill"),
        &y,
        &f64s(&full[..p * dm]),
        2e-6,
    );
    for pos in p..t {
        let y = layer
            .forward_cached(&mut cache, &x[pos * dm..(pos + 1) * dm], b, 1, &causal)
            .unwrap();
        assert_close(
            format!("seed={seed} step {pos}"),
            &y,
            &f64s(&full[pos * dm..(pos + 1) * dm]),
            1e-5,
        );
    }
}

#[test]
fn kv_cache_overflow_is_an_error_and_leaves_the_cache_unchanged() {
    let cfg = MhaConfig::new(16, 2);
    let layer = MultiHeadAttention::random(cfg, false, 700).unwrap();
    let x = vec![0.25f32; 8 * 16];
    let causal = SdpaOptions::default().with_causal(true);
    let mut cache = layer.new_cache(1, 5).unwrap();
    layer
        .forward_cached(&mut cache, &x[..4 * 16], 1, 4, &causal)
        .unwrap();
    let e = layer
        .forward_cached(&mut cache, &x[..2 * 16], 1, 2, &causal)
        .unwrap_err();
    assert_eq!(
        e,
        AttnError::CacheFull {
            capacity: 5,
            len: 4,
            adding: 2
        },
        "{e}"
    );
    assert!(e.to_string().contains("capacity 5"), "{e}");
    assert_eq!(cache.len(), 4);
    // An option error after the capacity check leaves it unchanged too.
    let m = vec![true; 3];
    let bad = causal.clone().with_mask(Some(Mask::Bool(
        TensorRef::contiguous(&m, [1, 1, 1, 3]).unwrap(),
    )));
    assert!(matches!(
        layer.forward_cached(&mut cache, &x[..16], 1, 1, &bad),
        Err(AttnError::Option { .. })
    ));
    assert_eq!(cache.len(), 4);
    layer
        .forward_cached(&mut cache, &x[..16], 1, 1, &causal)
        .unwrap();
    assert_eq!((cache.len(), cache.remaining()), (5, 0));
    let e = layer
        .forward_cached(&mut cache, &x[..16], 1, 1, &causal)
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttnError::CacheFull {
                capacity: 5,
                len: 5,
                adding: 1
            }
        ),
        "{e}"
    );
    // Rewinding makes room again.
    cache.truncate(2);
    layer
        .forward_cached(&mut cache, &x[..3 * 16], 1, 3, &causal)
        .unwrap();
    assert_eq!(cache.len(), 5);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn kv_cache_refuses_another_layer_or_batch() {
    let layer =
        MultiHeadAttention::random(MhaConfig::new(16, 4).with_kv_heads(2), false, 710).unwrap();
    let x = [0.5f32; 2 * 16];
    let o = SdpaOptions::default();
    for mut cache in [
        KvCache::new(2, 2, 4, 8).unwrap(), // batch 2
        KvCache::new(1, 4, 4, 8).unwrap(), // 4 kv heads
        KvCache::new(1, 2, 8, 8).unwrap(), // head dim 8
    ] {
        let e = layer
            .forward_cached(&mut cache, &x[..16], 1, 1, &o)
            .unwrap_err();
        assert!(matches!(e, AttnError::Shape { .. }), "{e}");
        assert!(cache.is_empty());
    }
}

#[test]
fn kv_cache_append_copies_strided_views() {
    let mut rng = StdRng::seed_from_u64(720);
    let (b, h, n, d) = (2, 3, 4, 5);
    let data = rand_vec(&mut rng, b * n * h * d);
    let blhd = TensorRef::from_blhd(&data, [b, h, n, d]).unwrap();
    let mut cache = KvCache::new(b, h, d, 10).unwrap();
    cache.append(blhd, blhd).unwrap();
    cache.append(blhd, blhd).unwrap();
    for (bb, hh, i, x) in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 1, 2, 0), (0, 2, 1, 3)] {
        for rep in 0..2 {
            assert_eq!(
                cache.keys().get(bb, hh, rep * n + i, x),
                blhd.get(bb, hh, i, x)
            );
            assert_eq!(
                cache.values().get(bb, hh, rep * n + i, x),
                blhd.get(bb, hh, i, x)
            );
        }
    }
    let short = TensorRef::from_blhd(&data[..b * 3 * h * d], [b, h, 3, d]).unwrap();
    assert!(matches!(
        cache.append(blhd, short),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        cache.append(blhd, blhd),
        Err(AttnError::CacheFull { .. })
    ));
    assert_eq!(cache.len(), 2 * n);
}

#[test]
fn mha_pytorch_layout_equals_the_row_major_layout() {
    let cfg = MhaConfig::new(24, 4).with_kv_heads(2).with_head_dim(5);
    let w = OwnedMhaWeights::random(&cfg, true, 800).unwrap();
    let t = |m: &[f32], d_in: usize, d_out: usize| -> Vec<f32> {
        (0..d_out * d_in)
            .map(|idx| m[(idx % d_in) * d_out + idx / d_in])
            .collect()
    };
    let (qd, kvd, dm) = (cfg.q_dim(), cfg.kv_dim(), cfg.d_model);
    let (wq, wk, wv, wo) = (
        t(&w.wq, dm, qd),
        t(&w.wk, dm, kvd),
        t(&w.wv, dm, kvd),
        t(&w.wo, qd, dm),
    );
    let pt = MhaWeights {
        layout: WeightLayout::OutIn,
        bq: w.bq.as_deref(),
        bk: w.bk.as_deref(),
        bv: w.bv.as_deref(),
        bo: w.bo.as_deref(),
        ..MhaWeights::new(&wq, &wk, &wv, &wo)
    };
    let a = MultiHeadAttention::new(cfg.clone(), w.as_weights()).unwrap();
    let b = MultiHeadAttention::new(cfg, pt).unwrap();
    let x = rand_vec(&mut StdRng::seed_from_u64(801), 2 * 9 * dm);
    let o = SdpaOptions::default().with_causal(true);
    assert!(
        a.forward(&x, 2, 9, &o).unwrap() == b.forward(&x, 2, 9, &o).unwrap(),
        "seed=800: layouts differ"
    );
}

#[test]
fn mha_results_are_bit_identical_at_1_2_3_threads() {
    // Shapes large enough for the parallel row split (prefill) and column split (few rows).
    for (seed, &(b, l, dm, hq, hkv, hd)) in [
        (2, 150, 64, 4, 2, 16),
        (1, 60, 256, 4, 2, 64),
        (1, 1, 512, 8, 2, 64),
    ]
    .iter()
    .enumerate()
    {
        let seed = 900 + seed as u64;
        let cfg = MhaConfig::new(dm, hq)
            .with_kv_heads(hkv)
            .with_head_dim(hd)
            .with_rope(RopeConfig::default());
        let layer = MultiHeadAttention::random(cfg, true, seed).unwrap();
        let x = rand_vec(&mut StdRng::seed_from_u64(seed), b * l * dm);
        let o = SdpaOptions::default().with_causal(true);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| layer.forward(&x, b, l, &o).unwrap())
        };
        let one = run(1);
        for t in [2, 3] {
            assert!(
                one == run(t),
                "seed={seed} l={l} dm={dm}: {t} threads differ"
            );
        }
        let seq = layer
            .forward(
                &x,
                b,
                l,
                &o.clone().with_parallelism(Parallelism::Sequential),
            )
            .unwrap();
        assert!(one == seq, "seed={seed}: sequential differs");
    }
}

#[test]
fn linear_matches_reference_on_both_split_paths() {
    let mut seed = 1000;
    // (rows, d_in, d_out): row split (rows > ROW_CHUNK = 128), column split (rows ≤ 128,
    // d_out > COL_BLOCK = 256), single block, edges that are not tile multiples.
    for &(rows, d_in, d_out) in &[
        (1, 1, 1),
        (1, 300, 700),
        (7, 13, 257),
        (64, 64, 513),
        (65, 31, 33),
        (128, 40, 300),
        (129, 17, 20),
        (200, 96, 300),
        (397, 33, 65),
    ] {
        for bias in [false, true] {
            for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
                seed += 1;
                let mut rng = StdRng::seed_from_u64(seed);
                let x = rand_vec(&mut rng, rows * d_in);
                let w = rand_vec(&mut rng, d_in * d_out);
                let bv = rand_vec(&mut rng, d_out);
                let w_io: Vec<f32> = match layout {
                    WeightLayout::InOut => w.clone(),
                    WeightLayout::OutIn => (0..d_in * d_out)
                        .map(|i| w[(i % d_out) * d_in + i / d_out])
                        .collect(),
                    other => unreachable!("layout {other:?} is not in this test"),
                };
                let want = linear_ref(&x, rows, d_in, &w_io, d_out, bias.then_some(&bv[..]));
                for isa in Isa::available() {
                    let lin =
                        Linear::new(isa, &w, d_in, d_out, layout, bias.then_some(&bv[..])).unwrap();
                    for par in [Parallelism::Sequential, Parallelism::Rayon] {
                        let y = lin.forward(&x, rows, par).unwrap();
                        let tol = 1e-5 * (d_in as f64).sqrt() + 1e-6;
                        let label = format!("seed={seed} {rows}x{d_in}x{d_out} bias={bias} {layout:?} isa={isa} {par:?}");
                        assert_close(&label, &y, &want, tol);
                    }
                }
            }
        }
    }
}

#[test]
fn bad_weights_and_inputs_are_clear_errors() {
    let cfg = MhaConfig::new(16, 4).with_kv_heads(2);
    let w = OwnedMhaWeights::random(&cfg, true, 1100).unwrap();
    let mut bad = w.as_weights();
    bad.wk = &w.wk[1..];
    let e = MultiHeadAttention::new(cfg.clone(), bad).unwrap_err();
    assert!(
        matches!(e, AttnError::Shape { .. })
            && e.to_string().contains("wk")
            && e.to_string().contains("[16, 8]"),
        "{e}"
    );
    let mut bad = w.as_weights();
    bad.bo = Some(&w.wq[..3]);
    let e = MultiHeadAttention::new(cfg.clone(), bad).unwrap_err();
    assert!(e.to_string().contains("bo"), "{e}");
    let e = MultiHeadAttention::new(cfg.clone().with_kv_heads(3), w.as_weights()).unwrap_err();
    assert!(matches!(e, AttnError::HeadGroups { hq: 4, hkv: 3 }), "{e}");
    let e = MultiHeadAttention::random(
        MhaConfig::new(14, 2).with_rope(RopeConfig::default()),
        false,
        1,
    )
    .unwrap_err();
    assert!(
        matches!(e, AttnError::Option { .. }),
        "odd head dim with RoPE: {e}"
    );
    assert!(MultiHeadAttention::random(MhaConfig::new(0, 2), false, 1).is_err());
    assert!(
        matches!(
            MultiHeadAttention::new(cfg.clone().with_isa(Isa::Neon), w.as_weights()),
            Err(AttnError::Kernel(_))
        ) || Isa::Neon.is_supported()
    );
    let layer = MultiHeadAttention::new(cfg, w.as_weights()).unwrap();
    let x = vec![0.0f32; 3 * 16];
    let o = SdpaOptions::default();
    let e = layer.forward(&x, 1, 2, &o).unwrap_err();
    assert!(
        matches!(e, AttnError::Shape { .. }) && e.to_string().contains("input"),
        "{e}"
    );
    let mut y = vec![0.0f32; 16];
    assert!(matches!(
        layer.forward_into(&x, 1, 3, &mut y, &o),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        layer.forward_cross(&x, &x[..16], 1, 3, 2, &o),
        Err(AttnError::Shape { .. })
    ));
    let lens = [4];
    let o2 = SdpaOptions::default().with_kv_lengths(Some(&lens));
    assert!(matches!(
        layer.forward(&x, 1, 3, &o2),
        Err(AttnError::Option { .. })
    ));
    // Empty inputs are fine.
    assert!(layer.forward(&[], 0, 5, &o).unwrap().is_empty());
    assert!(layer.forward(&[], 2, 0, &o).unwrap().is_empty());
}

#[test]
fn random_weights_are_reproducible_from_the_seed() {
    let cfg = MhaConfig::new(16, 2);
    let a = OwnedMhaWeights::random(&cfg, true, 5).unwrap();
    assert_eq!(a, OwnedMhaWeights::random(&cfg, true, 5).unwrap(), "seed=5");
    assert_ne!(
        a,
        OwnedMhaWeights::random(&cfg, true, 6).unwrap(),
        "seeds 5 and 6"
    );
    assert!(a.wq.iter().all(|x| x.abs() <= 0.25), "seed=5: bound 1/√16");
}
