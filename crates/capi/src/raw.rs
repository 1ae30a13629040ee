//! Checks on raw arguments before any slice or view is built from them: NULL, alignment,
//! the memory a strided view spans, and overlaps between outputs and other arguments.

use crate::status::{fa_status, FfiError, FfiResult};
use std::ffi::c_void;
use std::mem::{align_of, size_of};

/// The bytes `[start, end)` an argument spans (`start == end` for an empty one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// Whether two spans share a byte (empty spans share none).
    pub fn overlaps(self, other: Span) -> bool {
        self.start < self.end
            && other.start < other.end
            && self.start < other.end
            && other.start < self.end
    }
}

/// Checks that `p` is non-NULL and aligned for `T`.
pub(crate) fn check_ptr<T>(p: *const T, what: &str) -> FfiResult<()> {
    check_ptr_aligned(p.cast(), align_of::<T>(), what)
}

/// Checks that `p` is non-NULL and a multiple of `align` (a power of two): for data whose
/// element type is known only at run time (`fa_tensor::data`).
pub(crate) fn check_ptr_aligned(p: *const c_void, align: usize, what: &str) -> FfiResult<()> {
    debug_assert!(align.is_power_of_two());
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    if !p.addr().is_multiple_of(align) {
        return Err(FfiError::new(
            fa_status::FA_ERR_INVALID_ARGUMENT,
            format!("{what} is not aligned to {align} bytes"),
        ));
    }
    Ok(())
}

/// The span of `len` values of `T` at `p` (already checked by [`check_ptr`] when `len > 0`),
/// refusing sizes that do not fit in `isize` bytes or wrap the address space.
pub(crate) fn span_of<T>(p: *const T, len: usize, what: &str) -> FfiResult<Span> {
    if len == 0 {
        return Ok(Span::default());
    }
    let too_big = || {
        FfiError::new(
            fa_status::FA_ERR_BAD_SHAPE,
            format!("{what} spans {len} elements: too large for the address space"),
        )
    };
    let bytes = len.checked_mul(size_of::<T>()).ok_or_else(too_big)?;
    if bytes > isize::MAX as usize {
        return Err(too_big());
    }
    let start = p as usize;
    let end = start.checked_add(bytes).ok_or_else(too_big)?;
    Ok(Span { start, end })
}

