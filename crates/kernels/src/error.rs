//! The one error type of the kernels crate.

use std::fmt;

/// Everything a kernel call can refuse. Every variant names the operation (`op`) that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// Two sizes that must agree do not.
    ShapeMismatch {
        /// Operation that failed.
        op: &'static str,
        /// What the operation needed, in words.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A buffer is too short for the view described by its shape and strides.
    BufferTooSmall {
        /// Operation that failed.
        op: &'static str,
        /// Which operand.
        operand: &'static str,
        /// Elements the view needs.
        needed: usize,
        /// Elements the buffer has.
        len: usize,
    },
    /// A stride is unusable (e.g. negative in the safe API, or the output view overlaps itself).
    BadStride {
        /// Operation that failed.
        op: &'static str,
        /// Which operand, and why.
        reason: String,
    },
    /// A size product does not fit in `usize`/`isize`.
    Overflow {
        /// Operation that failed.
        op: &'static str,
    },
    /// An argument has a value outside its domain.
    InvalidArgument {
        /// Operation that failed.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// An ISA was forced that this CPU (or this build) cannot run.
    UnsupportedIsa {
        /// Name of the ISA asked for.
        isa: String,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::ShapeMismatch { op, expected, got } => {
                write!(f, "{op}: shape mismatch: expected {expected}, got {got}")
            }
            KernelError::BufferTooSmall {
                op,
                operand,
                needed,
                len,
            } => write!(
                f,
                "{op}: buffer {operand} too small: the view needs {needed} elements, the slice has {len}"
            ),
            KernelError::BadStride { op, reason } => write!(f, "{op}: bad stride: {reason}"),
            KernelError::Overflow { op } => write!(f, "{op}: size computation overflows"),
            KernelError::InvalidArgument { op, reason } => {
                write!(f, "{op}: invalid argument: {reason}")
            }
            KernelError::UnsupportedIsa { isa } => {
                write!(f, "ISA `{isa}` is not supported on this CPU or build")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// Result alias of the kernels crate.
pub type Result<T> = std::result::Result<T, KernelError>;
