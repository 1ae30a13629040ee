//! 16-bit Q, K, V and outputs: every type combination × variant × path × mask kind × GQA ×
//! decode split. 16-bit → f32 is exact and the kernels compute in f32, so a call on
//! 16-bit inputs must give bit for bit what the f32 call gives on their widened values,
//! a 16-bit output must be that f32 result rounded once (to nearest, ties to even), and
//! both must match the f64 reference computed on the same 16-bit values.

use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    sdpa_into, AttnPath, Mask, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::{bf16, f16, DType, Element, Isa, Parallelism};
use rand::rngs::StdRng;
use rand::SeedableRng;
use testutil::{numel, rand_t, widen, MaskKind, SdpaCase};

/// A case of these sizes (`dv = d`) seeded from its sizes.
fn case(b: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize) -> SdpaCase {
    SdpaCase {
        seed: (b * 7 + hq * 11 + lq * 13 + lk * 17 + d) as u64,
        ..SdpaCase::new(b, hq, hkv, lq, lk, d, d)
    }
}

/// The window of the window cases.
const WINDOW: Option<(Option<usize>, Option<usize>)> = Some((Some(37), Some(5)));

fn view<T: Element>(blhd: bool, x: &[T], dims: [usize; 4]) -> TensorRef<'_, T> {
    if blhd {
        TensorRef::from_blhd(x, dims).unwrap()
    } else {
        TensorRef::contiguous(x, dims).unwrap()
    }
}

/// Runs `c` with Q/K/V of types Q, K, V and output O; compares as described above.
fn check<Q: Element, K: Element, V: Element, O: Element>(
    c: SdpaCase,
    isa: Isa,
    path: AttnPath,
    threads: &[usize],
) {
    let seed = c.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let (qd, kd, vd, od) = c.dims();
    let q: Vec<Q> = rand_t(&mut rng, numel(qd));
    let k: Vec<K> = rand_t(&mut rng, numel(kd));
    let v: Vec<V> = rand_t(&mut rng, numel(vd));
    let (qw, kw, vw) = (widen(&q), widen(&k), widen(&v));
    let bool_mask: Vec<bool> = (0..c.lq * c.lk).map(|i| i % 3 != 1).collect();
    let add_mask: Vec<f32> = (0..c.lq * c.lk)
        .map(|i| {
            if i % 5 == 2 {
                f32::NEG_INFINITY
            } else {
                (i % 7) as f32 * 0.1
            }
        })
        .collect();
    let mut opts = SdpaOptions::new().with_isa(isa).with_path(path);
    match c.mask {
        MaskKind::None => {}
        MaskKind::Causal => opts = opts.with_causal(true),
        MaskKind::Bool => {
            opts = opts.with_mask(Mask::Bool(
                TensorRef::contiguous(&bool_mask, [1, 1, c.lq, c.lk]).unwrap(),
            ))
        }
        MaskKind::Additive => {
            opts = opts.with_mask(Mask::Additive(
                TensorRef::contiguous(&add_mask, [1, 1, c.lq, c.lk]).unwrap(),
            ))
        }
        MaskKind::BoolPerHead => unreachable!("no per-head masks here"),
    }
    if let Some((left, right)) = c.window {
        opts = opts.with_window(left, right);
    }
    let what = format!(
        "{c:?} {isa} {path:?} Q {} K {} V {} O {} seed {seed}",
        Q::DTYPE,
        K::DTYPE,
        V::DTYPE,
        O::DTYPE
    );
    // The f32 call on the widened values.
    let mut want = vec![0.0f32; numel(od)];
    let mut want_lse = vec![0.0f32; c.b * c.hq * c.lq];
    sdpa_into(
        view(c.blhd, &qw, qd),
        view(c.blhd, &kw, kd),
        view(c.blhd, &vw, kd),
        TensorMut::contiguous(&mut want, od).unwrap(),
        &opts,
        SdpaOutputs::default().with_lse(Some(&mut want_lse)),
    )
    .unwrap();
    let mut first: Option<Vec<O>> = None;
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        let mut out = vec![O::default(); numel(od)];
        let mut lse = vec![0.0f32; c.b * c.hq * c.lq];
        pool.install(|| {
            sdpa_into(
                view(c.blhd, &q, qd),
                view(c.blhd, &k, kd),
                view(c.blhd, &v, kd),
                TensorMut::contiguous(&mut out, od).unwrap(),
                &opts.clone().with_parallelism(Parallelism::Rayon),
                SdpaOutputs::default().with_lse(Some(&mut lse)),
            )
        })
        .unwrap();
        for (i, (o, w)) in out.iter().zip(&want).enumerate() {
            let r = O::from_f32(*w);
            assert!(
                o.to_f32().to_bits() == r.to_f32().to_bits(),
                "{what} threads {t}: element {i} is {:?}, the rounded f32 result is {r:?}",
                o
            );
        }
        assert_eq!(
            lse.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want_lse.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{what} threads {t}: LSE"
        );
        match &first {
            None => first = Some(out),
            Some(f) => assert!(f == &out, "{what}: {t} threads differ from {}", threads[0]),
        }
    }
    // Against the f64 reference on the same 16-bit values.
    let r = sdpa_ref(
        view(c.blhd, &q, qd),
        view(c.blhd, &k, kd),
        view(c.blhd, &v, kd),
        &opts,
    )
    .unwrap();
    let out = first.unwrap();
    // f32 path tolerance, plus half an ulp of the output type (|x| ≤ 1 here).
    let ulp = match O::DTYPE {
        DType::F16 => 1.0 / 1024.0,
        DType::BF16 => 1.0 / 128.0,
        DType::F32 => 0.0,
    };
    for (i, (o, w)) in out.iter().zip(&r.out).enumerate() {
        let tol = 2e-5 + ulp * w.abs().max(0.5);
        assert!(
            (o.to_f32() - w).abs() <= tol,
            "{what}: element {i} {o:?} vs reference {w}"
        );
    }
    // Fully masked rows give exactly 0.
    if let MaskKind::Additive | MaskKind::Bool = c.mask {
        for (o, w) in out.iter().zip(&r.out) {
            if *w == 0.0 {
                assert_eq!(o.to_f32(), 0.0, "{what}: a fully masked row");
            }
        }
    }
}

