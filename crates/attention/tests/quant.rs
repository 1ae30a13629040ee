//! Attention on 8-bit keys and values (int8 with a scale per token and head; fp8 e4m3fn
//! and e5m2 with a scale per tensor, per head or per row): equal to the f64 reference on
//! the dequantised values within the f32 path's tolerance, on every variant, both paths,
//! decode (the in-place kernels) and prefill (packing), GQA, masks and score options,
//! strided views; paged 8-bit caches against the same pages dequantised; bad scales
//! refused before anything is written; NaN codes a query cannot see never reach it.

use fastattn_attention::quant::QuantTensor;
use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    sdpa_kv_into, sdpa_varlen_into_dyn, sdpa_varlen_kv_into, AttnError, AttnPath, Mask,
    SdpaOptions, SdpaOutputs, TensorMut, TensorRef, VarlenSeqs,
};
use kernels::quant::{f8_scale_for, Code, QuantType, F8E4M3, F8E5M2};
use kernels::Isa;
use rand::Rng;
use testutil::{assert_close, assert_err, rand_vec, seeded, variants};

/// How the scales are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// One per row (int8's layout; allowed for fp8 too).
    Row,
    /// One per head of the second dimension.
    Head,
    /// One for the tensor.
    Tensor,
}

/// `x` (rows of `d` values, `rows = dims[0]·dims[1]·dims[2]` contiguous) quantised to `C`
/// with scales in `layout`: the codes and the scales (`rows` of them for `Row`, `dims[1]`
/// for `Head`, one for `Tensor`).
fn quantise<C: Code>(x: &[f32], dims: [usize; 4], layout: Layout) -> (Vec<C>, Vec<f32>) {
    let d = dims[3];
    let rows = dims[0] * dims[1] * dims[2];
    let mut codes = vec![C::default(); x.len()];
    let amax = |r: std::ops::Range<usize>| -> f32 {
        x[r].iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-6)
    };
    let fmax = match C::QTYPE {
        QuantType::I8 => 127.0,
        QuantType::F8E4M3 => F8E4M3::MAX,
        QuantType::F8E5M2 => F8E5M2::MAX,
    };
    let scale_of_row = |i: usize, scales: &[f32]| match layout {
        Layout::Row => scales[i],
        Layout::Head => scales[(i / dims[2]) % dims[1]],
        Layout::Tensor => scales[0],
    };
    let scales: Vec<f32> = match layout {
        Layout::Row => (0..rows)
            .map(|i| f8_scale_for(amax(i * d..(i + 1) * d), fmax).unwrap())
            .collect(),
        Layout::Head => (0..dims[1])
            .map(|h| {
                let m = (0..rows)
                    .filter(|i| (i / dims[2]) % dims[1] == h)
                    .map(|i| amax(i * d..(i + 1) * d))
                    .fold(0.0f32, f32::max);
                f8_scale_for(m, fmax).unwrap()
            })
            .collect(),
        Layout::Tensor => vec![f8_scale_for(amax(0..x.len()), fmax).unwrap()],
    };
    for i in 0..rows {
        let sc = scale_of_row(i, &scales);
        for (c, &v) in codes[i * d..(i + 1) * d]
            .iter_mut()
            .zip(&x[i * d..(i + 1) * d])
        {
            *c = C::encode(v / sc);
        }
    }
    (codes, scales)
}

/// The quantised view of `codes` with `scales` in `layout` (`head_axis` is the heads'
/// dimension: 1 for dense views, 2 for paged ones).
fn view<'a, C: Code>(
    codes: TensorRef<'a, C>,
    scales: &'a [f32],
    layout: Layout,
    head_axis: usize,
) -> QuantTensor<'a, C> {
    match layout {
        Layout::Row => QuantTensor::per_row(codes, scales).unwrap(),
        Layout::Head => {
            let mut st = [0; 3];
            st[head_axis] = 1;
            QuantTensor::new(codes, scales, st).unwrap()
        }
        Layout::Tensor => QuantTensor::per_tensor(codes, scales[0]),
    }
}

