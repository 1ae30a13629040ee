//! The registry of benchmark suites: what `cargo xtask bench` measures and what
//! `cargo xtask profile <kernel>` can run.
//!
//! # Adding a suite
//! Write a function listing its cases and one building a case from a `--shape` string,
//! then add a [`Suite`] entry to [`suites`]. A case is a [`Case`]: its work (flops, bytes,
//! [`Bound`]) and a setup closure that builds the inputs once and returns one [`Impl`] per
//! implementation, each a closure performing one call. Setup runs only when the case is
//! selected, so large inputs cost nothing otherwise. See [`gemm_case`] for the pattern.
//!
//! The `attention` suite compares every variant's fused path with a materialised attention
//! on matrixmultiply ([`MATERIALIZED_MM`]). GEMM and attention
//! cases also name what the torch peer computes on them ([`Case::with_torch`]: `torch.mm`,
//! SDPA). The `layer` suite
//! times the whole multi-head attention layer (prefill, and decoding against a cache).

use crate::bench::{
    matrixmultiply_threads, Bound, Case, Impl, GEMM_CRATE, MATERIALIZED_MM, MATRIXMULTIPLY, STD,
};
use crate::torch::TorchOp;
use crate::Result;
use fastattn_benches::{gemm_crate, matrixmultiply_sgemm, random_vec, RECT, SQUARES};
use kernels::exp::exp_slice_with;
use kernels::gemm::{MatMut, MatRef};
use kernels::softmax::{softmax_with, RowOptions};
use kernels::{gemm_with, DType, Isa, Parallelism};
use std::sync::{Arc, Mutex};

/// A suite: its cases, and how `profile` builds one case from a shape.
pub struct Suite {
    /// Name (`gemm`): the `--filter` word and the `profile` kernel name.
    pub name: &'static str,
    /// Every case, quick and `--full` only.
    pub cases: fn() -> Vec<Case>,
    /// One case from a `--shape` string, for `cargo xtask profile`.
    pub from_shape: fn(&str) -> Result<Case>,
    /// What `--shape` looks like for this suite (shown in errors).
    pub shape_help: &'static str,
    /// The shape `profile` uses when none is given.
    pub default_shape: &'static str,
}

/// Every suite, in the order `bench` runs them.
pub fn suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "gemm",
            cases: gemm_cases,
            from_shape: gemm_from_shape,
            shape_help: "MxKxN (C is MxN, A MxK, B KxN) or N for a square",
            default_shape: "512x512x512",
        },
        Suite {
            name: "exp",
            cases: exp_cases,
            from_shape: exp_from_shape,
            shape_help: "N (elements)",
            default_shape: "262144",
        },
        Suite {
            name: "softmax",
            cases: softmax_cases,
            from_shape: softmax_from_shape,
            shape_help: "ROWSxLEN (rows of LEN values)",
            default_shape: "64x1024",
        },
        Suite {
            name: "attention",
            cases: attention_cases,
            from_shape: attention_from_shape,
            shape_help: "HQxHKVxLQxLKxD[c] (append c for causal), e.g. 8x8x1024x1024x64c",
            default_shape: "8x8x1024x1024x64",
        },
        Suite {
            name: "backward",
            cases: backward_cases,
            from_shape: backward_from_shape,
            shape_help: "HQxHKVxLQxLKxD[c][f] (c: causal; f: forward + backward)",
            default_shape: "8x8x1024x1024x64",
        },
        Suite {
            name: "layer",
            cases: layer_cases,
            from_shape: layer_from_shape,
            shape_help:
                "DMODELxHQxHKVxL[+CACHE] (L tokens; +CACHE: decode after CACHE cached tokens)",
            default_shape: "768x12x12x512",
        },
    ]
}

/// The suite called `name`.
///
/// # Errors
/// An unknown name (the message lists the suites).
pub fn suite(name: &str) -> Result<Suite> {
    let all = suites();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    let names = names.join(", ");
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("unknown kernel {name:?}; known: {names}").into())
}

/// Largest GEMM (in flops) the scalar variant runs in the quick run: 2·256³. Above it the
/// scalar kernel takes seconds per call; `--full` or `--variant scalar` still runs it.
pub const SCALAR_QUICK_MAX_FLOPS: f64 = 2.0 * 256.0 * 256.0 * 256.0;

/// Square sizes only `--full` adds.
pub const FULL_SQUARES: &[usize] = &[2048];

