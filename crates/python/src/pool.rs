//! Which threads a call runs on.
//!
//! Every call runs on the calling thread (with the GIL released); its parallel parts draw
//! helper threads from a pool through `kernels::parallel::with_pool`, so a call too small
//! to split never waits for another thread. The pool's size is the call's thread count:
//! `torch.get_num_threads()` for torch inputs (read at each call), the value of
//! `fastattn.set_num_threads` for numpy inputs (rayon's global pool, one thread per CPU,
//! until it is called). One thread means no pool at all. Pools are built once per size
//! and kept.

use kernels::Parallelism;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex, PoisonError};

/// The pools built so far, by size.
static POOLS: Mutex<Vec<(usize, Arc<ThreadPool>)>> = Mutex::new(Vec::new());
/// `fastattn.set_num_threads`'s value (`None`: rayon's global pool).
static CONFIGURED: Mutex<Option<usize>> = Mutex::new(None);

/// The threads of one call.
pub(crate) enum Threads {
    /// Rayon's global pool.
    Global,
    /// The calling thread only.
    Sequential,
    /// A pool of this many threads, the caller's included.
    Pool(Arc<ThreadPool>),
}

fn pool(n: usize) -> PyResult<Arc<ThreadPool>> {
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, p)) = pools.iter().find(|(k, _)| *k == n) {
        return Ok(Arc::clone(p));
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("fastattn-{i}"))
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("could not start {n} threads: {e}")))?;
    // Start every thread now, not during the first call that uses them.
    p.broadcast(|_| ());
    let p = Arc::new(p);
    pools.push((n, Arc::clone(&p)));
    Ok(p)
}

impl Threads {
    /// `n` threads.
    pub(crate) fn of(n: usize) -> PyResult<Threads> {
        Ok(match n {
            0 | 1 => Threads::Sequential,
            n => Threads::Pool(pool(n)?),
        })
    }

    /// The threads of a call on torch tensors: `torch.get_num_threads()`.
    pub(crate) fn torch(py: Python<'_>) -> PyResult<Threads> {
        match crate::view::torch(py)? {
            Some(t) => Threads::of(t.get_num_threads.call0(py)?.extract(py)?),
            None => Threads::numpy(),
        }
    }

    /// The threads of a call on numpy arrays: `fastattn.set_num_threads`.
    pub(crate) fn numpy() -> PyResult<Threads> {
        match *CONFIGURED.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(Threads::Global),
            Some(n) => Threads::of(n),
        }
    }

    /// The library's parallelism option for these threads.
    pub(crate) fn parallelism(&self) -> Parallelism {
        match self {
            Threads::Sequential => Parallelism::Sequential,
            _ => Parallelism::Rayon,
        }
    }

    /// Runs `f` on the calling thread with these threads as its helpers.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Threads::Pool(p) => kernels::parallel::with_pool(p, f),
            _ => f(),
        }
    }
}

/// `fastattn.set_num_threads(n)`.
pub(crate) fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| PyValueError::new_err(format!("set_num_threads: need n >= 1, got {n}")))?;
    if n > 1 {
        pool(n)?;
    }
    *CONFIGURED.lock().unwrap_or_else(PoisonError::into_inner) = Some(n);
    Ok(())
}

/// `fastattn.get_num_threads()`.
pub(crate) fn get_num_threads() -> usize {
    CONFIGURED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_else(rayon::current_num_threads)
}
