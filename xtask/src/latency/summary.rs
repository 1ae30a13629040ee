//! The latency suite's numbers: the per-round times of one (case, thread count)
//! ([`Samples`]), their summary ([`Row`]: median, and the per-round ratios to the
//! back-to-back time, the one-thread time and the one-thread twin's), the targets each
//! row misses, and the table.

use super::cond::{Column, Cond, Target};
use crate::report::fmt_time;
use crate::rotation::ratio_stats;
use crate::stats::Stats;
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Threads of the default call (the one-thread conditions are `1t` and `1t-…`).
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
    /// The one-thread twin's condition ([`Cond::twin`]: `1t-gap10` for `gap10`), for the
    /// multi-thread gap and "after" conditions.
    pub twin: Option<String>,
    /// Our time over the twin's time, per round (the `×1t same` column): what the thread
    /// team adds over one thread in the same machine state.
    pub vs_1t_same: Option<Ratio>,
    /// torch's median time in this condition, seconds (when torch ran and has it).
    pub torch_median_s: Option<f64>,
    /// torch's time over its own back-to-back time, per round.
    pub torch_vs_b2b: Option<Ratio>,
    /// The targets this row misses ([`Target::label`]: `"≤ 1.15× b2b"`), by its median
    /// ratios.
    pub missed: Vec<String>,
}

impl Row {
    /// The row's ratio in `column`.
    pub fn ratio(&self, column: Column) -> Option<Ratio> {
        match column {
            Column::VsB2b => self.vs_b2b,
            Column::VsOneThread => self.vs_1t,
            Column::VsTwin => self.vs_1t_same,
        }
    }

    /// The row's targets ([`Cond::targets`] of its condition; none for an unknown name).
    pub fn targets(&self) -> Vec<Target> {
        Cond::parse(&self.cond).map_or(Vec::new(), Cond::targets)
    }

