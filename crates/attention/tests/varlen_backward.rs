//! The variable-length backward (packed K/V) against the f64 reference gradients run once
//! per sequence on that sequence's slice of the packed tensors: empty sequences,
//! `seqused_k`, GQA, options, sinks, f32 and bf16 inputs, every ISA variant; bit-identical
//! at 1, 2 and 3 threads; bad input refused.

use fastattn_attention::reference::sdpa_backward_ref;
use fastattn_attention::{
    bf16, sdpa_varlen_backward_into, sdpa_varlen_into, AttnError, Element, SdpaGrads, SdpaOptions,
    TensorMut, TensorRef, VarlenSeqs,
};
use kernels::Isa;
use rand::Rng;
use testutil::{assert_close_scaled, rand_vec, seeded, variants};

/// One case: per sequence `(queries, keys used, keys held)`, heads, dims and options.
#[derive(Clone, Debug)]
struct Case {
    seqs: Vec<(usize, usize, usize)>,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    causal: bool,
    window: Option<(usize, usize)>,
    softcap: Option<f32>,
    sinks: bool,
    used: bool,
    seed: u64,
}

/// Packed data (`[T, H, D]` rows) and the offsets.
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    sinks: Vec<f32>,
    cu_q: Vec<i32>,
    cu_k: Vec<i64>,
    used: Vec<i64>,
    tq: usize,
    tk: usize,
}

impl Case {
    fn data(&self) -> Data {
        let mut rng = seeded(self.seed);
        let tq: usize = self.seqs.iter().map(|s| s.0).sum();
        let tk: usize = self.seqs.iter().map(|s| s.2).sum();
        let (mut cu_q, mut cu_k) = (vec![0i32], vec![0i64]);
        for &(lq, _, held) in &self.seqs {
            cu_q.push(cu_q.last().unwrap() + lq as i32);
            cu_k.push(cu_k.last().unwrap() + held as i64);
        }
        let mut sinks: Vec<f32> = (0..self.hq).map(|_| rng.random_range(-2.0..2.0)).collect();
        if self.hq > 1 {
            sinks[1] = f32::NEG_INFINITY;
        }
        Data {
            q: rand_vec(&mut rng, tq * self.hq * self.d),
            k: rand_vec(&mut rng, tk * self.hkv * self.d),
            v: rand_vec(&mut rng, tk * self.hkv * self.dv),
            g: rand_vec(&mut rng, tq * self.hq * self.dv),
            sinks,
            cu_q,
            cu_k,
            used: self.seqs.iter().map(|s| s.1 as i64).collect(),
            tq,
            tk,
        }
    }

    fn opts<'a>(&self, data: &'a Data) -> SdpaOptions<'a> {
        SdpaOptions::new()
            .with_causal(self.causal)
            .with_window_left(self.window.map(|w| w.0))
            .with_window_right(self.window.map(|w| w.1))
            .with_softcap(self.softcap)
            .with_sinks(self.sinks.then_some(&data.sinks[..]))
    }

    fn seqs<'a>(&self, data: &'a Data) -> VarlenSeqs<'a> {
        let s = VarlenSeqs::new(&data.cu_q[..]).with_cu_seqlens_k(&data.cu_k[..]);
        if self.used {
            s.with_seqused_k(&data.used[..])
        } else {
            s
        }
    }
}

/// Gradients of a varlen call: packed dQ `[Tq, Hq, D]`, dK, dV `[Tk, Hkv, D|Dv]`, dsinks.
struct Grads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    ds: Vec<f32>,
}

/// A `TensorRef::from_blhd` view of `x`.
fn t<T: Element>(x: &[T], dims: [usize; 4]) -> TensorRef<'_, T> {
    TensorRef::from_blhd(x, dims).unwrap()
}

fn to<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

/// Forward and backward through the library on inputs rounded to `T`.
fn fast<T: Element>(c: &Case, data: &Data, isa: Option<Isa>) -> Grads {
    let (hq, hkv, d, dv, tq, tk) = (c.hq, c.hkv, c.d, c.dv, data.tq, data.tk);
    let (q, k, v, g) = (
        to::<T>(&data.q),
        to::<T>(&data.k),
        to::<T>(&data.v),
        to::<T>(&data.g),
    );
    let (qd, kd, vd, od) = (
        [1, hq, tq, d],
        [1, hkv, tk, d],
        [1, hkv, tk, dv],
        [1, hq, tq, dv],
    );
    let opts = c.opts(data).with_isa(isa);
    let seqs = c.seqs(data);
    let mut o = vec![T::from_f32(0.0); tq * hq * dv];
    let mut lse = vec![0.0f32; hq * tq];
    sdpa_varlen_into(
        t(&q, qd),
        t(&k, kd),
        t(&v, vd),
        TensorMut::from_blhd(&mut o, od).unwrap(),
        &seqs,
        &opts,
        Some(&mut lse),
    )
    .unwrap();
    // NaN everywhere first: every gradient element must be written.
    let mut gr = Grads {
        dq: vec![f32::NAN; tq * hq * d],
        dk: vec![f32::NAN; tk * hkv * d],
        dv: vec![f32::NAN; tk * hkv * dv],
        ds: vec![f32::NAN; if c.sinks { hq } else { 0 }],
    };
    sdpa_varlen_backward_into(
        t(&q, qd),
        t(&k, kd),
        t(&v, vd),
        t(&o, od),
        t(&g, od),
        &lse,
        SdpaGrads::new(
            TensorMut::from_blhd(&mut gr.dq, qd).unwrap(),
            TensorMut::from_blhd(&mut gr.dk, kd).unwrap(),
            TensorMut::from_blhd(&mut gr.dv, vd).unwrap(),
        )
        .with_dsinks(c.sinks.then_some(&mut gr.ds[..])),
        &seqs,
        &opts,
    )
    .unwrap();
    gr
}

