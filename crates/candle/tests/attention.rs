//! fastattn-candle against candle's own attention (matmul → masked softmax → matmul, in
//! f32 on the same, rounded, inputs), and the refusals of bad input.

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use fastattn_candle::reference::{additive_from_u8, attention_matmul_softmax};
use fastattn_candle::{
    flash_attn, flash_attn_alibi, flash_attn_alibi_windowed_softcap, flash_attn_varlen,
    flash_attn_varlen_alibi, flash_attn_varlen_windowed, flash_attn_windowed, sdpa, Mask,
    Parallelism, SdpaOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x5eed_ca4d;

fn rng(salt: u64) -> StdRng {
    StdRng::seed_from_u64(SEED ^ salt)
}

/// Uniform values in [-1, 1) of `shape`, f32 on the CPU.
fn rand(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Q `[b, hq, lq, d]`, K and V `[b, hkv, lk, d]` from `rand`, drawn in that order.
fn qkv(rng: &mut StdRng, [b, hq, hkv, lq, lk, d]: [usize; 6]) -> (Tensor, Tensor, Tensor) {
    let q = rand(rng, &[b, hq, lq, d]);
    let k = rand(rng, &[b, hkv, lk, d]);
    let v = rand(rng, &[b, hkv, lk, d]);
    (q, k, v)
}

fn f32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// Max-abs difference of two tensors of the same shape, as f32.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (f32s(a) - f32s(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_close(label: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = if got.elem_count() == 0 {
        0.0
    } else {
        max_diff(got, want)
    };
    assert!(
        d <= tol,
        "{label}: max |fastattn - candle| = {d} > {tol} (seed {SEED:#x})"
    );
}

/// Tolerance of an output in `dt` (the reference is f32 on the rounded inputs, so this
/// measures the kernel and the output's rounding).
fn tol(dt: DType) -> f32 {
    match dt {
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    }
}

/// (B, Hq, Hkv, Lq, Lk, D, Dv): L = 1, primes, odd head dims, GQA and MQA, Lq ≠ Lk.
const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1, 1, 1),
    (1, 2, 2, 1, 7, 8, 8),
    (2, 3, 3, 13, 13, 31, 31),
    (1, 4, 2, 17, 31, 64, 64),
    (2, 6, 2, 7, 61, 13, 5),
    (1, 8, 1, 1, 257, 64, 64),
    (3, 2, 1, 31, 37, 16, 16),
    (1, 2, 2, 127, 127, 128, 128),
];

#[test]
fn sdpa_matches_candle_on_random_shapes_causal_and_not() -> Result<()> {
    let mut r = rng(1);
    for &(b, hq, hkv, lq, lk, d, dv) in SHAPES {
        let q = rand(&mut r, &[b, hq, lq, d]);
        let k = rand(&mut r, &[b, hkv, lk, d]);
        let v = rand(&mut r, &[b, hkv, lk, dv]);
        for causal in [false, true] {
            let scale = 1.0 / (d as f32).sqrt();
            let got = sdpa(&q, &k, &v, &SdpaOptions::new().with_causal(causal))?;
            let want = attention_matmul_softmax(&q, &k, &v, None, scale, causal)?;
            assert_eq!(got.dims(), &[b, hq, lq, dv]);
            assert!(got.is_contiguous());
            let label = format!("B{b} Hq{hq} Hkv{hkv} Lq{lq} Lk{lk} D{d} Dv{dv} causal={causal}");
            assert_close(&label, &got, &want, tol(DType::F32));
        }
    }
    Ok(())
}

