//! Dense layers `y = x·W + b` on a weight packed once, with a deterministic rayon split.
//!
//! The weight `W` (`d_in × d_out`) is packed at construction into the GEMM microkernel's
//! `NR`-column panels of full depth ([`kernels::gemm::packed::PackedB`]), so a call only
//! streams the packed panels: no per-call packing of `W`. [`gemm_packed_b`] runs on one
//! thread; this module splits the work into independent output blocks itself:
//!
//! * more than [`ROW_CHUNK`] rows (prefill): `⌈rows / ROW_CHUNK⌉` tasks of equal row
//!   counts (rounded up to the microkernel's `MR`) × all columns, written in place;
//! * at most `ROW_CHUNK` rows (decoding, a few tokens): tasks of [`COL_BLOCK`] columns, each
//!   into a small scratch block copied into place afterwards, so that a single token still
//!   uses every thread on the weight-bandwidth-bound product.
//!
//! The split depends only on the shape, never on the thread count, and the depth `k` is
//! never split, so results are bit-for-bit identical at 1, 2 or 16 threads and with
//! [`Parallelism::Sequential`]. The bias is written into the output block first and the
//! product accumulated onto it (`beta = 1`), while the block is in cache.

use crate::error::{AttnError, Result};
use kernels::gemm::packed::{gemm_packed_b, PackedB};
use kernels::gemm::{tile_of, MatMut, MatRef};
use kernels::{DType, Element, Isa, Parallelism};
use std::ops::Range;

/// Rows per task of the row split, at most (before rounding up to a multiple of the
/// microkernel's `MR`): larger chunks re-read the packed weight fewer times, smaller ones
/// give more tasks. 128 measured best for the `768 → 2304` projection of 512 rows on the
/// 2-core dev machine (293 GFLOP/s against 256 at 64 rows and 240 for the blocked GEMM on
/// the unpacked weight).
pub const ROW_CHUNK: usize = 128;

/// Columns per task of the column split (a multiple of every microkernel's `NR`).
pub const COL_BLOCK: usize = 256;

/// How a caller-given weight matrix is laid out (both row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WeightLayout {
    /// `[d_in, d_out]`: `y = x·W` (this crate's convention, and JAX/Flax's).
    #[default]
    InOut,
    /// `[d_out, d_in]`: `y = x·Wᵀ` (PyTorch's `nn.Linear.weight`).
    OutIn,
}

/// A per-block step run right after a block of output rows is complete (while it is in
/// cache): `(first_row, rows)`, where `rows` holds whole rows of the computed columns.
pub(crate) type Epilogue<'e> = &'e (dyn Fn(usize, &mut [f32]) + Sync);

