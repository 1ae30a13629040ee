//! From Python-shaped inputs to library calls: the shape rules of each Python function
//! (a [`Plan`]) and the calls that carry it out (a [`Job`]; its backward, a [`GradJob`],
//! runs the same calls with the same options through the library's backward pass).
//!
//! The library computes on 4-D `[B, H, L, D]` views. A plan lays every operand out as
//! `[outer…, B, H, L, D]`: the outer dimensions (batch dimensions beyond one, or the batch
//! of a per-batch option) are looped over, one library call per outer index; a dimension
//! an operand broadcasts over has stride 0. Nothing is copied, except masks that need a
//! conversion (16-bit additive masks widened to f32, bool masks whose bytes are not 0/1).
//!
//! * [`plan`]: the shape rules (`plan_torch`, `plan_flash`) and torch's top-left causal
//!   mask in the library's terms;
//! * [`operand`]: the memory of each operand and mask as the library reads it, and the
//!   score options of a call;
//! * [`job`]: the library calls of a plan, forward and backward.

mod job;
mod operand;
mod plan;

pub(crate) use job::{GradJob, Job};
pub(crate) use operand::{Alibi, MaskBuf, Scores};
pub(crate) use plan::{plan_flash, plan_torch, top_left_causal, KvLengths, Plan};
