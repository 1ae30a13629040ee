//! `cargo xtask profile <kernel>`: one implementation on one shape in a loop, for a profiler.
//!
//! ```text
//! cargo xtask profile gemm --variant avx2 --shape 512x512x512 --seconds 5 [--threads 1]
//! cargo xtask profile gemm --variant avx2 --perf        # under `perf stat`
//! cargo xtask profile gemm --variant avx2 --callgrind   # instruction counts (valgrind)
//! ```
//!
//! Without a flag it prints calls, time and GFLOP/s, and is ready for an outside profiler
//! (`perf record -g -- target/release/xtask profile ...`). `--perf` re-runs this binary
//! with the same arguments under `perf stat` (cycles, instructions and so IPC, cache and
//! branch misses, next to the kernel's own GFLOP/s). `--callgrind` re-runs it under
//! valgrind's callgrind for a few iterations (`--iters`, default
//! [`CALLGRIND_DEFAULT_ITERS`]), collecting only inside the timed loop: an instruction
//! count that does not depend on what else the machine is doing, to compare variants on a
//! busy machine. valgrind does not emulate AVX-512, so `avx512` cannot run under it.

use crate::case::Impl;
use crate::{suites, Result};
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Iterations under callgrind when `--iters` is not given (it runs ~50× slower).
pub const CALLGRIND_DEFAULT_ITERS: u64 = 3;

/// `cargo xtask profile` arguments.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The kernel: a suite name (gemm, exp, softmax; `bench --list` shows them).
    pub kernel: String,

    /// The implementation: an ISA variant (`avx2`) or a peer (`matrixmultiply`)
    /// [default: the best variant this CPU runs].
    #[arg(long)]
    pub variant: Option<String>,

    /// The shape: gemm `MxKxN` or `N`; exp `N`; softmax `ROWSxLEN` [default: the suite's,
    /// e.g. 512x512x512 for gemm].
    #[arg(long)]
    pub shape: Option<String>,

    /// How long to loop.
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub seconds: f64,

    /// Exactly this many calls instead of --seconds.
    #[arg(long, value_name = "N")]
    pub iters: Option<u64>,

    /// Threads of the rayon pool the kernel runs in (`all` for every hardware thread).
    #[arg(long, default_value = "1", value_name = "N")]
    pub threads: String,

    /// Run under `perf stat` (needs perf).
    #[arg(long, conflicts_with = "callgrind")]
    pub perf: bool,

    /// Count instructions under valgrind's callgrind (needs valgrind).
    #[arg(long)]
    pub callgrind: bool,
}

/// The `perf stat` events asked for; `perf` derives IPC from the first two.
pub const PERF_EVENTS: &str =
    "cycles,instructions,cache-references,cache-misses,branch-misses,task-clock";

/// The full path of `tool` if it is an executable file on `PATH`.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// How to install a missing tool.
pub fn install_hint(tool: &str) -> String {
    match tool {
        "perf" => "perf is not installed. Debian: `apt-get install linux-perf`; Ubuntu: \
                   `apt-get install linux-tools-common linux-tools-$(uname -r)`; Fedora: \
                   `dnf install perf`. Then rerun with --perf."
            .to_string(),
        "valgrind" => "valgrind is not installed. Debian/Ubuntu: `apt-get install valgrind`; \
                       Fedora: `dnf install valgrind`. Then rerun with --callgrind."
            .to_string(),
        other => format!("{other} is not installed"),
    }
}

/// The arguments that run the same profile without `--perf`/`--callgrind` (for the child
/// process), with `iters` overriding `--iters`.
pub fn child_args(
    args: &ProfileArgs,
    variant: &str,
    shape: &str,
    iters: Option<u64>,
) -> Vec<String> {
    let mut v = vec![
        "profile".to_string(),
        args.kernel.clone(),
        "--variant".into(),
        variant.to_string(),
        "--shape".into(),
        shape.to_string(),
        "--seconds".into(),
        args.seconds.to_string(),
        "--threads".into(),
        args.threads.clone(),
    ];
    if let Some(n) = iters.or(args.iters) {
        v.push("--iters".into());
        v.push(n.to_string());
    }
    v
}

