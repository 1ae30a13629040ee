//! Two reports side by side: the change of every median found in both, slowdowns past a
//! threshold flagged (`cargo xtask compare`, and `cargo xtask bench --compare OLD.json`).

use crate::report::{fmt_time, read_json, Record};
use crate::Result;
use clap::Args;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Default slowdown of the median (in %) that `--compare` flags as a regression.
pub const REGRESSION_PCT: f64 = 5.0;

/// A case found in both reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `suite/case`.
    pub id: String,
    /// Implementation.
    pub imp: String,
    /// Threads.
    pub threads: usize,
    /// Old median, seconds.
    pub old_s: f64,
    /// New median, seconds.
    pub new_s: f64,
    /// Change of the median time in % (positive: slower).
    pub pct: f64,
}

impl Change {
    /// Slower by more than `threshold_pct`.
    pub fn is_regression(&self, threshold_pct: f64) -> bool {
        self.pct > threshold_pct
    }
}

/// Two reports side by side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// Records in both, in the new report's order.
    pub changes: Vec<Change>,
    /// `id impl tN` of records only in the old report.
    pub only_old: Vec<String>,
    /// `id impl tN` of records only in the new report.
    pub only_new: Vec<String>,
}

fn label(r: &Record) -> String {
    format!("{} {} t{}", r.id(), r.imp, r.threads)
}

/// Matches records by (suite, case, impl, threads) and computes the change of the median.
pub fn compare(old: &[Record], new: &[Record]) -> Comparison {
    let old_by_key: HashMap<_, &Record> = old.iter().map(|r| (r.key(), r)).collect();
    let new_keys: HashSet<_> = new.iter().map(Record::key).collect();
    let mut cmp = Comparison::default();
    for r in new {
        match old_by_key.get(&r.key()) {
            Some(o) => cmp.changes.push(Change {
                id: r.id(),
                imp: r.imp.clone(),
                threads: r.threads,
                old_s: o.median_s,
                new_s: r.median_s,
                pct: if o.median_s > 0.0 {
                    100.0 * (r.median_s / o.median_s - 1.0)
                } else {
                    f64::NAN
                },
            }),
            None => cmp.only_new.push(label(r)),
        }
    }
    cmp.only_old = old
        .iter()
        .filter(|r| !new_keys.contains(&r.key()))
        .map(label)
        .collect();
    cmp
}

/// The comparison as text: one line per case, `REGRESSION` past `threshold_pct`, then a
/// summary line.
pub fn format_comparison(cmp: &Comparison, threshold_pct: f64) -> String {
    let mut out =
        format!("change of the median time (+ is slower; REGRESSION past +{threshold_pct}%)\n");
    let _ = writeln!(
        out,
        "{:<22} {:<15} {:>3} {:>10} {:>10} {:>9}",
        "case", "impl", "thr", "old", "new", "change"
    );
    let mut regressions = 0;
    let mut improvements = 0;
    for c in &cmp.changes {
        let flag = if c.is_regression(threshold_pct) {
            regressions += 1;
            "  REGRESSION"
        } else if c.pct < -threshold_pct {
            improvements += 1;
            "  faster"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<22} {:<15} {:>3} {:>10} {:>10} {:>+8.1}%{flag}",
            c.id,
            c.imp,
            c.threads,
            fmt_time(c.old_s),
            fmt_time(c.new_s),
            c.pct
        );
    }
    if !cmp.only_new.is_empty() {
        let _ = writeln!(
            out,
            "new (not in the old report): {}",
            cmp.only_new.join(", ")
        );
    }
    if !cmp.only_old.is_empty() {
        let _ = writeln!(
            out,
            "missing (only in the old report): {}",
            cmp.only_old.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{} compared, {regressions} regression(s), {improvements} faster by more than {threshold_pct}%",
        cmp.changes.len()
    );
    out
}

/// `cargo xtask compare` arguments: two existing reports, no measuring.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The baseline report.json.
    pub old: PathBuf,
    /// The report to judge [default: WORKSPACE/target/bench/report.json].
    pub new: Option<PathBuf>,
    /// Slowdown of the median, in %, flagged as a REGRESSION.
    #[arg(long, default_value_t = REGRESSION_PCT, value_name = "PCT")]
    pub threshold: f64,
}

/// Runs `cargo xtask compare`.
///
/// # Errors
/// Unreadable reports.
pub fn run(args: &CompareArgs) -> Result<()> {
    let old = read_json(&args.old)?;
    let new_path = args
        .new
        .clone()
        .unwrap_or_else(|| crate::default_out_dir().join("report.json"));
    let new = read_json(&new_path)?;
    if old.machine.cpu != new.machine.cpu {
        println!(
            "warning: comparing across machines ({} vs {})",
            old.machine.cpu, new.machine.cpu
        );
    }
    print!(
        "{}",
        format_comparison(&compare(&old.results, &new.results), args.threshold)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, threads: usize, median_s: f64) -> Record {
        Record {
            suite: "gemm".into(),
            case: case.into(),
            imp: "avx2".into(),
            threads,
            median_s,
            ..Record::default()
        }
    }

    #[test]
    fn compare_matches_by_key_and_flags_regressions() {
        let old = vec![
            rec("64", 1, 1.0),
            rec("64", 2, 1.0),
            rec("128", 1, 1.0),
            rec("256", 1, 1.0),
        ];
        let new = vec![
            rec("64", 1, 1.10), // +10%: regression
            rec("64", 2, 1.04), // +4%: within threshold
            rec("128", 1, 0.5), // -50%: faster
            rec("512", 1, 1.0), // new
        ];
        let cmp = compare(&old, &new);
        assert_eq!(cmp.changes.len(), 3);
        assert!((cmp.changes[0].pct - 10.0).abs() < 1e-9);
        assert!(cmp.changes[0].is_regression(REGRESSION_PCT));
        assert!(!cmp.changes[1].is_regression(REGRESSION_PCT));
        assert!((cmp.changes[2].pct + 50.0).abs() < 1e-9);
        assert_eq!(cmp.only_new, ["gemm/512 avx2 t1"]);
        assert_eq!(cmp.only_old, ["gemm/256 avx2 t1"]);
        let text = format_comparison(&cmp, REGRESSION_PCT);
        assert_eq!(text.matches("REGRESSION").count(), 2, "{text}"); // title + one case
        assert!(text.contains("+10.0%  REGRESSION"), "{text}");
        assert!(text.contains("-50.0%  faster"), "{text}");
        assert!(text.contains("3 compared, 1 regression(s)"), "{text}");
        // A stricter threshold flags the +4% too.
        assert!(cmp.changes[1].is_regression(3.0));
    }
}
