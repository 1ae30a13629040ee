//! The serving suites: `varlen` (a batch of sequences of mixed lengths in one call, against
//! our dense path run once per sequence and torch's SDPA on the batch padded to its longest
//! sequence) and `paged` (decoding many sequences from a paged bf16 cache, against our dense
//! decode of the same keys stored contiguously).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::peers::{DENSE_DECODE, DENSE_PER_SEQ};
use crate::torch::TorchOp;
use crate::Result;
use attention::{SdpaOptions, SdpaOutputs, TensorMut, TensorRef, VarlenSeqs};
use fastattn_benches::random_vec;
use kernels::{bf16, DType, Isa};
use std::sync::Arc;

/// The sequence lengths of the mixed prefill batch: 16 sequences from 1 to 2048 tokens,
/// 7968 in all.
pub const MIXED_LENGTHS: [usize; 16] = [
    2048, 1536, 1024, 900, 700, 512, 400, 300, 200, 128, 100, 64, 33, 17, 5, 1,
];

/// `varlen` cases: the mixed batch, causal prefill (each sequence attends to itself).
pub fn varlen_cases() -> Vec<Case> {
    vec![
        varlen_case(&MIXED_LENGTHS, 8, 8, 64, true),
        varlen_case(&MIXED_LENGTHS, 32, 8, 128, true).full_only(),
    ]
}

pub(super) fn varlen_from_shape(shape: &str) -> Result<Case> {
    let causal = shape.ends_with('c');
    let d = parse_dims(shape.trim_end_matches('c'), 3, "HQxHKVxD[c]")?;
    Ok(varlen_case(&MIXED_LENGTHS, d[0], d[1], d[2], causal))
}

/// One varlen prefill case over sequences of `lens` tokens (queries = keys per sequence),
/// packed `[T, H, D]` f32 Q, K, V and output. Flops: `Σ 4·hq·L²·d`, halved when causal.
pub fn varlen_case(lens: &[usize], hq: usize, hkv: usize, d: usize, causal: bool) -> Case {
    let lens: Arc<Vec<usize>> = Arc::new(lens.to_vec());
    let total: usize = lens.iter().sum();
    let longest = lens.iter().copied().max().unwrap_or(0);
    let full: f64 = lens
        .iter()
        .map(|&l| 4.0 * (hq * l) as f64 * (l * d) as f64)
        .sum();
    let flops = if causal { full / 2.0 } else { full };
    let bytes = 4.0 * (2 * hq * total * d + 2 * hkv * total * d) as f64;
    let name = format!(
        "{}seqs-{total}x{hq}x{hkv}x{d}{}",
        lens.len(),
        if causal { "c" } else { "" }
    );
    let shape = format!("lens={lens:?} hq={hq} hkv={hkv} d={d} causal={causal}");
    let setup_lens = lens.clone();
    Case::new(
        "varlen",
        name,
        shape,
        flops,
        bytes,
        Bound::Compute,
        move || {
            let lens = setup_lens.clone();
            let q = Arc::new(random_vec(total * hq * d, 5));
            let k = Arc::new(random_vec(total * hkv * d, 6));
            let v = Arc::new(random_vec(total * hkv * d, 7));
            let mut cu = vec![0i64];
            for &l in lens.iter() {
                cu.push(cu.last().copied().unwrap_or(0) + l as i64);
            }
            let cu = Arc::new(cu);
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (q, k, v, cu) = (q.clone(), k.clone(), v.clone(), cu.clone());
                let mut out = vec![0.0f32; total * hq * d];
                let run = move |_threads: usize| {
                    let opts = SdpaOptions::new().with_causal(causal).with_isa(Some(isa));
                    let seqs = VarlenSeqs::new(&cu[..]).with_cu_seqlens_k(&cu[..]);
                    attention::sdpa_varlen_into(
                        packed(&q, hq, total, d),
                        packed(&k, hkv, total, d),
                        packed(&v, hkv, total, d),
                        TensorMut::from_blhd(&mut out, [1, hq, total, d]).expect("fits"),
                        &seqs,
                        &opts,
                        None,
                    )
                    .expect("valid problem");
                };
                let slow = matches!(isa, Isa::Scalar | Isa::Portable);
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            // Our dense path, once per sequence, on views of the same packed buffers.
            let isa = Isa::best();
            let mut out = vec![0.0f32; total * hq * d];
            let run = move |_threads: usize| {
                let opts = SdpaOptions::new().with_causal(causal).with_isa(Some(isa));
                for s in 0..lens.len() {
                    let (t0, l) = (cu[s] as usize, lens[s]);
                    let o =
                        TensorMut::new(&mut out[t0 * hq * d..], [1, hq, l, d], [0, d, hq * d, 1])
                            .expect("fits");
                    attention::sdpa_into(
                        seq_view(&q, t0, hq, l, d),
                        seq_view(&k, t0, hkv, l, d),
                        seq_view(&v, t0, hkv, l, d),
                        o,
                        &opts,
                        SdpaOutputs::default(),
                    )
                    .expect("valid problem");
                }
            };
            impls.push(Impl::peer(DENSE_PER_SEQ, run));
            impls
        },
    )
    .with_torch(TorchOp::SdpaPadded {
        b: lens.len(),
        hq,
        hkv,
        l: longest,
        d,
        causal,
        dtype: DType::F32,
    })
    .with_torch(TorchOp::SdpaPadded {
        b: lens.len(),
        hq,
        hkv,
        l: longest,
        d,
        causal,
        dtype: DType::BF16,
    })
}

