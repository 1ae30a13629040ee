//! `cargo xtask bench --filter latency`: what one call costs when it is not one of many
//! back-to-back calls (issue 34).
//!
//! The throughput suites time batches of back-to-back calls, so a thread team that is
//! slow to wake after an idle gap, or that fights another library's spinning threads,
//! never shows there. This suite times **one call at a time** (`Instant` around the call)
//! in these conditions ([`Cond`]):
//!
//! - `b2b`: right after the same call (the median of three such calls in a row);
//! - `1t`: the same, on the calling thread alone (`Parallelism::Sequential`);
//! - `gap1`, `gap10`, `gap50`: one call, an idle gap of 1, 10 or 50 ms (`thread::sleep`),
//!   then the timed call;
//! - `after-pool`: right after a parallel region of another thread pool in this process
//!   ([`SpinTeam`]: `threads` threads compute for [`POOL_WORK`], then the workers spin
//!   [`SPIN_COUNT`] `PAUSE`s, libgomp's default, before they sleep);
//! - `after-torch`: right after a parallel `torch.mm` of [`TORCH_BUSY_N`]² in the torch
//!   helper process ([`crate::torch`]), started *without* `OMP_WAIT_POLICY=PASSIVE` so its
//!   OpenMP threads spin after the op as in a real program (absent without torch);
//! - the **one-thread twins** `1t-gap1`, `1t-gap10`, `1t-gap50`, `1t-after-pool`,
//!   `1t-after-torch` ([`Cond::twin`]): the same preparation (one call, now on one thread,
//!   then the gap, the pool's work or torch's op), then the call on the calling thread
//!   alone. A call after a gap or another library's work is slower even on one thread
//!   (cold caches, idle CPU states, the other library's threads still spinning on the
//!   cores); the twin measures that part, which no thread team causes.
//!
//! A **round** goes through every condition of every selected case, in a fixed order, each
//! multi-thread condition right before its twin (after each "after" condition the run
//! waits [`SETTLE`], [`SETTLE_TORCH`] after torch, so the spinning threads are asleep before the next condition);
//! [`QUICK_ROUNDS`] rounds ([`FULL_ROUNDS`] with `--full`) alternate in one process, so a
//! change in the machine's speed hits every condition. The table gives per (case, threads,
//! condition) the median time, and the median and min–max of the **per-round ratios** to
//! the same round's `b2b` and `1t` times and, for a gap or "after" condition, to its twin's
//! (`×1t same`: `gap10 / 1t-gap10`, `after-pool / 1t-after-pool`, what the thread team
//! adds over one thread in the same machine state). `!` marks a median that misses a
//! target ([`Cond::targets`], [`Target`]): the issue's (a gap ≤ 10 ms ≤ 1.15× b2b, every
//! gap/after ≤ 1.05× 1t, b2b ≤ 1× 1t with [`MAX_B2B_VS_ONE_THREAD`] allowed for noise) and
//! every gap/after ≤ 1.05× its twin; the footer counts the rows missing each, so a miss of
//! `×1t` alone is the machine's and one of `×1t same` the team's. torch's own op (torch.mm
//! or SDPA on the same shape) is timed the same way inside its process (b2b, 1t, gaps: the
//! helper's `latency` command) and its ratio to its own `b2b` is shown beside ours.
//!
//! **Cases** ([`latency_cases`]): GEMM n = 64 … 1024 (f32, row-major, `gemm_with` on the
//! current ISA), causal prefill L = 128, 256, 512 (H = 8, D = 64) and decode Lq = 1,
//! Lk = 4096 (Hq = 32, Hkv = 8, D = 128), f32, through the public `sdpa_into`.
//!
//! **Threads**: every `--threads` count above 1 (default `1,all`, so the machine's). The
//! call is made from the main thread, as a user makes it, inside
//! `kernels::parallel::with_threads` with that count.
//!
//! It runs only when `--filter` names it (`latency`, or case ids such as
//! `latency/gemm-*`): a quick run takes one to two minutes on a 2-vCPU VM. It writes `latency.json` (the
//! rows of the table) to the output directory.

