//! The backward pass against the f64 reference gradients, the reference against finite
//! differences, and determinism, dtypes, strides, masked rows and bad input.

use fastattn_attention::reference::{sdpa_backward_ref, sdpa_ref};
use fastattn_attention::{
    bf16, f16, sdpa_backward, sdpa_backward_into, sdpa_into, AttnError, Element, Gradients, Mask,
    SdpaGrads, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::{Isa, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{assert_close_scaled, numel, rand_vec, MaskKind, SdpaCase};

/// The data and option buffers of a case (the options borrow them).
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    lens: Vec<usize>,
    bool_mask: Vec<bool>,
    add_mask: Vec<f32>,
    slopes: Vec<f32>,
}

impl Data {
    fn new(c: &SdpaCase) -> Self {
        let mut rng = StdRng::seed_from_u64(c.seed);
        let (qd, kd, vd, od) = c.dims();
        Data {
            q: rand_vec(&mut rng, numel(qd)),
            k: rand_vec(&mut rng, numel(kd)),
            v: rand_vec(&mut rng, numel(vd)),
            g: rand_vec(&mut rng, numel(od)),
            lens: c.key_lengths(),
            bool_mask: (0..c.lq * c.lk).map(|_| rng.random_bool(0.7)).collect(),
            add_mask: (0..c.lq * c.lk)
                .map(|_| {
                    if rng.random_bool(0.2) {
                        f32::NEG_INFINITY
                    } else {
                        rng.random_range(-2.0..2.0)
                    }
                })
                .collect(),
            slopes: (0..c.hq).map(|h| 0.5f32.powi(h as i32 + 1)).collect(),
        }
    }

    fn opts(&self, c: &SdpaCase) -> SdpaOptions<'_> {
        let m2 = [1, 1, c.lq, c.lk];
        let ms = [0, 0, c.lk, 1];
        let mask = match c.mask {
            MaskKind::Bool => Some(Mask::Bool(TensorRef::new(&self.bool_mask, m2, ms).unwrap())),
            MaskKind::Additive => Some(Mask::Additive(
                TensorRef::new(&self.add_mask, m2, ms).unwrap(),
            )),
            _ => None,
        };
        SdpaOptions::default()
            .with_causal(c.mask == MaskKind::Causal)
            .with_mask(mask)
            .with_kv_lengths(c.padding.then_some(&self.lens[..]))
            .with_window_left(c.window.and_then(|w| w.0))
            .with_window_right(c.window.and_then(|w| w.1))
            .with_alibi_slopes(c.alibi.then_some(&self.slopes[..]))
            .with_softcap(c.softcap)
    }
}

fn view<T: Element>(blhd: bool, data: &[T], dims: [usize; 4]) -> TensorRef<'_, T> {
    if blhd {
        TensorRef::from_blhd(data, dims).unwrap()
    } else {
        TensorRef::contiguous(data, dims).unwrap()
    }
}

/// The forward's output and LSE.
fn forward(c: &SdpaCase, d: &Data, opts: &SdpaOptions<'_>) -> (Vec<f32>, Vec<f32>) {
    let (qd, kd, vd, od) = c.dims();
    let mut o = vec![0.0f32; numel(od)];
    let mut lse = vec![0.0f32; c.b * c.hq * c.lq];
    sdpa_into(
        view(c.blhd, &d.q, qd),
        view(c.blhd, &d.k, kd),
        view(c.blhd, &d.v, vd),
        if c.blhd {
            TensorMut::from_blhd(&mut o, od).unwrap()
        } else {
            TensorMut::contiguous(&mut o, od).unwrap()
        },
        opts,
        SdpaOutputs::default().with_lse(Some(&mut lse)),
    )
    .unwrap();
    (o, lse)
}