#[test]
fn sdpa_matches_candle_in_f16_and_bf16_and_mixed_dtypes() -> Result<()> {
    let mut r = rng(2);
    let (b, hq, hkv, lq, lk, d) = (2, 4, 2, 19, 23, 32);
    let (q, k, v) = qkv(&mut r, [b, hq, hkv, lq, lk, d]);
    let combos = [
        (DType::F16, DType::F16, DType::F16),
        (DType::BF16, DType::BF16, DType::BF16),
        (DType::BF16, DType::F16, DType::F32),
        (DType::F32, DType::BF16, DType::F16),
    ];
    for (qt, kt, vt) in combos {
        let (q, k, v) = (q.to_dtype(qt)?, k.to_dtype(kt)?, v.to_dtype(vt)?);
        for causal in [false, true] {
            let got = sdpa(&q, &k, &v, &SdpaOptions::new().with_causal(causal))?;
            assert_eq!(got.dtype(), qt, "output in q's dtype");
            let want = attention_matmul_softmax(
                &f32s(&q),
                &f32s(&k),
                &f32s(&v),
                None,
                1.0 / (d as f32).sqrt(),
                causal,
            )?;
            let worst = [qt, kt, vt].into_iter().map(tol).fold(0.0f32, f32::max);
            let label = format!("q {qt:?} k {kt:?} v {vt:?} causal={causal}");
            assert_close(&label, &got, &want, worst);
        }
    }
    Ok(())
}

#[test]
fn sdpa_reads_transposed_narrowed_and_padded_views_in_place() -> Result<()> {
    let mut r = rng(3);
    let (b, hq, hkv, lq, lk, d) = (2, 6, 3, 11, 29, 24);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        // [B, L, H, D] memory, seen as [B, H, L, D] through transpose(1, 2).
        let q = rand(&mut r, &[b, lq, hq, d])
            .to_dtype(dt)?
            .transpose(1, 2)?;
        // K: a window of a longer cache (start offset ≠ 0) whose rows are padded (D + 5).
        let k = rand(&mut r, &[b, hkv, lk + 7, d + 5])
            .to_dtype(dt)?
            .narrow(2, 4, lk)?
            .narrow(3, 2, d)?;
        // V: [B, L, H, D] transposed, then a head slice of a wider tensor.
        let v = rand(&mut r, &[b, lk, hkv + 2, d])
            .to_dtype(dt)?
            .transpose(1, 2)?
            .narrow(1, 1, hkv)?;
        for t in [&q, &k, &v] {
            assert!(!t.is_contiguous());
        }
        for causal in [false, true] {
            let got = sdpa(&q, &k, &v, &SdpaOptions::new().with_causal(causal))?;
            let want = attention_matmul_softmax(
                &f32s(&q.contiguous()?),
                &f32s(&k.contiguous()?),
                &f32s(&v.contiguous()?),
                None,
                1.0 / (d as f32).sqrt(),
                causal,
            )?;
            assert_close(
                &format!("strided {dt:?} causal={causal}"),
                &got,
                &want,
                tol(dt),
            );
        }
    }
    Ok(())
}

#[test]
fn sdpa_additive_masks_broadcast_like_candle() -> Result<()> {
    let mut r = rng(4);
    let (b, hq, hkv, lq, lk, d) = (2, 4, 2, 13, 17, 16);
    let (q, k, v) = qkv(&mut r, [b, hq, hkv, lq, lk, d]);
    let mask_shapes: &[&[usize]] = &[
        &[lq, lk],
        &[1, lq, lk],
        &[b, 1, lq, lk],
        &[1, hq, lq, lk],
        &[b, hq, lq, lk],
        &[b, 1, 1, lk],
        &[1, 1, lq, 1],
    ];
    for &shape in mask_shapes {
        // Random biases with some keys hidden (-inf), key 0 always visible.
        let n: usize = shape.iter().product();
        let last = *shape.last().unwrap();
        let data: Vec<f32> = (0..n)
            .map(|i| {
                if i % last != 0 && r.random_range(0.0..1.0) < 0.3 {
                    f32::NEG_INFINITY
                } else {
                    r.random_range(-2.0..2.0)
                }
            })
            .collect();
        let m = Tensor::from_vec(data, shape, &Device::Cpu)?;
        for causal in [false, true] {
            let opts = SdpaOptions::new()
                .with_causal(causal)
                .with_mask(Mask::Additive(m.clone()));
            let got = sdpa(&q, &k, &v, &opts)?;
            let want = attention_matmul_softmax(&q, &k, &v, Some(&m), 0.25, causal)?;
            assert_close(
                &format!("additive {shape:?} causal={causal}"),
                &got,
                &want,
                2e-5,
            );
        }
        // A 16-bit additive mask is converted (its rounded values are the reference's).
        let m16 = m.to_dtype(DType::BF16)?;
        let got = sdpa(
            &q,
            &k,
            &v,
            &SdpaOptions::new().with_mask(Mask::Additive(m16.clone())),
        )?;
        let want = attention_matmul_softmax(&q, &k, &v, Some(&f32s(&m16)), 0.25, false)?;
        assert_close(&format!("bf16 additive {shape:?}"), &got, &want, 2e-5);
    }
    // A broadcast (stride-0) view is read as is.
    let row = rand(&mut r, &[1, 1, 1, lk]);
    let wide = row.broadcast_as((b, hq, lq, lk))?;
    let got = sdpa(
        &q,
        &k,
        &v,
        &SdpaOptions::new().with_mask(Mask::Additive(wide.clone())),
    )?;
    let want = attention_matmul_softmax(&q, &k, &v, Some(&row), 0.25, false)?;
    assert_close("broadcast_as mask", &got, &want, 2e-5);
    Ok(())
}

