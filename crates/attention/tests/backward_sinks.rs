//! The backward pass with attention sinks: gradients with respect to Q, K, V and the sink
//! logits against the f64 reference and against central finite differences of the f64
//! reference forward, on every ISA variant, with GQA, causal, window, soft-cap, a sink of
//! `-inf`, rows with no visible key, f32 and bf16 inputs, and bit-identical results at
//! 1, 2 and 3 threads.

use fastattn_attention::reference::{sdpa_backward_ref, sdpa_ref};
use fastattn_attention::{
    bf16, sdpa_backward, sdpa_backward_into, sdpa_into, AttnError, Element, Gradients, SdpaGrads,
    SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::Parallelism;
use testutil::{assert_close_scaled, numel, rand_vec, seeded, MaskKind, SdpaCase};

/// The data of a case: Q, K, V, dO, key lengths and sink logits (the options borrow them).
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    lens: Vec<usize>,
    sinks: Vec<f32>,
}

impl Data {
    /// Random data; head 1's sink is `-inf` (no sink) when there are at least 2 heads.
    fn new(c: &SdpaCase) -> Self {
        let mut rng = seeded(c.seed);
        let (qd, kd, vd, od) = c.dims();
        let mut sinks = rand_vec(&mut rng, c.hq);
        if c.hq > 1 {
            sinks[1] = f32::NEG_INFINITY;
        }
        Data {
            q: rand_vec(&mut rng, numel(qd)),
            k: rand_vec(&mut rng, numel(kd)),
            v: rand_vec(&mut rng, numel(vd)),
            g: rand_vec(&mut rng, numel(od)),
            lens: c.key_lengths(),
            sinks,
        }
    }

    fn opts(&self, c: &SdpaCase) -> SdpaOptions<'_> {
        SdpaOptions::default()
            .with_causal(c.mask == MaskKind::Causal)
            .with_kv_lengths(c.padding.then_some(&self.lens[..]))
            .with_window_left(c.window.and_then(|w| w.0))
            .with_window_right(c.window.and_then(|w| w.1))
            .with_softcap(c.softcap)
            .with_sinks(Some(&self.sinks))
    }
}

/// A `TensorRef::contiguous` view of `x`.
fn t<T: Element>(x: &[T], dims: [usize; 4]) -> TensorRef<'_, T> {
    TensorRef::contiguous(x, dims).unwrap()
}

fn to<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

/// Forward (for O and the LSE) and backward through the fast path, on inputs rounded to
/// `T` (O and dO too, as a 16-bit model's autograd hands them over).
fn fast<T: Element>(c: &SdpaCase, d: &Data, opts: &SdpaOptions<'_>) -> Gradients {
    let (qd, kd, vd, od) = c.dims();
    let (q, k, v, g) = (to::<T>(&d.q), to::<T>(&d.k), to::<T>(&d.v), to::<T>(&d.g));
    let mut o = vec![0.0f32; numel(od)];
    let mut lse = vec![0.0f32; c.b * c.hq * c.lq];
    sdpa_into(
        t(&q, qd),
        t(&k, kd),
        t(&v, vd),
        TensorMut::contiguous(&mut o, od).unwrap(),
        opts,
        SdpaOutputs::default().with_lse(Some(&mut lse)),
    )
    .unwrap();
    let o = to::<T>(&o);
    sdpa_backward(
        t(&q, qd),
        t(&k, kd),
        t(&v, vd),
        t(&o, od),
        t(&g, od),
        &lse,
        opts,
    )
    .unwrap()
}

/// The f64 reference gradients on the inputs rounded to `T`.
fn reference<T: Element>(c: &SdpaCase, d: &Data, opts: &SdpaOptions<'_>) -> Gradients {
    let (qd, kd, vd, od) = c.dims();
    let (q, k, v, g) = (to::<T>(&d.q), to::<T>(&d.k), to::<T>(&d.v), to::<T>(&d.g));
    sdpa_backward_ref(t(&q, qd), t(&k, kd), t(&v, vd), t(&g, od), opts).unwrap()
}

