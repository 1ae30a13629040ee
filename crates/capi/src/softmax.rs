//! `fa_softmax`: the fused, numerically stable row softmax, in place.

use crate::raw::{check_ptr, span_of};
use crate::status::{fa_status, ffi_guard, FfiError, OK};
use std::ffi::c_int;

/// Softmax of each of `rows` contiguous rows of `row_len` values, in place:
/// `x_j <- exp(x_j - max) / sum_k exp(x_k - max)` per row.
///
/// Rows are independent (a row with a NaN becomes all NaN without touching the others); a
/// row of all `-INFINITY` becomes all zeros. `rows == 0` or `row_len == 0` does nothing
/// (`x` may then be NULL).
///
/// Returns `FA_OK`, `FA_ERR_NULL_POINTER`, `FA_ERR_INVALID_ARGUMENT` (misaligned `x`),
/// `FA_ERR_BAD_SHAPE` (`rows*row_len` overflows) or `FA_ERR_UNSUPPORTED_VARIANT`.
///
/// # Safety
/// `x` points to `rows*row_len` writable floats that no other thread accesses during the
/// call.
#[no_mangle]
pub unsafe extern "C" fn fa_softmax(x: *mut f32, rows: usize, row_len: usize) -> c_int {
    ffi_guard!("fa_softmax", {
        let len = rows.checked_mul(row_len).ok_or_else(|| {
            FfiError::new(
                fa_status::FA_ERR_BAD_SHAPE,
                format!("rows*row_len = {rows}*{row_len} overflows"),
            )
        })?;
        if len == 0 {
            return Ok(OK);
        }
        check_ptr(x, "x")?;
        span_of(x, len, "x")?;
        // SAFETY: the caller guarantees `len` writable floats at `x`, used by nobody else;
        // `x` is non-NULL and aligned, and `len*4` fits in isize (checked above).
        let xs = unsafe { std::slice::from_raw_parts_mut(x, len) };
        kernels::softmax::softmax_inplace(xs, row_len)?;
        Ok(OK)
    })
}
