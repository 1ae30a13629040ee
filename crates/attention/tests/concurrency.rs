//! Concurrency: many OS threads calling GEMM, softmax, attention and the MHA layer at
//! once; calls from inside a rayon pool, from nested pools (pool A's workers installing
//! pool B) and from per-thread pools. Every result must equal, bit for bit, the result of
//! the same call made alone on one thread (the kernels split only independent work, so
//! the thread count never changes a value). A watchdog aborts the test binary when a test
//! runs past its time limit, so a deadlock fails CI instead of hanging it.

use fastattn_attention::{
    sdpa_into, AttnPath, MhaConfig, MultiHeadAttention, SdpaOptions, SdpaOutputs, TensorMut,
    TensorRef,
};
use kernels::softmax::{softmax_with, RowOptions};
use kernels::{gemm_with, Isa, MatMut, MatRef, Parallelism};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use std::sync::mpsc;
use std::time::Duration;
use testutil::rand_vec;

/// Aborts the process if not dropped within `secs` seconds.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn new(name: &'static str, secs: u64) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!("{name}: still running after {secs} s: deadlock? aborting");
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender wakes the watchdog with `Disconnected`: it exits quietly.
        self.0.take();
    }
}

/// One deterministic unit of work; `run` gives its full output.
#[derive(Clone, Debug)]
enum Job {
    /// `m × k · k × n` (large ones cross the GEMM's parallel threshold).
    Gemm {
        m: usize,
        k: usize,
        n: usize,
        isa: Isa,
        seed: u64,
    },
    /// Softmax of `rows × len` (large ones are split across the pool).
    Softmax { rows: usize, len: usize, seed: u64 },
    /// Attention `[b, hq, lq, d]` over `[b, hkv, lk, d]`.
    Sdpa {
        dims: [usize; 6],
        causal: bool,
        path: AttnPath,
        isa: Isa,
        seed: u64,
    },
    /// The MHA layer (shared by all threads) on `[b, l, 32]`.
    Mha { b: usize, l: usize, seed: u64 },
}

fn jobs() -> Vec<Job> {
    let best = Isa::best();
    // The MHA layer's attention uses the current ISA (which CI forces per run); the other
    // attention jobs mix it with `best` and `Scalar` on the same threads.
    let attn = kernels::current_isa().unwrap();
    let mut v = vec![
        Job::Gemm {
            m: 7,
            k: 13,
            n: 5,
            isa: best,
            seed: 1,
        },
        Job::Gemm {
            m: 160,
            k: 96,
            n: 150,
            isa: best,
            seed: 2,
        },
        Job::Gemm {
            m: 64,
            k: 257,
            n: 31,
            isa: Isa::Scalar,
            seed: 3,
        },
        Job::Softmax {
            rows: 300,
            len: 257,
            seed: 4,
        },
        Job::Softmax {
            rows: 3,
            len: 31,
            seed: 5,
        },
        // [b, hq, hkv, lq, lk, d]
        Job::Sdpa {
            dims: [1, 4, 2, 96, 160, 32],
            causal: true,
            path: AttnPath::Flash,
            isa: attn,
            seed: 6,
        },
        Job::Sdpa {
            dims: [2, 4, 4, 33, 70, 16],
            causal: false,
            path: AttnPath::Materialized,
            isa: best,
            seed: 7,
        },
        // Decoding over more than two key chunks: the flash-decoding split.
        Job::Sdpa {
            dims: [1, 8, 2, 1, 4200, 16],
            causal: true,
            path: AttnPath::Auto,
            isa: attn,
            seed: 8,
        },
        Job::Sdpa {
            dims: [1, 2, 1, 20, 20, 8],
            causal: true,
            path: AttnPath::Flash,
            isa: Isa::Scalar,
            seed: 9,
        },
        Job::Mha {
            b: 2,
            l: 24,
            seed: 10,
        },
    ];
    if best != Isa::Portable {
        v.push(Job::Gemm {
            m: 50,
            k: 40,
            n: 70,
            isa: Isa::Portable,
            seed: 11,
        });
    }
    v
}

