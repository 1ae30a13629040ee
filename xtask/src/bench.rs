//! `cargo xtask bench`: the runner.
//!
//! A benchmark is a list of [`Case`]s (built by the suites in [`crate::suites`]). A case
//! knows its work (floating-point operations, bytes moved, whether compute or memory bounds
//! it) and how to build its inputs and one [`Impl`] per implementation: each kernel variant
//! this CPU can run and the peers (matrixmultiply, the gemm crate, a materialised
//! attention, std, and torch through a helper process, [`crate::torch`]). The runner
//!
//! 1. selects cases (`--filter`), implementations (`--variant`, `--peers`) and thread
//!    counts (`--threads`);
//! 2. measures the machine first ([`crate::peak`]: FMA peak per ISA and thread count,
//!    memory bandwidth) for the report's `machine` block, and times a reference case (our
//!    best variant on GEMM 256, one thread) that it times again at the end: the **drift**;
//! 3. for every (case, thread count) samples the implementations **in rotation**
//!    ([`crate::rotation`]: `A B C`, `B C A`, …, a few milliseconds a sample), together
//!    with an FMA-peak trial per ISA involved (compute-bound cases) or a bandwidth trial
//!    (memory-bound cases). Each implementation gets its median and min–max per call, its
//!    **ratio** to the baseline (our fastest variant by median), computed round by round
//!    (time / baseline time: > 1 is slower), and its **% of peak** against the best peak
//!    trial of the same rotation; above 100 % it is flagged as a measuring error;
//! 4. streams the table to stdout (a progress bar on stderr) and writes `report.json`,
//!    `report.csv` and `gemm.svg` under `target/bench/` (and with `--markdown` the README's
//!    table); `--compare OLD.json` then prints the change per case.

use crate::report::{self, Drift, Record, Report, RunInfo, TorchInfo};
use crate::rotation::{self, Member};
use crate::torch::{TorchOp, TorchPeer};
use crate::{chart, markdown, peak, suites, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kernels::Isa;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of the peer implementations a suite may register (besides our ISA variants).
pub const PEERS: &[&str] = &[MATRIXMULTIPLY, GEMM_CRATE, MATERIALIZED_MM, STD, TORCH];

/// Whether the implementation named `name` is a peer: one of [`PEERS`], or a peer's row in
/// another element type (`torch-bf16`).
pub fn is_peer(name: &str) -> bool {
    PEERS
        .iter()
        .any(|p| name == *p || name.strip_prefix(p).is_some_and(|r| r.starts_with('-')))
}

/// PyTorch: `torch.mm` on GEMM cases, SDPA on attention cases ([`crate::torch`]).
pub const TORCH: &str = "torch";

/// The `matrixmultiply` crate's `sgemm`.
pub const MATRIXMULTIPLY: &str = "matrixmultiply";
/// The `gemm` crate (`gemm::gemm`, f32).
pub const GEMM_CRATE: &str = "gemm-crate";
/// Plain attention that materialises the score matrix, its GEMMs on `matrixmultiply`.
pub const MATERIALIZED_MM: &str = "materialized-mm";
/// A plain Rust loop on the standard library's `f32::exp` (exp and softmax baseline).
pub const STD: &str = "std";

/// Environment variable that sets `matrixmultiply`'s thread count, once per process.
pub const MATMUL_THREADS_VAR: &str = "MATMUL_NUM_THREADS";

/// The thread count `matrixmultiply` runs with in this process, if it is known.
///
/// matrixmultiply's `threading` feature starts its own pool on first use, sized by
/// `MATMUL_NUM_THREADS` (default: the physical core count), and never resizes it. So it is
/// measured at exactly that many threads and reported under that count only; `main` sets
/// the variable to 1 when it is unset. `None` when the variable is unset or not a number.
pub fn matrixmultiply_threads() -> Option<usize> {
    std::env::var(MATMUL_THREADS_VAR)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(|n| n.max(1))
}

/// Which resource limits a case, and so what its result is a percentage of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Arithmetic: reported as % of the measured FMA peak (`pct_peak`).
    Compute,
    /// Memory traffic: reported as % of the measured bandwidth (`pct_peak` is null).
    Memory,
    /// Neither: a working set that fits in cache, with no measured ceiling to compare
    /// against (no cache bandwidth is measured). GB/s only; `pct_peak` is null.
    Cache,
}

/// One call of an implementation on the case's inputs. The argument is the thread count of
/// the rayon pool the call runs in (for peers that take a thread count themselves).
pub type RunFn = Box<dyn FnMut(usize) + Send>;

/// A self-timed implementation: `(threads, calls)` performs `calls` calls and returns the
/// seconds they took by its own clock (NaN when it failed).
pub type TimedFn = Box<dyn FnMut(usize, u64) -> f64 + Send>;

/// One implementation of a case: a kernel variant or a peer, with its inputs captured.
pub struct Impl {
    /// Name in reports: the ISA's short name (`avx2`) or the peer's (`matrixmultiply`).
    pub name: String,
    /// The variant, for ours; `None` for a peer (compared with the best ISA's peak).
    pub isa: Option<Isa>,
    /// `Some(t)`: this implementation can only run with `t` threads (see
    /// [`matrixmultiply_threads`]); it is skipped at every other thread count.
    pub fixed_threads: Option<usize>,
    /// `false`: too slow for the quick run; runs with `--full`, or when `--variant` names it.
    pub quick: bool,
    /// Performs one call.
    pub run: RunFn,
    /// `Some`: the implementation times itself (the torch helper); `run` is then unused by
    /// the runner.
    pub timed: Option<TimedFn>,
    /// Bytes one call moves, when not the case's (16-bit inputs move fewer).
    pub bytes: Option<f64>,
}

impl Impl {
    /// Our kernel variant `isa`.
    pub fn ours(isa: Isa, run: impl FnMut(usize) + Send + 'static) -> Impl {
        Impl {
            name: isa.name().to_string(),
            isa: Some(isa),
            fixed_threads: None,
            quick: true,
            run: Box::new(run),
            timed: None,
            bytes: None,
        }
    }

    /// Our variant `isa` computing on `dtype` storage, named `avx2-bf16`: it moves `bytes`
    /// per call. `--variant avx2` selects it too.
    pub fn ours_dtype(
        isa: Isa,
        dtype: kernels::DType,
        bytes: f64,
        run: impl FnMut(usize) + Send + 'static,
    ) -> Impl {
        let mut imp = Impl::ours(isa, run);
        imp.name = format!("{}-{dtype}", isa.name());
        imp.bytes = Some(bytes);
        imp
    }

    /// A peer named `name` (one of [`PEERS`]).
    pub fn peer(name: &str, run: impl FnMut(usize) + Send + 'static) -> Impl {
        debug_assert!(PEERS.contains(&name), "register {name} in PEERS");
        Impl {
            name: name.to_string(),
            isa: None,
            fixed_threads: None,
            quick: true,
            run: Box::new(run),
            timed: None,
            bytes: None,
        }
    }

