//! The latency suite's numbers: the conditions a call is timed in ([`Cond`]), the
//! per-round times of one (case, thread count) ([`Samples`]), their summary ([`Row`]:
//! median, and the per-round ratios to the back-to-back and the one-thread time), the
//! issue's targets and the table.

use crate::report::fmt_time;
use crate::rotation::ratio_stats;
use crate::stats::Stats;
use serde::Serialize;
use std::collections::BTreeMap;

/// The idle gaps, in milliseconds, a call is timed after.
pub const GAPS_MS: [u32; 3] = [1, 10, 50];

/// Longest gap (ms) that the "≤ 1.15× back-to-back" target applies to.
pub const SHORT_GAP_MS: u32 = 10;

/// Most a call after a short gap may take, relative to the back-to-back call.
pub const MAX_SHORT_GAP_VS_B2B: f64 = 1.15;

/// Most a call after any gap or other library's work may take, relative to one thread.
pub const MAX_VS_ONE_THREAD: f64 = 1.05;

/// A condition one call is timed in. The order is the table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cond {
    /// Right after the same call (back to back), at the run's thread count.
    B2b,
    /// Back to back on the calling thread alone (`Parallelism::Sequential`).
    OneThread,
    /// After an idle gap of this many milliseconds (`thread::sleep`).
    Gap(u32),
    /// After the same gap on the calling thread alone: what the gap costs without any
    /// thread team (cold caches, idle CPU states), the reference for [`Cond::Gap`].
    OneThreadGap(u32),
    /// Right after another thread pool's parallel work in this process (an OpenMP-like
    /// team that computes, then spins before it sleeps).
    AfterPool,
    /// Right after a parallel torch op in the torch helper process.
    AfterTorch,
}

impl Cond {
    /// The table's name: `b2b`, `1t`, `gap10`, `after-pool`, `after-torch`.
    ///
    /// ```
    /// use xtask::latency::Cond;
    /// assert_eq!(Cond::Gap(10).name(), "gap10");
    /// ```
    pub fn name(self) -> String {
        match self {
            Cond::B2b => "b2b".into(),
            Cond::OneThread => "1t".into(),
            Cond::Gap(ms) => format!("gap{ms}"),
            Cond::OneThreadGap(ms) => format!("1t-gap{ms}"),
            Cond::AfterPool => "after-pool".into(),
            Cond::AfterTorch => "after-torch".into(),
        }
    }

    /// The issue's targets on the median ratio: `(most × b2b, most × 1t)`. A short gap
    /// (≤ [`SHORT_GAP_MS`]) at most [`MAX_SHORT_GAP_VS_B2B`] × b2b; every gap and "after"
    /// condition at most [`MAX_VS_ONE_THREAD`] × 1t; the back-to-back call itself never
    /// slower than one thread.
    pub fn targets(self) -> (Option<f64>, Option<f64>) {
        match self {
            Cond::B2b => (None, Some(1.0)),
            Cond::OneThread | Cond::OneThreadGap(_) => (None, None),
            Cond::Gap(ms) if ms <= SHORT_GAP_MS => {
                (Some(MAX_SHORT_GAP_VS_B2B), Some(MAX_VS_ONE_THREAD))
            }
            Cond::Gap(_) | Cond::AfterPool | Cond::AfterTorch => (None, Some(MAX_VS_ONE_THREAD)),
        }
    }
}

/// The per-round times (seconds) of one (case, thread count): for each condition one value
/// per round, in round order, ours and torch's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Our call's time in each condition.
    pub ours: BTreeMap<Cond, Vec<f64>>,
    /// torch's op timed in its own process (b2b, 1t and the gaps), by condition.
    pub torch: BTreeMap<Cond, Vec<f64>>,
}

impl Samples {
    /// Adds one round's time of our call in `cond`.
    pub fn push(&mut self, cond: Cond, s: f64) {
        self.ours.entry(cond).or_default().push(s);
    }

    /// Adds one round's time of torch's op in `cond`.
    pub fn push_torch(&mut self, cond: Cond, s: f64) {
        self.torch.entry(cond).or_default().push(s);
    }
}

