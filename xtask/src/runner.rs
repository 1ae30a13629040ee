//! The runner: samples each selected (case, thread count) in rotation with its bound trials
//! ([`measure_case`]) and turns the samples into report records (percent of the bound
//! measured beside them, ratios to our fastest variant).

use crate::case::{Bound, Case, Impl};
use crate::peak;
use crate::peers::TORCH;
use crate::plan::Plan;
use crate::report::Record;
use crate::rotation::{self, Member};
use crate::stats::{Stats, Timing};
use crate::suites;
use crate::torch::TorchPeer;
use crate::Result;
use indicatif::ProgressBar;
use kernels::Isa;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The bounds measured inside one rotation: the best FMA-peak trial per variant (ISA name)
/// and the best bandwidth trial.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RotationBounds {
    /// ISA name → best trial of its peak loop, GFLOP/s.
    pub peak_gflops: BTreeMap<String, f64>,
    /// Best bandwidth trial, GB/s (memory-bound cases).
    pub bandwidth_gbs: Option<f64>,
}

impl RotationBounds {
    /// The bound of `isa`; `None` (a peer): the best over the measured variants.
    pub fn peak(&self, isa: Option<&str>) -> Option<f64> {
        match isa {
            Some(isa) => self.peak_gflops.get(isa).copied(),
            None => self.peak_gflops.values().copied().reduce(f64::max),
        }
        .filter(|p| *p > 0.0)
    }
}

/// Turns one implementation's samples into a report record: `pct_peak` (compute-bound)
/// and `pct_bw` (memory-bound) against the bounds of its rotation, `measuring_error` when
/// either exceeds 100. The ratio fields are left empty ([`add_ratios`] fills them).
pub fn record(
    case: &Case,
    imp: &Impl,
    threads: usize,
    stats: &Stats,
    bounds: &RotationBounds,
) -> Record {
    let per_s = |x: f64| {
        if stats.median_s > 0.0 {
            x / stats.median_s / 1e9
        } else {
            0.0
        }
    };
    let gflops = per_s(case.flops);
    let gbs = per_s(imp.bytes.unwrap_or(case.bytes));
    let (peak, pct_peak) = match case.bound {
        Bound::Compute => {
            let p = bounds.peak(imp.isa.map(Isa::name));
            (p, p.map(|p| 100.0 * gflops / p))
        }
        Bound::Memory | Bound::Cache => (None, None),
    };
    let (bw, pct_bw) = match (case.bound, bounds.bandwidth_gbs.filter(|b| *b > 0.0)) {
        (Bound::Memory, Some(b)) => (Some(b), Some(100.0 * gbs / b)),
        _ => (None, None),
    };
    let measuring_error = pct_peak.is_some_and(|p| p > 100.0) || pct_bw.is_some_and(|p| p > 100.0);
    Record {
        suite: case.suite.to_string(),
        case: case.name.clone(),
        imp: imp.name.clone(),
        threads,
        shape: case.shape.clone(),
        median_s: stats.median_s,
        min_s: stats.min_s,
        max_s: stats.max_s,
        gflops,
        pct_peak,
        gbs,
        rounds: stats.samples,
        rotation_peak_gflops: peak,
        rotation_bw_gbs: bw,
        pct_bw,
        measuring_error,
        ..Record::default()
    }
}

/// Fills the ratio fields of `records` (one per entry of `samples`, the per-round times of
/// one rotation): the baseline is our fastest variant by median (`is_ours[i]`), each
/// record's ratio the per-round `time / baseline time` ([`rotation::ratio_stats`]). Leaves
/// them empty when no variant of ours is among them.
pub fn add_ratios(records: &mut [Record], samples: &[&[f64]], is_ours: &[bool]) {
    let base = (0..records.len())
        .filter(|&i| is_ours[i])
        .min_by(|&a, &b| records[a].median_s.total_cmp(&records[b].median_s));
    let Some(base) = base else { return };
    let name = records[base].imp.clone();
    for i in 0..records.len() {
        if let Some(r) = rotation::ratio_stats(samples[i], samples[base]) {
            let rec = &mut records[i];
            rec.ratio = Some(r.median_s);
            rec.ratio_min = Some(r.min_s);
            rec.ratio_max = Some(r.max_s);
            rec.baseline = Some(name.clone());
        }
    }
}

/// Buffers of the bandwidth trial ([`peak::BANDWIDTH_BYTES`] in all), made on first use.
#[derive(Default)]
pub struct BandwidthBuffers(Option<(Vec<u64>, Vec<u64>)>);

impl BandwidthBuffers {
    fn get(&mut self) -> (&[u64], &mut [u64]) {
        let (src, dst) = self.0.get_or_insert_with(|| {
            (
                vec![1u64; peak::BANDWIDTH_BYTES / 16],
                vec![0u64; peak::BANDWIDTH_BYTES / 16],
            )
        });
        (src, dst)
    }
}

