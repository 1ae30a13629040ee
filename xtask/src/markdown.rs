//! `--markdown`: the performance table the README shows, generated from a run so that its
//! numbers carry the date, the CPU and the command that reproduces them.
//!
//! One row per (case, thread count): our fastest variant with its GFLOP/s (GB/s where the
//! case counts no flops) and the percentage of the peak or bandwidth measured in the same
//! rotation (`meas. error` where it came out above 100); then, per peer, its time relative
//! to that variant, median and min–max over the rounds (> 1: the peer is slower); then our
//! other variants' relative times. [`table_long`] has one row per implementation.

use crate::report::{Record, Report};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM UTC` of `t`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_600 + 120); // 2000-02-29
/// assert_eq!(xtask::markdown::utc_date(t), "2000-02-29 01:02 UTC");
/// ```
pub fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `arg` quoted for a POSIX shell when it needs it (`'a b'`, `'it'\''s'`).
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn throughput(r: &Record) -> String {
    if r.gflops > 0.0 {
        format!("{:.1} GFLOP/s", r.gflops)
    } else {
        format!("{:.1} GB/s", r.gbs)
    }
}

fn limit(r: &Record) -> String {
    if r.measuring_error {
        return "meas. error".to_string();
    }
    match (r.pct_peak, r.pct_bw) {
        (Some(p), _) => format!("{p:.0} % peak"),
        (None, Some(b)) => format!("{b:.0} % bw"),
        _ => "–".to_string(),
    }
}

fn ratio(r: &Record) -> String {
    match (r.ratio, r.ratio_min, r.ratio_max) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.2}× ({lo:.2}–{hi:.2})"),
        _ => "–".to_string(),
    }
}

fn header(report: &Report, out: &mut String) {
    let (date, cmd) = report
        .run
        .as_ref()
        .map_or(("unknown date", "cargo xtask bench"), |r| {
            (r.date_utc.as_str(), r.command.as_str())
        });
    let _ = writeln!(
        out,
        "Measured {date} on {} ({} threads) with `{cmd}`.",
        report.machine.cpu, report.machine.cores
    );
    out.push('\n');
}

