//! # fastattn kernels
//!
//! The compute kernels under fastattn's attention: a cache-blocked, packed, SIMD f32 GEMM
//! ([`gemm`](mod@gemm), [`sgemm`]), with one microkernel per instruction set chosen at run time
//! ([`Isa`], [`current_isa`], `FASTATTN_ISA`).
//! Beside it: a vectorised `exp` with a measured ulp bound ([`exp`]), and a fused,
//! numerically stable softmax / log-softmax with the online-softmax building blocks of
//! flash attention ([`softmax`], [`softmax::online`]).
//!
//! Every fast kernel has a plain reference twin (`*_ref`, f64 accumulation) that the tests
//! compare it against, and every variant the CPU can run is tested directly.
//!
//! ```
//! use fastattn_kernels::gemm::{gemm, MatRef, MatMut};
//! let a = vec![1.0f32; 64 * 32];
//! let b = vec![0.5f32; 32 * 16];
//! let mut c = vec![0.0f32; 64 * 16];
//! gemm(1.0, MatRef::row_major(&a, 64, 32)?, MatRef::row_major(&b, 32, 16)?, 0.0,
//!      MatMut::row_major(&mut c, 64, 16)?)?;
//! assert!(c.iter().all(|&x| x == 16.0));
//! # Ok::<(), fastattn_kernels::KernelError>(())
//! ```

mod buffer;
pub mod convert;
pub mod dispatch;
pub mod dtype;
pub mod error;
pub mod exp;
pub mod gemm;
pub mod gemv;
pub mod parallel;
pub mod quant;
pub(crate) mod simd;
pub mod softmax;

pub use dispatch::{current_isa, set_isa, Isa};
pub use dtype::{bf16, f16, DType, Element};
pub use error::{KernelError, Result};
pub use gemm::{gemm, gemm_with, sgemm, sgemm_with, MatMut, MatRef};
pub use parallel::Parallelism;

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