    /// A peer that times itself: `timed(threads, calls)` returns the seconds of `calls`
    /// calls (see [`TimedFn`]).
    pub fn self_timed(name: &str, timed: impl FnMut(usize, u64) -> f64 + Send + 'static) -> Impl {
        let timed: Arc<Mutex<dyn FnMut(usize, u64) -> f64 + Send>> = Arc::new(Mutex::new(timed));
        let t2 = timed.clone();
        let mut imp = Impl::peer(name, move |threads| {
            (t2.lock().expect("not poisoned"))(threads, 1);
        });
        imp.timed = Some(Box::new(move |threads, calls| {
            (timed.lock().expect("not poisoned"))(threads, calls)
        }));
        imp
    }

    /// Seconds of `calls` back-to-back calls at `threads` threads, in `pool` (rayon-based
    /// implementations) or by the implementation's own clock ([`Impl::timed`]).
    pub fn sample(&mut self, threads: usize, calls: u64, pool: &rayon::ThreadPool) -> f64 {
        if let Some(timed) = self.timed.as_mut() {
            return timed(threads, calls);
        }
        let run = &mut self.run;
        pool.install(move || {
            let t0 = Instant::now();
            for _ in 0..calls {
                run(threads);
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Runs only with `threads` threads.
    pub fn at_threads(mut self, threads: usize) -> Impl {
        self.fixed_threads = Some(threads);
        self
    }

    /// Skipped in the quick run when `slow` is true.
    pub fn slow_if(mut self, slow: bool) -> Impl {
        self.quick = !slow;
        self
    }
}

/// Builds a case's inputs and implementations; called only when the case is selected.
pub type SetupFn = Box<dyn Fn() -> Vec<Impl>>;

/// One benchmark case.
pub struct Case {
    /// Suite name (`gemm`).
    pub suite: &'static str,
    /// Case name inside the suite (`512`, `64x64x256`); `suite/name` is its id.
    pub name: String,
    /// Human-readable shape (`m=512 k=512 n=512`).
    pub shape: String,
    /// Floating-point operations of one call (a multiply-add counts 2).
    pub flops: f64,
    /// Bytes one call must move at least (inputs read once, outputs written once).
    pub bytes: f64,
    /// What limits it.
    pub bound: Bound,
    /// Runs only with `--full` (or when a filter names its id exactly).
    pub full_only: bool,
    /// Builds inputs and implementations.
    pub setup: SetupFn,
    /// What the torch peer runs for this case (one row per op: `torch` for f32, `torch-bf16`
    /// …); empty: torch has no row here.
    pub torch: Vec<TorchOp>,
}

impl Case {
    /// A quick case.
    pub fn new(
        suite: &'static str,
        name: impl Into<String>,
        shape: impl Into<String>,
        flops: f64,
        bytes: f64,
        bound: Bound,
        setup: impl Fn() -> Vec<Impl> + 'static,
    ) -> Case {
        Case {
            suite,
            name: name.into(),
            shape: shape.into(),
            flops,
            bytes,
            bound,
            full_only: false,
            setup: Box::new(setup),
            torch: Vec::new(),
        }
    }

    /// Adds a torch row computing `op`.
    pub fn with_torch(mut self, op: TorchOp) -> Case {
        self.torch.push(op);
        self
    }

    /// Marks the case as `--full` only.
    pub fn full_only(mut self) -> Case {
        self.full_only = true;
        self
    }

    /// `suite/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.suite, self.name)
    }
}

/// How long and how often each measurement runs. For a rotation
/// ([`crate::rotation::measure_rotation`]) a "sample" is a round (one sample of every
/// member) and the time is per counted member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Seconds of untimed calls first (at least one call), per member.
    pub warmup_s: f64,
    /// Keep sampling until this many seconds have been sampled (per member)...
    pub min_time_s: f64,
    /// ...and at least this many samples (rounds) were taken...
    pub min_samples: usize,
    /// ...but never more than this many.
    pub max_samples: usize,
    /// Calls are batched so one sample lasts about this long (timer overhead stays small).
    pub sample_s: f64,
}

impl Timing {
    /// The default: about 0.4 s of samples per implementation, at least 11 rounds, samples
    /// of about 2 ms (more, shorter rounds: each ratio is taken within one round, so more
    /// rounds steady the median ratio on a noisy host).
    pub const QUICK: Timing = Timing {
        warmup_s: 0.05,
        min_time_s: 0.4,
        min_samples: 11,
        max_samples: 1000,
        sample_s: 0.002,
    };
    /// `--full`: about 1 s per implementation, at least 15 rounds.
    pub const FULL: Timing = Timing {
        warmup_s: 0.2,
        min_time_s: 1.0,
        min_samples: 15,
        max_samples: 5000,
        sample_s: 0.003,
    };
}

/// Summary of one measurement. Each sample is the mean time of one call over a batch of
/// `calls_per_sample` back-to-back calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median of the samples, seconds per call.
    pub median_s: f64,
    /// Fastest sample.
    pub min_s: f64,
    /// Slowest sample.
    pub max_s: f64,
    /// Number of samples.
    pub samples: usize,
    /// Calls per sample.
    pub calls_per_sample: u64,
}

impl Stats {
    /// Median (mean of the two middle values for an even count), min and max. `None` for no
    /// samples or a NaN.
    ///
    /// ```
    /// let s = xtask::bench::Stats::from_samples(&[3.0, 1.0, 2.0, 10.0], 1).unwrap();
    /// assert_eq!((s.median_s, s.min_s, s.max_s), (2.5, 1.0, 10.0));
    /// ```
    pub fn from_samples(samples: &[f64], calls_per_sample: u64) -> Option<Stats> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median_s: median,
            min_s: v[0],
            max_s: v[n - 1],
            samples: n,
            calls_per_sample,
        })
    }
}

/// Times `f` alone: a rotation of one member ([`rotation::measure_rotation`]), so
/// warm-up, then samples of `calls_per_sample` calls each (chosen from the warm-up so a
/// sample lasts about `timing.sample_s`) until `min_time_s` and `min_samples` are both
/// reached, or `max_samples`.
pub fn measure(f: &mut dyn FnMut(), timing: &Timing) -> Stats {
    let mut sample = |calls: u64| {
        let t0 = Instant::now();
        for _ in 0..calls {
            f();
        }
        t0.elapsed().as_secs_f64()
    };
    let mut members = [Member {
        sample: &mut sample,
        counted: true,
    }];
    rotation::measure_rotation(&mut members, timing)
        .stats(0)
        .expect("at least one finite sample")
}

/// Whether glob `pattern` (`*` matches any run of characters) matches all of `text`.
///
/// ```
/// use xtask::bench::glob_match;
/// assert!(glob_match("gemm/*x*", "gemm/64x64x256"));
/// assert!(!glob_match("gemm/64", "gemm/64x64x256"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether `--filter` item `pattern` selects `case`: a pattern with a `/` is matched
/// against the case id (`gemm/512`), one without against the suite name (`gemm`).
pub fn filter_matches(pattern: &str, case: &Case) -> bool {
    if pattern.contains('/') {
        glob_match(pattern, &case.id())
    } else {
        glob_match(pattern, case.suite)
    }
}