/// The GEMM suite: squares (64 … 1024, and 2048 with `--full`) and the attention- and
/// layer-shaped products of `fastattn_benches::RECT`.
pub fn gemm_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = SQUARES
        .iter()
        .map(|&n| gemm_case(n, n, n))
        .chain(FULL_SQUARES.iter().map(|&n| gemm_case(n, n, n).full_only()))
        .collect();
    cases.extend(RECT.iter().map(|&(m, k, n)| gemm_case(m, k, n)));
    cases
}

/// Parses a GEMM `--shape`: `MxKxN` or `N` (square).
///
/// # Errors
/// Anything else, or a zero dimension.
pub fn parse_gemm_shape(shape: &str) -> Result<(usize, usize, usize)> {
    let dims: Vec<usize> = shape
        .split(['x', 'X', '*', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("--shape {shape:?}: expected MxKxN or N"))?;
    let (m, k, n) = match dims[..] {
        [n] => (n, n, n),
        [m, k, n] => (m, k, n),
        _ => return Err(format!("--shape {shape:?}: expected MxKxN or N").into()),
    };
    if m == 0 || k == 0 || n == 0 {
        return Err(format!("--shape {shape:?}: dimensions must be positive").into());
    }
    Ok((m, k, n))
}

fn gemm_from_shape(shape: &str) -> Result<Case> {
    let (m, k, n) = parse_gemm_shape(shape)?;
    Ok(gemm_case(m, k, n))
}

/// `C = A·B` for a row-major `m×k` A and `k×n` B: every variant this CPU runs through
/// `gemm_with(isa, Parallelism::Rayon, ..)` (so it uses the pool it is timed in), the
/// `gemm` crate at the pool's thread count, and matrixmultiply at its fixed thread count.
/// Named `N` when square, else `MxKxN`.
pub fn gemm_case(m: usize, k: usize, n: usize) -> Case {
    let name = if m == k && k == n {
        n.to_string()
    } else {
        format!("{m}x{k}x{n}")
    };
    let flops = 2.0 * m as f64 * k as f64 * n as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    Case::new(
        "gemm",
        name,
        format!("m={m} k={k} n={n}"),
        flops,
        bytes,
        Bound::Compute,
        move || {
            let a = Arc::new(random_vec(m * k, 1));
            let b = Arc::new(random_vec(k * n, 2));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (a, b) = (a.clone(), b.clone());
                let mut c = vec![0.0f32; m * n];
                let run = move |_threads: usize| {
                    let am = MatRef::row_major(&a, m, k).expect("A fits");
                    let bm = MatRef::row_major(&b, k, n).expect("B fits");
                    let cm = MatMut::row_major(&mut c, m, n).expect("C fits");
                    gemm_with(isa, Parallelism::Rayon, 1.0, am, bm, 0.0, cm)
                        .expect("an available ISA runs");
                };
                let slow = isa == Isa::Scalar && flops > SCALAR_QUICK_MAX_FLOPS;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            if let Some(t) = matrixmultiply_threads() {
                let (a, b) = (a.clone(), b.clone());
                let mut c = vec![0.0f32; m * n];
                let run = move |_threads: usize| matrixmultiply_sgemm(m, k, n, &a, &b, &mut c);
                impls.push(Impl::peer(MATRIXMULTIPLY, run).at_threads(t));
            }
            let mut c = vec![0.0f32; m * n];
            let run = move |threads: usize| gemm_crate(m, k, n, &a, &b, &mut c, threads);
            impls.push(Impl::peer(GEMM_CRATE, run));
            impls
        },
    )
    .with_torch(TorchOp::Mm { m, k, n })
}

/// Parses `N` or `AxB` (`dims` numbers, positive) for the exp / softmax shapes.
fn parse_dims(shape: &str, dims: usize, help: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = shape
        .split(['x', 'X', '*', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("--shape {shape:?}: expected {help}"))?;
    if v.len() != dims || v.contains(&0) {
        return Err(format!("--shape {shape:?}: expected {help}, all positive").into());
    }
    Ok(v)
}

/// Elementwise exp sizes: in L1 (16 KiB), in L2 (1 MiB), and streaming from memory
/// (64 MiB in, 64 MiB out).
pub const EXP_SIZES: &[(usize, Bound)] = &[
    (4096, Bound::Cache),
    (1 << 18, Bound::Cache),
    (1 << 24, Bound::Memory),
];

/// The exp suite: [`EXP_SIZES`].
pub fn exp_cases() -> Vec<Case> {
    EXP_SIZES.iter().map(|&(n, b)| exp_case(n, b)).collect()
}

fn exp_from_shape(shape: &str) -> Result<Case> {
    let n = parse_dims(shape, 1, "N (elements)")?[0];
    let bound = if n >= 1 << 22 {
        Bound::Memory
    } else {
        Bound::Cache
    };
    Ok(exp_case(n, bound))
}

/// `out[i] = exp(x[i])` on `n` values in [−20, 20): every variant through
/// `kernels::exp::exp_slice_with` (one thread: it takes no `Parallelism`), and `std`, a
/// loop on `f32::exp`. Counts no flops (GFLOP/s is 0); bytes are 4n read + 4n written.
pub fn exp_case(n: usize, bound: Bound) -> Case {
    Case::new(
        "exp",
        n.to_string(),
        format!("n={n}"),
        0.0,
        8.0 * n as f64,
        bound,
        move || {
            let x: Arc<Vec<f32>> = Arc::new(random_vec(n, 3).iter().map(|v| 20.0 * v).collect());
            // One output buffer shared by the implementations (they never run at once).
            let out = Arc::new(Mutex::new(vec![0.0f32; n]));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (x, out) = (x.clone(), out.clone());
                let run = move |_t: usize| {
                    let mut o = out.lock().expect("not poisoned");
                    exp_slice_with(isa, &x, &mut o).expect("an available ISA runs");
                };
                impls.push(Impl::ours(isa, run).at_threads(1));
            }
            let run = move |_t: usize| {
                let mut o = out.lock().expect("not poisoned");
                for (o, x) in o.iter_mut().zip(x.iter()) {
                    *o = x.exp();
                }
            };
            impls.push(Impl::peer(STD, run).at_threads(1));
            impls
        },
    )
}

/// Softmax shapes `(rows, row_len, bound)`: heads × a 1024-key score row (in L2), a
/// decode-like 32 heads × 8192 keys, and a 4096 × 4096 score matrix streamed from memory.
pub const SOFTMAX_SHAPES: &[(usize, usize, Bound)] = &[
    (64, 1024, Bound::Cache),
    (32, 8192, Bound::Cache),
    (4096, 4096, Bound::Memory),
];

/// The softmax suite: [`SOFTMAX_SHAPES`].
pub fn softmax_cases() -> Vec<Case> {
    SOFTMAX_SHAPES
        .iter()
        .map(|&(r, l, b)| softmax_case(r, l, b))
        .collect()
}

fn softmax_from_shape(shape: &str) -> Result<Case> {
    let d = parse_dims(shape, 2, "ROWSxLEN")?;
    let bound = if d[0] * d[1] >= 1 << 22 {
        Bound::Memory
    } else {
        Bound::Cache
    };
    Ok(softmax_case(d[0], d[1], bound))
}

/// Row softmax of a `rows × row_len` matrix of logits in [−8, 8), out of place (the input
/// stays the same between calls): every variant through `kernels::softmax::softmax_with`
/// with `Parallelism::Rayon` (so at every thread count), and `std`, a plain loop (max,
/// `f32::exp`, sum, divide) on one thread. Counts no flops; bytes are 4n read + 4n written.
pub fn softmax_case(rows: usize, row_len: usize, bound: Bound) -> Case {
    let n = rows * row_len;
    Case::new(
        "softmax",
        format!("{rows}x{row_len}"),
        format!("rows={rows} len={row_len}"),
        0.0,
        8.0 * n as f64,
        bound,
        move || {
            let x: Arc<Vec<f32>> = Arc::new(random_vec(n, 4).iter().map(|v| 8.0 * v).collect());
            let out = Arc::new(Mutex::new(vec![0.0f32; n]));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (x, out) = (x.clone(), out.clone());
                let run = move |_t: usize| {
                    let mut o = out.lock().expect("not poisoned");
                    let opts = RowOptions::new();
                    softmax_with(isa, Parallelism::Rayon, &x, &mut o, row_len, &opts)
                        .expect("an available ISA runs");
                };
                impls.push(Impl::ours(isa, run));
            }
            let run = move |_t: usize| {
                let mut o = out.lock().expect("not poisoned");
                for (o, x) in o.chunks_mut(row_len).zip(x.chunks(row_len)) {
                    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - m).exp();
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    for o in o.iter_mut() {
                        *o *= inv;
                    }
                }
            };
            impls.push(Impl::peer(STD, run).at_threads(1));
            impls
        },
    )
}

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

