//! The layer and KV cache handles against the Rust layer they wrap, and their refusals.

use attention::{
    bf16, f16, Element, MhaConfig, MhaWeights, MultiHeadAttention, RopeConfig, SdpaOptions,
    WeightLayout,
};
use fastattn_capi::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::ffi::{c_int, CStr};
use std::ptr::{null, null_mut};
use testutil::{max_abs_diff, rand_vec};

const OK: c_int = fa_status::FA_OK as c_int;

fn code(s: fa_status) -> c_int {
    s as c_int
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next failure on this thread.
    unsafe { CStr::from_ptr(fa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn causal() -> fa_sdpa_options {
    fa_sdpa_options {
        causal: 1,
        ..fa_sdpa_options::default()
    }
}

fn new_random(cfg: &fa_mha_config, bias: bool, seed: u64) -> *mut fa_mha {
    let mut layer = null_mut();
    // SAFETY: valid config and out pointers.
    let rc = unsafe { fa_mha_new_random(cfg, bias as i32, seed, &mut layer) };
    assert_eq!(rc, OK, "{}", last_error());
    assert!(!layer.is_null());
    layer
}

#[test]
fn random_layer_matches_the_rust_layer() {
    let seed = 21;
    let (b, l, dm) = (2, 7, 24);
    let c = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: dm,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 0, // d_model / n_heads
        rope: 1,
        rope_base: 0.0, // 10000
        weight_dtype: 0,
    };
    let layer = new_random(&c, true, seed);
    let rust = MultiHeadAttention::random(
        MhaConfig::new(dm, 4)
            .with_kv_heads(2)
            .with_rope(RopeConfig::default()),
        true,
        seed,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let x = rand_vec(&mut rng, b * l * dm);
    let mut y = vec![f32::NAN; b * l * dm];
    // SAFETY: x and y hold b·l·dm floats; the layer is live.
    let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), b, l, y.as_mut_ptr(), &causal()) };
    assert_eq!(rc, OK, "{}", last_error());
    let opts = SdpaOptions::default().with_causal(true);
    let want = rust.forward(&x, b, l, &opts).unwrap();
    let err = max_abs_diff(&y, &want);
    assert!(err < 1e-5, "seed {seed}: max error {err}");

    // Prefill 4 tokens, then decode the rest one at a time: the rows of the full forward.
    let mut cache = null_mut();
    // SAFETY: a live layer and a valid out pointer.
    assert_eq!(unsafe { fa_kv_cache_new(layer, b, l, &mut cache) }, OK);
    // SAFETY: a live cache.
    assert_eq!(unsafe { fa_kv_cache_capacity(cache) }, l);
    let mut t = 0;
    for n in [4, 1, 1, 1] {
        let xs: Vec<f32> = (0..b)
            .flat_map(|bb| x[(bb * l + t) * dm..(bb * l + t + n) * dm].to_vec())
            .collect();
        let mut ys = vec![0.0f32; b * n * dm];
        // SAFETY: xs and ys hold b·n·dm floats; live handles.
        let rc = unsafe {
            fa_mha_forward_cached(layer, cache, xs.as_ptr(), b, n, ys.as_mut_ptr(), &causal())
        };
        assert_eq!(rc, OK, "{}", last_error());
        for bb in 0..b {
            let got = &ys[bb * n * dm..(bb + 1) * n * dm];
            let full = &want[(bb * l + t) * dm..(bb * l + t + n) * dm];
            let err = max_abs_diff(got, full);
            assert!(
                err < 1e-5,
                "seed {seed}: step at {t}, batch {bb}: max error {err}"
            );
        }
        t += n;
        // SAFETY: a live cache.
        assert_eq!(unsafe { fa_kv_cache_len(cache) }, t);
    }
    // 7 of 7 positions used: one more token does not fit, and nothing changes.
    let xs = vec![0.0f32; b * 2 * dm];
    let mut ys = vec![0.0f32; b * 2 * dm];
    // SAFETY: as above.
    let rc =
        unsafe { fa_mha_forward_cached(layer, cache, xs.as_ptr(), b, 2, ys.as_mut_ptr(), null()) };
    assert_eq!(rc, code(fa_status::FA_ERR_CACHE_FULL), "{}", last_error());
    // SAFETY: a live cache.
    unsafe {
        assert_eq!(fa_kv_cache_len(cache), 7);
        assert_eq!(fa_kv_cache_truncate(cache, 5), OK);
        assert_eq!(fa_kv_cache_len(cache), 5);
        fa_kv_cache_free(cache);
        fa_mha_free(layer);
    }
}