/// The `[1, h, t, d]` view of a packed `[t, h, d]` buffer.
fn packed<T: kernels::Element>(x: &[T], h: usize, t: usize, d: usize) -> TensorRef<'_, T> {
    TensorRef::from_blhd(x, [1, h, t, d]).expect("the buffer fits the shape")
}

/// The `[1, h, l, d]` view of tokens `t0 .. t0 + l` of a packed `[t, h, d]` buffer.
fn seq_view(x: &[f32], t0: usize, h: usize, l: usize, d: usize) -> TensorRef<'_, f32> {
    TensorRef::new(&x[t0 * h * d..], [1, h, l, d], [0, d, h * d, 1]).expect("fits")
}

/// `paged` cases: 32 sequences × 4096 cached tokens, GQA 32/8, D = 128, bf16 cache, one
/// new token each, at block sizes 16 and 1.
pub fn paged_cases() -> Vec<Case> {
    vec![
        paged_case(32, 4096, 32, 8, 128, 16),
        paged_case(32, 4096, 32, 8, 128, 1),
    ]
}

pub(super) fn paged_from_shape(shape: &str) -> Result<Case> {
    let d = parse_dims(shape, 6, "SEQSxCACHEDxHQxHKVxDxBLOCK")?;
    Ok(paged_case(d[0], d[1], d[2], d[3], d[4], d[5]))
}