/// Tokens `t0 .. t0 + n` of packed `[T, h, w]` rows as a `[1, h, n, w]` view.
fn view<T: Element>(x: &[T], t0: usize, h: usize, n: usize, w: usize) -> TensorRef<'_, T> {
    TensorRef::new(&x[t0 * h * w..], [1, h, n, w], [0, w, h * w, 1]).unwrap()
}

/// The f64 reference backward once per sequence, on its slice of the packed tensors
/// (rounded to `T`), scattered into packed gradients (zero for keys no sequence uses).
fn reference<T: Element>(c: &Case, data: &Data) -> Grads {
    let (hq, hkv, d, dv, tq, tk) = (c.hq, c.hkv, c.d, c.dv, data.tq, data.tk);
    let (q, k, v, g) = (
        to::<T>(&data.q),
        to::<T>(&data.k),
        to::<T>(&data.v),
        to::<T>(&data.g),
    );
    let opts = c.opts(data);
    let mut gr = Grads {
        dq: vec![0.0; tq * hq * d],
        dk: vec![0.0; tk * hkv * d],
        dv: vec![0.0; tk * hkv * dv],
        ds: vec![0.0; if c.sinks { hq } else { 0 }],
    };
    let mut ds64 = vec![0.0f64; gr.ds.len()];
    for (s, &(lq, nk, _)) in c.seqs.iter().enumerate() {
        let (q0, k0) = (data.cu_q[s] as usize, data.cu_k[s] as usize);
        let nk = if c.used { nk } else { c.seqs[s].2 };
        let r = sdpa_backward_ref(
            view(&q, q0, hq, lq, d),
            view(&k, k0, hkv, nk, d),
            view(&v, k0, hkv, nk, dv),
            view(&g, q0, hq, lq, dv),
            &opts,
        )
        .unwrap();
        for h in 0..hq {
            for i in 0..lq {
                for x in 0..d {
                    gr.dq[((q0 + i) * hq + h) * d + x] = r.dq[(h * lq + i) * d + x];
                }
            }
        }
        for h in 0..hkv {
            for j in 0..nk {
                for x in 0..d {
                    gr.dk[((k0 + j) * hkv + h) * d + x] = r.dk[(h * nk + j) * d + x];
                }
                for x in 0..dv {
                    gr.dv[((k0 + j) * hkv + h) * dv + x] = r.dv[(h * nk + j) * dv + x];
                }
            }
        }
        for (a, &x) in ds64.iter_mut().zip(&r.dsinks) {
            *a += x as f64;
        }
    }
    gr.ds = ds64.into_iter().map(|x| x as f32).collect();
    gr
}

fn compare(label: &str, got: &Grads, want: &Grads, tol: f32) {
    assert_close_scaled(format!("{label} dq"), &got.dq, &want.dq, tol);
    assert_close_scaled(format!("{label} dk"), &got.dk, &want.dk, tol);
    assert_close_scaled(format!("{label} dv"), &got.dv, &want.dv, tol);
    assert_close_scaled(format!("{label} dsinks"), &got.ds, &want.ds, tol);
}

fn cases() -> Vec<Case> {
    let base = Case {
        seqs: vec![],
        hq: 4,
        hkv: 2,
        d: 8,
        dv: 6,
        causal: false,
        window: None,
        softcap: None,
        sinks: false,
        used: false,
        seed: 0,
    };
    let mut out = Vec::new();
    let shapes: [&[(usize, usize, usize)]; 5] = [
        &[(3, 3, 3)],
        // Empty sequences (no queries; no keys), a decode token, a prefill chunk with a
        // cached prefix.
        &[
            (0, 4, 6),
            (5, 0, 2),
            (1, 9, 11),
            (7, 20, 20),
            (0, 0, 0),
            (4, 3, 5),
        ],
        &[(13, 13, 16), (1, 140, 141), (0, 2, 2), (9, 5, 7)],
        &[(130, 131, 133), (2, 2, 2)],
        &[(0, 0, 0)],
    ];
    let mut seed = 7000;
    for seqs in shapes {
        for (causal, window, softcap, sinks, used) in [
            (false, None, None, false, false),
            (true, None, None, true, true),
            (true, None, Some(2.0), true, false),
            (false, Some((3, 1)), None, true, true),
            (true, Some((0, 0)), Some(0.9), false, true),
        ] {
            seed += 1;
            out.push(Case {
                seqs: seqs.to_vec(),
                causal,
                window,
                softcap,
                sinks,
                used,
                seed,
                ..base.clone()
            });
        }
    }
    out
}

