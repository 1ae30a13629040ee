//! What `bench` writes and reads: `report.json`, `report.csv` and the stdout table (the
//! diff of two reports is [`crate::compare`]).
//!
//! `report.json` is `{"machine": {...}, "results": [...]}`. `machine` has `cpu`, `cores`,
//! `peak_gflops` (measured, the median trial, per ISA then per thread count: `{"avx2":
//! {"1": 98.1, "2": 190.3}}`), `peak_gflops_max` (the fastest trial, keyed alike) and
//! `bandwidth_gbs` (measured streaming bandwidth, bytes read + written, per thread count:
//! `{"1": 11.2}`; see [`crate::peak`]).
//! Each result has exactly the keys of [`Record`]: the original eleven (`suite` … `gbs`,
//! meanings unchanged except that `pct_peak` is now of the peak measured in the case's own
//! rotation) and, beside them, the rotation's: `ratio`, `ratio_min`, `ratio_max`,
//! `baseline`, `rounds`, `rotation_peak_gflops`, `rotation_bw_gbs`, `pct_bw` and
//! `measuring_error` (see [`Record`]).
//!
//! Beside `machine` and `results`, the top level has `run` (UTC date and the command),
//! `drift` (the reference case timed at the start and at the end) and `torch` (whether the
//! torch peer ran, with which python and version); all three are null in older reports.
//!
//! **Ratios** are *time relative to the baseline* (our fastest variant of that case and
//! thread count by median), computed round by round ([`crate::rotation`]): 2.0 takes
//! twice as long as the baseline, 0.8 is faster than it, the baseline itself is 1.

use crate::case::Bound;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One measurement: one (suite, case, impl, threads). Serialised with exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Record {
    /// Suite (`gemm`).
    pub suite: String,
    /// Case name inside the suite (`512`).
    pub case: String,
    /// Our variant (`avx2`) or the peer's name (`matrixmultiply`); `impl` in JSON/CSV.
    #[serde(rename = "impl")]
    pub imp: String,
    /// Threads of the pool it ran in.
    pub threads: usize,
    /// Shape in words (`m=512 k=512 n=512`).
    pub shape: String,
    /// Median seconds per call.
    pub median_s: f64,
    /// Fastest sample, seconds per call.
    pub min_s: f64,
    /// Slowest sample, seconds per call.
    pub max_s: f64,
    /// Floating-point operations per second at the median, in 1e9.
    pub gflops: f64,
    /// `gflops` as % of the measured peak of this variant at this thread count (peers: of
    /// the best variant); `None` (null) where the case is not compute-bound.
    pub pct_peak: Option<f64>,
    /// Minimum bytes moved per second at the median, in 1e9.
    pub gbs: f64,
    /// Median over the rounds of this implementation's time divided by the baseline's time
    /// in the same round (> 1: slower than the baseline). `None` without a baseline (no
    /// variant of ours in the case) or in reports written before ratios existed.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Smallest per-round ratio.
    #[serde(default)]
    pub ratio_min: Option<f64>,
    /// Largest per-round ratio.
    #[serde(default)]
    pub ratio_max: Option<f64>,
    /// The baseline the ratios are of: our fastest variant by median (`avx2`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Rounds of the rotation (samples of this implementation).
    #[serde(default)]
    pub rounds: usize,
    /// The best FMA-peak trial taken in this case's rotation (for this variant's loop;
    /// peers: the best variant's), GFLOP/s: what `pct_peak` is a percentage of.
    #[serde(default)]
    pub rotation_peak_gflops: Option<f64>,
    /// The best bandwidth trial taken in this case's rotation, GB/s (memory-bound cases).
    #[serde(default)]
    pub rotation_bw_gbs: Option<f64>,
    /// `gbs` as % of `rotation_bw_gbs` (memory-bound cases; else null).
    #[serde(default)]
    pub pct_bw: Option<f64>,
    /// True when `pct_peak` or `pct_bw` came out above 100: the bound measured beside it
    /// was too low (a noisy moment), so that percentage is a measuring error, not a result.
    #[serde(default)]
    pub measuring_error: bool,
}

impl Record {
    /// The key `--compare` matches records by: suite, case, impl, threads.
    pub fn key(&self) -> (String, String, String, usize) {
        (
            self.suite.clone(),
            self.case.clone(),
            self.imp.clone(),
            self.threads,
        )
    }

