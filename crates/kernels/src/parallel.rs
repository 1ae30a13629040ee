//! Who runs the work: the calling thread alone, or the current rayon pool.

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
pub(crate) struct SyncPtr(*mut f32);

// SAFETY: a SyncPtr is only created (unsafe `new`) where the caller guarantees that the
// threads sharing it access disjoint elements, or only read.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// # Safety
    /// Every thread that receives the pointer must only read through it, or write elements
    /// no other thread touches during the sharing.
    pub(crate) unsafe fn new(p: *mut f32) -> Self {
        SyncPtr(p)
    }

    /// The pointer.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