#[test]
fn sdpa_boolean_masks_in_both_conventions() -> Result<()> {
    let mut r = rng(5);
    let (b, hq, hkv, lq, lk, d) = (2, 4, 1, 9, 14, 8);
    let (q, k, v) = qkv(&mut r, [b, hq, hkv, lq, lk, d]);
    for shape in [
        vec![lq, lk],
        vec![b, 1, lq, lk],
        vec![b, hq, lq, lk],
        vec![b, 1, 1, lk],
    ] {
        let n: usize = shape.iter().product();
        let last = *shape.last().unwrap();
        // `visible` is 1 where the key may be seen; key 0 always visible.
        let visible: Vec<u8> = (0..n)
            .map(|i| u8::from(i % last == 0 || r.random_range(0.0..1.0) < 0.6))
            .collect();
        let hidden: Vec<u8> = visible.iter().map(|&x| 1 - x).collect();
        let allow = Tensor::from_vec(visible, shape.as_slice(), &Device::Cpu)?;
        let block = Tensor::from_vec(hidden, shape.as_slice(), &Device::Cpu)?;
        let additive = additive_from_u8(&allow, true, DType::F32)?;
        let want = attention_matmul_softmax(&q, &k, &v, Some(&additive), 0.5, false)?;
        for (name, mask) in [
            ("allow", Mask::Allow(allow.clone())),
            ("block", Mask::Block(block.clone())),
        ] {
            let opts = SdpaOptions::new().with_scale(0.5).with_mask(mask);
            let got = sdpa(&q, &k, &v, &opts)?;
            assert_close(&format!("{name} {shape:?}"), &got, &want, 2e-5);
        }
    }
    Ok(())
}

#[test]
fn sdpa_boolean_masks_read_strided_and_broadcast_views() -> Result<()> {
    let mut r = rng(16);
    let (b, hq, lq, lk, d) = (2, 3, 6, 10, 8);
    let (q, k, v) = qkv(&mut r, [b, hq, hq, lq, lk, d]);
    // A padding row [1, Lk] broadcast (stride 0) to [B, Hq, Lq, Lk].
    let keep: Vec<u8> = (0..lk).map(|j| u8::from(j < 7)).collect();
    let row = Tensor::from_vec(keep, (1, lk), &Device::Cpu)?;
    let wide = row.broadcast_as((b, hq, lq, lk))?;
    // A transposed [Lk, Lq] mask (non-contiguous [Lq, Lk] view), key 0 always visible.
    let data: Vec<u8> = (0..lk * lq)
        .map(|x| u8::from(x < lq || r.random_range(0.0..1.0) < 0.5))
        .collect();
    let t = Tensor::from_vec(data, (lk, lq), &Device::Cpu)?.t()?;
    assert!(!t.is_contiguous());
    for (name, m) in [("broadcast_as", wide), ("transposed", t)] {
        let want = attention_matmul_softmax(
            &q,
            &k,
            &v,
            Some(&additive_from_u8(&m.contiguous()?, true, DType::F32)?),
            0.4,
            false,
        )?;
        let opts = SdpaOptions::new().with_scale(0.4).with_mask(Mask::Allow(m));
        assert_close(name, &sdpa(&q, &k, &v, &opts)?, &want, 2e-5);
    }
    Ok(())
}

