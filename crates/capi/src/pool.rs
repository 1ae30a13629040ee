//! The thread pool C calls run in, set by `fa_set_num_threads`.
//!
//! Every call runs on the calling thread. Its parallel parts (teams that the calling thread
//! works in, helped by pool threads: `kernels::parallel`) draw their helpers from rayon's
//! global pool, sized by `RAYON_NUM_THREADS` or the number of CPUs, until
//! `fa_set_num_threads(n > 0)` builds a dedicated pool of `n` threads; from then on the
//! parallel parts of every later call use at most `n` threads, the caller's included,
//! with helpers from that pool (`kernels::parallel::with_pool`). A call is never handed to
//! a pool thread as a whole, so a call too small to split never waits for a sleeping
//! thread to wake. Calls already running keep the pool they started with.

use crate::status::{fa_status, FfiError, FfiResult};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex, PoisonError};

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

fn current() -> Option<Arc<ThreadPool>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Runs `f` on the calling thread, its parallel parts drawing helpers from the configured
/// pool (rayon's global pool when none is configured).
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    match current() {
        Some(pool) => kernels::parallel::with_pool(&pool, f),
        None => f(),
    }
}

/// Sets the number of worker threads; `n <= 0` returns to rayon's global pool.
pub(crate) fn set_num_threads(n: i64) -> FfiResult<()> {
    let pool = if n <= 0 {
        None
    } else {
        let threads = usize::try_from(n).map_err(|_| {
            FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, format!("{n} threads"))
        })?;
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("fastattn-{i}"))
            .build()
            .map_err(|e| {
                FfiError::new(
                    fa_status::FA_ERR_ALLOC,
                    format!("could not start a pool of {threads} threads: {e}"),
                )
            })?;
        // Return once every thread is running: its start-up (stack, thread-locals) then
        // happens here, not during the first calls that use it.
        pool.broadcast(|_| ());
        Some(Arc::new(pool))
    };
    *POOL.lock().unwrap_or_else(PoisonError::into_inner) = pool;
    Ok(())
}

/// The number of threads calls run on now.
pub(crate) fn num_threads() -> usize {
    match current() {
        Some(pool) => pool.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}
