//! One attention problem of a call and where its results go: a [`Job`].
//!
//! A dense call (`sdpa_into_dyn`) is one job: its `[B, Hq, Lq, D]` problem. A
//! variable-length call (`sdpa_varlen_into_dyn`) is one job per sequence, each a `B = 1`
//! problem over its own rows of the packed Q, output and LSE and its own key/value source.
//! The paths schedule the tiles of all of a call's jobs together, so many short sequences
//! share the threads and one long one still uses them all.

use crate::kv::KvSource;
use crate::options::Problem;
use crate::tensor::{AnyOut, AnyRef};
use crate::SyncPtr;

/// Where a job's log-sum-exp values go: entry `(b, h, i)` of the job is element
/// `b·sb + h·sh + i` from `ptr`.
#[derive(Clone, Copy)]
pub(crate) struct LseOut {
    pub(crate) ptr: SyncPtr,
    pub(crate) sb: usize,
    pub(crate) sh: usize,
}

impl LseOut {
    /// # Safety
    /// `(b, h, i)` is an entry of the job, owned by the calling task.
    #[inline]
    pub(crate) unsafe fn store(self, b: usize, h: usize, i: usize, v: f32) {
        // SAFETY: forwarded contract; the entry lies inside the caller's LSE buffer.
        unsafe { *self.ptr.get().add(b * self.sb + h * self.sh + i) = v };
    }
}

/// One problem: its sizes and options, Q (element `(b, h, i, x)` at `q.offset(b, h, i, x)`),
/// the key and value sources, the output (element `(b, h, i, x)` at
/// `out_base + b·os[0] + h·os[1] + i·os[2] + x·os[3]` of `out`) and the optional LSE.
pub(crate) struct Job<'a> {
    pub(crate) p: Problem<'a>,
    pub(crate) q: AnyRef<'a>,
    pub(crate) k: KvSource<'a>,
    pub(crate) v: KvSource<'a>,
    pub(crate) out: AnyOut,
    pub(crate) out_base: usize,
    pub(crate) os: [usize; 4],
    pub(crate) lse: Option<LseOut>,
}

impl Job<'_> {
    /// Element index of output row `(b, h, i)`'s first value.
    #[inline]
    pub(crate) fn out_row(&self, b: usize, h: usize, i: usize) -> usize {
        self.out_base + b * self.os[0] + h * self.os[1] + i * self.os[2]
    }
}