/// The cases: GQA, causal, window, soft-cap, ragged key lengths (with causal or a window,
/// the first rows of a short batch see no key and only the sink), no keys at all, several
/// key chunks.
fn cases() -> Vec<SdpaCase> {
    let mut out = Vec::new();
    let mut seed = 3000;
    for &(b, hq, hkv, lq, lk, d, dv) in &[
        (1, 1, 1, 1, 1, 1, 1),
        (2, 4, 2, 13, 17, 5, 3),
        (1, 2, 1, 130, 131, 16, 8),
        (1, 2, 1, 40, 1100, 8, 8),
        (1, 2, 1, 6, 0, 4, 4),
        (1, 2, 1, 0, 5, 4, 4),
    ] {
        for (mask, padding, window, softcap) in [
            (MaskKind::None, false, None, None),
            (MaskKind::Causal, false, None, None),
            (MaskKind::Causal, true, None, Some(2.0)),
            (MaskKind::None, false, Some((Some(4), Some(2))), None),
            (MaskKind::None, true, Some((Some(0), Some(0))), Some(0.9)),
        ] {
            seed += 1;
            let mut c = SdpaCase::new(b, hq, hkv, lq, lk, d, dv);
            c.mask = mask;
            c.padding = padding;
            c.window = window;
            c.softcap = softcap;
            c.seed = seed;
            out.push(c);
        }
    }
    out
}

fn compare(label: &str, got: &Gradients, want: &Gradients, tol: f32) {
    assert_close_scaled(format!("{label} dq"), &got.dq, &want.dq, tol);
    assert_close_scaled(format!("{label} dk"), &got.dk, &want.dk, tol);
    assert_close_scaled(format!("{label} dv"), &got.dv, &want.dv, tol);
    assert_close_scaled(format!("{label} dsinks"), &got.dsinks, &want.dsinks, tol);
}

#[test]
fn sink_gradients_match_ref_on_every_variant() {
    for c in cases() {
        let data = Data::new(&c);
        let base = data.opts(&c);
        let want = reference::<f32>(&c, &data, &base);
        assert_eq!(want.dsinks.len(), c.hq);
        if c.hq > 1 {
            assert_eq!(want.dsinks[1], 0.0, "{c:?}: a sink of -inf has no gradient");
        }
        let tol = 3e-5 * (1.0 + (c.lq.max(c.lk) as f32).sqrt());
        for isa in testutil::variants() {
            let g = fast::<f32>(&c, &data, &base.clone().with_isa(Some(isa)));
            compare(&format!("{c:?} isa={isa}"), &g, &want, tol);
            if c.hq > 1 {
                assert_eq!(g.dsinks[1], 0.0, "{c:?} isa={isa}: -inf sink");
            }
        }
    }
}

#[test]
fn bf16_inputs_with_sinks_match_ref_of_their_values() {
    for c in cases() {
        let data = Data::new(&c);
        let opts = data.opts(&c);
        let want = reference::<bf16>(&c, &data, &opts);
        for isa in testutil::variants() {
            let g = fast::<bf16>(&c, &data, &opts.clone().with_isa(Some(isa)));
            // A bf16 O shifts D = rowsum(dO ∘ O) by its rounding (2⁻⁹ relative).
            compare(&format!("{c:?} bf16 isa={isa}"), &g, &want, 2e-2);
        }
    }
}

/// `Σ O ∘ G` in f64 from the reference forward.
fn loss(c: &SdpaCase, d: &Data) -> f64 {
    let (qd, kd, vd, _) = c.dims();
    let r = sdpa_ref(t(&d.q, qd), t(&d.k, kd), t(&d.v, vd), &d.opts(c)).unwrap();
    r.out
        .iter()
        .zip(&d.g)
        .map(|(&o, &g)| o as f64 * g as f64)
        .sum()
}

fn buf(d: &mut Data, which: usize) -> &mut Vec<f32> {
    match which {
        0 => &mut d.q,
        1 => &mut d.k,
        2 => &mut d.v,
        _ => &mut d.sinks,
    }
}