#[test]
fn caller_weights_in_pytorch_layout_match_the_rust_layer() {
    let seed = 4;
    let mut rng = StdRng::seed_from_u64(seed);
    let (dm, hq, hkv, hd) = (10, 2, 1, 6);
    let (qd, kvd) = (hq * hd, hkv * hd);
    // [d_out, d_in] matrices.
    let wq = rand_vec(&mut rng, qd * dm);
    let wk = rand_vec(&mut rng, kvd * dm);
    let wv = rand_vec(&mut rng, kvd * dm);
    let wo = rand_vec(&mut rng, dm * qd);
    let bo = rand_vec(&mut rng, dm);
    let w = fa_mha_weights {
        struct_size: std::mem::size_of::<fa_mha_weights>(),
        wq: wq.as_ptr().cast(),
        wk: wk.as_ptr().cast(),
        wv: wv.as_ptr().cast(),
        wo: wo.as_ptr().cast(),
        bq: null(),
        bk: null(),
        bv: null(),
        bo: bo.as_ptr(),
        layout: 1,
    };
    let c = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: dm,
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
        rope: 0,
        rope_base: 0.0,
        weight_dtype: 0,
    };
    let mut layer = null_mut();
    // SAFETY: the weights hold the documented lengths.
    let rc = unsafe { fa_mha_new(&c, &w, &mut layer) };
    assert_eq!(rc, OK, "{}", last_error());
    let mut rw = MhaWeights::new(&wq, &wk, &wv, &wo);
    rw.bo = Some(&bo);
    rw.layout = WeightLayout::OutIn;
    let rust = MultiHeadAttention::new(
        MhaConfig::new(dm, hq).with_kv_heads(hkv).with_head_dim(hd),
        rw,
    )
    .unwrap();
    let x = rand_vec(&mut rng, 3 * 5 * dm);
    let mut y = vec![0.0f32; x.len()];
    // SAFETY: x and y hold 3·5·dm floats.
    let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), 3, 5, y.as_mut_ptr(), null()) };
    assert_eq!(rc, OK, "{}", last_error());
    let want = rust.forward(&x, 3, 5, &SdpaOptions::default()).unwrap();
    assert!(max_abs_diff(&y, &want) < 1e-5, "seed {seed}");
    // SAFETY: a live handle, freed once.
    unsafe { fa_mha_free(layer) };
}

