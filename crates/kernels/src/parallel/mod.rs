//! Who runs the work: the calling thread alone, or a team of it and helper threads.
//!
//! Every parallel region of the kernels and of the attention crate is a [`for_each`]-style
//! team over a fixed list of tasks (fixed by the problem, so results are bit-identical at
//! any thread count): the calling thread works through the tasks itself, claiming them from
//! a shared counter, and up to `threads − 1` of the library's helper threads join and claim
//! the rest. The call never hops to another thread, and never waits for a helper that has
//! not started: one that wakes late claims fewer tasks, or none. The worst case is the
//! one-thread time plus one task.
//!
//! **How many threads**: [`current_threads`]: [`with_threads`] for the calling thread's
//! extent (the Python binding follows `torch.get_num_threads()` this way), else
//! [`set_num_threads`] (the C ABI's `fa_set_num_threads`), else the size of the rayon pool
//! the caller runs in (`RAYON_NUM_THREADS`, else one per CPU). `OMP_NUM_THREADS` is not
//! read: it sizes torch's and OpenBLAS's pools, and reaches fastattn's Python calls through
//! `torch.get_num_threads()`.
//!
//! **Between calls** helpers spin briefly, then keep looking for work while yielding their
//! CPU to any runnable thread, for the *blocktime* ([`set_blocktime`], default 20 ms, env
//! `FASTATTN_BLOCKTIME`), then sleep. The helper threads are the library's own (started on
//! demand, named `fastattn-N`), not rayon's: a rayon scope makes its caller wait until
//! every spawned job has run, so a sleeping rayon worker stalled every call that split.
//!
//! **Small calls** stay on one thread: call sites decide with a [`SplitGate`], which
//! learns what a unit of their work costs on this machine.

pub mod gate;
mod runtime;

