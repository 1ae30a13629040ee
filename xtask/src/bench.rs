//! `cargo xtask bench`: the runner.
//!
//! A benchmark is a list of [`Case`]s (built by the suites in [`crate::suites`]). A case
//! knows its work (floating-point operations, bytes moved, whether compute or memory bounds
//! it) and how to build its inputs and one [`Impl`] per implementation: each kernel variant
//! this CPU can run and the peers (matrixmultiply, the gemm crate, a materialised
//! attention, std, and torch through a helper process, [`crate::torch`]). The runner
//!
//! 1. selects cases (`--filter`), implementations (`--variant`, `--peers`) and thread
//!    counts (`--threads`);
//! 2. measures the machine first ([`crate::peak`]: FMA peak per ISA and thread count,
//!    memory bandwidth) for the report's `machine` block, and times a reference case (our
//!    best variant on GEMM 256, one thread) that it times again at the end: the **drift**;
//! 3. for every (case, thread count) samples the implementations **in rotation**
//!    ([`crate::rotation`]: `A B C`, `B C A`, …, a few milliseconds a sample), together
//!    with an FMA-peak trial per ISA involved (compute-bound cases) or a bandwidth trial
//!    (memory-bound cases). Each implementation gets its median and min–max per call, its
//!    **ratio** to the baseline (our fastest variant by median), computed round by round
//!    (time / baseline time: > 1 is slower), and its **% of peak** against the best peak
//!    trial of the same rotation; above 100 % it is flagged as a measuring error;
//! 4. streams the table to stdout (a progress bar on stderr) and writes `report.json`,
//!    `report.csv` and `gemm.svg` under `target/bench/` (and with `--markdown` the README's
//!    table); `--compare OLD.json` then prints the change per case.
//!
//! The `latency` suite ([`crate::latency`]: one call timed at a time, after idle gaps and
//! after other pools' work) runs apart from this, before it, and only when `--filter`
//! names it (`--filter latency`).

use crate::case::{Case, Impl};
use crate::compare;
use crate::peers::{matrixmultiply_threads, MATMUL_THREADS_VAR, MATRIXMULTIPLY, PEERS};
use crate::plan::{available_names, BenchArgs, Plan};
use crate::report::{self, Drift, Report, RunInfo, TorchInfo};
use crate::runner::{reference_gflops, run_plan};
use crate::torch::TorchPeer;
use crate::{chart, latency, markdown, peak, suites, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn print_list(cases: &[Case]) {
    println!("cases (suite/case  shape):");
    for c in cases {
        let full = if c.full_only { "  [--full]" } else { "" };
        println!("  {:<24} {}{full}", c.id(), c.shape);
    }
    println!("variants on this CPU: {}", available_names().join(", "));
    println!("peers: {}", PEERS.join(", "));
    let names: Vec<&str> = suites::suites().iter().map(|s| s.name).collect();
    println!("suites: {}", names.join(", "));
    println!("latency cases (only when --filter names them):");
    for c in latency::latency_cases() {
        println!("  {:<24} {}", c.id(), c.shape);
    }
}

/// Starts the torch peer when the plan wants it: `(peer, info)`; prints one line either
/// way (`torch: not available (...); skipping torch peers` when it cannot).
fn start_torch(plan: &Plan) -> (Option<Arc<Mutex<TorchPeer>>>, Option<TorchInfo>) {
    if !plan.wants_torch() {
        return (None, None);
    }
    let python = crate::torch::python();
    let shown = python.display().to_string();
    match TorchPeer::start(python) {
        Ok(peer) => {
            println!("torch: {} ({shown}), OMP_WAIT_POLICY=PASSIVE", peer.version);
            let info = TorchInfo {
                available: true,
                python: shown,
                version: Some(peer.version.clone()),
                note: None,
            };
            (Some(Arc::new(Mutex::new(peer))), Some(info))
        }
        Err(e) => {
            println!("torch: not available ({shown}: {e}); skipping torch peers");
            let info = TorchInfo {
                available: false,
                python: shown,
                version: None,
                note: Some(e.to_string()),
            };
            (None, Some(info))
        }
    }
}

/// The command line that reproduces this run (`cargo xtask bench ...`), shell-quoted.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| markdown::shell_quote(&a))
        .collect();
    format!("cargo xtask {}", args.join(" "))
}

