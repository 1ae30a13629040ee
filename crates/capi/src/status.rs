//! Status codes, the per-thread last-error message, and the panic boundary (`ffi_guard!`)
//! that every exported function goes through.

use attention::AttnError;
use kernels::KernelError;
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{self, AssertUnwindSafe};

/// Status codes of fastattn's `int` functions: `FA_OK` (0) or a negative error code.
/// After a failure, `fa_last_error()` describes it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum fa_status {
    /// Success.
    FA_OK = 0,
    /// A required pointer argument is NULL.
    FA_ERR_NULL_POINTER = -1,
    /// Sizes disagree (e.g. Q and K head dims), or a size computation overflows.
    FA_ERR_BAD_SHAPE = -2,
    /// A stride is negative where it must not be, too small for its leading dimension, makes
    /// an output view alias itself, or an output's memory overlaps another argument's.
    FA_ERR_BAD_STRIDE = -3,
    /// The kernel variant asked for is unknown, or this CPU/build cannot run it.
    FA_ERR_UNSUPPORTED_VARIANT = -4,
    /// Memory (or a thread pool) could not be allocated.
    FA_ERR_ALLOC = -5,
    /// A bug inside the library: a Rust panic was caught at the boundary.
    FA_ERR_INTERNAL = -6,
    /// An argument or option is outside its domain (a non-finite scale, a causal flag
    /// other than 0/1, a key length above Lk, a misaligned pointer, ...).
    FA_ERR_INVALID_ARGUMENT = -7,
    /// A KV cache has no room for the positions being appended (nothing was appended).
    FA_ERR_CACHE_FULL = -8,
}

/// `FA_OK` as the `int` the functions return.
pub(crate) const OK: c_int = fa_status::FA_OK as c_int;

/// A refusal: the code returned to C and the message `fa_last_error` will show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// The status code.
    pub code: fa_status,
    /// What went wrong, in words.
    pub message: String,
}

impl FfiError {
    /// An error with `code` and `message`.
    pub fn new(code: fa_status, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }

    /// `FA_ERR_NULL_POINTER` for the argument named `what`.
    pub fn null(what: &str) -> Self {
        FfiError::new(fa_status::FA_ERR_NULL_POINTER, format!("{what} is NULL"))
    }
}

impl From<KernelError> for FfiError {
    fn from(e: KernelError) -> Self {
        let code = match &e {
            KernelError::ShapeMismatch { .. }
            | KernelError::BufferTooSmall { .. }
            | KernelError::Overflow { .. } => fa_status::FA_ERR_BAD_SHAPE,
            KernelError::BadStride { .. } => fa_status::FA_ERR_BAD_STRIDE,
            KernelError::InvalidArgument { .. } => fa_status::FA_ERR_INVALID_ARGUMENT,
            KernelError::UnsupportedIsa { .. } => fa_status::FA_ERR_UNSUPPORTED_VARIANT,
            // An error kind added later (KernelError is non-exhaustive).
            _ => fa_status::FA_ERR_INTERNAL,
        };
        FfiError::new(code, e.to_string())
    }
}

impl From<AttnError> for FfiError {
    fn from(e: AttnError) -> Self {
        match e {
            AttnError::Kernel(k) => k.into(),
            e => {
                let code = match &e {
                    AttnError::Shape { .. }
                    | AttnError::HeadGroups { .. }
                    | AttnError::Overflow { .. } => fa_status::FA_ERR_BAD_SHAPE,
                    AttnError::Layout { .. } => fa_status::FA_ERR_BAD_STRIDE,
                    AttnError::Option { .. } | AttnError::Scale { .. } => {
                        fa_status::FA_ERR_INVALID_ARGUMENT
                    }
                    AttnError::CacheFull { .. } => fa_status::FA_ERR_CACHE_FULL,
                    AttnError::Kernel(_) => unreachable!("handled above"),
                    // An error kind added later (AttnError is non-exhaustive).
                    _ => fa_status::FA_ERR_INTERNAL,
                };
                FfiError::new(code, e.to_string())
            }
        }
    }
}

/// Result of the bodies of exported functions.
pub type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the message `fa_last_error` returns on this thread.
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the message is then lost.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

/// Pointer to this thread's last error message ("" if none). Valid until the next failing
/// call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The value a function of return type `Self` gives back when its body fails.
pub(crate) trait Boundary {
    /// The failure value for `code` (the code itself, NULL, or nothing).
    fn failed(code: fa_status) -> Self;
}

impl Boundary for c_int {
    fn failed(code: fa_status) -> Self {
        code as c_int
    }
}

impl Boundary for u32 {
    /// 0: never a valid version or count.
    fn failed(_: fa_status) -> Self {
        0
    }
}

impl Boundary for i64 {
    /// -2: never a valid blocktime (`fa_blocktime_us` returns -1 or more).
    fn failed(_: fa_status) -> Self {
        -2
    }
}

impl Boundary for () {
    fn failed(_: fa_status) -> Self {}
}

impl<T> Boundary for *const T {
    fn failed(_: fa_status) -> Self {
        std::ptr::null()
    }
}

impl<T> Boundary for *mut T {
    fn failed(_: fa_status) -> Self {
        std::ptr::null_mut()
    }
}

/// Runs `body`, converting an error or a panic into `R`'s failure value and recording the
/// message for `fa_last_error`. No unwind ever leaves this function.
pub(crate) fn guard<R: Boundary>(op: &'static str, body: impl FnOnce() -> FfiResult<R>) -> R {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            set_last_error(&format!("{op}: {}", e.message));
            R::failed(e.code)
        }
        Err(payload) => {
            let what = panic_message(payload.as_ref());
            // Dropping a payload may itself panic (a payload type with a panicking Drop).
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(&format!("{op}: internal error (caught panic): {what}"));
            R::failed(fa_status::FA_ERR_INTERNAL)
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The panic boundary of an exported function: `ffi_guard!("fa_name", { body })` runs the
/// body (which evaluates to an [`FfiResult`]) under `catch_unwind`; an `Err` or a panic
/// becomes the function's failure value (status code, NULL or nothing) and sets the
/// thread's last error. Every `extern "C"` function of this crate is one call of it.
macro_rules! ffi_guard {
    ($op:literal, $body:block) => {
        $crate::status::guard($op, move || -> $crate::status::FfiResult<_> { $body })
    };
}
pub(crate) use ffi_guard;