fn attention_from_shape(shape: &str) -> Result<Case> {
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

fn backward_from_shape(shape: &str) -> Result<Case> {
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

/// Layer cases: GPT-2-small-shaped prefill (d_model 768, 12 heads, L = 512, causal) and
/// decoding one token against 4096 cached tokens (d_model 2048, 16 query / 4 key-value
/// heads of 128, RoPE).
pub fn layer_cases() -> Vec<Case> {
    vec![
        layer_case(768, 12, 12, 512, 0),
        layer_case(2048, 16, 4, 1, 4096),
    ]
}

fn layer_from_shape(shape: &str) -> Result<Case> {
    let (dims, cache) = match shape.split_once('+') {
        Some((d, c)) => (d, parse_dims(c, 1, "CACHE")?[0]),
        None => (shape, 0),
    };
    let d = parse_dims(dims, 4, "DMODELxHQxHKVxL[+CACHE]")?;
    Ok(layer_case(d[0], d[1], d[2], d[3], cache))
}

/// One layer case: `l` new tokens (batch 1) after `cache` cached ones (`cache = 0`: a causal
/// prefill of `l` tokens without a cache). Flops count the projections and the attention.
/// Every variant with f32 weights and cache, and the best one with bf16 weights and cache
/// (`avx2-bf16`: the weights and cached keys/values take half the bytes).
pub fn layer_case(d_model: usize, hq: usize, hkv: usize, l: usize, cache: usize) -> Case {
    let hd = d_model / hq;
    let proj = 2.0 * l as f64 * d_model as f64 * ((hq + 2 * hkv) * hd + hq * hd) as f64;
    let keys = (cache + l) as f64;
    let attn = if cache == 0 {
        2.0 * (hq * l) as f64 * keys * hd as f64
    } else {
        4.0 * (hq * l) as f64 * keys * hd as f64
    };
    let weights = (d_model * (hq + 2 * hkv) * hd + hq * hd * d_model) as f64;
    let stored = weights + 2.0 * (hkv * hd) as f64 * keys;
    let bytes = 4.0 * (stored + 2.0 * (l * d_model) as f64);
    let bytes_16 = 2.0 * stored + 4.0 * 2.0 * (l * d_model) as f64;
    let name = if cache == 0 {
        format!("{d_model}x{hq}x{hkv}x{l}")
    } else {
        format!("{d_model}x{hq}x{hkv}x{l}+{cache}")
    };
    let bound = if cache == 0 {
        Bound::Compute
    } else {
        Bound::Memory
    };
    Case::new(
        "layer",
        name,
        if cache == 0 {
            format!("d_model={d_model} hq={hq} hkv={hkv} tokens={l} cached=0")
        } else {
            // What the caches hold (`KvCache::bytes`: 2·Hkv·D·capacity elements).
            let mib = |size: usize| (2 * hkv * hd * (cache + l) * size) as f64 / (1 << 20) as f64;
            format!(
                "d_model={d_model} hq={hq} hkv={hkv} tokens={l} cached={cache} \
                 (KV cache: f32 {:.0} MiB, bf16 {:.0} MiB)",
                mib(4),
                mib(2)
            )
        },
        proj + attn,
        bytes,
        bound,
        move || {
            let x = Arc::new(random_vec(l * d_model, 8));
            let mut impls = Vec::new();
            let shape = [d_model, hq, hkv, l, cache];
            for isa in Isa::available() {
                let run = layer_run::<f32>(isa, shape, x.clone());
                let slow = matches!(isa, Isa::Scalar | Isa::Portable) && proj + attn > 2e8;
                impls.push(Impl::ours(isa, run).slow_if(slow));
            }
            let run = layer_run::<kernels::bf16>(Isa::best(), shape, x);
            impls.push(Impl::ours_dtype(Isa::best(), DType::BF16, bytes_16, run));
            impls
        },
    )
}

/// One call of a layer with weights and cache stored as `W` (the same seeded weights,
/// rounded): a causal prefill of `l` tokens, or one decode step of `l` tokens after `cache`
/// cached ones (the cache is truncated back after each call).
fn layer_run<W: kernels::Element>(
    isa: Isa,
    [d_model, hq, hkv, l, cache]: [usize; 5],
    x: Arc<Vec<f32>>,
) -> impl FnMut(usize) + Send + 'static {
    let mut cfg = attention::MhaConfig::new(d_model, hq)
        .with_kv_heads(hkv)
        .with_isa(isa);
    if cache > 0 {
        cfg = cfg.with_rope(attention::RopeConfig::default());
    }
    let layer =
        attention::MultiHeadAttention::random_of::<W>(cfg, false, 9).expect("valid layer shape");
    let opts = attention::SdpaOptions::default().with_causal(true);
    let mut kv = None;
    if cache > 0 {
        let mut c = layer.new_cache_of::<W>(1, cache + l).expect("cache fits");
        let prompt = random_vec(cache * d_model, 10);
        layer
            .forward_cached(&mut c, &prompt, 1, cache, &opts)
            .expect("prefill fits");
        kv = Some(c);
    }
    let mut y = vec![0.0f32; l * d_model];
    move |_threads: usize| match kv.as_mut() {
        Some(c) => {
            layer
                .forward_cached_into(c, &x, 1, l, &mut y, &opts)
                .expect("step fits");
            c.truncate(cache);
        }
        None => layer
            .forward_into(&x, 1, l, &mut y, &opts)
            .expect("valid input"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_shapes_parse() {
        assert_eq!(parse_gemm_shape("512").unwrap(), (512, 512, 512));
        assert_eq!(parse_gemm_shape("64x256x128").unwrap(), (64, 256, 128));
        assert_eq!(parse_gemm_shape("64X2X3").unwrap(), (64, 2, 3));
        for bad in ["", "64x64", "ax1x1", "0x4x4", "1x2x3x4", "-1"] {
            assert!(parse_gemm_shape(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gemm_suite_names_and_work() {
        let cases = gemm_cases();
        let ids: Vec<String> = cases.iter().map(Case::id).collect();
        assert!(ids.contains(&"gemm/64".to_string()));
        assert!(ids.contains(&"gemm/512x768x2304".to_string()));
        let big = cases.iter().find(|c| c.name == "2048").unwrap();
        assert!(big.full_only);
        let c = gemm_case(2, 3, 4);
        assert_eq!((c.name.as_str(), c.flops, c.bytes), ("2x3x4", 48.0, 104.0));
        assert_eq!(c.shape, "m=2 k=3 n=4");
    }

    #[test]
    fn every_gemm_impl_runs_on_odd_shapes() {
        let case = gemm_case(5, 7, 3);
        let mut impls = (case.setup)();
        let names: Vec<&str> = impls.iter().map(|i| i.name.as_str()).collect();
        assert!(
            names.contains(&"scalar") && names.contains(&GEMM_CRATE),
            "{names:?}"
        );
        for imp in impls.iter_mut() {
            (imp.run)(1);
            (imp.run)(2);
        }
    }

    #[test]
    fn exp_and_softmax_impls_run_and_shapes_parse() {
        for (case, elems) in [
            (exp_case(37, Bound::Cache), 37.0),
            (softmax_case(3, 13, Bound::Cache), 39.0),
        ] {
            assert_eq!((case.flops, case.bytes), (0.0, 8.0 * elems));
            let mut impls = (case.setup)();
            let names: Vec<&str> = impls.iter().map(|i| i.name.as_str()).collect();
            assert!(
                names.contains(&"scalar") && names.contains(&STD),
                "{names:?}"
            );
            for imp in impls.iter_mut() {
                (imp.run)(1);
            }
        }
        assert_eq!(exp_from_shape("4096").unwrap().id(), "exp/4096");
        assert!(exp_from_shape("1x2").is_err());
        let c = softmax_from_shape("2048x2048").unwrap();
        assert_eq!(
            (c.id().as_str(), c.bound),
            ("softmax/2048x2048", Bound::Memory)
        );
        assert!(softmax_from_shape("64").is_err());
        assert!(softmax_from_shape("0x4").is_err());
    }

    #[test]
    fn attention_and_layer_cases_have_16_bit_rows_that_run() {
        let best = Isa::best().name();
        for case in [
            attention_case(2, 1, 5, 9, 8, true),
            attention_case(2, 2, 1, 40, 16, false),
            layer_case(32, 4, 2, 3, 0),
            layer_case(32, 4, 2, 1, 6),
        ] {
            let mut impls = (case.setup)();
            let names: Vec<String> = impls.iter().map(|i| i.name.clone()).collect();
            assert!(names.contains(&format!("{best}-bf16")), "{names:?}");
            let b16 = impls.iter().find(|i| i.name.ends_with("-bf16")).unwrap();
            assert!(b16.bytes.unwrap() < case.bytes, "{}", case.id());
            for imp in impls.iter_mut() {
                (imp.run)(1);
            }
        }
        let a = attention_case(2, 1, 5, 9, 8, true);
        let dtypes: Vec<DType> = a.torch.iter().map(|t| t.dtype()).collect();
        assert_eq!(dtypes, [DType::F32, DType::BF16]);
        assert!(crate::bench::is_peer("torch-bf16") && crate::bench::is_peer("torch"));
        assert!(!crate::bench::is_peer("avx2-bf16") && !crate::bench::is_peer("torchy"));
    }

    #[test]
    fn unknown_kernel_lists_the_suites() {
        let err = suite("gemv").err().unwrap().to_string();
        assert!(err.contains("gemm"), "{err}");
        assert!(suite("gemm").is_ok());
    }
}
