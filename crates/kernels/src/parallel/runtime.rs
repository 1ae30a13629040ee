//! The helper threads behind every team: a process-wide set of workers, the table of open
//! jobs they help with, and how they wait between jobs (spin, then yield, then sleep).
//!
//! # The protocol
//! A team's caller reserves a free [`Slot`], points it at its [`Job`] (which lives on the
//! caller's stack) and opens it with a number of *seats*: how many helpers may join. A
//! helper joins by taking a seat with one compare-and-swap on the slot's state word, which
//! also counts it as *active*; only then does it read the job pointer. It claims tasks from
//! the job's counter until none is left, then leaves (active − 1).
//!
//! The caller works through the tasks itself from the same counter. When none is left to
//! claim, it closes the slot (no one can join any more) and waits until no helper is
//! active: it waits only for tasks that a running helper has claimed and is running, never
//! for a helper that has not started (one that wakes late finds the slot closed, or no task
//! left). A call therefore costs at most its one-thread time plus one task, whatever the
//! helpers are doing. After that the job is never touched again, and the caller returns.
//!
//! # Waiting between jobs
//! A worker that finds no open job spins for a few microseconds (`pause`), then keeps
//! looking while yielding its CPU to any other runnable thread (`sched_yield`: torch's or
//! OpenBLAS's threads get the core whenever they want it), for the *blocktime*
//! ([`super::set_blocktime`], like OpenMP's `KMP_BLOCKTIME`). Then it sleeps on a condition
//! variable until a job is published. A caller that publishes wakes as many sleepers as its
//! job has seats (a syscall of a few microseconds), and does not wait for them.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Jobs that can be open at once (nested teams and concurrent callers each hold one). A
/// caller that finds every slot taken runs its tasks alone.
const SLOTS: usize = 64;
/// Workers the process may start at most.
const MAX_WORKERS: usize = 1024;

/// State word of a slot: reserved by a caller (bit 63), open for joining (bit 62), free
/// seats (bits 32..48) and active helpers (bits 0..32).
const RESERVED: u64 = 1 << 63;
const OPEN: u64 = 1 << 62;
const SEAT_SHIFT: u32 = 32;
const SEAT: u64 = 1 << SEAT_SHIFT;
const SEATS_MASK: u64 = 0xffff << SEAT_SHIFT;
const ACTIVE_MASK: u64 = 0xffff_ffff;

/// The default blocktime: how long an idle worker keeps looking for work (yielding its CPU)
/// before it sleeps. See `docs/PERFORMANCE.md` ("Threads") for how it was chosen.
pub(super) const DEFAULT_BLOCKTIME: Duration = Duration::from_millis(20);

/// One task-counter job, on its caller's stack.
struct Job<'a> {
    ntasks: usize,
    next: AtomicUsize,
    task: &'a (dyn Fn(usize) + Sync),
    /// The first panic of a helper's task, rethrown by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// When it was published (for the wake-up latency a woken helper measures).
    published: Instant,
}

impl Job<'_> {
    /// Claims and runs tasks until none is left. A panicking task stops the claiming (no
    /// task starts after it) and is kept for the caller.
    fn work(&self) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.ntasks {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.task)(t))) {
                self.next.fetch_max(self.ntasks, Ordering::Relaxed);
                let mut g = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
                g.get_or_insert(p);
                return;
            }
        }
    }
}

/// A place where one open job is announced.
struct Slot {
    state: AtomicU64,
    /// The job, type-erased (`*const Job`); valid while the slot is open or a helper is
    /// active in it.
    job: AtomicPtr<()>,
}

/// Everything the workers and callers share.
struct Shared {
    slots: [Slot; SLOTS],
    /// Bit `i` set: slot `i` is open (a hint that saves workers a scan of every slot).
    open_mask: AtomicU64,
    /// Goes up at every publication; a worker sleeps only if it has not changed since it
    /// last looked for work.
    epoch: AtomicU64,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Workers started so far.
    workers: AtomicUsize,
    spawn_lock: Mutex<()>,
    /// Blocktime in nanoseconds (`u64::MAX`: never sleep); set from the environment at the
    /// first team when never set through the API.
    blocktime_ns: AtomicU64,
    /// Test hook: each worker sleeps this long after seeing an open job, before joining.
    helper_delay_ns: AtomicU64,
    /// Seats taken so far (statistics).
    joins: AtomicU64,
    /// Open jobs a contended worker kept out of (statistics).
    abstentions: AtomicU64,
    /// Moving average of how long a sleeping worker took from a publication to joining
    /// it, in ns: the cost of waking one.
    wake_ns: AtomicU64,
}

/// `blocktime_ns` before the first read: take `FASTATTN_BLOCKTIME` or the default.
const BLOCKTIME_UNSET: u64 = u64::MAX - 1;