    /// The targets whose column's median ratio is above the limit. A target whose ratio
    /// is absent (no twin measured, say) is not judged.
    pub fn missed_targets(&self) -> Vec<Target> {
        self.targets()
            .into_iter()
            .filter(|t| {
                self.ratio(t.column())
                    .is_some_and(|r| t.missed_by(r.median))
            })
            .collect()
    }
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
/// per-round ratios to b2b, 1t and its one-thread twin, torch's beside it, and the
/// targets missed.
pub fn summarize(case: &str, shape: &str, threads: usize, s: &Samples) -> Vec<Row> {
    let empty = Vec::new();
    let b2b = s.ours.get(&Cond::B2B).unwrap_or(&empty);
    let one = s.ours.get(&Cond::ONE_THREAD).unwrap_or(&empty);
    let torch_b2b = s.torch.get(&Cond::B2B).unwrap_or(&empty);
    let mut rows = Vec::new();
    for (&cond, times) in &s.ours {
        let Some(median_s) = median(times) else {
            continue;
        };
        let vs_b2b = (cond != Cond::B2B && cond != Cond::ONE_THREAD)
            .then(|| Ratio::per_round(times, b2b))
            .flatten();
        let vs_1t = (cond != Cond::ONE_THREAD)
            .then(|| Ratio::per_round(times, one))
            .flatten();
        let twin = cond.twin();
        let vs_1t_same = twin
            .and_then(|t| s.ours.get(&t))
            .and_then(|t| Ratio::per_round(times, t));
        let torch = s.torch.get(&cond);
        let torch_vs_b2b = (cond != Cond::B2B)
            .then(|| torch.and_then(|t| Ratio::per_round(t, torch_b2b)))
            .flatten();
        let mut row = Row {
            case: case.to_string(),
            shape: shape.to_string(),
            threads,
            cond: cond.name(),
            rounds: times.len(),
            median_s,
            vs_b2b,
            vs_1t,
            twin: twin.map(Cond::name),
            vs_1t_same,
            torch_median_s: torch.and_then(|t| median(t)),
            torch_vs_b2b,
            missed: Vec::new(),
        };
        row.missed = row.missed_targets().iter().map(|t| t.label()).collect();
        rows.push(row);
    }
    rows
}

/// The table's columns after the case: thread count, condition, median, then the ratio
/// cells (19 wide, a flag after each).
macro_rules! table_line {
    ($($arg:expr),* $(,)?) => {
        format!(
            "{:<22} {:>3} {:<14} {:>10} {:>19} {:>19} {:>19} {:>10} {:>19}",
            $($arg),*
        )
    };
}

/// The table's column titles.
pub fn table_header() -> String {
    table_line!(
        "case",
        "thr",
        "condition",
        "median",
        "×b2b (min–max)",
        "×1t (min–max)",
        "×1t same (min–max)",
        "torch",
        "torch ×b2b"
    )
}

/// One row of the table; a ratio that misses one of its targets ends in `!`.
pub fn table_row(r: &Row) -> String {
    let missed = r.missed_targets();
    let cell = |x: Option<Ratio>, column: Option<Column>| match x {
        Some(x) => {
            let flag = if missed.iter().any(|t| Some(t.column()) == column) {
                "!"
            } else {
                " "
            };
            format!("{}{flag}", x.cell())
        }
        None => "- ".to_string(),
    };
    table_line!(
        r.case,
        r.threads,
        r.cond,
        fmt_time(r.median_s),
        cell(r.vs_b2b, Some(Column::VsB2b)),
        cell(r.vs_1t, Some(Column::VsOneThread)),
        cell(r.vs_1t_same, Some(Column::VsTwin)),
        r.torch_median_s.map_or("-".to_string(), fmt_time),
        cell(r.torch_vs_b2b, None),
    )
}

/// How many of `rows` miss `target`, and how many it was judged on (rows whose
/// condition has it and whose ratio was measured).
pub fn miss_count(rows: &[Row], target: Target) -> (usize, usize) {
    let judged: Vec<&Row> = rows
        .iter()
        .filter(|r| r.targets().contains(&target) && r.ratio(target.column()).is_some())
        .collect();
    let missed = judged
        .iter()
        .filter(|r| r.missed_targets().contains(&target))
        .count();
    (missed, judged.len())
}

/// The lines under the table: each target with how many rows miss it (so a reader sees
/// which misses are the machine's, `×1t` alone, and which the team's, `×1t same`), then
/// how many rows miss any.
pub fn footer(rows: &[Row]) -> String {
    let mut out = String::from("targets (on the median ratio, `!` = missed):\n");
    for t in Target::ALL {
        let (missed, judged) = miss_count(rows, t);
        out.push_str(&format!(
            "  {}: {missed} of {judged} rows miss it\n",
            t.description()
        ));
    }
    let missed = rows.iter().filter(|r| !r.missed.is_empty()).count();
    out.push_str(&format!("{missed} of {} rows miss one.", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::super::cond::After;
    use super::*;

    fn gap(ms: u32) -> Cond {
        Cond::team(After::Gap(ms))
    }

    fn samples() -> Samples {
        let mut s = Samples::default();
        for (b2b, one, g1, g1_1t, g50, pool, pool_1t) in [
            (1.0, 2.0, 1.1, 1.0, 3.0, 2.0, 1.0),
            (2.0, 2.0, 2.6, 2.0, 4.0, 2.0, 2.0),
            (1.0, 1.0, 1.2, 1.2, 1.0, 1.0, 1.0),
        ] {
            s.push(Cond::B2B, b2b);
            s.push(Cond::ONE_THREAD, one);
            s.push(gap(1), g1);
            s.push(Cond::alone(After::Gap(1)), g1_1t);
            s.push(gap(50), g50);
            s.push(Cond::team(After::Pool), pool);
            s.push(Cond::alone(After::Pool), pool_1t);
            s.push_torch(Cond::B2B, 10.0);
            s.push_torch(gap(1), 12.0);
        }
        s
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
    fn summary_has_medians_ratios_twins_torch_and_missed_targets() {
        let rows = summarize("latency/gemm-64", "n=64", 2, &samples());
        let conds: Vec<&str> = rows.iter().map(|r| r.cond.as_str()).collect();
        assert_eq!(
            conds,
            [
                "b2b",
                "1t",
                "gap1",
                "1t-gap1",
                "gap50",
                "after-pool",
                "1t-after-pool"
            ]
        );
        let b2b = &rows[0];
        assert_eq!(b2b.median_s, 1.0);
        assert!(b2b.vs_b2b.is_none() && b2b.twin.is_none() && b2b.vs_1t_same.is_none());
        // b2b/1t per round: 0.5, 1, 1 → median 1: not slower than one thread.
        assert_eq!(b2b.vs_1t.unwrap().median, 1.0);
        assert!(b2b.missed.is_empty());
        assert_eq!(b2b.torch_median_s, Some(10.0));
        assert!(b2b.torch_vs_b2b.is_none());
        let one = &rows[1];
        assert!(one.vs_b2b.is_none() && one.vs_1t.is_none() && one.missed.is_empty());
        // gap1/b2b per round: 1.1, 1.3, 1.2 → median 1.2 > 1.15; /1t: 0.55, 1.3, 1.2;
        // /1t-gap1: 1.1, 1.3, 1.0 → 1.1 > 1.05.
        let g1 = &rows[2];
        let r = g1.vs_b2b.unwrap();
        assert!((r.median - 1.2).abs() < 1e-12 && (r.max - 1.3).abs() < 1e-12);
        assert_eq!(g1.twin.as_deref(), Some("1t-gap1"));
        let same = g1.vs_1t_same.unwrap();
        assert!((same.median - 1.1).abs() < 1e-12 && same.min == 1.0);
        assert_eq!(g1.missed, ["≤ 1.15× b2b", "≤ 1.05× 1t", "≤ 1.05× 1t same"]);
        assert!((g1.torch_vs_b2b.unwrap().median - 1.2).abs() < 1e-12);
        // The twin row itself has no twin and no target, but its ×b2b and ×1t.
        let g1_1t = &rows[3];
        assert!(g1_1t.twin.is_none() && g1_1t.vs_1t_same.is_none());
        assert!(g1_1t.missed.is_empty() && g1_1t.vs_1t.is_some());
        // gap50: no twin measured, so only the one-thread target is judged (1.5, 2, 1).
        let g50 = &rows[4];
        assert_eq!(g50.twin.as_deref(), Some("1t-gap50"));
        assert!(g50.vs_1t_same.is_none());
        assert_eq!(g50.missed, ["≤ 1.05× 1t"]);
        assert!(g50.torch_median_s.is_none());
        // after-pool: 1, 1, 1 × 1t: met; × 1t-after-pool: 2, 1, 1 → 1: met.
        let pool = &rows[5];
        assert!(pool.missed.is_empty());
        assert_eq!(pool.vs_1t_same.unwrap().median, 1.0);
        assert_eq!(pool.vs_1t_same.unwrap().max, 2.0);
        assert_eq!(pool.rounds, 3);
    }

    #[test]
    fn team_misses_are_told_apart_from_the_machines() {
        // after-torch 1.3× 1t, but its one-thread twin is as slow: the machine's miss.
        // gap10 1.3× 1t and 1.3× its twin: the team's.
        let mut s = Samples::default();
        for _ in 0..3 {
            s.push(Cond::B2B, 1.0);
            s.push(Cond::ONE_THREAD, 1.0);
            s.push(Cond::team(After::Torch), 1.3);
            s.push(Cond::alone(After::Torch), 1.3);
            s.push(gap(10), 1.3);
            s.push(Cond::alone(After::Gap(10)), 1.0);
        }
        let rows = summarize("c", "s", 2, &s);
        let by = |n: &str| rows.iter().find(|r| r.cond == n).unwrap();
        assert_eq!(by("after-torch").missed, ["≤ 1.05× 1t"]);
        assert_eq!(
            by("gap10").missed,
            ["≤ 1.15× b2b", "≤ 1.05× 1t", "≤ 1.05× 1t same"]
        );
        assert_eq!(miss_count(&rows, Target::VsOneThread), (2, 2));
        assert_eq!(miss_count(&rows, Target::VsTwin), (1, 2));
        assert_eq!(miss_count(&rows, Target::ShortGapVsB2b), (1, 1));
        assert_eq!(miss_count(&rows, Target::B2bVsOneThread), (0, 1));
        let f = footer(&rows);
        assert!(
            f.contains("its 1t twin (`×1t same`: the team's share): 1 of 2"),
            "{f}"
        );
        assert!(f.contains("2 of 6 rows miss one."), "{f}");
    }

    #[test]
    fn b2b_may_be_two_percent_slower_than_one_thread() {
        for (b2b, missed) in [(1.02, false), (1.03, true)] {
            let mut s = Samples::default();
            s.push(Cond::B2B, b2b);
            s.push(Cond::ONE_THREAD, 1.0);
            let rows = summarize("c", "s", 2, &s);
            assert_eq!(rows[0].missed.is_empty(), !missed, "{b2b}");
            assert_eq!(table_row(&rows[0]).contains('!'), missed, "{b2b}");
        }
    }

    #[test]
    fn table_flags_missed_targets_and_footer_counts_them() {
        let rows = summarize("latency/gemm-64", "n=64", 2, &samples());
        let lines: Vec<String> = rows.iter().map(table_row).collect();
        assert!(lines[2].contains("1.20 (1.10–1.30)!"), "{}", lines[2]);
        assert!(lines[2].contains("1.10 (1.00–1.30)!"), "{}", lines[2]);
        assert!(lines[5].contains("1.00 (1.00–1.00) "), "{}", lines[5]);
        assert!(lines[5].contains("1.00 (1.00–2.00) "), "{}", lines[5]);
        assert!(lines[1].contains(" - "), "{}", lines[1]);
        assert!(lines[6].contains("1t-after-pool "), "{}", lines[6]);
        assert!(!lines[3].contains('!'), "{}", lines[3]);
        for l in &lines {
            assert_eq!(
                l.chars().count(),
                lines[0].chars().count(),
                "{l}\n{}",
                lines[0]
            );
        }
        assert_eq!(table_header().chars().count(), lines[0].chars().count());
        let f = footer(&rows);
        assert!(f.contains("2 of 7 rows miss one."), "{f}");
        assert!(f.contains("b2b: 1 of 1 rows"), "{f}");
        assert!(f.contains("(machine + team): 2 of 3 rows"), "{f}");
        assert!(f.contains("the team's share): 1 of 2 rows"), "{f}");
        let empty = summarize("x", "y", 1, &Samples::default());
        assert!(empty.is_empty());
    }
}