/// The timed loop. Not inlined, so callgrind can collect inside it alone
/// (`--toggle-collect=*profile_loop*`). Returns calls made and seconds.
#[inline(never)]
pub fn profile_loop(run: &mut dyn FnMut(), seconds: f64, iters: Option<u64>) -> (u64, f64) {
    let start = Instant::now();
    let mut calls = 0u64;
    match iters {
        Some(n) => {
            for _ in 0..n {
                run();
            }
            calls = n;
        }
        None => loop {
            run();
            calls += 1;
            if start.elapsed().as_secs_f64() >= seconds {
                break;
            }
        },
    }
    (calls, start.elapsed().as_secs_f64())
}

/// Runs `cargo xtask profile`.
///
/// # Errors
/// Unknown kernel, variant or shape; a missing profiler (with how to install it); a
/// profiler run that failed.
pub fn run(args: &ProfileArgs) -> Result<()> {
    let suite = suites::suite(&args.kernel)?;
    let shape = args.shape.as_deref().unwrap_or(suite.default_shape);
    let case = (suite.from_shape)(shape)
        .map_err(|e| format!("{e} (for {}: {})", suite.name, suite.shape_help))?;
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(format!("--seconds {}: expected a positive number", args.seconds).into());
    }
    let threads =
        crate::plan::parse_threads(std::slice::from_ref(&args.threads), crate::all_threads())?[0];
    let variant = match &args.variant {
        Some(v) => crate::plan::parse_variants(std::slice::from_ref(v))?
            .and_then(|v| v.into_iter().next())
            .ok_or("--variant: empty")?,
        None => kernels::Isa::best().name().to_string(),
    };

    if args.perf || args.callgrind {
        return run_under_tool(args, &variant, shape);
    }

    let mut impls: Vec<Impl> = (case.setup)();
    let names: Vec<String> = impls.iter().map(|i| i.name.clone()).collect();
    let imp = impls
        .iter_mut()
        .find(|i| i.name == variant)
        .ok_or_else(|| {
            format!(
                "{} has no implementation {variant:?} here (it has: {})",
                case.id(),
                names.join(", ")
            )
        })?;
    if let Some(t) = imp.fixed_threads {
        if t != threads {
            return Err(format!(
                "{variant} runs at {t} thread(s) in this process \
                 ({}): use --threads {t}",
                crate::peers::MATMUL_THREADS_VAR
            )
            .into());
        }
    }
    let pool = crate::thread_pool(threads)?;
    eprintln!(
        "profiling {} {variant} ({}) at {threads} thread(s), pid {}",
        case.id(),
        case.shape,
        std::process::id()
    );
    let run = &mut imp.run;
    let (seconds, iters) = (args.seconds, args.iters);
    let (calls, elapsed) = pool.install(move || {
        run(threads); // warm-up: page in the inputs and fill the packing-buffer pool
        profile_loop(&mut || run(threads), seconds, iters)
    });
    let per_call = elapsed / calls.max(1) as f64;
    let gflops = if case.flops > 0.0 {
        format!("{:.2} GFLOP/s, ", case.flops / per_call / 1e9)
    } else {
        String::new()
    };
    println!(
        "{} {variant} t={threads}: {calls} calls in {elapsed:.3} s, {} per call, {gflops}{:.2} GB/s",
        case.id(),
        crate::report::fmt_time(per_call),
        case.bytes / per_call / 1e9,
    );
    Ok(())
}