fn layer() -> MultiHeadAttention {
    MultiHeadAttention::random(MhaConfig::new(32, 4).with_kv_heads(2), true, 99).unwrap()
}

fn run(job: &Job, par: Parallelism, mha: &MultiHeadAttention) -> Vec<f32> {
    match *job {
        Job::Gemm { m, k, n, isa, seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let a = rand_vec(&mut rng, m * k);
            let b = rand_vec(&mut rng, k * n);
            let mut c = vec![0.0f32; m * n];
            gemm_with(
                isa,
                par,
                1.0,
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, m, n).unwrap(),
            )
            .unwrap();
            c
        }
        Job::Softmax { rows, len, seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let x: Vec<f32> = rand_vec(&mut rng, rows * len)
                .iter()
                .map(|v| v * 20.0)
                .collect();
            let mut y = vec![0.0f32; x.len()];
            softmax_with(Isa::best(), par, &x, &mut y, len, &RowOptions::new()).unwrap();
            y
        }
        Job::Sdpa {
            dims: [b, hq, hkv, lq, lk, d],
            causal,
            path,
            isa,
            seed,
        } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let q = rand_vec(&mut rng, b * hq * lq * d);
            let k = rand_vec(&mut rng, b * hkv * lk * d);
            let v = rand_vec(&mut rng, b * hkv * lk * d);
            let mut out = vec![0.0f32; b * hq * lq * d];
            let mut lse = vec![0.0f32; b * hq * lq];
            let opts = SdpaOptions::default()
                .with_causal(causal)
                .with_path(path)
                .with_isa(Some(isa))
                .with_parallelism(par);
            sdpa_into(
                TensorRef::contiguous(&q, [b, hq, lq, d]).unwrap(),
                TensorRef::contiguous(&k, [b, hkv, lk, d]).unwrap(),
                TensorRef::contiguous(&v, [b, hkv, lk, d]).unwrap(),
                TensorMut::contiguous(&mut out, [b, hq, lq, d]).unwrap(),
                &opts,
                SdpaOutputs::default()
                    .with_weights(None)
                    .with_lse(Some(&mut lse)),
            )
            .unwrap();
            out.extend(lse);
            out
        }
        Job::Mha { b, l, seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let x = rand_vec(&mut rng, b * l * 32);
            let opts = SdpaOptions::default()
                .with_causal(true)
                .with_parallelism(par);
            let mut y = mha.forward(&x, b, l, &opts).unwrap();
            // And the same sequence decoded token by token through a private cache.
            let mut cache = mha.new_cache(b, l).unwrap();
            for t in 0..l {
                let xt: Vec<f32> = (0..b)
                    .flat_map(|bb| x[(bb * l + t) * 32..(bb * l + t + 1) * 32].iter().copied())
                    .collect();
                y.extend(mha.forward_cached(&mut cache, &xt, b, 1, &opts).unwrap());
            }
            y
        }
    }
}

/// The reference results: every job alone, on this thread, sequential.
fn baseline(jobs: &[Job], mha: &MultiHeadAttention) -> Vec<Vec<f32>> {
    jobs.iter()
        .map(|j| run(j, Parallelism::Sequential, mha))
        .collect()
}

fn assert_same(what: &str, job: &Job, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: {job:?}");
    let diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    if let Some(i) = diff {
        panic!(
            "{what}: {job:?}: element {i} is {} concurrently, {} alone",
            got[i], want[i]
        );
    }
}

#[test]
fn many_os_threads_calling_at_once_get_the_sequential_results() {
    let _w = Watchdog::new("many_os_threads", 120);
    let jobs = jobs();
    let mha = layer();
    let want = baseline(&jobs, &mha);
    let (threads, iters) = (8, 20);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (jobs, want, mha) = (&jobs, &want, &mha);
            s.spawn(move || {
                for it in 0..iters {
                    let j = (t * 7 + it * 3) % jobs.len();
                    let par = if (t + it) % 3 == 0 {
                        Parallelism::Sequential
                    } else {
                        Parallelism::Rayon
                    };
                    let got = run(&jobs[j], par, mha);
                    assert_same(&format!("thread {t} iter {it}"), &jobs[j], &got, &want[j]);
                }
            });
        }
    });
}

