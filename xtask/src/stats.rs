//! The statistics model: how long and how often a measurement runs ([`Timing`]) and what it
//! yields ([`Stats`]: median, min and max of the samples).

/// How long and how often each measurement runs. For a rotation
/// ([`crate::rotation::measure_rotation`]) a "sample" is a round (one sample of every
/// member) and the time is per counted member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Seconds of untimed calls first (at least one call), per member.
    pub warmup_s: f64,
    /// Keep sampling until this many seconds have been sampled (per member)...
    pub min_time_s: f64,
    /// ...and at least this many samples (rounds) were taken...
    pub min_samples: usize,
    /// ...but never more than this many.
    pub max_samples: usize,
    /// Calls are batched so one sample lasts about this long (timer overhead stays small).
    pub sample_s: f64,
}

impl Timing {
    /// The default: about 0.4 s of samples per implementation, at least 11 rounds, samples
    /// of about 2 ms (more, shorter rounds: each ratio is taken within one round, so more
    /// rounds steady the median ratio on a noisy host).
    pub const QUICK: Timing = Timing {
        warmup_s: 0.05,
        min_time_s: 0.4,
        min_samples: 11,
        max_samples: 1000,
        sample_s: 0.002,
    };
    /// `--full`: about 1 s per implementation, at least 15 rounds.
    pub const FULL: Timing = Timing {
        warmup_s: 0.2,
        min_time_s: 1.0,
        min_samples: 15,
        max_samples: 5000,
        sample_s: 0.003,
    };
}

/// Summary of one measurement. Each sample is the mean time of one call over a batch of
/// `calls_per_sample` back-to-back calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median of the samples, seconds per call.
    pub median_s: f64,
    /// Fastest sample.
    pub min_s: f64,
    /// Slowest sample.
    pub max_s: f64,
    /// Number of samples.
    pub samples: usize,
    /// Calls per sample.
    pub calls_per_sample: u64,
}

impl Stats {
    /// Median (mean of the two middle values for an even count), min and max. `None` for no
    /// samples or a NaN.
    ///
    /// ```
    /// let s = xtask::stats::Stats::from_samples(&[3.0, 1.0, 2.0, 10.0], 1).unwrap();
    /// assert_eq!((s.median_s, s.min_s, s.max_s), (2.5, 1.0, 10.0));
    /// ```
    pub fn from_samples(samples: &[f64], calls_per_sample: u64) -> Option<Stats> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median_s: median,
            min_s: v[0],
            max_s: v[n - 1],
            samples: n,
            calls_per_sample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::from_samples(&[5.0, 1.0, 3.0], 7).unwrap();
        assert_eq!(
            (s.median_s, s.min_s, s.max_s, s.samples),
            (3.0, 1.0, 5.0, 3)
        );
        assert_eq!(s.calls_per_sample, 7);
        let s = Stats::from_samples(&[4.0, 1.0, 2.0, 3.0], 1).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s), (2.5, 1.0, 4.0));
        let s = Stats::from_samples(&[2.0], 1).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s), (2.0, 2.0, 2.0));
    }

    #[test]
    fn stats_refuse_empty_and_nan() {
        assert!(Stats::from_samples(&[], 1).is_none());
        assert!(Stats::from_samples(&[1.0, f64::NAN], 1).is_none());
    }
}
