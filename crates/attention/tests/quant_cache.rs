//! The 8-bit caches: `QuantKvCache` (dense, per-row or per-head scales) and
//! `paged_kv_write_quant` (paged, quantise on write): values within the format's bound of
//! what was written, attention over them equal to attention over their dequantised values,
//! half a 16-bit cache's bytes, and every bad input refused with nothing written.

use fastattn_attention::quant::QuantTensor;
use fastattn_attention::quant_cache::{paged_kv_write_quant, PagedScales, QuantKvCache};
use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    sdpa_kv_into, AttnError, KvCache, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::bf16;
use kernels::quant::{Code, F8E4M3, F8E5M2};
use testutil::{assert_close, assert_err, rand_vec, seeded};

/// The largest error a value of magnitude `x` can carry in format `C` with `scale`.
fn bound<C: Code>(x: f32, scale: f32) -> f32 {
    let rel = match C::QTYPE {
        kernels::quant::QuantType::I8 => 0.0,
        kernels::quant::QuantType::F8E4M3 => 1.0 / 16.0,
        kernels::quant::QuantType::F8E5M2 => 1.0 / 8.0,
    };
    let abs = match C::QTYPE {
        kernels::quant::QuantType::I8 => 0.5 * scale,
        kernels::quant::QuantType::F8E4M3 => scale / 1024.0,
        kernels::quant::QuantType::F8E5M2 => scale / 131072.0,
    };
    x.abs() * rel + abs + 1e-6 * x.abs()
}

/// Dequantised `[B, H, L, D]` of a view.
fn dequant<C: Code>(t: &QuantTensor<'_, C>) -> Vec<f32> {
    let [b, h, l, d] = t.dims();
    let mut out = Vec::new();
    for i in 0..b {
        for j in 0..h {
            for k in 0..l {
                for x in 0..d {
                    out.push(t.value(i, j, k, x));
                }
            }
        }
    }
    out
}

fn dense_cache<C: Code>(mut cache: QuantKvCache<C>, seed: u64) {
    let (b, hkv, d, hq) = (2usize, 2usize, 16usize, 4usize);
    let mut rng = seeded(seed);
    let mut all_k: Vec<Vec<f32>> = vec![Vec::new(); b * hkv];
    // A prompt of 20 tokens, then 5 decode steps.
    for n in [20usize, 1, 1, 1, 1, 1] {
        let k = rand_vec(&mut rng, b * hkv * n * d);
        let v = rand_vec(&mut rng, b * hkv * n * d);
        let kt = TensorRef::contiguous(&k, [b, hkv, n, d]).unwrap();
        cache
            .append(kt, TensorRef::contiguous(&v, [b, hkv, n, d]).unwrap())
            .unwrap();
        for (r, row) in k.chunks(n * d).enumerate() {
            all_k[r].extend_from_slice(row);
        }
        // The stored keys are the appended ones within the format's bound.
        let keys = cache.keys();
        let l = cache.len();
        for bb in 0..b {
            for h in 0..hkv {
                for t in 0..l {
                    for x in 0..d {
                        let want = all_k[bb * hkv + h][t * d + x];
                        let got = keys.value(bb, h, t, x);
                        let s = keys.scale(bb, h, t);
                        assert!(
                            (got - want).abs() <= bound::<C>(want, s),
                            "{:?} ({bb},{h},{t},{x}): {got} vs {want}",
                            C::QTYPE
                        );
                    }
                }
            }
        }
        // Decode attention over the cache equals the reference on its dequantised values.
        let q = rand_vec(&mut rng, b * hq * d);
        let qt = TensorRef::contiguous(&q, [b, hq, 1, d]).unwrap();
        let (kf, vf) = (dequant(&cache.keys()), dequant(&cache.values()));
        let dims = [b, hkv, l, d];
        let want = sdpa_ref(
            qt,
            TensorRef::contiguous(&kf, dims).unwrap(),
            TensorRef::contiguous(&vf, dims).unwrap(),
            &SdpaOptions::new(),
        )
        .unwrap();
        let mut out = vec![0.0f32; b * hq * d];
        let om = TensorMut::contiguous(&mut out, [b, hq, 1, d]).unwrap();
        sdpa_kv_into(
            qt.into(),
            cache.keys().into(),
            cache.values().into(),
            om.into(),
            &SdpaOptions::new(),
            SdpaOutputs::default(),
        )
        .unwrap();
        assert_close(format!("{:?} len {l}", C::QTYPE), &out, &want.out, 2e-5);
    }
}