/// Median, min and max of per-round ratios.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// Median of the per-round ratios.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Ratio {
    /// Per-round `x[i] / base[i]`; `None` when the lengths differ, nothing is there, or a
    /// ratio is not finite.
    ///
    /// ```
    /// use xtask::latency::Ratio;
    /// let r = Ratio::per_round(&[2.0, 3.0, 8.0], &[1.0, 1.0, 2.0]).unwrap();
    /// assert_eq!((r.median, r.min, r.max), (3.0, 2.0, 4.0));
    /// ```
    pub fn per_round(x: &[f64], base: &[f64]) -> Option<Ratio> {
        ratio_stats(x, base).map(|s| Ratio {
            median: s.median_s,
            min: s.min_s,
            max: s.max_s,
        })
    }

    /// `1.23 (1.10–1.40)`; fewer decimals from 10 and 100 up (`423 (25.2–852)`), so a
    /// cell stays within the table's column.
    pub fn cell(&self) -> String {
        format!(
            "{} ({}–{})",
            fmt_ratio(self.median),
            fmt_ratio(self.min),
            fmt_ratio(self.max)
        )
    }
}

/// One line of the table (and of `latency.json`): a condition of a (case, thread count).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Case id (`latency/gemm-256`).
    pub case: String,
    /// Readable shape.
    pub shape: String,
    /// Threads of the default call (the one-thread call is `cond = "1t"`).
    pub threads: usize,
    /// The condition ([`Cond::name`]).
    pub cond: String,
    /// Rounds summarised.
    pub rounds: usize,
    /// Median time of our call in this condition, seconds.
    pub median_s: f64,
    /// Our time over our back-to-back time, per round (absent for `b2b` and `1t`).
    pub vs_b2b: Option<Ratio>,
    /// Our time over our one-thread time, per round (absent for `1t`).
    pub vs_1t: Option<Ratio>,
    /// torch's median time in this condition, seconds (when torch ran and has it).
    pub torch_median_s: Option<f64>,
    /// torch's time over its own back-to-back time, per round.
    pub torch_vs_b2b: Option<Ratio>,
    /// The targets this row misses (`"≤ 1.15× b2b"`), by its median ratios.
    pub missed: Vec<String>,
}

/// A ratio with 2 decimals below 10, 1 below 100, none above.
fn fmt_ratio(x: f64) -> String {
    let digits = if x.abs() < 10.0 {
        2
    } else if x.abs() < 100.0 {
        1
    } else {
        0
    };
    format!("{x:.digits$}")
}

fn median(v: &[f64]) -> Option<f64> {
    Stats::from_samples(v, 1).map(|s| s.median_s)
}

/// The rows of one (case, thread count), in [`Cond`] order: each condition's median, its
/// per-round ratios to b2b and 1t, torch's beside it, and the targets missed.
pub fn summarize(case: &str, shape: &str, threads: usize, s: &Samples) -> Vec<Row> {
    let empty = Vec::new();
    let b2b = s.ours.get(&Cond::B2b).unwrap_or(&empty);
    let one = s.ours.get(&Cond::OneThread).unwrap_or(&empty);
    let torch_b2b = s.torch.get(&Cond::B2b).unwrap_or(&empty);
    let mut rows = Vec::new();
    for (&cond, times) in &s.ours {
        let Some(median_s) = median(times) else {
            continue;
        };
        let vs_b2b = match cond {
            Cond::B2b | Cond::OneThread => None,
            _ => Ratio::per_round(times, b2b),
        };
        let vs_1t = match cond {
            Cond::OneThread => None,
            _ => Ratio::per_round(times, one),
        };
        let torch = s.torch.get(&cond);
        let torch_vs_b2b = match cond {
            Cond::B2b => None,
            _ => torch.and_then(|t| Ratio::per_round(t, torch_b2b)),
        };
        let (max_b2b, max_1t) = cond.targets();
        let mut missed = Vec::new();
        if let (Some(r), Some(m)) = (vs_b2b, max_b2b) {
            if r.median > m {
                missed.push(format!("≤ {m}× b2b"));
            }
        }
        if let (Some(r), Some(m)) = (vs_1t, max_1t) {
            if r.median > m {
                missed.push(format!("≤ {m}× 1t"));
            }
        }
        rows.push(Row {
            case: case.to_string(),
            shape: shape.to_string(),
            threads,
            cond: cond.name(),
            rounds: times.len(),
            median_s,
            vs_b2b,
            vs_1t,
            torch_median_s: torch.and_then(|t| median(t)),
            torch_vs_b2b,
            missed,
        });
    }
    rows
}

