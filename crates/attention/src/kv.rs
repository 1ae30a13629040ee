//! Where the attention paths read keys and values: a [`KvSource`].
//!
//! The flash path (packing and the direct decode kernels), the materialised path and the
//! backward pass never address K or V as a 4-D view themselves. They ask the source for
//! the rows `j0 .. j1` of a key/value head `(b, h)`, and get them as one or more
//! [`RowSeg`]s: contiguous runs of rows, each a strided row-major matrix (`rows × D`,
//! any row and column stride, any element type) over the source's memory, in key order.
//! The dispatch over the source happens once per request (a tile's key block, a head's
//! pack), never per row.
//!
//! The consumers:
//! - packing for the GEMM (flash `KvPacks`, the materialised path's `Q·Kᵀ` and `P·V`)
//!   needs one matrix per request: [`KvSource::contiguous`] hands out the source's own
//!   segment when the rows form one, and otherwise gathers them (as f32) into a scratch;
//! - the direct decode kernels (`dot_rows_with`, `axpy_rows_with`) run once per segment
//!   on its columns of the score tile ([`KvSource::for_each_segment`]);
//! - the backward gathers rows into its f32 blocks ([`KvSource::gather_rows`]).
//!
//! # The dense strided source
//! [`KvSource::Dense`] is a `[B, H, L, D]` view at any strides (the public
//! [`crate::TensorRef`] / [`crate::DynTensor`]). It gives exactly one segment for every
//! request (`rows = j1 − j0`, row stride = the view's L stride, column stride = its D
//! stride), so every path makes the very same kernel calls, on the very same memory, as
//! it did on the view itself: no copy, no per-row dispatch.
//!
//! # Adding a source
//! A source is a variant of [`KvSource`]; every method matches over the variants without a
//! wildcard, so the compiler points at each place a new variant needs an arm:
//! - [`len`](KvSource::len): the keys of `(b, h)`;
//! - [`unit_cols`](KvSource::unit_cols): whether every row is contiguous (the direct
//!   decode kernels need it);
//! - [`for_each_segment`](KvSource::for_each_segment): the segments covering `j0 .. j1`;
//! - [`single`](KvSource::single): the one segment covering `j0 .. j1`, where there is one
//!   (else `None`: [`contiguous`](KvSource::contiguous) then gathers).
//!
//! [`KvSource::Paged`] is one sequence of a **paged cache**: the pages
//! `[num_blocks, block_size, Hkv, D]` as one [`AnyRef`], the sequence's row of the block
//! table and its key count (the variable-length call checks, before any work, that every
//! entry the keys use is a page). `for_each_segment` walks the table and yields one
//! segment per page (row stride = the `block_size` dimension's stride), clipped to
//! `j0 .. j1`; `single` is `Some` when `j0 .. j1` lies inside one page. The decode kernels
//! read the pages in place, one call per page; packing goes through `contiguous`, which
//! stages one key block (at most [`crate::flash::KEY_BLOCK`] rows) where it spans pages.
//! Packed variable-length K/V (`[Tk, Hkv, D]` with `cu_seqlens_k`) is a dense source per
//! sequence over the rows from `cu_seqlens_k[s]` on.
//!
//! # 8-bit sources
//! A source's memory is a [`KvMem`]: a float view, or 8-bit codes with their scales
//! ([`QRef`]). Its segments are [`Seg`]s, float ([`RowSeg`]) or 8-bit ([`QuantSeg`], with
//! the walk of the rows' scales). The consumers dequantise where they widen: packing goes
//! through [`contiguous`](KvSource::contiguous), which dequantises into its scratch (the
//! packing then sees f32 rows); the decode kernels read the codes in place with the rows'
//! scales ([`Seg`] and [`indexed_scales`](KvSource::indexed_scales)); gathers dequantise.

use crate::error::Result;
use crate::quant::{QRef, QuantSeg};
use crate::tensor::{AnyRef, TensorRef};
use kernels::Isa;

