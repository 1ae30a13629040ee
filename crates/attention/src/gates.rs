//! When the attention crate's calls are split across threads: one
//! [`SplitGate`] per kind of work, each estimating a call's
//! one-thread time from its work units and the cost per unit it has measured on this
//! machine (see `kernels::parallel::gate`). The decision changes only which threads run a
//! call's tasks, never the tasks, so results do not depend on it.

use crate::job::Job;
use kernels::parallel::SplitGate;
use kernels::{Isa, Parallelism};

/// Prefill-like flash calls: the work unit is `4·lq·lk·(d + dv)` per head (twice the
/// flops, before causal skipping); prior 0.004 ns each (about 120 GFLOP/s on one core).
pub static PREFILL_GATE: SplitGate = SplitGate::new(0.004);

/// Decode-like flash calls (at most 16 query rows per KV head): the same work unit, prior
/// 0.02 ns (a decode with 4 query heads per KV head reading f32 K/V at about 12 GB/s).
pub static DECODE_GATE: SplitGate = SplitGate::new(0.02);

/// The backward: the work unit is `4·lq·lk·(d + dv)` per head; prior 0.01 ns each (the
/// backward does about 2.5 times the forward's flops, at a lower rate).
pub static BACKWARD_GATE: SplitGate = SplitGate::new(0.01);

/// `Linear` projections on a packed weight: the work unit is a flop (`2·rows·d_out·d_in`);
/// prior 0.01 ns (100 GFLOP/s). Not the GEMM's gate: a packed weight runs at another speed.
pub static LINEAR_GATE: SplitGate = SplitGate::new(0.01);

/// The split decision of one flash call.
pub(crate) struct FlashSplit {
    gate: &'static SplitGate,
    isa: Isa,
    units: f64,
    /// Threads its teams may use.
    pub(crate) threads: usize,
}

impl FlashSplit {
    /// Runs the call, letting the gate learn from its time.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        self.gate.run(self.isa, self.units, self.threads, f)
    }
}

/// The split of a flash call over `jobs` (`None` when there are none). Decode-like calls
/// (a few query rows per key) are bound by reading K/V, prefill by compute: their costs
/// per unit differ by an order of magnitude, so each has a gate.
pub(crate) fn flash_split(jobs: &[Job<'_>]) -> Option<FlashSplit> {
    let first = jobs.first()?;
    let units = jobs.iter().fold(0usize, |acc, j| {
        let p = &j.p;
        let w = [p.b, p.hq, p.lq, p.lk, p.d + p.dv]
            .iter()
            .fold(4usize, |a, &x| a.saturating_mul(x));
        acc.saturating_add(w)
    }) as f64;
    let decode = jobs.iter().all(|j| j.p.lq * j.p.hq <= 16 * j.p.hkv);
    let gate = if decode { &DECODE_GATE } else { &PREFILL_GATE };
    let isa = first.p.isa;
    let threads = match first.p.par {
        Parallelism::Rayon => gate.threads(isa, units, kernels::parallel::current_threads()),
        _ => 1,
    };
    Some(FlashSplit {
        gate,
        isa,
        units,
        threads,
    })
}