#[test]
fn layer_refusals_have_their_codes() {
    use fa_status::*;
    let c = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: 8,
        n_heads: 2,
        n_kv_heads: 0,
        head_dim: 0,
        rope: 0,
        rope_base: 0.0,
        weight_dtype: 0,
    };
    let mut out = null_mut();
    // SAFETY: each call is refused before it reads anything but the config.
    unsafe {
        assert_eq!(
            fa_mha_new_random(null(), 0, 1, &mut out),
            code(FA_ERR_NULL_POINTER)
        );
        assert_eq!(
            fa_mha_new_random(&c, 0, 1, null_mut()),
            code(FA_ERR_NULL_POINTER)
        );
        assert_eq!(fa_mha_new(&c, null(), &mut out), code(FA_ERR_NULL_POINTER));
        let bad = fa_mha_config { n_heads: 0, ..c };
        assert_eq!(
            fa_mha_new_random(&bad, 0, 1, &mut out),
            code(FA_ERR_BAD_SHAPE)
        );
        let bad = fa_mha_config { n_kv_heads: 3, ..c };
        assert_eq!(
            fa_mha_new_random(&bad, 0, 1, &mut out),
            code(FA_ERR_BAD_SHAPE)
        );
        let bad = fa_mha_config { rope: 2, ..c };
        assert_eq!(
            fa_mha_new_random(&bad, 0, 1, &mut out),
            code(FA_ERR_INVALID_ARGUMENT)
        );
        assert_eq!(
            fa_mha_new_random(&c, 2, 1, &mut out),
            code(FA_ERR_INVALID_ARGUMENT)
        );
        // Weights of 2^62 floats cannot be allocated: an error, not an abort.
        let huge = fa_mha_config {
            struct_size: std::mem::size_of::<fa_mha_config>(),
            d_model: 1 << 30,
            head_dim: 1 << 29,
            ..c
        };
        assert_eq!(
            fa_mha_new_random(&huge, 0, 1, &mut out),
            code(FA_ERR_ALLOC),
            "{}",
            last_error()
        );
        assert!(out.is_null());
    }
    let layer = new_random(&c, false, 3);
    let mut x = vec![0.5f32; 2 * 3 * 8];
    let mut y = vec![0.0f32; 2 * 3 * 8];
    // SAFETY: refused before any access, or valid buffers of 2·3·8 floats.
    unsafe {
        let mut cache = null_mut();
        let rc = fa_kv_cache_new(layer, 1 << 26, 1 << 28, &mut cache);
        assert_eq!(rc, code(FA_ERR_ALLOC), "{}", last_error());
        let rc = fa_kv_cache_new(layer, usize::MAX, 2, &mut cache);
        assert_eq!(rc, code(FA_ERR_BAD_SHAPE), "{}", last_error());
        assert!(cache.is_null());
        let rc = fa_mha_forward(null(), x.as_ptr(), 2, 3, y.as_mut_ptr(), null());
        assert_eq!(rc, code(FA_ERR_NULL_POINTER));
        let rc = fa_mha_forward(layer, x.as_ptr(), 2, 3, x.as_mut_ptr(), null());
        assert_eq!(rc, code(FA_ERR_BAD_STRIDE), "{}", last_error());
        let rc = fa_mha_forward(layer, x.as_ptr(), 2, 3, x.as_mut_ptr().add(8), null());
        assert_eq!(
            rc,
            code(FA_ERR_BAD_STRIDE),
            "partial overlap: {}",
            last_error()
        );
        let mut o = causal();
        let mut lse = [0.0f32; 12];
        o.lse = lse.as_mut_ptr();
        let rc = fa_mha_forward(layer, x.as_ptr(), 2, 3, y.as_mut_ptr(), &o);
        assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT), "{}", last_error());
        // A cache made for batch 1 does not fit a batch-2 call.
        assert_eq!(fa_kv_cache_new(layer, 1, 8, &mut cache), OK);
        let rc = fa_mha_forward_cached(layer, cache, x.as_ptr(), 2, 3, y.as_mut_ptr(), null());
        assert_eq!(rc, code(FA_ERR_BAD_SHAPE), "{}", last_error());
        assert_eq!(fa_kv_cache_len(cache), 0);
        fa_kv_cache_free(cache);
        assert_eq!(fa_kv_cache_len(null()), 0);
        fa_kv_cache_free(null_mut());
        fa_mha_free(layer);
        fa_mha_free(null_mut());
    }
}

// ------------------------------------------------------------------ element types

const DTYPES: [fa_dtype; 3] = [
    fa_dtype::FA_DTYPE_F32,
    fa_dtype::FA_DTYPE_F16,
    fa_dtype::FA_DTYPE_BF16,
];

fn config(dm: usize, hq: usize, hkv: usize, rope: i32, weight_dtype: fa_dtype) -> fa_mha_config {
    fa_mha_config {
        d_model: dm,
        n_heads: hq,
        n_kv_heads: hkv,
        rope,
        weight_dtype: weight_dtype as i32,
        ..fa_mha_config::default()
    }
}

