//! 8-bit keys and values through the C ABI: `fa_sdpa` (decode and prefill) and
//! `fa_sdpa_varlen` over paged caches written by `fa_paged_kv_write_scaled`, with int8,
//! fp8 e4m3 and fp8 e5m2 codes and per-row, per-head and per-tensor scales, against the
//! same calls on f32 K/V holding the dequantised values (`decode(code) * scale`); and the
//! refusals (missing or misshapen scales, bad scale values, 8-bit types where they are not
//! accepted), each with its status code and nothing written.

// Options are set field by field after their defaults, as a C caller does after `*_init`.
#![allow(clippy::field_reassign_with_default)]

use attention::quant_cache::{paged_kv_write_quant, PagedScales};
use attention::{TensorMut, TensorRef};
use fastattn_capi::fa_dtype::*;
use fastattn_capi::fa_status::*;
use fastattn_capi::*;
use kernels::quant::{Code, F8E4M3, F8E5M2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::ffi::{c_int, c_void, CStr};
use std::ptr::null_mut;
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

/// A contiguous `[a, b, c, d]` view at `p`.
fn dense<T>(p: *const T, dtype: fa_dtype, dims: [usize; 4]) -> fa_tensor {
    let [_, b, c, d] = dims;
    fa_tensor {
        data: p.cast_mut().cast::<c_void>(),
        dims,
        strides: [(b * c * d) as isize, (c * d) as isize, d as isize, 1],
        dtype: dtype as i32,
    }
}

/// The `[1, H, T, D]` view of a packed `[T, H, D]` buffer at `p`.
fn packed<T>(p: *const T, dtype: fa_dtype, h: usize, t: usize, d: usize) -> fa_tensor {
    fa_tensor {
        data: p.cast_mut().cast::<c_void>(),
        dims: [1, h, t, d],
        strides: [(t * h * d) as isize, d as isize, (h * d) as isize, 1],
        dtype: dtype as i32,
    }
}

/// Random codes of `C` whose values lie well inside its range.
fn rand_codes<C: Code>(rng: &mut StdRng, n: usize) -> Vec<C> {
    (0..n)
        .map(|_| C::encode(rng.random_range(-0.9f32..0.9) * C::MAX.min(200.0)))
        .collect()
}

/// Scales of dims `sd` for codes of `C`: values of a few units.
fn rand_scales<C: Code>(rng: &mut StdRng, sd: [usize; 4]) -> Vec<f32> {
    let n: usize = sd.iter().product();
    (0..n)
        .map(|_| rng.random_range(0.5f32..1.5) * 3.0 / C::MAX.min(200.0))
        .collect()
}

/// The values of codes `c` of dims `dims` with contiguous scales `s` of dims `sd` (each
/// of `sd[0..3]` the codes' extent or 1).
fn dequantise<C: Code>(c: &[C], dims: [usize; 4], s: &[f32], sd: [usize; 4]) -> Vec<f32> {
    let [a, b, l, d] = dims;
    let mut out = vec![0.0f32; c.len()];
    for i in 0..a {
        for j in 0..b {
            for t in 0..l {
                let (si, sj, st) = (i.min(sd[0] - 1), j.min(sd[1] - 1), t.min(sd[2] - 1));
                let scale = s[(si * sd[1] + sj) * sd[2] + st];
                for e in 0..d {
                    let x = ((i * b + j) * l + t) * d + e;
                    out[x] = c[x].decode() * scale;
                }
            }
        }
    }
    out
}

/// `fa_sdpa` with 8-bit K and V of type `C` (`dt`) and scales of each layout, against
/// the call on their f32 values, for a decode step and a causal prefill.
fn sdpa_case<C: Code>(dt: fa_dtype, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, hq, hkv, d, dv) = (2, 4, 2, 8, 6);
    for (lq, lk, causal) in [(1, 9, 0), (5, 7, 1), (3, 3, 0)] {
        let kd = [b, hkv, lk, d];
        let vd = [b, hkv, lk, dv];
        for sd in [[b, hkv, lk, 1], [1, hkv, 1, 1], [1, 1, 1, 1], [b, 1, lk, 1]] {
            let q = rand_vec(&mut rng, b * hq * lq * d);
            let kc = rand_codes::<C>(&mut rng, kd.iter().product());
            let vc = rand_codes::<C>(&mut rng, vd.iter().product());
            let ks = rand_scales::<C>(&mut rng, sd);
            let vs = rand_scales::<C>(&mut rng, sd);
            let (k32, v32) = (dequantise(&kc, kd, &ks, sd), dequantise(&vc, vd, &vs, sd));
            let od = [b, hq, lq, dv];
            let n_out = od.iter().product();
            let qt = dense(q.as_ptr(), FA_DTYPE_F32, [b, hq, lq, d]);
            let mut lse_ref = vec![0.0f32; b * hq * lq];
            let mut lse = lse_ref.clone();

            let mut want = vec![0.0f32; n_out];
            let mut o = fa_sdpa_options::default();
            o.causal = causal;
            o.lse = lse_ref.as_mut_ptr();
            let mut ot = dense(want.as_mut_ptr(), FA_DTYPE_F32, od);
            let (kt, vt) = (
                dense(k32.as_ptr(), FA_DTYPE_F32, kd),
                dense(v32.as_ptr(), FA_DTYPE_F32, vd),
            );
            // SAFETY: live buffers of the views' extents; lse holds B*Hq*Lq floats.
            let rc = unsafe { fa_sdpa(&qt, &kt, &vt, &mut ot, &o) };
            assert_eq!(rc, OK, "{}", last_error());

            let mut got = vec![0.0f32; n_out];
            let (kst, vst) = (
                dense(ks.as_ptr(), FA_DTYPE_F32, sd),
                dense(vs.as_ptr(), FA_DTYPE_F32, sd),
            );
            o.k_scale = &kst;
            o.v_scale = &vst;
            o.lse = lse.as_mut_ptr();
            let mut ot = dense(got.as_mut_ptr(), FA_DTYPE_F32, od);
            let (kt, vt) = (dense(kc.as_ptr(), dt, kd), dense(vc.as_ptr(), dt, vd));
            // SAFETY: as above; the scales are f32 tensors of dims `sd`.
            let rc = unsafe { fa_sdpa(&qt, &kt, &vt, &mut ot, &o) };
            assert_eq!(rc, OK, "{dt:?} {sd:?}: {}", last_error());
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= 1e-5, "{dt:?} lq {lq} scales {sd:?}: {diff}");
            let diff = max_abs_diff(&lse, &lse_ref);
            assert!(diff <= 1e-5, "{dt:?} lq {lq} scales {sd:?} lse: {diff}");
        }
    }
}

