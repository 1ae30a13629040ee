//! The layer and KV cache handles against the Rust layer they wrap, and their refusals.

use attention::{MhaConfig, MhaWeights, MultiHeadAttention, RopeConfig, SdpaOptions, WeightLayout};
use fastattn_capi::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::ffi::{c_int, CStr};
use std::ptr::{null, null_mut};

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

fn rand_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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
    let err = max_diff(&y, &want);
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
            let err = max_diff(got, full);
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
        wq: wq.as_ptr(),
        wk: wk.as_ptr(),
        wv: wv.as_ptr(),
        wo: wo.as_ptr(),
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
    assert!(max_diff(&y, &want) < 1e-5, "seed {seed}");
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
