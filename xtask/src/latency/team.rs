//! Another library's thread pool in this process, for the `after-pool` condition: a team
//! of `threads` threads (the caller and `threads − 1` workers) that behaves like an OpenMP
//! runtime with its default wait policy. A parallel region busy-computes for a while on
//! every thread; then, like libgomp's workers, each worker spins for
//! [`SPIN_COUNT`] `spin_loop` hints (libgomp's default `GOMP_SPINCOUNT` of `PAUSE`
//! instructions) waiting for the next region before it sleeps. Our call, made right after
//! a region, so shares the cores with spinning threads, as it does in a real program that
//! mixes libraries.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `spin_loop` hints a worker spends waiting before it sleeps: libgomp's default
/// `GOMP_SPINCOUNT` (300 000) when `OMP_WAIT_POLICY` is unset.
pub const SPIN_COUNT: u64 = 300_000;

struct Shared {
    generation: AtomicU64,
    done: AtomicUsize,
    stop: AtomicBool,
    work_ns: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The team (see the module docs of `latency::team`). Dropping it stops and joins the
/// workers.
pub struct SpinTeam {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Floating-point work for about `d` (the clock is read every few thousand operations).
fn busy(d: Duration) {
    let t0 = Instant::now();
    let mut x = 1.0f64;
    while t0.elapsed() < d {
        for _ in 0..2048 {
            x = black_box(x * 1.000_000_1 + 1e-9);
        }
    }
    black_box(x);
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u64;
        while shared.generation.load(Ordering::Acquire) == seen
            && !shared.stop.load(Ordering::Acquire)
            && spins < SPIN_COUNT
        {
            spin_loop();
            spins += 1;
        }
        if shared.generation.load(Ordering::Acquire) == seen && !shared.stop.load(Ordering::Acquire)
        {
            let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            while shared.generation.load(Ordering::Acquire) == seen
                && !shared.stop.load(Ordering::Acquire)
            {
                guard = shared
                    .wake
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        seen = shared.generation.load(Ordering::Acquire);
        busy(Duration::from_nanos(shared.work_ns.load(Ordering::Relaxed)));
        shared.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl SpinTeam {
    /// A team of `threads` threads in all (the caller of [`SpinTeam::region`] is one).
    pub fn new(threads: usize) -> SpinTeam {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            work_ns: AtomicU64::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("xtask-spin-{i}"))
                    .spawn(move || worker(&s))
                    .expect("a thread starts")
            })
            .collect();
        SpinTeam { shared, workers }
    }

    /// One parallel region: every thread computes for about `work`; returns when all are
    /// done (the workers then spin, and later sleep, waiting for the next region).
    pub fn region(&self, work: Duration) {
        let s = &self.shared;
        s.work_ns.store(work.as_nanos() as u64, Ordering::Relaxed);
        s.done.store(0, Ordering::Release);
        {
            let _guard = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.generation.fetch_add(1, Ordering::AcqRel);
        }
        s.wake.notify_all();
        busy(work);
        while s.done.load(Ordering::Acquire) < self.workers.len() {
            spin_loop();
        }
    }
}

impl Drop for SpinTeam {
    fn drop(&mut self) {
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_run_on_every_thread_and_the_team_stops() {
        for threads in [1, 3] {
            let team = SpinTeam::new(threads);
            for _ in 0..3 {
                team.region(Duration::from_micros(200));
            }
            // Once the workers sleep, a region still wakes them.
            std::thread::sleep(Duration::from_millis(30));
            team.region(Duration::from_micros(100));
            assert_eq!(
                team.shared.done.load(Ordering::Acquire),
                threads - 1,
                "{threads}"
            );
        }
    }
}