#[test]
fn varlen_backward_matches_ref_per_sequence() {
    for c in cases() {
        let data = c.data();
        let want = reference::<f32>(&c, &data);
        for isa in variants() {
            let got = fast::<f32>(&c, &data, Some(isa));
            compare(&format!("{c:?} isa={isa}"), &got, &want, 1e-4);
        }
    }
}

#[test]
fn varlen_backward_of_bf16_inputs_matches_ref_of_their_values() {
    for c in cases() {
        let data = c.data();
        let want = reference::<bf16>(&c, &data);
        let got = fast::<bf16>(&c, &data, None);
        // A bf16 O shifts D = rowsum(dO ∘ O) by its rounding (2⁻⁹ relative).
        compare(&format!("{c:?} bf16"), &got, &want, 2e-2);
    }
}

#[test]
fn varlen_backward_is_bit_identical_at_1_2_3_threads() {
    let c = Case {
        seqs: vec![(300, 1300, 1300), (1, 700, 700), (0, 5, 5), (64, 64, 64)],
        hq: 4,
        hkv: 2,
        d: 32,
        dv: 32,
        causal: true,
        window: None,
        softcap: Some(3.0),
        sinks: true,
        used: false,
        seed: 9,
    };
    let data = c.data();
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        results.push(pool.install(|| fast::<f32>(&c, &data, None)));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for r in &results[1..] {
        assert_eq!(bits(&r.dq), bits(&results[0].dq));
        assert_eq!(bits(&r.dk), bits(&results[0].dk));
        assert_eq!(bits(&r.dv), bits(&results[0].dv));
        assert_eq!(bits(&r.ds), bits(&results[0].ds));
    }
}

#[test]
fn varlen_backward_refuses_bad_input() {
    let c = Case {
        seqs: vec![(2, 3, 3), (3, 2, 2)],
        hq: 2,
        hkv: 1,
        d: 4,
        dv: 4,
        causal: true,
        window: None,
        softcap: None,
        sinks: true,
        used: false,
        seed: 11,
    };
    let data = c.data();
    let (tq, tk) = (data.tq, data.tk);
    let (qd, kd, od) = ([1, 2, tq, 4], [1, 1, tk, 4], [1, 2, tq, 4]);
    let o = vec![0.0f32; tq * 2 * 4];
    let lse = vec![0.0f32; 2 * tq];
    let opts = c.opts(&data);
    let run = |seqs: &VarlenSeqs<'_>, opts: &SdpaOptions<'_>, lse: &[f32], ds_len: usize| {
        let (mut dq, mut dk, mut dv) = (
            vec![7.0f32; tq * 8],
            vec![7.0f32; tk * 4],
            vec![7.0f32; tk * 4],
        );
        let mut ds = vec![7.0f32; ds_len];
        let r = sdpa_varlen_backward_into(
            t(&data.q, qd),
            t(&data.k, kd),
            t(&data.v, kd),
            t(&o, od),
            t(&data.g, od),
            lse,
            SdpaGrads::new(
                TensorMut::from_blhd(&mut dq, qd).unwrap(),
                TensorMut::from_blhd(&mut dk, kd).unwrap(),
                TensorMut::from_blhd(&mut dv, kd).unwrap(),
            )
            .with_dsinks((ds_len > 0).then_some(&mut ds[..])),
            seqs,
            opts,
        );
        // Nothing is written before an error.
        if r.is_err() {
            assert!(dq
                .iter()
                .chain(&dk)
                .chain(&dv)
                .chain(&ds)
                .all(|&x| x == 7.0));
        }
        r
    };
    let seqs = c.seqs(&data);
    run(&seqs, &opts, &lse, 2).unwrap();
    // A block table: the backward takes packed K/V only.
    let table = [0i32, 1];
    let paged = seqs.with_block_table(&table, 1);
    assert!(matches!(
        run(&paged, &opts, &lse, 2),
        Err(AttnError::Option { .. })
    ));
    // cu_seqlens_q that decreases or ends short; cu_seqlens_k past the packed keys.
    for cu in [[0i32, 3, 2], [0, 2, 4]] {
        let bad = VarlenSeqs::new(&cu[..]).with_cu_seqlens_k(&data.cu_k[..]);
        assert!(matches!(
            run(&bad, &opts, &lse, 2),
            Err(AttnError::Option { .. })
        ));
    }
    let cu_k = [0i64, 3, 9];
    let bad = VarlenSeqs::new(&data.cu_q[..]).with_cu_seqlens_k(&cu_k[..]);
    assert!(matches!(
        run(&bad, &opts, &lse, 2),
        Err(AttnError::Option { .. })
    ));
    // The LSE's length; dsinks of the wrong length or without sinks.
    assert!(matches!(
        run(&seqs, &opts, &lse[1..], 2),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        run(&seqs, &opts, &lse, 1),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        run(&seqs, &opts.clone().with_sinks(None), &lse, 2),
        Err(AttnError::Option { .. })
    ));
}
