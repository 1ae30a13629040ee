//! Variable-length attention (packed and paged K/V) against the f64 reference run once per
//! sequence on that sequence's own dense tensors; attention sinks on the dense paths;
//! bit-identical results at 1, 2 and 3 threads; bad input refused with nothing written.

use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    bf16, f16, sdpa_into, sdpa_varlen_into, AttnError, AttnPath, Element, SdpaOptions, SdpaOutputs,
    TensorMut, TensorRef, VarlenSeqs,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use testutil::{assert_close, assert_err, rand_t, rand_vec, seeded, variants};

/// Where a case's keys live.
#[derive(Clone, Copy, Debug)]
enum Kv {
    /// Packed `[Tk, Hkv, D]` with `cu_seqlens_k`.
    Packed,
    /// Pages of this many rows, a shuffled block table padded with -1.
    Paged(usize),
}

/// The options a case switches on (built per case from the sizes).
#[derive(Clone, Copy, Debug, Default)]
struct Opts {
    causal: bool,
    window: Option<(usize, usize)>,
    softcap: bool,
    alibi: bool,
    sinks: bool,
    scale: bool,
}

/// One varlen case: per sequence `(queries, keys)`, keys' storage, options and types.
struct Case {
    seqs: Vec<(usize, usize)>,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    kv: Kv,
    opts: Opts,
    /// `seqused_k`: each sequence's keys are the first `keys` of a longer span.
    used: bool,
    seed: u64,
}

/// The data of a case and its expected output, built once per case.
struct Built<Q, K> {
    q: Vec<Q>,
    k: Vec<K>,
    v: Vec<K>,
    kdims: [usize; 4],
    vdims: [usize; 4],
    cu_q: Vec<i32>,
    cu_k: Vec<i64>,
    used: Vec<i32>,
    table: Vec<i32>,
    bps: usize,
    alibi: Vec<f32>,
    sinks: Vec<f32>,
    want: Vec<f32>,
    want_lse: Vec<f32>,
}

fn options<'a>(c: &Case, alibi: &'a [f32], sinks: &'a [f32]) -> SdpaOptions<'a> {
    let o = c.opts;
    let mut opts = SdpaOptions::new().with_causal(o.causal);
    if let Some((l, r)) = o.window {
        opts = opts.with_window(Some(l), Some(r));
    }
    if o.softcap {
        opts = opts.with_softcap(2.5);
    }
    if o.alibi {
        opts = opts.with_alibi_slopes(Some(alibi));
    }
    if o.sinks {
        opts = opts.with_sinks(Some(sinks));
    }
    if o.scale {
        opts = opts.with_scale(0.3);
    }
    opts
}