#[test]
fn sdpa_with_8bit_kv_matches_the_f32_call_on_their_values() {
    sdpa_case::<i8>(FA_DTYPE_I8, 1);
    sdpa_case::<F8E4M3>(FA_DTYPE_F8_E4M3, 2);
    sdpa_case::<F8E5M2>(FA_DTYPE_F8_E5M2, 3);
}

/// A paged case: `nb` pages of `bs` slots, `hkv` heads of `d`.
const NB: usize = 6;
const BS: usize = 2;
const HKV: usize = 2;
const HQ: usize = 4;
const D: usize = 8;

/// Writes all `NB*BS` slots of 8-bit caches of `C` with `fa_paged_kv_write_scaled`
/// (per-slot scales when `per_row`, else fixed per-head ones), checks the codes and scales
/// against `paged_kv_write_quant`, then runs `fa_sdpa_varlen` on the caches and on their
/// f32 values.
fn paged_case<C: Code>(dt: fa_dtype, per_row: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = NB * BS;
    let cd = [NB, BS, HKV, D];
    let (k, v) = (
        rand_vec(&mut rng, t * HKV * D),
        rand_vec(&mut rng, t * HKV * D),
    );
    let mut slots: Vec<i64> = (0..t as i64).collect();
    slots.reverse();
    slots.swap(1, 7);
    let sd = if per_row {
        [NB, BS, HKV, 1]
    } else {
        [1, 1, HKV, 1]
    };
    let n_s: usize = sd.iter().product();
    let fixed: Vec<f32> = (0..HKV).map(|h| (2.5 + h as f32) / C::MAX).collect();
    let (mut ks, mut vs) = match per_row {
        true => (vec![0.0f32; n_s], vec![0.0f32; n_s]),
        false => (fixed.clone(), fixed.iter().map(|x| x * 0.75).collect()),
    };
    let n_c = NB * BS * HKV * D;
    let (mut kc, mut vc) = (vec![C::default(); n_c], vec![C::default(); n_c]);
    {
        let (kt, vt) = (
            packed(k.as_ptr(), FA_DTYPE_F32, HKV, t, D),
            packed(v.as_ptr(), FA_DTYPE_F32, HKV, t, D),
        );
        let (mut kct, mut vct) = (
            dense(kc.as_mut_ptr(), dt, cd),
            dense(vc.as_mut_ptr(), dt, cd),
        );
        let (mut kst, mut vst) = (
            dense(ks.as_mut_ptr(), FA_DTYPE_F32, sd),
            dense(vs.as_mut_ptr(), FA_DTYPE_F32, sd),
        );
        // SAFETY: live buffers of the views' extents; T slots.
        let rc = unsafe {
            fa_paged_kv_write_scaled(
                &kt,
                &vt,
                &mut kct,
                &mut vct,
                &mut kst,
                &mut vst,
                slots.as_ptr(),
            )
        };
        assert_eq!(rc, OK, "{dt:?}: {}", last_error());
    }
    // The Rust call writes the same codes and scales.
    {
        let (mut kc2, mut vc2) = (vec![C::default(); n_c], vec![C::default(); n_c]);
        let (mut ks2, mut vs2) = (vec![0.0f32; n_s], vec![0.0f32; n_s]);
        let vfixed: Vec<f32> = fixed.iter().map(|x| x * 0.75).collect();
        let (kps, vps) = match per_row {
            true => (PagedScales::PerRow(&mut ks2), PagedScales::PerRow(&mut vs2)),
            false => (PagedScales::Fixed(&fixed), PagedScales::Fixed(&vfixed)),
        };
        let st = [t * HKV * D, D, HKV * D, 1];
        paged_kv_write_quant(
            TensorRef::new(&k, [1, HKV, t, D], st).unwrap(),
            TensorRef::new(&v, [1, HKV, t, D], st).unwrap(),
            TensorMut::contiguous(&mut kc2, cd).unwrap(),
            kps,
            TensorMut::contiguous(&mut vc2, cd).unwrap(),
            vps,
            &slots,
        )
        .unwrap();
        assert_eq!((&kc, &vc), (&kc2, &vc2), "{dt:?}");
        if per_row {
            assert_eq!((&ks, &vs), (&ks2, &vs2), "{dt:?}");
        }
    }

    // Two sequences of 1 and 3 queries over 5 and 4 keys on their pages.
    let table: [i32; 6] = [0, 3, 5, 1, 4, 2];
    let cu_q: [i32; 3] = [0, 1, 4];
    let used: [i32; 2] = [5, 4];
    let tq = 4;
    let q = rand_vec(&mut rng, tq * HQ * D);
    let mut seqs = fa_varlen_seqs::default();
    seqs.batch = 2;
    seqs.cu_seqlens_q = cu_q.as_ptr().cast();
    seqs.seqused_k = used.as_ptr().cast();
    seqs.block_table = table.as_ptr();
    seqs.blocks_per_seq = 3;
    let qt = packed(q.as_ptr(), FA_DTYPE_F32, HQ, tq, D);
    let (k32, v32) = (dequantise(&kc, cd, &ks, sd), dequantise(&vc, cd, &vs, sd));
    let mut want = vec![0.0f32; tq * HQ * D];
    let mut got = vec![0.0f32; tq * HQ * D];
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    {
        let mut ot = packed(want.as_mut_ptr(), FA_DTYPE_F32, HQ, tq, D);
        let (kt, vt) = (
            dense(k32.as_ptr(), FA_DTYPE_F32, cd),
            dense(v32.as_ptr(), FA_DTYPE_F32, cd),
        );
        // SAFETY: live buffers of the views' extents; the arrays hold what seqs says.
        let rc = unsafe { fa_sdpa_varlen(&qt, &kt, &vt, &mut ot, &seqs, &o) };
        assert_eq!(rc, OK, "{}", last_error());
    }
    let (kst, vst) = (
        dense(ks.as_ptr(), FA_DTYPE_F32, sd),
        dense(vs.as_ptr(), FA_DTYPE_F32, sd),
    );
    o.k_scale = &kst;
    o.v_scale = &vst;
    let mut ot = packed(got.as_mut_ptr(), FA_DTYPE_F32, HQ, tq, D);
    let (kt, vt) = (dense(kc.as_ptr(), dt, cd), dense(vc.as_ptr(), dt, cd));
    // SAFETY: as above; the scales are f32 tensors of dims `sd`.
    let rc = unsafe { fa_sdpa_varlen(&qt, &kt, &vt, &mut ot, &seqs, &o) };
    assert_eq!(rc, OK, "{dt:?}: {}", last_error());
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-5, "{dt:?} per_row {per_row}: {diff}");
    assert!(want.iter().any(|&x| x != 0.0));
}