/// The table's column titles.
pub fn table_header() -> String {
    format!(
        "{:<22} {:>3} {:<11} {:>10} {:>19} {:>19} {:>10} {:>19}",
        "case",
        "thr",
        "condition",
        "median",
        "×b2b (min–max)",
        "×1t (min–max)",
        "torch",
        "torch ×b2b"
    )
}

/// One row of the table; a ratio that misses its target ends in `!`.
pub fn table_row(r: &Row) -> String {
    let (max_b2b, max_1t) = targets_of(&r.cond);
    let cell = |x: Option<Ratio>, max: Option<f64>| match x {
        Some(x) => {
            let flag = if max.is_some_and(|m| x.median > m) {
                "!"
            } else {
                " "
            };
            format!("{}{flag}", x.cell())
        }
        None => "- ".to_string(),
    };
    format!(
        "{:<22} {:>3} {:<11} {:>10} {:>19} {:>19} {:>10} {:>19}",
        r.case,
        r.threads,
        r.cond,
        fmt_time(r.median_s),
        cell(r.vs_b2b, max_b2b),
        cell(r.vs_1t, max_1t),
        r.torch_median_s.map_or("-".to_string(), fmt_time),
        cell(r.torch_vs_b2b, None),
    )
}

fn targets_of(name: &str) -> (Option<f64>, Option<f64>) {
    let cond = match name {
        "b2b" => Cond::B2b,
        "1t" => Cond::OneThread,
        "after-pool" => Cond::AfterPool,
        "after-torch" => Cond::AfterTorch,
        g => {
            let ms = |p: &str| g.strip_prefix(p).and_then(|ms| ms.parse().ok());
            match (ms("gap"), ms("1t-gap")) {
                (Some(ms), _) => Cond::Gap(ms),
                (_, Some(ms)) => Cond::OneThreadGap(ms),
                _ => return (None, None),
            }
        }
    };
    cond.targets()
}