fn cases() -> Vec<SdpaCase> {
    let base = case;
    let mut v = vec![
        base(1, 2, 2, 13, 29, 16),  // prefill, odd sizes
        base(2, 4, 2, 1, 37, 8),    // decode, GQA (direct kernels)
        base(1, 4, 1, 2, 4500, 16), // decode split (flash-decoding), MQA
        SdpaCase {
            blhd: true,
            ..base(1, 3, 3, 31, 31, 33)
        }, // [B, L, H, D] strides, odd D
        base(1, 1, 1, 100, 600, 24), // more than one key block
    ];
    for (mask, window) in [
        (MaskKind::Causal, None),
        (MaskKind::Bool, None),
        (MaskKind::Additive, None),
        (MaskKind::None, WINDOW),
    ] {
        v.push(SdpaCase {
            mask,
            window,
            ..base(1, 2, 1, 19, 41, 8)
        });
        v.push(SdpaCase {
            mask,
            window,
            ..base(1, 2, 2, 1, 50, 8)
        });
    }
    v
}

fn all_paths<Q: Element, K: Element, V: Element, O: Element>() {
    for isa in Isa::available() {
        for c in cases() {
            for path in [AttnPath::Flash, AttnPath::Materialized] {
                let threads: &[usize] = if c.lk > 4000 { &[1, 2, 3] } else { &[1, 2] };
                check::<Q, K, V, O>(c, isa, path, threads);
            }
        }
    }
}

#[test]
fn bf16_qkv_with_f32_output() {
    all_paths::<bf16, bf16, bf16, f32>();
}

#[test]
fn f16_qkv_with_f16_output() {
    all_paths::<f16, f16, f16, f16>();
}

#[test]
fn bf16_qkv_with_bf16_output() {
    all_paths::<bf16, bf16, bf16, bf16>();
}

#[test]
fn f32_query_with_16_bit_keys_and_values() {
    all_paths::<f32, f16, f16, f32>();
    all_paths::<f32, bf16, bf16, f32>();
}

#[test]
fn mixed_types() {
    all_paths::<f16, bf16, f32, f32>();
    all_paths::<bf16, f32, f16, bf16>();
    all_paths::<f32, f32, f32, f16>();
}

/// Every one of the 81 combinations on one small prefill and one decode case, flash path.
#[test]
fn every_type_combination_runs_on_the_fused_path() {
    fn o<Q: Element, K: Element, V: Element>() {
        let isa = Isa::best();
        for c in [
            SdpaCase {
                mask: MaskKind::Causal,
                ..case(1, 2, 1, 9, 21, 8)
            },
            SdpaCase {
                blhd: true,
                ..case(1, 2, 2, 1, 21, 8)
            },
        ] {
            check::<Q, K, V, f32>(c, isa, AttnPath::Flash, &[1]);
            check::<Q, K, V, f16>(c, isa, AttnPath::Flash, &[1]);
            check::<Q, K, V, bf16>(c, isa, AttnPath::Flash, &[1]);
        }
    }
    fn v<Q: Element, K: Element>() {
        o::<Q, K, f32>();
        o::<Q, K, f16>();
        o::<Q, K, bf16>();
    }
    fn k<Q: Element>() {
        v::<Q, f32>();
        v::<Q, f16>();
        v::<Q, bf16>();
    }
    k::<f32>();
    k::<f16>();
    k::<bf16>();
}

/// A NaN in a 16-bit value row that no query can see changes nothing (as for f32).
#[test]
fn nan_in_an_invisible_16_bit_value_row_changes_nothing() {
    let (lq, lk, d) = (4, 9, 8);
    let mut rng = StdRng::seed_from_u64(5);
    let q: Vec<bf16> = rand_t(&mut rng, lq * d);
    let k: Vec<bf16> = rand_t(&mut rng, lk * d);
    let mut v: Vec<bf16> = rand_t(&mut rng, lk * d);
    let dims = |l| [1, 1, l, d];
    let run = |v: &[bf16], path| {
        let mut out = vec![0.0f32; lq * d];
        sdpa_into(
            TensorRef::contiguous(&q, dims(lq)).unwrap(),
            TensorRef::contiguous(&k, dims(lk)).unwrap(),
            TensorRef::contiguous(v, dims(lk)).unwrap(),
            TensorMut::contiguous(&mut out, dims(lq)).unwrap(),
            &SdpaOptions::new()
                .with_kv_lengths(Some(&[7]))
                .with_path(path),
            SdpaOutputs::default(),
        )
        .unwrap();
        out
    };
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        let clean = run(&v, path);
        v[8 * d + 3] = bf16::NAN;
        assert_eq!(run(&v, path), clean, "{path:?}");
        v[8 * d + 3] = bf16::ZERO;
    }
}