/// Gradients through the fast path, as contiguous `[B, H, L, D]` (strided views for blhd).
fn backward(c: &SdpaCase, d: &Data, opts: &SdpaOptions<'_>) -> Gradients {
    let (qd, kd, vd, od) = c.dims();
    let (o, lse) = forward(c, d, opts);
    if !c.blhd {
        return sdpa_backward(
            view(false, &d.q, qd),
            view(false, &d.k, kd),
            view(false, &d.v, vd),
            view(false, &o, od),
            view(false, &d.g, od),
            &lse,
            opts,
        )
        .unwrap();
    }
    // Strided inputs and gradients: [B, L, H, D] buffers.
    let (mut dq, mut dk, mut dv) = (
        vec![f32::NAN; numel(qd)],
        vec![f32::NAN; numel(kd)],
        vec![f32::NAN; numel(vd)],
    );
    sdpa_backward_into(
        view(true, &d.q, qd),
        view(true, &d.k, kd),
        view(true, &d.v, vd),
        view(true, &o, od),
        view(true, &d.g, od),
        &lse,
        SdpaGrads::new(
            TensorMut::from_blhd(&mut dq, qd).unwrap(),
            TensorMut::from_blhd(&mut dk, kd).unwrap(),
            TensorMut::from_blhd(&mut dv, vd).unwrap(),
        ),
        opts,
    )
    .unwrap();
    let to_bhld = |buf: &[f32], dims: [usize; 4]| -> Vec<f32> {
        let t = TensorRef::from_blhd(buf, dims).unwrap();
        let mut out = Vec::with_capacity(numel(dims));
        for b in 0..dims[0] {
            for h in 0..dims[1] {
                for l in 0..dims[2] {
                    for x in 0..dims[3] {
                        out.push(t.get(b, h, l, x));
                    }
                }
            }
        }
        out
    };
    let mut g = sdpa_backward_ref(
        view(true, &d.q, qd),
        view(true, &d.k, kd),
        view(true, &d.v, vd),
        view(true, &d.g, od),
        opts,
    )
    .unwrap();
    g.dq = to_bhld(&dq, qd);
    g.dk = to_bhld(&dk, kd);
    g.dv = to_bhld(&dv, vd);
    g
}

/// Runs `c` on every variant and compares with the reference gradients.
fn check(c: &SdpaCase) {
    let data = Data::new(c);
    let base = data.opts(c);
    let (qd, kd, vd, od) = c.dims();
    let want = sdpa_backward_ref(
        view(c.blhd, &data.q, qd),
        view(c.blhd, &data.k, kd),
        view(c.blhd, &data.v, vd),
        view(c.blhd, &data.g, od),
        &base,
    )
    .unwrap();
    let tol = 3e-5 * (1.0 + (c.lq.max(c.lk) as f32).sqrt());
    for isa in Isa::available() {
        let opts = base.clone().with_isa(Some(isa));
        let g = backward(c, &data, &opts);
        let label = format!("{c:?} isa={isa}");
        assert_close_scaled(format!("{label} dq"), &g.dq, &want.dq, tol);
        assert_close_scaled(format!("{label} dk"), &g.dk, &want.dk, tol);
        assert_close_scaled(format!("{label} dv"), &g.dv, &want.dv, tol);
    }
}

#[test]
fn backward_matches_ref_over_shapes() {
    let mut seed = 0;
    for &(b, hq, hkv, lq, lk, d, dv) in &[
        (1, 1, 1, 1, 1, 1, 1),
        (1, 1, 1, 1, 7, 4, 4),
        (1, 2, 2, 5, 5, 8, 8),
        (2, 3, 1, 13, 17, 5, 3),
        (1, 4, 2, 31, 29, 16, 16),
        (1, 2, 1, 130, 131, 9, 7),
        (1, 1, 1, 257, 300, 32, 32),
        (2, 2, 2, 129, 127, 64, 64),
        // Several key chunks per head (their dQ shares are summed).
        (1, 2, 1, 50, 2100, 8, 8),
        (1, 1, 1, 3, 0, 4, 4),
        (1, 1, 1, 0, 5, 4, 4),
        (1, 2, 1, 6, 9, 0, 3),
        (1, 2, 1, 6, 9, 3, 0),
    ] {
        seed += 1;
        let mut c = SdpaCase::new(b, hq, hkv, lq, lk, d, dv);
        c.seed = seed;
        check(&c);
        c.blhd = true;
        check(&c);
    }
}