/// Keeps the cases the filters select (all of them without filters). `--full`-only cases
/// need `full`, or a filter naming their id exactly.
///
/// # Errors
/// A filter that matches no case at all (the message lists the case ids).
pub fn select_cases(cases: Vec<Case>, filters: &[String], full: bool) -> Result<Vec<Case>> {
    let filters: Vec<&str> = filters
        .iter()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
        .collect();
    for f in &filters {
        if !cases.iter().any(|c| filter_matches(f, c)) {
            let ids: Vec<String> = cases.iter().map(Case::id).collect();
            return Err(format!(
                "--filter {f:?} matches no case; cases are: {}",
                ids.join(", ")
            )
            .into());
        }
    }
    let selected: Vec<Case> = cases
        .into_iter()
        .filter(|c| {
            let named = filters.iter().any(|f| *f == c.id());
            let matched = filters.is_empty() || filters.iter().any(|f| filter_matches(f, c));
            matched && (full || !c.full_only || named)
        })
        .collect();
    if selected.is_empty() {
        return Err("the filters select only --full cases: add --full".into());
    }
    Ok(selected)
}

/// Parses `--threads` items: positive integers or `all` (`all_threads`). Sorted, deduplicated.
///
/// # Errors
/// An item that is neither, or 0.
pub fn parse_threads(items: &[String], all_threads: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        let t = if item.eq_ignore_ascii_case("all") {
            all_threads
        } else {
            match item.parse::<usize>() {
                Ok(t) if t > 0 => t,
                _ => {
                    return Err(
                        format!("--threads {item:?}: expected a positive number or `all`").into(),
                    )
                }
            }
        };
        out.push(t);
    }
    if out.is_empty() {
        return Err("--threads: give at least one thread count".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Parses `--variant` items into canonical implementation names. Empty: `None` (all).
///
/// # Errors
/// An unknown name, or an ISA this CPU cannot run.
pub fn parse_variants(items: &[String]) -> Result<Option<Vec<String>>> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if let Some(p) = PEERS.iter().find(|p| p.eq_ignore_ascii_case(item)) {
            out.push(p.to_string());
            continue;
        }
        match Isa::from_name(item) {
            Ok(isa) if isa.is_supported() => out.push(isa.name().to_string()),
            Ok(isa) => {
                return Err(format!(
                    "--variant {}: not on this CPU (available: {})",
                    isa.name(),
                    available_names().join(", ")
                )
                .into())
            }
            Err(_) => {
                return Err(format!(
                    "--variant {item:?}: unknown; use one of {} or {}",
                    available_names().join(", "),
                    PEERS.join(", ")
                )
                .into())
            }
        }
    }
    out.dedup();
    Ok(if out.is_empty() { None } else { Some(out) })
}

fn available_names() -> Vec<&'static str> {
    Isa::available().into_iter().map(Isa::name).collect()
}

