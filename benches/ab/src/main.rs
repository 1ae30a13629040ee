//! Old against new fastattn, alternating in one process (README.md): per case, rounds
//! of old/new in flipping order, each sample ~40 ms; ratio new/old per round, median, min–max.

use std::time::{Duration, Instant};

type Job = Box<dyn FnMut()>;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A GEMM job: `C = A·B`, square `n`, row-major, with parallelism `$par`.
macro_rules! gemm_job {
    ($fa:ident, $par:expr, $n:expr) => {{
        use $fa::kernels::{MatMut, MatRef};
        let (par, n) = ($par, $n);
        let a = crate::rand_vec(n * n, 1);
        let b = crate::rand_vec(n * n, 2);
        let mut c = vec![0.0f32; n * n];
        Box::new(move || {
            $fa::kernels::gemm_with(
                $fa::kernels::current_isa().unwrap(),
                par,
                1.0,
                MatRef::row_major(&a, n, n).unwrap(),
                MatRef::row_major(&b, n, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, n, n).unwrap(),
            )
            .unwrap();
        }) as crate::Job
    }};
}

/// An `sdpa_into` job on Q `[1, hq, lq, d]`, K/V `[1, hkv, lk, d]` (bf16 K/V when `$half`).
macro_rules! sdpa_job {
    ($fa:ident, $par:expr, $hq:expr, $hkv:expr, $lq:expr, $lk:expr, $d:expr, $causal:expr, $half:expr) => {{
        use $fa::{sdpa_into, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
        let (par, hq, hkv, lq, lk, d, causal, half16) =
            ($par, $hq, $hkv, $lq, $lk, $d, $causal, $half);
        let q = crate::rand_vec(hq * lq * d, 5);
        let k = crate::rand_vec(hkv * lk * d, 6);
        let vv = crate::rand_vec(hkv * lk * d, 7);
        let kb: Vec<half::bf16> = k.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let vb: Vec<half::bf16> = vv.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let mut o = vec![0.0f32; hq * lq * d];
        Box::new(move || {
            let opts = SdpaOptions::new().with_causal(causal).with_parallelism(par);
            let qt = TensorRef::contiguous(&q, [1, hq, lq, d]).unwrap();
            let ot = TensorMut::contiguous(&mut o, [1, hq, lq, d]).unwrap();
            if half16 {
                let kt = TensorRef::contiguous(&kb, [1, hkv, lk, d]).unwrap();
                let vt = TensorRef::contiguous(&vb, [1, hkv, lk, d]).unwrap();
                sdpa_into(qt, kt, vt, ot, &opts, SdpaOutputs::default()).unwrap();
            } else {
                let kt = TensorRef::contiguous(&k, [1, hkv, lk, d]).unwrap();
                let vt = TensorRef::contiguous(&vv, [1, hkv, lk, d]).unwrap();
                sdpa_into(qt, kt, vt, ot, &opts, SdpaOutputs::default()).unwrap();
            }
        }) as crate::Job
    }};
}

macro_rules! cases {
    ($fa:ident, $threads:expr) => {{
        use $fa::kernels::Parallelism;
        use $fa::{sdpa_into, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
        let par = if $threads == 1 {
            Parallelism::Sequential
        } else {
            Parallelism::Rayon
        };
        let mut v: Vec<(String, f64, Job)> = Vec::new();
        for n in [64usize, 256, 1024] {
            v.push((
                format!("gemm {n}"),
                2.0 * (n * n * n) as f64,
                gemm_job!($fa, par, n),
            ));
        }
        {
            let (rows, len) = (256usize, 1024usize);
            let x = rand_vec(rows * len, 3);
            let mut o = vec![0.0f32; rows * len];
            v.push((
                "softmax 256x1024".into(),
                (rows * len) as f64,
                Box::new(move || $fa::kernels::softmax::softmax(&x, &mut o, len).unwrap()),
            ));
        }
        {
            let n = 1 << 16;
            let x = rand_vec(n, 4);
            let mut o = vec![0.0f32; n];
            v.push((
                "exp 65536".into(),
                n as f64,
                Box::new(move || $fa::kernels::exp::exp_slice(&x, &mut o).unwrap()),
            ));
        }
        // (label, hq, hkv, lq, lk, d, causal, bf16)
        let attn: &[(&str, usize, usize, usize, usize, usize, bool, bool)] = &[
            ("sdpa L1024 H8 D64", 8, 8, 1024, 1024, 64, false, false),
            (
                "sdpa L2048 H8 D64 causal",
                8,
                8,
                2048,
                2048,
                64,
                true,
                false,
            ),
            (
                "sdpa L1024 H8 D128 bf16",
                8,
                8,
                1024,
                1024,
                128,
                false,
                true,
            ),
            ("decode 32/8 Lk4096 D128", 32, 8, 1, 4096, 128, false, false),
            (
                "decode 32/8 Lk4096 D128 bf16",
                32,
                8,
                1,
                4096,
                128,
                false,
                true,
            ),
            // K/V past the last-level cache (256 MiB in f32): the memory-bound decode.
            (
                "decode 32/8 Lk32768 D128",
                32,
                8,
                1,
                32768,
                128,
                false,
                false,
            ),
            (
                "decode 32/8 Lk32768 D128 bf16",
                32,
                8,
                1,
                32768,
                128,
                false,
                true,
            ),
        ];
        for &(label, hq, hkv, lq, lk, d, causal, half16) in attn {
            let mut flops = 4.0 * (hq * lq * lk * d) as f64;
            if causal {
                flops /= 2.0;
            }
            let job = sdpa_job!($fa, par, hq, hkv, lq, lk, d, causal, half16);
            v.push((label.to_string(), flops, job));
        }
        {
            let (h, l, d) = (4usize, 512usize, 64usize);
            let dims = [1, h, l, d];
            let q = rand_vec(h * l * d, 8);
            let k = rand_vec(h * l * d, 9);
            let vv = rand_vec(h * l * d, 10);
            let g = rand_vec(h * l * d, 11);
            let mut o = vec![0.0f32; h * l * d];
            let mut lse = vec![0.0f32; h * l];
            let opts = SdpaOptions::new().with_causal(true).with_parallelism(par);
            sdpa_into(
                TensorRef::contiguous(&q, dims).unwrap(),
                TensorRef::contiguous(&k, dims).unwrap(),
                TensorRef::contiguous(&vv, dims).unwrap(),
                TensorMut::contiguous(&mut o, dims).unwrap(),
                &opts,
                SdpaOutputs::default().with_lse(Some(&mut lse)),
            )
            .unwrap();
            v.push((
                "backward L512 H4 D64 causal".into(),
                2.5 * 4.0 * (h * l * l * d) as f64 / 2.0,
                Box::new(move || {
                    let opts = SdpaOptions::new().with_causal(true).with_parallelism(par);
                    $fa::sdpa_backward(
                        TensorRef::contiguous(&q, dims).unwrap(),
                        TensorRef::contiguous(&k, dims).unwrap(),
                        TensorRef::contiguous(&vv, dims).unwrap(),
                        TensorRef::contiguous(&o, dims).unwrap(),
                        TensorRef::contiguous(&g, dims).unwrap(),
                        &lse,
                        &opts,
                    )
                    .unwrap();
                }),
            ));
        }
        v
    }};
}

// After the job macros, which it uses.
mod latency;

/// Calls `f` `reps` times; seconds per call.
fn time(f: &mut Job, reps: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("latency") {
        let rounds = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(15);
        latency::run(rounds, args.get(3).map(String::as_str).unwrap_or(""));
        return;
    }
    let threads: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let rounds: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(15);
    let filter = args.get(3).cloned().unwrap_or_default();
    let sample = Duration::from_millis(40);
    let old = cases!(fa_old, threads);
    let new = cases!(fa_new, threads);
    println!(
        "threads {threads}, rounds {rounds}, isa new {}",
        fa_new::kernels::current_isa().unwrap()
    );
    println!(
        "| case | old GFLOP/s (or Gelem/s) | new | new/old time, median | min–max |\n|---|---|---|---|---|"
    );
    for ((name, flops, mut fo), (_, _, mut fnw)) in old.into_iter().zip(new) {
        if !name.contains(&filter) {
            continue;
        }
        // Warm up and size the sample.
        let t1 = time(&mut fo, 1).max(time(&mut fnw, 1));
        let reps = ((sample.as_secs_f64() / t1).ceil() as usize).max(1);
        time(&mut fo, reps);
        time(&mut fnw, reps);
        let (mut to, mut tn, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let (a, b) = if i % 2 == 0 {
                let a = time(&mut fo, reps);
                (a, time(&mut fnw, reps))
            } else {
                let b = time(&mut fnw, reps);
                (time(&mut fo, reps), b)
            };
            to.push(a);
            tn.push(b);
            r.push(b / a);
        }
        let (mo, mn) = (median(&mut to), median(&mut tn));
        let mr = median(&mut r);
        println!(
            "| {name} | {:.1} | {:.1} | {:.3} | {:.3}–{:.3} |",
            flops / mo / 1e9,
            flops / mn / 1e9,
            mr,
            r[0],
            r[r.len() - 1]
        );
    }
}
