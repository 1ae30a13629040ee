//! The `attention` suite (the fused forward against a materialised attention on
//! matrixmultiply, and torch's SDPA) and the `backward` suite (the gradients, and a
//! training step, against torch's autograd).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::peers::{CANDLE, MATERIALIZED_MM};
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
        attention_case(8, 8, 1024, 1024, 64, true),
        attention_case(8, 8, 1024, 1024, 128, false),
        attention_case(8, 2, 1024, 1024, 64, true),
        attention_case(32, 8, 1, 32768, 128, false),
        // The candle binding's cost per call against the direct call (`avx2-candle` / `avx2`).
        attention_case(1, 1, 64, 64, 64, false),
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
            for qtype in kernels::quant::QuantType::ALL {
                impls.push(attention_8bit(
                    qtype,
                    &q,
                    &k,
                    &v,
                    [hq, hkv, lq, lk, d],
                    causal,
                ));
            }
            impls.extend(candle_impls(&q, &k, &v, [hq, hkv, lq, lk, d], causal));
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

/// The best variant's attention on f32 Q and output with K and V stored as 8-bit codes
/// (quantised from the f32 inputs): int8 with a scale per token and head, fp8 with one per
/// KV head. Named `avx2-i8`, `avx2-f8e4m3`, `avx2-f8e5m2`; the bytes count the codes and the
/// scales read.
fn attention_8bit(
    qtype: kernels::quant::QuantType,
    q: &Arc<Vec<f32>>,
    k: &[f32],
    v: &[f32],
    [hq, hkv, lq, lk, d]: [usize; 5],
    causal: bool,
) -> Impl {
    use kernels::quant::{QuantType, F8E4M3, F8E5M2};
    let isa = Isa::best();
    let rows = hkv * lk;
    let per_row = qtype == QuantType::I8;
    let scale_bytes = if per_row { 2 * rows * 4 } else { 2 * hkv * 4 };
    let bytes = (4 * 2 * hq * lq * d + 2 * rows * d + scale_bytes) as f64;
    let q = q.clone();
    let run: Box<dyn FnMut(usize) + Send> = match qtype {
        QuantType::I8 => bench_8bit::<i8>(q, k, v, [hq, hkv, lq, lk, d], causal, per_row, isa),
        QuantType::F8E4M3 => {
            bench_8bit::<F8E4M3>(q, k, v, [hq, hkv, lq, lk, d], causal, per_row, isa)
        }
        QuantType::F8E5M2 => {
            bench_8bit::<F8E5M2>(q, k, v, [hq, hkv, lq, lk, d], causal, per_row, isa)
        }
    };
    let mut imp = Impl::ours(isa, run);
    imp.name = format!("{}-{qtype}", isa.name());
    imp.bytes = Some(bytes);
    imp
}

/// The candle rows of an attention case, on candle CPU tensors `[1, H, L, D]` of the case's
/// data: the `candle` peer (candle's matmul, softmax, matmul with the whole score matrix;
/// K and V repeated for GQA, as candle-transformers does) and ours through the binding,
/// `fastattn_candle::sdpa` (`avx2-candle`: its cost against the direct call is the
/// binding's).
fn candle_impls(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [hq, hkv, lq, lk, d]: [usize; 5],
    causal: bool,
) -> Vec<Impl> {
    use candle_core::{Device, Tensor};
    let t = |x: &[f32], h: usize, l: usize| {
        Tensor::from_slice(x, (1, h, l, d), &Device::Cpu).expect("the data fits the shape")
    };
    let (qt, kt, vt) = (t(q, hq, lq), t(k, hkv, lk), t(v, hkv, lk));
    let scale = 1.0 / (d as f32).sqrt();
    let (q2, k2, v2) = (qt.clone(), kt.clone(), vt.clone());
    let peer = move |_threads: usize| {
        std::hint::black_box(
            fastattn_candle::reference::attention_matmul_softmax(
                &q2, &k2, &v2, None, scale, causal,
            )
            .expect("valid problem"),
        );
    };
    let isa = Isa::best();
    let ours = move |_threads: usize| {
        let opts = fastattn_candle::SdpaOptions::new().with_causal(causal);
        std::hint::black_box(fastattn_candle::sdpa(&qt, &kt, &vt, &opts).expect("valid problem"));
    };
    let mut binding = Impl::ours(isa, ours);
    binding.name = format!("{}-candle", isa.name());
    vec![Impl::peer(CANDLE, peer), binding]
}

/// The call of an [`attention_8bit`] row, its codes and scales captured.
fn bench_8bit<C: kernels::quant::Code>(
    q: Arc<Vec<f32>>,
    k: &[f32],
    v: &[f32],
    [hq, hkv, lq, lk, d]: [usize; 5],
    causal: bool,
    per_row: bool,
    isa: Isa,
) -> Box<dyn FnMut(usize) + Send> {
    use kernels::quant::quantize_row;
    let quant = |x: &[f32]| -> (Vec<C>, Vec<f32>) {
        let mut codes = vec![C::default(); x.len()];
        let scales: Vec<f32> = if per_row {
            x.chunks(d)
                .zip(codes.chunks_mut(d))
                .map(|(r, c)| quantize_row(r, None, c).expect("finite"))
                .collect()
        } else {
            // One scale per head: the head's largest magnitude maps to the largest code.
            (0..hkv)
                .map(|h| {
                    let xs = &x[h * lk * d..(h + 1) * lk * d];
                    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
                    let s = amax / C::MAX;
                    let cs = &mut codes[h * lk * d..(h + 1) * lk * d];
                    quantize_row(xs, Some(s), cs).expect("finite");
                    s
                })
                .collect()
        };
        (codes, scales)
    };
    let ((kc, ks), (vc, vs)) = (quant(k), quant(v));
    let mut out = vec![0.0f32; hq * lq * d];
    Box::new(move |_threads: usize| {
        fn view<'a, C: kernels::quant::Code>(
            c: &'a [C],
            s: &'a [f32],
            dims: [usize; 4],
            per_row: bool,
        ) -> attention::QuantTensor<'a, C> {
            let t = tensor8(c, dims);
            if per_row {
                attention::QuantTensor::per_row(t, s)
            } else {
                attention::QuantTensor::new(t, s, [0, 1, 0])
            }
            .expect("scales fit")
        }
        let kvd = [1, hkv, lk, d];
        let opts = attention::SdpaOptions::default()
            .with_causal(causal)
            .with_isa(Some(isa));
        attention::sdpa_kv_into(
            tensor(&q, [1, hq, lq, d]).into(),
            view(&kc, &ks, kvd, per_row).into(),
            view(&vc, &vs, kvd, per_row).into(),
            attention::TensorMut::contiguous(&mut out, [1, hq, lq, d])
                .expect("fits")
                .into(),
            &opts,
            attention::SdpaOutputs::default(),
        )
        .expect("valid problem");
    })
}

fn tensor8<C: Copy>(x: &[C], dims: [usize; 4]) -> attention::TensorRef<'_, C> {
    attention::TensorRef::contiguous(x, dims).expect("the buffer fits the shape")
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