#[test]
fn varlen_over_8bit_paged_caches_matches_the_f32_call_on_their_values() {
    paged_case::<i8>(FA_DTYPE_I8, true, 11);
    paged_case::<i8>(FA_DTYPE_I8, false, 12);
    paged_case::<F8E4M3>(FA_DTYPE_F8_E4M3, false, 13);
    paged_case::<F8E4M3>(FA_DTYPE_F8_E4M3, true, 14);
    paged_case::<F8E5M2>(FA_DTYPE_F8_E5M2, false, 15);
}

/// The buffers of a small dense `fa_sdpa` call with int8 K/V.
struct Small {
    q: Vec<f32>,
    kc: Vec<i8>,
    ks: Vec<f32>,
    out: Vec<f32>,
}

const SENTINEL: f32 = 7.25;

impl Small {
    fn new() -> Small {
        let mut rng = StdRng::seed_from_u64(21);
        Small {
            q: rand_vec(&mut rng, 2 * 3 * 4),
            kc: rand_codes::<i8>(&mut rng, 2 * 3 * 4),
            ks: vec![0.01f32; 2 * 3],
            out: vec![SENTINEL; 2 * 3 * 4],
        }
    }

    /// `fa_sdpa` with Q `[2, 1, 3, 4]` (type `q_dt`), K = V = the codes as `kv_dt`, scales
    /// `k_scale` / `v_scale`, output of type `out_dt`, and options `o`.
    fn run(
        &mut self,
        q_dt: fa_dtype,
        kv_dt: fa_dtype,
        out_dt: fa_dtype,
        scales: Option<(fa_tensor, fa_tensor)>,
        mut o: fa_sdpa_options,
    ) -> c_int {
        let dims = [2, 1, 3, 4];
        let qt = dense(self.q.as_ptr(), q_dt, dims);
        let kt = dense(self.kc.as_ptr(), kv_dt, dims);
        let mut ot = dense(self.out.as_mut_ptr(), out_dt, dims);
        let st;
        if let Some(s) = scales {
            st = s;
            o.k_scale = &st.0;
            o.v_scale = &st.1;
        }
        // SAFETY: live buffers of the views' extents (a Q or output of the wrong type is
        // refused before it is read).
        unsafe { fa_sdpa(&qt, &kt, &kt, &mut ot, &o) }
    }