#[test]
fn calls_from_inside_a_rayon_pool_and_from_nested_pools_get_the_sequential_results() {
    let _w = Watchdog::new("nested_pools", 120);
    let jobs = jobs();
    let mha = layer();
    let want = baseline(&jobs, &mha);
    let pool_a = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let pool_b = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let n = jobs.len() * 3;
    // Inside pool A, every task calls the kernels, which fork into pool A again.
    let inner: Vec<Vec<f32>> = pool_a.install(|| {
        (0..n)
            .into_par_iter()
            .map(|i| run(&jobs[i % jobs.len()], Parallelism::Rayon, &mha))
            .collect()
    });
    // Pool A's tasks install pool B for their calls (pool A's worker blocks while B runs).
    let nested: Vec<Vec<f32>> = pool_a.install(|| {
        (0..n)
            .into_par_iter()
            .map(|i| pool_b.install(|| run(&jobs[i % jobs.len()], Parallelism::Rayon, &mha)))
            .collect()
    });
    // And B inside A inside B, from the global pool.
    let deep: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            pool_b.install(|| {
                pool_a.install(|| {
                    rayon::join(
                        || run(&jobs[i % jobs.len()], Parallelism::Rayon, &mha),
                        || {
                            pool_b.install(|| {
                                run(&jobs[(i + 1) % jobs.len()], Parallelism::Rayon, &mha)
                            })
                        },
                    )
                    .0
                })
            })
        })
        .collect();
    for (what, results) in [("inner", &inner), ("nested", &nested), ("deep", &deep)] {
        for (i, got) in results.iter().enumerate() {
            let j = i % jobs.len();
            assert_same(what, &jobs[j], got, &want[j]);
        }
    }
}

#[test]
fn threads_with_pools_of_their_own_get_the_sequential_results() {
    let _w = Watchdog::new("own_pools", 120);
    let jobs = jobs();
    let mha = layer();
    let want = baseline(&jobs, &mha);
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (jobs, want, mha) = (&jobs, &want, &mha);
            s.spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1 + t)
                    .build()
                    .unwrap();
                for (j, job) in jobs.iter().enumerate() {
                    let got = pool.install(|| run(job, Parallelism::Rayon, mha));
                    assert_same(&format!("pool of {} threads", 1 + t), job, &got, &want[j]);
                }
            });
        }
    });
}

/// Was a bug until 2cc614e: the flash path reused the thread's cached K/V packs made for
/// another ISA, so a call's bits depended on what its thread ran before (found by the tests
/// above, whose jobs mix ISAs).
#[test]
fn a_call_does_not_depend_on_what_its_thread_ran_before() {
    let _w = Watchdog::new("thread_history", 60);
    let best = Isa::best();
    let other = Isa::available()
        .into_iter()
        .find(|&i| i != best)
        .expect("scalar and portable always run");
    let job = |isa| Job::Sdpa {
        dims: [1, 2, 1, 20, 20, 8],
        causal: true,
        path: AttnPath::Flash,
        isa,
        seed: 9,
    };
    let mha = layer();
    let fresh = std::thread::scope(|s| {
        s.spawn(|| run(&job(other), Parallelism::Sequential, &mha))
            .join()
            .unwrap()
    });
    let after = std::thread::scope(|s| {
        s.spawn(|| {
            run(&job(best), Parallelism::Sequential, &mha);
            run(&job(other), Parallelism::Sequential, &mha)
        })
        .join()
        .unwrap()
    });
    assert_same(
        &format!("{other} after {best} on one thread"),
        &job(other),
        &after,
        &fresh,
    );
}