/// The total of a callgrind output file (its `summary:` or `totals:` line).
pub fn callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn run_under_tool(args: &ProfileArgs, variant: &str, shape: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out_dir = crate::default_out_dir();
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let stem = format!(
        "{}.{variant}.{}",
        args.kernel,
        shape.replace(['/', ' ', '\\'], "_")
    );
    let (tool, out, iters, mut cmd) = if args.perf {
        let Some(perf) = find_in_path("perf") else {
            return Err(install_hint("perf").into());
        };
        let out = out_dir.join(format!("perf-stat.{stem}.txt"));
        let mut cmd = Command::new(perf);
        cmd.args(["stat", "-e", PERF_EVENTS, "-o"])
            .arg(&out)
            .arg("--")
            .arg(&exe);
        ("perf", out, args.iters, cmd)
    } else {
        let Some(valgrind) = find_in_path("valgrind") else {
            return Err(install_hint("valgrind").into());
        };
        if variant == kernels::Isa::Avx512.name() {
            eprintln!(
                "warning: valgrind does not emulate AVX-512: under it the CPU shows no \
                 avx512f and this variant is refused; compare avx2/portable/scalar instead"
            );
        }
        let out = out_dir.join(format!("callgrind.{stem}.out"));
        let mut out_arg = OsString::from("--callgrind-out-file=");
        out_arg.push(&out);
        let mut cmd = Command::new(valgrind);
        cmd.args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*profile_loop*",
        ])
        .arg(out_arg)
        .arg(&exe);
        let iters = args.iters.unwrap_or(CALLGRIND_DEFAULT_ITERS);
        ("valgrind", out, Some(iters), cmd)
    };
    cmd.args(child_args(args, variant, shape, iters));
    eprintln!("running: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {tool}: {e}"))?;
    if !status.success() {
        let hint = if args.perf {
            " (if perf cannot open counters: run as root or \
             `sysctl kernel.perf_event_paranoid=1`)"
        } else {
            ""
        };
        return Err(format!("{tool} run failed: {status}{hint}").into());
    }
    let text = std::fs::read_to_string(&out)
        .map_err(|e| format!("{tool} wrote no {}: {e}", out.display()))?;
    if args.perf {
        println!("{}", text.trim_end());
        if text.contains("<not supported>") {
            println!(
                "note: <not supported> counters: this machine (often a VM) exposes no hardware \
                 counters to perf; --callgrind counts instructions without them"
            );
        }
        println!("perf stat output kept in {}", out.display());
    } else {
        let iters = iters.unwrap_or(1).max(1);
        match callgrind_total(&text) {
            Some(ir) => println!(
                "callgrind: {ir} instructions in {iters} calls = {} per call (inside the loop only)",
                ir / iters
            ),
            None => println!("callgrind: no total found in {}", out.display()),
        }
        println!("details: callgrind_annotate {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProfileArgs {
        ProfileArgs {
            kernel: "gemm".into(),
            variant: None,
            shape: None,
            seconds: 2.5,
            iters: None,
            threads: "1".into(),
            perf: true,
            callgrind: false,
        }
    }

    #[test]
    fn child_args_drop_the_tool_flag_and_pin_variant_and_shape() {
        let a = args();
        let v = child_args(&a, "avx2", "64x64x64", None);
        assert_eq!(
            v,
            [
                "profile",
                "gemm",
                "--variant",
                "avx2",
                "--shape",
                "64x64x64",
                "--seconds",
                "2.5",
                "--threads",
                "1"
            ]
        );
        let v = child_args(&a, "scalar", "8", Some(3));
        assert_eq!(&v[v.len() - 2..], ["--iters", "3"]);
    }

    #[test]
    fn profile_loop_counts_iterations() {
        let mut n = 0;
        let (calls, _) = profile_loop(&mut || n += 1, 100.0, Some(4));
        assert_eq!((calls, n), (4, 4));
        let (calls, secs) = profile_loop(&mut || {}, 0.01, None);
        assert!(calls >= 1 && secs >= 0.01);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut a = args();
        a.perf = false;
        a.kernel = "gemv".into();
        assert!(run(&a).unwrap_err().to_string().contains("unknown kernel"));
        a.kernel = "gemm".into();
        a.shape = Some("12x".into());
        let err = run(&a).unwrap_err().to_string();
        assert!(err.contains("MxKxN"), "{err}");
        a.shape = Some("8".into());
        a.variant = Some("sse9".into());
        assert!(run(&a).unwrap_err().to_string().contains("unknown"));
        a.variant = Some("scalar".into());
        a.threads = "zero".into();
        assert!(run(&a).is_err());
        a.threads = "1".into();
        a.seconds = 0.0;
        assert!(run(&a).is_err());
    }

    #[test]
    fn a_tiny_profile_runs() {
        let mut a = args();
        a.perf = false;
        a.shape = Some("16".into());
        a.variant = Some("scalar".into());
        a.iters = Some(2);
        run(&a).unwrap();
    }

    #[test]
    fn callgrind_totals_are_read() {
        let text = "version: 1\nevents: Ir\nsummary: 2011318\nfn=(1) x\n";
        assert_eq!(callgrind_total(text), Some(2011318));
        assert_eq!(callgrind_total("totals: 7\n"), Some(7));
        assert_eq!(callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn tool_lookup_and_hints() {
        assert!(find_in_path("surely-not-a-tool-xyz").is_none());
        assert!(install_hint("perf").contains("apt-get install linux-perf"));
        assert!(install_hint("valgrind").contains("apt-get install valgrind"));
    }
}