/// The Rust layer `fa_mha_new_random` builds for `dt`.
fn rust_random(cfg: MhaConfig, dt: fa_dtype, bias: bool, seed: u64) -> MultiHeadAttention {
    match dt {
        fa_dtype::FA_DTYPE_F32 => MultiHeadAttention::random(cfg, bias, seed),
        fa_dtype::FA_DTYPE_F16 => MultiHeadAttention::random_of::<f16>(cfg, bias, seed),
        fa_dtype::FA_DTYPE_BF16 => MultiHeadAttention::random_of::<bf16>(cfg, bias, seed),
        q => unreachable!("{q:?}: the layer has no 8-bit weights"),
    }
    .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn new_cache_typed(layer: *const fa_mha, b: usize, cap: usize, dt: i32) -> *mut fa_kv_cache {
    let mut cache = null_mut();
    // SAFETY: a live layer and a valid out pointer.
    let rc = unsafe { fa_kv_cache_new_typed(layer, b, cap, dt, &mut cache) };
    assert_eq!(rc, OK, "{}", last_error());
    assert!(!cache.is_null());
    cache
}

/// Prefill then one-token steps through the C cache `cache` and a Rust cache of `T`: the
/// same bits at every step.
fn decode_matches<T: Element>(
    layer: *const fa_mha,
    cache: *mut fa_kv_cache,
    rust: &MultiHeadAttention,
    x: &[f32],
    (b, l, dm): (usize, usize, usize),
    label: &str,
) {
    let mut rc_cache = rust.new_cache_of::<T>(b, l).unwrap();
    let opts = SdpaOptions::default().with_causal(true);
    let mut t = 0;
    // A prefill, then three one-token steps, up to the capacity `l`.
    for n in [l - 3, 1, 1, 1] {
        let xs: Vec<f32> = (0..b)
            .flat_map(|bb| x[(bb * l + t) * dm..(bb * l + t + n) * dm].to_vec())
            .collect();
        let mut ys = vec![f32::NAN; b * n * dm];
        // SAFETY: xs and ys hold b·n·dm floats; live handles.
        let rc = unsafe {
            fa_mha_forward_cached(layer, cache, xs.as_ptr(), b, n, ys.as_mut_ptr(), &causal())
        };
        assert_eq!(rc, OK, "{label}: {}", last_error());
        let want = rust
            .forward_cached(&mut rc_cache, &xs, b, n, &opts)
            .unwrap();
        assert_eq!(bits(&ys), bits(&want), "{label}: step at {t}");
        t += n;
        // SAFETY: a live cache.
        assert_eq!(unsafe { fa_kv_cache_len(cache) }, t, "{label}");
    }
}

#[test]
fn typed_caches_report_their_type_and_bytes() {
    use fa_status::*;
    let (b, cap) = (2, 9);
    let c = config(16, 4, 2, 0, fa_dtype::FA_DTYPE_F32);
    let layer = new_random(&c, false, 3);
    let values = 2 * b * 2 * cap * 4; // 2·B·Hkv·capacity·D
    let mut plain = null_mut();
    // SAFETY: a live layer and a valid out pointer.
    assert_eq!(unsafe { fa_kv_cache_new(layer, b, cap, &mut plain) }, OK);
    let caches = DTYPES.map(|dt| new_cache_typed(layer, b, cap, dt as i32));
    // SAFETY: live caches (and NULL, which the queries accept).
    unsafe {
        assert_eq!(fa_kv_cache_dtype(plain), fa_dtype::FA_DTYPE_F32 as i32);
        assert_eq!(fa_kv_cache_bytes(plain), 4 * values);
        for (cache, dt) in caches.iter().zip(DTYPES) {
            assert_eq!(fa_kv_cache_dtype(*cache), dt as i32);
            assert_eq!(fa_kv_cache_capacity(*cache), cap);
            assert_eq!(fa_kv_cache_len(*cache), 0);
        }
        let [f32c, f16c, bf16c] = caches;
        assert_eq!(fa_kv_cache_bytes(f32c), 4 * values);
        assert_eq!(2 * fa_kv_cache_bytes(bf16c), fa_kv_cache_bytes(f32c));
        assert_eq!(fa_kv_cache_bytes(f16c), fa_kv_cache_bytes(bf16c));
        assert_eq!(fa_kv_cache_bytes(null()), 0);
        assert!(fa_kv_cache_dtype(null()) < 0);
        assert_eq!(fa_kv_cache_dtype(null()), code(FA_ERR_NULL_POINTER));
        // Unknown types are refused, naming the value; *out is left alone.
        for bad in [3, -1] {
            let mut none = null_mut();
            let rc = fa_kv_cache_new_typed(layer, b, cap, bad, &mut none);
            assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT));
            assert!(none.is_null());
            assert!(
                last_error().contains(&format!("dtype is {bad}")),
                "{}",
                last_error()
            );
        }
        // A 16-bit cache too large to allocate: an error code, not an abort.
        let mut none = null_mut();
        let rc = fa_kv_cache_new_typed(layer, 1 << 26, 1 << 28, 2, &mut none);
        assert_eq!(rc, code(FA_ERR_ALLOC), "{}", last_error());
        let rc = fa_kv_cache_new_typed(layer, usize::MAX, 2, 1, &mut none);
        assert_eq!(rc, code(FA_ERR_BAD_SHAPE), "{}", last_error());
        let rc = fa_kv_cache_new_typed(null(), 1, 2, 1, &mut none);
        assert_eq!(rc, code(FA_ERR_NULL_POINTER));
        assert!(none.is_null());
        // Truncating works on every type.
        assert_eq!(fa_kv_cache_truncate(bf16c, 0), OK);
        for cache in caches {
            fa_kv_cache_free(cache);
        }
        fa_kv_cache_free(plain);
        fa_mha_free(layer);
    }
}