/// The element offsets `(lowest, highest)` a strided view with extents `dims` reaches
/// (both 0 for a view with a zero extent), or `FA_ERR_BAD_SHAPE` when they overflow.
pub(crate) fn offset_range(
    dims: &[usize],
    strides: &[isize],
    what: &str,
) -> FfiResult<(i128, i128)> {
    debug_assert_eq!(dims.len(), strides.len());
    if dims.contains(&0) {
        return Ok((0, 0));
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    for (&d, &s) in dims.iter().zip(strides) {
        let reach = (d as i128 - 1) * s as i128;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    // Offsets must stay within isize (pointer::offset) even for a view at address 0.
    if lo < isize::MIN as i128 / 4 || hi > isize::MAX as i128 / 4 {
        return Err(FfiError::new(
            fa_status::FA_ERR_BAD_SHAPE,
            format!("{what}: extents {dims:?} with strides {strides:?} overflow"),
        ));
    }
    Ok((lo, hi))
}

/// Checks that distinct in-range indices of a strided view (any stride signs) address
/// distinct elements, for output views: taking the extents > 1 in increasing `|stride|`
/// order, each `|stride|` must be at least the previous one times its extent.
pub(crate) fn check_no_self_alias(dims: &[usize], strides: &[isize], what: &str) -> FfiResult<()> {
    if dims.contains(&0) {
        return Ok(());
    }
    let mut ds: Vec<(u128, u128)> = dims
        .iter()
        .zip(strides)
        .filter(|(&d, _)| d > 1)
        .map(|(&d, &s)| (s.unsigned_abs() as u128, d as u128))
        .collect();
    ds.sort_unstable();
    let mut need = 1u128;
    for (s, d) in ds {
        if s < need {
            return Err(FfiError::new(
                fa_status::FA_ERR_BAD_STRIDE,
                format!("{what}: extents {dims:?} with strides {strides:?} make elements alias"),
            ));
        }
        need = s * d;
    }
    Ok(())
}

/// Refuses an output span that overlaps any of `others` (`(name, span)` pairs).
pub(crate) fn check_disjoint(out: (&str, Span), others: &[(&str, Span)]) -> FfiResult<()> {
    for &(name, span) in others {
        if out.1.overlaps(span) {
            return Err(FfiError::new(
                fa_status::FA_ERR_BAD_STRIDE,
                format!("output {} overlaps {name} in memory", out.0),
            ));
        }
    }
    Ok(())
}

/// Refuses outputs that overlap an input or an earlier output: each of `outputs` is checked
/// against every one of `inputs` and every output before it (all `(name, span)` pairs).
pub(crate) fn check_outputs_disjoint(
    outputs: &[(&str, Span)],
    inputs: &[(&str, Span)],
) -> FfiResult<()> {
    for (i, &out) in outputs.iter().enumerate() {
        check_disjoint(out, inputs)?;
        check_disjoint(out, &outputs[..i])?;
    }
    Ok(())
}

/// The span of a strided view of `T` at `p` (any stride signs; `p` already checked when
/// the view is non-empty).
pub(crate) fn strided_span<T>(
    p: *const T,
    dims: &[usize],
    strides: &[isize],
    what: &str,
) -> FfiResult<Span> {
    strided_span_bytes(p.cast(), size_of::<T>(), dims, strides, what)
}

/// The span of a strided view at `p` whose elements have `elem` bytes (a run-time element
/// type: 4 for f32, 2 for f16 and bf16); strides are in elements, of any sign.
pub(crate) fn strided_span_bytes(
    p: *const c_void,
    elem: usize,
    dims: &[usize],
    strides: &[isize],
    what: &str,
) -> FfiResult<Span> {
    if dims.contains(&0) {
        return Ok(Span::default());
    }
    let (lo, hi) = offset_range(dims, strides, what)?;
    let elem = elem as i128;
    let base = p.addr() as i128;
    let (start, end) = (base + lo * elem, base + (hi + 1) * elem);
    if start < 0 || end > usize::MAX as i128 {
        return Err(FfiError::new(
            fa_status::FA_ERR_BAD_SHAPE,
            format!("{what}: the view reaches outside the address space"),
        ));
    }
    Ok(Span {
        start: start as usize,
        end: end as usize,
    })
}

/// A `#[repr(C)]` argument struct that can grow: its first field is `struct_size: size_t`,
/// the number of bytes of the struct the caller was compiled with, set by its `*_init`
/// function. Fields beyond `struct_size` (added after the caller was built) take their
/// defaults, so a caller built against an older header keeps working.
///
/// # Safety
/// The implementing type is `#[repr(C)]`, holds only plain data (integers, floats, raw
/// pointers) so that any bytes copied from a caller's struct form a valid value, and its
/// first field is a `usize` named `struct_size`.
pub(crate) unsafe trait Versioned: Copy {
    /// The value `*_init` writes: every option at its default, `struct_size` the full size.
    const DEFAULT: Self;
    /// The `struct_size` of every released layout of the struct, oldest first, the last
    /// `size_of::<Self>()`: the only sizes this library accepts. A size between two layouts
    /// would copy part of a field (half a pointer), so it is refused.
    const LAYOUTS: &'static [usize];
    /// The struct's C name, for messages.
    const NAME: &'static str;
    /// The C function that initialises it, for messages.
    const INIT: &'static str;
}

/// Checks a caller's `struct_size` against what this library can read or write.
fn check_struct_size<T: Versioned>(size: usize, what: &str) -> FfiResult<()> {
    let invalid = |m: String| FfiError::new(fa_status::FA_ERR_INVALID_ARGUMENT, m);
    if size == 0 {
        return Err(invalid(format!(
            "{what}->struct_size is 0: initialise the {} with {}",
            T::NAME,
            T::INIT
        )));
    }
    debug_assert_eq!(T::LAYOUTS.last(), Some(&size_of::<T>()));
    let first = T::LAYOUTS.first().copied().unwrap_or(size_of::<T>());
    if size < first {
        return Err(invalid(format!(
            "{what}->struct_size is {size}, below the {first} bytes of the first {} layout",
            T::NAME
        )));
    }
    if size > size_of::<T>() {
        return Err(invalid(format!(
            "{what}->struct_size is {size}, but this library's {} has {} bytes (built \
             against a newer fastattn.h?)",
            T::NAME,
            size_of::<T>()
        )));
    }
    if !T::LAYOUTS.contains(&size) {
        return Err(invalid(format!(
            "{what}->struct_size is {size}, not the size of a {} layout ({:?} bytes)",
            T::NAME,
            T::LAYOUTS
        )));
    }
    Ok(())
}

/// Reads the versioned struct at `p`: the caller's first `struct_size` bytes over
/// [`Versioned::DEFAULT`].
///
/// # Safety
/// `p` is NULL or points to a readable `T` whose first `struct_size` bytes are readable.
pub(crate) unsafe fn read_versioned<T: Versioned>(p: *const T, what: &str) -> FfiResult<T> {
    check_ptr(p, what)?;
    // SAFETY: `p` is non-NULL and aligned for `T` (checked), whose first field is a
    // `usize` (trait contract), and at least that field is readable (caller contract).
    let size = unsafe { p.cast::<usize>().read() };
    check_struct_size::<T>(size, what)?;
    let mut out = T::DEFAULT;
    // SAFETY: `size <= size_of::<T>()` (checked) readable bytes at `p` (caller contract);
    // `out` is a distinct local of `size_of::<T>()` bytes; any bytes make a valid `T`
    // (trait contract).
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&raw mut out).cast::<u8>(), size) };
    Ok(out)
}

