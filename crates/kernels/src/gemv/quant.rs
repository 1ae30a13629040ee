//! The decode kernels on 8-bit keys and values ([`Code`]s) with a scale per row: the same
//! bodies as the f32/16-bit kernels, which widen each code in registers (int8 by sign
//! extension, e5m2 through F16C, e4m3 by a bit rebuild into an f16; see
//! [`quant::dequant`](crate::quant::dequant)) and fold the row's scale into the score
//! (`alpha·scale_j·Σ q·code`) or into the weight (`P[r, j]·scale_j`), so a row is never
//! dequantised into memory.

use super::indexed::{axpy_rows_indexed_impl, dot_rows_indexed_impl};
use super::rows::Heads;
use super::{axpy_rows_impl, dot_rows_impl};
use crate::dispatch::Isa;
use crate::error::Result;
use crate::gemm::{MatMut, MatRef};
use crate::quant::Code;

/// `S[r, j] = alpha·scale[j]·Σ_x Q[r, x]·decode(K[j, x])`: [`dot_rows_with`](super::dot_rows_with)
/// on 8-bit key rows with one scale per key row (for a per-head or per-tensor scale, `n`
/// copies of it, or fold it into `alpha`).
///
/// ```
/// use fastattn_kernels::{gemv::dot_rows_quant_with, Isa, MatRef, MatMut};
/// let q = [1.0f32, 2.0];
/// let k: [i8; 4] = [1, 1, -3, 2]; // two key rows
/// let mut s = [0.0; 2];
/// dot_rows_quant_with(Isa::best(), 1.0, MatRef::row_major(&q, 1, 2)?, MatRef::row_major(&k, 2, 2)?,
///                     &[0.5, 2.0], MatMut::row_major(&mut s, 1, 2)?)?;
/// assert_eq!(s, [1.5, 2.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// As [`dot_rows_with`](super::dot_rows_with), and
/// [`KernelError::ShapeMismatch`](crate::KernelError::ShapeMismatch) unless there are `n`
/// scales. The scales are not checked for sign or finiteness (the attention layer does).
pub fn dot_rows_quant_with<C: Code>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: MatRef<'_, C>,
    scales: &[f32],
    s: MatMut<'_>,
) -> Result<()> {
    dot_rows_impl(isa, alpha, q, k, Some(scales), s)
}

/// `O[r, :] += Σ_j P[r, j]·scale[j]·decode(V[j, :])`: [`axpy_rows_with`](super::axpy_rows_with)
/// on 8-bit value rows with one scale per value row. Zero weights are skipped (their rows
/// are not read).
///
/// # Errors
/// As [`dot_rows_quant_with`].
pub fn axpy_rows_quant_with<C: Code>(
    isa: Isa,
    p: MatRef<'_>,
    v: MatRef<'_, C>,
    scales: &[f32],
    o: MatMut<'_>,
) -> Result<()> {
    axpy_rows_impl(isa, p, v, Some(scales), o)
}

/// [`dot_rows_indexed_with`](super::dot_rows_indexed_with) on 8-bit key rows (a paged
/// 8-bit cache): `scales` holds `heads.count × n` values, head-major (head `h`'s scale of
/// row `j` at `h·n + j`).
///
/// # Errors
/// As [`dot_rows_indexed_with`](super::dot_rows_indexed_with), and a
/// [`KernelError::ShapeMismatch`](crate::KernelError::ShapeMismatch) for a wrong number of
/// scales.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_indexed_quant_with<C: Code>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: &[C],
    rows: &[usize],
    heads: Heads,
    scales: &[f32],
    s: MatMut<'_>,
) -> Result<()> {
    dot_rows_indexed_impl(isa, alpha, q, k, rows, heads, Some(scales), s)
}

/// [`axpy_rows_indexed_with`](super::axpy_rows_indexed_with) on 8-bit value rows, with
/// `heads.count × n` scales as in [`dot_rows_indexed_quant_with`].
///
/// # Errors
/// As [`dot_rows_indexed_quant_with`].
pub fn axpy_rows_indexed_quant_with<C: Code>(
    isa: Isa,
    p: MatRef<'_>,
    v: &[C],
    rows: &[usize],
    heads: Heads,
    scales: &[f32],
    o: MatMut<'_>,
) -> Result<()> {
    axpy_rows_indexed_impl(isa, p, v, rows, heads, Some(scales), o)
}

/// Oracle of [`dot_rows_quant_with`] (f64 accumulation).
pub fn dot_rows_quant_ref<C: Code>(
    alpha: f32,
    q: MatRef<'_>,
    k: MatRef<'_, C>,
    scales: &[f32],
    mut s: MatMut<'_>,
) {
    for r in 0..q.rows() {
        for (j, &sc) in scales.iter().enumerate().take(k.rows()) {
            let t: f64 = (0..q.cols())
                .map(|x| q.get(r, x) as f64 * k.get(j, x).decode() as f64)
                .sum();
            s.set(r, j, (alpha as f64 * sc as f64 * t) as f32);
        }
    }
}

/// Oracle of [`axpy_rows_quant_with`] (f64 accumulation, zero weights skipped).
pub fn axpy_rows_quant_ref<C: Code>(
    p: MatRef<'_>,
    v: MatRef<'_, C>,
    scales: &[f32],
    mut o: MatMut<'_>,
) {
    for r in 0..p.rows() {
        for x in 0..v.cols() {
            let mut t = o.get(r, x) as f64;
            for (j, &sc) in scales.iter().enumerate().take(p.cols()) {
                let w = p.get(r, j);
                if w != 0.0 {
                    t += w as f64 * sc as f64 * v.get(j, x).decode() as f64;
                }
            }
            o.set(r, x, t as f32);
        }
    }
}
