//! Non-finite keys and values (a NaN or an infinity, e.g. in the unused padding of a KV
//! cache): the helpers that keep them out of the rows that cannot see them. A product
//! `W·X` over a block of X holding one either runs on a copy with the rows nobody sees
//! zeroed (then the GEMM gives what it gives on clean values), or skips zero weights
//! ([`kernels::gemv::axpy_rows_with`]) where some row does see one.

use kernels::dtype::{all_finite, Element, Slice};
use kernels::gemm::MatRef;

/// A dense row-major copy of `m` if it holds a NaN or an infinity, else `None` (one pass
/// over the block, next to its packing; the copy is made only for such a block).
pub(crate) fn dense_if_nonfinite<T: Element>(m: MatRef<'_, T>) -> Option<Vec<f32>> {
    let (rows, cols) = (m.rows(), m.cols());
    let dense = m.col_stride() == 1 && cols > 0;
    let finite = if let (Slice::F32(data), true) = (T::slice(m.data()), dense) {
        (0..rows).all(|r| all_finite(&data[r * m.row_stride()..][..cols]))
    } else {
        (0..rows).all(|r| (0..cols).all(|c| m.get(r, c).to_f32().is_finite()))
    };
    if finite {
        None
    } else {
        Some(dense_copy(m))
    }
}

/// Prepares a dense copy `rows_data` (`n × cols`) of value or key rows for a product
/// `W·rows_data` with weights `w` (`m × n`, row stride `ldw`): a row holding a NaN or an
/// infinity whose column of `w` is all zero (no row sees it) is zeroed, so that the GEMM
/// gives what it gives on clean values. Returns true if such a row is seen by some row of
/// `w`: the caller must then skip zero weights ([`kernels::gemv::axpy_rows_with`]) instead
/// of running the GEMM, where `0·NaN` would reach the rows that cannot see it.
pub(crate) fn zero_unseen_nonfinite_rows(
    rows_data: &mut [f32],
    cols: usize,
    w: &[f32],
    m: usize,
    ldw: usize,
) -> bool {
    let mut skip_zeros = false;
    for (j, row) in rows_data.chunks_exact_mut(cols.max(1)).enumerate() {
        if row.iter().all(|x| x.is_finite()) {
            continue;
        }
        if (0..m).all(|i| w[i * ldw + j] == 0.0) {
            row.fill(0.0);
        } else {
            skip_zeros = true;
        }
    }
    skip_zeros
}

/// A dense row-major f32 copy of `m`.
pub(crate) fn dense_copy<T: Element>(m: MatRef<'_, T>) -> Vec<f32> {
    let mut d = Vec::with_capacity(m.rows() * m.cols());
    for r in 0..m.rows() {
        d.extend((0..m.cols()).map(|c| m.get(r, c).to_f32()));
    }
    d
}