/// One paged decode case: `seqs` sequences of `cached` keys each in a bf16 paged cache of
/// `block` rows per page (pages shuffled), one f32 query token per sequence, f32 output.
/// Bytes: the cache's K and V (memory-bound). The dense decode row attends the same keys
/// stored as contiguous `[seqs, Hkv, cached, D]` bf16.
pub fn paged_case(
    seqs: usize,
    cached: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    block: usize,
) -> Case {
    let flops = 4.0 * (seqs * hq) as f64 * (cached * d) as f64;
    let kv_bytes = 2.0 * 2.0 * (seqs * hkv * cached * d) as f64;
    let bytes = kv_bytes + 4.0 * (2 * seqs * hq * d) as f64;
    let name = format!("{seqs}x{cached}x{hq}x{hkv}x{d}-bs{block}");
    let shape = format!(
        "seqs={seqs} cached={cached} hq={hq} hkv={hkv} d={d} block_size={block} bf16 cache"
    );
    Case::new(
        "paged",
        name,
        shape,
        flops,
        bytes,
        Bound::Memory,
        move || {
            let q = Arc::new(random_vec(seqs * hq * d, 5));
            let to16 = |x: Vec<f32>| -> Arc<Vec<bf16>> {
                Arc::new(x.into_iter().map(bf16::from_f32).collect())
            };
            // The dense cache [seqs, Hkv, cached, D].
            let kd = to16(random_vec(seqs * hkv * cached * d, 6));
            let vd = to16(random_vec(seqs * hkv * cached * d, 7));
            // The same keys in shuffled pages [num_blocks, block, Hkv, D].
            let per_seq = cached.div_ceil(block);
            let nb = seqs * per_seq;
            // The pages in a seeded random order (Fisher–Yates on a xorshift stream), as a
            // cache's free list hands them out after some traffic: not in key order.
            let mut order: Vec<usize> = (0..nb).collect();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for i in (1..nb).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut kp = vec![bf16::ZERO; nb * block * hkv * d];
            let mut vp = vec![bf16::ZERO; nb * block * hkv * d];
            let mut table = vec![0i32; seqs * per_seq];
            for s in 0..seqs {
                for p in 0..per_seq {
                    let page = order[s * per_seq + p];
                    table[s * per_seq + p] = page as i32;
                    for r in 0..block.min(cached - p * block) {
                        let j = p * block + r;
                        for h in 0..hkv {
                            let src = ((s * hkv + h) * cached + j) * d;
                            let dst = ((page * block + r) * hkv + h) * d;
                            kp[dst..dst + d].copy_from_slice(&kd[src..src + d]);
                            vp[dst..dst + d].copy_from_slice(&vd[src..src + d]);
                        }
                    }
                }
            }
            let (kp, vp, table) = (Arc::new(kp), Arc::new(vp), Arc::new(table));
            let cu: Arc<Vec<i32>> = Arc::new((0..=seqs as i32).collect());
            let used: Arc<Vec<i32>> = Arc::new(vec![cached as i32; seqs]);
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (q, kp, vp, table, cu, used) = (
                    q.clone(),
                    kp.clone(),
                    vp.clone(),
                    table.clone(),
                    cu.clone(),
                    used.clone(),
                );
                let mut out = vec![0.0f32; seqs * hq * d];
                let run = move |_threads: usize| {
                    let seqs_desc = VarlenSeqs::new(&cu[..])
                        .with_block_table(&table, per_seq)
                        .with_seqused_k(&used[..]);
                    attention::sdpa_varlen_into(
                        packed(&q, hq, seqs, d),
                        TensorRef::contiguous(&kp[..], [nb, block, hkv, d]).expect("fits"),
                        TensorRef::contiguous(&vp[..], [nb, block, hkv, d]).expect("fits"),
                        TensorMut::from_blhd(&mut out, [1, hq, seqs, d]).expect("fits"),
                        &seqs_desc,
                        &SdpaOptions::new().with_isa(Some(isa)),
                        None,
                    )
                    .expect("valid problem");
                };
                let slow = matches!(isa, Isa::Scalar | Isa::Portable);
                impls.push(Impl::ours_dtype(isa, DType::BF16, bytes, run).slow_if(slow));
            }
            let isa = Isa::best();
            let mut out = vec![0.0f32; seqs * hq * d];
            let run = move |_threads: usize| {
                attention::sdpa_into(
                    TensorRef::contiguous(&q[..], [seqs, hq, 1, d]).expect("fits"),
                    TensorRef::contiguous(&kd[..], [seqs, hkv, cached, d]).expect("fits"),
                    TensorRef::contiguous(&vd[..], [seqs, hkv, cached, d]).expect("fits"),
                    TensorMut::contiguous(&mut out, [seqs, hq, 1, d]).expect("fits"),
                    &SdpaOptions::new().with_isa(Some(isa)),
                    SdpaOutputs::default(),
                )
                .expect("valid problem");
            };
            impls.push(Impl::peer(DENSE_DECODE, run));
            impls
        },
    )
}
