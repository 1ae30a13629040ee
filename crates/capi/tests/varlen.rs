//! The serving calls of the C ABI called from Rust: `fa_sdpa_varlen` (packed and paged K/V)
//! against `sdpa_varlen_into_dyn` (bit for bit) and the per-sequence f64 reference,
//! `fa_paged_kv_write` against `paged_kv_write`, the sinks option of `fa_sdpa` (old callers
//! with the smaller options struct included), and each refusal's status code with nothing
//! written.

// Options are set field by field after their defaults, as a C caller does after `*_init`.
#![allow(clippy::field_reassign_with_default)]

use attention::reference::sdpa_ref;
use attention::{bf16, f16, SdpaOptions, SeqIdx, TensorMut, TensorRef, VarlenSeqs};
use fastattn_capi::fa_dtype::*;
use fastattn_capi::fa_status::*;
use fastattn_capi::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::ffi::{c_int, c_void, CStr};
use std::mem::{offset_of, size_of};
use std::ptr::{null, null_mut};
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

/// The `[1, H, T, D]` view of a packed `[T, H, D]` buffer at `p`.
fn packed<T>(p: *const T, dtype: fa_dtype, h: usize, t: usize, d: usize) -> fa_tensor {
    fa_tensor {
        data: p.cast_mut().cast::<c_void>(),
        dims: [1, h, t, d],
        strides: [(t * h * d) as isize, d as isize, (h * d) as isize, 1],
        dtype: dtype as i32,
    }
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

fn us(s: [isize; 4]) -> [usize; 4] {
    s.map(|x| x as usize)
}

/// One variable-length batch: packed Q, the keys both packed and in a paged cache.
struct Batch {
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    /// Queries per sequence.
    lq: Vec<usize>,
    /// Keys held per sequence (packed span, or pages' keys).
    lk: Vec<usize>,
    /// Keys attended per sequence (`seqused_k`, at most `lk`).
    used: Option<Vec<usize>>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    cu_q: Vec<i64>,
    cu_k: Vec<i64>,
    block_size: usize,
    blocks_per_seq: usize,
    table: Vec<i32>,
    num_blocks: usize,
    kc: Vec<f32>,
    vc: Vec<f32>,
}

fn offsets(lens: &[usize]) -> Vec<i64> {
    let mut cu = vec![0i64];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as i64);
    }
    cu
}

impl Batch {
    /// Random data for sequences of `lq` queries and `lk` keys, pages of `block_size` in a
    /// shuffled table padded with -1 (and one spare page per sequence).
    fn new(
        rng: &mut StdRng,
        heads: (usize, usize),
        dims: (usize, usize),
        lq: &[usize],
        lk: &[usize],
        block_size: usize,
    ) -> Batch {
        let ((hq, hkv), (d, dv)) = (heads, dims);
        let (tq, tk) = (lq.iter().sum::<usize>(), lk.iter().sum::<usize>());
        let (cu_q, cu_k) = (offsets(lq), offsets(lk));
        let (q, k, v) = (
            rand_vec(rng, tq * hq * d),
            rand_vec(rng, tk * hkv * d),
            rand_vec(rng, tk * hkv * dv),
        );
        let blocks_per_seq = lk.iter().map(|l| l.div_ceil(block_size)).max().unwrap_or(0) + 1;
        let needed: usize = lk.iter().map(|l| l.div_ceil(block_size)).sum();
        let num_blocks = needed + 3;
        let mut pages: Vec<i32> = (0..num_blocks as i32).collect();
        pages.shuffle(rng);
        let mut table = vec![-1i32; lk.len() * blocks_per_seq];
        let mut next = pages.into_iter();
        let mut kc = rand_vec(rng, num_blocks * block_size * hkv * d);
        let mut vc = rand_vec(rng, num_blocks * block_size * hkv * dv);
        for (s, &n) in lk.iter().enumerate() {
            for p in 0..n.div_ceil(block_size) {
                table[s * blocks_per_seq + p] = next.next().unwrap();
            }
            for j in 0..n {
                let page = table[s * blocks_per_seq + j / block_size] as usize;
                let slot = page * block_size + j % block_size;
                let t = cu_k[s] as usize + j;
                kc[slot * hkv * d..][..hkv * d].copy_from_slice(&k[t * hkv * d..][..hkv * d]);
                vc[slot * hkv * dv..][..hkv * dv].copy_from_slice(&v[t * hkv * dv..][..hkv * dv]);
            }
        }
        Batch {
            hq,
            hkv,
            d,
            dv,
            lq: lq.to_vec(),
            lk: lk.to_vec(),
            used: None,
            q,
            k,
            v,
            cu_q,
            cu_k,
            block_size,
            blocks_per_seq,
            table,
            num_blocks,
            kc,
            vc,
        }
    }