/// The options candle's path has no direct form for (soft-cap, sinks, key lengths) go to
/// fastattn unchanged: the same result as a direct `fastattn` call on the same data.
#[test]
fn sdpa_options_match_a_direct_fastattn_call() -> Result<()> {
    let mut r = rng(6);
    let (b, hq, hkv, lq, lk, d) = (2, 4, 2, 7, 19, 16);
    let (q, k, v) = qkv(&mut r, [b, hq, hkv, lq, lk, d]);
    let (qv, kv, vv) = (
        q.flatten_all()?.to_vec1::<f32>()?,
        k.flatten_all()?.to_vec1::<f32>()?,
        v.flatten_all()?.to_vec1::<f32>()?,
    );
    let slopes = vec![0.5f32, 0.25, 0.125, 0.0625];
    let sinks = vec![0.3f32, -1.0, f32::NEG_INFINITY, 2.0];
    let lens = vec![11usize, 19];
    let cases: Vec<(&str, SdpaOptions)> = vec![
        ("scale", SdpaOptions::new().with_scale(0.7)),
        (
            "softcap",
            SdpaOptions::new().with_softcap(1.5).with_scale(3.0),
        ),
        ("window", SdpaOptions::new().with_window(Some(3), Some(1))),
        (
            "alibi causal",
            SdpaOptions::new()
                .with_alibi_slopes(Some(slopes.clone()))
                .with_causal(true),
        ),
        ("sinks", SdpaOptions::new().with_sinks(Some(sinks.clone()))),
        (
            "kv_lengths",
            SdpaOptions::new()
                .with_kv_lengths(Some(lens.clone()))
                .with_causal(true),
        ),
        (
            "sequential",
            SdpaOptions::new().with_parallelism(Parallelism::Sequential),
        ),
    ];
    for (name, opts) in cases {
        let got = sdpa(&q, &k, &v, &opts)?;
        let direct = attention::sdpa(
            attention::TensorRef::contiguous(&qv, [b, hq, lq, d]).unwrap(),
            attention::TensorRef::contiguous(&kv, [b, hkv, lk, d]).unwrap(),
            attention::TensorRef::contiguous(&vv, [b, hkv, lk, d]).unwrap(),
            &attention::SdpaOptions::new()
                .with_scale(opts.scale)
                .with_causal(opts.causal)
                .with_window(opts.window_left, opts.window_right)
                .with_softcap(opts.softcap)
                .with_alibi_slopes(opts.alibi_slopes.as_deref())
                .with_sinks(opts.sinks.as_deref())
                .with_kv_lengths(opts.kv_lengths.as_deref()),
        )
        .unwrap();
        let direct = Tensor::from_vec(direct, (b, hq, lq, d), &Device::Cpu)?;
        assert_close(name, &got, &direct, 1e-6);
    }
    Ok(())
}

/// A window and ALiBi written as candle's additive mask give the same result.
#[test]
fn sdpa_window_and_alibi_match_candle_with_an_equivalent_mask() -> Result<()> {
    let mut r = rng(7);
    let (b, hq, lq, lk, d) = (1, 3, 6, 15, 8);
    let (q, k, v) = qkv(&mut r, [b, hq, hq, lq, lk, d]);
    let slopes = [0.5f32, 0.1, 0.0];
    let (left, right) = (4usize, 2usize);
    let off = (lk - lq) as i64;
    let mut m = Vec::new();
    for s in slopes {
        for i in 0..lq as i64 {
            for j in 0..lk as i64 {
                let p = i + off;
                m.push(if j < p - left as i64 || j > p + right as i64 {
                    f32::NEG_INFINITY
                } else {
                    -s * (p - j).abs() as f32
                });
            }
        }
    }
    let m = Tensor::from_vec(m, (1, hq, lq, lk), &Device::Cpu)?;
    let want = attention_matmul_softmax(&q, &k, &v, Some(&m), 0.3, false)?;
    let opts = SdpaOptions::new()
        .with_scale(0.3)
        .with_window(Some(left), Some(right))
        .with_alibi_slopes(Some(slopes.to_vec()));
    assert_close("window + alibi", &sdpa(&q, &k, &v, &opts)?, &want, 2e-5);
    Ok(())
}

