//! Interleaved measurement: the members of one (case, thread count) are sampled in
//! rotation, so that a slow moment of a shared host (another process's build, a clock
//! change) falls on every member alike and the ratios between them survive it.
//!
//! # The schedule
//! 1. **Warm-up**, member by member: calls until [`Timing::warmup_s`] has passed (at least
//!    one), which also estimates the time per call.
//! 2. **Batch size** per member: `max(1, floor(sample_s / time per call))` calls, so a
//!    sample lasts about [`Timing::sample_s`] and the timer's overhead stays small.
//! 3. **Rounds.** Each round takes one sample of every member. The order rotates: round `r`
//!    starts at member `r mod n` and goes on cyclically (`A B C`, `B C A`, `C A B`, …, see
//!    [`rotation_order`]), so no member always runs right after the same neighbour (a
//!    member that heats the core or trashes the cache then penalises every other member
//!    equally often). Rounds go on until at least [`Timing::min_samples`] rounds are done
//!    and [`Timing::min_time_s`] × (number of *counted* members) seconds were spent
//!    sampling, or [`Timing::max_samples`] rounds. Uncounted members (the peak and
//!    bandwidth trials the runner adds) ride along in every round without lengthening it.
//!
//! The result is one time per call per member per round ([`Rotation::samples`]).
//!
//! # Ratios
//! A ratio is computed **round by round**: `ratio[r] = time(member, r) / time(baseline, r)`,
//! the member's time relative to the baseline's *in the same round*, so > 1 means slower
//! than the baseline (2.0: it takes twice as long) and < 1 faster. [`ratio_stats`] gives the
//! median and the min–max of these per-round ratios. Because both times of a round were
//! taken a few milliseconds apart, a slow phase of the host cancels out of the ratio even
//! when it moves both medians.

use crate::stats::{Stats, Timing};
use std::time::Instant;

/// A member of a rotation: `sample(calls)` performs `calls` back-to-back calls and returns
/// the seconds they took (timed by the member itself, so a helper process can time its
/// own calls without the pipe's round trip).
pub type Sampler<'a> = dyn FnMut(u64) -> f64 + 'a;

/// One member of a rotation.
pub struct Member<'a> {
    /// Performs calls and returns their seconds.
    pub sample: &'a mut Sampler<'a>,
    /// Whether this member's time counts towards the rotation's minimum time (false for
    /// the peak and bandwidth trials, which only ride along).
    pub counted: bool,
}

/// What a rotation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// `samples[member][round]`: seconds per call of that member in that round.
    pub samples: Vec<Vec<f64>>,
    /// Calls per sample, per member.
    pub batch: Vec<u64>,
}

impl Rotation {
    /// Rounds taken.
    pub fn rounds(&self) -> usize {
        self.samples.first().map_or(0, Vec::len)
    }

    /// Median, min and max of member `i`'s per-call times; `None` if it has none or a NaN.
    pub fn stats(&self, i: usize) -> Option<Stats> {
        Stats::from_samples(&self.samples[i], self.batch[i])
    }
}

/// The order in which round `round` samples `n` members: starting at `round mod n`, then
/// cyclically. Over any `n` consecutive rounds every member is first once.
///
/// ```
/// use xtask::rotation::rotation_order;
/// assert_eq!(rotation_order(3, 0), [0, 1, 2]);
/// assert_eq!(rotation_order(3, 1), [1, 2, 0]);
/// assert_eq!(rotation_order(3, 5), [2, 0, 1]);
/// ```
pub fn rotation_order(n: usize, round: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    (0..n).map(|j| (round + j) % n).collect()
}

/// Calls per sample for a member that took `per_call_s` per call in its warm-up.
pub fn batch_size(per_call_s: f64, sample_s: f64) -> u64 {
    if per_call_s > 0.0 && per_call_s.is_finite() {
        ((sample_s / per_call_s).floor() as u64).clamp(1, 1 << 20)
    } else if per_call_s.is_finite() {
        1 << 20
    } else {
        1
    }
}