mod cases;
mod cond;
mod summary;
mod team;

pub use cases::{
    attention, gemm, latency_cases, CallFn, LatencyCase, DECODE_LK, GEMM_SIZES, PREFILL_LENGTHS,
};
pub use cond::{
    After, Column, Cond, Target, GAPS_MS, MAX_B2B_VS_ONE_THREAD, MAX_SHORT_GAP_VS_B2B,
    MAX_VS_ONE_THREAD, SHORT_GAP_MS,
};
pub use summary::{footer, miss_count, summarize, table_header, table_row, Ratio, Row, Samples};
pub use team::{SpinTeam, SPIN_COUNT};

use crate::case::Case;
use crate::peers::TORCH;
use crate::plan::{filter_matches, glob_match, parse_peers, parse_threads, BenchArgs};
use crate::report::RunInfo;
use crate::torch::TorchPeer;
use crate::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kernels::Parallelism;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The suite's name: the `--filter` word.
pub const SUITE: &str = "latency";

/// Rounds of the quick run.
pub const QUICK_ROUNDS: usize = 11;

/// Rounds with `--full`.
pub const FULL_ROUNDS: usize = 21;

/// How long the other pool's parallel region computes on each of its threads.
pub const POOL_WORK: Duration = Duration::from_millis(2);

/// Wait after an "after" condition, so that spinning threads (ours, the other pool's)
/// are asleep before the next condition starts. The other pool's 300 000 PAUSEs alone
/// took about 15–20 ms on the 2-vCPU Xeon; at 20 ms the gap condition that followed still
/// found our helpers kept out by its spinning.
pub const SETTLE: Duration = Duration::from_millis(60);

/// Wait after torch's work (the `after-torch` op, torch's own timings): torch's OpenMP
/// threads were seen still spinning 20 ms after torch's timings (our helpers, finding
/// their CPUs taken, kept out of the next back-to-back calls), not after 100 ms.
pub const SETTLE_TORCH: Duration = Duration::from_millis(100);

/// Size of the torch.mm the torch helper runs before the `after-torch` call.
pub const TORCH_BUSY_N: usize = 1024;

/// Timed calls whose median is a round's `b2b` (and `1t`) time.
pub const B2B_CALLS: u32 = 3;

/// How long the calls before a `b2b` (and `1t`) sample run, at least: long enough for
/// sleeping helpers to wake (milliseconds on a VM).
pub const B2B_WARM: Duration = Duration::from_millis(10);

/// Whether `--filter` item `pattern` selects latency case `case`: without a `/` it is
/// matched against the suite name, with one against the id (`latency/gemm-*`).
pub fn filter_selects(pattern: &str, case: &LatencyCase) -> bool {
    let pattern = pattern.trim();
    if pattern.contains('/') {
        glob_match(pattern, &case.id())
    } else {
        glob_match(pattern, SUITE)
    }
}

/// Splits `--filter` items into the latency suite's (those selecting a latency case) and
/// the throughput suites' (those selecting one of `cases`, and those selecting nothing
/// at all, which the throughput side then reports as an error).
///
/// ```
/// use xtask::latency::split_filters;
/// let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
/// let cases = xtask::suites::gemm_cases();
/// let (lat, rest) = split_filters(&f(&["latency/gemm-*", "gemm/64"]), &cases);
/// assert_eq!((lat, rest), (f(&["latency/gemm-*"]), f(&["gemm/64"])));
/// ```
pub fn split_filters(filters: &[String], cases: &[Case]) -> (Vec<String>, Vec<String>) {
    let latency = latency_cases();
    let mut lat = Vec::new();
    let mut rest = Vec::new();
    for f in filters {
        let is_lat = latency.iter().any(|c| filter_selects(f, c));
        if is_lat {
            lat.push(f.clone());
        }
        if !is_lat || cases.iter().any(|c| filter_matches(f.trim(), c)) {
            rest.push(f.clone());
        }
    }
    (lat, rest)
}

