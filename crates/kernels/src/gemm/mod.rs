//! Single-precision GEMM, `C ← alpha·A·B + beta·C`, Goto/BLIS style.
//!
//! # Algorithm
//! Five loops around a register-blocked microkernel (see [`params`] for what each block
//! keeps in which cache):
//!
//! ```text
//! for jc in 0..n step NC            // loop 5
//!   for pc in 0..k step KC          // loop 4: pack B[pc.., jc..] into KC×NR panels
//!     for ic in 0..m step MC        // loop 3: pack A[ic.., pc..] into MC×KC (MR-row panels)
//!       for jr in 0..NC step NR     // loop 2
//!         for ir in 0..MC step MR   // loop 1
//!           microkernel: MR×NR tile of C += A panel · B panel
//! ```
//!
//! Packing buffers are 64-byte aligned and reused from a per-thread pool (no allocation per
//! call once warm). Edge tiles run the full microkernel on zero-padded panels into a scratch
//! tile and copy the valid part, so elements of C outside the `m × n` view are never
//! touched. `beta` is applied on the first `KC` step only; `beta == 0` never reads C.
//!
//! # Parallelism
//! Only independent blocks of C are split across rayon tasks (`MC` row blocks, and groups of
//! `NR` panels when there are too few row blocks), never the `k` loop, so every element of
//! C is computed by the same sequence of operations whatever the thread count: results are
//! bit-for-bit identical at 1, 2 or 16 threads. A call uses up to
//! [`parallel::current_threads`](crate::parallel::current_threads) threads; problems whose
//! estimated one-thread time is short ([`GEMM_GATE`]) stay on the calling thread.
//!
//! The calling thread takes part: it and up to `threads − 1` helper threads claim
//! (row block, panel group) tasks from a shared counter, and each group of B panels is
//! packed by the first task that needs it (tasks running at the same time start at
//! different panels, so they pack different groups), with no barrier between packing and
//! compute. Measured at n = 512 on two threads against the previous design (all work
//! handed to the pool, B packed in a parallel pass before the tasks): the pass and its
//! barrier cost 50 µs of a 930 µs call, waking the sleeping caller at the end another
//! 30–60 µs; per-call medians went from 265 to 290–297 GFLOP/s.
//!
//! # Layout
//! `view.rs`: the checked views [`MatRef`] and [`MatMut`]; `api.rs`: the entry points and
//! the block-size override; `driver.rs`: loops 5 to 3 and the threading; `macro_kernel.rs`:
//! loops 2 and 1; `microkernel/`: the register kernels; `pack.rs`: packing; `packed.rs`:
//! a B packed once for many products.

mod api;
mod driver;
mod macro_kernel;
pub(crate) mod microkernel;
pub(crate) mod pack;
pub mod packed;
pub mod params;
pub mod reference;
mod view;

pub use api::{
    block_sizes, gemm, gemm_ptr_with, gemm_with, gemm_with_a_read, microkernel_name,
    microkernel_seconds, sgemm, sgemm_with, tile_of, ARead, BLOCKS_ENV_VAR,
};
pub use driver::GEMM_GATE;
pub use view::{MatMut, MatRef};