#[test]
fn sdpa_empty_sizes_give_empty_outputs() -> Result<()> {
    let mut r = rng(8);
    let q = rand(&mut r, &[2, 2, 0, 8]);
    let k = rand(&mut r, &[2, 2, 5, 8]);
    assert_eq!(sdpa(&q, &k, &k, &SdpaOptions::new())?.dims(), &[2, 2, 0, 8]);
    // No keys: zero outputs (candle's path would give NaN).
    let q = rand(&mut r, &[1, 2, 3, 8]);
    let k = rand(&mut r, &[1, 2, 0, 8]);
    let out = sdpa(&q, &k, &k, &SdpaOptions::new())?;
    assert_eq!(out.dims(), &[1, 2, 3, 8]);
    assert_eq!(out.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn flash_attn_matches_candle_in_blhd_layout() -> Result<()> {
    let mut r = rng(9);
    for &(b, hq, hkv, lq, lk, d, _) in SHAPES {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let q = rand(&mut r, &[b, lq, hq, d]).to_dtype(dt)?;
            let k = rand(&mut r, &[b, lk, hkv, d]).to_dtype(dt)?;
            let v = rand(&mut r, &[b, lk, hkv, d]).to_dtype(dt)?;
            for causal in [false, true] {
                let scale = 0.8 / (d as f32).sqrt();
                let got = flash_attn(&q, &k, &v, scale, causal)?;
                assert_eq!(got.dims(), &[b, lq, hq, d]);
                assert_eq!(got.dtype(), dt);
                assert!(got.is_contiguous());
                let t = |x: &Tensor| f32s(&x.transpose(1, 2).unwrap());
                let want = attention_matmul_softmax(&t(&q), &t(&k), &t(&v), None, scale, causal)?
                    .transpose(1, 2)?;
                let label = format!(
                    "flash_attn {dt:?} B{b} Hq{hq} Hkv{hkv} Lq{lq} Lk{lk} D{d} causal={causal}"
                );
                assert_close(&label, &got, &want, tol(dt));
            }
        }
    }
    Ok(())
}

#[test]
fn flash_attn_variants_agree_with_sdpa_options() -> Result<()> {
    let mut r = rng(10);
    let (b, hq, hkv, lq, lk, d) = (2, 4, 2, 9, 12, 16);
    // [B, L, H, D]: qkv's second and third dims are the lengths here.
    let (q, k, v) = qkv(&mut r, [b, lq, lk, hq, hkv, d]);
    let t = |x: &Tensor| x.transpose(1, 2).unwrap();
    // (None, Some(0)) is causal.
    assert_close(
        "windowed (None, 0) = causal",
        &flash_attn_windowed(&q, &k, &v, 0.3, None, Some(0))?,
        &flash_attn(&q, &k, &v, 0.3, true)?,
        0.0,
    );
    let slopes = Tensor::new(&[0.5f32, 0.25, 0.125, 0.0625], &Device::Cpu)?;
    let want = sdpa(
        &t(&q),
        &t(&k),
        &t(&v),
        &SdpaOptions::new()
            .with_scale(0.3)
            .with_causal(true)
            .with_alibi_slopes(Some(vec![0.5, 0.25, 0.125, 0.0625])),
    )?;
    assert_close(
        "alibi",
        &flash_attn_alibi(&q, &k, &v, &slopes, 0.3, true)?,
        &t(&want),
        0.0,
    );
    let want = sdpa(
        &t(&q),
        &t(&k),
        &t(&v),
        &SdpaOptions::new()
            .with_scale(0.3)
            .with_window(Some(2), Some(1))
            .with_softcap(2.0),
    )?;
    let got = flash_attn_alibi_windowed_softcap(&q, &k, &v, None, 0.3, Some(2), Some(1), 2.0)?;
    assert_close("windowed softcap", &got, &t(&want), 0.0);
    Ok(())
}

/// Packed sequences `lens` of `(Lq, Lk)` into `[T, H, D]` tensors and `u32` offsets.
fn packed(
    r: &mut StdRng,
    lens: &[(usize, usize)],
    hq: usize,
    hkv: usize,
    d: usize,
) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
    let tq: usize = lens.iter().map(|l| l.0).sum();
    let tk: usize = lens.iter().map(|l| l.1).sum();
    let cu = |f: fn(&(usize, usize)) -> usize| {
        let mut c = vec![0u32];
        for l in lens {
            c.push(c.last().unwrap() + f(l) as u32);
        }
        Tensor::new(c.as_slice(), &Device::Cpu).unwrap()
    };
    (
        rand(r, &[tq, hq, d]),
        rand(r, &[tk, hkv, d]),
        rand(r, &[tk, hkv, d]),
        cu(|l| l.0),
        cu(|l| l.1),
    )
}