#[test]
fn dense_8bit_caches_store_within_bounds_and_attend_exactly() {
    dense_cache(QuantKvCache::<i8>::new(2, 2, 16, 32).unwrap(), 1);
    dense_cache(QuantKvCache::<F8E4M3>::new(2, 2, 16, 32).unwrap(), 2);
    dense_cache(
        QuantKvCache::<F8E4M3>::per_head(2, 2, 16, 32, Some(&[0.01]), Some(&[0.02, 0.03])).unwrap(),
        3,
    );
    dense_cache(
        QuantKvCache::<F8E5M2>::per_head(2, 2, 16, 32, Some(&[0.01, 0.01]), Some(&[0.01])).unwrap(),
        4,
    );
}

#[test]
fn per_head_scales_come_from_the_first_append_and_are_kept() {
    let mut c = QuantKvCache::<F8E4M3>::per_head(1, 2, 4, 8, None, None).unwrap();
    assert!(c.head_scales().is_none());
    let k: Vec<f32> = vec![1.0, -2.0, 0.5, 0.0, /* head 1 */ 8.0, 1.0, 1.0, 1.0];
    let t = TensorRef::contiguous(&k, [1, 2, 1, 4]).unwrap();
    c.append(t, t).unwrap();
    let (ks, vs) = c.head_scales().unwrap();
    assert_eq!(ks, &[2.0 / 448.0, 8.0 / 448.0]);
    assert_eq!(ks, vs);
    // The largest magnitude of each head is stored exactly; a later, larger value saturates.
    assert_eq!(c.keys().value(0, 0, 0, 1), -2.0);
    assert_eq!(c.keys().value(0, 1, 0, 0), 8.0);
    let big = vec![100.0f32; 8];
    c.append(
        TensorRef::contiguous(&big, [1, 2, 1, 4]).unwrap(),
        TensorRef::contiguous(&big, [1, 2, 1, 4]).unwrap(),
    )
    .unwrap();
    assert_eq!(c.keys().value(0, 0, 1, 0), 2.0);
    assert_eq!(c.head_scales().unwrap().0, &[2.0 / 448.0, 8.0 / 448.0]);
}

#[test]
fn an_8bit_cache_holds_its_tokens_in_about_half_a_16bit_caches_bytes() {
    let (b, h, d, cap) = (1, 8, 128, 4096);
    let bf = KvCache::<bf16>::zeros(b, h, d, cap).unwrap().bytes();
    // int8 with an f32 scale per token and head: (D + 4) / (2·D) of bf16.
    let i8c = QuantKvCache::<i8>::new(b, h, d, cap).unwrap().bytes();
    assert_eq!(i8c * 2 * d, bf * (d + 4));
    assert!((i8c as f64) / (bf as f64) < 0.52);
    // fp8 with per-head scales: half, plus 2·Hkv scales.
    let f8 = QuantKvCache::<F8E4M3>::per_head(b, h, d, cap, None, None)
        .unwrap()
        .bytes();
    assert_eq!(f8, bf / 2 + 2 * 4 * h);
}

