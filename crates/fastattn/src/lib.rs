#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! This crate is a facade: one dependency for the whole library.
//!
//! * At the root: the attention API of `fastattn-attention` ([`sdpa`], [`sdpa_into`],
//!   [`sdpa_with_weights`], [`SdpaOptions`], [`Mask`], [`TensorRef`], [`TensorMut`],
//!   [`MultiHeadAttention`], [`KvCache`], [`Linear`], [`Rope`], …) and its modules
//!   ([`flash`], [`mha`], [`options`], [`reference`](mod@reference), …).
//! * [`kernels`]: the compute kernels of `fastattn-kernels` (GEMM, exp, softmax, the
//!   decode kernels, ISA dispatch and the thread teams).

pub use fastattn_attention::*;

/// The compute kernels (`fastattn-kernels`): packed SIMD GEMM ([`kernels::gemm()`],
/// [`kernels::sgemm`]), exp, softmax, the decode kernels, run-time ISA dispatch
/// ([`kernels::Isa`], [`kernels::set_isa`]) and thread teams ([`kernels::parallel`]).
///
/// ```
/// use fastattn::kernels::{gemm, MatMut, MatRef};
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // 2 x 2, row-major
/// let mut c = [0.0f32; 4];
/// gemm(1.0, MatRef::row_major(&a, 2, 2)?, MatRef::row_major(&a, 2, 2)?, 0.0,
///      MatMut::row_major(&mut c, 2, 2)?)?;
/// assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
/// # Ok::<(), fastattn::kernels::KernelError>(())
/// ```
pub mod kernels {
    pub use fastattn_kernels::*;
}