/// The thread counts the suite runs at: those of `threads` above 1, or `all` when there
/// are none (the one-thread time is a column of every row).
pub fn latency_threads(threads: &[usize], all: usize) -> Vec<usize> {
    let v: Vec<usize> = threads.iter().copied().filter(|&t| t > 1).collect();
    if v.is_empty() {
        vec![all]
    } else {
        v
    }
}

/// `OMP_WAIT_POLICY` as this process has it (the torch helper inherits it), or `unset`.
pub fn omp_wait_policy() -> String {
    std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".to_string())
}

/// `latency.json`.
#[derive(Serialize)]
struct LatencyReport<'a> {
    run: &'a RunInfo,
    cpu: String,
    rounds: usize,
    torch: Option<String>,
    omp_wait_policy: String,
    pool_spin_count: u64,
    rows: &'a [Row],
}

/// One case's call, its inputs built, with its samples.
struct Live {
    case: LatencyCase,
    call: CallFn,
    samples: Samples,
}

/// Seconds of one call.
fn timed(f: &mut dyn FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    t0.elapsed().as_secs_f64()
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the torch helper's part of a round for `op` at `threads` (its b2b, gaps, 1t).
fn torch_round(
    peer: &mut TorchPeer,
    op: &crate::torch::TorchOp,
    threads: usize,
    s: &mut Samples,
) -> Result<()> {
    let b2b = peer.latency(op, threads, 0, B2B_CALLS)?;
    let mut gaps = Vec::new();
    for g in GAPS_MS {
        gaps.push((g, peer.latency(op, threads, g, 1)?));
    }
    let one = peer.latency(op, 1, 0, B2B_CALLS)?;
    s.push_torch(Cond::B2B, b2b);
    s.push_torch(Cond::ONE_THREAD, one);
    for (g, t) in gaps {
        s.push_torch(Cond::team(After::Gap(g)), t);
    }
    Ok(())
}

/// One round of one case at `threads`: every condition once (see the module docs).
fn round(live: &mut Live, team: &SpinTeam, torch: &mut Option<TorchPeer>, threads: usize) {
    let call = &mut live.call;
    let mut run = |par: Parallelism| kernels::parallel::with_threads(threads, || call(par));
    let s = &mut live.samples;
    for cond in [Cond::B2B, Cond::ONE_THREAD] {
        // Warm up for B2B_WARM (at least two calls): after the settle waits, helpers
        // sleep, and waking one takes milliseconds on a VM, so a few calls right after
        // would time the wake-up, not back-to-back calls.
        let warm = Instant::now();
        run(cond.parallelism());
        while warm.elapsed() < B2B_WARM {
            run(cond.parallelism());
        }
        run(cond.parallelism());
        let t = (0..B2B_CALLS)
            .map(|_| timed(&mut || run(cond.parallelism())))
            .collect();
        s.push(cond, median_of(t));
    }
    // Each "after" and gap condition, then its one-thread twin: the same preparation
    // (one call with the condition's own parallelism, then the pool's work, torch's op or
    // the gap), then the timed call.
    for cond in [Cond::team(After::Pool), Cond::alone(After::Pool)] {
        run(cond.parallelism());
        team.region(POOL_WORK);
        s.push(cond, timed(&mut || run(cond.parallelism())));
        std::thread::sleep(SETTLE);
    }
    for cond in [Cond::team(After::Torch), Cond::alone(After::Torch)] {
        let Some(peer) = torch.as_mut() else {
            break;
        };
        run(cond.parallelism());
        match peer.busy(TORCH_BUSY_N, threads) {
            Ok(()) => s.push(cond, timed(&mut || run(cond.parallelism()))),
            Err(e) => {
                eprintln!("torch helper failed ({e}): going on without torch");
                *torch = None;
            }
        }
        std::thread::sleep(SETTLE_TORCH);
    }
    for g in GAPS_MS {
        for cond in [Cond::team(After::Gap(g)), Cond::alone(After::Gap(g))] {
            run(cond.parallelism());
            std::thread::sleep(Duration::from_millis(u64::from(g)));
            s.push(cond, timed(&mut || run(cond.parallelism())));
        }
    }
    if let Some(peer) = torch.as_mut() {
        if let Err(e) = torch_round(peer, &live.case.torch, threads, s) {
            eprintln!("torch helper failed ({e}): going on without torch");
            *torch = None;
        }
        std::thread::sleep(SETTLE_TORCH);
    }
}

fn start_torch(args: &BenchArgs) -> Result<Option<TorchPeer>> {
    let wanted = match parse_peers(&args.peers)? {
        None => true,
        Some(p) => p.iter().any(|n| n == TORCH),
    };
    if !wanted {
        return Ok(None);
    }
    let python = crate::torch::python();
    let shown = python.display().to_string();
    match TorchPeer::start_spinning(python) {
        Ok(mut peer) => {
            peer.keep(latency_cases().len() + 1)?;
            println!(
                "torch: {} ({shown}), OMP_WAIT_POLICY {}",
                peer.version,
                omp_wait_policy()
            );
            Ok(Some(peer))
        }
        Err(e) => {
            println!("torch: not available ({shown}: {e}); no after-torch and torch columns");
            Ok(None)
        }
    }
}

/// Runs the latency suite on the cases `filters` select (see the [module docs](self)),
/// printing the table and writing `latency.json` to the output directory.
///
/// # Errors
/// Bad `--threads` or `--peers`, a filter selecting nothing, or an unwritable file.
pub fn run(args: &BenchArgs, filters: &[String], run_info: &RunInfo) -> Result<()> {
    let selected: Vec<LatencyCase> = latency_cases()
        .into_iter()
        .filter(|c| filters.iter().any(|f| filter_selects(f, c)))
        .collect();
    if selected.is_empty() {
        return Err("--filter selects no latency case".into());
    }
    let threads = latency_threads(
        &parse_threads(&args.threads, crate::all_threads())?,
        crate::all_threads(),
    );
    let rounds = if args.full { FULL_ROUNDS } else { QUICK_ROUNDS };
    let out_dir = args.out_dir.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let mut torch = start_torch(args)?;
    let torch_version = torch.as_ref().map(|p| p.version.clone());
    println!(
        "latency: one call timed at a time; {rounds} rounds, each through every condition of \
         every case; 1t = Parallelism::Sequential; after-pool: a {threads:?}-thread team \
         computing {} ms, then spinning {SPIN_COUNT} PAUSEs; after-torch: torch.mm \
         {TORCH_BUSY_N}² in the torch helper",
        POOL_WORK.as_millis(),
    );
    let mut live: Vec<Live> = selected
        .into_iter()
        .map(|case| Live {
            call: (case.setup)(),
            case,
            samples: Samples::default(),
        })
        .collect();
    let progress = ProgressBar::with_draw_target(
        Some((threads.len() * rounds * live.len()) as u64),
        ProgressDrawTarget::stderr(),
    );
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid progress template"),
    );
    let mut rows = Vec::new();
    println!("{}", table_header());
    for &t in &threads {
        let team = SpinTeam::new(t);
        for l in live.iter_mut() {
            l.samples = Samples::default();
            for par in [Parallelism::Rayon, Parallelism::Sequential] {
                for _ in 0..2 {
                    kernels::parallel::with_threads(t, || (l.call)(par));
                }
            }
        }
        for r in 0..rounds {
            progress.set_message(format!("{t} threads, round {}/{rounds}", r + 1));
            for l in live.iter_mut() {
                round(l, &team, &mut torch, t);
                progress.inc(1);
            }
        }
        progress.suspend(|| {
            for l in &live {
                let case_rows = summarize(&l.case.id(), &l.case.shape, t, &l.samples);
                for r in &case_rows {
                    println!("{}", table_row(r));
                }
                rows.extend(case_rows);
            }
        });
    }
    progress.finish_and_clear();
    println!("{}", footer(&rows));
    let (joins, abstentions) = kernels::parallel::helper_stats();
    println!(
        "helpers: blocktime {:?}, wake-up to join {:?} (moving average); {joins} seats \
         taken, {abstentions} looks at an open team while another thread wanted the \
         helper's CPU (it kept out)",
        kernels::parallel::blocktime(),
        kernels::parallel::helper_wake_time()
    );
    let report = LatencyReport {
        run: run_info,
        cpu: crate::cpu_name(),
        rounds,
        torch: torch_version,
        omp_wait_policy: omp_wait_policy(),
        pool_spin_count: SPIN_COUNT,
        rows: &rows,
    };
    let path = out_dir.join("latency.json");
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_split_between_latency_and_the_rest() {
        let all: Vec<Case> = crate::suites::suites()
            .iter()
            .flat_map(|s| (s.cases)())
            .collect();
        let split = |f: &[&str]| split_filters(&strings(f), &all);
        let (lat, rest) = split(&["latency", "gemm"]);
        assert_eq!((lat, rest), (strings(&["latency"]), strings(&["gemm"])));
        let (lat, rest) = split(&["latency/decode-4096", "latency/nope"]);
        assert_eq!(lat, strings(&["latency/decode-4096"]));
        // An item selecting nothing goes to the throughput side (which reports it).
        assert_eq!(rest, strings(&["latency/nope"]));
        // `*` and `la*` select both sides; `lat*` only latency.
        assert_eq!(split(&["*"]), (strings(&["*"]), strings(&["*"])));
        assert_eq!(split(&["la*"]), (strings(&["la*"]), strings(&["la*"])));
        assert_eq!(split(&["lat*"]), (strings(&["lat*"]), vec![]));
        let (lat, rest) = split(&[]);
        assert!(lat.is_empty() && rest.is_empty());
        let cases = latency_cases();
        let sel = |f: &str| cases.iter().filter(|c| filter_selects(f, c)).count();
        assert_eq!(sel("latency"), 9);
        assert_eq!(sel("latency/gemm-*"), 5);
        assert_eq!(sel("latency/prefill-*"), 3);
        assert_eq!(sel("gemm"), 0);
        assert_eq!(sel("latency/gemm-64"), 1);
    }

    #[test]
    fn threads_above_one_or_all() {
        assert_eq!(latency_threads(&[1, 8], 8), [8]);
        assert_eq!(latency_threads(&[1], 4), [4]);
        assert_eq!(latency_threads(&[2, 4], 16), [2, 4]);
        assert_eq!(latency_threads(&[1], 1), [1]);
    }

    #[test]
    fn one_round_fills_every_condition_without_torch() {
        let case = gemm(8);
        let mut live = Live {
            call: (case.setup)(),
            case,
            samples: Samples::default(),
        };
        let team = SpinTeam::new(2);
        round(&mut live, &team, &mut None, 2);
        let conds: Vec<String> = live.samples.ours.keys().map(|c| c.name()).collect();
        let want = [
            "b2b",
            "1t",
            "gap1",
            "1t-gap1",
            "gap10",
            "1t-gap10",
            "gap50",
            "1t-gap50",
            "after-pool",
            "1t-after-pool",
        ];
        assert_eq!(conds, want);
        assert!(live
            .samples
            .ours
            .values()
            .all(|v| v.len() == 1 && v[0] > 0.0));
        assert_eq!(median_of(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