/// Where a source's rows live: a float view, or 8-bit codes with their scales.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KvMem<'a> {
    /// f32, f16 or bf16.
    Float(AnyRef<'a>),
    /// int8 or fp8 codes with scales.
    Quant(QRef<'a>),
}

impl<'a> KvMem<'a> {
    pub(crate) fn strides(&self) -> [usize; 4] {
        match self {
            KvMem::Float(t) => t.strides(),
            KvMem::Quant(q) => q.strides(),
        }
    }
    /// Element index of `(b, h, l, d)`.
    pub(crate) fn offset(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        match self {
            KvMem::Float(t) => t.offset(b, h, l, d),
            KvMem::Quant(q) => q.offset(b, h, l, d),
        }
    }
}

impl<'a> KvMem<'a> {
    /// The memory behind a public K/V argument.
    pub(crate) fn of(k: crate::quant::KvRef<'a>) -> Self {
        use crate::quant::{KvRef, QSlice};
        match k {
            KvRef::Float(t) => KvMem::Float(AnyRef::of_dyn(t)),
            KvRef::I8(t) => KvMem::Quant(QRef::erase(&t, QSlice::I8(t.codes().data()))),
            KvRef::F8E4M3(t) => KvMem::Quant(QRef::erase(&t, QSlice::F8E4M3(t.codes().data()))),
            KvRef::F8E5M2(t) => KvMem::Quant(QRef::erase(&t, QSlice::F8E5M2(t.codes().data()))),
        }
    }

    /// The same view from row `l0` of its third dimension on (a sequence's rows of packed
    /// variable-length K/V).
    pub(crate) fn skip_rows(&self, l0: usize) -> Self {
        match self {
            KvMem::Float(t) => KvMem::Float(t.tail(l0 * t.strides()[2])),
            KvMem::Quant(q) => KvMem::Quant(q.skip_rows(l0)),
        }
    }
}

impl<'a> From<AnyRef<'a>> for KvMem<'a> {
    fn from(t: AnyRef<'a>) -> Self {
        KvMem::Float(t)
    }
}

/// A run of rows of one key/value head: float or 8-bit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    Float(RowSeg<'a>),
    Quant(QuantSeg<'a>),
}

impl Seg<'_> {
    /// Rows in the run.
    pub(crate) fn rows(&self) -> usize {
        match self {
            Seg::Float(s) => s.rows,
            Seg::Quant(s) => s.rows,
        }
    }
    /// The run's rows as f32 (dequantised for 8-bit) into `dst` (`rows × cols`, dense).
    pub(crate) fn gather(&self, isa: Isa, cols: usize, dst: &mut [f32]) -> Result<()> {
        match self {
            Seg::Float(s) => s.gather(isa, cols, dst),
            Seg::Quant(s) => s.gather(isa, cols, dst),
        }
    }
}

/// A run of rows of one key/value head that lies in memory as a strided row-major matrix:
/// element `(r, c)` of the run is element `base + r·row_stride + c·col_stride` of `mem`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSeg<'a> {
    /// The memory the rows live in (element type erased; read with `with_mat!` or
    /// [`AnyRef::gather`]).
    pub(crate) mem: AnyRef<'a>,
    /// Element index of the run's first value.
    pub(crate) base: usize,
    /// Rows in the run.
    pub(crate) rows: usize,
    /// Elements between consecutive rows.
    pub(crate) row_stride: usize,
    /// Elements between consecutive values of a row.
    pub(crate) col_stride: usize,
}

impl RowSeg<'_> {
    /// Gathers the run's rows as f32 into `dst` (`rows × cols`, dense).
    pub(crate) fn gather(&self, isa: Isa, cols: usize, dst: &mut [f32]) -> Result<()> {
        if cols == 0 {
            return Ok(());
        }
        for (r, row) in dst.chunks_exact_mut(cols).take(self.rows).enumerate() {
            self.mem
                .gather(isa, self.base + r * self.row_stride, self.col_stride, row)?;
        }
        Ok(())
    }
}

/// Where an attention path reads keys (or values): see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KvSource<'a> {
    /// A strided `[B, H, L, D]` view: one segment per request.
    Dense {
        /// The view.
        t: KvMem<'a>,
        /// `L`, the keys of every head.
        len: usize,
    },
    /// A paged cache: the pages `[num_blocks, block_size, Hkv, D]` of one view, and one
    /// sequence's row of the block table (validated: its first `len.div_ceil(block_size)`
    /// entries are pages of the view). Key `j` of head `h` is row `j % block_size` of page
    /// `table[j / block_size]`; one segment per page.
    Paged {
        /// The pages.
        t: KvMem<'a>,
        /// Rows per page.
        block_size: usize,
        /// The sequence's pages, in key order.
        table: &'a [i32],
        /// The sequence's keys.
        len: usize,
    },
    /// Tests only: a dense view handed out in runs of at most `seg` rows, cut at multiples
    /// of `seg` (as a paged cache's pages), to exercise the consumers' multi-segment paths.
    #[cfg(test)]
    Split {
        /// The view.
        t: KvMem<'a>,
        /// `L`.
        len: usize,
        /// Rows per run.
        seg: usize,
    },
}