/// The compact Markdown table of `report` (see the [module docs](self)) with its header
/// line (date, CPU, command) and, below it, the run's drift and whether torch ran.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    header(report, &mut out);
    // Peer columns: every peer with a result, in the order of `PEERS`, each followed by
    // its rows in other element types (`torch-bf16`).
    let mut peers: Vec<&str> = Vec::new();
    for p in crate::peers::PEERS {
        let mut names: Vec<&str> = report
            .results
            .iter()
            .map(|r| r.imp.as_str())
            .filter(|n| {
                *n == *p || (n.starts_with(p) && crate::peers::is_peer(n) && n.len() > p.len())
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        peers.extend(names);
    }
    out.push_str("| case | shape | threads | ours: best variant | % of limit |");
    for p in &peers {
        let _ = write!(out, " {p} |");
    }
    out.push_str(" our other variants |\n|---|---|---:|---|---:|");
    out.push_str(&"---:|".repeat(peers.len()));
    out.push_str("---|\n");
    // Rows in the order the run measured them.
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in &report.results {
        let k = (r.id(), r.threads);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (id, threads) in keys {
        let rows: Vec<&Record> = report
            .results
            .iter()
            .filter(|r| r.id() == id && r.threads == threads)
            .collect();
        let best = rows
            .iter()
            .find(|r| r.baseline.as_deref() == Some(r.imp.as_str()))
            .or_else(|| rows.iter().find(|r| !crate::peers::is_peer(&r.imp)));
        let Some(best) = best else { continue };
        let _ = write!(
            out,
            "| {id} | {} | {threads} | {} {} | {} |",
            best.shape,
            best.imp,
            throughput(best),
            limit(best)
        );
        for p in &peers {
            match rows.iter().find(|r| r.imp == *p) {
                Some(r) => {
                    let _ = write!(out, " {} |", ratio(r));
                }
                None => out.push_str(" – |"),
            }
        }
        let others: Vec<String> = rows
            .iter()
            .filter(|r| r.imp != best.imp && !crate::peers::is_peer(&r.imp))
            .map(|r| {
                format!(
                    "{} {}",
                    r.imp,
                    r.ratio.map_or("–".into(), |m| format!("{m:.2}×"))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            " {} |",
            if others.is_empty() {
                "–".into()
            } else {
                others.join(", ")
            }
        );
    }
    footer(report, &mut out);
    out
}

/// One row per (case, thread count, implementation), with the same header and footer as
/// [`table`].
pub fn table_long(report: &Report) -> String {
    let mut out = String::new();
    header(report, &mut out);
    out.push_str(
        "| case | shape | threads | impl | throughput | % of limit | time vs best (min–max) |\n",
    );
    out.push_str("|---|---|---:|---|---:|---:|---:|\n");
    for r in &report.results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.id(),
            r.shape,
            r.threads,
            r.imp,
            throughput(r),
            limit(r),
            ratio(r)
        );
    }
    footer(report, &mut out);
    out
}

fn footer(report: &Report, out: &mut String) {
    out.push('\n');
    out.push_str(
        "% of limit: of the FMA peak (compute-bound) or the streaming bandwidth \
         (memory-bound) measured in the same rotation as the case. Time vs best: the \
         implementation's time divided by our fastest variant's, round by round (median, \
         min–max); > 1 is slower.\n",
    );
    if let Some(d) = &report.drift {
        let _ = writeln!(out, "\n{}.", d.line().replacen("drift", "Drift", 1));
    }
    if let Some(t) = &report.torch {
        match (&t.version, &t.note) {
            (Some(v), _) if t.available => {
                let _ = writeln!(out, "\nPyTorch peer: {v}.");
            }
            (_, Some(n)) => {
                let _ = writeln!(out, "\nPyTorch peer: not available ({n}).");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Drift, Machine, RunInfo, TorchInfo};
    use std::time::Duration;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_164_800 + 23 * 3600 + 59 * 60);
        assert_eq!(utc_date(t), "2024-02-29 23:59 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01
        assert_eq!(utc_date(t), "2100-01-01 00:00 UTC");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--filter"), "--filter");
        assert_eq!(shell_quote("gemm/*x*"), "'gemm/*x*'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn table_has_header_rows_and_flags() {
        let ok = Record {
            suite: "gemm".into(),
            case: "64".into(),
            imp: "avx2".into(),
            threads: 1,
            shape: "m=64 k=64 n=64".into(),
            gflops: 50.0,
            pct_peak: Some(50.0),
            ratio: Some(1.0),
            ratio_min: Some(1.0),
            ratio_max: Some(1.0),
            ..Record::default()
        };
        let bad = Record {
            imp: "torch".into(),
            pct_peak: Some(120.0),
            measuring_error: true,
            ratio: Some(1.25),
            ratio_min: Some(1.2),
            ratio_max: Some(1.3),
            ..ok.clone()
        };
        let rep = Report {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                ..Machine::default()
            },
            results: vec![ok, bad],
            run: Some(RunInfo {
                date_utc: "2026-01-02 03:04 UTC".into(),
                command: "cargo xtask bench --markdown".into(),
            }),
            drift: Some(Drift::new("gemm/256", "avx2", 1, 100.0, 98.0)),
            torch: Some(TorchInfo {
                available: false,
                python: "python3".into(),
                version: None,
                note: Some("No module named 'torch'".into()),
            }),
        };
        let md = table_long(&rep);
        assert!(
            md.starts_with(
                "Measured 2026-01-02 03:04 UTC on Test CPU (2 threads) with \
                 `cargo xtask bench --markdown`."
            ),
            "{md}"
        );
        assert!(
            md.contains("| gemm/64 | m=64 k=64 n=64 | 1 | avx2 | 50.0 GFLOP/s | 50 % peak | 1.00× (1.00–1.00) |"),
            "{md}"
        );
        assert!(
            md.contains("| torch | 50.0 GFLOP/s | meas. error | 1.25× (1.20–1.30) |"),
            "{md}"
        );
        assert!(md.contains("Drift: -2.0 %"), "{md}");
        assert!(
            md.contains("not available (No module named 'torch')"),
            "{md}"
        );
        // The compact table: one row for the case, the peer as a column.
        let short = table(&rep);
        assert!(
            short.contains("| case | shape | threads | ours: best variant | % of limit | torch | our other variants |"),
            "{short}"
        );
        assert!(
            short.contains("| gemm/64 | m=64 k=64 n=64 | 1 | avx2 50.0 GFLOP/s | 50 % peak | 1.25× (1.20–1.30) | – |"),
            "{short}"
        );
        assert_eq!(short.matches("| gemm/64 |").count(), 1, "{short}");
    }
}
