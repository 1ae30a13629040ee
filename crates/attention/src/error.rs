//! The one error type of the attention crate.

use kernels::KernelError;
use std::fmt;

/// Everything an attention call can refuse, each checked before any work is done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttnError {
    /// Shapes of the operands do not agree.
    Shape {
        /// Which check failed, with the sizes involved.
        what: String,
    },
    /// A tensor view does not fit in its buffer, or an output view aliases itself.
    Layout {
        /// Which tensor, and why.
        what: String,
    },
    /// Hq is not a multiple of Hkv (GQA/MQA need whole groups).
    HeadGroups {
        /// Query heads.
        hq: usize,
        /// Key/value heads.
        hkv: usize,
    },
    /// An option has a value outside its domain (mask shape, lengths, slopes, cap, ...).
    Option {
        /// Which option, and why.
        what: String,
    },
    /// A size product overflows `usize`.
    Overflow {
        /// Where.
        what: &'static str,
    },
    /// A KV cache has no room for the positions being appended (nothing was appended).
    CacheFull {
        /// Positions the cache can hold.
        capacity: usize,
        /// Positions already cached.
        len: usize,
        /// Positions the call tried to add.
        adding: usize,
    },
    /// The scales of 8-bit keys or values: missing, of the wrong shape, or (on a row the
    /// call reads) not finite and positive.
    Scale {
        /// Which scales, and why.
        what: String,
    },
    /// A kernel refused (e.g. a forced ISA this CPU lacks).
    Kernel(KernelError),
}

impl fmt::Display for AttnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttnError::Shape { what } => write!(f, "attention: shape mismatch: {what}"),
            AttnError::Layout { what } => write!(f, "attention: bad layout: {what}"),
            AttnError::HeadGroups { hq, hkv } => write!(
                f,
                "attention: query heads ({hq}) must be a multiple of key/value heads ({hkv})"
            ),
            AttnError::Option { what } => write!(f, "attention: invalid option: {what}"),
            AttnError::Overflow { what } => write!(f, "attention: size overflow in {what}"),
            AttnError::CacheFull {
                capacity,
                len,
                adding,
            } => write!(
                f,
                "attention: KV cache full: {len} cached + {adding} new exceeds capacity {capacity}"
            ),
            AttnError::Scale { what } => write!(f, "attention: bad 8-bit scales: {what}"),
            AttnError::Kernel(e) => write!(f, "attention: {e}"),
        }
    }
}

impl std::error::Error for AttnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttnError::Kernel(e) => Some(e),
            _ => None,
        }
    }
}

impl From<KernelError> for AttnError {
    fn from(e: KernelError) -> Self {
        AttnError::Kernel(e)
    }
}

/// Result alias of the attention crate.
pub type Result<T> = std::result::Result<T, AttnError>;