fn build<Q: Element, K: Element>(c: &Case) -> Built<Q, K> {
    let mut rng = seeded(c.seed);
    let (hq, hkv, d, dv) = (c.hq, c.hkv, c.d, c.dv);
    let tq: usize = c.seqs.iter().map(|s| s.0).sum();
    // With seqused_k, each sequence holds up to 3 keys more than it uses.
    let held: Vec<usize> = c
        .seqs
        .iter()
        .map(|&(_, nk)| {
            if c.used {
                nk + rng.random_range(0..4)
            } else {
                nk
            }
        })
        .collect();
    let q: Vec<Q> = rand_t(&mut rng, tq * hq * d);
    let mut cu_q = vec![0i32];
    let mut cu_k = vec![0i64];
    for (&(lq, _), &h) in c.seqs.iter().zip(&held) {
        cu_q.push(cu_q.last().unwrap() + lq as i32);
        cu_k.push(cu_k.last().unwrap() + h as i64);
    }
    let used: Vec<i32> = c.seqs.iter().map(|s| s.1 as i32).collect();
    // Each sequence's own keys and values, dense `[1, Hkv, held, D]`.
    let own: Vec<(Vec<K>, Vec<K>)> = held
        .iter()
        .map(|&h| {
            (
                rand_t(&mut rng, h * hkv * d),
                rand_t(&mut rng, h * hkv * dv),
            )
        })
        .collect();
    let (k, v, kdims, vdims, table, bps) = match c.kv {
        Kv::Packed => {
            let tk: usize = held.iter().sum();
            // Packed [Tk, Hkv, D]: token t of sequence s at row cu_k[s] + t.
            let mut k = vec![K::from_f32(0.0); tk * hkv * d];
            let mut v = vec![K::from_f32(0.0); tk * hkv * dv];
            for (s, (ks, vs)) in own.iter().enumerate() {
                let t0 = cu_k[s] as usize;
                for t in 0..held[s] {
                    for h in 0..hkv {
                        for x in 0..d {
                            k[((t0 + t) * hkv + h) * d + x] = ks[(h * held[s] + t) * d + x];
                        }
                        for x in 0..dv {
                            v[((t0 + t) * hkv + h) * dv + x] = vs[(h * held[s] + t) * dv + x];
                        }
                    }
                }
            }
            (k, v, [1, hkv, tk, d], [1, hkv, tk, dv], Vec::new(), 0)
        }
        Kv::Paged(bs) => {
            let pages: Vec<usize> = held.iter().map(|h| h.div_ceil(bs)).collect();
            let bps = pages.iter().max().copied().unwrap_or(0) + 1;
            let nb = pages.iter().sum::<usize>() + 3;
            let mut ids: Vec<i32> = (0..nb as i32).collect();
            ids.shuffle(&mut rng);
            let mut table = vec![-1i32; c.seqs.len() * bps];
            let mut next = 0;
            for (s, &np) in pages.iter().enumerate() {
                for i in 0..np {
                    table[s * bps + i] = ids[next];
                    next += 1;
                }
            }
            let mut k: Vec<K> = rand_t(&mut rng, nb * bs * hkv * d);
            let mut v: Vec<K> = rand_t(&mut rng, nb * bs * hkv * dv);
            for (s, (ks, vs)) in own.iter().enumerate() {
                for t in 0..held[s] {
                    let pg = table[s * bps + t / bs] as usize;
                    let slot = pg * bs + t % bs;
                    for h in 0..hkv {
                        for x in 0..d {
                            k[(slot * hkv + h) * d + x] = ks[(h * held[s] + t) * d + x];
                        }
                        for x in 0..dv {
                            v[(slot * hkv + h) * dv + x] = vs[(h * held[s] + t) * dv + x];
                        }
                    }
                }
            }
            (k, v, [nb, bs, hkv, d], [nb, bs, hkv, dv], table, bps)
        }
    };
    let alibi: Vec<f32> = (0..hq).map(|h| 0.05 * (h + 1) as f32).collect();
    // Sinks of both signs, one of them no sink at all.
    let sinks: Vec<f32> = (0..hq)
        .map(|h| {
            if h == 1 {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-2.0..3.0)
            }
        })
        .collect();
    let opts = options(c, &alibi, &sinks);
    // The reference, once per sequence on its own dense tensors.
    let mut want = vec![0.0f32; tq * hq * dv];
    let mut want_lse = vec![0.0f32; hq * tq];
    for (s, &(lq, nk)) in c.seqs.iter().enumerate() {
        let q0 = cu_q[s] as usize;
        let qs = TensorRef::new(&q[q0 * hq * d..], [1, hq, lq, d], [0, d, hq * d, 1]).unwrap();
        let (ks, vs) = &own[s];
        let hs = held[s];
        let kt = TensorRef::new(&ks[..], [1, hkv, nk, d], [0, hs * d, d, 1]).unwrap();
        let vt = TensorRef::new(&vs[..], [1, hkv, nk, dv], [0, hs * dv, dv, 1]).unwrap();
        let r = sdpa_ref(qs, kt, vt, &opts).unwrap();
        for h in 0..hq {
            for i in 0..lq {
                for x in 0..dv {
                    want[((q0 + i) * hq + h) * dv + x] = r.out[(h * lq + i) * dv + x];
                }
                want_lse[h * tq + q0 + i] = r.lse[h * lq + i];
            }
        }
    }
    Built {
        q,
        k,
        v,
        kdims,
        vdims,
        cu_q,
        cu_k,
        used,
        table,
        bps,
        alibi,
        sinks,
        want,
        want_lse,
    }
}