/// Parses `--peers` items: peer names (case-insensitive), `all`, or `none`.
/// `None` (all, subject to `--variant`) when no items are given.
///
/// # Errors
/// An unknown name (the message lists the peers).
pub fn parse_peers(items: &[String]) -> Result<Option<Vec<String>>> {
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if item.eq_ignore_ascii_case("all") {
            out.extend(PEERS.iter().map(|p| p.to_string()));
        } else if item.eq_ignore_ascii_case("none") {
            continue;
        } else if let Some(p) = PEERS.iter().find(|p| p.eq_ignore_ascii_case(item)) {
            out.push(p.to_string());
        } else {
            return Err(format!(
                "--peers {item:?}: unknown; use all, none or some of {}",
                PEERS.join(", ")
            )
            .into());
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

/// What to run.
pub struct Plan {
    /// Selected cases, in registry order.
    pub cases: Vec<Case>,
    /// `Some`: only these implementations (canonical names); they run even when slow.
    pub variants: Option<Vec<String>>,
    /// `Some`: `--peers` was given and chooses the peers (overriding `--variant` for them).
    pub peers: Option<Vec<String>>,
    /// Thread counts, ascending.
    pub threads: Vec<usize>,
    /// `--full`.
    pub full: bool,
    /// Sampling.
    pub timing: Timing,
}

impl Plan {
    /// The plan `args` describe, over `cases` (normally every suite's cases).
    ///
    /// # Errors
    /// Bad `--filter`, `--variant`, `--peers`, `--threads` or `--min-time`.
    pub fn from_args(args: &BenchArgs, cases: Vec<Case>) -> Result<Plan> {
        let threads = parse_threads(&args.threads, crate::all_threads())?;
        let variants = parse_variants(&args.variant)?;
        let peers = parse_peers(&args.peers)?;
        let mut timing = if args.full {
            Timing::FULL
        } else {
            Timing::QUICK
        };
        if let Some(t) = args.min_time {
            if !(t.is_finite() && t >= 0.0) {
                return Err(format!("--min-time {t}: expected seconds ≥ 0").into());
            }
            timing.min_time_s = t;
            timing.warmup_s = timing.warmup_s.min(t);
        }
        let cases = select_cases(cases, &args.filter, args.full)?;
        Ok(Plan {
            cases,
            variants,
            peers,
            threads,
            full: args.full,
            timing,
        })
    }

    /// Whether implementation `imp` runs at all under this plan (thread count aside).
    /// Ours: named by `--variant`, or quick (or `--full`) without it. Peers: named by
    /// `--peers` when given, else as ours.
    pub fn wants(&self, imp: &Impl) -> bool {
        if imp.isa.is_none() {
            if let Some(p) = &self.peers {
                return p.contains(&imp.name) && (imp.quick || self.full || self.named(imp));
            }
        }
        match &self.variants {
            // A 16-bit row of ours (`avx2-bf16`) runs with its variant (`avx2`).
            Some(v) => {
                v.contains(&imp.name) || imp.isa.is_some_and(|i| v.iter().any(|n| n == i.name()))
            }
            None => imp.quick || self.full,
        }
    }

    fn named(&self, imp: &Impl) -> bool {
        self.variants
            .as_ref()
            .is_some_and(|v| v.contains(&imp.name))
    }

    /// Whether the torch peer is wanted for some selected case.
    pub fn wants_torch(&self) -> bool {
        self.cases.iter().any(|c| !c.torch.is_empty()) && self.wants(&Impl::peer(TORCH, |_| {}))
    }
}

/// The bounds measured inside one rotation: the best FMA-peak trial per variant (ISA name)
/// and the best bandwidth trial.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RotationBounds {
    /// ISA name → best trial of its peak loop, GFLOP/s.
    pub peak_gflops: BTreeMap<String, f64>,
    /// Best bandwidth trial, GB/s (memory-bound cases).
    pub bandwidth_gbs: Option<f64>,
}

impl RotationBounds {
    /// The bound of `isa`; `None` (a peer): the best over the measured variants.
    pub fn peak(&self, isa: Option<&str>) -> Option<f64> {
        match isa {
            Some(isa) => self.peak_gflops.get(isa).copied(),
            None => self.peak_gflops.values().copied().reduce(f64::max),
        }
        .filter(|p| *p > 0.0)
    }
}

/// Turns one implementation's samples into a report record: `pct_peak` (compute-bound)
/// and `pct_bw` (memory-bound) against the bounds of its rotation, `measuring_error` when
/// either exceeds 100. The ratio fields are left empty ([`add_ratios`] fills them).
pub fn record(
    case: &Case,
    imp: &Impl,
    threads: usize,
    stats: &Stats,
    bounds: &RotationBounds,
) -> Record {
    let per_s = |x: f64| {
        if stats.median_s > 0.0 {
            x / stats.median_s / 1e9
        } else {
            0.0
        }
    };
    let gflops = per_s(case.flops);
    let gbs = per_s(imp.bytes.unwrap_or(case.bytes));
    let (peak, pct_peak) = match case.bound {
        Bound::Compute => {
            let p = bounds.peak(imp.isa.map(Isa::name));
            (p, p.map(|p| 100.0 * gflops / p))
        }
        Bound::Memory | Bound::Cache => (None, None),
    };
    let (bw, pct_bw) = match (case.bound, bounds.bandwidth_gbs.filter(|b| *b > 0.0)) {
        (Bound::Memory, Some(b)) => (Some(b), Some(100.0 * gbs / b)),
        _ => (None, None),
    };
    let measuring_error = pct_peak.is_some_and(|p| p > 100.0) || pct_bw.is_some_and(|p| p > 100.0);
    Record {
        suite: case.suite.to_string(),
        case: case.name.clone(),
        imp: imp.name.clone(),
        threads,
        shape: case.shape.clone(),
        median_s: stats.median_s,
        min_s: stats.min_s,
        max_s: stats.max_s,
        gflops,
        pct_peak,
        gbs,
        rounds: stats.samples,
        rotation_peak_gflops: peak,
        rotation_bw_gbs: bw,
        pct_bw,
        measuring_error,
        ..Record::default()
    }
}

/// Fills the ratio fields of `records` (one per entry of `samples`, the per-round times of
/// one rotation): the baseline is our fastest variant by median (`is_ours[i]`), each
/// record's ratio the per-round `time / baseline time` ([`rotation::ratio_stats`]). Leaves
/// them empty when no variant of ours is among them.
pub fn add_ratios(records: &mut [Record], samples: &[&[f64]], is_ours: &[bool]) {
    let base = (0..records.len())
        .filter(|&i| is_ours[i])
        .min_by(|&a, &b| records[a].median_s.total_cmp(&records[b].median_s));
    let Some(base) = base else { return };
    let name = records[base].imp.clone();
    for i in 0..records.len() {
        if let Some(r) = rotation::ratio_stats(samples[i], samples[base]) {
            let rec = &mut records[i];
            rec.ratio = Some(r.median_s);
            rec.ratio_min = Some(r.min_s);
            rec.ratio_max = Some(r.max_s);
            rec.baseline = Some(name.clone());
        }
    }
}

/// Buffers of the bandwidth trial ([`peak::BANDWIDTH_BYTES`] in all), made on first use.
#[derive(Default)]
pub struct BandwidthBuffers(Option<(Vec<u64>, Vec<u64>)>);

impl BandwidthBuffers {
    fn get(&mut self) -> (&[u64], &mut [u64]) {
        let (src, dst) = self.0.get_or_insert_with(|| {
            (
                vec![1u64; peak::BANDWIDTH_BYTES / 16],
                vec![0u64; peak::BANDWIDTH_BYTES / 16],
            )
        });
        (src, dst)
    }
}

/// What one bound trial of a rotation measures.
enum BoundTrial {
    /// An FMA-peak loop for these ISA names, `iters` iterations per thread per call.
    Peak(peak::PeakLoop, Vec<&'static str>, u64),
    /// One bandwidth pass.
    Bandwidth,
}

/// Samples one (case, thread count) in rotation: `impls` (those that run at `threads`)
/// plus the bound trials its [`Bound`] calls for, and returns one record per implementation
/// with a valid measurement, ratios filled.
pub fn measure_case(
    case: &Case,
    impls: &mut [&mut Impl],
    threads: usize,
    pool: &rayon::ThreadPool,
    timing: &Timing,
    bw: &mut BandwidthBuffers,
) -> Vec<Record> {
    if impls.is_empty() {
        return Vec::new();
    }
    // The bound trials: one FMA loop per distinct loop of the variants present (and of the
    // best variant when a peer is present: peers are compared with it), or a bandwidth pass.
    let mut trials: Vec<BoundTrial> = Vec::new();
    match case.bound {
        Bound::Compute => {
            let mut isas: Vec<Isa> = impls.iter().filter_map(|i| i.isa).collect();
            if impls.iter().any(|i| i.isa.is_none()) {
                isas.push(Isa::best());
            }
            for isa in isas {
                let Some(lp) = peak::peak_loop(isa) else {
                    continue;
                };
                match trials.iter_mut().find_map(|t| match t {
                    BoundTrial::Peak(l, names, _) if l.kind == lp.kind => Some(names),
                    _ => None,
                }) {
                    Some(names) if names.contains(&isa.name()) => {}
                    Some(names) => names.push(isa.name()),
                    None => {
                        let iters = peak::calibrate(lp.run, timing.sample_s);
                        trials.push(BoundTrial::Peak(lp, vec![isa.name()], iters));
                    }
                }
            }
        }
        Bound::Memory => trials.push(BoundTrial::Bandwidth),
        Bound::Cache => {}
    }
    let n_impls = impls.len();
    let mut bw_bufs = trials
        .iter()
        .any(|t| matches!(t, BoundTrial::Bandwidth))
        .then(|| bw.get());
    let rot = {
        let mut samplers: Vec<Box<dyn FnMut(u64) -> f64 + '_>> = Vec::new();
        for imp in impls.iter_mut() {
            samplers.push(Box::new(move |calls| imp.sample(threads, calls, pool)));
        }
        for t in &trials {
            match t {
                BoundTrial::Peak(lp, _, iters) => {
                    let (run, iters) = (lp.run, *iters);
                    samplers.push(Box::new(move |calls| {
                        let t0 = Instant::now();
                        for _ in 0..calls {
                            pool.broadcast(|_| black_box(run(black_box(iters))));
                        }
                        t0.elapsed().as_secs_f64()
                    }));
                }
                BoundTrial::Bandwidth => {
                    let Some((src, dst)) = bw_bufs.take() else {
                        continue;
                    };
                    samplers.push(Box::new(move |calls| {
                        (0..calls)
                            .map(|_| peak::bandwidth_pass(src, dst, pool))
                            .sum()
                    }));
                }
            }
        }
        let mut members: Vec<Member<'_>> = samplers
            .iter_mut()
            .enumerate()
            .map(|(i, s)| Member {
                sample: s.as_mut(),
                counted: i < n_impls,
            })
            .collect();
        rotation::measure_rotation(&mut members, timing)
    };
    let mut bounds = RotationBounds::default();
    for (j, t) in trials.iter().enumerate() {
        let best_s = rot.samples[n_impls + j]
            .iter()
            .copied()
            .filter(|s| s.is_finite() && *s > 0.0)
            .reduce(f64::min);
        let Some(best_s) = best_s else { continue };
        match t {
            BoundTrial::Peak(lp, names, iters) => {
                let g = threads as f64 * *iters as f64 * lp.flops_per_iter / best_s / 1e9;
                for name in names {
                    bounds.peak_gflops.insert(name.to_string(), g);
                }
            }
            BoundTrial::Bandwidth => {
                bounds.bandwidth_gbs = Some(peak::BANDWIDTH_BYTES as f64 / best_s / 1e9);
            }
        }
    }
    let mut records = Vec::new();
    let mut samples: Vec<&[f64]> = Vec::new();
    let mut ours = Vec::new();
    for (i, imp) in impls.iter().enumerate() {
        let Some(stats) = rot.stats(i) else { continue };
        records.push(record(case, imp, threads, &stats, &bounds));
        samples.push(&rot.samples[i]);
        ours.push(imp.isa.is_some());
    }
    add_ratios(&mut records, &samples, &ours);
    records
}

/// The torch implementations of `case` (one per op: `torch`, `torch-bf16`, …), when the
/// peer runs and torch can express them; an `Err` says why one has no row (printed by the
/// caller).
fn torch_impls(case: &Case, peer: &Arc<Mutex<TorchPeer>>) -> Vec<Result<Impl>> {
    case.torch
        .iter()
        .map(|op| {
            let op = op.clone();
            peer.lock().expect("not poisoned").prepare(&op)?;
            let peer = peer.clone();
            let mut failed = false;
            let id = case.id();
            let dtype = op.dtype();
            let mut imp = Impl::self_timed(TORCH, move |threads, calls| {
                match peer
                    .lock()
                    .expect("not poisoned")
                    .sample(&op, threads, calls)
                {
                    Ok(t) => t,
                    Err(e) => {
                        if !failed {
                            eprintln!("torch: {id}: {e}");
                            failed = true;
                        }
                        f64::NAN
                    }
                }
            });
            if dtype != kernels::DType::F32 {
                imp.name = format!("{TORCH}-{dtype}");
                imp.bytes = Some(case.bytes * dtype.size() as f64 / 4.0);
            }
            Ok(imp)
        })
        .collect()
}

/// Runs every selected (case, thread count) as one rotation ([`measure_case`]), calling
/// `on_group` with the records of each. `pools` holds one pool per entry of
/// `plan.threads`. The progress bar advances once per (case, thread count). `torch`: the
/// torch peer, when it runs.
pub fn run_plan(
    plan: &Plan,
    pools: &[(usize, rayon::ThreadPool)],
    torch: Option<&Arc<Mutex<TorchPeer>>>,
    progress: &ProgressBar,
    on_group: &mut dyn FnMut(&[Record], Bound),
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut bw = BandwidthBuffers::default();
    for case in &plan.cases {
        progress.set_message(format!("{} (preparing inputs)", case.id()));
        let mut impls: Vec<Impl> = (case.setup)()
            .into_iter()
            .filter(|i| plan.wants(i))
            .collect();
        if let Some(peer) = torch.filter(|_| plan.wants(&Impl::peer(TORCH, |_| {}))) {
            for r in torch_impls(case, peer) {
                match r {
                    Ok(imp) => impls.push(imp),
                    Err(e) => {
                        progress.suspend(|| eprintln!("torch: {}: {e}; no torch row", case.id()))
                    }
                }
            }
        }
        for (threads, pool) in pools {
            let threads = *threads;
            progress.set_message(format!("{} t={threads}", case.id()));
            let mut here: Vec<&mut Impl> = impls
                .iter_mut()
                .filter(|i| i.fixed_threads.is_none_or(|t| t == threads))
                .collect();
            let group = measure_case(case, &mut here, threads, pool, &plan.timing, &mut bw);
            on_group(&group, case.bound);
            records.extend(group);
            progress.inc(1);
        }
    }
    records
}

/// GFLOP/s of the drift reference: our best variant on GEMM 256³ at one thread, measured
/// like any case (its median).
pub fn reference_gflops(
    pool1: &rayon::ThreadPool,
    timing: &Timing,
) -> Option<(String, String, f64)> {
    let case = suites::gemm_case(256, 256, 256);
    let best = Isa::best();
    let mut imp = (case.setup)().into_iter().find(|i| i.isa == Some(best))?;
    let rec = measure_case(
        &case,
        &mut [&mut imp],
        1,
        pool1,
        &Timing {
            min_samples: timing.min_samples,
            ..*timing
        },
        &mut BandwidthBuffers::default(),
    )
    .pop()?;
    Some((case.id(), rec.imp, rec.gflops))
}

/// `cargo xtask bench` arguments.
#[derive(Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Run every case (adds GEMM 2048 and the slow scalar variant on large GEMMs) with
    /// longer sampling (about 1 s per implementation instead of 0.4 s, at least 15 rounds).
    #[arg(long)]
    pub full: bool,

    /// Suites or cases to run, comma-separated. Without a `/` a suite (`gemm`); with one a
    /// case id (`gemm/512`); `*` is a wildcard (`gemm/*x*`). A case id named exactly also
    /// runs when it is --full only.
    #[arg(long, value_delimiter = ',', value_name = "PATTERN,...")]
    pub filter: Vec<String>,

    /// Implementations to run, comma-separated: ISA variants (scalar, portable, avx2,
    /// avx512, ...) and peers (matrixmultiply, gemm-crate, materialized-mm, std). Default:
    /// every variant this CPU runs, and the peers. Named variants run even where the quick
    /// run would skip them as too slow.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub variant: Vec<String>,

    /// Peers to run, comma-separated: `all` (the default), `none`, or names
    /// (matrixmultiply, gemm-crate, materialized-mm, std, torch). Given, it chooses the
    /// peers whatever --variant says (--variant then picks only our variants).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub peers: Vec<String>,

    /// Also write the README's performance table (Markdown, with the date, the CPU and the
    /// command that reproduces it) to PATH [default: OUT_DIR/README-table.md].
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    pub markdown: Option<String>,

    /// Thread counts, comma-separated; `all` is every hardware thread. matrixmultiply runs
    /// only at MATMUL_NUM_THREADS threads (1 unless set).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,all",
        value_name = "N,..."
    )]
    pub threads: Vec<String>,

    /// A report.json from an earlier run: after this run, print the change of every
    /// (suite, case, impl, threads) found in both, flagging slowdowns past --threshold.
    #[arg(long, value_name = "OLD.json")]
    pub compare: Option<PathBuf>,

    /// Slowdown of the median, in %, that --compare flags as a REGRESSION.
    #[arg(long, default_value_t = report::REGRESSION_PCT, value_name = "PCT")]
    pub threshold: f64,

    /// Where report.json, report.csv and gemm.svg go [default: WORKSPACE/target/bench].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,

    /// Seconds of samples per implementation and (case, thread count) [default: 0.3, or
    /// 1.0 with --full]; at least 7 rounds (15 with --full) are taken whatever it says.
    #[arg(long, value_name = "SECONDS")]
    pub min_time: Option<f64>,

    /// List the cases and implementations, then exit without measuring.
    #[arg(long)]
    pub list: bool,
}

