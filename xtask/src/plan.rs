//! What `cargo xtask bench` runs: its arguments ([`BenchArgs`]) and the [`Plan`] they select
//! (cases by `--filter`, implementations by `--variant` and `--peers`, thread counts, timing).

use crate::case::{Case, Impl};
use crate::compare::REGRESSION_PCT;
use crate::peers::{PEERS, TORCH};
use crate::stats::Timing;
use crate::Result;
use clap::Args;
use kernels::Isa;
use std::path::PathBuf;

/// Whether glob `pattern` (`*` matches any run of characters) matches all of `text`.
///
/// ```
/// use xtask::plan::glob_match;
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

/// The names of the variants this CPU runs (`scalar`, `portable`, `avx2`, …).
pub fn available_names() -> Vec<&'static str> {
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
    /// avx512, ...) and peers (matrixmultiply, gemm-crate, materialized-mm, std, candle). Default:
    /// every variant this CPU runs, and the peers. Named variants run even where the quick
    /// run would skip them as too slow.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub variant: Vec<String>,

    /// Peers to run, comma-separated: `all` (the default), `none`, or names
    /// (matrixmultiply, gemm-crate, materialized-mm, std, torch, candle). Given, it chooses the
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
    #[arg(long, default_value_t = REGRESSION_PCT, value_name = "PCT")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Bound;
    use crate::peers::{GEMM_CRATE, MATRIXMULTIPLY};

    fn case(suite: &'static str, name: &str) -> Case {
        Case::new(suite, name, "s", 1.0, 1.0, Bound::Compute, Vec::new)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
}
