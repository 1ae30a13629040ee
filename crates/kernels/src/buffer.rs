//! Reusable, 64-byte aligned f32 scratch buffers, one stack of them per thread.
//!
//! Packing buffers are taken from a thread-local pool and given back after the call, so the
//! hot path does not allocate once a thread has warmed up. Taking (rather than borrowing)
//! keeps this re-entrant: a rayon worker that steals another GEMM task while it waits still
//! gets a buffer of its own.

use std::cell::RefCell;

const ALIGN_F32: usize = 16; // 64 bytes

/// A heap buffer of f32 whose usable part starts on a 64-byte boundary.
pub(crate) struct AlignedBuf {
    data: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        AlignedBuf {
            data: Vec::new(),
            offset: 0,
            len: 0,
        }
    }

    /// Makes room for `len` elements (contents unspecified but initialised).
    fn reserve_exact_len(&mut self, len: usize) {
        if self.data.len() < len + ALIGN_F32 {
            self.data = vec![0.0; len + ALIGN_F32];
        }
        let addr = self.data.as_ptr() as usize;
        let mis = (addr / 4) % ALIGN_F32;
        self.offset = if mis == 0 { 0 } else { ALIGN_F32 - mis };
        self.len = len;
    }

    /// The usable, aligned part.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.offset..self.offset + self.len]
    }
}

thread_local! {
    static POOL: RefCell<Vec<AlignedBuf>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with an aligned scratch slice of `len` f32 taken from this thread's pool.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(AlignedBuf::new);
    buf.reserve_exact_len(len);
    let r = f(buf.as_mut_slice());
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 4 {
            p.push(buf);
        }
    });
    r
}