fn print_list(cases: &[Case]) {
    println!("cases (suite/case  shape):");
    for c in cases {
        let full = if c.full_only { "  [--full]" } else { "" };
        println!("  {:<24} {}{full}", c.id(), c.shape);
    }
    println!("variants on this CPU: {}", available_names().join(", "));
    println!("peers: {}", PEERS.join(", "));
    let names: Vec<&str> = suites::suites().iter().map(|s| s.name).collect();
    println!("suites: {}", names.join(", "));
}

/// Starts the torch peer when the plan wants it: `(peer, info)`; prints one line either
/// way (`torch: not available (...); skipping torch peers` when it cannot).
fn start_torch(plan: &Plan) -> (Option<Arc<Mutex<TorchPeer>>>, Option<TorchInfo>) {
    if !plan.wants_torch() {
        return (None, None);
    }
    let python = crate::torch::python();
    let shown = python.display().to_string();
    match TorchPeer::start(python) {
        Ok(peer) => {
            println!("torch: {} ({shown}), OMP_WAIT_POLICY=PASSIVE", peer.version);
            let info = TorchInfo {
                available: true,
                python: shown,
                version: Some(peer.version.clone()),
                note: None,
            };
            (Some(Arc::new(Mutex::new(peer))), Some(info))
        }
        Err(e) => {
            println!("torch: not available ({shown}: {e}); skipping torch peers");
            let info = TorchInfo {
                available: false,
                python: shown,
                version: None,
                note: Some(e.to_string()),
            };
            (None, Some(info))
        }
    }
}

