//! `cargo xtask`: fastattn's project tasks (see the `xtask` library docs).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use xtask::{bench, compare, peers, plan, profile};

/// fastattn project tasks (run as `cargo xtask <task>`, a release build).
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Benchmark every kernel variant against the peers; writes target/bench/report.{json,csv}
    /// and gemm.svg. Quick by default (about two minutes); --full runs everything.
    Bench(plan::BenchArgs),
    /// Compare two report.json files (change of each median, regressions flagged).
    Compare(compare::CompareArgs),
    /// Run one kernel variant on one shape in a loop, for a profiler (or under perf stat /
    /// callgrind with --perf / --callgrind).
    Profile(profile::ProfileArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // matrixmultiply reads MATMUL_NUM_THREADS once, at its first call, and would otherwise
    // use every physical core at "threads = 1". Pin it to 1 (before any thread exists) so
    // its results are labelled honestly; set the variable to measure it threaded.
    if std::env::var_os(peers::MATMUL_THREADS_VAR).is_none() {
        std::env::set_var(peers::MATMUL_THREADS_VAR, "1");
    }
    let result = match &cli.task {
        Task::Bench(a) => bench::run(a),
        Task::Compare(a) => compare::run(a),
        Task::Profile(a) => profile::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
    }

    #[test]
    fn bench_flags_parse_with_defaults() {
        let Task::Bench(b) = parse(&["bench"]).unwrap().task else {
            panic!("not bench")
        };
        assert!(!b.full && b.filter.is_empty() && b.variant.is_empty());
        assert_eq!(b.threads, ["1", "all"]);
        assert_eq!(b.threshold, compare::REGRESSION_PCT);
        let Task::Bench(b) = parse(&[
            "bench",
            "--full",
            "--filter",
            "gemm/64,gemm/128",
            "--variant",
            "avx2",
            "--threads",
            "2",
            "--compare",
            "old.json",
            "--min-time",
            "0.1",
        ])
        .unwrap()
        .task
        else {
            panic!("not bench")
        };
        assert!(b.full);
        assert_eq!(b.filter, ["gemm/64", "gemm/128"]);
        assert_eq!(b.threads, ["2"]);
        assert_eq!(b.compare.unwrap().to_str(), Some("old.json"));
        assert_eq!(b.min_time, Some(0.1));
    }

    #[test]
    fn peers_and_markdown_parse() {
        let Task::Bench(b) = parse(&["bench"]).unwrap().task else {
            panic!("not bench")
        };
        assert!(b.peers.is_empty() && b.markdown.is_none());
        let Task::Bench(b) = parse(&["bench", "--peers", "torch,matrixmultiply", "--markdown"])
            .unwrap()
            .task
        else {
            panic!("not bench")
        };
        assert_eq!(b.peers, ["torch", "matrixmultiply"]);
        assert_eq!(b.markdown.as_deref(), Some(""));
        let Task::Bench(b) = parse(&["bench", "--markdown", "t.md", "--peers", "none"])
            .unwrap()
            .task
        else {
            panic!("not bench")
        };
        assert_eq!((b.markdown.as_deref(), b.peers.len()), (Some("t.md"), 1));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["bench", "--nope"]).is_err());
        assert!(parse(&["bench", "--min-time", "soon"]).is_err());
        assert!(parse(&["profile"]).is_err()); // kernel missing
        assert!(parse(&["profile", "gemm", "--perf", "--callgrind"]).is_err());
        assert!(parse(&["profile", "gemm", "--seconds", "x"]).is_err());
        assert!(parse(&["compare"]).is_err());
    }

    #[test]
    fn profile_and_compare_parse() {
        let Task::Profile(p) = parse(&[
            "profile",
            "gemm",
            "--variant",
            "avx2",
            "--shape",
            "512x512x512",
            "--seconds",
            "5",
            "--perf",
        ])
        .unwrap()
        .task
        else {
            panic!("not profile")
        };
        assert_eq!(
            (p.kernel.as_str(), p.variant.as_deref(), p.shape.as_deref()),
            ("gemm", Some("avx2"), Some("512x512x512"))
        );
        assert!(p.perf && !p.callgrind && p.seconds == 5.0 && p.threads == "1");
        let Task::Compare(c) = parse(&["compare", "a.json", "b.json"]).unwrap().task else {
            panic!("not compare")
        };
        assert_eq!(c.new.unwrap().to_str(), Some("b.json"));
    }
}