/// The run of `rows` rows from row `(i0, i1, i2)` of `t`, consecutive rows one step apart
/// along dimension `row_dim` (2: a dense view's L; 1: a page's slots).
fn seg_at<'a>(t: &KvMem<'a>, [i0, i1, i2]: [usize; 3], rows: usize, row_dim: usize) -> Seg<'a> {
    let s = t.strides();
    match t {
        KvMem::Float(t) => Seg::Float(RowSeg {
            mem: *t,
            base: t.offset(i0, i1, i2, 0),
            rows,
            row_stride: s[row_dim],
            col_stride: s[3],
        }),
        KvMem::Quant(q) => Seg::Quant(QuantSeg {
            mem: *q,
            base: q.offset(i0, i1, i2, 0),
            rows,
            row_stride: s[row_dim],
            col_stride: s[3],
            sbase: q.scales.index(i0, i1, i2),
            srow_stride: q.scales.strides()[row_dim],
        }),
    }
}

/// Rows `j0 .. j1` of `(b, h)` of the view `t` as one segment.
fn dense_seg<'a>(t: &KvMem<'a>, b: usize, h: usize, j0: usize, j1: usize) -> Seg<'a> {
    seg_at(t, [b, h, j0], j1 - j0, 2)
}

/// Rows `j0 .. j1` (inside one page) of head `h` of a paged source.
fn page_seg<'a>(
    t: &KvMem<'a>,
    bs: usize,
    table: &[i32],
    h: usize,
    j0: usize,
    j1: usize,
) -> Seg<'a> {
    // The table entries a sequence's keys use were checked to be pages of the view; an
    // empty range (possibly past the last page) reads nothing and starts at element 0.
    let at = if j0 < j1 {
        [table[j0 / bs] as usize, j0 % bs, h]
    } else {
        [0, 0, 0]
    };
    seg_at(t, at, j1 - j0, 1)
}

impl<'a> KvSource<'a> {
    /// The dense source over the view `t` of `len` keys per head.
    pub(crate) fn dense(t: impl Into<KvMem<'a>>, len: usize) -> Self {
        KvSource::Dense { t: t.into(), len }
    }

    /// The keys (rows) of key/value head `(b, h)`.
    pub(crate) fn len(&self, b: usize, h: usize) -> usize {
        match self {
            KvSource::Dense { len, .. } | KvSource::Paged { len, .. } => {
                let _ = (b, h);
                *len
            }
            #[cfg(test)]
            KvSource::Split { len, .. } => *len,
        }
    }

    /// Whether the rows are scattered in memory (a paged cache whose sequence spans more
    /// than one page), so that the decode kernels take them through
    /// [`indexed`](Self::indexed). A sequence within one page (a dense cache handed over as
    /// one page per sequence, as `flash_attn_with_kvcache` does) is a strided matrix per
    /// head, read as a dense source's.
    pub(crate) fn is_scattered(&self) -> bool {
        match self {
            KvSource::Dense { .. } => false,
            KvSource::Paged {
                block_size, len, ..
            } => len > block_size,
            #[cfg(test)]
            KvSource::Split { .. } => false,
        }
    }

    /// Elements from a token's row of one key/value head to the next head's row of the
    /// same token.
    pub(crate) fn head_stride(&self) -> usize {
        match self {
            KvSource::Dense { t, .. } => t.strides()[1],
            KvSource::Paged { t, .. } => t.strides()[2],
            #[cfg(test)]
            KvSource::Split { t, .. } => t.strides()[1],
        }
    }

    /// Whether every row's values are contiguous (column stride 1).
    pub(crate) fn unit_cols(&self) -> bool {
        match self {
            KvSource::Dense { t, .. } | KvSource::Paged { t, .. } => t.strides()[3] == 1,
            #[cfg(test)]
            KvSource::Split { t, .. } => t.strides()[3] == 1,
        }
    }