/// Writes the defaults into the first `size` bytes of the versioned struct at `p`, with
/// `struct_size = size`.
///
/// # Safety
/// `p` is NULL or points to `size` writable bytes.
pub(crate) unsafe fn init_versioned<T: Versioned>(
    p: *mut T,
    size: usize,
    what: &str,
) -> FfiResult<()> {
    check_ptr(p, what)?;
    check_struct_size::<T>(size, &format!("{what} (size argument)"))?;
    let src = T::DEFAULT;
    // SAFETY: `size <= size_of::<T>()` bytes (checked) are read from a local `T` and
    // written to `p`, which has that many writable bytes (caller contract); they are
    // distinct objects.
    unsafe { std::ptr::copy_nonoverlapping((&raw const src).cast::<u8>(), p.cast::<u8>(), size) };
    // SAFETY: the first field is a `usize` (trait contract), aligned (checked) and
    // writable (caller contract; `size` is a layout's size, at least `size_of::<usize>()`).
    unsafe { p.cast::<usize>().write(size) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_overlap_only_when_sharing_a_byte() {
        let s = |start, end| Span { start, end };
        assert!(s(0, 8).overlaps(s(4, 12)));
        assert!(!s(0, 8).overlaps(s(8, 12)));
        assert!(!s(0, 0).overlaps(s(0, 8)));
        assert!(s(4, 5).overlaps(s(0, 8)));
    }

    #[test]
    fn offset_range_covers_negative_strides_and_refuses_overflow() {
        assert_eq!(offset_range(&[3, 4], &[-4, 1], "x").unwrap(), (-8, 3));
        assert_eq!(offset_range(&[0, 4], &[-4, 1], "x").unwrap(), (0, 0));
        let e = offset_range(&[3, 2], &[isize::MAX / 2, 1], "x").unwrap_err();
        assert_eq!(e.code, fa_status::FA_ERR_BAD_SHAPE);
    }

    #[test]
    fn self_alias_check_accepts_dense_padded_and_permuted_views() {
        assert!(check_no_self_alias(&[3, 4], &[4, 1], "c").is_ok());
        assert!(check_no_self_alias(&[3, 4], &[1, 5], "c").is_ok());
        assert!(check_no_self_alias(&[3, 4], &[-4, -1], "c").is_ok());
        assert!(check_no_self_alias(&[1, 4], &[0, 1], "c").is_ok());
        assert!(check_no_self_alias(&[3, 4], &[2, 1], "c").is_err());
        assert!(check_no_self_alias(&[3, 4], &[0, 1], "c").is_err());
    }

    #[test]
    fn strided_span_is_the_exact_byte_range() {
        let base = 4096 as *const f32;
        let s = strided_span(base, &[2, 3], &[-3, 1], "a").unwrap();
        assert_eq!((s.start, s.end), (4096 - 12, 4096 + 12));
        // 16-bit elements: the same offsets in 2-byte units.
        let s = strided_span_bytes(base.cast(), 2, &[2, 3], &[-3, 1], "a").unwrap();
        assert_eq!((s.start, s.end), (4096 - 6, 4096 + 6));
    }

    #[test]
    fn alignment_is_checked_for_the_element_size() {
        let p = 4098 as *const c_void;
        assert!(check_ptr_aligned(p, 2, "d").is_ok());
        let e = check_ptr_aligned(p, 4, "d").unwrap_err();
        assert_eq!(e.code, fa_status::FA_ERR_INVALID_ARGUMENT);
        assert!(e.message.contains("aligned to 4 bytes"), "{}", e.message);
        let e = check_ptr_aligned(std::ptr::null(), 2, "d").unwrap_err();
        assert_eq!(e.code, fa_status::FA_ERR_NULL_POINTER);
    }
}