/// Runs the case with output type `O`, the given ISA/path/threads, returning the output
/// (widened) and the LSE.
fn run<Q: Element, K: Element, O: Element>(
    c: &Case,
    bt: &Built<Q, K>,
    isa: Option<kernels::Isa>,
    path: AttnPath,
) -> (Vec<f32>, Vec<f32>) {
    let (hq, d, dv) = (c.hq, c.d, c.dv);
    let tq = *bt.cu_q.last().unwrap() as usize;
    let q = TensorRef::from_blhd(&bt.q, [1, hq, tq, d]).unwrap();
    let (k, v) = match c.kv {
        Kv::Packed => (
            TensorRef::from_blhd(&bt.k, bt.kdims).unwrap(),
            TensorRef::from_blhd(&bt.v, bt.vdims).unwrap(),
        ),
        Kv::Paged(_) => (
            TensorRef::contiguous(&bt.k, bt.kdims).unwrap(),
            TensorRef::contiguous(&bt.v, bt.vdims).unwrap(),
        ),
    };
    let mut seqs = VarlenSeqs::new(&bt.cu_q[..]);
    seqs = match c.kv {
        Kv::Packed => seqs.with_cu_seqlens_k(&bt.cu_k[..]),
        Kv::Paged(_) => seqs.with_block_table(&bt.table, bt.bps),
    };
    if c.used || matches!(c.kv, Kv::Paged(_)) {
        seqs = seqs.with_seqused_k(&bt.used[..]);
    }
    let opts = options(c, &bt.alibi, &bt.sinks)
        .with_isa(isa)
        .with_path(path);
    let mut out = vec![O::from_f32(0.0); tq * hq * dv];
    let mut lse = vec![0.0f32; hq * tq];
    let o = TensorMut::from_blhd(&mut out, [1, hq, tq, dv]).unwrap();
    sdpa_varlen_into(q, k, v, o, &seqs, &opts, Some(&mut lse)).unwrap();
    (out.iter().map(|x| x.to_f32()).collect(), lse)
}

/// Log-sum-exp values: equal infinities, else within `tol` relative to max(1, |want|).
fn assert_lse(label: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        assert!(ok, "{label}: lse[{i}] = {g}, want {w}");
    }
}

fn check<Q: Element, K: Element, O: Element>(c: &Case, tol: f64) {
    let bt = build::<Q, K>(c);
    let label = format!(
        "{:?} {:?} hq {} hkv {} d {} dv {} {:?} {:?} used {} seed {} ({} {} {})",
        c.seqs,
        c.kv,
        c.hq,
        c.hkv,
        c.d,
        c.dv,
        c.opts,
        c.kv,
        c.used,
        c.seed,
        Q::DTYPE,
        K::DTYPE,
        O::DTYPE
    );
    for isa in variants() {
        for path in [AttnPath::Auto, AttnPath::Materialized] {
            let (out, lse) = run::<Q, K, O>(c, &bt, Some(isa), path);
            assert_close(format!("{label} {isa:?} {path:?} out"), &out, &bt.want, tol);
            assert_lse(
                &format!("{label} {isa:?} {path:?}"),
                &lse,
                &bt.want_lse,
                1e-4,
            );
        }
    }
}

/// Random sequences: `n` of them, each `(queries, keys)` with some empty ones, queries
/// never more than keys where `causal_ok` (chunks of new tokens after a prefix).
fn random_seqs(rng: &mut StdRng, n: usize, max_k: usize) -> Vec<(usize, usize)> {
    (0..n)
        .map(|_| match rng.random_range(0..6) {
            0 => (0, rng.random_range(0..max_k)),
            1 => (rng.random_range(1..4), 0),
            2 => (1, rng.random_range(1..max_k)),
            _ => {
                let nk = rng.random_range(1..max_k);
                (rng.random_range(1..=nk), nk)
            }
        })
        .collect()
}

