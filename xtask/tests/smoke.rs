//! End to end: the real binary runs one tiny bench case, writes its files, compares against
//! them, and refuses bad arguments. No timing assertions.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the binary with a python that does not exist, so the torch peer is always
/// skipped here (whether or not torch is installed) and the test means the same in CI.
fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env_remove("FASTATTN_ISA")
        .env("FASTATTN_PYTHON", "/nonexistent/python3")
        .output()
        .expect("xtask runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-smoke-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

use xtask::report::RECORD_KEYS as KEYS;

#[test]
fn bench_runs_a_tiny_gemm_case_end_to_end() {
    let dir = temp_dir("bench");
    let out = dir.to_str().unwrap();
    let o = xtask(&[
        "bench",
        "--filter",
        "gemm/64",
        "--threads",
        "1",
        "--min-time",
        "0.01",
        "--out-dir",
        out,
        "--markdown",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("FMA peak") && stdout.contains("gemm/64"),
        "{stdout}"
    );
    // torch is absent (see `xtask`): one line, and the run goes on.
    let torch_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("torch:")).collect();
    assert_eq!(torch_lines.len(), 1, "{stdout}");
    assert!(
        torch_lines[0].contains("not available") && torch_lines[0].contains("skipping torch"),
        "{stdout}"
    );
    assert!(stdout.contains("drift: "), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let machine = json["machine"].as_object().unwrap();
    for k in ["cpu", "cores", "peak_gflops", "bandwidth_gbs"] {
        assert!(machine.contains_key(k), "machine lacks {k}: {machine:?}");
    }
    assert!(
        json["machine"]["peak_gflops"]["scalar"]["1"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(json["machine"]["bandwidth_gbs"]["1"].as_f64().unwrap() > 0.0);
    assert_eq!(json["torch"]["available"], false);
    assert!(json["drift"]["start_gflops"].as_f64().unwrap() > 0.0);
    assert!(json["run"]["command"]
        .as_str()
        .unwrap()
        .starts_with("cargo xtask bench --filter gemm/64"));
    let results = json["results"].as_array().unwrap();
    let impls: Vec<&str> = results
        .iter()
        .map(|r| r["impl"].as_str().unwrap())
        .collect();
    for want in ["scalar", "portable", "matrixmultiply", "gemm-crate"] {
        assert!(impls.contains(&want), "{want} missing from {impls:?}");
    }
    for r in results {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = KEYS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(
            (r["suite"].as_str(), r["case"].as_str()),
            (Some("gemm"), Some("64"))
        );
        assert_eq!(r["threads"], 1);
        let (lo, med, hi) = (
            r["min_s"].as_f64().unwrap(),
            r["median_s"].as_f64().unwrap(),
            r["max_s"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "{r}");
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
        assert!(
            r["pct_peak"].as_f64().unwrap() > 0.0,
            "gemm is compute-bound: {r}"
        );
        assert!(r["rotation_peak_gflops"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["measuring_error"].is_boolean(), "{r}");
        assert!(r["rounds"].as_u64().unwrap() >= 7, "{r}");
        assert_eq!(
            r["baseline"].as_str().map(str::len).map(|n| n > 0),
            Some(true)
        );
        let (lo, med, hi) = (
            r["ratio_min"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
            r["ratio_max"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "{r}");
    }
    // The baseline reads exactly 1 against itself.
    let base = results[0]["baseline"].as_str().unwrap();
    let b = results.iter().find(|r| r["impl"] == base).unwrap();
    assert_eq!(b["ratio"], 1.0);
    let md = std::fs::read_to_string(dir.join("README-table.md")).unwrap();
    assert!(md.starts_with("Measured ") && md.contains("`cargo xtask bench --filter gemm/64"));
    assert!(md.contains("| gemm/64 | m=64 k=64 n=64 | 1 |"), "{md}");

    let csv = std::fs::read_to_string(dir.join("report.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), KEYS.join(","));
    assert_eq!(csv.lines().count(), results.len() + 1);
    let svg = std::fs::read_to_string(dir.join("gemm.svg")).unwrap();
    assert!(svg.starts_with("<svg"));

    // Compare two existing reports (no measuring): every record matches itself, +0.0%.
    let report = dir.join("report.json");
    let r = report.to_str().unwrap();
    let o = xtask(&["compare", r, r]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("{} compared, 0 regression(s)", results.len())),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let o = xtask(&[
        "bench",
        "--filter",
        "nosuchsuite",
        "--out-dir",
        "/nonexistent/x",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("matches no case") && err.contains("gemm/64"),
        "{err}"
    );

    let o = xtask(&["bench", "--peers", "numpy"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--peers"));

    let o = xtask(&["bench", "--variant", "sse9"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown"));

    let o = xtask(&[
        "bench",
        "--compare",
        "/nonexistent/old.json",
        "--filter",
        "gemm/64",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/old.json"));

    let o = xtask(&["profile", "gemm", "--shape", "1x2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("MxKxN"));
}

#[test]
fn profile_runs_a_few_iterations() {
    let o = xtask(&[
        "profile",
        "gemm",
        "--variant",
        "scalar",
        "--shape",
        "32",
        "--iters",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("gemm/32 scalar t=1: 3 calls"), "{stdout}");
}