#[test]
fn backward_matches_ref_for_every_option() {
    let mut seed = 100;
    let shapes = [
        (2, 4, 2, 37, 37, 16, 16),
        (1, 2, 1, 150, 260, 8, 12),
        (1, 1, 1, 60, 1500, 4, 4),
    ];
    for &(b, hq, hkv, lq, lk, d, dv) in &shapes {
        for mask in [
            MaskKind::None,
            MaskKind::Causal,
            MaskKind::Bool,
            MaskKind::Additive,
        ] {
            for (padding, window, alibi, softcap) in [
                (false, None, false, None),
                (true, None, false, None),
                (false, Some((Some(9), Some(3))), false, None),
                (false, Some((Some(0), None)), false, None),
                (false, None, true, None),
                (false, None, false, Some(0.7)),
                (true, Some((Some(20), Some(0))), true, Some(5.0)),
            ] {
                seed += 1;
                let mut c = SdpaCase::new(b, hq, hkv, lq, lk, d, dv);
                c.mask = mask;
                c.padding = padding;
                c.window = window;
                c.alibi = alibi;
                c.softcap = softcap;
                c.seed = seed;
                c.blhd = seed % 3 == 0;
                check(&c);
            }
        }
    }
}

fn buf(d: &mut Data, which: usize) -> &mut Vec<f32> {
    match which {
        0 => &mut d.q,
        1 => &mut d.k,
        _ => &mut d.v,
    }
}

/// `Σ O ∘ G` in f64 from the reference forward.
fn loss(c: &SdpaCase, d: &Data, opts: &SdpaOptions<'_>) -> f64 {
    let (qd, kd, vd, _) = c.dims();
    let r = sdpa_ref(
        view(false, &d.q, qd),
        view(false, &d.k, kd),
        view(false, &d.v, vd),
        opts,
    )
    .unwrap();
    r.out
        .iter()
        .zip(&d.g)
        .map(|(&o, &g)| o as f64 * g as f64)
        .sum()
}

#[test]
fn reference_gradients_match_finite_differences() {
    let mut seed = 500;
    for (mask, padding, window, alibi, softcap) in [
        (MaskKind::None, false, None, false, None),
        (MaskKind::Causal, false, None, false, None),
        (MaskKind::Additive, false, None, true, None),
        (MaskKind::Bool, true, None, false, Some(1.5)),
        (
            MaskKind::None,
            false,
            Some((Some(2), Some(1))),
            false,
            Some(0.8),
        ),
    ] {
        seed += 1;
        let mut c = SdpaCase::new(1, 2, 1, 5, 6, 3, 4);
        c.mask = mask;
        c.padding = padding;
        c.window = window;
        c.alibi = alibi;
        c.softcap = softcap;
        c.seed = seed;
        let mut data = Data::new(&c);
        let (qd, kd, vd, od) = c.dims();
        let want = {
            let opts = data.opts(&c);
            sdpa_backward_ref(
                view(false, &data.q, qd),
                view(false, &data.k, kd),
                view(false, &data.v, vd),
                view(false, &data.g, od),
                &opts,
            )
            .unwrap()
        };
        let eps = 1e-2f32;
        for which in 0..3 {
            let n = [numel(qd), numel(kd), numel(vd)][which];
            for idx in 0..n {
                let x0 = buf(&mut data, which)[idx];
                buf(&mut data, which)[idx] = x0 + eps;
                let hi_x = buf(&mut data, which)[idx];
                let hi = loss(&c, &data, &data.opts(&c));
                buf(&mut data, which)[idx] = x0 - eps;
                let lo_x = buf(&mut data, which)[idx];
                let lo = loss(&c, &data, &data.opts(&c));
                buf(&mut data, which)[idx] = x0;
                let fd = (hi - lo) / (hi_x - lo_x) as f64;
                let an = [&want.dq, &want.dk, &want.dv][which][idx] as f64;
                assert!(
                    (fd - an).abs() <= 2e-3 * (1.0 + an.abs()),
                    "{c:?} grad {which}[{idx}]: finite difference {fd}, reference {an}"
                );
            }
        }
    }
}