#[test]
fn varlen_packed_and_paged_equal_the_reference_per_sequence() {
    let mut rng = seeded(30);
    let kvs = [
        Kv::Packed,
        Kv::Paged(1),
        Kv::Paged(7),
        Kv::Paged(16),
        Kv::Paged(256),
    ];
    let optsets = [
        Opts::default(),
        Opts {
            causal: true,
            ..Opts::default()
        },
        Opts {
            causal: true,
            sinks: true,
            ..Opts::default()
        },
        Opts {
            window: Some((5, 0)),
            softcap: true,
            ..Opts::default()
        },
        Opts {
            causal: true,
            alibi: true,
            scale: true,
            sinks: true,
            ..Opts::default()
        },
    ];
    let mut seed = 100;
    for (ki, &kv) in kvs.iter().enumerate() {
        for (oi, &opts) in optsets.iter().enumerate() {
            seed += 1;
            let (hq, hkv) = [(4, 2), (3, 3), (4, 1)][(ki + oi) % 3];
            let (d, dv) = [(8, 8), (16, 5), (3, 12)][(ki * 2 + oi) % 3];
            let c = Case {
                seqs: random_seqs(&mut rng, 1 + (ki + oi) % 6, 70),
                hq,
                hkv,
                d,
                dv,
                kv,
                opts,
                used: oi % 2 == 1,
                seed,
            };
            check::<f32, f32, f32>(&c, 2e-5);
        }
    }
}

#[test]
fn varlen_16_bit_inputs_and_outputs() {
    let mut rng = seeded(31);
    for (i, kv) in [Kv::Packed, Kv::Paged(16), Kv::Paged(7)]
        .into_iter()
        .enumerate()
    {
        let c = Case {
            seqs: random_seqs(&mut rng, 4, 60),
            hq: 4,
            hkv: 2,
            d: 16,
            dv: 16,
            kv,
            opts: Opts {
                causal: true,
                sinks: i > 0,
                ..Opts::default()
            },
            used: i == 1,
            seed: 200 + i as u64,
        };
        // 16-bit inputs are widened exactly (the reference reads the same values).
        check::<bf16, bf16, f32>(&c, 2e-5);
        check::<f16, bf16, f32>(&c, 2e-5);
        check::<f32, f16, f32>(&c, 2e-5);
        // A 16-bit output is the f32 result rounded once.
        check::<f32, bf16, bf16>(&c, 1e-2);
        check::<bf16, f16, f16>(&c, 2e-3);
    }
}