    fn tq(&self) -> usize {
        self.lq.iter().sum()
    }

    fn tk(&self) -> usize {
        self.lk.iter().sum()
    }

    fn used_or_held(&self) -> Vec<usize> {
        self.used.clone().unwrap_or_else(|| self.lk.clone())
    }

    /// The per-sequence f64 reference: `[Tq, Hq, Dv]` and the LSE `[Hq, Tq]`.
    fn reference(&self, opts: &SdpaOptions<'_>) -> (Vec<f32>, Vec<f32>) {
        let (hq, hkv, d, dv, tq) = (self.hq, self.hkv, self.d, self.dv, self.tq());
        let mut out = vec![0.0f32; tq * hq * dv];
        let mut lse = vec![f32::NEG_INFINITY; hq * tq];
        for (s, &nk) in self.used_or_held().iter().enumerate() {
            let (q0, lq, k0) = (self.cu_q[s] as usize, self.lq[s], self.cu_k[s] as usize);
            if lq == 0 {
                continue;
            }
            let qs = &self.q[q0 * hq * d..][..lq * hq * d];
            let ks = &self.k[k0 * hkv * d..][..nk * hkv * d];
            let vs = &self.v[k0 * hkv * dv..][..nk * hkv * dv];
            let r = sdpa_ref(
                TensorRef::from_blhd(qs, [1, hq, lq, d]).unwrap(),
                TensorRef::from_blhd(ks, [1, hkv, nk, d]).unwrap(),
                TensorRef::from_blhd(vs, [1, hkv, nk, dv]).unwrap(),
                opts,
            )
            .unwrap();
            for h in 0..hq {
                for i in 0..lq {
                    let o = &r.out[(h * lq + i) * dv..][..dv];
                    out[((q0 + i) * hq + h) * dv..][..dv].copy_from_slice(o);
                    lse[h * tq + q0 + i] = r.lse[h * lq + i];
                }
            }
        }
        (out, lse)
    }
}

/// The arrays of an `fa_varlen_seqs` in one index type.
struct Idx {
    i32s: [Vec<i32>; 3],
    i64s: [Vec<i64>; 3],
}

impl Idx {
    fn of(cu_q: &[i64], cu_k: &[i64], used: &[i64]) -> Idx {
        let n = |v: &[i64]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        Idx {
            i32s: [n(cu_q), n(cu_k), n(used)],
            i64s: [cu_q.to_vec(), cu_k.to_vec(), used.to_vec()],
        }
    }

    fn ptr(&self, i64s: bool, which: usize) -> *const c_void {
        match i64s {
            true => self.i64s[which].as_ptr().cast(),
            false => self.i32s[which].as_ptr().cast(),
        }
    }
}

/// The C description of `b` (paged or packed; `seqused_k` if `b.used` is set).
fn seqs_of(b: &Batch, idx: &Idx, i64s: bool, paged: bool) -> fa_varlen_seqs {
    let mut s = fa_varlen_seqs::default();
    s.batch = b.lq.len();
    s.index_dtype = if i64s { 1 } else { 0 };
    s.cu_seqlens_q = idx.ptr(i64s, 0);
    s.cu_seqlens_k = idx.ptr(i64s, 1);
    if b.used.is_some() {
        s.seqused_k = idx.ptr(i64s, 2);
    }
    if paged {
        s.block_table = b.table.as_ptr();
        s.blocks_per_seq = b.blocks_per_seq;
    }
    s
}

fn idx_of(b: &Batch) -> Idx {
    let used: Vec<i64> = b.used_or_held().iter().map(|&u| u as i64).collect();
    Idx::of(&b.cu_q, &b.cu_k, &used)
}

/// `fa_sdpa_varlen` on the f32 data of `b`, into `out` and `lse`.
fn call(b: &Batch, seqs: &fa_varlen_seqs, opts: &fa_sdpa_options, out: &mut [f32]) -> c_int {
    let (q, k, v, mut o) = tensors(b, seqs, out);
    // SAFETY: every view describes a live buffer of its extent; the arrays of `seqs` and
    // `opts` hold what their fields promise.
    unsafe { fa_sdpa_varlen(&q, &k, &v, &mut o, seqs, opts) }
}

