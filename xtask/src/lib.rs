//! # xtask: fastattn's project tasks
//!
//! Run through the cargo alias in `.cargo/config.toml` (always a release build):
//!
//! ```text
//! cargo xtask bench                 # quick suite (about two minutes), table on stdout
//! cargo xtask bench --full          # every case, every variant, longer sampling
//! cargo xtask bench --filter gemm/512 --variant avx2,matrixmultiply --threads 1
//! cargo xtask bench --peers torch,matrixmultiply   # peers to run (all | none | names)
//! cargo xtask bench --markdown README-table.md      # the README's table, with date and CPU
//! cargo xtask bench --compare old.json
//! cargo xtask bench --filter latency               # per-call latency after idle gaps (issue 34)
//! cargo xtask compare old.json target/bench/report.json
//! cargo xtask profile gemm --variant avx2 --shape 512x512x512 --seconds 5 [--perf|--callgrind]
//! ```
//!
//! Modules, each using only those listed before it (the import graph has no circle;
//! `tests/tidy.rs` keeps it so):
//!
//! - the model: [`stats`] (timing and the median/min/max of samples), [`peers`] (the peer
//!   names), [`torch`] (the PyTorch peer's helper process), [`case`] (a benchmark case and
//!   its implementations);
//! - measuring: [`rotation`] (the interleaved sampling and the per-round ratios),
//!   [`report`] (JSON, CSV and the table), [`compare`] (`--compare`: two reports side by
//!   side), [`peak`] (this machine's measured FMA peak and memory bandwidth), [`suites`]
//!   (the registry of benchmark cases; add a suite there), [`plan`] (`bench`'s arguments
//!   and what they select), [`runner`] (a case's rotation, turned into records),
//!   [`latency`] (the `latency` suite: one call at a time after idle gaps and other
//!   pools' work, with its own runner and table);
//! - output: [`markdown`] (the README's table), [`chart`] (the SVG chart);
//! - the tasks: [`bench`](mod@bench) (`cargo xtask bench`), [`profile`] (one kernel in a
//!   loop, optionally under `perf` or callgrind).
//!
//! The binary is a thin `clap` front end (`main.rs`); everything it does lives in this
//! library so that the tests can drive it.

pub mod bench;
pub mod case;
pub mod chart;
pub mod compare;
pub mod latency;
pub mod markdown;
pub mod peak;
pub mod peers;
pub mod plan;
pub mod profile;
pub mod report;
pub mod rotation;
pub mod runner;
pub mod stats;
pub mod suites;
pub mod torch;

use std::path::{Path, PathBuf};

/// The error type of every task: a message for the person at the terminal.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where `bench` writes its files unless told otherwise: `WORKSPACE/target/bench`.
pub fn default_out_dir() -> PathBuf {
    workspace_root().join("target").join("bench")
}

/// Number of hardware threads this process may use ("all" threads).
pub fn all_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A rayon pool of exactly `threads` workers.
///
/// # Errors
/// When rayon cannot start the threads.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("xtask-{threads}t-{i}"))
        .build()?)
}

/// The CPU's model name (from `/proc/cpuinfo` on Linux), or `"unknown"`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