/// The command line that reproduces this run (`cargo xtask bench ...`), shell-quoted.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| markdown::shell_quote(&a))
        .collect();
    format!("cargo xtask {}", args.join(" "))
}

/// Runs `cargo xtask bench`.
///
/// # Errors
/// Bad arguments, an unreadable `--compare` file, or files that cannot be written.
pub fn run(args: &BenchArgs) -> Result<()> {
    let cases: Vec<Case> = suites::suites().iter().flat_map(|s| (s.cases)()).collect();
    if args.list {
        print_list(&cases);
        return Ok(());
    }
    let plan = Plan::from_args(args, cases)?;
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(format!("--threshold {}: expected a percentage ≥ 0", args.threshold).into());
    }
    // Read the old report and create the output directory before spending minutes.
    let old = match &args.compare {
        Some(p) => Some(report::read_json(p)?),
        None => None,
    };
    let out_dir = args.out_dir.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let md_path = args.markdown.as_ref().map(|p| {
        if p.trim().is_empty() {
            out_dir.join("README-table.md")
        } else {
            PathBuf::from(p)
        }
    });
    let run_info = RunInfo {
        date_utc: markdown::utc_date(std::time::SystemTime::now()),
        command: command_line(),
    };

    let pools = plan
        .threads
        .iter()
        .map(|&t| Ok((t, crate::thread_pool(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let pool1 = crate::thread_pool(1)?;

    let wants_mm = plan.wants(&Impl::peer(MATRIXMULTIPLY, |_| {}));
    if wants_mm {
        match matrixmultiply_threads() {
            Some(t) if !plan.threads.contains(&t) => eprintln!(
                "note: matrixmultiply runs only at {MATMUL_THREADS_VAR}={t} threads, \
                 which --threads does not include: it is skipped"
            ),
            Some(t) => eprintln!(
                "note: matrixmultiply sizes its own pool once per process \
                 ({MATMUL_THREADS_VAR}={t}): it is measured at {t} thread(s) only"
            ),
            None => {
                eprintln!("note: {MATMUL_THREADS_VAR} unset or invalid: matrixmultiply is skipped")
            }
        }
    }
    let (torch, torch_info) = start_torch(&plan);

    eprintln!("measuring FMA peak and memory bandwidth ...");
    let machine = peak::measure_machine(&pools);
    print!("{}", report::machine_summary(&machine));
    let drift_start = reference_gflops(&pool1, &plan.timing);

    let units = (plan.cases.len() * pools.len()) as u64;
    let progress = ProgressBar::with_draw_target(Some(units), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid progress template"),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    println!(
        "ratios: t/best = time / time of our fastest variant, per round (> 1: slower); \
         % limit: of the peak or bandwidth measured in the same rotation"
    );
    println!("{}", report::table_header());
    let records = run_plan(
        &plan,
        &pools,
        torch.as_ref(),
        &progress,
        &mut |group, bound| {
            progress.suspend(|| {
                for r in group {
                    println!("{}", report::table_row(r, &machine, bound));
                }
            });
        },
    );
    progress.finish_and_clear();
    drop(torch);

    let drift = match (drift_start, reference_gflops(&pool1, &plan.timing)) {
        (Some((case, imp, a)), Some((_, _, b))) => {
            let d = Drift::new(&case, &imp, 1, a, b);
            println!("\n{}", d.line());
            Some(d)
        }
        _ => None,
    };
    let errors = records.iter().filter(|r| r.measuring_error).count();
    if errors > 0 {
        println!(
            "{errors} result(s) above 100 % of the bound measured beside them: MEAS.ERR \
             (measuring_error in report.json), not results"
        );
    }

    let rep = Report {
        machine,
        results: records,
        run: Some(run_info),
        drift,
        torch: torch_info,
    };
    let json = out_dir.join("report.json");
    let csv = out_dir.join("report.csv");
    report::write_json(&json, &rep)?;
    report::write_csv(&csv, &rep.results)?;
    println!("\nwrote {}", json.display());
    println!("wrote {}", csv.display());
    let svg = out_dir.join("gemm.svg");
    if chart::gemm_chart(&svg, &rep.results, &rep.machine)? {
        println!("wrote {}", svg.display());
    } else {
        println!(
            "no square GEMM results at 1 thread: {} not drawn",
            svg.display()
        );
    }
    if let Some(md) = md_path {
        std::fs::write(&md, markdown::table(&rep))
            .map_err(|e| format!("cannot write {}: {e}", md.display()))?;
        println!("wrote {}", md.display());
    }

    if let Some(old) = old {
        let cmp = report::compare(&old.results, &rep.results);
        println!();
        if old.machine.cpu != rep.machine.cpu {
            println!(
                "warning: comparing across machines ({} vs {})",
                old.machine.cpu, rep.machine.cpu
            );
        }
        print!("{}", report::format_comparison(&cmp, args.threshold));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(suite: &'static str, name: &str) -> Case {
        Case::new(suite, name, "s", 1.0, 1.0, Bound::Compute, Vec::new)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::from_samples(&[5.0, 1.0, 3.0], 7).unwrap();
        assert_eq!(
            (s.median_s, s.min_s, s.max_s, s.samples),
            (3.0, 1.0, 5.0, 3)
        );
        assert_eq!(s.calls_per_sample, 7);
        let s = Stats::from_samples(&[4.0, 1.0, 2.0, 3.0], 1).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s), (2.5, 1.0, 4.0));
        let s = Stats::from_samples(&[2.0], 1).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s), (2.0, 2.0, 2.0));
    }

    #[test]
    fn stats_refuse_empty_and_nan() {
        assert!(Stats::from_samples(&[], 1).is_none());
        assert!(Stats::from_samples(&[1.0, f64::NAN], 1).is_none());
    }

    #[test]
    fn measure_takes_min_samples_and_orders_stats() {
        let mut calls = 0u64;
        let timing = Timing {
            warmup_s: 0.0,
            min_time_s: 0.0,
            min_samples: 7,
            max_samples: 100,
            sample_s: 0.0,
        };
        let s = measure(&mut || calls += 1, &timing);
        assert_eq!(s.samples, 7);
        assert_eq!(s.calls_per_sample, 1);
        assert_eq!(calls, 1 + 7);
        assert!(s.min_s <= s.median_s && s.median_s <= s.max_s);
    }

    #[test]
    fn measure_batches_fast_calls_and_respects_max_samples() {
        let timing = Timing {
            warmup_s: 0.001,
            min_time_s: 10.0,
            min_samples: 1,
            max_samples: 3,
            sample_s: 0.001,
        };
        let mut x = 0u64;
        let s = measure(&mut || x = std::hint::black_box(x + 1), &timing);
        assert_eq!(s.samples, 3);
        assert!(s.calls_per_sample > 1, "{s:?}");
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("gemm", "gemm"));
        assert!(!glob_match("gemm", "gemm2"));
        assert!(glob_match("*", ""));
        assert!(glob_match("g*", "gemm"));
        assert!(glob_match("*/512", "gemm/512"));
        assert!(glob_match("a*b*c", "a_b_b_c"));
        assert!(!glob_match("a*b*c", "a_c"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn filters_pick_suites_and_cases() {
        let all = || {
            vec![
                case("gemm", "64"),
                case("gemm", "64x64x256"),
                case("gemm", "2048").full_only(),
                case("softmax", "64"),
            ]
        };
        let ids = |v: Vec<Case>| v.iter().map(Case::id).collect::<Vec<_>>();
        assert_eq!(
            ids(select_cases(all(), &[], false).unwrap()),
            ["gemm/64", "gemm/64x64x256", "softmax/64"]
        );
        assert_eq!(ids(select_cases(all(), &[], true).unwrap()).len(), 4);
        assert_eq!(
            ids(select_cases(all(), &strings(&["gemm/64"]), false).unwrap()),
            ["gemm/64"]
        );
        assert_eq!(
            ids(select_cases(all(), &strings(&["gemm"]), false).unwrap()),
            ["gemm/64", "gemm/64x64x256"]
        );
        assert_eq!(
            ids(select_cases(all(), &strings(&["*/64"]), false).unwrap()),
            ["gemm/64", "softmax/64"]
        );
        // An exact id runs a --full case in the quick run; a pattern does not.
        assert_eq!(
            ids(select_cases(all(), &strings(&["gemm/2048"]), false).unwrap()),
            ["gemm/2048"]
        );
        assert!(select_cases(all(), &strings(&["gemm/20*"]), false).is_err());
    }

    #[test]
    fn unknown_filter_is_an_error_listing_cases() {
        let err = select_cases(vec![case("gemm", "64")], &strings(&["gem"]), false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"gem\"") && err.contains("gemm/64"), "{err}");
    }

    #[test]
    fn threads_parse_all_numbers_and_refuse_junk() {
        assert_eq!(
            parse_threads(&strings(&["1", "all"]), 8).unwrap(),
            vec![1, 8]
        );
        assert_eq!(parse_threads(&strings(&["all", "1"]), 1).unwrap(), vec![1]);
        assert_eq!(
            parse_threads(&strings(&["4", "2", "ALL"]), 2).unwrap(),
            vec![2, 4]
        );
        for bad in ["0", "-1", "two", ""] {
            assert!(parse_threads(&strings(&[bad]), 2).is_err(), "{bad:?}");
        }
        assert!(parse_threads(&[], 2).is_err());
    }

    #[test]
    fn variants_are_canonicalised_and_checked() {
        assert_eq!(parse_variants(&[]).unwrap(), None);
        assert_eq!(
            parse_variants(&strings(&["SCALAR", "MatrixMultiply", "gemm-crate"])).unwrap(),
            Some(strings(&["scalar", "matrixmultiply", "gemm-crate"]))
        );
        let err = parse_variants(&strings(&["sse9"])).unwrap_err().to_string();
        assert!(err.contains("unknown") && err.contains("scalar"), "{err}");
        // NEON is never supported by this build, so it is always refused as unavailable.
        let err = parse_variants(&strings(&["neon"])).unwrap_err().to_string();
        assert!(err.contains("not on this CPU"), "{err}");
    }

    #[test]
    fn plan_skips_slow_impls_unless_full_or_named() {
        let slow = Impl::ours(Isa::Scalar, |_| {}).slow_if(true);
        let fast = Impl::peer(GEMM_CRATE, |_| {});
        let args = BenchArgs {
            threads: strings(&["1"]),
            ..Default::default()
        };
        let mk = |a: &BenchArgs| Plan::from_args(a, vec![case("gemm", "64")]).unwrap();
        let quick = mk(&args);
        assert!(!quick.wants(&slow) && quick.wants(&fast));
        let full = mk(&BenchArgs {
            full: true,
            ..args.clone()
        });
        assert!(full.wants(&slow) && full.wants(&fast));
        assert_eq!(full.timing, Timing::FULL);
        let named = mk(&BenchArgs {
            variant: strings(&["scalar"]),
            ..args.clone()
        });
        assert!(named.wants(&slow) && !named.wants(&fast));
        let bad = Plan::from_args(
            &BenchArgs {
                min_time: Some(-1.0),
                ..args
            },
            vec![case("gemm", "64")],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn records_report_percent_of_the_rotation_bounds() {
        let bounds = RotationBounds {
            peak_gflops: [("avx2".to_string(), 100.0), ("scalar".to_string(), 40.0)]
                .into_iter()
                .collect(),
            bandwidth_gbs: Some(10.0),
        };
        let stats = Stats::from_samples(&[0.5, 1.0, 2.0], 1).unwrap();
        let c = Case::new("gemm", "x", "s", 50e9, 2e9, Bound::Compute, Vec::new);
        let ours = Impl::ours(Isa::Avx2Fma, |_| {});
        let r = record(&c, &ours, 1, &stats, &bounds);
        assert_eq!((r.gflops, r.gbs, r.pct_peak), (50.0, 2.0, Some(50.0)));
        assert_eq!((r.median_s, r.min_s, r.max_s, r.rounds), (1.0, 0.5, 2.0, 3));
        assert_eq!((r.rotation_peak_gflops, r.pct_bw), (Some(100.0), None));
        assert!(!r.measuring_error);
        // A peer is measured against the best variant's peak.
        let peer = Impl::peer(MATRIXMULTIPLY, |_| {});
        assert_eq!(record(&c, &peer, 1, &stats, &bounds).pct_peak, Some(50.0));
        // Above its bound: flagged as a measuring error, the number kept beside the flag.
        let r = record(&c, &Impl::ours(Isa::Scalar, |_| {}), 1, &stats, &bounds);
        assert_eq!(r.pct_peak, Some(125.0));
        assert!(r.measuring_error);
        // No peak measured: null rather than a made-up number.
        let none = RotationBounds::default();
        assert_eq!(record(&c, &ours, 2, &stats, &none).pct_peak, None);
        let m = Case::new("exp", "x", "s", 1e9, 8e9, Bound::Memory, Vec::new);
        let r = record(&m, &ours, 1, &stats, &bounds);
        assert_eq!(
            (r.pct_peak, r.pct_bw, r.rotation_bw_gbs),
            (None, Some(80.0), Some(10.0))
        );
        let cache = Case::new("exp", "x", "s", 1e9, 8e9, Bound::Cache, Vec::new);
        assert_eq!(record(&cache, &ours, 1, &stats, &bounds).pct_bw, None);
    }

    #[test]
    fn ratios_use_our_fastest_variant_as_baseline() {
        let rec = |imp: &str, median_s: f64| Record {
            imp: imp.into(),
            median_s,
            ..Record::default()
        };
        let mut recs = vec![
            rec("scalar", 4.0),
            rec("avx2", 1.0),
            rec("matrixmultiply", 0.5),
        ];
        let (s, a, m) = ([4.0, 4.0, 8.0], [1.0, 1.0, 2.0], [0.5, 0.6, 1.0]);
        add_ratios(&mut recs, &[&s, &a, &m], &[true, true, false]);
        assert!(recs.iter().all(|r| r.baseline.as_deref() == Some("avx2")));
        assert_eq!(
            (recs[0].ratio, recs[0].ratio_min, recs[0].ratio_max),
            (Some(4.0), Some(4.0), Some(4.0))
        );
        assert_eq!(recs[1].ratio, Some(1.0));
        assert_eq!(
            (recs[2].ratio, recs[2].ratio_min, recs[2].ratio_max),
            (Some(0.5), Some(0.5), Some(0.6))
        );
        // Peers only: no baseline, no ratios.
        let mut peers = vec![rec("matrixmultiply", 1.0)];
        add_ratios(&mut peers, &[&m], &[false]);
        assert_eq!((peers[0].ratio, peers[0].baseline.as_deref()), (None, None));
    }

    #[test]
    fn peers_parse_all_none_and_names() {
        assert_eq!(parse_peers(&[]).unwrap(), None);
        assert_eq!(parse_peers(&strings(&["none"])).unwrap(), Some(vec![]));
        assert_eq!(
            parse_peers(&strings(&["all"])).unwrap().unwrap().len(),
            PEERS.len()
        );
        assert_eq!(
            parse_peers(&strings(&["Torch", "matrixmultiply", "torch"])).unwrap(),
            Some(strings(&["matrixmultiply", "torch"]))
        );
        let err = parse_peers(&strings(&["numpy"])).unwrap_err().to_string();
        assert!(err.contains("numpy") && err.contains("torch"), "{err}");
    }

    #[test]
    fn peers_choose_the_peers_and_variant_keeps_its_meaning() {
        let args = BenchArgs {
            threads: strings(&["1"]),
            ..Default::default()
        };
        let mk = |a: &BenchArgs| Plan::from_args(a, vec![case("gemm", "64")]).unwrap();
        let (avx2, mm, torch) = (
            Impl::ours(Isa::Avx2Fma, |_| {}),
            Impl::peer(MATRIXMULTIPLY, |_| {}),
            Impl::peer(TORCH, |_| {}),
        );
        let all = mk(&args);
        assert!(all.wants(&avx2) && all.wants(&mm) && all.wants(&torch));
        let only_torch = mk(&BenchArgs {
            peers: strings(&["torch"]),
            ..args.clone()
        });
        assert!(only_torch.wants(&avx2) && !only_torch.wants(&mm) && only_torch.wants(&torch));
        let none = mk(&BenchArgs {
            peers: strings(&["none"]),
            ..args.clone()
        });
        assert!(none.wants(&avx2) && !none.wants(&mm) && !none.wants(&torch));
        // --variant alone: as before, only what it names (peers included).
        let v = mk(&BenchArgs {
            variant: strings(&["avx2", "matrixmultiply"]),
            ..args.clone()
        });
        assert!(v.wants(&avx2) && v.wants(&mm) && !v.wants(&torch));
        // --variant picks ours, --peers the peers.
        let both = mk(&BenchArgs {
            variant: strings(&["scalar"]),
            peers: strings(&["torch"]),
            ..args.clone()
        });
        assert!(!both.wants(&avx2) && !both.wants(&mm) && both.wants(&torch));
        // No case has a torch op here, so torch is not started.
        assert!(!all.wants_torch());
        assert!(parse_peers(&strings(&["bogus"])).is_err());
    }

    /// A deterministic amount of work: `n` rounds of a black-boxed integer recurrence.
    fn spin(n: u64) {
        let mut x = black_box(1u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        black_box(x);
    }

    /// The rotation through the real runner: a fake variant of ours and a fake peer doing
    /// exactly twice its work. Samples of 3 ms, the median of the per-round ratios: robust
    /// to a busy host, which slows both alike within a round.
    #[test]
    fn twice_the_work_reads_a_ratio_close_to_two() {
        let c = Case::new("fake", "spin", "n", 1e6, 1.0, Bound::Compute, Vec::new);
        let mut ours = Impl::ours(Isa::Scalar, |_| spin(20_000));
        let mut peer = Impl::peer(STD, |_| spin(40_000));
        let pool = crate::thread_pool(1).unwrap();
        let timing = Timing {
            warmup_s: 0.02,
            min_time_s: 0.1,
            min_samples: 15,
            max_samples: 1000,
            sample_s: 0.003,
        };
        let recs = measure_case(
            &c,
            &mut [&mut ours, &mut peer],
            1,
            &pool,
            &timing,
            &mut BandwidthBuffers::default(),
        );
        assert_eq!(recs.len(), 2);
        let (a, b) = (&recs[0], &recs[1]);
        assert_eq!((a.imp.as_str(), b.imp.as_str()), ("scalar", STD));
        assert_eq!(a.ratio, Some(1.0));
        assert_eq!(b.baseline.as_deref(), Some("scalar"));
        let r = b.ratio.unwrap();
        assert!((1.6..2.5).contains(&r), "ratio {r}: {b:?}");
        assert!(b.ratio_min.unwrap() <= r && r <= b.ratio_max.unwrap());
        assert!(a.rounds >= 15 && a.rounds == b.rounds);
        // The scalar peak loop rode along: both have a bound, from the same rotation.
        assert!(a.rotation_peak_gflops.is_some() && a.pct_peak.is_some());
    }
}