    /// The one segment holding rows `j0 .. j1` of `(b, h)`, if the source keeps them as
    /// one strided matrix (a dense source always does, empty ranges included).
    pub(crate) fn single(&self, b: usize, h: usize, j0: usize, j1: usize) -> Option<Seg<'a>> {
        debug_assert!(j0 <= j1);
        match self {
            KvSource::Dense { t, .. } => Some(dense_seg(t, b, h, j0, j1)),
            KvSource::Paged {
                t,
                block_size: bs,
                table,
                ..
            } => (j0 == j1 || j0 / bs == (j1 - 1) / bs).then(|| page_seg(t, *bs, table, h, j0, j1)),
            #[cfg(test)]
            KvSource::Split { t, seg, .. } => {
                (j0 == j1 || j0 / seg == (j1 - 1) / seg).then(|| dense_seg(t, b, h, j0, j1))
            }
        }
    }

    /// Calls `f(first, seg)` for the segments covering rows `j0 .. j1` of `(b, h)`, in key
    /// order, where `first` is the index of the segment's first row relative to `j0`. The
    /// segments cover exactly `j0 .. j1`; none for an empty range.
    pub(crate) fn for_each_segment(
        &self,
        b: usize,
        h: usize,
        j0: usize,
        j1: usize,
        mut f: impl FnMut(usize, Seg<'a>) -> Result<()>,
    ) -> Result<()> {
        if j0 >= j1 {
            return Ok(());
        }
        match self {
            KvSource::Dense { .. } => match self.single(b, h, j0, j1) {
                Some(seg) => f(0, seg),
                None => Ok(()),
            },
            KvSource::Paged {
                t,
                block_size: bs,
                table,
                ..
            } => {
                let mut j = j0;
                while j < j1 {
                    let end = ((j / bs + 1) * bs).min(j1);
                    f(j - j0, page_seg(t, *bs, table, h, j, end))?;
                    j = end;
                }
                Ok(())
            }
            #[cfg(test)]
            KvSource::Split { t, seg, .. } => {
                let mut j = j0;
                while j < j1 {
                    let end = ((j / seg + 1) * seg).min(j1);
                    f(j - j0, dense_seg(t, b, h, j, end))?;
                    j = end;
                }
                Ok(())
            }
        }
    }

    /// For a source whose rows are scattered (a paged cache): the memory of rows `j0 .. j1`
    /// of `(b, h)`, with each row's element offset written to `rows` (one entry per row),
    /// so the decode kernels take the whole run in one call whatever the page size. `None`
    /// for a source that hands out strided segments instead (a dense view).
    pub(crate) fn indexed(
        &self,
        b: usize,
        h: usize,
        j0: usize,
        j1: usize,
        rows: &mut Vec<usize>,
    ) -> Option<KvMem<'a>> {
        let _ = b;
        match self {
            KvSource::Dense { .. } => None,
            KvSource::Paged { .. } if !self.is_scattered() => None,
            KvSource::Paged {
                t,
                block_size: bs,
                table,
                ..
            } => {
                let s = t.strides();
                rows.clear();
                let mut j = j0;
                while j < j1 {
                    let end = ((j / bs + 1) * bs).min(j1);
                    let base = t.offset(table[j / bs] as usize, j % bs, h, 0);
                    rows.extend((0..end - j).map(|r| base + r * s[1]));
                    j = end;
                }
                Some(*t)
            }
            #[cfg(test)]
            KvSource::Split { .. } => None,
        }
    }

    /// For an 8-bit paged source: the scales of rows `j0 .. j1` of the `count` heads from
    /// `h0`, head-major (head `h0 + i`'s row `j` at `i·(j1 − j0) + j − j0`), into `out`
    /// (what [`kernels::gemv::dot_rows_indexed_quant_with`] takes beside
    /// [`indexed`](Self::indexed)'s offsets). Nothing for other sources.
    pub(crate) fn indexed_scales(
        &self,
        h0: usize,
        count: usize,
        j0: usize,
        j1: usize,
        out: &mut Vec<f32>,
    ) {
        out.clear();
        if let KvSource::Paged {
            t: KvMem::Quant(q),
            block_size: bs,
            table,
            ..
        } = self
        {
            for h in h0..h0 + count {
                out.extend((j0..j1).map(|j| {
                    q.scales
                        .at(q.scales.index(table[j / bs] as usize, j % bs, h))
                }));
            }
        }
    }

    /// For an 8-bit source: checks that the scale of every row of heads `0 .. heads` of
    /// batches `0 .. batch` is finite and positive (only the rows a call reads: a paged
    /// cache's unused slots may hold anything). Nothing to check for a float source.
    pub(crate) fn check_scales(&self, batch: usize, heads: usize) -> Result<()> {
        let t = match self {
            KvSource::Dense { t, .. } | KvSource::Paged { t, .. } => t,
            #[cfg(test)]
            KvSource::Split { t, .. } => t,
        };
        if matches!(t, KvMem::Float(_)) {
            return Ok(());
        }
        for b in 0..batch {
            for h in 0..heads {
                self.for_each_segment(b, h, 0, self.len(b, h), |_, seg| match seg {
                    Seg::Quant(q) => q.check_scales(),
                    Seg::Float(_) => Ok(()),
                })?;
            }
        }
        Ok(())
    }

    /// Rows `j0 .. j1` of `(b, h)` (`cols` values each) as one strided matrix: the
    /// source's own segment where it has one (no copy), else the rows gathered as dense
    /// f32 into `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn contiguous<'s>(
        &self,
        isa: Isa,
        b: usize,
        h: usize,
        j0: usize,
        j1: usize,
        cols: usize,
        scratch: &'s mut Vec<f32>,
    ) -> Result<RowSeg<'s>>
    where
        'a: 's,
    {
        if let Some(Seg::Float(seg)) = self.single(b, h, j0, j1) {
            return Ok(seg);
        }
        let n = j1 - j0;
        scratch.clear();
        scratch.resize(n * cols, 0.0);
        self.gather_rows(isa, b, h, j0, n, cols, scratch)?;
        let t = TensorRef::contiguous(&scratch[..], [1, 1, n, cols])?;
        Ok(RowSeg {
            mem: AnyRef::of(t),
            base: 0,
            rows: n,
            row_stride: cols,
            col_stride: 1,
        })
    }

    /// Gathers rows `j0 .. j0 + n` of `(b, h)` (`cols` values each) as f32 into `dst`
    /// (`n × cols`, dense).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gather_rows(
        &self,
        isa: Isa,
        b: usize,
        h: usize,
        j0: usize,
        n: usize,
        cols: usize,
        dst: &mut [f32],
    ) -> Result<()> {
        self.for_each_segment(b, h, j0, j0 + n, |first, seg| {
            seg.gather(
                isa,
                cols,
                &mut dst[first * cols..(first + seg.rows()) * cols],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorRef;
    use kernels::bf16;

    /// A float segment's rows (the tests' sources are float).
    fn float(s: Seg<'_>) -> RowSeg<'_> {
        match s {
            Seg::Float(f) => f,
            Seg::Quant(_) => panic!("a float source gave an 8-bit segment"),
        }
    }

    /// `[2, 3, 5, 4]` distinct values.
    fn data() -> Vec<f32> {
        (0..2 * 3 * 5 * 4).map(|i| i as f32).collect()
    }

    #[test]
    fn dense_gives_one_segment_covering_exactly_the_rows() {
        let x = data();
        let dims = [2, 3, 5, 4];
        let t = TensorRef::from_blhd(&x, dims).unwrap();
        let src = KvSource::dense(AnyRef::of(t), 5);
        assert_eq!(src.len(1, 2), 5);
        assert!(src.unit_cols());
        for (b, h, j0, j1) in [(0, 0, 0, 5), (1, 2, 1, 4), (1, 1, 4, 5), (0, 2, 3, 3)] {
            let mut segs = Vec::new();
            src.for_each_segment(b, h, j0, j1, |first, seg| {
                segs.push((first, float(seg)));
                Ok(())
            })
            .unwrap();
            if j0 == j1 {
                assert!(segs.is_empty());
                continue;
            }
            assert_eq!(segs.len(), 1);
            let (first, seg) = segs[0];
            assert_eq!(first, 0);
            assert_eq!(seg.rows, j1 - j0);
            assert_eq!((seg.row_stride, seg.col_stride), (t.strides()[2], 1));
            assert_eq!(seg.base, t.offset(b, h, j0, 0));
            // Every element of the segment is the view's element.
            let mut got = vec![0.0f32; (j1 - j0) * 4];
            seg.gather(Isa::Scalar, 4, &mut got).unwrap();
            for r in 0..j1 - j0 {
                for c in 0..4 {
                    assert_eq!(got[r * 4 + c], t.get(b, h, j0 + r, c));
                }
            }
            // `single` and `contiguous` hand out the same segment, without a copy.
            let one = float(src.single(b, h, j0, j1).unwrap());
            assert_eq!((one.base, one.rows), (seg.base, seg.rows));
            let mut scratch = Vec::new();
            let c = src
                .contiguous(Isa::Scalar, b, h, j0, j1, 4, &mut scratch)
                .unwrap();
            assert_eq!(
                (c.base, c.rows, c.row_stride),
                (seg.base, seg.rows, seg.row_stride)
            );
            assert!(scratch.is_empty());
        }
        // An empty range still has a (zero-row) single segment, at the range's start.
        let e = float(src.single(1, 0, 2, 2).unwrap());
        assert_eq!((e.rows, e.base), (0, t.offset(1, 0, 2, 0)));
    }

    /// Flash (packed and direct decode) and materialised attention over a source handed
    /// out in many segments equal attention over the same view as one segment.
    #[test]
    fn multi_segment_sources_give_the_same_attention() {
        use crate::options::Problem;
        use crate::tensor::{AnyOut, TensorMut};
        use crate::{AttnPath, SdpaOptions};
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        };
        for (lq, lk, causal) in [(1, 70, false), (40, 300, true), (3, 5000, false)] {
            let (b, hq, hkv, d) = (1, 2, 1, 8);
            let (qd, kd) = ([b, hq, lq, d], [b, hkv, lk, d]);
            let (qv, kv, vv) = (rnd(hq * lq * d), rnd(hkv * lk * d), rnd(hkv * lk * d));
            let q = AnyRef::of(TensorRef::contiguous(&qv, qd).unwrap());
            let kt = AnyRef::of(TensorRef::contiguous(&kv, kd).unwrap());
            let vt = AnyRef::of(TensorRef::contiguous(&vv, kd).unwrap());
            for path in [AttnPath::Flash, AttnPath::Materialized] {
                let opts = SdpaOptions::new().with_causal(causal);
                let p = Problem::new(qd, kd, kd, &opts).unwrap();
                let mut outs = Vec::new();
                for split in [None, Some(7), Some(64)] {
                    let (k, v) = match split {
                        None => (KvSource::dense(kt, lk), KvSource::dense(vt, lk)),
                        Some(seg) => (
                            KvSource::Split {
                                t: kt.into(),
                                len: lk,
                                seg,
                            },
                            KvSource::Split {
                                t: vt.into(),
                                len: lk,
                                seg,
                            },
                        ),
                    };
                    let mut o = vec![0.0f32; hq * lq * d];
                    let mut om = TensorMut::contiguous(&mut o, qd).unwrap();
                    let os = om.strides();
                    let job = crate::job::Job {
                        p: p.clone(),
                        q,
                        k,
                        v,
                        // SAFETY: one call writes the view, nothing else accesses it meanwhile.
                        out: unsafe { AnyOut::new(&mut om) },
                        out_base: 0,
                        os,
                        lse: None,
                    };
                    match path {
                        AttnPath::Materialized => crate::materialized::run(&job, None),
                        _ => crate::flash::run(std::slice::from_ref(&job)),
                    }
                    .unwrap();
                    outs.push(o);
                }
                for o in &outs[1..] {
                    for (a, e) in o.iter().zip(&outs[0]) {
                        assert!((a - e).abs() <= 1e-5, "{lq} {lk} {path:?}: {a} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn dense_gather_rows_reads_strided_columns_and_other_types() {
        let x = data();
        let dims = [2, 3, 5, 4];
        // Columns two apart: `D = 2` over the even elements of the last dimension.
        let t = TensorRef::new(&x, [2, 3, 5, 2], [60, 20, 4, 2]).unwrap();
        let src = KvSource::dense(AnyRef::of(t), 5);
        assert!(!src.unit_cols());
        let mut got = vec![0.0f32; 3 * 2];
        src.gather_rows(Isa::Scalar, 1, 2, 1, 3, 2, &mut got)
            .unwrap();
        for r in 0..3 {
            for c in 0..2 {
                assert_eq!(got[r * 2 + c], t.get(1, 2, 1 + r, c));
            }
        }
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let tb = TensorRef::contiguous(&xb, dims).unwrap();
        let srcb = KvSource::dense(AnyRef::of(tb), 5);
        let mut gotb = vec![0.0f32; 2 * 4];
        for isa in Isa::available() {
            srcb.gather_rows(isa, 0, 1, 3, 2, 4, &mut gotb).unwrap();
            for r in 0..2 {
                for c in 0..4 {
                    assert_eq!(gotb[r * 4 + c], tb.get(0, 1, 3 + r, c).to_f32());
                }
            }
        }
        // Zero rows or zero columns: nothing read, nothing written.
        src.gather_rows(Isa::Scalar, 0, 0, 5, 0, 2, &mut [])
            .unwrap();
        src.gather_rows(Isa::Scalar, 0, 0, 0, 5, 0, &mut [])
            .unwrap();
    }
}