/// What one bound trial of a rotation measures.
enum BoundTrial {
    /// An FMA-peak loop for these ISA names, `iters` iterations per thread per call.
    Peak(peak::PeakLoop, Vec<&'static str>, u64),
    /// One bandwidth pass.
    Bandwidth,
}

/// Samples one (case, thread count) in rotation: `impls` (those that run at `threads`)
/// plus the bound trials its [`Bound`] calls for, and returns one record per implementation
/// with a valid measurement, ratios filled.
pub fn measure_case(
    case: &Case,
    impls: &mut [&mut Impl],
    threads: usize,
    pool: &rayon::ThreadPool,
    timing: &Timing,
    bw: &mut BandwidthBuffers,
) -> Vec<Record> {
    if impls.is_empty() {
        return Vec::new();
    }
    // The bound trials: one FMA loop per distinct loop of the variants present (and of the
    // best variant when a peer is present: peers are compared with it), or a bandwidth pass.
    let mut trials: Vec<BoundTrial> = Vec::new();
    match case.bound {
        Bound::Compute => {
            let mut isas: Vec<Isa> = impls.iter().filter_map(|i| i.isa).collect();
            if impls.iter().any(|i| i.isa.is_none()) {
                isas.push(Isa::best());
            }
            for isa in isas {
                let Some(lp) = peak::peak_loop(isa) else {
                    continue;
                };
                match trials.iter_mut().find_map(|t| match t {
                    BoundTrial::Peak(l, names, _) if l.kind == lp.kind => Some(names),
                    _ => None,
                }) {
                    Some(names) if names.contains(&isa.name()) => {}
                    Some(names) => names.push(isa.name()),
                    None => {
                        let iters = peak::calibrate(lp.run, timing.sample_s);
                        trials.push(BoundTrial::Peak(lp, vec![isa.name()], iters));
                    }
                }
            }
        }
        Bound::Memory => trials.push(BoundTrial::Bandwidth),
        Bound::Cache => {}
    }
    let n_impls = impls.len();
    let mut bw_bufs = trials
        .iter()
        .any(|t| matches!(t, BoundTrial::Bandwidth))
        .then(|| bw.get());
    let rot = {
        let mut samplers: Vec<Box<dyn FnMut(u64) -> f64 + '_>> = Vec::new();
        for imp in impls.iter_mut() {
            samplers.push(Box::new(move |calls| imp.sample(threads, calls, pool)));
        }
        for t in &trials {
            match t {
                BoundTrial::Peak(lp, _, iters) => {
                    let (run, iters) = (lp.run, *iters);
                    samplers.push(Box::new(move |calls| {
                        let t0 = Instant::now();
                        for _ in 0..calls {
                            pool.broadcast(|_| black_box(run(black_box(iters))));
                        }
                        t0.elapsed().as_secs_f64()
                    }));
                }
                BoundTrial::Bandwidth => {
                    let Some((src, dst)) = bw_bufs.take() else {
                        continue;
                    };
                    samplers.push(Box::new(move |calls| {
                        (0..calls)
                            .map(|_| peak::bandwidth_pass(src, dst, pool))
                            .sum()
                    }));
                }
            }
        }
        let mut members: Vec<Member<'_>> = samplers
            .iter_mut()
            .enumerate()
            .map(|(i, s)| Member {
                sample: s.as_mut(),
                counted: i < n_impls,
            })
            .collect();
        rotation::measure_rotation(&mut members, timing)
    };
    let mut bounds = RotationBounds::default();
    for (j, t) in trials.iter().enumerate() {
        let best_s = rot.samples[n_impls + j]
            .iter()
            .copied()
            .filter(|s| s.is_finite() && *s > 0.0)
            .reduce(f64::min);
        let Some(best_s) = best_s else { continue };
        match t {
            BoundTrial::Peak(lp, names, iters) => {
                let g = threads as f64 * *iters as f64 * lp.flops_per_iter / best_s / 1e9;
                for name in names {
                    bounds.peak_gflops.insert(name.to_string(), g);
                }
            }
            BoundTrial::Bandwidth => {
                bounds.bandwidth_gbs = Some(peak::BANDWIDTH_BYTES as f64 / best_s / 1e9);
            }
        }
    }
    let mut records = Vec::new();
    let mut samples: Vec<&[f64]> = Vec::new();
    let mut ours = Vec::new();
    for (i, imp) in impls.iter().enumerate() {
        let Some(stats) = rot.stats(i) else { continue };
        records.push(record(case, imp, threads, &stats, &bounds));
        samples.push(&rot.samples[i]);
        ours.push(imp.isa.is_some());
    }
    add_ratios(&mut records, &samples, &ours);
    records
}

/// The torch implementations of `case` (one per op: `torch`, `torch-bf16`, …), when the
/// peer runs and torch can express them; an `Err` says why one has no row (printed by the
/// caller).
fn torch_impls(case: &Case, peer: &Arc<Mutex<TorchPeer>>) -> Vec<Result<Impl>> {
    case.torch
        .iter()
        .map(|op| {
            let op = op.clone();
            peer.lock().expect("not poisoned").prepare(&op)?;
            let peer = peer.clone();
            let mut failed = false;
            let id = case.id();
            let dtype = op.dtype();
            let mut imp = Impl::self_timed(TORCH, move |threads, calls| {
                match peer
                    .lock()
                    .expect("not poisoned")
                    .sample(&op, threads, calls)
                {
                    Ok(t) => t,
                    Err(e) => {
                        if !failed {
                            eprintln!("torch: {id}: {e}");
                            failed = true;
                        }
                        f64::NAN
                    }
                }
            });
            if dtype != kernels::DType::F32 {
                imp.name = format!("{TORCH}-{dtype}");
                imp.bytes = Some(case.bytes * dtype.size() as f64 / 4.0);
            }
            Ok(imp)
        })
        .collect()
}

/// Runs every selected (case, thread count) as one rotation ([`measure_case`]), calling
/// `on_group` with the records of each. `pools` holds one pool per entry of
/// `plan.threads`. The progress bar advances once per (case, thread count). `torch`: the
/// torch peer, when it runs.
pub fn run_plan(
    plan: &Plan,
    pools: &[(usize, rayon::ThreadPool)],
    torch: Option<&Arc<Mutex<TorchPeer>>>,
    progress: &ProgressBar,
    on_group: &mut dyn FnMut(&[Record], Bound),
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut bw = BandwidthBuffers::default();
    for case in &plan.cases {
        progress.set_message(format!("{} (preparing inputs)", case.id()));
        let mut impls: Vec<Impl> = (case.setup)()
            .into_iter()
            .filter(|i| plan.wants(i))
            .collect();
        if let Some(peer) = torch.filter(|_| plan.wants(&Impl::peer(TORCH, |_| {}))) {
            for r in torch_impls(case, peer) {
                match r {
                    Ok(imp) => impls.push(imp),
                    Err(e) => {
                        progress.suspend(|| eprintln!("torch: {}: {e}; no torch row", case.id()))
                    }
                }
            }
        }
        for (threads, pool) in pools {
            let threads = *threads;
            progress.set_message(format!("{} t={threads}", case.id()));
            let mut here: Vec<&mut Impl> = impls
                .iter_mut()
                .filter(|i| i.fixed_threads.is_none_or(|t| t == threads))
                .collect();
            let group = measure_case(case, &mut here, threads, pool, &plan.timing, &mut bw);
            on_group(&group, case.bound);
            records.extend(group);
            progress.inc(1);
        }
    }
    records
}

/// GFLOP/s of the drift reference: our best variant on GEMM 256³ at one thread, measured
/// like any case (its median).
pub fn reference_gflops(
    pool1: &rayon::ThreadPool,
    timing: &Timing,
) -> Option<(String, String, f64)> {
    let case = suites::gemm_case(256, 256, 256);
    let best = Isa::best();
    let mut imp = (case.setup)().into_iter().find(|i| i.isa == Some(best))?;
    let rec = measure_case(
        &case,
        &mut [&mut imp],
        1,
        pool1,
        &Timing {
            min_samples: timing.min_samples,
            ..*timing
        },
        &mut BandwidthBuffers::default(),
    )
    .pop()?;
    Some((case.id(), rec.imp, rec.gflops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{MATRIXMULTIPLY, STD};

    #[test]
    fn records_report_percent_of_the_rotation_bounds() {
        let bounds = RotationBounds {
            peak_gflops: [("avx2".to_string(), 100.0), ("scalar".to_string(), 40.0)]
                .into_iter()
                .collect(),
            bandwidth_gbs: Some(10.0),
        };
        let stats = Stats::from_samples(&[0.5, 1.0, 2.0], 1).unwrap();
        let c = Case::new("gemm", "x", "s", 50e9, 2e9, Bound::Compute, Vec::new);
        let ours = Impl::ours(Isa::Avx2Fma, |_| {});
        let r = record(&c, &ours, 1, &stats, &bounds);
        assert_eq!((r.gflops, r.gbs, r.pct_peak), (50.0, 2.0, Some(50.0)));
        assert_eq!((r.median_s, r.min_s, r.max_s, r.rounds), (1.0, 0.5, 2.0, 3));
        assert_eq!((r.rotation_peak_gflops, r.pct_bw), (Some(100.0), None));
        assert!(!r.measuring_error);
        // A peer is measured against the best variant's peak.
        let peer = Impl::peer(MATRIXMULTIPLY, |_| {});
        assert_eq!(record(&c, &peer, 1, &stats, &bounds).pct_peak, Some(50.0));
        // Above its bound: flagged as a measuring error, the number kept beside the flag.
        let r = record(&c, &Impl::ours(Isa::Scalar, |_| {}), 1, &stats, &bounds);
        assert_eq!(r.pct_peak, Some(125.0));
        assert!(r.measuring_error);
        // No peak measured: null rather than a made-up number.
        let none = RotationBounds::default();
        assert_eq!(record(&c, &ours, 2, &stats, &none).pct_peak, None);
        let m = Case::new("exp", "x", "s", 1e9, 8e9, Bound::Memory, Vec::new);
        let r = record(&m, &ours, 1, &stats, &bounds);
        assert_eq!(
            (r.pct_peak, r.pct_bw, r.rotation_bw_gbs),
            (None, Some(80.0), Some(10.0))
        );
        let cache = Case::new("exp", "x", "s", 1e9, 8e9, Bound::Cache, Vec::new);
        assert_eq!(record(&cache, &ours, 1, &stats, &bounds).pct_bw, None);
    }

    #[test]
    fn ratios_use_our_fastest_variant_as_baseline() {
        let rec = |imp: &str, median_s: f64| Record {
            imp: imp.into(),
            median_s,
            ..Record::default()
        };
        let mut recs = vec![
            rec("scalar", 4.0),
            rec("avx2", 1.0),
            rec("matrixmultiply", 0.5),
        ];
        let (s, a, m) = ([4.0, 4.0, 8.0], [1.0, 1.0, 2.0], [0.5, 0.6, 1.0]);
        add_ratios(&mut recs, &[&s, &a, &m], &[true, true, false]);
        assert!(recs.iter().all(|r| r.baseline.as_deref() == Some("avx2")));
        assert_eq!(
            (recs[0].ratio, recs[0].ratio_min, recs[0].ratio_max),
            (Some(4.0), Some(4.0), Some(4.0))
        );
        assert_eq!(recs[1].ratio, Some(1.0));
        assert_eq!(
            (recs[2].ratio, recs[2].ratio_min, recs[2].ratio_max),
            (Some(0.5), Some(0.5), Some(0.6))
        );
        // Peers only: no baseline, no ratios.
        let mut peers = vec![rec("matrixmultiply", 1.0)];
        add_ratios(&mut peers, &[&m], &[false]);
        assert_eq!((peers[0].ratio, peers[0].baseline.as_deref()), (None, None));
    }

    /// A deterministic amount of work: `n` rounds of a black-boxed integer recurrence.
    fn spin(n: u64) {
        let mut x = black_box(1u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        black_box(x);
    }

    /// The rotation through the real runner: a fake variant of ours and a fake peer doing
    /// exactly twice its work. Samples of 3 ms, the median of the per-round ratios: robust
    /// to a busy host, which slows both alike within a round.
    #[test]
    fn twice_the_work_reads_a_ratio_close_to_two() {
        let c = Case::new("fake", "spin", "n", 1e6, 1.0, Bound::Compute, Vec::new);
        let mut ours = Impl::ours(Isa::Scalar, |_| spin(20_000));
        let mut peer = Impl::peer(STD, |_| spin(40_000));
        let pool = crate::thread_pool(1).unwrap();
        let timing = Timing {
            warmup_s: 0.02,
            min_time_s: 0.1,
            min_samples: 15,
            max_samples: 1000,
            sample_s: 0.003,
        };
        let recs = measure_case(
            &c,
            &mut [&mut ours, &mut peer],
            1,
            &pool,
            &timing,
            &mut BandwidthBuffers::default(),
        );
        assert_eq!(recs.len(), 2);
        let (a, b) = (&recs[0], &recs[1]);
        assert_eq!((a.imp.as_str(), b.imp.as_str()), ("scalar", STD));
        assert_eq!(a.ratio, Some(1.0));
        assert_eq!(b.baseline.as_deref(), Some("scalar"));
        let r = b.ratio.unwrap();
        assert!((1.6..2.5).contains(&r), "ratio {r}: {b:?}");
        assert!(b.ratio_min.unwrap() <= r && r <= b.ratio_max.unwrap());
        assert!(a.rounds >= 15 && a.rounds == b.rounds);
        // The scalar peak loop rode along: both have a bound, from the same rotation.
        assert!(a.rotation_peak_gflops.is_some() && a.pct_peak.is_some());
    }
}