#[test]
fn bad_appends_and_constructions_are_refused_and_leave_the_cache_unchanged() {
    let mut c = QuantKvCache::<i8>::new(1, 1, 4, 4).unwrap();
    let ok = [0.5f32; 4];
    let t = TensorRef::contiguous(&ok, [1, 1, 1, 4]).unwrap();
    c.append(t, t).unwrap();
    let before = dequant(&c.keys());
    for bad in [f32::NAN, f32::INFINITY] {
        let x = [0.1f32, bad, 0.2, 0.3];
        let bt = TensorRef::contiguous(&x, [1, 1, 1, 4]).unwrap();
        assert_err!(c.append(t, bt), AttnError::Kernel(_));
        assert_err!(c.append(bt, t), AttnError::Kernel(_));
    }
    assert_eq!((c.len(), dequant(&c.keys())), (1, before));
    let wrong = [0.0f32; 8];
    assert_err!(
        c.append(
            TensorRef::contiguous(&wrong, [1, 2, 1, 4]).unwrap(),
            TensorRef::contiguous(&wrong, [1, 2, 1, 4]).unwrap()
        ),
        AttnError::Shape { .. }
    );
    let four = [0.0f32; 16];
    let t4 = TensorRef::contiguous(&four, [1, 1, 4, 4]).unwrap();
    assert_err!(c.append(t4, t4), AttnError::CacheFull { .. });
    assert_eq!(c.len(), 1);
    // Per-head scales: wrong count, bad values, only one of the two.
    assert_err!(
        QuantKvCache::<F8E4M3>::per_head(1, 2, 4, 4, Some(&[1.0; 3]), Some(&[1.0])),
        AttnError::Scale { .. }
    );
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_err!(
            QuantKvCache::<F8E5M2>::per_head(1, 2, 4, 4, Some(&[1.0]), Some(&[bad])),
            AttnError::Scale { .. }
        );
    }
    assert_err!(
        QuantKvCache::<F8E4M3>::per_head(1, 2, 4, 4, Some(&[1.0]), None),
        AttnError::Scale { .. }
    );
}

fn paged<C: Code>(fixed: Option<&[f32]>, seed: u64) {
    let (nb, bs, hkv, d, tokens) = (5usize, 4usize, 2usize, 8usize, 6usize);
    let mut rng = seeded(seed);
    let k = rand_vec(&mut rng, tokens * hkv * d);
    let v = rand_vec(&mut rng, tokens * hkv * d);
    // Packed [T, Hkv, D] rows.
    let st = [tokens * hkv * d, d, hkv * d, 1];
    let kt = TensorRef::new(&k, [1, hkv, tokens, d], st).unwrap();
    let vt = TensorRef::new(&v, [1, hkv, tokens, d], st).unwrap();
    let slots: Vec<i64> = vec![17, 3, -1, 0, 9, 4];
    let (mut kc, mut vc) = (
        vec![C::default(); nb * bs * hkv * d],
        vec![C::default(); nb * bs * hkv * d],
    );
    let (mut ks, mut vs) = (vec![0.0f32; nb * bs * hkv], vec![0.0f32; nb * bs * hkv]);
    let pd = [nb, bs, hkv, d];
    {
        let (ksc, vsc) = match fixed {
            Some(f) => (PagedScales::Fixed(f), PagedScales::Fixed(f)),
            None => (PagedScales::PerRow(&mut ks), PagedScales::PerRow(&mut vs)),
        };
        paged_kv_write_quant(
            kt,
            vt,
            TensorMut::contiguous(&mut kc, pd).unwrap(),
            ksc,
            TensorMut::contiguous(&mut vc, pd).unwrap(),
            vsc,
            &slots,
        )
        .unwrap();
    }
    let view = |c: &'_ [C], s: &'_ [f32]| -> Vec<f32> {
        let ct = TensorRef::contiguous(c, pd).unwrap();
        let q = match fixed {
            Some(f) if f.len() == 1 => QuantTensor::per_tensor(ct, f[0]),
            Some(f) => QuantTensor::new(ct, f, [0, 0, 1]).unwrap(),
            None => QuantTensor::per_row(ct, s).unwrap(),
        };
        dequant(&q)
    };
    let (kd, vd) = (view(&kc, &ks), view(&vc, &vs));
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 {
            continue;
        }
        let (page, off) = (s as usize / bs, s as usize % bs);
        for h in 0..hkv {
            for x in 0..d {
                let i = ((page * bs + off) * hkv + h) * d + x;
                let sc = match fixed {
                    Some(f) => f[if f.len() == 1 { 0 } else { h }],
                    None => ks[(page * bs + off) * hkv + h],
                };
                let want = k[(t * hkv + h) * d + x];
                assert!(
                    (kd[i] - want).abs() <= bound::<C>(want, sc),
                    "{:?} k t {t} h {h} x {x}",
                    C::QTYPE
                );
                let want = v[(t * hkv + h) * d + x];
                let sc = match fixed {
                    Some(f) => f[if f.len() == 1 { 0 } else { h }],
                    None => vs[(page * bs + off) * hkv + h],
                };
                assert!(
                    (vd[i] - want).abs() <= bound::<C>(want, sc),
                    "{:?} v",
                    C::QTYPE
                );
            }
        }
    }
    // Slots nobody wrote stay zero.
    let written: Vec<usize> = slots
        .iter()
        .filter(|&&s| s >= 0)
        .map(|&s| s as usize)
        .collect();
    for slot in 0..nb * bs {
        if !written.contains(&slot) {
            assert!(kc[slot * hkv * d..(slot + 1) * hkv * d]
                .iter()
                .all(|&c| c == C::default()));
        }
    }
}