static SHARED: Shared = Shared {
    slots: [const {
        Slot {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
        }
    }; SLOTS],
    open_mask: AtomicU64::new(0),
    epoch: AtomicU64::new(0),
    sleepers: AtomicUsize::new(0),
    sleep_lock: Mutex::new(()),
    wake: Condvar::new(),
    workers: AtomicUsize::new(0),
    spawn_lock: Mutex::new(()),
    blocktime_ns: AtomicU64::new(BLOCKTIME_UNSET),
    helper_delay_ns: AtomicU64::new(0),
    joins: AtomicU64::new(0),
    abstentions: AtomicU64::new(0),
    wake_ns: AtomicU64::new(INITIAL_WAKE_NS),
};

/// The wake-up cost assumed until one is measured.
const INITIAL_WAKE_NS: u64 = 500_000;

thread_local! {
    /// The estimated one-thread time of the call running on this thread (set by
    /// `SplitGate::run`; `u64::MAX` when unknown).
    static EXPECTED_NS: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Calls estimated shorter than this (one-thread time, ns) do not wake sleeping helpers.
/// A wake-up costs the caller a futex syscall (microseconds), and the helper takes far
/// longer to come (`helper_wake_time`: milliseconds on the 2-vCPU VM), so it could only
/// help the calls that follow; for a call this short the syscall is a loss that shows.
const WAKE_MIN_EXPECTED_NS: u64 = 100_000;

/// Runs `f` with `ns` as the estimated one-thread time of the call: its teams wake
/// sleeping helpers only when it is at least [`WAKE_MIN_EXPECTED_NS`].
pub(super) fn with_expected<R>(ns: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPECTED_NS.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(EXPECTED_NS.with(|e| e.replace(ns)));
    f()
}

/// The measured time from a publication to a woken helper joining it, in ns.
pub(super) fn wake_ns() -> u64 {
    SHARED.wake_ns.load(Ordering::Relaxed)
}

/// Parses a blocktime in milliseconds: a non-negative number (`"0"`, `"0.5"`, `"200"`) or
/// `"infinite"` (never sleep).
pub(super) fn parse_blocktime(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("infinite") {
        return Some(Duration::MAX);
    }
    let ms: f64 = s.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
}

fn to_ns(d: Duration) -> u64 {
    if d == Duration::MAX {
        u64::MAX
    } else {
        u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX - 2)
            .min(u64::MAX - 2)
    }
}

/// The blocktime in nanoseconds (`u64::MAX`: infinite).
fn blocktime_ns() -> u64 {
    let v = SHARED.blocktime_ns.load(Ordering::Relaxed);
    if v != BLOCKTIME_UNSET {
        return v;
    }
    let d = std::env::var("FASTATTN_BLOCKTIME")
        .ok()
        .and_then(|s| parse_blocktime(&s))
        .unwrap_or(DEFAULT_BLOCKTIME);
    let ns = to_ns(d);
    // Only the first reader sets it; a value set through the API meanwhile wins.
    match SHARED.blocktime_ns.compare_exchange(
        BLOCKTIME_UNSET,
        ns,
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        Ok(_) => ns,
        Err(now) => now,
    }
}

/// See [`super::set_blocktime`].
pub(super) fn set_blocktime(d: Duration) {
    SHARED.blocktime_ns.store(to_ns(d), Ordering::Relaxed);
    // Sleeping workers do not need to hear of it; spinning ones read it as they spin.
}

/// See [`super::blocktime`].
pub(super) fn blocktime() -> Duration {
    match blocktime_ns() {
        u64::MAX => Duration::MAX,
        ns => Duration::from_nanos(ns),
    }
}

/// See [`super::set_helper_delay`].
pub(super) fn set_helper_delay(d: Duration) {
    SHARED
        .helper_delay_ns
        .store(to_ns(d).min(u64::MAX - 2), Ordering::Relaxed);
}

/// See [`super::helper_stats`].
pub(super) fn stats() -> (u64, u64) {
    (
        SHARED.joins.load(Ordering::Relaxed),
        SHARED.abstentions.load(Ordering::Relaxed),
    )
}

/// Workers started so far (they live as long as the process).
pub(super) fn workers() -> usize {
    SHARED.workers.load(Ordering::Relaxed)
}

/// Starts workers until there are `n` (or as many as the system allows).
fn ensure_workers(n: usize) {
    let n = n.min(MAX_WORKERS);
    if SHARED.workers.load(Ordering::Acquire) >= n {
        return;
    }
    let _g = SHARED
        .spawn_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    while SHARED.workers.load(Ordering::Acquire) < n {
        let i = SHARED.workers.load(Ordering::Relaxed);
        let started = std::thread::Builder::new()
            .name(format!("fastattn-{i}"))
            .spawn(worker_main);
        if started.is_err() {
            // Fewer helpers: teams still finish (their callers run what no one joins for).
            return;
        }
        SHARED.workers.store(i + 1, Ordering::Release);
    }
}