    /// `suite/case`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.suite, self.case)
    }
}

/// The machine the results were measured on, with its measured limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Hardware threads available to the process.
    pub cores: usize,
    /// Measured FMA peak in GFLOP/s, the median trial: ISA name → thread count (as a
    /// string) → GFLOP/s. `% of peak` is of this.
    pub peak_gflops: BTreeMap<String, BTreeMap<String, f64>>,
    /// The fastest peak trial, keyed like `peak_gflops` (empty in reports written before
    /// it was recorded).
    #[serde(default)]
    pub peak_gflops_max: BTreeMap<String, BTreeMap<String, f64>>,
    /// Measured streaming bandwidth (bytes read + written) in GB/s: thread count (as a
    /// string) → GB/s.
    pub bandwidth_gbs: BTreeMap<String, f64>,
}

impl Machine {
    /// Peak GFLOP/s of `isa` at `threads`; `None` for the isa: the best over all ISAs.
    pub fn peak(&self, isa: Option<&str>, threads: usize) -> Option<f64> {
        let key = threads.to_string();
        match isa {
            Some(isa) => self.peak_gflops.get(isa)?.get(&key).copied(),
            None => self
                .peak_gflops
                .values()
                .filter_map(|m| m.get(&key).copied())
                .reduce(f64::max),
        }
    }

    /// Bandwidth in GB/s at `threads`.
    pub fn bandwidth(&self, threads: usize) -> Option<f64> {
        self.bandwidth_gbs.get(&threads.to_string()).copied()
    }
}

/// The whole of `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// One record per measurement.
    pub results: Vec<Record>,
    /// When and how it ran.
    #[serde(default)]
    pub run: Option<RunInfo>,
    /// The reference case at the start and at the end of the run.
    #[serde(default)]
    pub drift: Option<Drift>,
    /// The torch peer: whether it ran, and why not.
    #[serde(default)]
    pub torch: Option<TorchInfo>,
}

/// When and how a report was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunInfo {
    /// `YYYY-MM-DD HH:MM UTC` at the start of the run.
    pub date_utc: String,
    /// The command that reproduces it (`cargo xtask bench ...`).
    pub command: String,
}

/// How far the machine moved during a run: one reference case (our best variant on a
/// fixed shape, one thread) timed before the first case and after the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Drift {
    /// `suite/case` of the reference.
    pub case: String,
    /// Implementation.
    pub imp: String,
    /// Threads.
    pub threads: usize,
    /// GFLOP/s at the median, at the start.
    pub start_gflops: f64,
    /// GFLOP/s at the median, at the end.
    pub end_gflops: f64,
    /// `100 · (end / start − 1)`: negative when the machine got slower.
    pub pct: f64,
}

impl Drift {
    /// The reference's drift from `start_gflops` to `end_gflops`.
    pub fn new(case: &str, imp: &str, threads: usize, start_gflops: f64, end_gflops: f64) -> Drift {
        let pct = if start_gflops > 0.0 {
            100.0 * (end_gflops / start_gflops - 1.0)
        } else {
            f64::NAN
        };
        Drift {
            case: case.to_string(),
            imp: imp.to_string(),
            threads,
            start_gflops,
            end_gflops,
            pct,
        }
    }

    /// `drift: -1.2 % (start 100.0 GFLOP/s, end 98.8 GFLOP/s; gemm/256 avx2 t=1)`.
    pub fn line(&self) -> String {
        format!(
            "drift: {:+.1} % (start {:.1} GFLOP/s, end {:.1} GFLOP/s; {} {} t={})",
            self.pct, self.start_gflops, self.end_gflops, self.case, self.imp, self.threads
        )
    }
}

/// Whether the torch peer ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TorchInfo {
    /// It was imported and timed.
    pub available: bool,
    /// The python it was tried with.
    pub python: String,
    /// `torch X.Y.Z` when available.
    pub version: Option<String>,
    /// Why not, when not (`No module named 'torch'`).
    pub note: Option<String>,
}

/// Writes `report` as pretty JSON.
///
/// # Errors
/// I/O errors, with the path.
pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Reads a `report.json`.
///
/// # Errors
/// A missing file, or one that is not a report (with the path in the message).
pub fn read_json(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a bench report: {e}", path.display()).into())
}

