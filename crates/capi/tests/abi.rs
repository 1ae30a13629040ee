//! The C ABI called from Rust: results against the oracles (`sdpa_ref`, f64 GEMM and
//! softmax loops) over strided layouts and every option, and each refusal's status code.

// Options are set field by field after their defaults, as a C caller does after
// `fa_sdpa_options_init`.
#![allow(clippy::field_reassign_with_default)]

use attention::reference::sdpa_ref;
use attention::{
    bf16, f16, DynTensor, DynTensorMut, Mask, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use fastattn_capi::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::ffi::{c_int, c_void, CStr};
use std::mem::size_of;
use std::ptr::{null, null_mut};
use testutil::{max_abs_diff, rand_vec};

const OK: c_int = fa_status::FA_OK as c_int;

fn code(s: fa_status) -> c_int {
    s as c_int
}

fn last_error() -> String {
    // SAFETY: fa_last_error returns a NUL-terminated string valid until the next failure on
    // this thread; it is copied at once.
    unsafe { CStr::from_ptr(fa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn dense_strides(dims: [usize; 4]) -> [isize; 4] {
    let [_, h, l, d] = dims;
    [(h * l * d) as isize, (l * d) as isize, d as isize, 1]
}

fn tensor(data: &mut [f32], dims: [usize; 4], strides: [isize; 4]) -> fa_tensor {
    fa_tensor {
        data: data.as_mut_ptr().cast(),
        dims,
        strides,
        dtype: 0,
    }
}

/// One fa_sdpa configuration.
#[derive(Debug, Clone, Copy, Default)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    blhd: bool,
    causal: bool,
    mask: bool,
    kv_lengths: bool,
    window: Option<(i64, i64)>,
    softcap: bool,
    alibi: bool,
    outputs: bool,
    scale: f32,
}

fn run_case(c: Case, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Case {
        b,
        hq,
        hkv,
        lq,
        lk,
        d,
        dv,
        ..
    } = c;
    let mut q = rand_vec(&mut rng, b * hq * lq * d);
    let mut k = rand_vec(&mut rng, b * hkv * lk * d);
    let mut v = rand_vec(&mut rng, b * hkv * lk * dv);
    // Q either [B, H, L, D] or [B, L, H, D] memory.
    let q_strides = if c.blhd {
        [(lq * hq * d) as isize, d as isize, (hq * d) as isize, 1]
    } else {
        dense_strides([b, hq, lq, d])
    };
    let mut mask = rand_vec(&mut rng, lq * lk);
    if lk > 1 {
        mask[1] = f32::NEG_INFINITY;
    }
    let lens: Vec<i64> = (0..b).map(|i| (lk - (i % (lk + 1))) as i64).collect();
    let slopes: Vec<f32> = (0..hq).map(|h| 0.5f32.powi(h as i32 + 1)).collect();

    let qt = tensor(&mut q, [b, hq, lq, d], q_strides);
    let kt = tensor(&mut k, [b, hkv, lk, d], dense_strides([b, hkv, lk, d]));
    let vt = tensor(&mut v, [b, hkv, lk, dv], dense_strides([b, hkv, lk, dv]));
    let mt = tensor(&mut mask, [1, hq, lq, lk], [0, 0, lk as isize, 1]);
    let mut out = vec![f32::NAN; b * hq * lq * dv];
    let mut weights = vec![f32::NAN; b * hq * lq * lk];
    let mut lse = vec![f32::NAN; b * hq * lq];
    let mut ot = tensor(&mut out, [b, hq, lq, dv], dense_strides([b, hq, lq, dv]));
    let mut wt = tensor(
        &mut weights,
        [b, hq, lq, lk],
        dense_strides([b, hq, lq, lk]),
    );

    let mut o = fa_sdpa_options::default();
    o.scale = c.scale;
    o.causal = c.causal as i32;
    if c.mask {
        o.mask = &mt;
    }
    if c.kv_lengths {
        o.kv_lengths = lens.as_ptr();
    }
    if let Some((l, r)) = c.window {
        (o.window_left, o.window_right) = (l, r);
    }
    if c.softcap {
        o.softcap = 2.5;
    }
    if c.alibi {
        o.alibi_slopes = slopes.as_ptr();
    }
    if c.outputs {
        o.weights = &mut wt;
        o.lse = lse.as_mut_ptr();
    }
    // SAFETY: every tensor describes a live buffer of its size; outputs are distinct.
    let rc = unsafe { fa_sdpa(&qt, &kt, &vt, &mut ot, &o) };
    assert_eq!(rc, OK, "{c:?} seed {seed}: {}", last_error());

    // The oracle on the same data through the safe views.
    let qs: Vec<usize> = q_strides.iter().map(|&s| s as usize).collect();
    let lens_u: Vec<usize> = lens.iter().map(|&n| n as usize).collect();
    let opts = SdpaOptions::default()
        .with_scale((c.scale != 0.0).then_some(c.scale))
        .with_causal(c.causal)
        .with_mask(c.mask.then(|| {
            Mask::Additive(TensorRef::new(&mask, [1, hq, lq, lk], [0, 0, lk, 1]).unwrap())
        }))
        .with_kv_lengths(c.kv_lengths.then_some(&lens_u[..]))
        .with_window_left(c.window.and_then(|w| usize::try_from(w.0).ok()))
        .with_window_right(c.window.and_then(|w| usize::try_from(w.1).ok()))
        .with_softcap(c.softcap.then_some(2.5))
        .with_alibi_slopes(c.alibi.then_some(&slopes[..]));
    let want = sdpa_ref(
        TensorRef::new(&q, [b, hq, lq, d], [qs[0], qs[1], qs[2], qs[3]]).unwrap(),
        TensorRef::contiguous(&k, [b, hkv, lk, d]).unwrap(),
        TensorRef::contiguous(&v, [b, hkv, lk, dv]).unwrap(),
        &opts,
    )
    .unwrap();
    let err = max_abs_diff(&out, &want.out);
    assert!(err < 1e-5, "{c:?} seed {seed}: output max error {err}");
    if c.outputs {
        let err = max_abs_diff(&weights, &want.weights);
        assert!(err < 1e-5, "{c:?} seed {seed}: weights max error {err}");
        let err = max_abs_diff(&lse, &want.lse);
        assert!(err < 1e-4, "{c:?} seed {seed}: lse max error {err}");
    }
}

#[test]
fn sdpa_matches_reference_for_every_option() {
    let base = Case {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 5,
        lk: 11,
        d: 8,
        dv: 6,
        ..Default::default()
    };
    let cases = [
        base,
        Case { blhd: true, ..base },
        Case {
            causal: true,
            outputs: true,
            ..base
        },
        Case {
            mask: true,
            outputs: true,
            ..base
        },
        Case {
            kv_lengths: true,
            causal: true,
            outputs: true,
            ..base
        },
        Case {
            window: Some((3, 1)),
            ..base
        },
        Case {
            window: Some((-1, 0)),
            ..base
        },
        Case {
            softcap: true,
            alibi: true,
            scale: 0.3,
            ..base
        },
        // Decode, MQA, odd head dims.
        Case {
            lq: 1,
            hkv: 1,
            d: 13,
            dv: 7,
            causal: true,
            outputs: true,
            blhd: true,
            ..base
        },
        // Lq > Lk: early rows see no key (zero output, -inf lse).
        Case {
            lq: 13,
            lk: 4,
            causal: true,
            outputs: true,
            ..base
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        run_case(c, 1000 + i as u64);
    }
}

#[test]
fn sdpa_accepts_empty_views_with_null_data() {
    let empty = fa_tensor {
        data: null_mut(),
        dims: [0, 2, 3, 4],
        strides: [24, 12, 4, 1],
        dtype: 0,
    };
    let mut out = empty;
    // SAFETY: empty views reach no element.
    let rc = unsafe { fa_sdpa(&empty, &empty, &empty, &mut out, null()) };
    assert_eq!(rc, OK, "{}", last_error());
}

/// A valid problem whose arguments the test then breaks one at a time.
struct Fixture {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
}

const DIMS: [usize; 4] = [1, 2, 3, 4];

impl Fixture {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        Fixture {
            q: rand_vec(&mut rng, 24),
            k: rand_vec(&mut rng, 24),
            v: rand_vec(&mut rng, 24),
            out: vec![42.0; 24],
        }
    }

    fn views(&mut self) -> [fa_tensor; 4] {
        let s = dense_strides(DIMS);
        [
            tensor(&mut self.q, DIMS, s),
            tensor(&mut self.k, DIMS, s),
            tensor(&mut self.v, DIMS, s),
            tensor(&mut self.out, DIMS, s),
        ]
    }

    /// Runs fa_sdpa with the views (after `edit`) and options; checks the code and that
    /// nothing was written.
    fn expect(
        &mut self,
        want: fa_status,
        what: &str,
        edit: impl FnOnce(&mut [fa_tensor; 4]),
        o: &fa_sdpa_options,
    ) {
        let mut t = self.views();
        edit(&mut t);
        let [q, k, v, mut out] = t;
        // SAFETY: the views describe live buffers or are deliberately broken in ways the
        // checks refuse before any access.
        let rc = unsafe { fa_sdpa(&q, &k, &v, &mut out, o) };
        assert_eq!(rc, code(want), "{what}: {}", last_error());
        if want != fa_status::FA_OK {
            assert!(
                self.out.iter().all(|&x| x == 42.0),
                "{what}: output written"
            );
            assert!(
                last_error().starts_with("fa_sdpa: "),
                "{what}: {}",
                last_error()
            );
        }
    }
}

#[test]
fn sdpa_refuses_bad_arguments_with_distinct_codes() {
    use fa_status::*;
    let mut f = Fixture::new();
    let d = fa_sdpa_options::default();
    f.expect(FA_OK, "valid", |_| {}, &d);
    f.out.fill(42.0);

    // SAFETY: NULL tensors are refused before any access.
    let rc = unsafe { fa_sdpa(null(), null(), null(), null_mut(), null()) };
    assert_eq!(rc, code(FA_ERR_NULL_POINTER));
    f.expect(
        FA_ERR_NULL_POINTER,
        "NULL data",
        |t| t[1].data = null_mut(),
        &d,
    );
    f.expect(
        FA_ERR_BAD_SHAPE,
        "head dims differ",
        |t| t[1].dims[3] = 2,
        &d,
    );
    f.expect(
        FA_ERR_BAD_SHAPE,
        "Hq not a multiple of Hkv",
        |t| {
            t[0].dims[1] = 1;
            t[3].dims[1] = 1;
            t[1].dims[1] = 2;
        },
        &d,
    );
    f.expect(FA_ERR_BAD_SHAPE, "output dims", |t| t[3].dims[2] = 2, &d);
    f.expect(
        FA_ERR_BAD_SHAPE,
        "overflowing extent",
        |t| {
            t[0].dims[0] = 2;
            t[0].strides[0] = isize::MAX / 2;
        },
        &d,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "negative stride",
        |t| t[0].strides[2] = -4,
        &d,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "zero stride outside a mask",
        |t| t[1].strides[2] = 0,
        &d,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "self-aliasing output",
        |t| t[3].strides[2] = 1,
        &d,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "output overlapping k",
        |t| t[3].data = t[1].data,
        &d,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "misaligned data",
        |t| {
            // SAFETY: one byte into a live buffer; the pointer is refused before any access.
            t[2].data = unsafe { t[2].data.cast::<u8>().add(1) }.cast();
        },
        &d,
    );

    let mut bad = d;
    bad.causal = 2;
    f.expect(FA_ERR_INVALID_ARGUMENT, "causal = 2", |_| {}, &bad);
    let mut bad = d;
    bad.window_left = -2;
    f.expect(FA_ERR_INVALID_ARGUMENT, "window_left = -2", |_| {}, &bad);
    let mut bad = d;
    bad.scale = f32::NAN;
    f.expect(FA_ERR_INVALID_ARGUMENT, "NaN scale", |_| {}, &bad);
    let mut bad = d;
    bad.softcap = -1.0;
    f.expect(FA_ERR_INVALID_ARGUMENT, "negative softcap", |_| {}, &bad);
    let lens = [-1i64];
    let mut bad = d;
    bad.kv_lengths = lens.as_ptr();
    f.expect(FA_ERR_INVALID_ARGUMENT, "negative key length", |_| {}, &bad);
    let lens = [4i64];
    bad.kv_lengths = lens.as_ptr();
    f.expect(FA_ERR_INVALID_ARGUMENT, "key length > Lk", |_| {}, &bad);

    // Extra outputs overlapping other arguments.
    let mut lse = [0.0f32; 6];
    let mut bad = d;
    bad.lse = f.q.as_mut_ptr();
    f.expect(FA_ERR_BAD_STRIDE, "lse overlapping q", |_| {}, &bad);
    let mut w = vec![0.0f32; 18];
    let mut wt = tensor(&mut w, [1, 2, 3, 3], dense_strides([1, 2, 3, 3]));
    wt.data = f.out.as_mut_ptr().cast();
    let mut bad = d;
    bad.weights = &mut wt;
    bad.lse = lse.as_mut_ptr();
    f.expect(FA_ERR_BAD_STRIDE, "weights overlapping out", |_| {}, &bad);
    let mut wt = tensor(&mut w, [1, 2, 3, 3], dense_strides([1, 2, 3, 3]));
    let mut good = d;
    good.weights = &mut wt;
    good.lse = lse.as_mut_ptr();
    f.expect(FA_OK, "weights and lse", |_| {}, &good);
}

#[test]
fn status_codes_are_distinct_and_negative() {
    use fa_status::*;
    let all = [
        FA_ERR_NULL_POINTER,
        FA_ERR_BAD_SHAPE,
        FA_ERR_BAD_STRIDE,
        FA_ERR_UNSUPPORTED_VARIANT,
        FA_ERR_ALLOC,
        FA_ERR_INTERNAL,
        FA_ERR_INVALID_ARGUMENT,
        FA_ERR_CACHE_FULL,
    ];
    let mut codes: Vec<c_int> = all.iter().map(|&s| code(s)).collect();
    assert!(codes.iter().all(|&c| c < 0));
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
    assert_eq!(code(FA_OK), 0);
}

#[test]
fn default_options_are_the_documented_ones() {
    // What `fa_sdpa_options_init` writes, into a struct full of garbage.
    // SAFETY: all-ones bytes are a valid fa_sdpa_options (plain data only).
    let mut o: fa_sdpa_options =
        unsafe { std::mem::transmute([0xffu8; size_of::<fa_sdpa_options>()]) };
    // SAFETY: `o` is a writable fa_sdpa_options of the size passed.
    let rc = unsafe { fa_sdpa_options_init(&mut o, size_of::<fa_sdpa_options>()) };
    assert_eq!(rc, 0);
    assert_eq!(o.struct_size, size_of::<fa_sdpa_options>());
    assert_eq!((o.scale, o.causal, o.softcap), (0.0, 0, 0.0));
    assert_eq!((o.window_left, o.window_right), (-1, -1));
    assert!(o.mask.is_null() && o.kv_lengths.is_null() && o.alibi_slopes.is_null());
    assert!(o.weights.is_null() && o.lse.is_null());
    let d = fa_sdpa_options::default();
    assert_eq!(format!("{o:?}"), format!("{d:?}"));
}

#[test]
fn abi_version_matches_the_header_constant() {
    assert_eq!(fa_abi_version(), FA_ABI_VERSION);
    let header = include_str!("../include/fastattn.h");
    assert!(header.contains(&format!("#define FA_ABI_VERSION {FA_ABI_VERSION}")));
}

#[test]
fn versioned_structs_refuse_a_size_they_do_not_know() {
    use fa_status::*;
    let full = size_of::<fa_sdpa_options>();
    let mut o = fa_sdpa_options::default();
    for bad in [0, 1, full - 1, full + 8] {
        // SAFETY: `o` is writable for `full` bytes; other sizes are refused before any
        // write (checked below: `o` stays the defaults).
        let rc = unsafe { fa_sdpa_options_init(&mut o, bad) };
        assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT), "size {bad}");
        assert_eq!(o.struct_size, full);
    }
    assert_eq!(
        // SAFETY: NULL is refused before any write.
        unsafe { fa_sdpa_options_init(null_mut(), full) },
        code(FA_ERR_NULL_POINTER)
    );

    // fa_sdpa refuses an uninitialised (zeroed) or a newer, larger options struct, and
    // names the init function.
    let mut x = vec![0.5f32; 4];
    let mut out = vec![0.0f32; 4];
    let t = tensor(&mut x, [1, 1, 1, 4], dense_strides([1, 1, 1, 4]));
    let mut to = tensor(&mut out, [1, 1, 1, 4], dense_strides([1, 1, 1, 4]));
    for size in [0, full + 8] {
        let bad = fa_sdpa_options {
            struct_size: size,
            ..fa_sdpa_options::default()
        };
        // SAFETY: valid tensors; the options are refused before any other field is read.
        let rc = unsafe { fa_sdpa(&t, &t, &t, &mut to, &bad) };
        assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT), "struct_size {size}");
        assert!(last_error().contains("struct_size"), "{}", last_error());
    }
    assert!(
        out.iter().all(|&v| v == 0.0),
        "a refused call wrote its output"
    );

    // The layer's structs follow the same rules.
    let mut cfg = fa_mha_config::default();
    let mut w = fa_mha_weights::default();
    // SAFETY: writable structs of the sizes passed.
    unsafe {
        assert_eq!(fa_mha_config_init(&mut cfg, size_of::<fa_mha_config>()), 0);
        assert_eq!(fa_mha_weights_init(&mut w, size_of::<fa_mha_weights>()), 0);
        assert_eq!(
            fa_mha_config_init(&mut cfg, 0),
            code(FA_ERR_INVALID_ARGUMENT)
        );
    }
    assert_eq!(
        (cfg.d_model, cfg.n_heads, cfg.rope, cfg.weight_dtype),
        (0, 0, 0, 0)
    );
    assert!(w.wq.is_null() && w.bo.is_null() && w.layout == 0);
    let zeroed = fa_mha_config {
        struct_size: 0,
        d_model: 8,
        n_heads: 2,
        ..cfg
    };
    let mut layer = null_mut();
    // SAFETY: valid pointers; the config is refused before use.
    let rc = unsafe { fa_mha_new_random(&zeroed, 0, 1, &mut layer) };
    assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT));
    assert!(layer.is_null());
    assert!(
        last_error().contains("fa_mha_config_init"),
        "{}",
        last_error()
    );
}