#[test]
fn random_layers_and_caches_of_every_type_match_the_rust_api_bit_for_bit() {
    let (b, l, dm) = (2, 6, 16);
    for (i, wdt) in DTYPES.into_iter().enumerate() {
        let seed = 40 + i as u64;
        let c = config(dm, 4, 2, 1, wdt);
        let layer = new_random(&c, true, seed);
        let rust = rust_random(
            MhaConfig::new(dm, 4)
                .with_kv_heads(2)
                .with_rope(RopeConfig::default()),
            wdt,
            true,
            seed,
        );
        assert_eq!(rust.weight_dtype(), attention::DType::ALL[i]);
        let mut rng = StdRng::seed_from_u64(seed);
        let x = rand_vec(&mut rng, b * l * dm);
        let mut y = vec![f32::NAN; b * l * dm];
        // SAFETY: x and y hold b·l·dm floats; the layer is live.
        let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), b, l, y.as_mut_ptr(), &causal()) };
        assert_eq!(rc, OK, "{}", last_error());
        let opts = SdpaOptions::default().with_causal(true);
        let want = rust.forward(&x, b, l, &opts).unwrap();
        assert_eq!(bits(&y), bits(&want), "weights {wdt:?}, seed {seed}");
        for cdt in DTYPES {
            let label = format!("weights {wdt:?}, cache {cdt:?}, seed {seed}");
            let cache = new_cache_typed(layer, b, l, cdt as i32);
            match cdt {
                fa_dtype::FA_DTYPE_F32 => {
                    decode_matches::<f32>(layer, cache, &rust, &x, (b, l, dm), &label)
                }
                fa_dtype::FA_DTYPE_F16 => {
                    decode_matches::<f16>(layer, cache, &rust, &x, (b, l, dm), &label)
                }
                fa_dtype::FA_DTYPE_BF16 => {
                    decode_matches::<bf16>(layer, cache, &rust, &x, (b, l, dm), &label)
                }
                q => unreachable!("{q:?}: the KV cache object has no 8-bit storage"),
            }
            // SAFETY: a live cache, freed once.
            unsafe { fa_kv_cache_free(cache) };
        }
        // SAFETY: a live layer, freed once.
        unsafe { fa_mha_free(layer) };
    }
}