/// Rounds of [`backoff`] that spin before it yields.
const SPIN_ROUNDS: u32 = 1 << 8;

/// Waits for a short moment: spin first, then yield the CPU to any runnable thread.
pub(super) fn backoff(spins: &mut u32) {
    if *spins < SPIN_ROUNDS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins = spins.saturating_add(1);
}

/// A `sched_yield` that returns later than this ran another thread on this CPU meanwhile.
const SLOW_YIELD: Duration = Duration::from_micros(50);
/// How long after its last slow yield a worker keeps out of teams.
const CONTENDED_FOR: Duration = Duration::from_micros(250);
/// Slow yields in a row after which an idle worker sleeps, blocktime or not. One slow
/// yield in 20–40 ms happens on an otherwise idle VM (kernel threads, the hypervisor);
/// a thread spinning on the same CPU makes every yield slow.
const SLOW_STREAK: u32 = 4;

/// A worker thread: looks for open jobs, helps, waits (spin, yield, sleep), forever.
///
/// **Contended CPUs.** A helper that holds a task and loses its CPU to another thread
/// (another library's pool spinning after its parallel region, torch's OpenMP threads)
/// stalls its caller until the scheduler gives the CPU back, which can take milliseconds.
/// So a worker times its yields while idle: one that returns later than [`SLOW_YIELD`]
/// means another thread wants this CPU, and the worker keeps out of teams until
/// [`CONTENDED_FOR`] after the last slow one. Callers then run alone (their one-thread
/// time) instead of waiting for a helper that the scheduler has parked. After
/// [`SLOW_STREAK`] slow yields in a row it also goes to sleep, blocktime or not: an idle
/// helper keeps spinning only while no other thread keeps wanting its CPU, so it does not
/// take time from torch's or OpenBLAS's working threads. What this cannot see is a CPU
/// that nobody else runs on yet: a spinning helper makes it look busy to the scheduler
/// placing other threads as they wake. That is what the finite blocktime is for (with an
/// infinite one, a 512² `torch.mm` right after our calls took 8.0 ms instead of 0.9 on the
/// 2-vCPU VM; with 20 ms, 0.92 against 0.93 at 0).
fn worker_main() {
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    let mut contended_at: Option<Instant> = None;
    // Slow yields in a row: another thread keeps wanting this CPU.
    let mut slow_streak = 0u32;
    // Just woken from sleep: the next join measures the wake-up time.
    let mut woken = false;
    loop {
        let seen = SHARED.epoch.load(Ordering::SeqCst);
        let contended = contended_at.is_some_and(|t| t.elapsed() < CONTENDED_FOR);
        if contended && SHARED.open_mask.load(Ordering::Relaxed) != 0 {
            SHARED.abstentions.fetch_add(1, Ordering::Relaxed);
        }
        if !contended && help_once(std::mem::take(&mut woken)) {
            idle_since = Instant::now();
            spins = 0;
            continue;
        }
        let bt = blocktime_ns();
        // Keep looking (checking the clock every 64 rounds only) within the blocktime,
        // unless another thread keeps wanting this CPU: then sleep at once, so that no
        // idle helper of ours holds a CPU while another library's threads work.
        if slow_streak < SLOW_STREAK
            && (!spins.is_multiple_of(64)
                || bt == u64::MAX
                || idle_since.elapsed().as_nanos() < u128::from(bt))
        {
            if spins < SPIN_ROUNDS {
                backoff(&mut spins);
            } else {
                let t = Instant::now();
                backoff(&mut spins);
                if t.elapsed() > SLOW_YIELD {
                    contended_at = Some(Instant::now());
                    slow_streak += 1;
                } else {
                    slow_streak = 0;
                }
            }
            continue;
        }
        slow_streak = 0;
        let guard = SHARED
            .sleep_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        SHARED.sleepers.fetch_add(1, Ordering::SeqCst);
        let guard = if SHARED.epoch.load(Ordering::SeqCst) == seen {
            SHARED
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner)
        } else {
            guard
        };
        SHARED.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        idle_since = Instant::now();
        spins = 0;
        woken = true;
        // Is this CPU wanted by another thread now? (A spinning pool that took it while
        // this worker slept.) One yield tells, for about a microsecond when it is free.
        let t = Instant::now();
        std::thread::yield_now();
        if t.elapsed() > SLOW_YIELD {
            contended_at = Some(Instant::now());
        }
    }
}

