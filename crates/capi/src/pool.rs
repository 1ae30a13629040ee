//! The thread count of C calls, set by `fa_set_num_threads`, and the helpers' blocktime.
//!
//! Every call runs on the calling thread. Its parallel parts are teams that the calling
//! thread works in, joined by the library's helper threads (`kernels::parallel`): up to
//! rayon's default count (`RAYON_NUM_THREADS`, else one per CPU) until
//! `fa_set_num_threads(n > 0)` sets `n`. A call never waits for a helper that has not
//! started, so a call too small to split, or one that comes while the helpers sleep, costs
//! at most its one-thread time plus one task.

use crate::status::{fa_status, FfiError, FfiResult};
use std::time::Duration;

/// Sets the number of threads; `n <= 0` returns to the default.
pub(crate) fn set_num_threads(n: i64) -> FfiResult<()> {
    let threads = if n <= 0 {
        0
    } else {
        usize::try_from(n).map_err(|_| {
            FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, format!("{n} threads"))
        })?
    };
    kernels::parallel::set_num_threads(threads);
    Ok(())
}

/// The number of threads calls run on now.
pub(crate) fn num_threads() -> usize {
    kernels::parallel::current_threads()
}

/// Sets the blocktime in microseconds; negative: infinite.
pub(crate) fn set_blocktime_us(us: i64) {
    let d = u64::try_from(us).map_or(Duration::MAX, Duration::from_micros);
    kernels::parallel::set_blocktime(d);
}

/// The blocktime in microseconds; -1: infinite.
pub(crate) fn blocktime_us() -> i64 {
    match kernels::parallel::blocktime() {
        Duration::MAX => -1,
        d => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}
