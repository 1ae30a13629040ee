//! This machine's measured limits: FMA peak per ISA and thread count, and memory bandwidth.
//!
//! These are measured twice. Once at the start of a run, for the `machine` block of the
//! report (`peak_gflops`, `peak_gflops_max`, `bandwidth_gbs`). And once more inside every
//! case's rotation ([`crate::rotation`]): the runner adds a trial of the same loops (one
//! sample of [`crate::stats::Timing::sample_s`] per round) as members of the rotation, and
//! a case's `% of peak` is of the best trial of *its* rotation, taken within milliseconds
//! of its own samples. On a shared host the peak of the start can be far from the peak of
//! the moment (one run: a two-thread peak of 109.6 GFLOP/s at the start, a fastest trial of
//! 163.8), which put kernels at 124 % of "their peak"; against the bound measured beside
//! them they cannot exceed 100 % unless the measurement itself went wrong, and the runner
//! flags that case as a measuring error.
//!
//! **Peak.** For each variant a loop of independent multiply-adds on as many accumulators
//! as it takes to hide the latency (`acc = acc·x + y`, which neither overflows nor goes
//! subnormal: it converges to `y / (1 − x)`), in the instructions that variant's GEMM
//! microkernel compiles to:
//!
//! | variant              | loop                                  | flops per iteration |
//! |----------------------|---------------------------------------|---------------------|
//! | `scalar`, `portable` | 12 chains of 4-lane `mul` + `add`     | 96                  |
//! | `avx2`               | 12 ymm `vfmadd` chains                | 192                 |
//! | `avx512`             | 16 zmm `vfmadd` chains                | 512                 |
//!
//! The first row is the target's baseline vectors (SSE2 on x86-64) without FMA: the
//! `wide`-based portable kernel compiles to them, and LLVM auto-vectorises the scalar
//! kernel to the same instructions (it beats a truly scalar ceiling), so both share it.
//!
//! The iteration count is calibrated to about [`PEAK_TRIAL_S`] per trial; of
//! [`PEAK_TRIALS`] trials the median is the peak (`peak_gflops`) and the fastest is kept as
//! well (`peak_gflops_max`). The median, because every case is reported by its median
//! sample too: on the shared dev VM the clock drifts by several per cent within seconds
//! (one run: trials of this loop from 173 to 187 GFLOP/s while the GEMM microkernel held
//! 176), and a best trial catches the fastest moment, which a case's median never sees.
//! With `t` threads the same loop runs on every thread of a `t`-thread pool at once
//! (`broadcast`) and the flops of all are summed over the wall time. This is the speed the
//! core really sustains, AVX-512 clock offsets included, rather than a datasheet number.
//!
//! **Bandwidth.** `dst[i] = src[i] + 1` over two 128 MiB buffers of `u64` (together
//! [`BANDWIDTH_BYTES`], far beyond any last-level cache), split evenly over the pool's
//! threads: (bytes read + bytes written) / wall time, best of [`TRIALS`]. That is the
//! traffic of the out-of-place exp and softmax kernels (read n, write n, ordinary stores),
//! counted the way their cases count bytes, so a memory-bound kernel near 100% is at the
//! memory's limit.

use crate::report::Machine;
use kernels::Isa;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

/// Target duration of one peak trial, seconds.
pub const PEAK_TRIAL_S: f64 = 0.05;
/// Trials per bandwidth measurement; the best is kept.
pub const TRIALS: usize = 3;
/// Trials per peak measurement; the median is the peak, the best is also reported.
pub const PEAK_TRIALS: usize = 7;
/// Memory streamed for the bandwidth: two buffers of half this (larger than any LLC).
pub const BANDWIDTH_BYTES: usize = 256 << 20;

const X: f32 = 0.999_999;
const Y: f32 = 1e-7;

/// A calibrated FMA loop: `run(iters)` performs `iters × flops_per_iter` flops.
#[derive(Clone, Copy)]
pub struct PeakLoop {
    /// Which instructions it runs (ISAs sharing a loop share the measurement).
    pub kind: &'static str,
    /// Floating-point operations per iteration.
    pub flops_per_iter: f64,
    /// Runs the loop; the result only keeps it alive.
    pub run: fn(u64) -> f32,
}