#[test]
fn gradients_are_bit_identical_at_1_2_3_threads() {
    let mut c = SdpaCase::new(2, 4, 2, 300, 333, 32, 32);
    c.mask = MaskKind::Causal;
    c.softcap = Some(3.0);
    let data = Data::new(&c);
    let opts = data.opts(&c).with_parallelism(Parallelism::Rayon);
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        results.push(pool.install(|| backward(&c, &data, &opts)));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for r in &results[1..] {
        assert_eq!(bits(&r.dq), bits(&results[0].dq));
        assert_eq!(bits(&r.dk), bits(&results[0].dk));
        assert_eq!(bits(&r.dv), bits(&results[0].dv));
    }
}

#[test]
fn fully_masked_rows_and_unseen_keys_give_zero_gradients() {
    // Batch 0 has no valid key at all; batch 1 sees 3 of 8.
    let mut c = SdpaCase::new(2, 2, 2, 4, 8, 4, 4);
    c.padding = true;
    let mut data = Data::new(&c);
    data.lens = vec![0, 3];
    let opts = data.opts(&c);
    let g = backward(&c, &data, &opts);
    assert!(g.dq.iter().chain(&g.dk).chain(&g.dv).all(|x| x.is_finite()));
    let per_head = 4 * 4;
    // Batch 0: every gradient is zero.
    assert!(g.dq[..2 * per_head].iter().all(|&x| x == 0.0));
    assert!(g.dk[..2 * 8 * 4].iter().all(|&x| x == 0.0));
    assert!(g.dv[..2 * 8 * 4].iter().all(|&x| x == 0.0));
    // Batch 1: keys 3.. are padding, their dK and dV are zero.
    for h in 0..2 {
        for j in 3..8 {
            let base = ((2 + h) * 8 + j) * 4;
            assert!(g.dk[base..base + 4].iter().all(|&x| x == 0.0));
            assert!(g.dv[base..base + 4].iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn a_nonfinite_key_or_value_row_no_query_can_see_changes_nothing() {
    let mut c = SdpaCase::new(1, 2, 1, 70, 200, 8, 8);
    c.padding = true;
    c.mask = MaskKind::Causal;
    let mut data = Data::new(&c);
    data.lens = vec![150];
    let cleans: Vec<Gradients> = Isa::available()
        .into_iter()
        .map(|isa| backward(&c, &data, &data.opts(&c).with_isa(Some(isa))))
        .collect();
    // Key rows past the valid length hold garbage (a KV cache's unused rows).
    for j in [150, 151, 199] {
        for x in 0..8 {
            data.k[j * 8 + x] = f32::NAN;
            data.v[j * 8 + x] = f32::INFINITY;
        }
    }
    for (isa, clean) in Isa::available().into_iter().zip(&cleans) {
        let dirty = backward(&c, &data, &data.opts(&c).with_isa(Some(isa)));
        // dK and dV of the garbage rows are 0 (no query sees them); nothing else changes
        // beyond rounding (the forward's P·V of such a block skips zero weights instead of
        // running the GEMM, so O, and with it D = rowsum(dO ∘ O), may round differently).
        for (what, g, w) in [
            ("dq", &dirty.dq, &clean.dq),
            ("dk", &dirty.dk, &clean.dk),
            ("dv", &dirty.dv, &clean.dv),
        ] {
            assert_close_scaled(format!("isa={isa} {what}"), g, w, 1e-6);
        }
        for j in 150..200 {
            assert!(dirty.dk[j * 8..(j + 1) * 8].iter().all(|&x| x == 0.0));
            assert!(dirty.dv[j * 8..(j + 1) * 8].iter().all(|&x| x == 0.0));
        }
    }
}

fn to<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn check_dtypes<Q: Element, K: Element, V: Element>() {
    let mut c = SdpaCase::new(1, 4, 2, 67, 140, 16, 16);
    c.mask = MaskKind::Causal;
    let data = Data::new(&c);
    let (qd, kd, vd, od) = c.dims();
    let (q, k, v) = (to::<Q>(&data.q), to::<K>(&data.k), to::<V>(&data.v));
    let opts = data.opts(&c);
    let (tq, tk, tv) = (
        TensorRef::contiguous(&q, qd).unwrap(),
        TensorRef::contiguous(&k, kd).unwrap(),
        TensorRef::contiguous(&v, vd).unwrap(),
    );
    let mut o = vec![0.0f32; numel(od)];
    let mut lse = vec![0.0f32; c.b * c.hq * c.lq];
    sdpa_into(
        tq,
        tk,
        tv,
        TensorMut::contiguous(&mut o, od).unwrap(),
        &opts,
        SdpaOutputs::default().with_lse(Some(&mut lse)),
    )
    .unwrap();
    // A 16-bit O and dO, as a 16-bit model's autograd hands them over.
    let (o16, g16) = (to::<V>(&o), to::<Q>(&data.g));
    let got = sdpa_backward(
        tq,
        tk,
        tv,
        TensorRef::contiguous(&o16, od).unwrap(),
        TensorRef::contiguous(&g16, od).unwrap(),
        &lse,
        &opts,
    )
    .unwrap();
    let want =
        sdpa_backward_ref(tq, tk, tv, TensorRef::contiguous(&g16, od).unwrap(), &opts).unwrap();
    let label = format!("{:?}/{:?}/{:?}", Q::DTYPE, K::DTYPE, V::DTYPE);
    // A 16-bit O shifts D = rowsum(dO ∘ O) by its rounding (bf16: 2⁻⁹ relative).
    let tol = if V::DTYPE == kernels::DType::F32 {
        5e-4
    } else {
        2e-2
    };
    assert_close_scaled(format!("{label} dq"), &got.dq, &want.dq, tol);
    assert_close_scaled(format!("{label} dk"), &got.dk, &want.dk, tol);
    assert_close_scaled(format!("{label} dv"), &got.dv, &want.dv, tol);
}

#[test]
fn sixteen_bit_inputs_give_f32_gradients_of_their_values() {
    check_dtypes::<f32, f32, f32>();
    check_dtypes::<bf16, bf16, bf16>();
    check_dtypes::<f16, f16, f16>();
    check_dtypes::<f32, bf16, bf16>();
    check_dtypes::<f16, f32, bf16>();
}

#[test]
fn bad_input_gets_the_forwards_errors() {
    let c = SdpaCase::new(1, 2, 1, 4, 5, 3, 3);
    let data = Data::new(&c);
    let (qd, kd, vd, od) = c.dims();
    let opts = data.opts(&c);
    let (q, k, v) = (
        view(false, &data.q, qd),
        view(false, &data.k, kd),
        view(false, &data.v, vd),
    );
    let o = vec![0.0f32; numel(od)];
    let lse = vec![0.0f32; 8];
    let to = TensorRef::contiguous(&o, od).unwrap();
    let g = TensorRef::contiguous(&data.g, od).unwrap();
    // Wrong LSE length.
    assert!(matches!(
        sdpa_backward(q, k, v, to, g, &lse[..7], &opts),
        Err(AttnError::Shape { .. })
    ));
    // dO of the wrong shape.
    let g_bad = TensorRef::contiguous(&data.g[..12], [1, 1, 4, 3]).unwrap();
    assert!(matches!(
        sdpa_backward(q, k, v, to, g_bad, &lse, &opts),
        Err(AttnError::Shape { .. })
    ));
    // The forward's errors: head groups, options.
    let q3 = vec![0.0f32; 3 * 4 * 3];
    let tq3 = TensorRef::contiguous(&q3, [1, 3, 4, 3]).unwrap();
    assert!(sdpa_backward(tq3, k, v, to, g, &lse, &opts).is_err());
    let bad = opts.clone().with_softcap(-1.0);
    assert!(matches!(
        sdpa_backward(q, k, v, to, g, &lse, &bad),
        Err(AttnError::Option { .. })
    ));
    // Gradient views of the wrong shape.
    let (mut dq, mut dk, mut dv) = (vec![0.0; 24], vec![0.0; 15], vec![0.0; 14]);
    let r = sdpa_backward_into(
        q,
        k,
        v,
        to,
        g,
        &lse,
        SdpaGrads::new(
            TensorMut::contiguous(&mut dq, qd).unwrap(),
            TensorMut::contiguous(&mut dk, kd).unwrap(),
            TensorMut::contiguous(&mut dv, [1, 1, 7, 2]).unwrap(),
        ),
        &opts,
    );
    assert!(matches!(r, Err(AttnError::Shape { .. })));
}
