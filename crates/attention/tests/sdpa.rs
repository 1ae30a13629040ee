//! Attention against the f64 reference: shapes, options, layouts, paths and variants.

use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    sdpa_into, AttnError, AttnPath, Mask, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::{Isa, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{numel, rand_vec, rand_vec_amp, MaskKind, SdpaCase};

/// Runs `c` on every path and variant and compares with the reference.
fn check(c: &SdpaCase) {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let (qd, kd, vd, od) = c.dims();
    let qb = rand_vec_amp(&mut rng, numel(qd), c.amp);
    let kb = rand_vec_amp(&mut rng, numel(kd), c.amp);
    let vb = rand_vec(&mut rng, numel(vd));
    fn mk(blhd: bool, data: &[f32], dims: [usize; 4]) -> TensorRef<'_> {
        if blhd {
            TensorRef::from_blhd(data, dims).unwrap()
        } else {
            TensorRef::contiguous(data, dims).unwrap()
        }
    }
    let (q, k, v) = (
        mk(c.blhd, &qb, qd),
        mk(c.blhd, &kb, kd),
        mk(c.blhd, &vb, vd),
    );
    let lens = c.key_lengths();
    let bool_mask: Vec<bool> = (0..c.b * c.hq * c.lq * c.lk)
        .map(|_| rng.random_bool(0.7))
        .collect();
    let add_mask: Vec<f32> = (0..c.lq * c.lk)
        .map(|_| {
            if rng.random_bool(0.2) {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-2.0..2.0)
            }
        })
        .collect();
    let slopes: Vec<f32> = (0..c.hq).map(|h| 0.5f32.powi(h as i32 + 1)).collect();
    let mask = match c.mask {
        MaskKind::Bool => Some(Mask::Bool(
            TensorRef::new(&bool_mask, [1, 1, c.lq, c.lk], [0, 0, c.lk, 1]).unwrap(),
        )),
        MaskKind::BoolPerHead => Some(Mask::Bool(
            TensorRef::contiguous(&bool_mask, [c.b, c.hq, c.lq, c.lk]).unwrap(),
        )),
        MaskKind::Additive => Some(Mask::Additive(
            TensorRef::new(&add_mask, [1, 1, c.lq, c.lk], [0, 0, c.lk, 1]).unwrap(),
        )),
        _ => None,
    };
    let base = SdpaOptions::default()
        .with_causal(c.mask == MaskKind::Causal)
        .with_mask(mask)
        .with_kv_lengths(c.padding.then_some(&lens[..]))
        .with_window_left(c.window.and_then(|w| w.0))
        .with_window_right(c.window.and_then(|w| w.1))
        .with_alibi_slopes(c.alibi.then_some(&slopes[..]))
        .with_softcap(c.softcap);
    let want = sdpa_ref(q, k, v, &base).unwrap();
    let label = format!("{c:?}");
    for isa in Isa::available() {
        for path in [AttnPath::Flash, AttnPath::Materialized] {
            let opts = base.clone().with_isa(Some(isa)).with_path(path);
            let mut ob = vec![f32::NAN; numel(od)];
            let mut lse = vec![f32::NAN; c.b * c.hq * c.lq];
            let mut wb = vec![f32::NAN; c.b * c.hq * c.lq * c.lk];
            {
                let out = if c.blhd {
                    TensorMut::from_blhd(&mut ob, od).unwrap()
                } else {
                    TensorMut::contiguous(&mut ob, od).unwrap()
                };
                let weights = (path == AttnPath::Materialized)
                    .then(|| TensorMut::contiguous(&mut wb, [c.b, c.hq, c.lq, c.lk]).unwrap());
                sdpa_into(
                    q,
                    k,
                    v,
                    out,
                    &opts,
                    SdpaOutputs::default()
                        .with_weights(weights)
                        .with_lse(Some(&mut lse)),
                )
                .unwrap_or_else(|e| panic!("{label} isa={isa} {path:?}: {e}"));
            }
            let ov = if c.blhd {
                TensorRef::from_blhd(&ob, od).unwrap()
            } else {
                TensorRef::contiguous(&ob, od).unwrap()
            };
            let tol = 2e-4 * (1.0 + (c.d as f32).sqrt() * c.amp * c.amp / 8.0).min(50.0);
            for bb in 0..c.b {
                for h in 0..c.hq {
                    for i in 0..c.lq {
                        let row = (bb * c.hq + h) * c.lq + i;
                        for x in 0..c.dv {
                            let (got, w) = (ov.get(bb, h, i, x), want.out[row * c.dv + x]);
                            assert!(
                                (got - w).abs() <= tol,
                                "{label} isa={isa} {path:?}: out[{bb},{h},{i},{x}] = {got}, want {w}"
                            );
                        }
                        let (gl, wl) = (lse[row], want.lse[row]);
                        assert!(
                            (gl == wl) || (gl - wl).abs() <= tol * (1.0 + wl.abs()),
                            "{label} isa={isa} {path:?}: lse[{row}] = {gl}, want {wl}"
                        );
                        if path == AttnPath::Materialized {
                            for j in 0..c.lk {
                                let (g, w) = (wb[row * c.lk + j], want.weights[row * c.lk + j]);
                                assert!(
                                    (g - w).abs() <= tol,
                                    "{label} isa={isa}: weight[{row},{j}] = {g}, want {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sdpa_matches_ref_over_shapes() {
    let mut seed = 0;
    for &(b, h, lq, lk) in &[
        (1, 1, 1, 1),
        (2, 3, 17, 17),
        (1, 2, 64, 65),
        (1, 1, 65, 257),
        (3, 1, 2, 64),
        (1, 2, 257, 3),
    ] {
        for &(d, dv) in &[(1, 1), (8, 8), (63, 80), (64, 64), (128, 128)] {
            if lq * lk * d > 65 * 257 * 64 && d > 64 {
                continue;
            }
            seed += 1;
            check(&SdpaCase {
                seed,
                ..SdpaCase::new(b, h, h, lq, lk, d, dv)
            });
        }
    }
    check(&SdpaCase {
        seed: 99,
        ..SdpaCase::new(1, 1, 1, 17, 17, 256, 256)
    });
}

#[test]
fn sdpa_matches_ref_for_every_mask_kind() {
    let mut seed = 100;
    for mask in [
        MaskKind::Causal,
        MaskKind::Bool,
        MaskKind::Additive,
        MaskKind::BoolPerHead,
    ] {
        for &(lq, lk) in &[
            (17, 17),
            (64, 65),
            (65, 300),
            (300, 65),
            (1, 257),
            (200, 1100),
        ] {
            seed += 1;
            check(&SdpaCase {
                mask,
                seed,
                ..SdpaCase::new(2, 2, 2, lq, lk, 16, 24)
            });
        }
    }
}

#[test]
fn sdpa_matches_ref_with_padding_windows_gqa_alibi_softcap() {
    let mut seed = 200;
    let mut cases = vec![];
    for &(lq, lk) in &[(33, 33), (1, 300), (70, 600), (5, 3)] {
        cases.push(SdpaCase {
            padding: true,
            mask: MaskKind::Causal,
            ..SdpaCase::new(3, 2, 1, lq, lk, 16, 16)
        });
        cases.push(SdpaCase {
            window: Some((Some(20), Some(0))),
            ..SdpaCase::new(1, 4, 2, lq, lk, 32, 32)
        });
        cases.push(SdpaCase {
            window: Some((Some(7), Some(300))),
            padding: true,
            ..SdpaCase::new(2, 2, 2, lq, lk, 8, 8)
        });
        cases.push(SdpaCase {
            alibi: true,
            mask: MaskKind::Causal,
            ..SdpaCase::new(1, 4, 4, lq, lk, 16, 16)
        });
        cases.push(SdpaCase {
            softcap: Some(5.0),
            amp: 3.0,
            ..SdpaCase::new(1, 8, 2, lq, lk, 16, 8)
        });
        cases.push(SdpaCase {
            blhd: true,
            mask: MaskKind::Causal,
            ..SdpaCase::new(2, 6, 3, lq, lk, 16, 16)
        });
        cases.push(SdpaCase {
            alibi: true,
            softcap: Some(20.0),
            mask: MaskKind::Additive,
            padding: true,
            ..SdpaCase::new(2, 4, 1, lq, lk, 8, 8)
        });
    }
    for c in cases {
        seed += 1;
        check(&SdpaCase { seed, ..c });
    }
}

#[test]
fn sdpa_huge_logits_stay_finite() {
    // Logits scaled ×1e3 (q and k entries up to ~31): no overflow, no NaN.
    check(&SdpaCase {
        amp: 31.6,
        seed: 300,
        mask: MaskKind::Causal,
        ..SdpaCase::new(1, 2, 2, 40, 70, 16, 16)
    });
    check(&SdpaCase {
        amp: 31.6,
        seed: 301,
        ..SdpaCase::new(1, 1, 1, 3, 5000, 8, 8)
    });
}

#[test]
fn sdpa_decode_split_matches_ref() {
    // Lq small, Lk long: the flash-decoding split runs (tiles < 16, Lk ≥ 2 chunks).
    check(&SdpaCase {
        seed: 400,
        ..SdpaCase::new(1, 4, 1, 1, 5000, 32, 32)
    });
    check(&SdpaCase {
        seed: 401,
        mask: MaskKind::Causal,
        padding: true,
        ..SdpaCase::new(2, 4, 2, 3, 4500, 16, 16)
    });
    check(&SdpaCase {
        seed: 402,
        window: Some((Some(3000), None)),
        ..SdpaCase::new(1, 2, 2, 2, 4200, 8, 8)
    });
    // More rows than the in-place decode kernels take: the split runs on packed K/V.
    check(&SdpaCase {
        seed: 403,
        mask: MaskKind::Causal,
        ..SdpaCase::new(1, 2, 1, 12, 4500, 16, 16)
    });
}

#[test]
fn fully_masked_rows_give_zeros_not_nan() {
    let (lq, lk, d) = (4, 6, 8);
    let x = vec![0.5f32; lq * lk.max(lq) * d];
    let q = TensorRef::contiguous(&x[..lq * d], [1, 1, lq, d]).unwrap();
    let k = TensorRef::contiguous(&x[..lk * d], [1, 1, lk, d]).unwrap();
    let mask = vec![false; lq * lk];
    let m = TensorRef::contiguous(&mask, [1, 1, lq, lk]).unwrap();
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        let opts = SdpaOptions::default()
            .with_mask(Some(Mask::Bool(m)))
            .with_path(path);
        let out = fastattn_attention::sdpa(q, k, k, &opts).unwrap();
        assert!(out.iter().all(|&v| v == 0.0), "{path:?}: {out:?}");
    }
    // Zero valid keys through padding.
    let opts = SdpaOptions::default().with_kv_lengths(Some(&[0]));
    assert!(fastattn_attention::sdpa(q, k, k, &opts)
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn results_are_bit_identical_at_1_2_3_threads() {
    let mut rng = StdRng::seed_from_u64(500);
    for &(hq, hkv, lq, lk, causal) in &[
        (4, 2, 300, 300, true),
        (8, 2, 1, 9000, false),
        (4, 1, 5, 9000, true),
        (2, 2, 130, 70, false),
    ] {
        let d = 32;
        let qb = rand_vec(&mut rng, hq * lq * d);
        let kb = rand_vec(&mut rng, hkv * lk * d);
        let vb = rand_vec(&mut rng, hkv * lk * d);
        let q = TensorRef::contiguous(&qb, [1, hq, lq, d]).unwrap();
        let k = TensorRef::contiguous(&kb, [1, hkv, lk, d]).unwrap();
        let v = TensorRef::contiguous(&vb, [1, hkv, lk, d]).unwrap();
        for path in [AttnPath::Flash, AttnPath::Materialized] {
            let opts = SdpaOptions::default().with_causal(causal).with_path(path);
            let run = |t: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap();
                pool.install(|| fastattn_attention::sdpa(q, k, v, &opts).unwrap())
            };
            let one = run(1);
            for t in [2, 3] {
                assert!(
                    one == run(t),
                    "hq={hq} lq={lq} lk={lk} {path:?}: {t} threads differ"
                );
            }
            let seq = fastattn_attention::sdpa(
                q,
                k,
                v,
                &opts.clone().with_parallelism(Parallelism::Sequential),
            )
            .unwrap();
            assert!(one == seq, "{path:?}: sequential differs");
        }
    }
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let x = vec![0.0f32; 4 * 8 * 16];
    let q = TensorRef::contiguous(&x[..2 * 8 * 4], [1, 2, 8, 4]).unwrap();
    let k3 = TensorRef::contiguous(&x[..3 * 8 * 4], [1, 3, 8, 4]).unwrap();
    let k = TensorRef::contiguous(&x[..8 * 4], [1, 1, 8, 4]).unwrap();
    let kd = TensorRef::contiguous(&x[..8 * 5], [1, 1, 8, 5]).unwrap();
    let d = SdpaOptions::default();
    let e = fastattn_attention::sdpa(q, k3, k3, &d).unwrap_err();
    assert!(matches!(e, AttnError::HeadGroups { hq: 2, hkv: 3 }), "{e}");
    assert!(matches!(
        fastattn_attention::sdpa(q, kd, kd, &d),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        TensorRef::contiguous(&x, [2, 2, 64, 4]),
        Err(AttnError::Layout { .. })
    ));
    assert!(matches!(
        TensorRef::contiguous(&x, [usize::MAX, 2, 2, 2]),
        Err(AttnError::Overflow { .. })
    ));
    let mut o = vec![0.0f32; 64];
    assert!(matches!(
        TensorMut::new(&mut o, [1, 2, 8, 4], [0, 0, 4, 1]),
        Err(AttnError::Layout { .. })
    ));
    let bad_mask = vec![true; 8 * 7];
    let m = TensorRef::contiguous(&bad_mask, [1, 1, 8, 7]).unwrap();
    let o1 = SdpaOptions::default().with_mask(Some(Mask::Bool(m)));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o1),
        Err(AttnError::Option { .. })
    ));
    let o2 = SdpaOptions::default().with_kv_lengths(Some(&[9]));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o2),
        Err(AttnError::Option { .. })
    ));
    let o3 = SdpaOptions::default().with_kv_lengths(Some(&[1, 2]));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o3),
        Err(AttnError::Option { .. })
    ));
    let o4 = SdpaOptions::default().with_alibi_slopes(Some(&[1.0]));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o4),
        Err(AttnError::Option { .. })
    ));
    let o5 = SdpaOptions::default().with_softcap(Some(0.0));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o5),
        Err(AttnError::Option { .. })
    ));
    let o6 = SdpaOptions::default().with_isa(Some(Isa::Neon));
    assert!(matches!(
        fastattn_attention::sdpa(q, k, k, &o6),
        Err(AttnError::Kernel(_))
    ));
    let mut w = vec![0.0f32; 2 * 8 * 8];
    let o7 = SdpaOptions::default().with_path(AttnPath::Flash);
    let mut ob = vec![0.0f32; 2 * 8 * 4];
    let r = sdpa_into(
        q,
        k,
        k,
        TensorMut::contiguous(&mut ob, [1, 2, 8, 4]).unwrap(),
        &o7,
        SdpaOutputs::default()
            .with_weights(Some(TensorMut::contiguous(&mut w, [1, 2, 8, 8]).unwrap()))
            .with_lse(None),
    );
    assert!(matches!(r, Err(AttnError::Option { .. })));
    let r = sdpa_into(
        q,
        k,
        k,
        TensorMut::contiguous(&mut ob, [1, 2, 4, 8]).unwrap(),
        &d,
        SdpaOutputs::default(),
    );
    assert!(matches!(r, Err(AttnError::Shape { .. })));
}

#[test]
fn a_forced_variant_is_used_even_after_another_on_the_same_thread() {
    // Each thread caches packed K/V between calls; a call forcing another variant must not
    // reuse panels packed for the previous one (it would silently run the wrong kernel).
    let (h, l, d) = (2, 300, 32);
    let mut rng = StdRng::seed_from_u64(600);
    let x = rand_vec(&mut rng, h * l * d);
    let t = TensorRef::contiguous(&x, [1, h, l, d]).unwrap();
    let run = |isa: Isa| {
        let opts = SdpaOptions::default()
            .with_isa(Some(isa))
            .with_parallelism(Parallelism::Sequential);
        fastattn_attention::sdpa(t, t, t, &opts).unwrap()
    };
    let isas = Isa::available();
    for &first in &isas {
        for &second in &isas {
            let (fresh, after) = std::thread::scope(|sc| {
                let fresh = sc.spawn(|| run(second)).join().unwrap();
                let after = sc
                    .spawn(|| {
                        run(first);
                        run(second)
                    })
                    .join()
                    .unwrap();
                (fresh, after)
            });
            assert!(
                fresh == after,
                "{second} after {first} differs from {second} alone"
            );
        }
    }
}