/// The dequantised values of a dense quantised view, contiguous `[B, H, L, D]`.
fn dequant<C: Code>(t: &QuantTensor<'_, C>) -> Vec<f32> {
    let [b, h, l, d] = t.dims();
    let mut out = Vec::with_capacity(b * h * l * d);
    for i0 in 0..b {
        for i1 in 0..h {
            for i2 in 0..l {
                for i3 in 0..d {
                    out.push(t.value(i0, i1, i2, i3));
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

const CASES: [Case; 7] = [
    Case {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 1,
        lk: 1,
        d: 1,
        dv: 1,
    },
    Case {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 1,
        lk: 37,
        d: 16,
        dv: 16,
    },
    Case {
        b: 1,
        hq: 8,
        hkv: 2,
        lq: 1,
        lk: 300,
        d: 64,
        dv: 64,
    },
    Case {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 17,
        lk: 130,
        d: 33,
        dv: 7,
    },
    Case {
        b: 2,
        hq: 3,
        hkv: 3,
        lq: 5,
        lk: 70,
        d: 8,
        dv: 12,
    },
    Case {
        b: 1,
        hq: 4,
        hkv: 1,
        lq: 2,
        lk: 523,
        d: 128,
        dv: 128,
    },
    Case {
        b: 1,
        hq: 2,
        hkv: 2,
        lq: 40,
        lk: 40,
        d: 32,
        dv: 32,
    },
];

/// Every case × option set × path × variant against the f64 reference on the dequantised
/// values; K and V as BLHD (strided) views.
fn check<C: Code>(layout: Layout, seed: u64) {
    let mut rng = seeded(seed);
    for c in CASES {
        let (qd, kd, vd) = (
            [c.b, c.hq, c.lq, c.d],
            [c.b, c.hkv, c.lk, c.d],
            [c.b, c.hkv, c.lk, c.dv],
        );
        let q = rand_vec(&mut rng, c.b * c.hq * c.lq * c.d);
        // Keys and values with a spread of row magnitudes (so per-row scales differ).
        let kx: Vec<f32> = (0..c.b * c.hkv * c.lk * c.d)
            .map(|i| rng.random_range(-1.0f32..1.0) * (1.0 + (i / c.d % 5) as f32))
            .collect();
        let vx = rand_vec(&mut rng, c.b * c.hkv * c.lk * c.dv);
        let (kc, ks) = quantise::<C>(&kx, kd, layout);
        let (vc, vs) = quantise::<C>(&vx, vd, layout);
        let k = view(TensorRef::contiguous(&kc, kd).unwrap(), &ks, layout, 1);
        let v = view(TensorRef::contiguous(&vc, vd).unwrap(), &vs, layout, 1);
        let (kf, vf) = (dequant(&k), dequant(&v));
        let qt = TensorRef::contiguous(&q, qd).unwrap();
        let bool_mask: Vec<bool> = (0..c.lq * c.lk).map(|i| i % 3 != 1).collect();
        for (name, opts) in [
            ("plain", SdpaOptions::new()),
            ("causal", SdpaOptions::new().with_causal(true)),
            (
                "softcap+window",
                SdpaOptions::new()
                    .with_softcap(5.0)
                    .with_window(Some(9), Some(2)),
            ),
            (
                "mask",
                SdpaOptions::new().with_mask(Mask::Bool(
                    TensorRef::new(&bool_mask, [1, 1, c.lq, c.lk], [0, 0, c.lk, 1]).unwrap(),
                )),
            ),
        ] {
            let want = sdpa_ref(
                qt,
                TensorRef::contiguous(&kf, kd).unwrap(),
                TensorRef::contiguous(&vf, vd).unwrap(),
                &opts,
            )
            .unwrap();
            for path in [AttnPath::Auto, AttnPath::Materialized] {
                for isa in variants() {
                    let o = opts.clone().with_path(path).with_isa(isa);
                    let mut out = vec![0.0f32; c.b * c.hq * c.lq * c.dv];
                    let om = TensorMut::contiguous(&mut out, [c.b, c.hq, c.lq, c.dv]).unwrap();
                    sdpa_kv_into(
                        qt.into(),
                        k.into(),
                        v.into(),
                        om.into(),
                        &o,
                        SdpaOutputs::default(),
                    )
                    .unwrap();
                    let label = format!("{:?} {layout:?} {c:?} {name} {path:?} {isa:?}", C::QTYPE);
                    assert_close(&label, &out, &want.out, 2e-5);
                }
            }
        }
    }
}

#[test]
fn int8_per_row_matches_the_reference_on_dequantised_values() {
    check::<i8>(Layout::Row, 1);
}

#[test]
fn fp8_e4m3_matches_the_reference_per_tensor_per_head_per_row() {
    check::<F8E4M3>(Layout::Tensor, 2);
    check::<F8E4M3>(Layout::Head, 3);
    check::<F8E4M3>(Layout::Row, 4);
}

#[test]
fn fp8_e5m2_matches_the_reference_per_tensor_per_head() {
    check::<F8E5M2>(Layout::Tensor, 5);
    check::<F8E5M2>(Layout::Head, 6);
}

/// A paged 8-bit cache (pages shuffled, partly used, the unused slots' scales zero) gives
/// what the same pages dequantised to f32 give, decode and prefill, every variant.
fn paged<C: Code>(layout: Layout, seed: u64) {
    let mut rng = seeded(seed);
    let (hq, hkv, d, bs) = (8usize, 2usize, 64usize, 16usize);
    let nb = 12;
    let pdims = [nb, bs, hkv, d];
    let kx = rand_vec(&mut rng, nb * bs * hkv * d);
    let vx = rand_vec(&mut rng, nb * bs * hkv * d);
    let (kc, mut ks) = quantise::<C>(&kx, pdims, layout);
    let (vc, mut vs) = quantise::<C>(&vx, pdims, layout);
    // Two sequences: 37 keys over pages [7, 2, 9], 20 keys over [0, 11]; the rest unused.
    let table: Vec<i32> = vec![7, 2, 9, 0, 11, -1];
    let used: Vec<i32> = vec![37, 20];
    if layout == Layout::Row {
        // Slots no sequence reads: scale 0 (a fresh pool), never checked nor read.
        for page in [1usize, 3, 4, 5, 6, 8, 10] {
            for x in &mut ks[page * bs * hkv..(page + 1) * bs * hkv] {
                *x = 0.0;
            }
            vs[page * bs * hkv..(page + 1) * bs * hkv].fill(0.0);
        }
    }
    let k = view(TensorRef::contiguous(&kc, pdims).unwrap(), &ks, layout, 2);
    let v = view(TensorRef::contiguous(&vc, pdims).unwrap(), &vs, layout, 2);
    let (kf, vf) = (dequant(&k), dequant(&v));
    for (lq, causal) in [(1usize, false), (1, true), (5, true), (20, false)] {
        let cu_q: Vec<i32> = vec![0, lq as i32, 2 * lq as i32];
        let tq = 2 * lq;
        let q = rand_vec(&mut rng, tq * hq * d);
        let qt = TensorRef::from_blhd(&q, [1, hq, tq, d]).unwrap();
        let seqs = VarlenSeqs::new(&cu_q[..])
            .with_block_table(&table, 3)
            .with_seqused_k(&used[..]);
        let opts = SdpaOptions::new().with_causal(causal);
        let mut want = vec![0.0f32; tq * hq * d];
        let (kft, vft) = (
            TensorRef::contiguous(&kf, pdims).unwrap(),
            TensorRef::contiguous(&vf, pdims).unwrap(),
        );
        let om = TensorMut::from_blhd(&mut want, [1, hq, tq, d]).unwrap();
        sdpa_varlen_into_dyn(
            qt.into(),
            kft.into(),
            vft.into(),
            om.into(),
            &seqs,
            &opts,
            None,
        )
        .unwrap();
        for isa in variants() {
            let mut out = vec![0.0f32; tq * hq * d];
            let om = TensorMut::from_blhd(&mut out, [1, hq, tq, d]).unwrap();
            let o = opts.clone().with_isa(isa);
            sdpa_varlen_kv_into(qt.into(), k.into(), v.into(), om.into(), &seqs, &o, None).unwrap();
            assert_close(
                format!(
                    "paged {:?} {layout:?} lq {lq} causal {causal} {isa:?}",
                    C::QTYPE
                ),
                &out,
                &want,
                2e-5,
            );
        }
    }
}

#[test]
fn paged_8bit_caches_equal_their_dequantised_pages() {
    paged::<i8>(Layout::Row, 11);
    paged::<F8E4M3>(Layout::Tensor, 12);
    paged::<F8E4M3>(Layout::Head, 13);
    paged::<F8E5M2>(Layout::Head, 14);
}

/// Packed variable-length 8-bit K/V (`cu_seqlens_k`): each sequence's rows and scales.
#[test]
fn packed_varlen_8bit_kv_reads_each_sequences_rows_and_scales() {
    let mut rng = seeded(21);
    let (hq, hkv, d) = (4usize, 2usize, 16usize);
    let cu_q: Vec<i32> = vec![0, 1, 4];
    let cu_k: Vec<i32> = vec![0, 9, 30];
    let tk = 30;
    let kd = [1, hkv, tk, d];
    let kx = rand_vec(&mut rng, tk * hkv * d);
    let (kc, ks) = quantise::<i8>(&kx, kd, Layout::Row);
    let k = view(TensorRef::contiguous(&kc, kd).unwrap(), &ks, Layout::Row, 1);
    let kf = dequant(&k);
    let q = rand_vec(&mut rng, 4 * hq * d);
    let qt = TensorRef::from_blhd(&q, [1, hq, 4, d]).unwrap();
    let seqs = VarlenSeqs::new(&cu_q[..]).with_cu_seqlens_k(&cu_k[..]);
    let opts = SdpaOptions::new();
    let (mut out, mut want) = (vec![0.0f32; 4 * hq * d], vec![0.0f32; 4 * hq * d]);
    let kft = TensorRef::contiguous(&kf, kd).unwrap();
    sdpa_varlen_into_dyn(
        qt.into(),
        kft.into(),
        kft.into(),
        TensorMut::from_blhd(&mut want, [1, hq, 4, d])
            .unwrap()
            .into(),
        &seqs,
        &opts,
        None,
    )
    .unwrap();
    sdpa_varlen_kv_into(
        qt.into(),
        k.into(),
        k.into(),
        TensorMut::from_blhd(&mut out, [1, hq, 4, d])
            .unwrap()
            .into(),
        &seqs,
        &opts,
        None,
    )
    .unwrap();
    assert_close("packed varlen i8", &out, &want, 2e-5);
}

#[test]
fn bad_scales_are_refused_before_anything_is_written() {
    let (l, d) = (6usize, 8usize);
    let codes = vec![3i8; l * d];
    let q = vec![0.5f32; l * d];
    let qt = TensorRef::contiguous(&q, [1, 1, l, d]).unwrap();
    let ct = TensorRef::contiguous(&codes, [1, 1, l, d]).unwrap();
    let vt = TensorRef::contiguous(&q, [1, 1, l, d]).unwrap();
    // Wrong counts and extents are refused when the view is built.
    assert_err!(QuantTensor::per_row(ct, &[1.0; 5]), AttnError::Scale { .. });
    assert_err!(
        QuantTensor::new(ct, &[1.0; 5], [0, 0, 1]),
        AttnError::Scale { .. }
    );
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let mut sc = vec![0.1f32; l];
        sc[4] = bad;
        let k = QuantTensor::per_row(ct, &sc).unwrap();
        for path in [AttnPath::Auto, AttnPath::Materialized] {
            let mut out = vec![7.0f32; l * d];
            let om = TensorMut::contiguous(&mut out, [1, 1, l, d]).unwrap();
            let r = sdpa_kv_into(
                qt.into(),
                k.into(),
                k.into(),
                om.into(),
                &SdpaOptions::new().with_path(path),
                SdpaOutputs::default(),
            );
            assert_err!(r, AttnError::Scale { .. });
            assert!(out.iter().all(|&x| x == 7.0), "written on error");
        }
        let kt = QuantTensor::per_tensor(ct, bad);
        let mut out = vec![7.0f32; l * d];
        let om = TensorMut::contiguous(&mut out, [1, 1, l, d]).unwrap();
        let r = sdpa_kv_into(
            qt.into(),
            kt.into(),
            vt.into(),
            om.into(),
            &SdpaOptions::new(),
            SdpaOutputs::default(),
        );
        assert_err!(r, AttnError::Scale { .. });
        assert!(out.iter().all(|&x| x == 7.0));
    }
}

#[test]
fn nan_codes_a_query_cannot_see_never_reach_it() {
    // Causal decode-like prefill: key/value row 3 holds NaN codes; queries 0..3 cannot see
    // it, query 3 on can.
    let (l, d) = (6usize, 16usize);
    let mut rng = seeded(31);
    let q = rand_vec(&mut rng, l * d);
    let qt = TensorRef::contiguous(&q, [1, 1, l, d]).unwrap();
    for qtype in [QuantType::F8E4M3, QuantType::F8E5M2] {
        let nan = match qtype {
            QuantType::F8E4M3 => 0x7F,
            _ => 0x7E,
        };
        let bytes: Vec<u8> = (0..l * d)
            .map(|i| if i / d == 3 { nan } else { (i % 50) as u8 })
            .collect();
        for path in [AttnPath::Auto, AttnPath::Materialized] {
            for isa in variants() {
                let mut out = vec![0.0f32; l * d];
                let om = TensorMut::contiguous(&mut out, [1, 1, l, d]).unwrap();
                let o = SdpaOptions::new()
                    .with_causal(true)
                    .with_path(path)
                    .with_isa(isa);
                match qtype {
                    QuantType::F8E4M3 => {
                        let c: Vec<F8E4M3> = bytes.iter().map(|&b| F8E4M3::from_bits(b)).collect();
                        let k = QuantTensor::per_tensor(
                            TensorRef::contiguous(&c, [1, 1, l, d]).unwrap(),
                            0.5,
                        );
                        sdpa_kv_into(
                            qt.into(),
                            k.into(),
                            k.into(),
                            om.into(),
                            &o,
                            SdpaOutputs::default(),
                        )
                        .unwrap();
                    }
                    _ => {
                        let c: Vec<F8E5M2> = bytes.iter().map(|&b| F8E5M2::from_bits(b)).collect();
                        let k = QuantTensor::per_tensor(
                            TensorRef::contiguous(&c, [1, 1, l, d]).unwrap(),
                            0.5,
                        );
                        sdpa_kv_into(
                            qt.into(),
                            k.into(),
                            k.into(),
                            om.into(),
                            &o,
                            SdpaOutputs::default(),
                        )
                        .unwrap();
                    }
                }
                let label = format!("{qtype:?} {path:?} {isa:?}");
                assert!(
                    out[..3 * d].iter().all(|x| x.is_finite()),
                    "{label}: hidden NaN leaked"
                );
                assert!(
                    out[3 * d..].iter().all(|x| x.is_nan()),
                    "{label}: visible NaN lost"
                );
            }
        }
    }
}

#[test]
fn fully_masked_rows_give_zero() {
    let (l, d) = (4usize, 8usize);
    let codes = vec![5i8; l * d];
    let sc = vec![0.1f32; l];
    let k =
        QuantTensor::per_row(TensorRef::contiguous(&codes, [1, 1, l, d]).unwrap(), &sc).unwrap();
    let q = vec![0.3f32; l * d];
    let mask: Vec<bool> = (0..l * l).map(|i| i / l != 2).collect(); // row 2 sees nothing
    let m = Mask::Bool(TensorRef::contiguous(&mask, [1, 1, l, l]).unwrap());
    for path in [AttnPath::Auto, AttnPath::Materialized] {
        let mut out = vec![7.0f32; l * d];
        let om = TensorMut::contiguous(&mut out, [1, 1, l, d]).unwrap();
        let o = SdpaOptions::new()
            .with_mask(m)
            .with_path(path)
            .with_isa(Isa::best());
        sdpa_kv_into(
            TensorRef::contiguous(&q, [1, 1, l, d]).unwrap().into(),
            k.into(),
            k.into(),
            om.into(),
            &o,
            SdpaOutputs::default(),
        )
        .unwrap();
        assert!(out[2 * d..3 * d].iter().all(|&x| x == 0.0), "{path:?}");
        assert!((out[0] - 0.5).abs() < 1e-6);
    }
}