/// Joins one open job with a free seat, if any, and helps until its tasks are claimed.
/// `woken`: this worker just woke from sleep; it records how long the wake-up took.
fn help_once(woken: bool) -> bool {
    let mask = SHARED.open_mask.load(Ordering::Acquire);
    if mask == 0 {
        return false;
    }
    let delay = SHARED.helper_delay_ns.load(Ordering::Relaxed);
    if delay > 0 {
        std::thread::sleep(Duration::from_nanos(delay));
    }
    let mut bits = mask;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let slot = &SHARED.slots[i];
        if !join(slot) {
            continue;
        }
        SHARED.joins.fetch_add(1, Ordering::Relaxed);
        // SAFETY: this helper holds a seat, so the slot's job stays alive (its caller
        // waits for every active helper before the job goes out of scope), and the
        // pointer was stored before the slot was opened (Acquire in `join`).
        let job = unsafe { &*slot.job.load(Ordering::Relaxed).cast::<Job<'_>>() };
        if woken {
            let ns = u64::try_from(job.published.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let cur = SHARED.wake_ns.load(Ordering::Relaxed);
            let next = cur - cur / 4 + ns.min(100_000_000) / 4;
            SHARED.wake_ns.store(next.max(1), Ordering::Relaxed);
        }
        job.work();
        slot.state.fetch_sub(1, Ordering::Release);
        return true;
    }
    false
}

/// Takes a seat in `slot` if it is open and has one (also counting this helper active).
fn join(slot: &Slot) -> bool {
    let mut s = slot.state.load(Ordering::Acquire);
    loop {
        if s & OPEN == 0 || s & SEATS_MASK == 0 {
            return false;
        }
        match slot.state.compare_exchange_weak(
            s,
            s - SEAT + 1,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => s = now,
        }
    }
}

thread_local! {
    /// Where this thread last found a free slot (spreads concurrent callers).
    static SLOT_HINT: Cell<usize> = const { Cell::new(0) };
}

/// Reserves a free slot, or `None` when all are taken.
fn reserve() -> Option<usize> {
    let start = SLOT_HINT.with(Cell::get);
    (0..SLOTS).map(|k| (start + k) % SLOTS).find(|&i| {
        let ok = SHARED.slots[i]
            .state
            .compare_exchange(0, RESERVED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            SLOT_HINT.with(|h| h.set(i));
        }
        ok
    })
}

/// Closes a published slot when dropped (also while the caller unwinds): no helper can
/// join any more, no task starts any more, and the drop returns only once no helper is
/// active, after which the slot is free again.
struct Close<'a, 'j> {
    slot: usize,
    job: &'a Job<'j>,
}

impl Drop for Close<'_, '_> {
    fn drop(&mut self) {
        let slot = &SHARED.slots[self.slot];
        self.job.next.fetch_max(self.job.ntasks, Ordering::Relaxed);
        SHARED
            .open_mask
            .fetch_and(!(1u64 << self.slot), Ordering::Relaxed);
        let mut s = slot.state.fetch_and(!OPEN, Ordering::AcqRel) & !OPEN;
        let mut spins = 0;
        while s & ACTIVE_MASK != 0 {
            backoff(&mut spins);
            s = slot.state.load(Ordering::Acquire);
        }
        slot.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.state.store(0, Ordering::Release);
    }
}

/// Runs `task(t)` for every `t` in `0..ntasks`: the calling thread and up to `threads − 1`
/// workers claim them from one counter ([module docs](self)). Rethrows the first panic of
/// a task after every running task has finished.
pub(super) fn team(threads: usize, ntasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if threads <= 1 || ntasks <= 1 {
        (0..ntasks).for_each(task);
        return;
    }
    let job = Job {
        ntasks,
        next: AtomicUsize::new(0),
        task,
        panic: Mutex::new(None),
        published: Instant::now(),
    };
    let seats = (threads - 1).min(ntasks - 1).min(0xffff);
    ensure_workers(seats);
    let Some(i) = reserve() else {
        (0..ntasks).for_each(task);
        return;
    };
    {
        let slot = &SHARED.slots[i];
        slot.job.store(
            std::ptr::from_ref(&job).cast_mut().cast(),
            Ordering::Relaxed,
        );
        let close = Close { slot: i, job: &job };
        slot.state.store(
            RESERVED | OPEN | (seats as u64) << SEAT_SHIFT,
            Ordering::Release,
        );
        SHARED.open_mask.fetch_or(1 << i, Ordering::SeqCst);
        SHARED.epoch.fetch_add(1, Ordering::SeqCst);
        let sleeping = SHARED.sleepers.load(Ordering::SeqCst);
        let worth_waking = EXPECTED_NS.with(Cell::get) >= WAKE_MIN_EXPECTED_NS;
        if sleeping > 0 && worth_waking {
            let _g = SHARED
                .sleep_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for _ in 0..seats.min(sleeping) {
                SHARED.wake.notify_one();
            }
        }
        // The caller's own tasks: a panic here unwinds through `close`, which stops the
        // helpers' claiming and waits for them first.
        job.work();
        drop(close);
    }
    let panic = job
        .panic
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}