/// `C = alpha·op(A)·op(B) + beta·C` in f64 from accessor closures.
#[allow(clippy::too_many_arguments)]
fn gemm_naive(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    beta: f32,
    c: impl Fn(usize, usize) -> f32,
) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            let cij = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c(i, j) as f64
            };
            out[i * n + j] = alpha as f64 * s + cij;
        }
    }
    out
}

#[test]
fn cblas_sgemm_matches_naive_for_every_order_and_transpose() {
    let seed = 11;
    let mut rng = StdRng::seed_from_u64(seed);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 13), (17, 31, 2), (3, 4, 0), (33, 9, 61)] {
        for row_major in [true, false] {
            for ta in [CblasNoTrans, CblasTrans, CblasConjTrans] {
                for tb in [CblasNoTrans, CblasTrans] {
                    let (ar, ac) = if ta == CblasNoTrans { (m, k) } else { (k, m) };
                    let (br, bc) = if tb == CblasNoTrans { (k, n) } else { (n, k) };
                    let lead = |r: usize, c: usize| if row_major { c } else { r };
                    let (lda, ldb, ldc) = (
                        lead(ar, ac).max(1) + 2,
                        lead(br, bc).max(1) + 1,
                        lead(m, n).max(1) + 3,
                    );
                    let len = |r: usize, c: usize, ld: usize| ld * if row_major { r } else { c };
                    let a = rand_vec(&mut rng, len(ar, ac, lda));
                    let b = rand_vec(&mut rng, len(br, bc, ldb));
                    let mut c = rand_vec(&mut rng, len(m, n, ldc));
                    let idx = |i: usize, j: usize, ld: usize| {
                        if row_major {
                            i * ld + j
                        } else {
                            i + j * ld
                        }
                    };
                    let opa = |i, p| {
                        if ta == CblasNoTrans {
                            a[idx(i, p, lda)]
                        } else {
                            a[idx(p, i, lda)]
                        }
                    };
                    let opb = |p, j| {
                        if tb == CblasNoTrans {
                            b[idx(p, j, ldb)]
                        } else {
                            b[idx(j, p, ldb)]
                        }
                    };
                    let c0 = c.clone();
                    let want = gemm_naive(m, n, k, 0.75, opa, opb, -0.5, |i, j| c0[idx(i, j, ldc)]);
                    let order = if row_major {
                        CblasRowMajor
                    } else {
                        CblasColMajor
                    };
                    // SAFETY: the buffers hold the matrices their leading dimensions describe.
                    unsafe {
                        cblas_sgemm(
                            order,
                            ta,
                            tb,
                            m as c_int,
                            n as c_int,
                            k as c_int,
                            0.75,
                            a.as_ptr(),
                            lda as c_int,
                            b.as_ptr(),
                            ldb as c_int,
                            -0.5,
                            c.as_mut_ptr(),
                            ldc as c_int,
                        )
                    };
                    let label = format!(
                        "seed {seed} m={m} n={n} k={k} row_major={row_major} ta={ta} tb={tb}"
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let got = c[idx(i, j, ldc)] as f64;
                            let w = want[i * n + j];
                            assert!(
                                (got - w).abs() < 1e-4 * (k as f64 + 1.0),
                                "{label} ({i},{j}): {got} vs {w}"
                            );
                        }
                    }
                    // Padding between leading-dimension rows is untouched.
                    for (x, (y, z)) in c.iter().zip(c0.iter().zip(0..)) {
                        let (i, j) = if row_major {
                            (z / ldc, z % ldc)
                        } else {
                            (z % ldc, z / ldc)
                        };
                        if i >= m || j >= n {
                            assert_eq!(x.to_bits(), y.to_bits(), "{label}: padding written");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn cblas_sgemm_reports_bad_arguments_by_parameter_number() {
    let a = [1.0f32; 16];
    let b = [1.0f32; 16];
    let mut c = [7.0f32; 16];
    let cases: [(c_int, c_int, c_int, [c_int; 6], u32); 9] = [
        (0, CblasNoTrans, CblasNoTrans, [2, 2, 2, 2, 2, 2], 1),
        (CblasRowMajor, 0, CblasNoTrans, [2, 2, 2, 2, 2, 2], 2),
        (CblasRowMajor, CblasNoTrans, 114, [2, 2, 2, 2, 2, 2], 3),
        (
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            [-1, 2, 2, 2, 2, 2],
            4,
        ),
        (
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            [2, -1, 2, 2, 2, 2],
            5,
        ),
        (
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            [2, 2, -1, 2, 2, 2],
            6,
        ),
        (
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            [2, 2, 3, 2, 2, 2],
            9,
        ),
        (
            CblasColMajor,
            CblasNoTrans,
            CblasTrans,
            [2, 3, 2, 2, 2, 2],
            11,
        ),
        (
            CblasColMajor,
            CblasNoTrans,
            CblasNoTrans,
            [3, 2, 2, 3, 2, 2],
            14,
        ),
    ];
    for (order, ta, tb, [m, n, k, lda, ldb, ldc], param) in cases {
        // SAFETY: every case is refused before any matrix access.
        unsafe {
            cblas_sgemm(
                order,
                ta,
                tb,
                m,
                n,
                k,
                1.0,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                0.0,
                c.as_mut_ptr(),
                ldc,
            )
        };
        let e = last_error();
        assert!(
            e.starts_with("cblas_sgemm: ") && e.contains(&format!("parameter {param} ")),
            "parameter {param}: {e}"
        );
        assert!(c.iter().all(|&x| x == 7.0), "parameter {param}: C written");
    }
    // NULL A is refused too, and so is C overlapping A.
    // SAFETY: refused before any access.
    unsafe {
        cblas_sgemm(
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            2,
            2,
            2,
            1.0,
            null(),
            2,
            b.as_ptr(),
            2,
            0.0,
            c.as_mut_ptr(),
            2,
        )
    };
    assert!(last_error().contains("A is NULL"), "{}", last_error());
    // SAFETY: refused before any access.
    unsafe {
        cblas_sgemm(
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            2,
            2,
            2,
            1.0,
            c.as_ptr(),
            2,
            b.as_ptr(),
            2,
            0.0,
            c.as_mut_ptr(),
            2,
        )
    };
    assert!(last_error().contains("overlaps A"), "{}", last_error());
    assert!(c.iter().all(|&x| x == 7.0));
}

#[test]
fn cblas_sgemm_beta_semantics() {
    let a = [f32::NAN; 4];
    let b = [1.0f32; 4];
    // alpha = 0, beta = 1: C unchanged (quick return), NaN in A not read.
    let mut c = [3.0f32; 4];
    // SAFETY: 2x2 row-major matrices.
    unsafe {
        cblas_sgemm(
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            2,
            2,
            2,
            0.0,
            a.as_ptr(),
            2,
            b.as_ptr(),
            2,
            1.0,
            c.as_mut_ptr(),
            2,
        )
    };
    assert_eq!(c, [3.0; 4]);
    // beta = 0 does not read C: NaN in C disappears.
    let a = [1.0f32; 4];
    let mut c = [f32::NAN; 4];
    // SAFETY: 2x2 row-major matrices.
    unsafe {
        cblas_sgemm(
            CblasRowMajor,
            CblasNoTrans,
            CblasNoTrans,
            2,
            2,
            2,
            1.0,
            a.as_ptr(),
            2,
            b.as_ptr(),
            2,
            0.0,
            c.as_mut_ptr(),
            2,
        )
    };
    assert_eq!(c, [2.0; 4]);
    // K = 0 with NULL A and B: C = beta·C.
    let mut c = [4.0f32; 4];
    // SAFETY: A and B are not read when K = 0.
    unsafe {
        cblas_sgemm(
            CblasColMajor,
            CblasNoTrans,
            CblasNoTrans,
            2,
            2,
            0,
            1.0,
            null(),
            2,
            null(),
            1,
            0.5,
            c.as_mut_ptr(),
            2,
        )
    };
    assert_eq!(c, [2.0; 4]);
}

#[test]
fn fa_sgemm_matches_naive_with_negative_and_zero_strides() {
    let seed = 5;
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, k, n) = (9, 14, 6);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k);
    let mut c = vec![f32::NAN; m * n * 2];
    // A row-major, read bottom row first (negative row stride); B a broadcast column
    // (zero column stride); C column-major with a gap of m between columns.
    let a_last = a[(m - 1) * k..].as_ptr();
    // SAFETY: the strided views stay inside `a`, `b` and `c`.
    let rc = unsafe {
        fa_sgemm(
            m,
            k,
            n,
            1.0,
            a_last,
            -(k as isize),
            1,
            b.as_ptr(),
            1,
            0,
            0.0,
            c.as_mut_ptr(),
            1,
            (2 * m) as isize,
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    let want = gemm_naive(
        m,
        n,
        k,
        1.0,
        |i, p| a[(m - 1 - i) * k + p],
        |p, _| b[p],
        0.0,
        |_, _| 0.0,
    );
    for i in 0..m {
        for j in 0..n {
            let got = c[i + j * 2 * m] as f64;
            assert!(
                (got - want[i * n + j]).abs() < 1e-5,
                "seed {seed} ({i},{j})"
            );
            assert!(c[m + i + j * 2 * m].is_nan(), "gap written");
        }
    }
    // SAFETY: refused before any access (C aliases itself through a zero stride).
    let rc = unsafe {
        fa_sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            0,
            0.0,
            c.as_mut_ptr(),
            1,
            0,
        )
    };
    assert_eq!(rc, code(fa_status::FA_ERR_BAD_STRIDE));
    // SAFETY: m = 0: nothing is touched, NULL allowed.
    let rc = unsafe {
        fa_sgemm(
            0,
            3,
            3,
            1.0,
            null(),
            1,
            1,
            null(),
            1,
            1,
            0.0,
            null_mut(),
            1,
            1,
        )
    };
    assert_eq!(rc, OK);
}

#[test]
fn softmax_matches_naive_and_checks_its_arguments() {
    let seed = 3;
    let mut rng = StdRng::seed_from_u64(seed);
    let (rows, len) = (4, 29);
    let mut x: Vec<f32> = rand_vec(&mut rng, rows * len)
        .iter()
        .map(|v| v * 30.0)
        .collect();
    x[len..2 * len].fill(f32::NEG_INFINITY); // a fully masked row gives zeros
    let x0 = x.clone();
    // SAFETY: `x` holds rows·len values.
    assert_eq!(unsafe { fa_softmax(x.as_mut_ptr(), rows, len) }, OK);
    for r in 0..rows {
        let row = &x0[r * len..(r + 1) * len];
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
        for j in 0..len {
            let want = if mx == f64::NEG_INFINITY {
                0.0
            } else {
                (row[j] as f64 - mx).exp() / sum
            };
            assert!(
                (x[r * len + j] as f64 - want).abs() < 1e-6,
                "seed {seed} row {r} col {j}"
            );
        }
    }
    // SAFETY: refused before any access.
    let rc = unsafe { fa_softmax(null_mut(), 2, 2) };
    assert_eq!(rc, code(fa_status::FA_ERR_NULL_POINTER));
    // SAFETY: refused before any access.
    let rc = unsafe { fa_softmax(x.as_mut_ptr(), usize::MAX, 2) };
    assert_eq!(rc, code(fa_status::FA_ERR_BAD_SHAPE));
}

#[test]
fn last_error_is_per_thread_and_panics_are_caught() {
    assert_eq!(fa_test_panic_boundary(), code(fa_status::FA_ERR_INTERNAL));
    assert!(last_error().contains("panic"), "{}", last_error());
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
}

#[test]
fn version_is_the_crate_version() {
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(fa_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

// ------------------------------------------------------------------ element types

const DTYPES: [fa_dtype; 3] = [
    fa_dtype::FA_DTYPE_F32,
    fa_dtype::FA_DTYPE_F16,
    fa_dtype::FA_DTYPE_BF16,
];

/// Values of one element type (what a C caller's `fa_tensor::data` points to).
#[derive(Debug, Clone)]
enum Typed {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Typed {
    /// `vals` rounded to `dt`.
    fn new(dt: fa_dtype, vals: &[f32]) -> Typed {
        match dt {
            fa_dtype::FA_DTYPE_F32 => Typed::F32(vals.to_vec()),
            fa_dtype::FA_DTYPE_F16 => Typed::F16(vals.iter().map(|&x| f16::from_f32(x)).collect()),
            fa_dtype::FA_DTYPE_BF16 => {
                Typed::BF16(vals.iter().map(|&x| bf16::from_f32(x)).collect())
            }
            q => unreachable!("{q:?}: float types only (8-bit ones are in tests/quant.rs)"),
        }
    }

    fn dtype(&self) -> fa_dtype {
        match self {
            Typed::F32(_) => fa_dtype::FA_DTYPE_F32,
            Typed::F16(_) => fa_dtype::FA_DTYPE_F16,
            Typed::BF16(_) => fa_dtype::FA_DTYPE_BF16,
        }
    }

    fn ptr(&mut self) -> *mut c_void {
        match self {
            Typed::F32(v) => v.as_mut_ptr().cast(),
            Typed::F16(v) => v.as_mut_ptr().cast(),
            Typed::BF16(v) => v.as_mut_ptr().cast(),
        }
    }

    /// The C view of the values.
    fn tensor(&mut self, dims: [usize; 4], strides: [isize; 4]) -> fa_tensor {
        fa_tensor {
            data: self.ptr(),
            dims,
            strides,
            dtype: self.dtype() as i32,
        }
    }

    /// The Rust view of the values.
    fn as_dyn(&self, dims: [usize; 4], strides: [usize; 4]) -> DynTensor<'_> {
        match self {
            Typed::F32(v) => TensorRef::new(&v[..], dims, strides).unwrap().into(),
            Typed::F16(v) => TensorRef::new(&v[..], dims, strides).unwrap().into(),
            Typed::BF16(v) => TensorRef::new(&v[..], dims, strides).unwrap().into(),
        }
    }

    fn as_dyn_mut(&mut self, dims: [usize; 4]) -> DynTensorMut<'_> {
        match self {
            Typed::F32(v) => TensorMut::contiguous(&mut v[..], dims).unwrap().into(),
            Typed::F16(v) => TensorMut::contiguous(&mut v[..], dims).unwrap().into(),
            Typed::BF16(v) => TensorMut::contiguous(&mut v[..], dims).unwrap().into(),
        }
    }

    /// The bit patterns, for exact comparisons (NaN included).
    fn bits(&self) -> Vec<u32> {
        match self {
            Typed::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Typed::F16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
            Typed::BF16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
        }
    }

    fn widened(&self) -> Vec<f32> {
        match self {
            Typed::F32(v) => v.clone(),
            Typed::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Typed::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn sdpa_of_every_dtype_combination_equals_sdpa_into_dyn_bit_for_bit() {
    let seed = 17;
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, hq, hkv, lq, lk, d, dv) = (2, 4, 2, 5, 11, 8, 6);
    let (qd, kd, vd, od) = (
        [b, hq, lq, d],
        [b, hkv, lk, d],
        [b, hkv, lk, dv],
        [b, hq, lq, dv],
    );
    let wd = [b, hq, lq, lk];
    // Q in the [B, L, H, D] layout of model code; K, V dense.
    let q_strides = [(lq * hq * d) as isize, d as isize, (hq * d) as isize, 1];
    let q_vals = rand_vec(&mut rng, b * hq * lq * d);
    let k_vals = rand_vec(&mut rng, b * hkv * lk * d);
    let v_vals = rand_vec(&mut rng, b * hkv * lk * dv);
    let mut mask = rand_vec(&mut rng, lq * lk);
    mask[2] = f32::NEG_INFINITY;
    let lens = [lk as i64, 7];
    let lens_u = [lk, 7];
    let us = |s: [isize; 4]| s.map(|x| x as usize);
    let mut mask_c = mask.clone();
    let mt = tensor(&mut mask_c, [1, 1, lq, lk], [0, 0, lk as isize, 1]);
    let mut combos = 0;
    for qt in DTYPES {
        for kt in DTYPES {
            for vt in DTYPES {
                for ot in DTYPES {
                    // Two option sets: causal flash with key lengths and LSE; a mask with
                    // the weights (the materialised path).
                    for with_weights in [false, true] {
                        let label = format!(
                            "q {qt:?}, k {kt:?}, v {vt:?}, out {ot:?}, weights {with_weights} \
                             (seed {seed})"
                        );
                        let mut q = Typed::new(qt, &q_vals);
                        let mut k = Typed::new(kt, &k_vals);
                        let mut v = Typed::new(vt, &v_vals);
                        let nan = vec![f32::NAN; b * hq * lq * dv];
                        let mut out = Typed::new(ot, &nan);
                        let mut want_out = out.clone();
                        let mut lse = vec![f32::NAN; b * hq * lq];
                        let mut want_lse = lse.clone();
                        let mut w = vec![f32::NAN; b * hq * lq * lk];
                        let mut want_w = w.clone();
                        let mut wt = tensor(&mut w, wd, dense_strides(wd));

                        let mut o = fa_sdpa_options::default();
                        o.lse = lse.as_mut_ptr();
                        if with_weights {
                            o.mask = &mt;
                            o.weights = &mut wt;
                        } else {
                            o.causal = 1;
                            o.kv_lengths = lens.as_ptr();
                        }
                        let (tq, tk, tv) = (
                            q.tensor(qd, q_strides),
                            k.tensor(kd, dense_strides(kd)),
                            v.tensor(vd, dense_strides(vd)),
                        );
                        let mut to = out.tensor(od, dense_strides(od));
                        // SAFETY: every tensor describes a live buffer of its type and size;
                        // the outputs are distinct from each other and the inputs.
                        let rc = unsafe { fa_sdpa(&tq, &tk, &tv, &mut to, &o) };
                        assert_eq!(rc, OK, "{label}: {}", last_error());

                        let mut opts = SdpaOptions::default();
                        let mut extras = SdpaOutputs::default().with_lse(Some(&mut want_lse));
                        if with_weights {
                            opts = opts.with_mask(Some(Mask::Additive(
                                TensorRef::new(&mask, [1, 1, lq, lk], [0, 0, lk, 1]).unwrap(),
                            )));
                            extras = extras.with_weights(Some(
                                TensorMut::contiguous(&mut want_w, wd).unwrap(),
                            ));
                        } else {
                            opts = opts.with_causal(true).with_kv_lengths(Some(&lens_u[..]));
                        }
                        attention::sdpa_into_dyn(
                            q.as_dyn(qd, us(q_strides)),
                            k.as_dyn(kd, us(dense_strides(kd))),
                            v.as_dyn(vd, us(dense_strides(vd))),
                            want_out.as_dyn_mut(od),
                            &opts,
                            extras,
                        )
                        .unwrap();
                        assert_eq!(out.bits(), want_out.bits(), "{label}: output");
                        assert_eq!(bits(&lse), bits(&want_lse), "{label}: lse");
                        assert_eq!(bits(&w), bits(&want_w), "{label}: weights");
                        assert!(
                            out.widened().iter().all(|x| x.is_finite()),
                            "{label}: output not written"
                        );
                        combos += 1;
                    }
                }
            }
        }
    }
    assert_eq!(combos, 2 * 81);
}

#[test]
fn zero_filled_tensors_are_f32() {
    let dims = [1, 2, 3, 4];
    let mut rng = StdRng::seed_from_u64(5);
    let mut x = rand_vec(&mut rng, 24);
    let (mut out_zeroed, mut out_explicit) = (vec![0.0f32; 24], vec![0.0f32; 24]);
    let zeroed = |data: *mut f32| {
        // SAFETY: fa_tensor is plain data (a pointer, integers); all-zero bytes are valid.
        let mut t: fa_tensor = unsafe { std::mem::zeroed() };
        t.data = data.cast();
        t.dims = dims;
        t.strides = dense_strides(dims);
        t
    };
    let t = zeroed(x.as_mut_ptr());
    let mut to = zeroed(out_zeroed.as_mut_ptr());
    assert_eq!(t.dtype, fa_dtype::FA_DTYPE_F32 as i32);
    // SAFETY: dense f32 views of live buffers; out is distinct.
    let rc = unsafe { fa_sdpa(&t, &t, &t, &mut to, null()) };
    assert_eq!(rc, OK, "{}", last_error());
    let t = tensor(&mut x, dims, dense_strides(dims));
    let mut to = tensor(&mut out_explicit, dims, dense_strides(dims));
    // SAFETY: as above.
    let rc = unsafe { fa_sdpa(&t, &t, &t, &mut to, null()) };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(bits(&out_zeroed), bits(&out_explicit));
    // An all-zero tensor is an empty f32 view (C's `fa_tensor t = {0};`), accepted as such.
    let empty = fa_tensor::default();
    // SAFETY: plain data, as above.
    let mut empty_out: fa_tensor = unsafe { std::mem::zeroed() };
    // SAFETY: empty views reach no memory.
    let rc = unsafe { fa_sdpa(&empty, &empty, &empty, &mut empty_out, null()) };
    assert_eq!(rc, OK, "{}", last_error());
}

#[test]
fn unknown_dtypes_are_refused_naming_the_tensor_and_the_value() {
    use fa_status::*;
    let mut f = Fixture::new();
    let d = fa_sdpa_options::default();
    for bad in [6, -1, 255, i32::MIN] {
        for (i, name) in ["q", "k", "v", "out"].into_iter().enumerate() {
            f.expect(
                FA_ERR_INVALID_ARGUMENT,
                &format!("{name}->dtype = {bad}"),
                |t| t[i].dtype = bad,
                &d,
            );
            let msg = last_error();
            assert!(msg.contains(&format!("{name}->dtype is {bad}")), "{msg}");
            assert!(msg.contains("FA_DTYPE_BF16 (2)"), "{msg}");
        }
        // Even an empty view's dtype is checked.
        f.expect(
            FA_ERR_INVALID_ARGUMENT,
            "empty q with a bad dtype",
            |t| {
                t[0].dims[0] = 0;
                t[3].dims[0] = 0;
                t[0].dtype = bad;
            },
            &d,
        );
        let mut m = vec![0.0f32; 9];
        let mut mt = tensor(&mut m, [1, 1, 3, 3], [0, 0, 3, 1]);
        mt.dtype = bad;
        let mut o = d;
        o.mask = &mt;
        f.expect(FA_ERR_INVALID_ARGUMENT, "mask dtype", |_| {}, &o);
        assert!(
            last_error().contains(&format!("opts->mask->dtype is {bad}")),
            "{}",
            last_error()
        );
        let mut w = vec![0.0f32; 18];
        let mut wt = tensor(&mut w, [1, 2, 3, 3], dense_strides([1, 2, 3, 3]));
        wt.dtype = bad;
        let mut o = d;
        o.weights = &mut wt;
        f.expect(FA_ERR_INVALID_ARGUMENT, "weights dtype", |_| {}, &o);
        assert!(
            last_error().contains(&format!("opts->weights->dtype is {bad}")),
            "{}",
            last_error()
        );
        assert!(w.iter().all(|&x| x == 0.0), "refused weights were written");
    }
}

#[test]
fn masks_and_weights_must_be_f32() {
    use fa_status::*;
    let mut f = Fixture::new();
    let d = fa_sdpa_options::default();
    for dt in [fa_dtype::FA_DTYPE_F16, fa_dtype::FA_DTYPE_BF16] {
        let mut m = Typed::new(dt, &[0.0; 9]);
        let mt = m.tensor([1, 1, 3, 3], [0, 0, 3, 1]);
        let mut o = d;
        o.mask = &mt;
        f.expect(FA_ERR_INVALID_ARGUMENT, "16-bit mask", |_| {}, &o);
        let msg = last_error();
        assert!(msg.contains("opts->mask") && msg.contains("f32"), "{msg}");
        let mut w = Typed::new(dt, &[0.0; 18]);
        let mut wt = w.tensor([1, 2, 3, 3], dense_strides([1, 2, 3, 3]));
        let mut o = d;
        o.weights = &mut wt;
        f.expect(FA_ERR_INVALID_ARGUMENT, "16-bit weights", |_| {}, &o);
        let msg = last_error();
        assert!(
            msg.contains("opts->weights") && msg.contains("f32"),
            "{msg}"
        );
        assert!(
            w.widened().iter().all(|&x| x == 0.0),
            "refused weights written"
        );
    }
}

#[test]
fn sixteen_bit_data_are_checked_in_two_byte_elements() {
    use fa_status::*;
    let dims = DIMS; // 24 elements
    let s = dense_strides(dims);
    let mut rng = StdRng::seed_from_u64(9);
    let vals = rand_vec(&mut rng, 24);
    let mut q = vals.clone();
    let qt = tensor(&mut q, dims, s);
    // One buffer of 2 + 24 + 24 bf16 values: K at element 2 (4-byte aligned) or 1 (only
    // 2-byte aligned), the output right after it.
    let mut buf = vec![bf16::ZERO; 50];
    for (x, &v) in buf[2..26].iter_mut().zip(&vals) {
        *x = bf16::from_f32(v);
    }
    let base = buf.as_mut_ptr();
    let view = |off: usize, dtype: fa_dtype| fa_tensor {
        // SAFETY: pointer arithmetic only; `off <= 26` stays inside `buf`.
        data: unsafe { base.add(off) }.cast(),
        dims,
        strides: s,
        dtype: dtype as i32,
    };
    let bf = fa_dtype::FA_DTYPE_BF16;
    let run = |k: fa_tensor, out: fa_tensor| {
        let mut out = out;
        // SAFETY: the views lie inside `q` and `buf` (26 + 24 = 50 elements at most), or
        // are refused before any access.
        unsafe { fa_sdpa(&qt, &k, &k, &mut out, null()) }
    };
    // The output directly after K: disjoint at 2 bytes per element (at 4 they would not be).
    assert_eq!(run(view(2, bf), view(26, bf)), OK, "{}", last_error());
    let got: Vec<u16> = buf[26..50].iter().map(|x| x.to_bits()).collect();
    // The same through the Rust API.
    let k16: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut want = vec![bf16::ZERO; 24];
    attention::sdpa_into(
        TensorRef::contiguous(&q, dims).unwrap(),
        TensorRef::contiguous(&k16, dims).unwrap(),
        TensorRef::contiguous(&k16, dims).unwrap(),
        TensorMut::contiguous(&mut want, dims).unwrap(),
        &SdpaOptions::default(),
        SdpaOutputs::default(),
    )
    .unwrap();
    assert_eq!(got, want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    // One element earlier the output overlaps K's last element.
    buf[25..50].fill(bf16::from_f32(42.0));
    assert_eq!(run(view(2, bf), view(25, bf)), code(FA_ERR_BAD_STRIDE));
    assert!(last_error().contains("overlaps k"), "{}", last_error());
    assert!(buf[26..50].iter().all(|x| x.to_f32() == 42.0));
    // 2-byte alignment is enough for bf16 (K at element 1), not for f32.
    let k_odd = view(1, bf);
    assert_eq!(run(k_odd, view(26, bf)), OK, "{}", last_error());
    let f32_at_2 = view(1, fa_dtype::FA_DTYPE_F32);
    assert_eq!(run(f32_at_2, view(26, bf)), code(FA_ERR_INVALID_ARGUMENT));
    assert!(
        last_error().contains("aligned to 4 bytes"),
        "{}",
        last_error()
    );
    // One byte off is misaligned for a 16-bit type too.
    let mut odd = view(2, bf);
    // SAFETY: pointer arithmetic only; one byte into `buf`; refused before any access.
    odd.data = unsafe { odd.data.cast::<u8>().add(1) }.cast();
    assert_eq!(run(odd, view(26, bf)), code(FA_ERR_INVALID_ARGUMENT));
    assert!(
        last_error().contains("k->data is not aligned to 2 bytes"),
        "{}",
        last_error()
    );
    let mut out_odd = view(26, fa_dtype::FA_DTYPE_F16);
    // SAFETY: pointer arithmetic only; as above.
    out_odd.data = unsafe { out_odd.data.cast::<u8>().add(1) }.cast();
    assert_eq!(run(view(2, bf), out_odd), code(FA_ERR_INVALID_ARGUMENT));
}
