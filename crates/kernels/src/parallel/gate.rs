//! Whether a call is worth splitting, decided from what its kind of work has cost on this
//! machine.
//!
//! A second thread pays only when the call runs long enough to cover what splitting costs:
//! publishing the team, a helper noticing it, the cache lines that move between cores, and
//! the task a late helper may still be running when the caller is done. A flop count alone
//! cannot say how long a call runs (the variant, the data type, memory-bound or not), so
//! each call site keeps a [`SplitGate`]: it estimates the one-thread time of a call as its
//! work units times a learned cost per unit, and splits only calls estimated at
//! [`MIN_SPLIT`] or more, with at most one thread per `MIN_SPLIT / 2` of estimated work.
//!
//! The cost per unit starts at the site's prior and is learned from calls near the
//! threshold (which are the ones the decision is about): a call run on one thread gives
//! it directly; a split call bounds it from above (its time times its threads, since
//! `t` threads do not run more than `t` times as fast), which corrects a prior that is too
//! pessimistic. Calls far from the threshold are not timed, so they pay nothing. The
//! decision changes only which threads run a call's tasks, never the tasks, so results do
//! not depend on it.

use crate::Isa;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The estimated one-thread time from which a call is split.
pub const MIN_SPLIT: Duration = Duration::from_micros(40);
const MIN_SPLIT_NS: f64 = 40_000.0;
/// Calls estimated within this factor of [`MIN_SPLIT`] are timed to refine the estimate.
const BAND: f64 = 4.0;

/// A call site's learned cost of one unit of work, per kernel variant, and the split
/// decision it drives ([module docs](self)).
///
/// ```
/// use fastattn_kernels::{parallel::SplitGate, Isa};
/// static GATE: SplitGate = SplitGate::new(0.01); // a prior of 10 ps per unit
/// // 1000 units: about 10 ns, far too little to split.
/// assert_eq!(GATE.threads(Isa::Scalar, 1000.0, 8), 1);
/// // 1e9 units: about 10 ms at the prior, worth every thread.
/// assert_eq!(GATE.threads(Isa::Avx2Fma, 1e9, 8), 8);
/// ```
pub struct SplitGate {
    prior: f64,
    /// f64 bits of the learned ns per unit, per variant; 0: nothing learned yet.
    learned: [AtomicU64; 5],
}

impl SplitGate {
    /// A gate whose estimate starts at `prior_ns_per_unit` for the SIMD variants (the
    /// scalar variant starts 16× and the portable one 4× as costly).
    pub const fn new(prior_ns_per_unit: f64) -> SplitGate {
        SplitGate {
            prior: prior_ns_per_unit,
            learned: [const { AtomicU64::new(0) }; 5],
        }
    }

    fn slot(isa: Isa) -> (usize, f64) {
        match isa {
            Isa::Scalar => (0, 16.0),
            Isa::Portable => (1, 4.0),
            Isa::Avx2Fma => (2, 1.0),
            Isa::Avx512 => (3, 1.0),
            Isa::Neon => (4, 4.0),
        }
    }

    /// The estimated nanoseconds per unit of work under `isa`.
    pub fn ns_per_unit(&self, isa: Isa) -> f64 {
        let (i, f) = Self::slot(isa);
        match self.learned[i].load(Ordering::Relaxed) {
            0 => self.prior * f,
            bits => f64::from_bits(bits),
        }
    }

    /// The threads a call of `units` work may use, out of `max`: 1 when its estimated
    /// one-thread time is below [`MIN_SPLIT`], else up to one per half of it.
    pub fn threads(&self, isa: Isa, units: f64, max: usize) -> usize {
        if max <= 1 {
            return 1;
        }
        let est = units * self.ns_per_unit(isa);
        if est < MIN_SPLIT_NS {
            1
        } else {
            // `as` saturates; at least 2 since est >= MIN_SPLIT.
            max.min((est / (MIN_SPLIT_NS / 2.0)) as usize).max(2)
        }
    }

