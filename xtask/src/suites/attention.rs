//! The `attention` suite (the fused forward against a materialised attention on
//! matrixmultiply, and torch's SDPA) and the `backward` suite (the gradients, and a
//! training step, against torch's autograd).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::peers::MATERIALIZED_MM;
use crate::torch::TorchOp;
use crate::Result;
use fastattn_benches::random_vec;
use kernels::{DType, Isa};
use std::sync::Arc;

fn tensor<T: kernels::Element>(x: &[T], dims: [usize; 4]) -> attention::TensorRef<'_, T> {
    attention::TensorRef::contiguous(x, dims).expect("the buffer fits the shape")
}

/// Attention cases (B = 1): prefill at several L, causal, D = 128, GQA, and decoding one
/// token against a long cache (memory-bound).
pub fn attention_cases() -> Vec<Case> {
    vec![
        attention_case(8, 8, 512, 512, 64, false),
        attention_case(8, 8, 1024, 1024, 64, false),
        attention_case(8, 8, 2048, 2048, 64, false),
        attention_case(8, 8, 2048, 2048, 64, true),
        attention_case(8, 8, 1024, 1024, 128, false),
        attention_case(8, 2, 1024, 1024, 64, true),
        attention_case(32, 8, 1, 32768, 128, false),
        attention_case(8, 8, 4096, 4096, 64, false).full_only(),
        attention_case(8, 8, 4096, 4096, 64, true).full_only(),
        attention_case(8, 8, 2048, 2048, 128, false).full_only(),
    ]
}

pub(super) fn attention_from_shape(shape: &str) -> Result<Case> {
    let causal = shape.ends_with('c');
    let d = parse_dims(
        shape.trim_end_matches('c'),
        5,
        "HQxHKVxLQxLKxD[c] (append c for causal)",
    )?;
    Ok(attention_case(d[0], d[1], d[2], d[3], d[4], causal))
}

/// One attention case: Q `[1, hq, lq, d]`, K and V `[1, hkv, lk, d]`, contiguous; every
/// variant on the default (fused) path, the best variant again on bf16 and on f16 Q, K, V
/// and output (`avx2-bf16`, `avx2-f16`: the dtype dimension, moving half the bytes), and
/// for plain prefill the materialised baseline on matrixmultiply with a scalar softmax.
/// torch runs f32 and bf16 SDPA. Flops: `4·hq·lq·lk·d`, halved when causal.
pub fn attention_case(hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, causal: bool) -> Case {
    let full = 4.0 * (hq * lq) as f64 * (lk * d) as f64;
    let flops = if causal { full / 2.0 } else { full };
    let bytes = 4.0 * (2 * hq * lq * d + 2 * hkv * lk * d) as f64;
    let name = format!("{hq}x{hkv}x{lq}x{lk}x{d}{}", if causal { "c" } else { "" });
    let bound = if lq == 1 {
        Bound::Memory
    } else {
        Bound::Compute
    };
    Case::new(
        "attention",
        name,
        format!("hq={hq} hkv={hkv} lq={lq} lk={lk} d={d} causal={causal}"),
        flops,
        bytes,
        bound,
        move || {
            let q = Arc::new(random_vec(hq * lq * d, 5));
            let k = Arc::new(random_vec(hkv * lk * d, 6));
            let v = Arc::new(random_vec(hkv * lk * d, 7));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                let mut out = vec![0.0f32; hq * lq * d];
                let run = move |_threads: usize| {
                    let opts = attention::SdpaOptions::default()
                        .with_causal(causal)
                        .with_isa(Some(isa));
                    attention::sdpa_into(
                        tensor(&q, [1, hq, lq, d]),
                        tensor(&k, [1, hkv, lk, d]),
                        tensor(&v, [1, hkv, lk, d]),
                        attention::TensorMut::contiguous(&mut out, [1, hq, lq, d]).expect("fits"),
                        &opts,
                        attention::SdpaOutputs::default(),
                    )
                    .expect("valid problem");
                };
                let slow = matches!(isa, Isa::Scalar | Isa::Portable) && flops > 2e8;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            impls.push(attention_16::<kernels::bf16>(
                &q,
                &k,
                &v,
                [hq, hkv, lq, lk, d],
                causal,
                bytes,
            ));
            impls.push(attention_16::<kernels::f16>(
                &q,
                &k,
                &v,
                [hq, hkv, lq, lk, d],
                causal,
                bytes,
            ));
            if !causal && hq == hkv && lq > 1 {
                let run = move |_threads: usize| {
                    std::hint::black_box(fastattn_benches::naive_attention(
                        hq, lq, lk, d, &q, &k, &v,
                    ));
                };
                impls.push(Impl::peer(MATERIALIZED_MM, run).at_threads(1));
            }
            impls
        },
    )
    .with_torch(TorchOp::Sdpa {
        hq,
        hkv,
        lq,
        lk,
        d,
        causal,
        dtype: DType::F32,
    })
    .with_torch(TorchOp::Sdpa {
        hq,
        hkv,
        lq,
        lk,
        d,
        causal,
        dtype: DType::BF16,
    })
}

