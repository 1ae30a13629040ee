//! Who runs the work: the calling thread alone, or the current rayon pool.
//!
//! Every parallel region of the kernels and of the attention crate is a [`for_each`]-style
//! team: the calling thread works through the tasks itself, claiming them from a shared
//! counter, and `threads − 1` helper jobs spawned into the pool claim the rest, so the call
//! never hops to another thread and a helper that wakes late simply claims fewer tasks.
//!
//! Which pool the helpers come from: the pool the caller runs in (a rayon worker's own
//! pool, or rayon's global pool from any other thread), unless the call is inside
//! [`with_pool`], which names a pool for the calling thread without moving the call into
//! it (the C ABI's `fa_set_num_threads` uses this). [`current_threads`] is the thread
//! count such a region may use.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How a kernel call may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
pub(crate) struct SyncPtr<T = f32>(*mut T);

// Not derived: a derive would require `T: Copy`, and the pointer is copyable for any `T`.
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SyncPtr<T> {}

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

thread_local! {
    /// The pool named by [`with_pool`] for this thread's parallel regions, if any.
    static POOL: RefCell<Option<Arc<rayon::ThreadPool>>> = const { RefCell::new(None) };
}

/// Puts back the previous [`POOL`] of this thread when dropped (also while unwinding).
struct RestorePool(Option<Arc<rayon::ThreadPool>>);

impl Drop for RestorePool {
    fn drop(&mut self) {
        let prev = self.0.take();
        POOL.with(|p| *p.borrow_mut() = prev);
    }
}

/// Runs `f` on the calling thread with `pool` as the pool its parallel regions draw
/// helper threads from, and `pool`'s size as their thread count ([`current_threads`]).
///
/// Unlike [`rayon::ThreadPool::install`], `f` is not moved to a worker of the pool: a call
/// too small to split runs entirely on the calling thread and never waits for a sleeping
/// worker to wake (tens to hundreds of microseconds on a virtual machine). Nested calls
/// apply to their own extent; the previous setting is restored on return or unwind.
///
/// ```
/// use std::sync::Arc;
/// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap());
/// let n = fastattn_kernels::parallel::with_pool(&pool, fastattn_kernels::parallel::current_threads);
/// assert_eq!(n, 3);
/// ```
pub fn with_pool<R>(pool: &Arc<rayon::ThreadPool>, f: impl FnOnce() -> R) -> R {
    let prev = POOL.with(|p| p.borrow_mut().replace(Arc::clone(pool)));
    let _restore = RestorePool(prev);
    f()
}

/// The pool named by [`with_pool`] on this thread, if any.
fn named_pool() -> Option<Arc<rayon::ThreadPool>> {
    POOL.with(|p| p.borrow().clone())
}

/// The number of threads a parallel region started on this thread may use: the size of
/// the pool named by [`with_pool`], else of the rayon pool the thread is in (rayon's
/// global pool outside any pool). At least 1.
pub fn current_threads() -> usize {
    POOL.with(|p| p.borrow().as_ref().map(|pool| pool.current_num_threads()))
        .unwrap_or_else(rayon::current_num_threads)
        .max(1)
}

/// Runs `task(t)` for every `t` in `0..ntasks` on up to `threads` threads, the calling
/// one included, as a team (see the [module docs](self)); returns when all have run.
/// Tasks may run parallel regions of their own (nested teams).
///
/// Which task runs on which thread varies from call to call, so a task must write only
/// what no other task touches; the result is then independent of `threads`.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let sum = AtomicUsize::new(0);
/// fastattn_kernels::parallel::for_each(2, 100, |t| {
///     sum.fetch_add(t, Ordering::Relaxed);
/// });
/// assert_eq!(sum.into_inner(), 4950);
/// ```
pub fn for_each(threads: usize, ntasks: usize, task: impl Fn(usize) + Sync) {
    team(threads, ntasks, false, task);
}