    fn scale(&self, dims: [usize; 4]) -> fa_tensor {
        dense(self.ks.as_ptr(), FA_DTYPE_F32, dims)
    }

    fn untouched(&self) -> bool {
        self.out.iter().all(|&x| x == SENTINEL)
    }
}

#[test]
fn sdpa_refuses_bad_8bit_arguments_and_writes_nothing() {
    let mut s = Small::new();
    let o = fa_sdpa_options::default();
    let rows = [2, 1, 3, 1];
    let good = Some((s.scale(rows), s.scale(rows)));
    assert_eq!(
        s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, good, o),
        OK,
        "{}",
        last_error()
    );
    s.out.fill(SENTINEL);

    let inv = code(FA_ERR_INVALID_ARGUMENT);
    // 8-bit K/V without scales.
    assert_eq!(s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, None, o), inv);
    assert!(last_error().contains("opts->k_scale"), "{}", last_error());
    // Scales given for float K/V (here f32 codes of the same bytes' size are not needed:
    // the check comes first).
    let mut f = vec![0.0f32; 2 * 3 * 4];
    let ft = dense(f.as_mut_ptr(), FA_DTYPE_F32, [2, 1, 3, 4]);
    let st = s.scale(rows);
    let mut oo = o;
    oo.k_scale = &st;
    let qt = dense(s.q.as_ptr(), FA_DTYPE_F32, [2, 1, 3, 4]);
    let mut ot = dense(s.out.as_mut_ptr(), FA_DTYPE_F32, [2, 1, 3, 4]);
    // SAFETY: live buffers of the views' extents.
    let rc = unsafe { fa_sdpa(&qt, &ft, &ft, &mut ot, &oo) };
    assert_eq!(rc, inv);
    assert!(
        last_error().contains("8-bit codes only"),
        "{}",
        last_error()
    );
    assert!(s.untouched());

    // Scales of the wrong extents, or not f32.
    for bad in [[2, 1, 3, 2], [2, 1, 2, 1], [3, 1, 3, 1], [1, 1, 6, 1]] {
        let sc = Some((s.scale(bad), s.scale(rows)));
        assert_eq!(
            s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, sc, o),
            inv,
            "{bad:?}"
        );
        assert!(last_error().contains("opts->k_scale"), "{}", last_error());
        assert!(s.untouched());
    }
    let mut f16s = s.scale(rows);
    f16s.dtype = FA_DTYPE_F16 as i32;
    let sc = Some((s.scale(rows), f16s));
    assert_eq!(s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, sc, o), inv);
    assert!(last_error().contains("f32"), "{}", last_error());

    // A zero, NaN, negative or infinite scale on a row the call reads.
    for bad in [0.0f32, f32::NAN, -0.5, f32::INFINITY] {
        s.ks[4] = bad;
        let sc = Some((s.scale(rows), s.scale(rows)));
        assert_eq!(
            s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, sc, o),
            inv,
            "{bad}"
        );
        assert!(last_error().contains("scale"), "{}", last_error());
        assert!(s.untouched(), "{bad}");
    }
    s.ks[4] = 0.01;

    // 8-bit Q or output.
    for (q_dt, out_dt, what) in [
        (FA_DTYPE_I8, FA_DTYPE_F32, "q->dtype"),
        (FA_DTYPE_F8_E4M3, FA_DTYPE_F32, "q->dtype"),
        (FA_DTYPE_F32, FA_DTYPE_I8, "out->dtype"),
        (FA_DTYPE_F32, FA_DTYPE_F8_E5M2, "out->dtype"),
    ] {
        let sc = Some((s.scale(rows), s.scale(rows)));
        assert_eq!(s.run(q_dt, FA_DTYPE_I8, out_dt, sc, o), inv);
        let e = last_error();
        assert!(e.contains(what) && e.contains("8-bit"), "{e}");
        assert!(s.untouched());
    }
    // An 8-bit mask.
    let mask = dense(s.kc.as_ptr(), FA_DTYPE_I8, [1, 1, 3, 3]);
    let mut om = o;
    om.mask = &mask;
    let sc = Some((s.scale(rows), s.scale(rows)));
    assert_eq!(s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, sc, om), inv);
    assert!(last_error().contains("opts->mask"), "{}", last_error());
    assert!(s.untouched());
    // Unknown codes still name every type.
    let sc = Some((s.scale(rows), s.scale(rows)));
    assert_eq!(s.run(FA_DTYPE_F32, FA_DTYPE_I8, FA_DTYPE_F32, sc, o), OK);
    let kt = fa_tensor {
        dtype: 6,
        ..dense(s.kc.as_ptr(), FA_DTYPE_I8, [2, 1, 3, 4])
    };
    let qt = dense(s.q.as_ptr(), FA_DTYPE_F32, [2, 1, 3, 4]);
    let mut out2 = vec![SENTINEL; 24];
    let mut ot = dense(out2.as_mut_ptr(), FA_DTYPE_F32, [2, 1, 3, 4]);
    // SAFETY: live buffers of the views' extents.
    let rc = unsafe { fa_sdpa(&qt, &kt, &kt, &mut ot, &o) };
    assert_eq!(rc, inv);
    assert!(
        last_error().contains("FA_DTYPE_F8_E5M2 (5)"),
        "{}",
        last_error()
    );
}