fn tensors(
    b: &Batch,
    seqs: &fa_varlen_seqs,
    out: &mut [f32],
) -> (fa_tensor, fa_tensor, fa_tensor, fa_tensor) {
    let (tq, tk) = (b.tq(), b.tk());
    let q = packed(b.q.as_ptr(), FA_DTYPE_F32, b.hq, tq, b.d);
    let (k, v) = if seqs.block_table.is_null() {
        (
            packed(b.k.as_ptr(), FA_DTYPE_F32, b.hkv, tk, b.d),
            packed(b.v.as_ptr(), FA_DTYPE_F32, b.hkv, tk, b.dv),
        )
    } else {
        (
            dense(
                b.kc.as_ptr(),
                FA_DTYPE_F32,
                [b.num_blocks, b.block_size, b.hkv, b.d],
            ),
            dense(
                b.vc.as_ptr(),
                FA_DTYPE_F32,
                [b.num_blocks, b.block_size, b.hkv, b.dv],
            ),
        )
    };
    let o = packed(out.as_mut_ptr(), FA_DTYPE_F32, b.hq, tq, b.dv);
    (q, k, v, o)
}

/// `sdpa_varlen_into_dyn` on the same f32 data.
fn rust_call(
    b: &Batch,
    idx: &Idx,
    paged: bool,
    opts: &SdpaOptions<'_>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let (tq, tk) = (b.tq(), b.tk());
    let [cu_q, cu_k, used] = &idx.i64s;
    let mut seqs = VarlenSeqs::new(SeqIdx::I64(cu_q)).with_cu_seqlens_k(SeqIdx::I64(cu_k));
    if b.used.is_some() {
        seqs = seqs.with_seqused_k(SeqIdx::I64(used));
    }
    let q = TensorRef::from_blhd(&b.q, [1, b.hq, tq, b.d]).unwrap();
    let (k, v) = if paged {
        seqs = seqs.with_block_table(&b.table, b.blocks_per_seq);
        (
            TensorRef::contiguous(&b.kc, [b.num_blocks, b.block_size, b.hkv, b.d]).unwrap(),
            TensorRef::contiguous(&b.vc, [b.num_blocks, b.block_size, b.hkv, b.dv]).unwrap(),
        )
    } else {
        (
            TensorRef::from_blhd(&b.k, [1, b.hkv, tk, b.d]).unwrap(),
            TensorRef::from_blhd(&b.v, [1, b.hkv, tk, b.dv]).unwrap(),
        )
    };
    let o = TensorMut::from_blhd(out, [1, b.hq, tq, b.dv]).unwrap();
    attention::sdpa_varlen_into_dyn(q.into(), k.into(), v.into(), o.into(), &seqs, opts, lse)
        .unwrap();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn varlen_matches_sdpa_varlen_into_dyn_and_the_per_sequence_reference() {
    let seed = 30;
    let mut rng = StdRng::seed_from_u64(seed);
    // Mixed prefill and decode, empty sequences (no queries; no keys).
    let lq = [5, 0, 1, 3, 1, 2];
    let lk = [5, 4, 9, 3, 17, 0];
    let mut cases = 0;
    for &block_size in &[1usize, 3, 16] {
        for &(hq, hkv, d, dv) in &[(4usize, 2usize, 8usize, 8usize), (3, 1, 5, 7)] {
            let mut b = Batch::new(&mut rng, (hq, hkv), (d, dv), &lq, &lk, block_size);
            for used in [false, true] {
                b.used = used.then(|| b.lk.iter().map(|&l| rng.random_range(0..=l)).collect());
                let idx = idx_of(&b);
                let slopes = rand_vec(&mut rng, hq);
                let mut sinks = rand_vec(&mut rng, hq);
                sinks[0] = f32::NEG_INFINITY;
                for option in 0..4 {
                    let mut o = fa_sdpa_options::default();
                    let mut r = SdpaOptions::default();
                    match option {
                        0 => {}
                        1 => {
                            (o.causal, o.sinks) = (1, sinks.as_ptr());
                            r = r.with_causal(true).with_sinks(Some(&sinks));
                        }
                        2 => {
                            (o.window_left, o.window_right, o.softcap) = (2, 0, 3.0);
                            r = r.with_window_left(Some(2)).with_window_right(Some(0));
                            r = r.with_softcap(Some(3.0));
                        }
                        _ => {
                            (o.alibi_slopes, o.scale, o.causal) = (slopes.as_ptr(), 0.3, 1);
                            r = r.with_alibi_slopes(Some(&slopes)).with_scale(Some(0.3));
                            r = r.with_causal(true);
                        }
                    }
                    let (want, want_lse) = b.reference(&r);
                    for paged in [false, true] {
                        for i64s in [false, true] {
                            let label = format!(
                                "seed {seed}, block_size {block_size}, heads {hq}/{hkv}, D {d}/{dv}, \
                                 seqused_k {used}, option {option}, paged {paged}, int64 {i64s}"
                            );
                            let n = b.tq() * hq * dv;
                            let (mut out, mut lse) =
                                (vec![f32::NAN; n], vec![f32::NAN; hq * b.tq()]);
                            let seqs = seqs_of(&b, &idx, i64s, paged);
                            o.lse = lse.as_mut_ptr();
                            let rc = call(&b, &seqs, &o, &mut out);
                            assert_eq!(rc, OK, "{label}: {}", last_error());
                            let (mut rout, mut rlse) = (vec![0.0f32; n], vec![0.0f32; hq * b.tq()]);
                            rust_call(&b, &idx, paged, &r, &mut rout, Some(&mut rlse));
                            assert_eq!(bits(&out), bits(&rout), "{label}: output");
                            assert_eq!(bits(&lse), bits(&rlse), "{label}: lse");
                            let e = max_abs_diff(&out, &want);
                            assert!(e < 2e-5, "{label}: {e} from the reference");
                            for (g, w) in lse.iter().zip(&want_lse) {
                                assert!(g == w || (g - w).abs() < 2e-5, "{label}: lse {g} vs {w}");
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 3 * 2 * 2 * 4 * 4);
}

#[test]
fn varlen_takes_16_bit_tensors_like_the_rust_call() {
    let seed = 31;
    let mut rng = StdRng::seed_from_u64(seed);
    let b = Batch::new(&mut rng, (4, 2), (8, 8), &[3, 1, 4], &[3, 7, 6], 4);
    let idx = idx_of(&b);
    let (tq, n) = (b.tq(), b.tq() * 4 * 8);
    let q16: Vec<f16> = b.q.iter().map(|&x| f16::from_f32(x)).collect();
    let kc16: Vec<bf16> = b.kc.iter().map(|&x| bf16::from_f32(x)).collect();
    let vc16: Vec<bf16> = b.vc.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut out = vec![f16::ZERO; n];
    let seqs = seqs_of(&b, &idx, false, true);
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    let q = packed(q16.as_ptr(), FA_DTYPE_F16, 4, tq, 8);
    let cd = [b.num_blocks, b.block_size, 2, 8];
    let k = dense(kc16.as_ptr(), FA_DTYPE_BF16, cd);
    let v = dense(vc16.as_ptr(), FA_DTYPE_BF16, cd);
    let mut ot = packed(out.as_mut_ptr(), FA_DTYPE_F16, 4, tq, 8);
    // SAFETY: live buffers of the views' extents; valid sequence arrays.
    let rc = unsafe { fa_sdpa_varlen(&q, &k, &v, &mut ot, &seqs, &o) };
    assert_eq!(rc, OK, "{}", last_error());
    let mut want = vec![f16::ZERO; n];
    let [cu_q, cu_k, _] = &idx.i32s;
    let rs = VarlenSeqs::new(&cu_q[..])
        .with_cu_seqlens_k(&cu_k[..])
        .with_block_table(&b.table, b.blocks_per_seq);
    attention::sdpa_varlen_into_dyn(
        TensorRef::new(&q16, q.dims, us(q.strides)).unwrap().into(),
        TensorRef::contiguous(&kc16, cd).unwrap().into(),
        TensorRef::contiguous(&vc16, cd).unwrap().into(),
        TensorMut::new(&mut want, ot.dims, us(ot.strides))
            .unwrap()
            .into(),
        &rs,
        &SdpaOptions::default().with_causal(true),
        None,
    )
    .unwrap();
    assert_eq!(out, want, "seed {seed}");
}

#[test]
fn varlen_with_no_sequences_or_no_queries_succeeds() {
    let mut rng = StdRng::seed_from_u64(32);
    let b = Batch::new(&mut rng, (2, 2), (4, 4), &[], &[], 2);
    let idx = idx_of(&b);
    for paged in [false, true] {
        let seqs = seqs_of(&b, &idx, false, paged);
        let rc = call(&b, &seqs, &fa_sdpa_options::default(), &mut []);
        assert_eq!(rc, OK, "paged {paged}: {}", last_error());
    }
    // NULL options are the defaults.
    let b = Batch::new(&mut rng, (2, 1), (4, 4), &[0, 2], &[3, 1], 2);
    let idx = idx_of(&b);
    let seqs = seqs_of(&b, &idx, true, true);
    let mut out = vec![0.0f32; 2 * 2 * 4];
    let (q, k, v, mut o) = tensors(&b, &seqs, &mut out);
    // SAFETY: live buffers; valid arrays.
    let rc = unsafe { fa_sdpa_varlen(&q, &k, &v, &mut o, &seqs, null()) };
    assert_eq!(rc, OK);
    let mut want = vec![0.0f32; out.len()];
    rust_call(&b, &idx, true, &SdpaOptions::default(), &mut want, None);
    assert_eq!(bits(&out), bits(&want));
}

#[path = "varlen/refusals.rs"]
mod refusals;

#[test]
fn dense_sinks_match_the_rust_call_and_old_options_structs_get_none() {
    let seed = 34;
    let mut rng = StdRng::seed_from_u64(seed);
    let (hq, hkv, lq, lk, d) = (4, 2, 3, 6, 8);
    let q = rand_vec(&mut rng, hq * lq * d);
    let k = rand_vec(&mut rng, hkv * lk * d);
    let v = rand_vec(&mut rng, hkv * lk * d);
    let mut sinks = rand_vec(&mut rng, hq);
    sinks[1] = f32::NEG_INFINITY;
    let run = |opts: &fa_sdpa_options| {
        let mut out = vec![0.0f32; hq * lq * d];
        let qt = dense(q.as_ptr(), FA_DTYPE_F32, [1, hq, lq, d]);
        let kt = dense(k.as_ptr(), FA_DTYPE_F32, [1, hkv, lk, d]);
        let vt = dense(v.as_ptr(), FA_DTYPE_F32, [1, hkv, lk, d]);
        let mut ot = dense(out.as_mut_ptr(), FA_DTYPE_F32, [1, hq, lq, d]);
        // SAFETY: live buffers of the views' extents; `opts` arrays hold Hq values.
        let rc = unsafe { fa_sdpa(&qt, &kt, &vt, &mut ot, opts) };
        (rc, out)
    };
    let rust = |s: Option<&[f32]>| {
        let r = SdpaOptions::default().with_causal(true).with_sinks(s);
        let mut out = vec![0.0f32; hq * lq * d];
        attention::sdpa_into(
            TensorRef::contiguous(&q, [1, hq, lq, d]).unwrap(),
            TensorRef::contiguous(&k, [1, hkv, lk, d]).unwrap(),
            TensorRef::contiguous(&v, [1, hkv, lk, d]).unwrap(),
            TensorMut::contiguous(&mut out, [1, hq, lq, d]).unwrap(),
            &r,
            attention::SdpaOutputs::default(),
        )
        .unwrap();
        out
    };
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    o.sinks = sinks.as_ptr();
    let (rc, with) = run(&o);
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(bits(&with), bits(&rust(Some(&sinks))), "seed {seed}");
    assert_ne!(bits(&with), bits(&rust(None)), "the sinks changed nothing");

    // A caller built against ABI 3 has no `sinks` field: whatever follows its struct is
    // never read, and it gets no sinks.
    let old = offset_of!(fa_sdpa_options, sinks);
    let mut o3 = fa_sdpa_options::default();
    o3.sinks = 0x10 as *const f32; // a pointer that must not be read
                                   // SAFETY: `o3` is writable for `old` bytes; the rest is left alone (checked below).
    assert_eq!(unsafe { fa_sdpa_options_init(&mut o3, old) }, OK);
    assert_eq!((o3.struct_size, o3.sinks), (old, 0x10 as *const f32));
    o3.causal = 1;
    let (rc, without) = run(&o3);
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(bits(&without), bits(&rust(None)), "seed {seed}");

    // A size between the two layouts would read half a pointer: refused.
    for bad in [old + 4, old - 4, size_of::<fa_sdpa_options>() + 8] {
        let b = fa_sdpa_options {
            struct_size: bad,
            ..o
        };
        assert_eq!(
            run(&b).0,
            code(FA_ERR_INVALID_ARGUMENT),
            "struct_size {bad}"
        );
        assert!(last_error().contains("struct_size"), "{}", last_error());
        let mut x = fa_sdpa_options::default();
        // SAFETY: `x` is writable for its full size; other sizes are refused unwritten.
        let rc = unsafe { fa_sdpa_options_init(&mut x, bad) };
        assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT));
    }
    // Sink errors: NaN, +inf.
    for bad in [f32::NAN, f32::INFINITY] {
        let s = [0.0, bad, 0.0, 0.0];
        let b = fa_sdpa_options {
            sinks: s.as_ptr(),
            ..o
        };
        assert_eq!(run(&b).0, code(FA_ERR_INVALID_ARGUMENT), "sink {bad}");
    }
}

#[test]
fn varlen_seqs_init_writes_the_documented_defaults() {
    // SAFETY: all-ones bytes are a valid fa_varlen_seqs (plain data only).
    let mut s: fa_varlen_seqs =
        unsafe { std::mem::transmute([0xffu8; size_of::<fa_varlen_seqs>()]) };
    // SAFETY: `s` is writable for the size passed.
    let rc = unsafe { fa_varlen_seqs_init(&mut s, size_of::<fa_varlen_seqs>()) };
    assert_eq!(rc, OK);
    assert_eq!(format!("{s:?}"), format!("{:?}", fa_varlen_seqs::default()));
    assert_eq!((s.batch, s.index_dtype, s.blocks_per_seq), (0, 0, 0));
    assert!(s.cu_seqlens_q.is_null() && s.cu_seqlens_k.is_null());
    assert!(s.seqused_k.is_null() && s.block_table.is_null());
    for bad in [0, 8, size_of::<fa_varlen_seqs>() + 8] {
        // SAFETY: refused before any write.
        let rc = unsafe { fa_varlen_seqs_init(&mut s, bad) };
        assert_eq!(rc, code(FA_ERR_INVALID_ARGUMENT), "size {bad}");
    }
    // SAFETY: NULL is refused.
    let rc = unsafe { fa_varlen_seqs_init(null_mut(), size_of::<fa_varlen_seqs>()) };
    assert_eq!(rc, code(FA_ERR_NULL_POINTER));
}

/// Rows `[T, Hkv, D]` for `fa_paged_kv_write` and caches of `nb` pages of `bs`.
struct Write {
    t: usize,
    hkv: usize,
    d: usize,
    nb: usize,
    bs: usize,
}

#[test]
fn paged_kv_write_matches_the_rust_call_for_mixed_types() {
    let seed = 35;
    let mut rng = StdRng::seed_from_u64(seed);
    let w = Write {
        t: 5,
        hkv: 2,
        d: 4,
        nb: 4,
        bs: 3,
    };
    let rows = w.t * w.hkv * w.d;
    let cache = w.nb * w.bs * w.hkv * w.d;
    let (k, v) = (rand_vec(&mut rng, rows), rand_vec(&mut rng, rows));
    let slots = [7i64, -1, 0, 11, 4];
    let cd = [w.nb, w.bs, w.hkv, w.d];
    // f32 rows into bf16 caches.
    let mut kc = vec![bf16::from_f32(9.0); cache];
    let mut vc = kc.clone();
    let (kt, vt) = (
        packed(k.as_ptr(), FA_DTYPE_F32, w.hkv, w.t, w.d),
        packed(v.as_ptr(), FA_DTYPE_F32, w.hkv, w.t, w.d),
    );
    let mut kct = dense(kc.as_mut_ptr(), FA_DTYPE_BF16, cd);
    let mut vct = dense(vc.as_mut_ptr(), FA_DTYPE_BF16, cd);
    // SAFETY: live buffers of the views' extents; T slots.
    let rc = unsafe { fa_paged_kv_write(&kt, &vt, &mut kct, &mut vct, slots.as_ptr()) };
    assert_eq!(rc, OK, "{}", last_error());
    let (mut wk, mut wv) = (
        vec![bf16::from_f32(9.0); cache],
        vec![bf16::from_f32(9.0); cache],
    );
    let kr = TensorRef::new(&k, kt.dims, us(kt.strides)).unwrap();
    let vr = TensorRef::new(&v, vt.dims, us(vt.strides)).unwrap();
    attention::paged_kv_write(
        kr,
        vr,
        TensorMut::contiguous(&mut wk, cd).unwrap(),
        TensorMut::contiguous(&mut wv, cd).unwrap(),
        &slots,
    )
    .unwrap();
    assert_eq!((kc, vc), (wk, wv), "seed {seed}");
    // f16 rows into f32 caches.
    let (k16, v16): (Vec<f16>, Vec<f16>) = (
        k.iter().map(|&x| f16::from_f32(x)).collect(),
        v.iter().map(|&x| f16::from_f32(x)).collect(),
    );
    let mut kc = vec![0.5f32; cache];
    let mut vc = kc.clone();
    let (kt, vt) = (
        packed(k16.as_ptr(), FA_DTYPE_F16, w.hkv, w.t, w.d),
        packed(v16.as_ptr(), FA_DTYPE_F16, w.hkv, w.t, w.d),
    );
    let mut kct = dense(kc.as_mut_ptr(), FA_DTYPE_F32, cd);
    let mut vct = dense(vc.as_mut_ptr(), FA_DTYPE_F32, cd);
    // SAFETY: as above.
    let rc = unsafe { fa_paged_kv_write(&kt, &vt, &mut kct, &mut vct, slots.as_ptr()) };
    assert_eq!(rc, OK, "{}", last_error());
    for (t, &s) in slots.iter().enumerate() {
        for h in 0..w.hkv {
            for i in 0..w.d {
                let src = (t * w.hkv + h) * w.d + i;
                let got = if s < 0 {
                    continue;
                } else {
                    kc[(s as usize * w.hkv + h) * w.d + i]
                };
                assert_eq!(got, k16[src].to_f32(), "token {t}");
                assert_eq!(
                    vc[(s as usize * w.hkv + h) * w.d + i],
                    v16[src].to_f32(),
                    "token {t}"
                );
            }
        }
    }
    let written: usize = slots.iter().filter(|&&s| s >= 0).count() * w.hkv * w.d;
    assert_eq!(kc.iter().filter(|&&x| x != 0.5).count(), written);
}

#[test]
fn paged_kv_write_refuses_bad_input_and_writes_nothing() {
    let mut rng = StdRng::seed_from_u64(36);
    let w = Write {
        t: 3,
        hkv: 2,
        d: 4,
        nb: 3,
        bs: 2,
    };
    let rows = w.t * w.hkv * w.d;
    let cache = w.nb * w.bs * w.hkv * w.d;
    let (k, v) = (rand_vec(&mut rng, rows), rand_vec(&mut rng, rows));
    let v16 = vec![0u16; rows];
    let cd = [w.nb, w.bs, w.hkv, w.d];
    type Case = (&'static str, fa_status, [i64; 3]);
    let slot_cases: [Case; 2] = [
        ("slot past the cache", FA_ERR_INVALID_ARGUMENT, [0, 6, 1]),
        ("slot below -1", FA_ERR_INVALID_ARGUMENT, [0, -2, 1]),
    ];
    let mut kc = vec![3.0f32; cache];
    let mut vc = vec![3.0f32; cache];
    let vc16 = vec![0u16; cache];
    let good = [0i64, 5, -1];
    let mk = |kc: &mut Vec<f32>, vc: &mut Vec<f32>| {
        (
            packed(k.as_ptr(), FA_DTYPE_F32, w.hkv, w.t, w.d),
            packed(v.as_ptr(), FA_DTYPE_F32, w.hkv, w.t, w.d),
            dense(kc.as_mut_ptr(), FA_DTYPE_F32, cd),
            dense(vc.as_mut_ptr(), FA_DTYPE_F32, cd),
        )
    };
    type Change = Box<dyn Fn(&mut [fa_tensor; 4], &mut *const i64)>;
    let mut checks: Vec<(&str, fa_status, Change)> = Vec::new();
    for (what, st, s) in slot_cases {
        let p = Box::leak(Box::new(s)).as_ptr();
        checks.push((what, st, Box::new(move |_, sp| *sp = p)));
    }
    let v16p = v16.as_ptr();
    let vc16p = vc16.as_ptr();
    checks.push((
        "k and v of different types",
        FA_ERR_INVALID_ARGUMENT,
        Box::new(move |t, _| t[1] = packed(v16p, FA_DTYPE_F16, w.hkv, w.t, w.d)),
    ));
    checks.push((
        "caches of different types",
        FA_ERR_INVALID_ARGUMENT,
        Box::new(move |t, _| t[3] = dense(vc16p, FA_DTYPE_BF16, cd)),
    ));
    checks.push((
        "unknown dtype",
        FA_ERR_INVALID_ARGUMENT,
        Box::new(|t, _| t[2].dtype = 7),
    ));
    checks.push((
        "NULL slot_mapping",
        FA_ERR_NULL_POINTER,
        Box::new(|_, sp| *sp = null()),
    ));
    checks.push((
        "NULL cache data",
        FA_ERR_NULL_POINTER,
        Box::new(|t, _| t[3].data = null_mut()),
    ));
    checks.push((
        "one buffer for both caches",
        FA_ERR_BAD_STRIDE,
        Box::new(|t, _| t[3].data = t[2].data),
    ));
    checks.push((
        "cache overlapping the rows",
        FA_ERR_BAD_STRIDE,
        Box::new(|t, _| t[0].data = t[2].data),
    ));
    checks.push((
        "cache heads differ",
        FA_ERR_BAD_SHAPE,
        Box::new(|t, _| t[2].dims[2] = 1),
    ));
    checks.push((
        "caches of different pages",
        FA_ERR_BAD_SHAPE,
        Box::new(|t, _| t[3].dims[0] = 2),
    ));
    checks.push((
        "v rows of another token count",
        FA_ERR_BAD_SHAPE,
        Box::new(|t, _| t[1].dims[2] = 2),
    ));
    checks.push((
        "rows aliasing nothing but a zero stride",
        FA_ERR_BAD_STRIDE,
        Box::new(|t, _| t[0].strides[2] = 0),
    ));
    // The unchanged call succeeds (on copies).
    {
        let (mut a, mut b) = (kc.clone(), vc.clone());
        let (kt, vt, mut kct, mut vct) = mk(&mut a, &mut b);
        // SAFETY: live buffers; 3 slots.
        let rc = unsafe { fa_paged_kv_write(&kt, &vt, &mut kct, &mut vct, good.as_ptr()) };
        assert_eq!(rc, OK);
        assert_ne!(a, kc);
    }
    for (what, want, change) in checks {
        let (kt, vt, kct, vct) = mk(&mut kc, &mut vc);
        let mut t = [kt, vt, kct, vct];
        let mut sp = good.as_ptr();
        change(&mut t, &mut sp);
        let [kt, vt, mut kct, mut vct] = t;
        // SAFETY: every view covers a live buffer (the cases only shrink views or point at
        // other live buffers of the same size); refused calls write nothing.
        let rc = unsafe { fa_paged_kv_write(&kt, &vt, &mut kct, &mut vct, sp) };
        assert_eq!(rc, code(want), "{what}: {}", last_error());
        assert!(
            kc.iter().chain(&vc).all(|&x| x == 3.0),
            "{what}: a cache was written"
        );
    }
}

#[test]
fn varlen_gives_the_same_bits_at_1_2_and_3_threads() {
    let seed = 37;
    let mut rng = StdRng::seed_from_u64(seed);
    // One long decode (split along its keys) beside short prefills.
    let b = Batch::new(
        &mut rng,
        (4, 2),
        (16, 16),
        &[1, 7, 1, 4],
        &[700, 9, 3, 40],
        16,
    );
    let idx = idx_of(&b);
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    let mut runs = Vec::new();
    for threads in [1, 2, 3] {
        assert_eq!(fa_set_num_threads(threads), OK);
        for paged in [false, true] {
            let mut out = vec![0.0f32; b.tq() * 4 * 16];
            let seqs = seqs_of(&b, &idx, false, paged);
            assert_eq!(call(&b, &seqs, &o, &mut out), OK, "{}", last_error());
            runs.push((threads, paged, bits(&out)));
        }
    }
    assert_eq!(fa_set_num_threads(0), OK);
    for (t, paged, r) in &runs {
        let first = &runs.iter().find(|x| x.1 == *paged).unwrap().2;
        assert!(
            r == first,
            "seed {seed}: {t} threads, paged {paged} differ from 1 thread"
        );
    }
    // Packed and paged read the same keys: the same values up to rounding (a paged decode
    // is merged from key chunks of one block, the packed one is not split at 700 keys).
    let (a, p) = (&runs[0].2, &runs[1].2);
    for (x, y) in a.iter().zip(p) {
        let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
        assert!(
            (x - y).abs() <= 1e-5,
            "seed {seed}: packed {x} vs paged {y}"
        );
    }
}

#[test]
fn the_layer_takes_sinks_from_its_options() {
    let mut cfg = fa_mha_config::default();
    (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) = (16, 4, 2, 4);
    let mut layer = null_mut();
    // SAFETY: a valid config and out pointer.
    assert_eq!(unsafe { fa_mha_new_random(&cfg, 0, 7, &mut layer) }, OK);
    let mut rng = StdRng::seed_from_u64(38);
    let x = rand_vec(&mut rng, 3 * 16);
    let sinks = [1.0f32, -2.0, 0.5, f32::NEG_INFINITY];
    let run = |s: *const f32| {
        let mut y = vec![0.0f32; 3 * 16];
        let mut o = fa_sdpa_options::default();
        (o.causal, o.sinks) = (1, s);
        // SAFETY: a live layer; x and y hold batch·seq·d_model floats; `s` holds Hq values.
        let rc = unsafe { fa_mha_forward(layer, x.as_ptr(), 1, 3, y.as_mut_ptr(), &o) };
        (rc, y)
    };
    let (rc, plain) = run(null());
    assert_eq!(rc, OK, "{}", last_error());
    let (rc, with) = run(sinks.as_ptr());
    assert_eq!(rc, OK, "{}", last_error());
    assert_ne!(bits(&plain), bits(&with), "the sinks changed nothing");
    let bad = [0.0f32, f32::NAN, 0.0, 0.0];
    assert_eq!(run(bad.as_ptr()).0, code(FA_ERR_INVALID_ARGUMENT));
    // SAFETY: made above, freed once.
    unsafe { fa_mha_free(layer) };
}
