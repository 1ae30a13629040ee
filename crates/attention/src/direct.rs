//! The decode kernels on a key/value source in place: one call per segment of a strided
//! source, one call for a whole run of a paged one, float or 8-bit (the codes widened in
//! registers, the rows' scales folded into the scores and weights).

use crate::error::Result;
use crate::kv::{KvMem, KvSource, Seg};
use crate::quant::{match_q, QuantSeg};
use crate::tensor::with_mat;
use kernels::gemm::{MatMut, MatRef};
use kernels::gemv::{
    axpy_rows_indexed_quant_with, axpy_rows_indexed_with, axpy_rows_quant_with, axpy_rows_with,
    dot_rows_indexed_quant_with, dot_rows_indexed_with, dot_rows_quant_with, dot_rows_with, Heads,
};
use kernels::Isa;

/// Scratch of the direct kernels: a paged run's row offsets, and the rows' scales of an
/// 8-bit source.
#[derive(Default)]
pub(crate) struct DirectBufs {
    rows: Vec<usize>,
    scales: Vec<f32>,
}

/// The codes of an 8-bit segment as a typed `rows × cols` matrix, bound to `$m`.
macro_rules! with_codes {
    ($seg:expr, $cols:expr, $m:ident => $body:expr) => {{
        let seg: &QuantSeg<'_> = $seg;
        match_q!(seg.mem.codes, c => {
            let $m = MatRef::new(
                c.get(seg.base..).unwrap_or(&[]),
                seg.rows,
                $cols,
                seg.row_stride,
                seg.col_stride,
            )?;
            $body
        })
    }};
}

/// `S[r, j − j0] = alpha·Q[r]·K[j]` for the keys `j0 .. j1` of key/value head `kvh` of
/// batch `b` (with `heads` heads from `kvh` on, Q and S in that many bands, for a paged
/// source), S at row stride `lds`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: &KvSource<'_>,
    (b, kvh, heads): (usize, usize, usize),
    (j0, j1): (usize, usize),
    s: &mut [f32],
    lds: usize,
    bufs: &mut DirectBufs,
) -> Result<()> {
    let rows = q.rows();
    let hs = Heads {
        count: heads,
        stride: k.head_stride(),
    };
    match k.indexed(b, kvh, j0, j1, &mut bufs.rows) {
        Some(KvMem::Float(mem)) => {
            let sm = MatMut::new(s, rows, j1 - j0, lds, 1)?;
            kernels::match_dtype!(mem.data, kernels::dtype::Slice(ks) => {
                dot_rows_indexed_with(isa, alpha, q, ks, &bufs.rows, hs, sm)?
            })
        }
        Some(KvMem::Quant(mem)) => {
            k.indexed_scales(kvh, heads, j0, j1, &mut bufs.scales);
            let sm = MatMut::new(s, rows, j1 - j0, lds, 1)?;
            match_q!(mem.codes, ks => {
                dot_rows_indexed_quant_with(isa, alpha, q, ks, &bufs.rows, hs, &bufs.scales, sm)?
            })
        }
        None => k.for_each_segment(b, kvh, j0, j1, |c0, seg| {
            let sm = MatMut::new(&mut s[c0..], rows, seg.rows(), lds, 1)?;
            let d = q.cols();
            match seg {
                Seg::Float(seg) => with_mat!(seg.mem, (seg.base, seg.rows, d, seg.row_stride, seg.col_stride), km => {
                    dot_rows_with(isa, alpha, q, km, sm)?
                }),
                Seg::Quant(seg) => {
                    seg.scales_into(&mut bufs.scales);
                    with_codes!(&seg, d, km => dot_rows_quant_with(isa, alpha, q, km, &bufs.scales, sm)?)
                }
            }
            Ok(())
        })?,
    }
    Ok(())
}

/// `O[r] += Σ_j P[r, j − j0]·V[j]` over the values `j0 .. j1` of key/value head `kvh` of
/// batch `b` (`heads` bands as in [`scores`]); P at row stride `ldp`, O `rows × dv` dense.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate(
    isa: Isa,
    p: &[f32],
    ldp: usize,
    v: &KvSource<'_>,
    (b, kvh, heads): (usize, usize, usize),
    (j0, j1): (usize, usize),
    o: &mut [f32],
    (rows, dv): (usize, usize),
    bufs: &mut DirectBufs,
) -> Result<()> {
    let hs = Heads {
        count: heads,
        stride: v.head_stride(),
    };
    let n = j1 - j0;
    match v.indexed(b, kvh, j0, j1, &mut bufs.rows) {
        Some(KvMem::Float(mem)) => {
            let (pm, om) = (MatRef::new(p, rows, n, ldp, 1)?, MatMut::new(o, rows, dv, dv, 1)?);
            kernels::match_dtype!(mem.data, kernels::dtype::Slice(vs) => {
                axpy_rows_indexed_with(isa, pm, vs, &bufs.rows, hs, om)?
            })
        }
        Some(KvMem::Quant(mem)) => {
            v.indexed_scales(kvh, heads, j0, j1, &mut bufs.scales);
            let (pm, om) = (MatRef::new(p, rows, n, ldp, 1)?, MatMut::new(o, rows, dv, dv, 1)?);
            match_q!(mem.codes, vs => {
                axpy_rows_indexed_quant_with(isa, pm, vs, &bufs.rows, hs, &bufs.scales, om)?
            })
        }
        None => v.for_each_segment(b, kvh, j0, j1, |c0, seg| {
            let pm = MatRef::new(&p[c0..], rows, seg.rows(), ldp, 1)?;
            let om = MatMut::new(o, rows, dv, dv, 1)?;
            match seg {
                Seg::Float(seg) => with_mat!(seg.mem, (seg.base, seg.rows, dv, seg.row_stride, seg.col_stride), vm => {
                    axpy_rows_with(isa, pm, vm, om)?
                }),
                Seg::Quant(seg) => {
                    seg.scales_into(&mut bufs.scales);
                    with_codes!(&seg, dv, vm => axpy_rows_quant_with(isa, pm, vm, &bufs.scales, om)?)
                }
            }
            Ok(())
        })?,
    }
    Ok(())
}