/// The lines under the table: the targets and how many rows miss one.
pub fn footer(rows: &[Row]) -> String {
    let missed = rows.iter().filter(|r| !r.missed.is_empty()).count();
    format!(
        "targets (on the median ratio, `!` = missed): gap ≤ {SHORT_GAP_MS} ms ≤ \
         {MAX_SHORT_GAP_VS_B2B}× b2b; every gap/after ≤ {MAX_VS_ONE_THREAD}× 1t; b2b ≤ 1× 1t. \
         {missed} of {} rows miss one.",
        rows.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Samples {
        let mut s = Samples::default();
        for (b2b, one, g1, g50, pool) in [
            (1.0, 2.0, 1.1, 3.0, 2.0),
            (2.0, 2.0, 2.6, 4.0, 2.0),
            (1.0, 1.0, 1.2, 1.0, 1.0),
        ] {
            s.push(Cond::B2b, b2b);
            s.push(Cond::OneThread, one);
            s.push(Cond::Gap(1), g1);
            s.push(Cond::Gap(50), g50);
            s.push(Cond::AfterPool, pool);
            s.push_torch(Cond::B2b, 10.0);
            s.push_torch(Cond::Gap(1), 12.0);
        }
        s
    }

    #[test]
    fn conditions_sort_in_table_order_and_have_names() {
        let mut v = vec![
            Cond::OneThreadGap(10),
            Cond::AfterTorch,
            Cond::Gap(50),
            Cond::AfterPool,
            Cond::Gap(1),
            Cond::OneThread,
            Cond::B2b,
            Cond::Gap(10),
        ];
        v.sort();
        let names: Vec<String> = v.into_iter().map(Cond::name).collect();
        assert_eq!(
            names,
            [
                "b2b",
                "1t",
                "gap1",
                "gap10",
                "gap50",
                "1t-gap10",
                "after-pool",
                "after-torch"
            ]
        );
        for n in names {
            assert_ne!(targets_of(&n), (None, Some(0.0)), "{n}");
        }
        assert_eq!(targets_of("gap10"), (Some(1.15), Some(1.05)));
        assert_eq!(targets_of("gap50"), (None, Some(1.05)));
        assert_eq!(targets_of("1t"), (None, None));
        assert_eq!(targets_of("1t-gap50"), (None, None));
        assert_eq!(targets_of("nonsense"), (None, None));
    }

    #[test]
    fn ratios_are_per_round_and_refuse_bad_input() {
        let r = Ratio::per_round(&[2.0, 6.0, 3.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((r.median, r.min, r.max), (2.0, 1.0, 3.0));
        assert!(Ratio::per_round(&[1.0], &[1.0, 2.0]).is_none());
        assert!(Ratio::per_round(&[], &[]).is_none());
        assert!(Ratio::per_round(&[1.0], &[0.0]).is_none());
        assert_eq!(r.cell(), "2.00 (1.00–3.00)");
        let wide = Ratio {
            median: 422.54,
            min: 25.16,
            max: 852.4,
        };
        assert_eq!(wide.cell(), "423 (25.2–852)");
    }

    #[test]
    fn summary_has_medians_ratios_torch_and_missed_targets() {
        let rows = summarize("latency/gemm-64", "n=64", 2, &samples());
        let conds: Vec<&str> = rows.iter().map(|r| r.cond.as_str()).collect();
        assert_eq!(conds, ["b2b", "1t", "gap1", "gap50", "after-pool"]);
        let b2b = &rows[0];
        assert_eq!(b2b.median_s, 1.0);
        assert!(b2b.vs_b2b.is_none());
        // b2b/1t per round: 0.5, 1, 1 → median 1: not slower than one thread.
        assert_eq!(b2b.vs_1t.unwrap().median, 1.0);
        assert!(b2b.missed.is_empty());
        assert_eq!(b2b.torch_median_s, Some(10.0));
        assert!(b2b.torch_vs_b2b.is_none());
        let one = &rows[1];
        assert!(one.vs_b2b.is_none() && one.vs_1t.is_none() && one.missed.is_empty());
        // gap1/b2b per round: 1.1, 1.3, 1.2 → median 1.2 > 1.15; /1t: 0.55, 1.3, 1.2.
        let g1 = &rows[2];
        let r = g1.vs_b2b.unwrap();
        assert!((r.median - 1.2).abs() < 1e-12 && (r.max - 1.3).abs() < 1e-12);
        assert_eq!(g1.missed, ["≤ 1.15× b2b", "≤ 1.05× 1t"]);
        assert!((g1.torch_vs_b2b.unwrap().median - 1.2).abs() < 1e-12);
        // gap50: only the one-thread target applies (1.5, 2, 1 → 1.5).
        assert_eq!(rows[3].missed, ["≤ 1.05× 1t"]);
        assert!(rows[3].torch_median_s.is_none());
        // after-pool: 1, 1, 1 × 1t: met.
        assert!(rows[4].missed.is_empty());
        assert_eq!(rows[4].rounds, 3);
    }

    #[test]
    fn table_flags_missed_targets_and_footer_counts_them() {
        let rows = summarize("latency/gemm-64", "n=64", 2, &samples());
        let lines: Vec<String> = rows.iter().map(table_row).collect();
        assert!(lines[2].contains("1.20 (1.10–1.30)!"), "{}", lines[2]);
        assert!(lines[4].contains("1.00 (1.00–1.00) "), "{}", lines[4]);
        assert!(lines[1].contains(" - "), "{}", lines[1]);
        for l in &lines {
            assert_eq!(
                l.chars().count(),
                lines[0].chars().count(),
                "{l}\n{}",
                lines[0]
            );
        }
        assert_eq!(table_header().chars().count(), lines[0].chars().count());
        assert!(footer(&rows).contains("2 of 5 rows"), "{}", footer(&rows));
        let empty = summarize("x", "y", 1, &Samples::default());
        assert!(empty.is_empty());
    }
}
