//! The decode kernels on rows scattered in memory (a paged KV cache).

use super::rows::{Heads, Indexed};
use super::{contiguous_rows, scale_ptr, AxpyRows, DotRows};
use crate::dispatch::Isa;
use crate::dtype::Element;
use crate::dtype::RowElem;
use crate::error::{KernelError, Result};
use crate::gemm::{MatMut, MatRef};
use crate::simd::dispatch;

/// Checks that every offset of `rows` starts `len` readable values of a slice of `total`,
/// for every head of `heads`, and that the rows of Q (P) and S (O) split into its bands.
fn check_rows(
    op: &'static str,
    rows: &[usize],
    heads: Heads,
    len: usize,
    total: usize,
    bands: usize,
) -> Result<usize> {
    if heads.count == 0 || !bands.is_multiple_of(heads.count) {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("rows in {} equal bands (one per head)", heads.count),
            got: format!("{bands} rows"),
        });
    }
    let span = (heads.count - 1)
        .checked_mul(heads.stride)
        .and_then(|x| x.checked_add(len))
        .ok_or(KernelError::Overflow { op })?;
    match rows
        .iter()
        .find(|&&o| o.checked_add(span).is_none_or(|e| e > total))
    {
        Some(&o) => Err(KernelError::ShapeMismatch {
            op,
            expected: format!("rows of {span} values (all heads) inside a slice of {total}"),
            got: format!("a row at offset {o}"),
        }),
        None => Ok(bands / heads.count),
    }
}

/// [`dot_rows_with`](super::dot_rows_with) for key rows scattered in memory (a paged cache): key row `j` is the
/// `d` values from `k[rows[j]]` (contiguous). The same arithmetic as on a matrix of those
/// rows, so the same bits. With several [`Heads`], Q and S are `count` bands of rows, band
/// `h` against the rows `h·stride` further on, all heads of a few keys at a time.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] unless Q is r×d and S r×n (`n = rows.len()`), r a
/// multiple of the head count, or when a row runs past `k`; [`KernelError::BadStride`]
/// unless Q and S have column stride 1; [`KernelError::UnsupportedIsa`] if the CPU lacks
/// `isa`.
///
/// ```
/// use fastattn_kernels::{gemv::{dot_rows_indexed_with, Heads}, Isa, MatRef, MatMut};
/// let q = [1.0f32, 2.0];
/// let k = [1.0f32, 1.0, 0.0, 3.0, 2.0, 0.5]; // rows at 0, 2, 4
/// let mut s = [0.0; 2];
/// dot_rows_indexed_with(Isa::best(), 1.0, MatRef::row_major(&q, 1, 2)?, &k, &[4, 0],
///                       Heads::ONE, MatMut::row_major(&mut s, 1, 2)?)?;
/// assert_eq!(s, [3.0, 3.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn dot_rows_indexed_with<E: Element>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: &[E],
    rows: &[usize],
    heads: Heads,
    s: MatMut<'_>,
) -> Result<()> {
    dot_rows_indexed_impl(isa, alpha, q, k, rows, heads, None, s)
}

/// [`dot_rows_indexed_with`] for any row type, with optional per-row scales
/// (`heads.count × n`, head-major).
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_indexed_impl<E: RowElem>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: &[E],
    rows: &[usize],
    heads: Heads,
    scales: Option<&[f32]>,
    mut s: MatMut<'_>,
) -> Result<()> {
    isa.check()?;
    let op = "dot_rows_indexed";
    let (r, d, n) = (q.rows(), q.cols(), rows.len());
    if s.rows() != r || s.cols() != n {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("S {r}×{n} (Q is {r}×{d}, {n} key rows)"),
            got: format!("S {}×{}", s.rows(), s.cols()),
        });
    }
    let per_head = check_rows(op, rows, heads, d, k.len(), r)?;
    if r == 0 || n == 0 {
        return Ok(());
    }
    contiguous_rows(op, "Q", q.col_stride())?;
    contiguous_rows(op, "S", s.col_stride())?;
    let sc = scale_ptr(op, scales, heads.count * n)?;
    let kernel = DotRows {
        rows: per_head,
        heads,
        n,
        d,
        alpha,
        sc,
        q: q.data().as_ptr(),
        ldq: q.row_stride(),
        k: Indexed {
            base: k.as_ptr(),
            off: rows.as_ptr(),
            n,
        },
        lds: s.row_stride(),
        s: s.as_mut_ptr(),
    };
    // SAFETY: Q and S were bounds-checked when built and have unit column strides; every
    // head's key rows lie inside `k` (checked above); S is exclusive; the ISA was checked.
    unsafe { dispatch(isa, kernel) };
    Ok(())
}

/// [`axpy_rows_with`](super::axpy_rows_with) for value rows scattered in memory (a paged cache): value row `j` is
/// the `dv = O.cols()` values from `v[rows[j]]` (contiguous). The same arithmetic as on a
/// matrix of those rows, so the same bits. [`Heads`] as in [`dot_rows_indexed_with`]: P
/// and O in bands, one per head.
///
/// # Errors
/// As [`dot_rows_indexed_with`], for P r×n (`n = rows.len()`) and O r×dv.
pub fn axpy_rows_indexed_with<E: Element>(
    isa: Isa,
    p: MatRef<'_>,
    v: &[E],
    rows: &[usize],
    heads: Heads,
    o: MatMut<'_>,
) -> Result<()> {
    axpy_rows_indexed_impl(isa, p, v, rows, heads, None, o)
}

/// [`axpy_rows_indexed_with`] for any row type, with optional per-row scales
/// (`heads.count × n`, head-major).
pub(super) fn axpy_rows_indexed_impl<E: RowElem>(
    isa: Isa,
    p: MatRef<'_>,
    v: &[E],
    rows: &[usize],
    heads: Heads,
    scales: Option<&[f32]>,
    mut o: MatMut<'_>,
) -> Result<()> {
    isa.check()?;
    let op = "axpy_rows_indexed";
    let (r, n, dv) = (p.rows(), p.cols(), o.cols());
    if rows.len() != n || o.rows() != r {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("P r×n with n = {} value rows, O r×dv", rows.len()),
            got: format!("P {r}×{n}, O {}×{dv}", o.rows()),
        });
    }
    let per_head = check_rows(op, rows, heads, dv, v.len(), r)?;
    if r == 0 || n == 0 || dv == 0 {
        return Ok(());
    }
    contiguous_rows(op, "P", p.col_stride())?;
    contiguous_rows(op, "O", o.col_stride())?;
    let sc = scale_ptr(op, scales, heads.count * n)?;
    let kernel = AxpyRows {
        rows: per_head,
        heads,
        n,
        dv,
        p: p.data().as_ptr(),
        ldp: p.row_stride(),
        sc,
        v: Indexed {
            base: v.as_ptr(),
            off: rows.as_ptr(),
            n,
        },
        ldo: o.row_stride(),
        o: o.as_mut_ptr(),
    };
    // SAFETY: as in dot_rows_indexed_with.
    unsafe { dispatch(isa, kernel) };
    Ok(())
}
