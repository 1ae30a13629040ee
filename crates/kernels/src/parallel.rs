//! Who runs the work: the calling thread alone, or the current rayon pool.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// How a kernel call may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallelism {
    /// Only the calling thread.
    Sequential,
    /// The rayon pool the call is made in (the global pool, or the one of an enclosing
    /// `ThreadPool::install`), for problems large enough to gain from it.
    #[default]
    Rayon,
}

/// A raw pointer that may cross threads. Built only through [`SyncPtr::new`], an `unsafe`
/// call, so every pointer shared between threads is a deliberate choice.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T = f32>(*mut T);

// SAFETY: a SyncPtr is only created (unsafe `new`) where the caller guarantees that the
// threads sharing it access disjoint elements, or only read.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// # Safety
    /// Every thread that receives the pointer must only read through it, or write elements
    /// no other thread touches during the sharing.
    pub(crate) unsafe fn new(p: *mut T) -> Self {
        SyncPtr(p)
    }

    /// The pointer.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Spins briefly, then yields the CPU: the wait of a thread for work another running
/// thread is finishing (a few microseconds to a task's length). Sleeping instead (a futex)
/// costs tens of microseconds to wake on a virtual machine.
fn backoff(spins: &mut u32) {
    if *spins < 1 << 10 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins = spins.saturating_add(1);
}

/// Adds one to a counter when dropped (also while unwinding, so waiters never hang).
struct CountOnDrop<'a>(&'a AtomicUsize);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Runs `task(t)` for every `t` in `0..ntasks` on up to `threads` threads: the calling
/// thread and `threads − 1` jobs spawned into the current rayon pool claim tasks in order
/// from a shared counter, so a helper that starts late (a sleeping worker takes tens of
/// microseconds to wake) simply claims fewer. Returns when every task has run.
///
/// No task waits for a task that has not started, so this cannot deadlock when the pool
/// is busy (from inside a rayon task, unclaimed work is done by the caller). The caller
/// spins, instead of sleeping, while the last claimed tasks finish.
pub(crate) fn team(threads: usize, ntasks: usize, task: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let work = || loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= ntasks {
            break;
        }
        let _done = CountOnDrop(&done);
        task(t);
    };
    if threads <= 1 || ntasks <= 1 {
        work();
        return;
    }
    let wait_all = || {
        let mut spins = 0;
        while done.load(Ordering::Acquire) < ntasks {
            backoff(&mut spins);
        }
    };
    rayon::in_place_scope(|s| {
        for _ in 1..threads.min(ntasks) {
            s.spawn(|_| {
                work();
                wait_all();
            });
        }
        work();
        wait_all();
    });
}

/// One-time initialisation of numbered items shared by a [`team`]: the first thread to
/// need item `i` runs its initialiser; the others wait (spinning) until it is done.
pub(crate) struct Claims<const N: usize> {
    state: [AtomicU8; N],
}

const EMPTY: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// Puts a claimed item back to `EMPTY` if its initialiser unwinds, so no waiter hangs.
struct Unclaim<'a>(&'a AtomicU8);

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        self.0.store(EMPTY, Ordering::Release);
    }
}

impl<const N: usize> Claims<N> {
    /// `N` items, none initialised.
    pub(crate) fn new() -> Self {
        Claims {
            state: [const { AtomicU8::new(EMPTY) }; N],
        }
    }

    /// Returns once item `i` (< `N`) is initialised, running `init` here if no other
    /// thread has started it. What `init` wrote is visible to the caller on return.
    pub(crate) fn ensure(&self, i: usize, init: impl FnOnce()) {
        let s = &self.state[i];
        let mut init = Some(init);
        let mut spins = 0;
        loop {
            match s.load(Ordering::Acquire) {
                READY => return,
                EMPTY => {
                    if s.compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        let unclaim = Unclaim(s);
                        if let Some(init) = init.take() {
                            init();
                        }
                        std::mem::forget(unclaim);
                        s.store(READY, Ordering::Release);
                        return;
                    }
                }
                _ => backoff(&mut spins),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// `team` over `ntasks` tasks on `threads` threads: how many times each task ran.
    fn runs(threads: usize, ntasks: usize) -> Vec<usize> {
        let counts: Vec<AtomicUsize> = (0..ntasks).map(|_| AtomicUsize::new(0)).collect();
        team(threads, ntasks, |t| {
            counts[t].fetch_add(1, Ordering::Relaxed);
        });
        counts.into_iter().map(AtomicUsize::into_inner).collect()
    }

    #[test]
    fn team_runs_every_task_exactly_once() {
        for threads in [1, 2, 3, 8] {
            for ntasks in [0, 1, 2, 5, 97] {
                // From outside any pool, inside pools smaller and larger than the team, and
                // from inside a task of a busy pool.
                assert!(runs(threads, ntasks).iter().all(|&c| c == 1));
                for size in [1, 2, 4] {
                    let got = pool(size).install(|| runs(threads, ntasks));
                    assert!(got.iter().all(|&c| c == 1), "{threads} {ntasks} {size}");
                    let nested: Vec<Vec<usize>> = pool(size).install(|| {
                        (0..6)
                            .into_par_iter()
                            .map(|_| runs(threads, ntasks))
                            .collect()
                    });
                    assert!(nested.iter().flatten().all(|&c| c == 1));
                }
            }
        }
    }

    #[test]
    fn team_propagates_a_panic_without_hanging() {
        for size in [1, 2, 3] {
            let r = pool(size).install(|| {
                std::panic::catch_unwind(|| {
                    team(size.max(2), 40, |t| {
                        assert_ne!(t, 17, "task 17 fails");
                    })
                })
            });
            assert!(r.is_err());
        }
    }

    #[test]
    fn claims_initialise_each_item_once_and_publish_it() {
        const ITEMS: usize = 7;
        let claims = Claims::<ITEMS>::new();
        let inits: Vec<AtomicUsize> = (0..ITEMS).map(|_| AtomicUsize::new(0)).collect();
        // What the initialiser writes, read by every task after `ensure`: a plain store
        // through a shared pointer, as the packed B panels are.
        let mut data = vec![0usize; ITEMS];
        // SAFETY: the tasks below write disjoint elements, each before any read of it.
        let out = unsafe { SyncPtr::new(data.as_mut_ptr()) };
        let bad = AtomicUsize::new(0);
        pool(4).install(|| {
            team(4, 400, |t| {
                // Neighbouring tasks (running at the same time) need the same item, and
                // the initialiser is slow, so the others must wait for it.
                let i = (t / 8) % ITEMS;
                claims.ensure(i, || {
                    inits[i].fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    // SAFETY: only the claimant of item i writes element i.
                    unsafe { out.get().add(i).write(i + 100) };
                });
                // SAFETY: element i is written before `ensure` returns, and never again.
                if unsafe { out.get().add(i).read() } != i + 100 {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        assert_eq!(bad.into_inner(), 0);
        assert!(inits.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert_eq!(data, (100..100 + ITEMS).collect::<Vec<_>>());
    }

    #[test]
    fn a_claim_whose_initialiser_panics_can_be_retried() {
        let claims = Claims::<1>::new();
        let r = std::panic::catch_unwind(|| claims.ensure(0, || panic!("first try fails")));
        assert!(r.is_err());
        let mut ran = false;
        claims.ensure(0, || ran = true);
        assert!(ran);
        claims.ensure(0, || unreachable!("already initialised"));
    }
}