#[test]
fn caller_bf16_and_f16_weights_are_read_and_kept_in_their_type() {
    use fa_status::*;
    let seed = 8;
    let mut rng = StdRng::seed_from_u64(seed);
    let (dm, hq, hkv, hd) = (12, 2, 1, 6);
    let (qd, kvd) = (hq * hd, hkv * hd);
    let wq = rand_vec(&mut rng, dm * qd);
    let wk = rand_vec(&mut rng, dm * kvd);
    let wv = rand_vec(&mut rng, dm * kvd);
    let wo = rand_vec(&mut rng, qd * dm);
    let bq = rand_vec(&mut rng, qd);
    let x = rand_vec(&mut rng, 2 * 5 * dm);
    fn check<W: Element>(
        dt: fa_dtype,
        mats: [&[f32]; 4],
        bq: &[f32],
        x: &[f32],
        (dm, hq, hkv, hd): (usize, usize, usize, usize),
    ) {
        let [wq, wk, wv, wo] = mats.map(|m| m.iter().map(|&v| W::from_f32(v)).collect::<Vec<W>>());
        let w = fa_mha_weights {
            wq: wq.as_ptr().cast(),
            wk: wk.as_ptr().cast(),
            wv: wv.as_ptr().cast(),
            wo: wo.as_ptr().cast(),
            bq: bq.as_ptr(),
            ..fa_mha_weights::default()
        };
        let c = fa_mha_config {
            head_dim: hd,
            ..config(dm, hq, hkv, 0, dt)
        };
        let mut layer = null_mut();
        // SAFETY: the weights hold the documented lengths of W values.
        let rc = unsafe { fa_mha_new(&c, &w, &mut layer) };
        assert_eq!(rc, OK, "{dt:?}: {}", last_error());
        let mut rw = MhaWeights::new(&wq[..], &wk[..], &wv[..], &wo[..]);
        rw.bq = Some(bq);
        let rust = MultiHeadAttention::new(
            MhaConfig::new(dm, hq).with_kv_heads(hkv).with_head_dim(hd),
            rw,
        )
        .unwrap();
        assert_eq!(rust.weight_dtype(), W::DTYPE);
        let mut y = vec![0.0f32; x.len()];
        // SAFETY: x and y hold 2·5·dm floats.
        let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), 2, 5, y.as_mut_ptr(), null()) };
        assert_eq!(rc, OK, "{dt:?}: {}", last_error());
        let want = rust.forward(x, 2, 5, &SdpaOptions::default()).unwrap();
        assert_eq!(bits(&y), bits(&want), "{dt:?}");
        // A bf16 cache on a layer of any weight type.
        let cache = new_cache_typed(layer, 2, 5, fa_dtype::FA_DTYPE_BF16 as i32);
        decode_matches::<bf16>(layer, cache, &rust, x, (2, 5, dm), &format!("{dt:?}"));
        // SAFETY: live handles, freed once.
        unsafe {
            fa_kv_cache_free(cache);
            fa_mha_free(layer);
        }
    }
    let dims = (dm, hq, hkv, hd);
    let mats = [&wq[..], &wk[..], &wv[..], &wo[..]];
    check::<bf16>(fa_dtype::FA_DTYPE_BF16, mats, &bq, &x, dims);
    check::<f16>(fa_dtype::FA_DTYPE_F16, mats, &bq, &x, dims);
    check::<f32>(fa_dtype::FA_DTYPE_F32, mats, &bq, &x, dims);

    // Refusals: an unknown weight type, a misaligned 16-bit matrix.
    let w16: Vec<bf16> = wq.iter().map(|&v| bf16::from_f32(v)).collect();
    let w = fa_mha_weights {
        wq: w16.as_ptr().cast(),
        wk: w16.as_ptr().cast(),
        wv: w16.as_ptr().cast(),
        wo: w16.as_ptr().cast(),
        ..fa_mha_weights::default()
    };
    let c = config(dm, hq, hkv, 0, fa_dtype::FA_DTYPE_BF16);
    let mut out = null_mut();
    // SAFETY: refused before the weights are read, or 16-bit matrices long enough (the
    // same values serve for all four: dm·qd = qd·dm >= dm·kvd).
    unsafe {
        for bad in [3, -1] {
            let c = fa_mha_config {
                weight_dtype: bad,
                ..c
            };
            assert_eq!(fa_mha_new(&c, &w, &mut out), code(FA_ERR_INVALID_ARGUMENT));
            let msg = last_error();
            assert!(
                msg.contains(&format!("config->weight_dtype is {bad}")),
                "{msg}"
            );
            let rc = fa_mha_new_random(&c, 0, 1, &mut out);
            assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT));
        }
        let odd = fa_mha_weights {
            wk: w16.as_ptr().cast::<u8>().add(1).cast(),
            ..w
        };
        assert_eq!(
            fa_mha_new(&c, &odd, &mut out),
            code(FA_ERR_INVALID_ARGUMENT)
        );
        assert!(
            last_error().contains("weights->wk is not aligned to 2 bytes"),
            "{}",
            last_error()
        );
        assert!(out.is_null());
        // 16-bit weights of 2^62 values cannot be allocated: an error, not an abort.
        let huge = fa_mha_config {
            d_model: 1 << 30,
            head_dim: 1 << 29,
            ..config(8, 2, 0, 0, fa_dtype::FA_DTYPE_BF16)
        };
        let rc = fa_mha_new_random(&huge, 0, 1, &mut out);
        assert_eq!(rc, code(FA_ERR_ALLOC), "{}", last_error());
        assert!(out.is_null());
    }
}

