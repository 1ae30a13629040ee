//! Shared test support of the fastattn workspace (dev-only, never published).
//!
//! The conventions of `STYLE.md` §4 in one place:
//! - [`data`]: random data from a seeded [`StdRng`](rand::rngs::StdRng) (the seed goes into
//!   every failure message, usually through a case label);
//! - [`case`]: the attention problem description that the attention tests share;
//! - [`close`]: max-abs comparisons whose failure messages carry the case label;
//! - [`isa`]: the ISA variants to loop over, saying which are skipped, and one it lacks;
//! - [`child`]: a test that reruns its own binary, filtered to itself, in a new process;
//! - [`assert_err!`]: an error of the expected kind.
//!
//! Every crate that uses it names it as a path-only dev-dependency, so its integration tests
//! link the same `fastattn-kernels` as the crate under test.

pub mod case;
pub mod child;
pub mod close;
pub mod data;
pub mod isa;

pub use case::{numel, MaskKind, SdpaCase};
pub use close::{assert_close, assert_close_scaled, max_abs_diff};
pub use data::{rand_t, rand_vec, rand_vec_amp, rand_vec_wide, seeded, seq, widen};
pub use isa::{missing_isa, variants};

/// Asserts that `$e` is an `Err` matching the pattern `$p`, printing the value otherwise.
#[macro_export]
macro_rules! assert_err {
    ($e:expr, $p:pat) => {{
        let r = $e;
        assert!(matches!(r, Err($p)), "{}: got {:?}", stringify!($e), r);
    }};
}
