//! `latency` mode: the cost of one call as a program sees it, not back to back. Per case
//! and round, old and new in flipping order under each condition: `b2b` (the third of
//! three calls in a row), `gap1`/`gap10`/`gap50` (one call after sleeping that many ms),
//! `after-pool` (one call right after another thread pool's parallel work: a second thread
//! computes with the caller for 2 ms and then spins 1 ms as an OpenMP runtime does), and
//! `1t` (one thread, back to back). Prints per condition the medians of old and new, the
//! median (min–max) of new/old per round, and each version's ratio to its own `b2b` and
//! `1t`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::Job;

macro_rules! latency_cases {
    ($fa:ident, $par:expr) => {{
        let par = $par;
        let mut v: Vec<(String, Job)> = Vec::new();
        for n in [64usize, 128, 256, 512, 1024] {
            v.push((format!("gemm {n}"), gemm_job!($fa, par, n)));
        }
        // (label, hq, hkv, lq, lk, d, causal)
        let attn: &[(&str, usize, usize, usize, usize, usize, bool)] = &[
            ("prefill L128 H8 D64 causal", 8, 8, 128, 128, 64, true),
            ("prefill L256 H8 D64 causal", 8, 8, 256, 256, 64, true),
            ("prefill L512 H8 D64 causal", 8, 8, 512, 512, 64, true),
            ("decode 32/8 Lk4096 D128", 32, 8, 1, 4096, 128, false),
        ];
        for &(label, hq, hkv, lq, lk, d, causal) in attn {
            v.push((
                label.to_string(),
                sdpa_job!($fa, par, hq, hkv, lq, lk, d, causal, false),
            ));
        }
        v
    }};
}

const CONDS: [&str; 6] = ["b2b", "gap1", "gap10", "gap50", "after-pool", "1t"];

/// Another library's thread pool: one extra thread that computes alongside the caller,
/// then spins (without yielding) for a while after the parallel region, as OpenMP
/// runtimes do before their threads sleep.
struct ForeignPool {
    go: Arc<Barrier>,
    sink: Arc<AtomicU64>,
}

fn busy(d: Duration, sink: &AtomicU64) {
    let t = Instant::now();
    let mut x = 1u64;
    while t.elapsed() < d {
        for _ in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    sink.fetch_add(x, Ordering::Relaxed);
}

impl ForeignPool {
    fn new() -> Self {
        let go = Arc::new(Barrier::new(2));
        let sink = Arc::new(AtomicU64::new(0));
        let (g, s) = (Arc::clone(&go), Arc::clone(&sink));
        std::thread::spawn(move || loop {
            g.wait();
            busy(Duration::from_millis(2), &s);
            // The spin-wait after the region.
            busy(Duration::from_millis(1), &s);
        });
        ForeignPool { go, sink }
    }

    /// The caller's share of a parallel region (returns when the caller's share is done;
    /// the pool's thread then spins on).
    fn region(&self) {
        self.go.wait();
        busy(Duration::from_millis(2), &self.sink);
    }
}

fn once(f: &mut Job) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// One call of `f` under condition `c` (`1t` is `b2b` of the one-thread job).
fn sample(c: &str, f: &mut Job, pool: &ForeignPool) -> f64 {
    match c {
        "b2b" | "1t" => {
            f();
            f();
            once(f)
        }
        "after-pool" => {
            pool.region();
            once(f)
        }
        gap => {
            let ms: u64 = gap.trim_start_matches("gap").parse().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            once(f)
        }
    }
}

pub fn run(rounds: usize, filter: &str) {
    use fa_new::kernels::Parallelism;
    let mut old = latency_cases!(fa_old, fa_old::kernels::Parallelism::Rayon);
    let mut old1 = latency_cases!(fa_old, fa_old::kernels::Parallelism::Sequential);
    let mut new = latency_cases!(fa_new, Parallelism::Rayon);
    let mut new1 = latency_cases!(fa_new, Parallelism::Sequential);
    let pool = ForeignPool::new();
    println!(
        "latency: {} threads (default), {rounds} rounds; ms per call (median), ratios per round",
        fa_new::kernels::parallel::current_threads()
    );
    println!("| case | cond | old ms | new ms | new/old (min–max) | old/b2b | new/b2b | old/1t | new/1t |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for i in 0..old.len() {
        let name = old[i].0.clone();
        if !name.contains(filter) {
            continue;
        }
        // t[version][cond][round]
        let mut t = vec![vec![Vec::new(); CONDS.len()]; 2];
        for r in 0..rounds {
            for (ci, c) in CONDS.iter().enumerate() {
                for k in 0..2 {
                    let v = (k + r) % 2; // 0 old, 1 new: order flips per round
                    let f = match (v, *c == "1t") {
                        (0, false) => &mut old[i].1,
                        (0, true) => &mut old1[i].1,
                        (_, false) => &mut new[i].1,
                        (_, true) => &mut new1[i].1,
                    };
                    t[v][ci].push(sample(c, f, &pool));
                }
            }
        }
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            crate::median(&mut v)
        };
        let ratio = |a: &[f64], b: &[f64]| {
            let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
            let m = crate::median(&mut r);
            (m, r[0], r[r.len() - 1])
        };
        for (ci, c) in CONDS.iter().enumerate() {
            let (m, lo, hi) = ratio(&t[1][ci], &t[0][ci]);
            let (ob, nb) = (ratio(&t[0][ci], &t[0][0]).0, ratio(&t[1][ci], &t[1][0]).0);
            let (o1, n1) = (ratio(&t[0][ci], &t[0][5]).0, ratio(&t[1][ci], &t[1][5]).0);
            println!(
                "| {name} | {c} | {:.3} | {:.3} | {m:.2} ({lo:.2}–{hi:.2}) | {ob:.2} | {nb:.2} | {o1:.2} | {n1:.2} |",
                med(&t[0][ci]) * 1e3,
                med(&t[1][ci]) * 1e3
            );
        }
    }
}
