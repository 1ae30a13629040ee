//! The thread pool C calls run in, set by `fa_set_num_threads`.
//!
//! Without a call to `fa_set_num_threads` (or after `fa_set_num_threads(0)`) work runs in
//! rayon's global pool, sized by `RAYON_NUM_THREADS` or the number of CPUs. A positive
//! count builds a dedicated pool that every later call of the process runs in
//! (`ThreadPool::install`); calls already running keep the pool they started with.

use crate::status::{fa_status, FfiError, FfiResult};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex, PoisonError};

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

fn current() -> Option<Arc<ThreadPool>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Runs `f` in the configured pool (or on the calling thread, using rayon's global pool for
/// its parallel parts, when none is configured).
pub(crate) fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(pool) => pool.install(f),
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
