//! What a C ABI call costs over the Rust call it wraps, and whether `fa_set_num_threads`
//! adds a per-call thread hop: `cblas_sgemm` (n = 32, 64, 128) and `fa_sdpa` (L = 64,
//! H = 1, D = 64), each timed in rotation in one process as
//!
//! * `rust`: the Rust function called directly (`kernels::gemm`, `attention::sdpa_into`);
//! * `c`: the C entry point with no thread count set (rayon's global pool);
//! * `c+set`: the C entry point after `fa_set_num_threads(T)`, `T` the global pool's size;
//! * `install`: the Rust call handed to a dedicated pool of `T` threads
//!   (`ThreadPool::install`), which is what every C call did after `fa_set_num_threads`
//!   before calls stayed on the calling thread.
//!
//! Run it at one and at two threads (the global pool is sized once per process):
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p fastattn-capi --example call_overhead
//! RAYON_NUM_THREADS=2 cargo run --release -p fastattn-capi --example call_overhead
//! ```
//!
//! Each round times every implementation for about 2 ms (batches of back-to-back calls);
//! the ratios are per round (time / the `rust` time of the same round): median and
//! min–max over the rounds.

use attention::{SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
use fastattn_capi::{
    cblas_sgemm, fa_sdpa, fa_set_num_threads, fa_tensor, CblasNoTrans, CblasRowMajor,
};
use kernels::{MatMut, MatRef};
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 15;
const SAMPLE_S: f64 = 0.002;

/// Seconds per call of `f`, over a batch that lasts about `SAMPLE_S`.
fn sample(f: &mut dyn FnMut(), batch: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..batch {
        f();
    }
    t.elapsed().as_secs_f64() / batch as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times the implementations in rotation and prints one line per implementation.
/// A named implementation: whether it runs after `fa_set_num_threads`, and one call.
type Impl<'a> = (&'static str, bool, Box<dyn FnMut() + 'a>);

fn compare(case: &str, threads: i32, impls: &mut [Impl<'_>]) {
    // Warm up, and size each batch from the warm-up.
    let mut batches = Vec::new();
    for (_, set, f) in impls.iter_mut() {
        fa_set_num_threads(if *set { threads } else { 0 });
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed().as_secs_f64() < 0.05 {
            f();
            calls += 1;
        }
        let per = t.elapsed().as_secs_f64() / calls as f64;
        batches.push(((SAMPLE_S / per) as u64).max(1));
    }
    let mut times = vec![Vec::new(); impls.len()];
    for _ in 0..ROUNDS {
        for (i, (_, set, f)) in impls.iter_mut().enumerate() {
            fa_set_num_threads(if *set { threads } else { 0 });
            times[i].push(sample(f.as_mut(), batches[i]));
        }
    }
    fa_set_num_threads(0);
    for (i, (name, _, _)) in impls.iter().enumerate() {
        let mut ratios: Vec<f64> = (0..ROUNDS).map(|r| times[i][r] / times[0][r]).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        let med = median(&mut ratios);
        let mut t = times[i].clone();
        println!(
            "{case:<22} {name:<8} {:>9.2} us   x rust: {med:.3} [{lo:.3}..{hi:.3}]",
            median(&mut t) * 1e6
        );
    }
}

fn main() {
    let threads = rayon::current_num_threads() as i32;
    // What fa_set_num_threads did before calls stayed on the calling thread: the whole
    // call handed to a dedicated pool of T threads (ThreadPool::install).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads as usize)
        .build()
        .expect("a pool starts");
    println!("global pool: {threads} thread(s); c+set calls fa_set_num_threads({threads})");
    for n in [32usize, 64, 128] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let c1 = std::sync::Mutex::new(vec![0.0f32; n * n]);
        let ni = n as i32;
        let cblas = || {
            let mut c = c1.lock().unwrap();
            // SAFETY: dense row-major n x n matrices with leading dimension n.
            unsafe {
                cblas_sgemm(
                    CblasRowMajor,
                    CblasNoTrans,
                    CblasNoTrans,
                    ni,
                    ni,
                    ni,
                    1.0,
                    black_box(a.as_ptr()),
                    ni,
                    b.as_ptr(),
                    ni,
                    0.0,
                    c.as_mut_ptr(),
                    ni,
                )
            };
        };
        let rust = || {
            let mut c = c1.lock().unwrap();
            let (am, bm) = (
                MatRef::row_major(black_box(&a), n, n),
                MatRef::row_major(&b, n, n),
            );
            let cm = MatMut::row_major(&mut c, n, n);
            kernels::gemm(1.0, am.unwrap(), bm.unwrap(), 0.0, cm.unwrap()).expect("valid shapes");
        };
        let rust = &rust;
        let mut impls: Vec<Impl<'_>> = vec![
            ("rust", false, Box::new(rust)),
            ("c", false, Box::new(cblas)),
            ("c+set", true, Box::new(cblas)),
            ("install", false, Box::new(|| pool.install(rust))),
        ];
        compare(&format!("cblas_sgemm n={n}"), threads, &mut impls);
    }

    let (l, d) = (64usize, 64usize);
    let dims = [1, 1, l, d];
    let strides = [(l * d) as isize, (l * d) as isize, d as isize, 1];
    let mut x: Vec<f32> = (0..l * d).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect();
    let out = std::sync::Mutex::new(vec![0.0f32; l * d]);
    let xp = x.as_mut_ptr();
    let c_sdpa = || {
        let mut o = out.lock().unwrap();
        let t = fa_tensor {
            data: xp.cast(),
            dims,
            strides,
            dtype: 0,
        };
        let mut to = fa_tensor {
            data: o.as_mut_ptr().cast(),
            dims,
            strides,
            dtype: 0,
        };
        // SAFETY: dense [1, 1, L, D] tensors over live buffers; out overlaps no input.
        let rc = unsafe { fa_sdpa(&t, &t, &t, &mut to, std::ptr::null()) };
        assert_eq!(rc, 0);
    };
    let xs: &[f32] = &x;
    let rust_sdpa = || {
        let mut o = out.lock().unwrap();
        let t = TensorRef::new(black_box(xs), dims, [l * d, l * d, d, 1]).expect("valid view");
        let to = TensorMut::new(&mut o, dims, [l * d, l * d, d, 1]).expect("valid view");
        attention::sdpa_into(t, t, t, to, &SdpaOptions::default(), SdpaOutputs::default())
            .expect("valid call");
    };
    let rust_sdpa = &rust_sdpa;
    let mut impls: Vec<Impl<'_>> = vec![
        ("rust", false, Box::new(rust_sdpa)),
        ("c", false, Box::new(c_sdpa)),
        ("c+set", true, Box::new(c_sdpa)),
        ("install", false, Box::new(|| pool.install(rust_sdpa))),
    ];
    compare("fa_sdpa L=64 H=1 D=64", threads, &mut impls);
}