/// A dense layer `y = x·W + b` with `W` packed once.
///
/// ```
/// use fastattn_attention::{Linear, WeightLayout};
/// use kernels::{DType, Element, Isa, Parallelism};
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [d_in = 2, d_out = 3]
/// let lin = Linear::new(Isa::best(), &w, 2, 3, WeightLayout::InOut, Some(&[0.5, 0.5, 0.5]))?;
/// let y = lin.forward(&[1.0, 1.0], 1, Parallelism::Sequential)?;
/// assert_eq!(y, [5.5, 7.5, 9.5]);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    d_in: usize,
    d_out: usize,
    packed: PackedB,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// Packs `w` (`d_in × d_out` seen through `layout`) and copies the bias (`d_out` values).
    /// A 16-bit `w` (f16, bf16) stays 16-bit when packed, so the layer holds and streams
    /// half the bytes; products widen it to f32 in registers (decoding) or panel by panel.
    ///
    /// # Errors
    /// [`AttnError::Shape`] if `w` or the bias have the wrong length;
    /// [`AttnError::Kernel`] if the CPU lacks `isa`.
    pub fn new<W: Element>(
        isa: Isa,
        w: &[W],
        d_in: usize,
        d_out: usize,
        layout: WeightLayout,
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        let n = d_in
            .checked_mul(d_out)
            .ok_or(AttnError::Overflow { what: "weight" })?;
        expect_len(
            "weight",
            w.len(),
            n,
            &format!("d_in·d_out = {d_in}·{d_out}"),
        )?;
        if let Some(b) = bias {
            expect_len("bias", b.len(), d_out, "d_out")?;
        }
        let view = match layout {
            WeightLayout::InOut => MatRef::new(w, d_in, d_out, d_out, 1)?,
            WeightLayout::OutIn => MatRef::new(w, d_in, d_out, 1, d_in)?,
        };
        let mut packed = PackedB::new(isa)?;
        packed.pack_stored(view)?;
        Ok(Linear {
            d_in,
            d_out,
            packed,
            bias: bias.map(<[f32]>::to_vec),
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The kernel variant the weight was packed for.
    pub fn isa(&self) -> Isa {
        self.packed.isa()
    }

    /// The element type the weight is stored in.
    pub fn dtype(&self) -> DType {
        self.packed.dtype()
    }

    /// Bytes of packed weight storage.
    pub fn weight_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// Panel width `NR` of the packed weight (the microkernel's tile width).
    pub fn nr(&self) -> usize {
        self.packed.nr()
    }

    /// Whether the layer adds a bias.
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// `y = x·W + b` for `rows` rows of `x` (`[rows, d_in]` row-major), as a new
    /// `[rows, d_out]` buffer.
    ///
    /// # Errors
    /// [`AttnError::Shape`] if `x` is not `rows·d_in` long.
    pub fn forward(&self, x: &[f32], rows: usize, par: Parallelism) -> Result<Vec<f32>> {
        let n = rows
            .checked_mul(self.d_out)
            .ok_or(AttnError::Overflow { what: "output" })?;
        let mut y = vec![0.0f32; n];
        self.forward_into(x, rows, &mut y, par)?;
        Ok(y)
    }

    /// [`Linear::forward`] into a caller-given `[rows, d_out]` buffer (overwritten, never
    /// read).
    ///
    /// # Errors
    /// [`AttnError::Shape`] if `x` or `y` have the wrong length.
    pub fn forward_into(
        &self,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        par: Parallelism,
    ) -> Result<()> {
        self.forward_cols(x, rows, 0..self.d_out, y, par, None)
    }

    /// Columns `cols` of `x·W + b` into `y` (`[rows, cols.len()]` row-major), then
    /// `epilogue` on every finished block of rows. `cols.start` must be a multiple of
    /// [`Linear::nr`].
    pub(crate) fn forward_cols(
        &self,
        x: &[f32],
        rows: usize,
        cols: Range<usize>,
        y: &mut [f32],
        par: Parallelism,
        epilogue: Option<Epilogue<'_>>,
    ) -> Result<()> {
        let (k, c0) = (self.d_in, cols.start);
        let n = cols.end.saturating_sub(c0);
        if cols.end > self.d_out || !c0.is_multiple_of(self.packed.nr()) {
            return Err(AttnError::Shape {
                what: format!(
                    "columns {cols:?} of a {}-column projection (start a multiple of {})",
                    self.d_out,
                    self.packed.nr()
                ),
            });
        }
        let nx = rows
            .checked_mul(k)
            .ok_or(AttnError::Overflow { what: "input" })?;
        let ny = rows
            .checked_mul(n)
            .ok_or(AttnError::Overflow { what: "output" })?;
        expect_len("input", x.len(), nx, &format!("rows·d_in = {rows}·{k}"))?;
        expect_len("output", y.len(), ny, &format!("rows·cols = {rows}·{n}"))?;
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let bias = self.bias.as_ref().map(|b| &b[cols.clone()]);
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        let flops = 2usize
            .saturating_mul(rows)
            .saturating_mul(n)
            .saturating_mul(k);
        let threads = match par {
            Parallelism::Rayon => crate::gates::LINEAR_GATE.threads(
                self.packed.isa(),
                flops as f64,
                kernels::parallel::current_threads(),
            ),
            _ => 1,
        };
        // One block: rows r0.. of x times columns c0 + j0 .. c0 + j0 + nb, into `dst`
        // (`[rows_b, nb]` row-major).
        let block = |r0: usize, rows_b: usize, j0: usize, nb: usize, dst: &mut [f32]| {
            if let Some(b) = bias {
                for row in dst.chunks_exact_mut(nb) {
                    row.copy_from_slice(&b[j0..j0 + nb]);
                }
            }
            gemm_packed_b(
                1.0,
                MatRef::new(&x[r0 * k..], rows_b, k, k, 1)?,
                &self.packed,
                c0 + j0,
                beta,
                MatMut::new(dst, rows_b, nb, nb, 1)?,
            )?;
            Ok::<(), AttnError>(())
        };
        crate::gates::LINEAR_GATE.run(self.packed.isa(), flops as f64, threads, || {
            if rows > ROW_CHUNK || n <= COL_BLOCK {
                // Equal chunks of at most about ROW_CHUNK rows, each a multiple of MR.
                let rc = rows
                    .div_ceil(rows.div_ceil(ROW_CHUNK))
                    .next_multiple_of(tile_of(self.packed.isa()).0);
                let task = |i: usize, chunk: &mut [f32]| -> Result<()> {
                    let r0 = i * rc;
                    block(r0, chunk.len() / n, 0, n, chunk)?;
                    if let Some(f) = epilogue {
                        f(r0, chunk);
                    }
                    Ok(())
                };
                kernels::parallel::try_for_each_chunk_mut(threads, y, rc * n, task)
            } else {
                let blocks = n.div_ceil(COL_BLOCK);
                let one = |q: usize| -> Result<Vec<f32>> {
                    let (j0, nb) = (q * COL_BLOCK, COL_BLOCK.min(n - q * COL_BLOCK));
                    let mut t = vec![0.0f32; rows * nb];
                    block(0, rows, j0, nb, &mut t)?;
                    Ok(t)
                };
                let mut parts: Vec<Vec<f32>> = vec![Vec::new(); blocks];
                kernels::parallel::try_for_each_chunk_mut(threads, &mut parts, 1, |q, slot| {
                    slot[0] = one(q)?;
                    Ok::<(), AttnError>(())
                })?;
                for (q, t) in parts.iter().enumerate() {
                    let (j0, nb) = (q * COL_BLOCK, COL_BLOCK.min(n - q * COL_BLOCK));
                    for (dst, src) in y.chunks_exact_mut(n).zip(t.chunks_exact(nb)) {
                        dst[j0..j0 + nb].copy_from_slice(src);
                    }
                }
                if let Some(f) = epilogue {
                    f(0, y);
                }
                Ok(())
            }
        })
    }
}

/// [`AttnError::Shape`] unless `len == want`.
pub(crate) fn expect_len(what: &str, len: usize, want: usize, how: &str) -> Result<()> {
    if len != want {
        return Err(AttnError::Shape {
            what: format!("{what} has {len} values, expected {how} = {want}"),
        });
    }
    Ok(())
}
