//! The former home of the exp and softmax vector ops: they are now [`crate::simd`]'s one
//! [`SimdOps`](crate::simd::SimdOps) trait and its [`dispatch`]. These aliases keep the old
//! paths (`crate::exp::simd::{dispatch, IsaKernel, ExpOps}`) working.

#[allow(unused_imports)]
pub(crate) use crate::simd::{dispatch, IsaKernel, SimdOps as ExpOps};