#[test]
fn paged_writes_quantise_into_their_slots() {
    paged::<i8>(None, 11);
    paged::<F8E4M3>(None, 12);
    paged::<F8E4M3>(Some(&[0.01]), 13);
    paged::<F8E5M2>(Some(&[0.01, 0.002]), 14);
}

#[test]
fn bad_paged_writes_are_refused_with_nothing_written() {
    let (nb, bs, hkv, d) = (2usize, 2usize, 1usize, 4usize);
    let pd = [nb, bs, hkv, d];
    let x = [0.5f32, 1.0, -1.0, 0.25];
    let t = TensorRef::contiguous(&x, [1, 1, 1, 4]).unwrap();
    let nan = [0.5f32, f32::NAN, -1.0, 0.25];
    let tn = TensorRef::contiguous(&nan, [1, 1, 1, 4]).unwrap();
    let go = |k: TensorRef<'_, f32>,
              v: TensorRef<'_, f32>,
              ks: Option<Vec<f32>>,
              rows: usize,
              slots: &[i64]| {
        let (mut kc, mut vc) = (vec![5i8; nb * bs * hkv * d], vec![5i8; nb * bs * hkv * d]);
        let (mut a, mut b) = (vec![7.0f32; rows], vec![7.0f32; nb * bs * hkv]);
        let r = {
            let ksc = match &ks {
                Some(f) => PagedScales::Fixed(f),
                None => PagedScales::PerRow(&mut a),
            };
            paged_kv_write_quant(
                k,
                v,
                TensorMut::contiguous(&mut kc, pd).unwrap(),
                ksc,
                TensorMut::contiguous(&mut vc, pd).unwrap(),
                PagedScales::PerRow(&mut b),
                slots,
            )
        };
        if r.is_err() {
            assert!(
                kc.iter().chain(&vc).all(|&c| c == 5),
                "codes written on error"
            );
            assert!(
                a.iter().chain(&b).all(|&s| s == 7.0),
                "scales written on error"
            );
        }
        r
    };
    go(t, t, None, nb * bs * hkv, &[3]).unwrap();
    assert_err!(go(tn, t, None, nb * bs * hkv, &[3]), AttnError::Kernel(_));
    assert_err!(go(t, tn, None, nb * bs * hkv, &[3]), AttnError::Kernel(_));
    assert_err!(go(t, t, None, 3, &[3]), AttnError::Scale { .. });
    assert_err!(
        go(t, t, Some(vec![1.0, 1.0]), nb * bs * hkv, &[3]),
        AttnError::Scale { .. }
    );
    assert_err!(
        go(t, t, Some(vec![0.0]), nb * bs * hkv, &[3]),
        AttnError::Scale { .. }
    );
    assert_err!(
        go(t, t, Some(vec![f32::NAN]), nb * bs * hkv, &[3]),
        AttnError::Scale { .. }
    );
    assert_err!(
        go(t, t, None, nb * bs * hkv, &[4]),
        AttnError::Option { .. }
    );
    assert_err!(
        go(t, t, None, nb * bs * hkv, &[0, 1]),
        AttnError::Shape { .. }
    );
    // A NaN in a skipped token (-1) is never read.
    go(tn, tn, None, nb * bs * hkv, &[-1]).unwrap();
}