/// Runs `cargo xtask bench`.
///
/// # Errors
/// Bad arguments, an unreadable `--compare` file, or files that cannot be written.
pub fn run(args: &BenchArgs) -> Result<()> {
    let cases: Vec<Case> = suites::suites().iter().flat_map(|s| (s.cases)()).collect();
    if args.list {
        print_list(&cases);
        return Ok(());
    }
    let run_info = RunInfo {
        date_utc: markdown::utc_date(std::time::SystemTime::now()),
        command: command_line(),
    };
    // The latency suite runs apart (one call at a time), first, when a filter names it.
    let (latency_filters, rest) = latency::split_filters(&args.filter, &cases);
    let throughput_args = BenchArgs {
        filter: rest,
        ..args.clone()
    };
    let args = &throughput_args;
    if !latency_filters.is_empty() {
        if args.filter.is_empty() {
            return latency::run(args, &latency_filters, &run_info);
        }
        // Check the throughput run's arguments before spending the latency run's minute.
        Plan::from_args(
            args,
            suites::suites().iter().flat_map(|s| (s.cases)()).collect(),
        )?;
        latency::run(args, &latency_filters, &run_info)?;
        println!();
    }
    let plan = Plan::from_args(args, cases)?;
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(format!("--threshold {}: expected a percentage ≥ 0", args.threshold).into());
    }
    // Read the old report and create the output directory before spending minutes.
    let old = match &args.compare {
        Some(p) => Some(report::read_json(p)?),
        None => None,
    };
    let out_dir = args.out_dir.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let md_path = args.markdown.as_ref().map(|p| {
        if p.trim().is_empty() {
            out_dir.join("README-table.md")
        } else {
            PathBuf::from(p)
        }
    });

    let pools = plan
        .threads
        .iter()
        .map(|&t| Ok((t, crate::thread_pool(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let pool1 = crate::thread_pool(1)?;

    let wants_mm = plan.wants(&Impl::peer(MATRIXMULTIPLY, |_| {}));
    if wants_mm {
        match matrixmultiply_threads() {
            Some(t) if !plan.threads.contains(&t) => eprintln!(
                "note: matrixmultiply runs only at {MATMUL_THREADS_VAR}={t} threads, \
                 which --threads does not include: it is skipped"
            ),
            Some(t) => eprintln!(
                "note: matrixmultiply sizes its own pool once per process \
                 ({MATMUL_THREADS_VAR}={t}): it is measured at {t} thread(s) only"
            ),
            None => {
                eprintln!("note: {MATMUL_THREADS_VAR} unset or invalid: matrixmultiply is skipped")
            }
        }
    }
    let (torch, torch_info) = start_torch(&plan);

    eprintln!("measuring FMA peak and memory bandwidth ...");
    let machine = peak::measure_machine(&pools);
    print!("{}", report::machine_summary(&machine));
    let drift_start = reference_gflops(&pool1, &plan.timing);

    let units = (plan.cases.len() * pools.len()) as u64;
    let progress = ProgressBar::with_draw_target(Some(units), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid progress template"),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    println!(
        "ratios: t/best = time / time of our fastest variant, per round (> 1: slower); \
         % limit: of the peak or bandwidth measured in the same rotation"
    );
    println!("{}", report::table_header());
    let records = run_plan(
        &plan,
        &pools,
        torch.as_ref(),
        &progress,
        &mut |group, bound| {
            progress.suspend(|| {
                for r in group {
                    println!("{}", report::table_row(r, &machine, bound));
                }
            });
        },
    );
    progress.finish_and_clear();
    drop(torch);

    let drift = match (drift_start, reference_gflops(&pool1, &plan.timing)) {
        (Some((case, imp, a)), Some((_, _, b))) => {
            let d = Drift::new(&case, &imp, 1, a, b);
            println!("\n{}", d.line());
            Some(d)
        }
        _ => None,
    };
    let errors = records.iter().filter(|r| r.measuring_error).count();
    if errors > 0 {
        println!(
            "{errors} result(s) above 100 % of the bound measured beside them: MEAS.ERR \
             (measuring_error in report.json), not results"
        );
    }

    let rep = Report {
        machine,
        results: records,
        run: Some(run_info),
        drift,
        torch: torch_info,
    };
    let json = out_dir.join("report.json");
    let csv = out_dir.join("report.csv");
    report::write_json(&json, &rep)?;
    report::write_csv(&csv, &rep.results)?;
    println!("\nwrote {}", json.display());
    println!("wrote {}", csv.display());
    let svg = out_dir.join("gemm.svg");
    if chart::gemm_chart(&svg, &rep.results, &rep.machine)? {
        println!("wrote {}", svg.display());
    } else {
        println!(
            "no square GEMM results at 1 thread: {} not drawn",
            svg.display()
        );
    }
    if let Some(md) = md_path {
        std::fs::write(&md, markdown::table(&rep))
            .map_err(|e| format!("cannot write {}: {e}", md.display()))?;
        println!("wrote {}", md.display());
    }

    if let Some(old) = old {
        let cmp = compare::compare(&old.results, &rep.results);
        println!();
        if old.machine.cpu != rep.machine.cpu {
            println!(
                "warning: comparing across machines ({} vs {})",
                old.machine.cpu, rep.machine.cpu
            );
        }
        print!("{}", compare::format_comparison(&cmp, args.threshold));
    }
    Ok(())
}