/// Runs the rotation described in the [module docs](self) over `members`.
pub fn measure_rotation(members: &mut [Member<'_>], timing: &Timing) -> Rotation {
    let n = members.len();
    let mut batch = Vec::with_capacity(n);
    for m in members.iter_mut() {
        let start = Instant::now();
        let (mut calls, mut spent) = (0u64, 0.0f64);
        loop {
            spent += (m.sample)(1);
            calls += 1;
            if start.elapsed().as_secs_f64() >= timing.warmup_s {
                break;
            }
        }
        batch.push(batch_size(spent / calls as f64, timing.sample_s));
    }
    let counted = members.iter().filter(|m| m.counted).count().max(1);
    let budget_s = timing.min_time_s * counted as f64;
    let mut samples = vec![Vec::with_capacity(timing.min_samples.max(16)); n];
    let sampling = Instant::now();
    let mut round = 0usize;
    while n > 0
        && round < timing.max_samples.max(1)
        && (round < timing.min_samples || sampling.elapsed().as_secs_f64() < budget_s)
    {
        for i in rotation_order(n, round) {
            let s = (members[i].sample)(batch[i]);
            samples[i].push(s / batch[i] as f64);
        }
        round += 1;
    }
    Rotation { samples, batch }
}

/// Median, min and max of the per-round ratios `times[r] / baseline[r]` (see the
/// [module docs](self)). `None` when the lengths differ, there are no rounds, or a ratio
/// is not finite.
///
/// ```
/// use xtask::rotation::ratio_stats;
/// let r = ratio_stats(&[2.0, 4.0, 3.0], &[1.0, 2.0, 1.0]).unwrap();
/// assert_eq!((r.median_s, r.min_s, r.max_s), (2.0, 2.0, 3.0));
/// ```
pub fn ratio_stats(times: &[f64], baseline: &[f64]) -> Option<Stats> {
    if times.len() != baseline.len() || times.is_empty() {
        return None;
    }
    let ratios: Vec<f64> = times
        .iter()
        .zip(baseline)
        .map(|(t, b)| t / b)
        .collect::<Vec<_>>();
    if ratios.iter().any(|r| !r.is_finite()) {
        return None;
    }
    Stats::from_samples(&ratios, 1)
}

/// Times `f` alone: a rotation of one member ([`measure_rotation`]), so
/// warm-up, then samples of `calls_per_sample` calls each (chosen from the warm-up so a
/// sample lasts about `timing.sample_s`) until `min_time_s` and `min_samples` are both
/// reached, or `max_samples`.
pub fn measure(f: &mut dyn FnMut(), timing: &Timing) -> Stats {
    let mut sample = |calls: u64| {
        let t0 = Instant::now();
        for _ in 0..calls {
            f();
        }
        t0.elapsed().as_secs_f64()
    };
    let mut members = [Member {
        sample: &mut sample,
        counted: true,
    }];
    measure_rotation(&mut members, timing)
        .stats(0)
        .expect("at least one finite sample")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn rotation_order_rotates_the_start_and_visits_everyone_once() {
        assert!(rotation_order(0, 3).is_empty());
        assert_eq!(rotation_order(1, 7), [0]);
        for n in 1..6 {
            let mut firsts = vec![0; n];
            for r in 0..3 * n {
                let mut o = rotation_order(n, r);
                firsts[o[0]] += 1;
                assert_eq!(o[0], r % n);
                o.sort_unstable();
                assert_eq!(o, (0..n).collect::<Vec<_>>(), "n={n} r={r}");
            }
            assert!(firsts.iter().all(|&f| f == 3), "{firsts:?}");
        }
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        // Round 2 is slow for both (a noisy host): the per-round ratio stays 2.
        let base = [1.0, 1.0, 5.0, 1.0];
        let twice = [2.0, 2.0, 10.0, 2.0];
        let r = ratio_stats(&twice, &base).unwrap();
        assert_eq!(
            (r.median_s, r.min_s, r.max_s, r.samples),
            (2.0, 2.0, 2.0, 4)
        );
        // The baseline against itself is exactly 1.
        let r = ratio_stats(&base, &base).unwrap();
        assert_eq!((r.median_s, r.min_s, r.max_s), (1.0, 1.0, 1.0));
        // A faster member reads below 1; min and max are of the ratios, not of the times.
        let r = ratio_stats(&[0.5, 0.6, 0.4], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((r.median_s, r.min_s, r.max_s), (0.5, 0.4, 0.6));
        assert!(ratio_stats(&[1.0], &[1.0, 2.0]).is_none());
        assert!(ratio_stats(&[], &[]).is_none());
        assert!(ratio_stats(&[1.0], &[0.0]).is_none());
    }

    #[test]
    fn batch_sizes_fill_a_sample() {
        assert_eq!(batch_size(0.001, 0.003), 3);
        assert_eq!(batch_size(0.01, 0.003), 1);
        assert_eq!(batch_size(0.0, 0.003), 1 << 20);
        assert_eq!(batch_size(f64::NAN, 0.003), 1);
    }

    #[test]
    fn rotation_samples_members_in_rotating_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mk = |id: usize| {
            let log = log.clone();
            move |calls: u64| {
                log.borrow_mut().push((id, calls));
                1e-3 * calls as f64
            }
        };
        let (mut a, mut b, mut c) = (mk(0), mk(1), mk(2));
        let mut members = [
            Member {
                sample: &mut a,
                counted: true,
            },
            Member {
                sample: &mut b,
                counted: true,
            },
            Member {
                sample: &mut c,
                counted: false,
            },
        ];
        let timing = Timing {
            warmup_s: 0.0,
            min_time_s: 0.0,
            min_samples: 4,
            max_samples: 4,
            sample_s: 0.003,
        };
        let rot = measure_rotation(&mut members, &timing);
        assert_eq!(rot.rounds(), 4);
        assert_eq!(rot.batch, [3, 3, 3]);
        let order: Vec<usize> = log.borrow()[3..].iter().map(|&(id, _)| id).collect();
        // Warm-up (one call each), then rounds 0..4: 012, 120, 201, 012.
        assert_eq!(order, [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2]);
        assert!(log.borrow()[3..].iter().all(|&(_, calls)| calls == 3));
        let s = rot.stats(1).unwrap();
        assert!((s.median_s - 1e-3).abs() < 1e-12 && s.calls_per_sample == 3);
    }

    #[test]
    fn measure_takes_min_samples_and_orders_stats() {
        let mut calls = 0u64;
        let timing = Timing {
            warmup_s: 0.0,
            min_time_s: 0.0,
            min_samples: 7,
            max_samples: 100,
            sample_s: 0.0,
        };
        let s = measure(&mut || calls += 1, &timing);
        assert_eq!(s.samples, 7);
        assert_eq!(s.calls_per_sample, 1);
        assert_eq!(calls, 1 + 7);
        assert!(s.min_s <= s.median_s && s.median_s <= s.max_s);
    }

    #[test]
    fn measure_batches_fast_calls_and_respects_max_samples() {
        let timing = Timing {
            warmup_s: 0.001,
            min_time_s: 10.0,
            min_samples: 1,
            max_samples: 3,
            sample_s: 0.001,
        };
        let mut x = 0u64;
        let s = measure(&mut || x = std::hint::black_box(x + 1), &timing);
        assert_eq!(s.samples, 3);
        assert!(s.calls_per_sample > 1, "{s:?}");
    }
}
