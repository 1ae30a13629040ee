//! Per-thread pool of the forward passes' intermediate buffers.

use std::cell::RefCell;

thread_local! {
    /// Reused intermediate buffers (QKV, attention output), so a warm layer does not
    /// allocate, zero or page-fault its scratch on every call.
    static BUFS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values from this thread's pool (contents unspecified: every caller
/// overwrites it completely).
pub(super) fn take_buf(len: usize) -> Vec<f32> {
    let mut v = BUFS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    } else {
        v.truncate(len);
    }
    v
}

/// Returns a buffer to the pool (at most four are kept).
pub(super) fn give_buf(v: Vec<f32>) {
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < 4 {
            b.push(v);
        }
    });
}