/// The best variant's attention on Q, K, V and output stored as `T` (rounded from the f32
/// inputs), moving `bytes_f32 / 2`.
fn attention_16<T: kernels::Element>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [hq, hkv, lq, lk, d]: [usize; 5],
    causal: bool,
    bytes_f32: f64,
) -> Impl {
    let round = |x: &[f32]| x.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
    let (q, k, v) = (round(q), round(k), round(v));
    let mut out = vec![T::default(); hq * lq * d];
    let isa = Isa::best();
    let run = move |_threads: usize| {
        let opts = attention::SdpaOptions::default()
            .with_causal(causal)
            .with_isa(Some(isa));
        attention::sdpa_into(
            tensor(&q, [1, hq, lq, d]),
            tensor(&k, [1, hkv, lk, d]),
            tensor(&v, [1, hkv, lk, d]),
            attention::TensorMut::contiguous(&mut out, [1, hq, lq, d]).expect("fits"),
            &opts,
            attention::SdpaOutputs::default(),
        )
        .expect("valid problem");
    };
    Impl::ours_dtype(isa, T::DTYPE, bytes_f32 / 2.0, run)
}

/// Backward cases (B = 1): the gradients alone (given the forward's output and LSE), and
/// a training step's forward + backward (`…f`), each against torch's autograd on the same
/// shapes.
pub fn backward_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(hq, hkv, l, d, causal, full) in &[
        (8, 8, 1024, 64, false, false),
        (8, 8, 1024, 64, true, false),
        (8, 2, 1024, 64, true, false),
        (8, 8, 1024, 128, false, false),
        (8, 8, 2048, 64, false, true),
        (8, 8, 2048, 64, true, true),
    ] {
        for forward in [false, true] {
            let c = backward_case(hq, hkv, l, l, d, causal, forward);
            cases.push(if full { c.full_only() } else { c });
        }
    }
    cases
}

pub(super) fn backward_from_shape(shape: &str) -> Result<Case> {
    let forward = shape.ends_with('f');
    let s = shape.trim_end_matches('f');
    let causal = s.ends_with('c');
    let d = parse_dims(
        s.trim_end_matches('c'),
        5,
        "HQxHKVxLQxLKxD[c][f] (c: causal; f: forward + backward)",
    )?;
    Ok(backward_case(d[0], d[1], d[2], d[3], d[4], causal, forward))
}

/// One backward case: Q `[1, hq, lq, d]`, K and V `[1, hkv, lk, d]` and dO, contiguous f32.
/// Flops: the backward counts `10·hq·lq·lk·d` (2.5× the forward's, as FlashAttention
/// does), a training step (`forward`) `14·hq·lq·lk·d`; both halved when causal.
pub fn backward_case(
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    causal: bool,
    forward: bool,
) -> Case {
    let per = if forward { 14.0 } else { 10.0 };
    let full = per * (hq * lq) as f64 * (lk * d) as f64;
    let flops = if causal { full / 2.0 } else { full };
    // Q, K, V, O, dO read; dQ, dK, dV written.
    let bytes = 4.0 * (4 * hq * lq * d + 4 * hkv * lk * d) as f64;
    let name = format!(
        "{hq}x{hkv}x{lq}x{lk}x{d}{}{}",
        if causal { "c" } else { "" },
        if forward { "f" } else { "" }
    );
    Case::new(
        "backward",
        name,
        format!(
            "hq={hq} hkv={hkv} lq={lq} lk={lk} d={d} causal={causal} {}",
            if forward {
                "forward+backward"
            } else {
                "backward"
            }
        ),
        flops,
        bytes,
        Bound::Compute,
        move || {
            let q = Arc::new(random_vec(hq * lq * d, 5));
            let k = Arc::new(random_vec(hkv * lk * d, 6));
            let v = Arc::new(random_vec(hkv * lk * d, 7));
            let g = Arc::new(random_vec(hq * lq * d, 8));
            let (qd, kd) = ([1, hq, lq, d], [1, hkv, lk, d]);
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (q, k, v, g) = (q.clone(), k.clone(), v.clone(), g.clone());
                let opts = attention::SdpaOptions::default()
                    .with_causal(causal)
                    .with_isa(Some(isa));
                let mut o = vec![0.0f32; hq * lq * d];
                let mut lse = vec![0.0f32; hq * lq];
                let fwd = move |o: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32]| {
                    attention::sdpa_into(
                        tensor(q, qd),
                        tensor(k, kd),
                        tensor(v, kd),
                        attention::TensorMut::contiguous(o, qd).expect("fits"),
                        &attention::SdpaOptions::default()
                            .with_causal(causal)
                            .with_isa(Some(isa)),
                        attention::SdpaOutputs::default().with_lse(Some(lse)),
                    )
                    .expect("valid problem");
                };
                fwd(&mut o, &mut lse, &q, &k, &v);
                let (mut dq, mut dk, mut dv) = (
                    vec![0.0f32; q.len()],
                    vec![0.0f32; k.len()],
                    vec![0.0f32; v.len()],
                );
                let run = move |_threads: usize| {
                    if forward {
                        fwd(&mut o, &mut lse, &q, &k, &v);
                    }
                    attention::sdpa_backward_into(
                        tensor(&q, qd),
                        tensor(&k, kd),
                        tensor(&v, kd),
                        tensor(&o, qd),
                        tensor(&g, qd),
                        &lse,
                        attention::SdpaGrads::new(
                            attention::TensorMut::contiguous(&mut dq, qd).expect("fits"),
                            attention::TensorMut::contiguous(&mut dk, kd).expect("fits"),
                            attention::TensorMut::contiguous(&mut dv, kd).expect("fits"),
                        ),
                        &opts,
                    )
                    .expect("valid problem");
                };
                let slow = matches!(isa, Isa::Scalar | Isa::Portable) && flops > 2e8;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            impls
        },
    )
    .with_torch(TorchOp::SdpaGrad {
        hq,
        hkv,
        lq,
        lk,
        d,
        causal,
        forward,
    })
}