#[test]
fn sink_gradients_match_finite_differences() {
    let mut seed = 4000;
    for (mask, padding, window, softcap) in [
        (MaskKind::None, false, None, None),
        (MaskKind::Causal, false, None, None),
        (MaskKind::Causal, true, None, Some(1.5)),
        (MaskKind::None, false, Some((Some(2), Some(1))), Some(0.8)),
    ] {
        seed += 1;
        // GQA 4/2; with padding, batch 0 has 2 keys and its first causal rows see none
        // (only the sink).
        let mut c = SdpaCase::new(2, 4, 2, 5, 6, 3, 4);
        c.mask = mask;
        c.padding = padding;
        c.window = window;
        c.softcap = softcap;
        c.seed = seed;
        let mut data = Data::new(&c);
        let want = reference::<f32>(&c, &data, &data.opts(&c));
        let got = fast::<f32>(&c, &data, &data.opts(&c));
        let (qd, kd, vd, _) = c.dims();
        let eps = 1e-2f32;
        for which in 0..4 {
            let n = [numel(qd), numel(kd), numel(vd), c.hq][which];
            for idx in 0..n {
                let x0 = buf(&mut data, which)[idx];
                if x0 == f32::NEG_INFINITY {
                    continue; // the -inf sink: checked to be 0 above
                }
                buf(&mut data, which)[idx] = x0 + eps;
                let hi_x = buf(&mut data, which)[idx];
                let hi = loss(&c, &data);
                buf(&mut data, which)[idx] = x0 - eps;
                let lo_x = buf(&mut data, which)[idx];
                let lo = loss(&c, &data);
                buf(&mut data, which)[idx] = x0;
                let fd = (hi - lo) / (hi_x - lo_x) as f64;
                for (what, g) in [("reference", &want), ("fast", &got)] {
                    let an = [&g.dq, &g.dk, &g.dv, &g.dsinks][which][idx] as f64;
                    assert!(
                        (fd - an).abs() <= 2e-3 * (1.0 + an.abs()),
                        "{c:?} grad {which}[{idx}]: finite difference {fd}, {what} {an}"
                    );
                }
            }
        }
    }
}

#[test]
fn sink_gradients_are_bit_identical_at_1_2_3_threads() {
    let mut c = SdpaCase::new(2, 4, 2, 300, 1333, 32, 32);
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
        results.push(pool.install(|| fast::<f32>(&c, &data, &opts)));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for r in &results[1..] {
        assert_eq!(bits(&r.dq), bits(&results[0].dq));
        assert_eq!(bits(&r.dk), bits(&results[0].dk));
        assert_eq!(bits(&r.dv), bits(&results[0].dv));
        assert_eq!(bits(&r.dsinks), bits(&results[0].dsinks));
    }
}

#[test]
fn dsinks_into_a_caller_buffer_and_its_errors() {
    let c = SdpaCase::new(1, 2, 1, 4, 5, 3, 3);
    let data = Data::new(&c);
    let (qd, kd, vd, od) = c.dims();
    let opts = data.opts(&c);
    let mut o = vec![0.0f32; numel(od)];
    let mut lse = vec![0.0f32; 8];
    sdpa_into(
        t(&data.q, qd),
        t(&data.k, kd),
        t(&data.v, vd),
        TensorMut::contiguous(&mut o, od).unwrap(),
        &opts,
        SdpaOutputs::default().with_lse(Some(&mut lse)),
    )
    .unwrap();
    let want = sdpa_backward(
        t(&data.q, qd),
        t(&data.k, kd),
        t(&data.v, vd),
        t(&o, od),
        t(&data.g, od),
        &lse,
        &opts,
    )
    .unwrap();
    let run = |opts: &SdpaOptions<'_>, ds: Option<&mut [f32]>| {
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; numel(qd)],
            vec![0.0; numel(kd)],
            vec![0.0; numel(vd)],
        );
        sdpa_backward_into(
            t(&data.q, qd),
            t(&data.k, kd),
            t(&data.v, vd),
            t(&o, od),
            t(&data.g, od),
            &lse,
            SdpaGrads::new(
                TensorMut::contiguous(&mut dq, qd).unwrap(),
                TensorMut::contiguous(&mut dk, kd).unwrap(),
                TensorMut::contiguous(&mut dv, vd).unwrap(),
            )
            .with_dsinks(ds),
            opts,
        )
    };
    let mut ds = vec![f32::NAN; 2];
    run(&opts, Some(&mut ds)).unwrap();
    assert_eq!(ds, want.dsinks);
    // Without dsinks the call still works (the sink gradient is skipped).
    run(&opts, None).unwrap();
    // A dsinks of the wrong length; a dsinks without sinks.
    let mut short = vec![0.0; 1];
    assert!(matches!(
        run(&opts, Some(&mut short)),
        Err(AttnError::Shape { .. })
    ));
    let mut ds = vec![0.0; 2];
    assert!(matches!(
        run(&opts.clone().with_sinks(None), Some(&mut ds)),
        Err(AttnError::Option { .. })
    ));
    // Without sinks the owned gradients have an empty dsinks.
    let g = sdpa_backward(
        t(&data.q, qd),
        t(&data.k, kd),
        t(&data.v, vd),
        t(&o, od),
        t(&data.g, od),
        &lse,
        &opts.clone().with_sinks(None),
    )
    .unwrap();
    assert!(g.dsinks.is_empty());
}