pub use gate::SplitGate;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How a kernel call may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Parallelism {
    /// Only the calling thread.
    Sequential,
    /// [`current_threads`] threads (the calling one and helpers), for problems large
    /// enough to gain from them. (The name is historical: the helpers are the library's
    /// own threads; rayon's pool size is only the default thread count.)
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

thread_local! {
    /// The thread count set by [`with_threads`] for this thread's parallel regions.
    static THREADS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The process-wide count set by [`set_num_threads`] (0: none).
static GLOBAL_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Puts back the previous [`THREADS`] of this thread when dropped (also while unwinding).
struct RestoreThreads(Option<usize>);

impl Drop for RestoreThreads {
    fn drop(&mut self) {
        THREADS.with(|t| t.set(self.0));
    }
}

/// Runs `f` on the calling thread with `threads` (at least 1) as the thread count of its
/// parallel regions ([`current_threads`]); helpers come from the library's workers. Nested
/// calls apply to their own extent; the previous setting is restored on return or unwind.
/// The Python binding wraps each call in `with_threads(torch.get_num_threads(), ..)`.
///
/// ```
/// use fastattn_kernels::parallel::{current_threads, with_threads};
/// assert_eq!(with_threads(3, current_threads), 3);
/// ```
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let prev = THREADS.with(|t| t.replace(Some(threads.max(1))));
    let _restore = RestoreThreads(prev);
    f()
}

/// Sets the process-wide thread count of parallel regions (`0`: back to the default, the
/// size of the rayon pool the caller runs in). [`with_threads`] overrides it where it
/// applies. The C ABI's `fa_set_num_threads` calls this.
///
/// ```
/// use fastattn_kernels::parallel::{current_threads, set_num_threads, with_threads};
/// set_num_threads(2);
/// assert_eq!(current_threads(), 2);
/// assert_eq!(with_threads(1, current_threads), 1);
/// set_num_threads(0);
/// ```
pub fn set_num_threads(threads: usize) {
    GLOBAL_THREADS.store(threads, Ordering::Relaxed);
}

/// The number of threads a parallel region started on this thread may use, the caller's
/// included: [`with_threads`]'s count, else [`set_num_threads`]'s, else the size of the
/// rayon pool the thread is in (rayon's global pool outside any pool: `RAYON_NUM_THREADS`,
/// else one per CPU). At least 1.
pub fn current_threads() -> usize {
    THREADS
        .with(Cell::get)
        .or_else(|| Some(GLOBAL_THREADS.load(Ordering::Relaxed)).filter(|&n| n > 0))
        .unwrap_or_else(rayon::current_num_threads)
        .max(1)
}

/// Sets the blocktime: how long a helper thread keeps looking for work after its last
/// task, yielding its CPU to any other runnable thread, before it sleeps (OpenMP's
/// `KMP_BLOCKTIME`). A call that comes within the blocktime finds its helpers awake; a
/// later one wakes them (a few microseconds for the caller, which never waits for them:
/// they join its work when they are up). `Duration::ZERO` sleeps at once,
/// `Duration::MAX` never sleeps. The default is 20 ms, or `FASTATTN_BLOCKTIME` (in
/// milliseconds, or `infinite`) when set.
///
/// ```
/// use std::time::Duration;
/// fastattn_kernels::parallel::set_blocktime(Duration::from_millis(5));
/// assert_eq!(fastattn_kernels::parallel::blocktime(), Duration::from_millis(5));
/// ```
pub fn set_blocktime(d: Duration) {
    runtime::set_blocktime(d);
}

/// The blocktime now in effect ([`set_blocktime`]); `Duration::MAX` for infinite.
pub fn blocktime() -> Duration {
    runtime::blocktime()
}

/// Parses a blocktime as `FASTATTN_BLOCKTIME` gives it: milliseconds (`"0"`, `"0.5"`,
/// `"200"`) or `"infinite"`. `None` for anything else.
///
/// ```
/// use std::time::Duration;
/// use fastattn_kernels::parallel::parse_blocktime;
/// assert_eq!(parse_blocktime("2.5"), Some(Duration::from_micros(2500)));
/// assert_eq!(parse_blocktime("infinite"), Some(Duration::MAX));
/// assert_eq!(parse_blocktime("-1"), None);
/// ```
pub fn parse_blocktime(s: &str) -> Option<Duration> {
    runtime::parse_blocktime(s)
}

/// Test hook: every helper thread sleeps `d` between seeing an open team and joining it,
/// as a helper that wakes late does. Results must not change (tests check they are
/// bit-identical); only the share of tasks the caller runs itself grows. `Duration::ZERO`
/// (the default) turns it off. Not for production use.
pub fn set_helper_delay(d: Duration) {
    runtime::set_helper_delay(d);
}

/// Helper statistics since the process started: `(joins, abstentions)`: how many times a
/// helper joined a team, and how many times an idle helper found a team open but kept
/// out because another thread wanted its CPU (counted once per look, so a long wait
/// counts many). For benchmarks and diagnostics.
pub fn helper_stats() -> (u64, u64) {
    runtime::stats()
}

/// The measured time a sleeping helper takes from a team's publication to joining it (a
/// moving average; 500 µs until measured). For diagnostics and benchmarks.
pub fn helper_wake_time() -> Duration {
    Duration::from_nanos(runtime::wake_ns())
}

/// The number of helper threads started so far (they are started on demand, up to the
/// largest thread count asked for minus one, and live as long as the process).
pub fn helper_threads() -> usize {
    runtime::workers()
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
    team(threads, ntasks, task);
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
    team(threads, ntasks, |t| {
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
/// thread and up to `threads − 1` helpers claim tasks in order from a shared counter
/// ([`runtime`]), so a helper that starts late simply claims fewer, and the caller never
/// waits for one that has not started. Returns when every task has run; rethrows a task's
/// panic.
///
/// No task waits for a task that has not started, so this cannot deadlock, whatever the
/// nesting (a task may run teams of its own) and however many callers there are.
pub(crate) fn team(threads: usize, ntasks: usize, task: impl Fn(usize) + Sync) {
    runtime::team(threads, ntasks, &task);
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
                _ => runtime::backoff(&mut spins),
            }
        }
    }
}

#[cfg(test)]
mod tests;