/// [`for_each`] for fallible tasks: returns the error of the lowest-numbered task that
/// failed (so the error does not depend on the thread count), or `Ok`. Once a task has
/// failed, tasks not yet started are skipped.
///
/// ```
/// let r = fastattn_kernels::parallel::try_for_each(2, 10, |t| if t % 4 == 3 { Err(t) } else { Ok(()) });
/// assert_eq!(r, Err(3));
/// ```
///
/// # Errors
/// The lowest-numbered failing task's error.
pub fn try_for_each<E: Send>(
    threads: usize,
    ntasks: usize,
    task: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let failed = AtomicBool::new(false);
    let first: Mutex<Option<(usize, E)>> = Mutex::new(None);
    team(threads, ntasks, false, |t| {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = task(t) {
            failed.store(true, Ordering::Relaxed);
            let mut g = first.lock().unwrap_or_else(PoisonError::into_inner);
            if g.as_ref().is_none_or(|(i, _)| t < *i) {
                *g = Some((t, e));
            }
        }
    });
    match first.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Runs `task(i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter),
/// on up to `threads` threads ([`for_each`]). `chunk == 0` is treated as 1.
///
/// ```
/// let mut v = vec![0usize; 10];
/// fastattn_kernels::parallel::for_each_chunk_mut(2, &mut v, 3, |i, c| c.fill(i));
/// assert_eq!(v, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
/// ```
pub fn for_each_chunk_mut<T: Send>(
    threads: usize,
    data: &mut [T],
    chunk: usize,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    let r = try_for_each_chunk_mut(threads, data, chunk, |i, c| {
        task(i, c);
        Ok::<(), std::convert::Infallible>(())
    });
    match r {
        Ok(()) => {}
        Err(e) => match e {},
    }
}

/// [`for_each_chunk_mut`] for fallible tasks, with [`try_for_each`]'s error rule.
///
/// # Errors
/// The lowest-numbered failing task's error.
pub fn try_for_each_chunk_mut<T: Send, E: Send>(
    threads: usize,
    data: &mut [T],
    chunk: usize,
    task: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let mut none: [u8; 0] = [];
    try_for_each_chunk_mut2(threads, data, chunk, &mut none, 0, |i, c, _| task(i, c))
}

/// Like [`try_for_each_chunk_mut`] over two slices cut in step: task `i` gets the `i`-th
/// `chunk_a`-long piece of `a` and the `i`-th `chunk_b`-long piece of `b`. There are as
/// many tasks as `a` has pieces; `b`'s piece is empty where `b` has run out, and every
/// piece of `b` is empty when `chunk_b == 0`.
///
/// ```
/// let (mut a, mut b) = (vec![0u8; 4], vec![0u32; 6]);
/// let r = fastattn_kernels::parallel::try_for_each_chunk_mut2(2, &mut a, 2, &mut b, 3, |i, x, y| {
///     x.fill(i as u8);
///     y.fill(10 + i as u32);
///     Ok::<(), ()>(())
/// });
/// assert_eq!(r, Ok(()));
/// assert_eq!((a, b), (vec![0, 0, 1, 1], vec![10, 10, 10, 11, 11, 11]));
/// ```
///
/// # Errors
/// The lowest-numbered failing task's error.
pub fn try_for_each_chunk_mut2<A: Send, B: Send, E: Send>(
    threads: usize,
    a: &mut [A],
    chunk_a: usize,
    b: &mut [B],
    chunk_b: usize,
    task: impl Fn(usize, &mut [A], &mut [B]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let ca = chunk_a.max(1);
    let (la, lb) = (a.len(), b.len());
    // SAFETY: each task makes slices of its own pieces only, and pieces are disjoint.
    let (pa, pb) = unsafe { (SyncPtr::new(a.as_mut_ptr()), SyncPtr::new(b.as_mut_ptr())) };
    try_for_each(threads, la.div_ceil(ca), |i| {
        let sa = i * ca;
        let na = ca.min(la - sa);
        let sb = (i * chunk_b).min(lb);
        let nb = chunk_b.min(lb - sb);
        // SAFETY: both ranges are in bounds (`sa + na <= la`, `sb + nb <= lb`), and no
        // other task makes a slice overlapping them while `a` and `b` are mutably
        // borrowed by this call.
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.get().add(sa), na),
                std::slice::from_raw_parts_mut(pb.get().add(sb), nb),
            )
        };
        task(i, x, y)
    })
}