#[test]
fn flash_attn_varlen_matches_candle_per_sequence() -> Result<()> {
    let mut r = rng(11);
    let lens = [(3usize, 5usize), (1, 1), (7, 9), (1, 13), (0, 4), (11, 11)];
    let (hq, hkv, d) = (4, 2, 24);
    let (q, k, v, cu_q, cu_k) = packed(&mut r, &lens, hq, hkv, d);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let (q, k, v) = (q.to_dtype(dt)?, k.to_dtype(dt)?, v.to_dtype(dt)?);
        for causal in [false, true] {
            let got = flash_attn_varlen(&q, &k, &v, &cu_q, &cu_k, 11, 13, 0.2, causal)?;
            assert_eq!(got.dims(), q.dims());
            assert_eq!(got.dtype(), dt);
            let (mut oq, mut ok) = (0, 0);
            for (s, &(lq, lk)) in lens.iter().enumerate() {
                // One sequence as [1, H, L, D].
                let one = |x: &Tensor, o: usize, l: usize| {
                    f32s(
                        &x.narrow(0, o, l)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap(),
                    )
                };
                if lq > 0 {
                    let want = attention_matmul_softmax(
                        &one(&q, oq, lq),
                        &one(&k, ok, lk),
                        &one(&v, ok, lk),
                        None,
                        0.2,
                        causal,
                    )?
                    .transpose(1, 2)?
                    .squeeze(0)?;
                    let label = format!("varlen {dt:?} seq {s} (Lq {lq}, Lk {lk}) causal={causal}");
                    assert_close(&label, &got.narrow(0, oq, lq)?, &want, tol(dt));
                }
                oq += lq;
                ok += lk;
            }
        }
    }
    Ok(())
}

#[test]
fn flash_attn_varlen_variants_match_dense_per_sequence() -> Result<()> {
    let mut r = rng(12);
    let lens = [(4usize, 6usize), (2, 2), (5, 8)];
    let (hq, hkv, d) = (2, 1, 8);
    let (q, k, v, cu_q, cu_k) = packed(&mut r, &lens, hq, hkv, d);
    let slopes = Tensor::new(&[0.3f32, 0.7], &Device::Cpu)?;
    let alibi = flash_attn_varlen_alibi(&q, &k, &v, &slopes, &cu_q, &cu_k, 5, 8, 0.4, true)?;
    let windowed =
        flash_attn_varlen_windowed(&q, &k, &v, &cu_q, &cu_k, 5, 8, 0.4, Some(2), Some(0))?;
    let (mut oq, mut ok) = (0, 0);
    for &(lq, lk) in &lens {
        let one = |x: &Tensor, o: usize, l: usize| x.narrow(0, o, l).unwrap().unsqueeze(0).unwrap();
        let (q1, k1, v1) = (one(&q, oq, lq), one(&k, ok, lk), one(&v, ok, lk));
        let want = flash_attn_alibi(&q1, &k1, &v1, &slopes, 0.4, true)?.squeeze(0)?;
        assert_close("varlen alibi", &alibi.narrow(0, oq, lq)?, &want, 1e-6);
        let want = flash_attn_windowed(&q1, &k1, &v1, 0.4, Some(2), Some(0))?.squeeze(0)?;
        assert_close("varlen windowed", &windowed.narrow(0, oq, lq)?, &want, 1e-6);
        oq += lq;
        ok += lk;
    }
    Ok(())
}