/// CSV header, the [`Record`] keys in order.
pub const CSV_HEADER: &str =
    "suite,case,impl,threads,shape,median_s,min_s,max_s,gflops,pct_peak,gbs,\
     ratio,ratio_min,ratio_max,baseline,rounds,rotation_peak_gflops,rotation_bw_gbs,pct_bw,\
     measuring_error";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The records as CSV (RFC 4180 quoting; an empty field is a null), the original columns
/// first, the rotation's after them.
pub fn to_csv(records: &[Record]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        let opt = |x: Option<f64>| x.map(|p| p.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.suite),
            csv_field(&r.case),
            csv_field(&r.imp),
            r.threads,
            csv_field(&r.shape),
            r.median_s,
            r.min_s,
            r.max_s,
            r.gflops,
            opt(r.pct_peak),
            r.gbs,
            opt(r.ratio),
            opt(r.ratio_min),
            opt(r.ratio_max),
            csv_field(r.baseline.as_deref().unwrap_or_default()),
            r.rounds,
            opt(r.rotation_peak_gflops),
            opt(r.rotation_bw_gbs),
            opt(r.pct_bw),
            r.measuring_error
        );
    }
    out
}

/// Writes [`to_csv`] to `path`.
///
/// # Errors
/// I/O errors, with the path.
pub fn write_csv(path: &Path, records: &[Record]) -> Result<()> {
    std::fs::write(path, to_csv(records))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Seconds with a readable unit (`12.3 µs`).
pub fn fmt_time(s: f64) -> String {
    if !s.is_finite() {
        return format!("{s}");
    }
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

/// The table's column titles.
pub fn table_header() -> String {
    format!(
        "{:<27} {:<15} {:>3} {:>10} {:>23} {:>9} {:>9} {:>8} {:>7} {:>11}",
        "case",
        "impl",
        "thr",
        "median",
        "min … max",
        "GFLOP/s",
        "% limit",
        "GB/s",
        "t/best",
        "min–max"
    )
}

/// The `% limit` cell: `% pk` of the FMA peak for compute-bound cases, `% bw` of the
/// bandwidth for memory-bound ones (both measured in the case's rotation; older records:
/// the bandwidth measured at the start), `MEAS.ERR` where that came out above 100, `-`
/// otherwise.
pub fn limit_cell(r: &Record, machine: &Machine, bound: Bound) -> String {
    if r.measuring_error {
        return "MEAS.ERR".to_string();
    }
    let bw = r.pct_bw.or_else(|| {
        machine
            .bandwidth(r.threads)
            .filter(|b| *b > 0.0)
            .map(|b| 100.0 * r.gbs / b)
    });
    match (bound, r.pct_peak, bw) {
        (Bound::Compute, Some(p), _) => format!("{p:.0}% pk"),
        (Bound::Memory, _, Some(p)) => format!("{p:.0}% bw"),
        _ => "-".to_string(),
    }
}

/// The ratio cells: `1.22×` and `1.18–1.25` (time relative to the baseline), `-` without.
pub fn ratio_cells(r: &Record) -> (String, String) {
    match (r.ratio, r.ratio_min, r.ratio_max) {
        (Some(m), Some(lo), Some(hi)) => (format!("{m:.2}×"), format!("{lo:.2}–{hi:.2}")),
        (Some(m), _, _) => (format!("{m:.2}×"), "-".to_string()),
        _ => ("-".to_string(), "-".to_string()),
    }
}

/// One table row (see [`limit_cell`] and [`ratio_cells`]). GFLOP/s is `-` for cases that
/// count no flops (exp, softmax).
pub fn table_row(r: &Record, machine: &Machine, bound: Bound) -> String {
    let gflops = if r.gflops > 0.0 {
        format!("{:.1}", r.gflops)
    } else {
        "-".to_string()
    };
    let (ratio, range) = ratio_cells(r);
    format!(
        "{:<27} {:<15} {:>3} {:>10} {:>23} {:>9} {:>9} {:>8.1} {:>7} {:>11}",
        r.id(),
        r.imp,
        r.threads,
        fmt_time(r.median_s),
        format!("{} … {}", fmt_time(r.min_s), fmt_time(r.max_s)),
        gflops,
        limit_cell(r, machine, bound),
        r.gbs,
        ratio,
        range
    )
}

/// The machine block printed above the table.
pub fn machine_summary(m: &Machine) -> String {
    let mut out = format!("CPU: {} ({} threads)\n", m.cpu, m.cores);
    for (isa, by_t) in &m.peak_gflops {
        let max = m.peak_gflops_max.get(isa);
        let cols: Vec<String> = by_t
            .iter()
            .map(|(t, g)| match max.and_then(|x| x.get(t)) {
                Some(x) => format!("{g:.1} GFLOP/s at {t}t (fastest trial {x:.1})"),
                None => format!("{g:.1} GFLOP/s at {t}t"),
            })
            .collect();
        let _ = writeln!(out, "  FMA peak {isa:<9} {}", cols.join(", "));
    }
    let bw: Vec<String> = m
        .bandwidth_gbs
        .iter()
        .map(|(t, g)| format!("{g:.1} GB/s at {t}t"))
        .collect();
    let _ = writeln!(out, "  memory bandwidth (read + write) {}", bw.join(", "));
    out
}

/// The keys of every record of `report.json`, in the order of the CSV columns: the eleven
/// of the first report format (`suite` … `gbs`), then those the interleaved bench added.
/// Tools reading the report may rely on them.
pub const RECORD_KEYS: [&str; 20] = [
    "suite",
    "case",
    "impl",
    "threads",
    "shape",
    "median_s",
    "min_s",
    "max_s",
    "gflops",
    "pct_peak",
    "gbs",
    "ratio",
    "ratio_min",
    "ratio_max",
    "baseline",
    "rounds",
    "rotation_peak_gflops",
    "rotation_bw_gbs",
    "pct_bw",
    "measuring_error",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, imp: &str, threads: usize, median_s: f64) -> Record {
        Record {
            suite: "gemm".into(),
            case: case.into(),
            imp: imp.into(),
            threads,
            shape: format!("m={case} k={case} n={case}"),
            median_s,
            min_s: median_s * 0.9,
            max_s: median_s * 1.2,
            gflops: 1.0 / median_s,
            pct_peak: Some(42.0),
            gbs: 2.0,
            ..Record::default()
        }
    }

    fn machine() -> Machine {
        Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            peak_gflops: [(
                "avx2".to_string(),
                [("1".to_string(), 100.0), ("2".to_string(), 190.0)]
                    .into_iter()
                    .collect(),
            )]
            .into_iter()
            .collect(),
            bandwidth_gbs: [("1".to_string(), 10.0)].into_iter().collect(),
            ..Machine::default()
        }
    }

    #[test]
    fn json_records_have_exactly_the_documented_keys() {
        let mut r = rec("64", "avx2", 1, 1e-3);
        r.pct_peak = None;
        let report = Report {
            machine: machine(),
            results: vec![r],
            run: None,
            drift: None,
            torch: None,
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        let obj = v["results"][0].as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = RECORD_KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert!(obj["pct_peak"].is_null());
        assert_eq!(v["machine"]["peak_gflops"]["avx2"]["2"], 190.0);
        assert_eq!(v["machine"]["bandwidth_gbs"]["1"], 10.0);
        assert_eq!(v["machine"]["cpu"], "Test CPU");
    }

    #[test]
    fn json_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        let report = Report {
            machine: machine(),
            results: vec![rec("64", "avx2", 1, 1e-3), rec("128", "scalar", 2, 0.5)],
            run: Some(RunInfo {
                date_utc: "2026-01-01 00:00 UTC".into(),
                command: "cargo xtask bench".into(),
            }),
            drift: Some(Drift::new("gemm/256", "avx2", 1, 10.0, 11.0)),
            torch: None,
        };
        write_json(&path, &report).unwrap();
        assert_eq!(read_json(&path).unwrap(), report);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reading_a_missing_or_foreign_file_names_it() {
        let err = read_json(Path::new("/nonexistent/old.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/old.json"), "{err}");
        let dir = std::env::temp_dir().join(format!("xtask-foreign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.json");
        std::fs::write(&path, r#"{"results": 3}"#).unwrap();
        let err = read_json(&path).unwrap_err().to_string();
        assert!(err.contains("not a bench report"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csv_has_header_quotes_and_empty_nulls() {
        let mut r = rec("64", "avx2", 1, 0.25);
        r.shape = "a,\"b\"".into();
        r.pct_peak = None;
        let csv = to_csv(&[r, rec("128", "scalar", 2, 0.5)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[0].split(',').collect::<Vec<_>>(), RECORD_KEYS);
        assert!(
            lines[1].starts_with("gemm,64,avx2,1,\"a,\"\"b\"\"\",0.25,"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(",4,,2,"), "{}", lines[1]);
        assert!(lines[1].ends_with(",,0,,,,false"), "{}", lines[1]);
        assert!(lines[2].starts_with("gemm,128,scalar,2,m=128 k=128 n=128,0.5,"));
        assert!(lines[2].contains(",42,2,"));
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn reports_without_the_rotation_keys_still_read() {
        // A report.json as written before ratios existed: the new keys default.
        let old = r#"{"machine": {"cpu": "c", "cores": 1, "peak_gflops": {},
            "bandwidth_gbs": {}}, "results": [{"suite": "gemm", "case": "64",
            "impl": "avx2", "threads": 1, "shape": "s", "median_s": 1.0, "min_s": 1.0,
            "max_s": 1.0, "gflops": 1.0, "pct_peak": null, "gbs": 1.0}]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!(r.results[0].ratio, None);
        assert!(!r.results[0].measuring_error);
        assert_eq!((r.run, r.drift, r.torch), (None, None, None));
    }

    #[test]
    fn table_flags_measuring_errors_and_shows_ratios() {
        let m = machine();
        let mut r = rec("64", "torch", 1, 1e-3);
        r.ratio = Some(1.2345);
        r.ratio_min = Some(1.1);
        r.ratio_max = Some(1.3);
        let row = table_row(&r, &m, Bound::Compute);
        assert!(row.contains("42% pk") && row.contains("1.23×") && row.contains("1.10–1.30"));
        r.pct_peak = Some(104.0);
        r.measuring_error = true;
        let row = table_row(&r, &m, Bound::Compute);
        assert!(row.contains("MEAS.ERR") && !row.contains("104"), "{row}");
        // Memory-bound: the rotation's bandwidth wins over the machine's.
        let mut mem = rec("64", "avx2", 1, 1e-3);
        mem.pct_peak = None;
        mem.pct_bw = Some(87.0);
        assert!(table_row(&mem, &m, Bound::Memory).contains("87% bw"));
        let d = Drift::new("gemm/256", "avx2", 1, 100.0, 95.0);
        assert!((d.pct + 5.0).abs() < 1e-9);
        assert_eq!(
            d.line(),
            "drift: -5.0 % (start 100.0 GFLOP/s, end 95.0 GFLOP/s; gemm/256 avx2 t=1)"
        );
    }

    #[test]
    fn peaks_and_bandwidth_lookups() {
        let m = machine();
        assert_eq!(m.peak(Some("avx2"), 2), Some(190.0));
        assert_eq!(m.peak(Some("avx512"), 1), None);
        assert_eq!(m.peak(None, 1), Some(100.0));
        assert_eq!(m.peak(None, 3), None);
        assert_eq!(m.bandwidth(1), Some(10.0));
    }

    #[test]
    fn table_shows_percent_of_peak_or_of_bandwidth() {
        let m = machine();
        let r = rec("64", "avx2", 1, 1e-3);
        assert!(table_row(&r, &m, Bound::Compute).contains("42% pk"));
        let mut mem = r.clone();
        mem.pct_peak = None; // memory-bound: 2 GB/s of 10
        mem.gflops = 0.0;
        let row = table_row(&mem, &m, Bound::Memory);
        assert!(row.contains("20% bw") && row.contains(" - "), "{row}");
        let row = table_row(&mem, &m, Bound::Cache);
        assert!(!row.contains('%'), "{row}");
        assert_eq!(fmt_time(1.5e-5), "15.0 µs");
        assert_eq!(fmt_time(0.25), "250 ms");
        assert_eq!(fmt_time(2.0), "2.00 s");
        assert_eq!(fmt_time(5e-9), "5.00 ns");
    }
}