/// Runs `task(t)` for every `t` in `0..ntasks` on up to `threads` threads: the calling
/// thread and `threads − 1` jobs spawned into the pool ([`with_pool`]'s, else the current
/// rayon pool) claim tasks in order
/// from a shared counter, so a helper that starts late (a sleeping worker takes tens of
/// microseconds to wake) simply claims fewer. Returns when every task has run.
///
/// No task waits for a task that has not started, so this cannot deadlock when the pool
/// is busy (from inside a rayon task, unclaimed work is done by the caller). The caller
/// spins, instead of sleeping, while the last claimed tasks finish.
///
/// `leaf`: the tasks never wait for other jobs of the pool (they start no team or scope
/// of their own, as GEMM tiles do not). Then helpers also spin until every task is done,
/// which keeps their threads awake for a next call that follows at once (a woken thread
/// can take milliseconds on a VM). Helpers of teams whose tasks start teams of their own
/// (attention's heads, then tiles) must not: spinning pool threads could leave no thread
/// to run the inner teams' helpers that a caller from outside the pool waits for, while
/// that caller holds the very task the spinners wait for (a deadlock).
pub(crate) fn team(threads: usize, ntasks: usize, leaf: bool, task: impl Fn(usize) + Sync) {
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
    // The same body for both kinds of scope (a closure cannot be generic over the
    // scope's lifetime).
    macro_rules! body {
        () => {
            |s| {
                for _ in 1..threads.min(ntasks) {
                    s.spawn(|_| {
                        work();
                        if leaf {
                            wait_all();
                        }
                    });
                }
                work();
                wait_all();
            }
        };
    }
    match named_pool() {
        Some(pool) => pool.in_place_scope(body!()),
        None => rayon::in_place_scope(body!()),
    }
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
        team(threads, ntasks, true, |t| {
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
    fn with_pool_keeps_the_call_on_the_calling_thread() {
        use std::sync::Arc;
        let me = std::thread::current().id();
        let one = Arc::new(pool(1));
        // A pool of one: every task runs here, none is handed to the pool's thread.
        let ids = Mutex::new(Vec::new());
        with_pool(&one, || {
            assert_eq!(current_threads(), 1);
            for_each(current_threads(), 50, |_| {
                ids.lock().unwrap().push(std::thread::current().id());
            });
        });
        assert!(ids.into_inner().unwrap().iter().all(|&id| id == me));

        // A pool of three: up to three threads, the caller's and the pool's, never the
        // global pool's; the setting ends with the call, also when it unwinds.
        let three = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .thread_name(|i| format!("named-{i}"))
                .build()
                .unwrap(),
        );
        let names = Mutex::new(Vec::new());
        with_pool(&three, || {
            assert_eq!(current_threads(), 3);
            for_each(current_threads(), 300, |_| {
                std::thread::sleep(std::time::Duration::from_micros(50));
                let t = std::thread::current();
                names
                    .lock()
                    .unwrap()
                    .push((t.id() == me, t.name().map(str::to_owned)));
            });
            // Nested settings apply to their own extent.
            with_pool(&one, || assert_eq!(current_threads(), 1));
            assert_eq!(current_threads(), 3);
        });
        for (here, name) in names.into_inner().unwrap() {
            assert!(here || name.is_some_and(|n| n.starts_with("named-")));
        }
        assert_eq!(current_threads(), rayon::current_num_threads());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_pool(&three, || panic!("inside"))
        }));
        assert!(r.is_err());
        assert_eq!(current_threads(), rayon::current_num_threads());
    }

    #[test]
    fn nested_teams_from_callers_outside_the_pool_do_not_deadlock() {
        use std::sync::{mpsc, Arc};
        // More callers from outside the pool than it has threads, each running teams
        // whose tasks run teams: outer helpers must not hold the pool's threads while the
        // callers' inner teams wait for a thread to run their helpers.
        let p = Arc::new(pool(2));
        let (tx, rx) = mpsc::channel();
        for c in 0..3 {
            let (p, tx) = (Arc::clone(&p), tx.clone());
            std::thread::spawn(move || {
                let sum = AtomicUsize::new(0);
                for _ in 0..20 {
                    with_pool(&p, || {
                        for_each(2, 3, |i| {
                            for_each(2, 4, |j| {
                                std::thread::sleep(std::time::Duration::from_micros(20));
                                sum.fetch_add(i * 4 + j, Ordering::Relaxed);
                            })
                        })
                    });
                }
                tx.send((c, sum.into_inner())).unwrap();
            });
        }
        for _ in 0..3 {
            let (c, sum) = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("nested teams finished within 60 s");
            assert_eq!(sum, 20 * 66, "caller {c}");
        }
    }

    #[test]
    fn try_for_each_returns_the_lowest_failing_task_at_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            let r = pool(4).install(|| {
                try_for_each(threads, 200, |t| if t % 37 == 36 { Err(t) } else { Ok(()) })
            });
            assert_eq!(r, Err(36), "{threads} threads");
            assert_eq!(try_for_each(threads, 0, |_| Err(())), Ok(()));
        }
    }

    #[test]
    fn chunk_helpers_cover_every_element_once_on_edge_sizes() {
        for threads in [1, 2, 3] {
            for len in [0usize, 1, 2, 7, 13, 64] {
                for chunk in [0usize, 1, 3, 8, 100] {
                    let mut v = vec![usize::MAX; len];
                    for_each_chunk_mut(threads, &mut v, chunk, |i, c| {
                        assert!(c.len() <= chunk.max(1));
                        c.fill(i);
                    });
                    let want: Vec<usize> = (0..len).map(|j| j / chunk.max(1)).collect();
                    assert_eq!(v, want, "len {len} chunk {chunk}");
                    // The second slice in step, shorter than the first.
                    let mut a = vec![0usize; len];
                    let mut b = vec![usize::MAX; len / 2];
                    let r =
                        try_for_each_chunk_mut2(threads, &mut a, chunk, &mut b, 1, |i, x, y| {
                            x.fill(i);
                            y.fill(i);
                            Ok::<(), ()>(())
                        });
                    assert_eq!(r, Ok(()));
                    assert_eq!(a, want);
                    let nb = (len / 2).min(len.div_ceil(chunk.max(1)));
                    assert!(b[..nb].iter().enumerate().all(|(i, &x)| x == i));
                    assert!(b[nb..].iter().all(|&x| x == usize::MAX));
                }
            }
        }
    }

    #[test]
    fn team_propagates_a_panic_without_hanging() {
        for size in [1, 2, 3] {
            let r = pool(size).install(|| {
                std::panic::catch_unwind(|| {
                    team(size.max(2), 40, true, |t| {
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
            team(4, 400, true, |t| {
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