/// The peak loop of `isa`, when this CPU has the ISA and there is one for it.
pub fn peak_loop(isa: Isa) -> Option<PeakLoop> {
    if !isa.is_supported() {
        return None;
    }
    match isa {
        Isa::Scalar | Isa::Portable => Some(PeakLoop {
            kind: "baseline",
            flops_per_iter: 96.0,
            run: baseline_loop,
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => Some(PeakLoop {
            kind: "avx2-fma",
            flops_per_iter: 192.0,
            run: x86::avx2_loop,
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(PeakLoop {
            kind: "avx512-fma",
            flops_per_iter: 512.0,
            run: x86::avx512_loop,
        }),
        // No peak loop of their own off x86-64, and none for NEON (never supported).
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2Fma | Isa::Avx512 => None,
        Isa::Neon => None,
    }
}

/// 12 chains of 4-lane multiply-adds in the baseline vectors of the target (SSE2 on
/// x86-64): the ceiling of the `wide`-based portable kernel, which has no FMA without
/// target features, and of the scalar kernel, which LLVM auto-vectorises to the same
/// instructions.
#[cfg(target_arch = "x86_64")]
fn baseline_loop(iters: u64) -> f32 {
    x86::sse_loop(iters)
}

/// 12 chains of 4-lane multiply-adds that LLVM packs into the target's baseline vectors.
#[cfg(not(target_arch = "x86_64"))]
fn baseline_loop(iters: u64) -> f32 {
    let (x, y) = (black_box(X), black_box(Y));
    let mut a = [[1.0f32; 4]; 12];
    for _ in 0..iters {
        for v in a.iter_mut() {
            for l in v.iter_mut() {
                *l = *l * x + y;
            }
        }
    }
    a.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{X, Y};
    use kernels::Isa;
    use std::arch::x86_64::*;

    /// SSE is part of x86-64, so this needs no detection. (`allow`: newer compilers treat
    /// baseline-feature intrinsics as safe to call, older ones do not.)
    #[allow(unused_unsafe)]
    pub(super) fn sse_loop(iters: u64) -> f32 {
        // SAFETY: SSE is always present on x86-64; the store writes 4 floats into a 4-float
        // array.
        unsafe {
            let (x, y) = (_mm_set1_ps(X), _mm_set1_ps(Y));
            let mut acc = [_mm_set1_ps(1.0); 12];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm_add_ps(_mm_mul_ps(*a, x), y);
                }
            }
            let mut s = _mm_setzero_ps();
            for a in acc {
                s = _mm_add_ps(s, a);
            }
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn avx2_body(iters: u64) -> f32 {
        // SAFETY: AVX2 and FMA are present (caller contract); the store writes 8 floats
        // into an 8-float array.
        unsafe {
            let (x, y) = (_mm256_set1_ps(X), _mm256_set1_ps(Y));
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut s = _mm256_setzero_ps();
            for a in acc {
                s = _mm256_add_ps(s, a);
            }
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_tf(iters: u64) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { avx2_body(iters) }
    }

    pub(super) fn avx2_loop(iters: u64) -> f32 {
        assert!(Isa::Avx2Fma.is_supported());
        // SAFETY: AVX2 and FMA were detected just above.
        unsafe { avx2_tf(iters) }
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn avx512_body(iters: u64) -> f32 {
        // SAFETY: AVX-512F is present (caller contract); the store writes 16 floats into a
        // 16-float array.
        unsafe {
            let (x, y) = (_mm512_set1_ps(X), _mm512_set1_ps(Y));
            let mut acc = [_mm512_set1_ps(1.0); 16];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
            let mut s = _mm512_setzero_ps();
            for a in acc {
                s = _mm512_add_ps(s, a);
            }
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_tf(iters: u64) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { avx512_body(iters) }
    }

    pub(super) fn avx512_loop(iters: u64) -> f32 {
        assert!(Isa::Avx512.is_supported());
        // SAFETY: AVX-512F was detected just above.
        unsafe { avx512_tf(iters) }
    }
}

/// Iterations of `run` that take about `target_s` on one thread.
pub fn calibrate(run: fn(u64) -> f32, target_s: f64) -> u64 {
    let mut iters = 1000u64;
    loop {
        let t0 = Instant::now();
        black_box(run(black_box(iters)));
        let dt = t0.elapsed().as_secs_f64();
        if dt >= target_s / 4.0 || iters >= 1 << 40 {
            return ((iters as f64 * target_s / dt.max(1e-9)) as u64).max(1);
        }
        iters *= 4;
    }
}

/// Measured FMA peak of `lp` in GFLOP/s on every thread of `pool` at once: the median and
/// the fastest of [`PEAK_TRIALS`] trials.
pub fn fma_peak_gflops(lp: PeakLoop, pool: &rayon::ThreadPool) -> (f64, f64) {
    let iters = calibrate(lp.run, PEAK_TRIAL_S);
    let threads = pool.current_num_threads() as f64;
    let trials: Vec<f64> = (0..PEAK_TRIALS)
        .map(|_| {
            let t0 = Instant::now();
            pool.broadcast(|_| black_box((lp.run)(black_box(iters))));
            let dt = t0.elapsed().as_secs_f64();
            threads * iters as f64 * lp.flops_per_iter / dt / 1e9
        })
        .collect();
    // The same statistics as a case's samples (`max_s` is the fastest trial here).
    let s = crate::stats::Stats::from_samples(&trials, 1).expect("PEAK_TRIALS > 0 finite trials");
    (s.median_s, s.max_s)
}

/// `dst[i] = src[i] + 1`: a streaming read and an ordinary (write-allocate) store per
/// element, the traffic pattern of the out-of-place exp and softmax kernels.
fn stream_add_one(src: &[u64], dst: &mut [u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.wrapping_add(1);
    }
}

/// Seconds of one pass of `dst[i] = src[i] + 1` by `pool`'s threads over disjoint parts of
/// `src` → `dst` together (the bytes it moves: `2 · size_of_val(src)`).
pub fn bandwidth_pass(src: &[u64], dst: &mut [u64], pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let per = src.len().div_ceil(pool.current_num_threads()).max(1);
    let t0 = Instant::now();
    pool.install(|| {
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| stream_add_one(s, d))
    });
    black_box(&dst[0]);
    t0.elapsed().as_secs_f64()
}

/// Measured streaming bandwidth in GB/s, bytes read plus bytes written, of `pool`'s
/// threads running `dst[i] = src[i] + 1` over disjoint parts of `src` → `dst` together.
pub fn bandwidth_gbs(src: &[u64], dst: &mut [u64], pool: &rayon::ThreadPool) -> f64 {
    let bytes = 2.0 * std::mem::size_of_val(src) as f64;
    bandwidth_pass(src, dst, pool); // untimed: faults the pages in
    (0..TRIALS)
        .map(|_| bytes / bandwidth_pass(src, dst, pool) / 1e9)
        .fold(0.0, f64::max)
}

/// Measures the peak of every ISA this CPU runs and the bandwidth, at each pool's thread
/// count (`pools` as `(threads, pool)`).
pub fn measure_machine(pools: &[(usize, rayon::ThreadPool)]) -> Machine {
    let mut m = Machine {
        cpu: crate::cpu_name(),
        cores: crate::all_threads(),
        ..Machine::default()
    };
    type ByThreads = BTreeMap<String, f64>;
    let mut measured: Vec<(&str, ByThreads, ByThreads)> = Vec::new();
    for isa in Isa::available() {
        let Some(lp) = peak_loop(isa) else { continue };
        let (median, max) = match measured.iter().find(|(k, _, _)| *k == lp.kind) {
            Some((_, median, max)) => (median.clone(), max.clone()),
            None => {
                let (mut median, mut max) = (ByThreads::new(), ByThreads::new());
                for (t, pool) in pools {
                    let (med, best) = fma_peak_gflops(lp, pool);
                    median.insert(t.to_string(), med);
                    max.insert(t.to_string(), best);
                }
                measured.push((lp.kind, median.clone(), max.clone()));
                (median, max)
            }
        };
        m.peak_gflops.insert(isa.name().to_string(), median);
        m.peak_gflops_max.insert(isa.name().to_string(), max);
    }
    let src = vec![1u64; BANDWIDTH_BYTES / 16];
    let mut dst = vec![0u64; BANDWIDTH_BYTES / 16];
    for (t, pool) in pools {
        let gbs = bandwidth_gbs(&src, &mut dst, pool);
        m.bandwidth_gbs.insert(t.to_string(), gbs);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_pass_writes_every_element() {
        let src: Vec<u64> = (0..1003).collect();
        let mut dst = vec![0u64; 1003];
        let pool = crate::thread_pool(2).unwrap();
        assert!(bandwidth_gbs(&src, &mut dst, &pool) > 0.0);
        assert!(dst.iter().zip(&src).all(|(d, s)| *d == s + 1));
    }

    #[test]
    fn every_available_isa_has_a_peak_loop_that_stays_finite() {
        for isa in Isa::available() {
            let lp = peak_loop(isa).unwrap_or_else(|| panic!("no peak loop for {isa}"));
            let r = (lp.run)(10_000);
            // Converges to y / (1 - x) = 0.1 per lane from 1.0: finite and positive.
            assert!(r.is_finite() && r > 0.0, "{isa}: {r}");
        }
        assert!(peak_loop(Isa::Neon).is_none());
    }

    #[test]
    fn peak_is_positive() {
        let pool = crate::thread_pool(1).unwrap();
        let lp = peak_loop(Isa::Scalar).unwrap();
        let (median, max) = fma_peak_gflops(lp, &pool);
        assert!(median > 0.0 && max >= median, "{median} {max}");
    }
}