/// `fa_mha_config` as ABI version 2 laid it out (before `weight_dtype`).
#[repr(C)]
struct ConfigV2 {
    struct_size: usize,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope: i32,
    rope_base: f32,
}

#[test]
fn a_config_of_the_previous_layout_still_works_and_means_f32_weights() {
    let old = std::mem::size_of::<ConfigV2>();
    assert_eq!(old, std::mem::offset_of!(fa_mha_config, weight_dtype));
    assert!(old < std::mem::size_of::<fa_mha_config>());
    // fa_mha_config_init with the old size writes the old bytes only.
    #[repr(C, align(8))]
    struct Raw([u8; std::mem::size_of::<fa_mha_config>()]);
    let mut raw = Raw([0xab; std::mem::size_of::<fa_mha_config>()]);
    let p = (&raw mut raw).cast::<fa_mha_config>();
    // SAFETY: `p` is aligned for fa_mha_config and writable for `old` (fewer) bytes.
    assert_eq!(unsafe { fa_mha_config_init(p, old) }, OK);
    assert!(
        raw.0[old..].iter().all(|&b| b == 0xab),
        "init wrote past struct_size"
    );
    assert_eq!(raw.0[..8], old.to_ne_bytes()[..8]);

    // An old caller's struct, only `old` bytes long: its layer has f32 weights.
    let seed = 12;
    let v2 = ConfigV2 {
        struct_size: old,
        d_model: 16,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 0,
        rope: 1,
        rope_base: 0.0,
    };
    let mut layer = null_mut();
    let p = (&raw const v2).cast::<fa_mha_config>();
    // SAFETY: `p` is aligned (same first fields) and readable for its `struct_size` bytes,
    // all the library reads.
    let rc = unsafe { fa_mha_new_random(p, 0, seed, &mut layer) };
    assert_eq!(rc, OK, "{}", last_error());
    let rust = MultiHeadAttention::random(
        MhaConfig::new(16, 4)
            .with_kv_heads(2)
            .with_rope(RopeConfig::default()),
        false,
        seed,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let x = rand_vec(&mut rng, 3 * 16);
    let mut y = vec![0.0f32; x.len()];
    // SAFETY: x and y hold 1·3·16 floats.
    let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), 1, 3, y.as_mut_ptr(), &causal()) };
    assert_eq!(rc, OK, "{}", last_error());
    let want = rust
        .forward(&x, 1, 3, &SdpaOptions::default().with_causal(true))
        .unwrap();
    assert_eq!(bits(&y), bits(&want));
    // fa_mha_new with the old struct and f32 weights.
    let w = vec![0.25f32; 16 * 16];
    let weights = fa_mha_weights {
        wq: w.as_ptr().cast(),
        wk: w.as_ptr().cast(),
        wv: w.as_ptr().cast(),
        wo: w.as_ptr().cast(),
        ..fa_mha_weights::default()
    };
    let mut layer2 = null_mut();
    // SAFETY: as above; 16·16 floats cover every matrix.
    let rc = unsafe { fa_mha_new(p, &weights, &mut layer2) };
    assert_eq!(rc, OK, "{}", last_error());
    // SAFETY: live handles, freed once.
    unsafe {
        fa_mha_free(layer2);
        fa_mha_free(layer);
    }
}