/// The error text of `r`, which must be an error.
fn err_text(r: Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

fn assert_err(r: Result<Tensor>, needles: &[&str]) {
    let text = err_text(r);
    for n in needles {
        assert!(text.contains(n), "error {text:?} does not mention {n:?}");
    }
}

#[test]
fn bad_input_gives_candle_errors_that_say_what_is_wrong() -> Result<()> {
    let mut r = rng(13);
    let q = rand(&mut r, &[2, 4, 5, 8]);
    let k = rand(&mut r, &[2, 2, 6, 8]);
    let o = SdpaOptions::new();
    // Rank.
    assert_err(
        sdpa(&q.i(0)?, &k, &k, &o),
        &["fastattn_candle::sdpa", "q", "rank 4"],
    );
    assert_err(sdpa(&q, &k, &k.unsqueeze(0)?, &o), &["v", "rank"]);
    // Heads, D, batch, K against V.
    let k3 = rand(&mut r, &[2, 3, 6, 8]);
    assert_err(sdpa(&q, &k3, &k3, &o), &["4 heads", "multiple", "3 heads"]);
    assert_err(
        sdpa(&q, &rand(&mut r, &[2, 2, 6, 7]), &k, &o),
        &["head dims differ", "D = 8", "D = 7"],
    );
    assert_err(
        sdpa(&q, &rand(&mut r, &[3, 2, 6, 8]), &k, &o),
        &["batch sizes differ"],
    );
    assert_err(
        sdpa(&q, &k, &rand(&mut r, &[2, 2, 7, 8]), &o),
        &["v has 2 heads of 7"],
    );
    // Integer tensors.
    assert_err(
        sdpa(&q.to_dtype(DType::U32)?, &k, &k, &o),
        &["q has dtype U32", "f32, f16 or bf16"],
    );
    assert_err(
        sdpa(&q, &k.to_dtype(DType::I64)?, &k, &o),
        &["k has dtype I64"],
    );
    assert_err(
        sdpa(&q, &k, &k.to_dtype(DType::U8)?, &o),
        &["v has dtype U8"],
    );
    assert_err(
        sdpa(&q.to_dtype(DType::F64)?, &k, &k, &o),
        &["q has dtype F64"],
    );
    // Masks.
    let m = rand(&mut r, &[5, 7]);
    assert_err(
        sdpa(
            &q,
            &k,
            &k,
            &SdpaOptions::new().with_mask(Mask::Additive(m.clone())),
        ),
        &["mask", "not broadcastable", "[2, 4, 5, 6]"],
    );
    let m = rand(&mut r, &[5, 6]);
    assert_err(
        sdpa(&q, &k, &k, &SdpaOptions::new().with_mask(Mask::Block(m))),
        &["boolean mask must be a u8 tensor"],
    );
    let m = Tensor::zeros((5, 6), DType::U8, &Device::Cpu)?;
    assert_err(
        sdpa(&q, &k, &k, &SdpaOptions::new().with_mask(Mask::Additive(m))),
        &["additive mask must be a float tensor"],
    );
    assert_err(
        sdpa(
            &q,
            &k,
            &k,
            &SdpaOptions::new().with_mask(Mask::Allow(Tensor::zeros(6, DType::U8, &Device::Cpu)?)),
        ),
        &["rank 2 to 4"],
    );
    // Options fastattn refuses keep its message.
    assert_err(
        sdpa(
            &q,
            &k,
            &k,
            &SdpaOptions::new().with_alibi_slopes(Some(vec![1.0; 3])),
        ),
        &[
            "fastattn_candle::sdpa",
            "alibi_slopes has 3 values, Hq is 4",
        ],
    );
    assert_err(
        sdpa(&q, &k, &k, &SdpaOptions::new().with_softcap(-1.0)),
        &["softcap"],
    );
    assert_err(
        sdpa(
            &q,
            &k,
            &k,
            &SdpaOptions::new().with_kv_lengths(Some(vec![3, 9])),
        ),
        &["kv_lengths value 9 exceeds Lk = 6"],
    );
    // flash_attn: [B, L, H, D] in the messages' terms.
    let qf = rand(&mut r, &[2, 5, 4, 8]);
    let kf = rand(&mut r, &[2, 6, 3, 8]);
    assert_err(
        flash_attn(&qf, &kf, &kf, 1.0, false),
        &["fastattn_candle::flash_attn", "4 heads", "3 heads"],
    );
    assert_err(
        flash_attn(&qf.i(0)?, &kf, &kf, 1.0, false),
        &["rank 4 [B, L, H, D]"],
    );
    assert_err(
        flash_attn_alibi(
            &qf,
            &qf,
            &qf,
            &Tensor::new(&[1f32, 2.0], &Device::Cpu)?,
            1.0,
            false,
        ),
        &["alibi_slopes has shape [2], expected [4]"],
    );
    // flash_attn_varlen: rank, offsets.
    let (pq, pk, pv, cu_q, cu_k) = packed(&mut r, &[(2, 3), (4, 4)], 2, 1, 8);
    assert_err(
        flash_attn_varlen(&qf, &pk, &pv, &cu_q, &cu_k, 4, 4, 1.0, false),
        &["rank 3 [T, H, D]"],
    );
    assert_err(
        flash_attn_varlen(&pq, &pk, &pv, &cu_q, &cu_k, 3, 4, 1.0, false),
        &["sequence 1 has 4 query tokens, more than the max_seqlen of 3"],
    );
    let three = Tensor::new(&[0u32, 2, 6, 6], &Device::Cpu)?;
    assert_err(
        flash_attn_varlen(&pq, &pk, &pv, &three, &cu_k, 4, 4, 1.0, false),
        &["seqlens_q has 4 values but seqlens_k has 3"],
    );
    let float_cu = Tensor::new(&[0f32, 2.0, 6.0], &Device::Cpu)?;
    assert_err(
        flash_attn_varlen(&pq, &pk, &pv, &float_cu, &cu_k, 4, 4, 1.0, false),
        &["seqlens_q has dtype F32, expected u32"],
    );
    Ok(())
}

/// Non-CPU tensors cannot be made on this machine (candle is built without cuda/metal);
/// the device check runs first in every entry point (`op::check_input`), and candle's
/// `Device::Cpu` is the only device a tensor here can have. This checks the op refuses
/// to be differentiated instead of silently dropping gradients.
#[test]
fn backward_through_the_op_is_refused() -> Result<()> {
    let mut r = rng(14);
    let q = Var::from_tensor(&rand(&mut r, &[1, 2, 3, 4]))?;
    let out = sdpa(
        q.as_tensor(),
        q.as_tensor(),
        q.as_tensor(),
        &SdpaOptions::new(),
    )?;
    let e = out.sum_all()?.backward().expect_err("backward must fail");
    assert!(e.to_string().contains("fastattn_candle::sdpa"), "{e}");
    Ok(())
}

#[test]
fn varlen_offsets_fastattn_refuses_are_errors_not_panics() -> Result<()> {
    let mut r = rng(15);
    let (q, k, v, _, cu_k) = packed(&mut r, &[(2, 3), (4, 4)], 2, 1, 8);
    let dev = &Device::Cpu;
    let cases: Vec<(&str, Tensor, &str)> = vec![
        (
            "empty",
            Tensor::new(&[] as &[u32], dev)?,
            "seqlens_q has 0 values",
        ),
        (
            "not from 0",
            Tensor::new(&[1u32, 2, 6], dev)?,
            "starts at 1, expected 0",
        ),
        (
            "decreasing",
            Tensor::new(&[0u32, 4, 2], dev)?,
            "decreases at 1: 4 then 2",
        ),
        (
            "short of T",
            Tensor::new(&[0u32, 2, 5], dev)?,
            "ends at 5, the packed length is 6",
        ),
        (
            "negative",
            Tensor::new(&[0i64, -2, 6], dev)?,
            "decreases at 0: 0 then -2",
        ),
    ];
    for (name, cu_q, needle) in cases {
        let text = err_text(flash_attn_varlen(
            &q, &k, &v, &cu_q, &cu_k, 9, 9, 1.0, false,
        ));
        assert!(
            text.contains("fastattn_candle::flash_attn_varlen") && text.contains(needle),
            "{name}: {text:?} does not mention {needle:?}"
        );
    }
    Ok(())
}