    /// Runs `f`, a call of `units` work on `threads` threads (as [`SplitGate::threads`]
    /// chose), and learns from its time when the call is near the threshold.
    ///
    /// The estimate also tells the call's teams whether to wake sleeping helpers: not for
    /// calls estimated under 100 µs, for which the wake-up syscall is a visible loss.
    pub fn run<R>(&self, isa: Isa, units: f64, threads: usize, f: impl FnOnce() -> R) -> R {
        let est = units * self.ns_per_unit(isa);
        // `as` saturates (NaN gives 0).
        let f = move || super::runtime::with_expected(est as u64, f);
        if !(units > 0.0 && (MIN_SPLIT_NS / BAND..=MIN_SPLIT_NS * BAND).contains(&est)) {
            return f();
        }
        let t0 = Instant::now();
        let r = f();
        let ns = t0.elapsed().as_nanos() as f64;
        let sample = ns / units;
        let cur = self.ns_per_unit(isa);
        let next = if threads <= 1 {
            // A direct measurement.
            cur + 0.25 * (sample - cur)
        } else {
            // An upper bound: move down toward it only.
            let bound = sample * threads as f64;
            if bound < cur {
                cur + 0.25 * (bound - cur)
            } else {
                cur
            }
        };
        if next.is_finite() && next > 0.0 {
            let (i, _) = Self::slot(isa);
            self.learned[i].store(next.to_bits(), Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_splits_only_calls_estimated_above_the_threshold() {
        let g = SplitGate::new(1.0);
        assert_eq!(g.threads(Isa::Avx512, 1000.0, 4), 1);
        assert_eq!(g.threads(Isa::Avx512, MIN_SPLIT_NS, 4), 2);
        assert_eq!(g.threads(Isa::Avx512, MIN_SPLIT_NS * 1.6, 4), 3);
        assert_eq!(g.threads(Isa::Avx512, 1e12, 4), 4);
        assert_eq!(g.threads(Isa::Avx512, 1e12, 1), 1);
        // The scalar variant is assumed slower until measured.
        assert_eq!(g.threads(Isa::Scalar, MIN_SPLIT_NS / 8.0, 4), 4);
    }

    #[test]
    fn gate_learns_from_calls_near_the_threshold() {
        let g = SplitGate::new(1.0);
        // A one-thread call of 16000 units (16 µs at the prior) that takes far longer
        // raises the estimate until such calls are split.
        for _ in 0..20 {
            g.run(Isa::Avx512, 16000.0, 1, || {
                std::thread::sleep(Duration::from_micros(400))
            });
        }
        assert!(g.ns_per_unit(Isa::Avx512) > 5.0);
        assert!(g.threads(Isa::Avx512, 16000.0, 2) == 2);
        // Other variants keep their own estimates.
        assert_eq!(g.ns_per_unit(Isa::Avx2Fma), 1.0);
        // Calls far below the band are not timed.
        let before = g.ns_per_unit(Isa::Avx2Fma);
        g.run(Isa::Avx2Fma, 1.0, 1, || {
            std::thread::sleep(Duration::from_millis(1))
        });
        assert_eq!(g.ns_per_unit(Isa::Avx2Fma), before);
    }

    #[test]
    fn split_calls_only_lower_the_estimate() {
        let g = SplitGate::new(10.0);
        // 4000 units at 10 ns = 40 µs estimated; a 2-thread run of 1 µs bounds the cost
        // per unit by 2 µs / 4000 = 0.5 ns.
        for _ in 0..30 {
            g.run(Isa::Avx512, 4000.0, 2, || ());
        }
        assert!(g.ns_per_unit(Isa::Avx512) < 10.0);
        let low = g.ns_per_unit(Isa::Avx512);
        // A slow split call does not raise it.
        g.run(Isa::Avx512, 4000.0, 2, || {
            std::thread::sleep(Duration::from_millis(1))
        });
        assert!(g.ns_per_unit(Isa::Avx512) <= low);
    }
}