#[test]
fn other_calls_refuse_8bit_types_and_scales() {
    let inv = code(FA_ERR_INVALID_ARGUMENT);
    let mut rng = StdRng::seed_from_u64(31);
    let dims = [1, 1, 2, 4];
    let x = rand_vec(&mut rng, 8);
    let codes = rand_codes::<i8>(&mut rng, 8);
    let ks = [0.5f32, 0.5];
    let st = dense(ks.as_ptr(), FA_DTYPE_F32, [1, 1, 2, 1]);
    let xt = dense(x.as_ptr(), FA_DTYPE_F32, dims);
    let ct = dense(codes.as_ptr(), FA_DTYPE_I8, dims);

    // fa_sdpa_backward: 8-bit K, or scales in the options.
    let mut g = [vec![SENTINEL; 8], vec![SENTINEL; 8], vec![SENTINEL; 8]];
    let [gq, gk, gv] = &mut g;
    let (mut gqt, mut gkt, mut gvt) = (
        dense(gq.as_mut_ptr(), FA_DTYPE_F32, dims),
        dense(gk.as_mut_ptr(), FA_DTYPE_F32, dims),
        dense(gv.as_mut_ptr(), FA_DTYPE_F32, dims),
    );
    let lse = [0.0f32; 2];
    let mut o = fa_sdpa_options::default();
    // SAFETY: live buffers of the views' extents; lse holds B*Hq*Lq floats.
    let rc = unsafe {
        fa_sdpa_backward(
            &xt,
            &ct,
            &ct,
            &xt,
            &xt,
            lse.as_ptr(),
            2,
            &mut gqt,
            &mut gkt,
            &mut gvt,
            &o,
        )
    };
    assert_eq!(rc, inv);
    assert!(last_error().contains("8-bit"), "{}", last_error());
    o.k_scale = &st;
    // SAFETY: as above.
    let rc = unsafe {
        fa_sdpa_backward(
            &xt,
            &xt,
            &xt,
            &xt,
            &xt,
            lse.as_ptr(),
            2,
            &mut gqt,
            &mut gkt,
            &mut gvt,
            &o,
        )
    };
    assert_eq!(rc, inv);
    assert!(last_error().contains("opts->k_scale"), "{}", last_error());
    assert!(g.iter().flatten().all(|&x| x == SENTINEL));

    // fa_paged_kv_write: 8-bit rows or caches.
    let mut c8 = vec![0i8; 16];
    let mut c32 = vec![SENTINEL; 16];
    let slots = [0i64, 1];
    let rows = packed(x.as_ptr(), FA_DTYPE_F32, 1, 2, 4);
    let rows8 = packed(codes.as_ptr(), FA_DTYPE_I8, 1, 2, 4);
    let (mut c8a, mut c8b) = (
        dense(c8.as_mut_ptr(), FA_DTYPE_I8, [1, 2, 1, 4]),
        dense(c8[8..].as_mut_ptr(), FA_DTYPE_I8, [1, 2, 1, 4]),
    );
    // SAFETY: live buffers of the views' extents; 2 slots.
    let rc = unsafe { fa_paged_kv_write(&rows, &rows, &mut c8a, &mut c8b, slots.as_ptr()) };
    assert_eq!(rc, inv);
    assert!(last_error().contains("k_cache->dtype"), "{}", last_error());
    let (mut ca, mut cb) = (
        dense(c32.as_mut_ptr(), FA_DTYPE_F32, [1, 2, 1, 4]),
        dense(c32[8..].as_mut_ptr(), FA_DTYPE_F32, [1, 2, 1, 4]),
    );
    // SAFETY: as above.
    let rc = unsafe { fa_paged_kv_write(&rows8, &rows8, &mut ca, &mut cb, slots.as_ptr()) };
    assert_eq!(rc, inv);
    assert!(last_error().contains("k->dtype"), "{}", last_error());
    assert!(c32.iter().all(|&x| x == SENTINEL));

    // fa_paged_kv_write_scaled: 8-bit caches without scales, scales for float caches,
    // scales of the wrong extents, read scales that are zero, 8-bit rows.
    let mut sc = [0.0f32; 2];
    let mut sct = dense(sc.as_mut_ptr(), FA_DTYPE_F32, [1, 2, 1, 1]);
    let mut sct2 = sct;
    // SAFETY: as above (NULL scales).
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows,
            &rows,
            &mut c8a,
            &mut c8b,
            null_mut(),
            null_mut(),
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, inv);
    assert!(last_error().contains("k_scale is NULL"), "{}", last_error());
    // SAFETY: as above.
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows,
            &rows,
            &mut ca,
            &mut cb,
            &mut sct,
            &mut sct2,
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, inv);
    assert!(
        last_error().contains("8-bit caches only"),
        "{}",
        last_error()
    );
    let mut bad = sct;
    bad.dims = [1, 1, 2, 1];
    bad.strides = [2, 2, 1, 1];
    // SAFETY: as above.
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows,
            &rows,
            &mut c8a,
            &mut c8b,
            &mut bad,
            &mut sct2,
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, inv);
    assert!(
        last_error().contains("k_scale is [1, 1, 2, 1]"),
        "{}",
        last_error()
    );
    let mut one = [0.0f32];
    let mut fixed = dense(one.as_mut_ptr(), FA_DTYPE_F32, [1, 1, 1, 1]);
    let mut fixed2 = fixed;
    // SAFETY: as above.
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows,
            &rows,
            &mut c8a,
            &mut c8b,
            &mut fixed,
            &mut fixed2,
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, inv);
    assert!(last_error().contains("scale"), "{}", last_error());
    assert!(c8.iter().all(|&x| x == 0) && sc == [0.0; 2]);
    // SAFETY: as above.
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows8,
            &rows8,
            &mut c8a,
            &mut c8b,
            &mut sct,
            &mut sct2,
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, inv);
    assert!(last_error().contains("k->dtype"), "{}", last_error());
    // A float cache with NULL scales is fa_paged_kv_write.
    // SAFETY: as above.
    let rc = unsafe {
        fa_paged_kv_write_scaled(
            &rows,
            &rows,
            &mut ca,
            &mut cb,
            null_mut(),
            null_mut(),
            slots.as_ptr(),
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(&c32[..4], &x[..4]);

    // The layer's KV cache and weights refuse 8-bit types.
    let mut cfg = fa_mha_config::default();
    cfg.d_model = 8;
    cfg.n_heads = 2;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 4;
    cfg.weight_dtype = FA_DTYPE_I8 as i32;
    let mut layer: *mut fa_mha = null_mut();
    // SAFETY: `cfg` is a valid config; `layer` is written on success only.
    let rc = unsafe { fa_mha_new_random(&cfg, 0, 1, &mut layer) };
    assert_eq!(rc, inv);
    assert!(last_error().contains("weight_dtype"), "{}", last_error());
    cfg.weight_dtype = FA_DTYPE_F32 as i32;
    // SAFETY: as above.
    let rc = unsafe { fa_mha_new_random(&cfg, 0, 1, &mut layer) };
    assert_eq!(rc, OK, "{}", last_error());
    let mut cache: *mut fa_kv_cache = null_mut();
    // SAFETY: a live layer; `cache` is written on success only.
    let rc = unsafe { fa_kv_cache_new_typed(layer, 1, 4, FA_DTYPE_F8_E4M3 as i32, &mut cache) };
    assert_eq!(rc, inv);
    assert!(cache.is_null());
    assert!(last_error().contains("8-bit"), "{}", last_error());
    // The layer refuses scales in its options.
    let xs = [0.5f32; 8];
    let mut ys = [SENTINEL; 8];
    let mut lo = fa_sdpa_options::default();
    lo.k_scale = &st;
    // SAFETY: a live layer; x and y hold batch*seq*d_model floats.
    let rc = unsafe { fa_mha_forward(layer, xs.as_ptr(), 1, 1, ys.as_mut_ptr(), &lo) };
    assert_eq!(rc, inv);
    assert!(last_error().contains("opts->k_scale"), "{}", last_error());
    assert!(ys.iter().all(|&x| x == SENTINEL));
    // SAFETY: a live layer, freed once.
    unsafe { fa_mha_free(layer) };
}

#[test]
fn an_abi_5_options_struct_has_no_scales() {
    // A caller built against ABI 5 has no `k_scale` / `v_scale`: whatever follows its
    // struct is never read.
    let old = std::mem::offset_of!(fa_sdpa_options, k_scale);
    let mut o = fa_sdpa_options::default();
    o.k_scale = 0x10 as *const fa_tensor; // pointers that must not be read
    o.v_scale = 0x10 as *const fa_tensor;
    // SAFETY: `o` is writable for `old` bytes; the rest is left alone (checked below).
    assert_eq!(unsafe { fa_sdpa_options_init(&mut o, old) }, OK);
    assert_eq!((o.struct_size, o.k_scale), (old, 0x10 as *const fa_tensor));
    let mut s = Small::new();
    let f: Vec<f32> = s.kc.iter().map(|&c| c as f32 * 0.01).collect();
    let dims = [2, 1, 3, 4];
    let (qt, ft) = (
        dense(s.q.as_ptr(), FA_DTYPE_F32, dims),
        dense(f.as_ptr(), FA_DTYPE_F32, dims),
    );
    let mut ot = dense(s.out.as_mut_ptr(), FA_DTYPE_F32, dims);
    // SAFETY: live buffers of the views' extents.
    let rc = unsafe { fa_sdpa(&qt, &ft, &ft, &mut ot, &o) };
    assert_eq!(rc, OK, "{}", last_error());
    // The same struct's 8-bit call has no scales, so it is refused.
    let kt = dense(s.kc.as_ptr(), FA_DTYPE_I8, dims);
    // SAFETY: as above.
    let rc = unsafe { fa_sdpa(&qt, &kt, &kt, &mut ot, &o) };
    assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT));
    assert!(last_error().contains("opts->k_scale"), "{}", last_error());
}
