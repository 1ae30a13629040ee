//! Which threads a call runs on.
//!
//! Every call runs on the calling thread (with the GIL released); its parallel parts are
//! teams the calling thread works in, joined by the library's helper threads
//! (`kernels::parallel`). The call's thread count: `torch.get_num_threads()` for torch
//! inputs (read at each call, so it follows `torch.set_num_threads` and `OMP_NUM_THREADS`),
//! the value of `fastattn.set_num_threads` for numpy inputs (else one thread per CPU). A
//! call never waits for a helper that has not started: one asleep joins late or not at all.

use kernels::Parallelism;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// `fastattn.set_num_threads`'s value (0: not set).
static CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// The threads of one call.
pub(crate) enum Threads {
    /// The library's default count (one per CPU, or `RAYON_NUM_THREADS`).
    Default,
    /// This many threads, the caller's included (1: the calling thread only).
    Count(usize),
}

impl Threads {
    /// `n` threads (0 counts as 1).
    pub(crate) fn of(n: usize) -> Threads {
        Threads::Count(n.max(1))
    }

    /// The threads of a call on torch tensors: `torch.get_num_threads()`.
    pub(crate) fn torch(py: Python<'_>) -> PyResult<Threads> {
        match crate::view::torch(py)? {
            Some(t) => Ok(Threads::of(t.get_num_threads.call0(py)?.extract(py)?)),
            None => Ok(Threads::numpy()),
        }
    }

    /// The threads of a call on numpy arrays: `fastattn.set_num_threads`.
    pub(crate) fn numpy() -> Threads {
        match CONFIGURED.load(Ordering::Relaxed) {
            0 => Threads::Default,
            n => Threads::Count(n),
        }
    }

    /// The library's parallelism option for these threads.
    pub(crate) fn parallelism(&self) -> Parallelism {
        match self {
            Threads::Count(1) => Parallelism::Sequential,
            _ => Parallelism::Rayon,
        }
    }

    /// Runs `f` on the calling thread with these threads as its thread count.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Threads::Count(n) => kernels::parallel::with_threads(*n, f),
            Threads::Default => f(),
        }
    }
}

/// `fastattn.set_num_threads(n)`.
pub(crate) fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| PyValueError::new_err(format!("set_num_threads: need n >= 1, got {n}")))?;
    CONFIGURED.store(n, Ordering::Relaxed);
    Ok(())
}

/// `fastattn.get_num_threads()`.
pub(crate) fn get_num_threads() -> usize {
    match CONFIGURED.load(Ordering::Relaxed) {
        0 => kernels::parallel::current_threads(),
        n => n,
    }
}

/// `fastattn.set_blocktime(ms)`: milliseconds (a negative value or `inf`: never sleep).
pub(crate) fn set_blocktime(ms: f64) -> PyResult<()> {
    if ms.is_nan() {
        return Err(PyValueError::new_err(
            "set_blocktime: need a number of ms, got nan",
        ));
    }
    let d = if ms < 0.0 || ms.is_infinite() {
        Duration::MAX
    } else {
        Duration::from_secs_f64(ms / 1e3)
    };
    kernels::parallel::set_blocktime(d);
    Ok(())
}

/// `fastattn.get_blocktime()`: milliseconds (`inf`: never sleeps).
pub(crate) fn get_blocktime() -> f64 {
    match kernels::parallel::blocktime() {
        Duration::MAX => f64::INFINITY,
        d => d.as_secs_f64() * 1e3,
    }
}