/// Mixed batches with long prefills, a long decode that is split along its keys (4500
/// keys), and many short decodes: equal to the reference, bit-identical at 1, 2, 3
/// threads.
#[test]
fn mixed_decode_and_prefill_batches_are_bit_identical_at_any_thread_count() {
    let seqs = vec![
        (1, 4500),
        (200, 260),
        (1, 33),
        (0, 9),
        (1, 1),
        (37, 300),
        (1, 700),
    ];
    for (i, kv) in [Kv::Packed, Kv::Paged(16), Kv::Paged(1)]
        .into_iter()
        .enumerate()
    {
        let c = Case {
            seqs: seqs.clone(),
            hq: 8,
            hkv: 2,
            d: 32,
            dv: 32,
            kv,
            opts: Opts {
                causal: true,
                sinks: i != 1,
                softcap: i == 2,
                ..Opts::default()
            },
            used: false,
            seed: 300 + i as u64,
        };
        let bt = build::<f32, bf16>(&c);
        let mut outs = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            outs.push(pool.install(|| run::<f32, bf16, f32>(&c, &bt, None, AttnPath::Auto)));
        }
        assert_close(format!("{kv:?}"), &outs[0].0, &bt.want, 2e-5);
        assert_lse(&format!("{kv:?}"), &outs[0].1, &bt.want_lse, 1e-4);
        for o in &outs[1..] {
            let same =
                o.0.iter()
                    .zip(&outs[0].0)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kv:?}: results differ between thread counts");
            assert!(o
                .1
                .iter()
                .zip(&outs[0].1)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// Sinks on the dense paths (flash, materialised, the split decode), with their LSE,
/// against the reference; a `-inf` sink is no sink; a row that sees no key gets zeros.
#[test]
fn sinks_on_the_dense_paths() {
    let mut rng = seeded(32);
    for &(lq, lk, causal) in &[
        (5, 9, true),
        (130, 600, true),
        (1, 5000, false),
        (3, 0, false),
    ] {
        let (b, hq, hkv, d) = (2, 4, 2, 16);
        let q = rand_vec(&mut rng, b * hq * lq * d);
        let k = rand_vec(&mut rng, b * hkv * lk * d);
        let v = rand_vec(&mut rng, b * hkv * lk * d);
        let sinks = [0.5f32, f32::NEG_INFINITY, 4.0, -3.0];
        let qt = TensorRef::contiguous(&q, [b, hq, lq, d]).unwrap();
        let kt = TensorRef::contiguous(&k, [b, hkv, lk, d]).unwrap();
        let vt = TensorRef::contiguous(&v, [b, hkv, lk, d]).unwrap();
        // Window (0, 0) on top: some rows see no key at all.
        let opts = SdpaOptions::new()
            .with_causal(causal)
            .with_sinks(Some(&sinks));
        let want = sdpa_ref(qt, kt, vt, &opts).unwrap();
        for isa in variants() {
            for path in [AttnPath::Flash, AttnPath::Materialized] {
                let mut out = vec![0.0f32; b * hq * lq * d];
                let mut lse = vec![0.0f32; b * hq * lq];
                let o = TensorMut::contiguous(&mut out, [b, hq, lq, d]).unwrap();
                let opts = opts.clone().with_isa(isa).with_path(path);
                sdpa_into(
                    qt,
                    kt,
                    vt,
                    o,
                    &opts,
                    SdpaOutputs::default().with_lse(Some(&mut lse)),
                )
                .unwrap();
                let label = format!("lq {lq} lk {lk} {isa:?} {path:?}");
                assert_close(&label, &out, &want.out, 2e-5);
                assert_lse(&label, &lse, &want.lse, 1e-4);
            }
        }
        if lk == 0 {
            // No key: zero output, the LSE is the sink (-inf for no sink).
            assert!(want.out.iter().all(|&x| x == 0.0));
            assert_eq!(want.lse[0], 0.5);
            assert_eq!(want.lse[lq], f32::NEG_INFINITY);
        }
    }
}

/// The view of a small valid call, for the bad-input cases to change one thing of.
#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let (hq, hkv, d) = (2, 1, 4);
    let q = vec![1.0f32; 5 * hq * d];
    let kp = vec![1.0f32; 6 * hkv * d];
    let pages = vec![1.0f32; 4 * 2 * hkv * d];
    let qv = TensorRef::from_blhd(&q, [1, hq, 5, d]).unwrap();
    let kv = TensorRef::from_blhd(&kp, [1, hkv, 6, d]).unwrap();
    let pv = TensorRef::contiguous(&pages, [4, 2, hkv, d]).unwrap();
    let go = |q: TensorRef<'_, f32>,
              k: TensorRef<'_, f32>,
              seqs: VarlenSeqs<'_>,
              opts: SdpaOptions<'_>,
              lse_len: usize|
     -> Result<(), AttnError> {
        let tq = q.dims()[2];
        let mut out = vec![7.0f32; tq * hq * d];
        let mut lse = vec![7.0f32; lse_len];
        let o = TensorMut::from_blhd(&mut out, [1, hq, tq, d]).unwrap();
        let r = sdpa_varlen_into(q, k, k, o, &seqs, &opts, Some(&mut lse));
        if r.is_err() {
            assert!(out.iter().all(|&x| x == 7.0), "output written on error");
            assert!(lse.iter().all(|&x| x == 7.0), "lse written on error");
        }
        r
    };
    let ok = SdpaOptions::new;
    let cu_q: &[i32] = &[0, 2, 5];
    let cu_k: &[i32] = &[0, 4, 6];
    // The valid calls.
    go(
        qv,
        kv,
        VarlenSeqs::new(cu_q).with_cu_seqlens_k(cu_k),
        ok(),
        10,
    )
    .unwrap();
    let table: &[i32] = &[3, 0, -1, 1, 2, -1];
    let used: &[i32] = &[4, 3];
    go(
        qv,
        pv,
        VarlenSeqs::new(cu_q)
            .with_block_table(table, 3)
            .with_seqused_k(used),
        ok(),
        10,
    )
    .unwrap();
    // Offsets: non-monotonic, not 0-based, last entry ≠ packed length, wrong count.
    for bad in [&[0, 3, 2][..], &[1, 2, 5], &[0, 2, 4], &[0, 2, 6], &[0, 5]] {
        assert_err!(
            go(
                qv,
                kv,
                VarlenSeqs::new(bad).with_cu_seqlens_k(cu_k),
                ok(),
                10
            ),
            AttnError::Option { .. }
        );
    }
    for bad in [&[0, 3, 2][..], &[1, 2, 6], &[0, 2, 5], &[0, 6]] {
        assert_err!(
            go(
                qv,
                kv,
                VarlenSeqs::new(cu_q).with_cu_seqlens_k(bad),
                ok(),
                10
            ),
            AttnError::Option { .. }
        );
    }
    // Packed K/V without cu_seqlens_k; paged without key counts.
    assert_err!(
        go(qv, kv, VarlenSeqs::new(cu_q), ok(), 10),
        AttnError::Option { .. }
    );
    assert_err!(
        go(
            qv,
            pv,
            VarlenSeqs::new(cu_q).with_block_table(table, 3),
            ok(),
            10
        ),
        AttnError::Option { .. }
    );
    // seqused_k above the keys held (packed) or the pages held (paged), negative.
    for used in [&[5, 1][..], &[-1, 1], &[4]] {
        assert_err!(
            go(
                qv,
                kv,
                VarlenSeqs::new(cu_q)
                    .with_cu_seqlens_k(cu_k)
                    .with_seqused_k(used),
                ok(),
                10
            ),
            AttnError::Option { .. }
        );
    }
    assert_err!(
        go(
            qv,
            pv,
            VarlenSeqs::new(cu_q)
                .with_block_table(table, 3)
                .with_seqused_k(&[7, 1][..]),
            ok(),
            10
        ),
        AttnError::Option { .. }
    );
    // A block index out of range or negative where it is read; the table's size.
    for t in [
        &[3, 4, -1, 1, 2, -1][..],
        &[3, 0, -1, -1, 2, -1],
        &[3, 0, -1, 1, 2],
    ] {
        assert!(go(
            qv,
            pv,
            VarlenSeqs::new(cu_q)
                .with_block_table(t, 3)
                .with_seqused_k(used),
            ok(),
            10
        )
        .is_err());
    }
    // Mismatched heads or D; a Q with a batch dimension; the LSE length; a mask option.
    let k2 = TensorRef::from_blhd(&kp[..6 * 4], [1, 1, 6, 4]).unwrap();
    let q3 = TensorRef::from_blhd(&q[..5 * 3 * 2], [1, 3, 5, 2]).unwrap();
    let _ = (k2, q3);
    let kh = TensorRef::new(&kp, [1, 3, 2, d], [0, d, 3 * d, 1]).unwrap();
    assert!(go(
        qv,
        kh,
        VarlenSeqs::new(cu_q).with_cu_seqlens_k(&[0, 1, 2][..]),
        ok(),
        10
    )
    .is_err());
    let qb = TensorRef::contiguous(&q, [5, hq, 1, d]).unwrap();
    assert!(go(
        qb,
        kv,
        VarlenSeqs::new(&[0, 1][..]).with_cu_seqlens_k(&[0, 6][..]),
        ok(),
        2
    )
    .is_err());
    assert_err!(
        go(
            qv,
            kv,
            VarlenSeqs::new(cu_q).with_cu_seqlens_k(cu_k),
            ok(),
            9
        ),
        AttnError::Shape { .. }
    );
    let lens = [1usize];
    assert_err!(
        go(
            qv,
            kv,
            VarlenSeqs::new(cu_q).with_cu_seqlens_k(cu_k),
            ok().with_kv_lengths(Some(&lens)),
            10
        ),
        AttnError::Option { .. }
    );
    // Sinks: wrong count, NaN, +inf.
    for s in [&[0.0f32][..], &[0.0, f32::NAN], &[f32::INFINITY, 0.0]] {
        assert_err!(
            go(
                qv,
                kv,
                VarlenSeqs::new(cu_q).with_cu_seqlens_k(cu_k),
                ok().with_sinks(Some(s)),
                10
            ),
            AttnError::Option { .. }
        );
    }
}
