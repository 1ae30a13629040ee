//! Loops 2 and 1 of the GEMM: the macro-kernel, which runs the microkernel over every
//! `MR × NR` tile of one block of C from one A block and a run of packed B panels. Edge
//! tiles go through an edge kernel of the right height, or through a scratch tile of which
//! only the valid part is stored.

use super::microkernel::{store_tile, Ukr};

/// The A block of one task: its first `full` groups of MR rows read in place (row stride
/// `lda`, unit column stride), the rest from packed micro-panels. With `fuse` the packed
/// buffer holds every group: the first `full` are read in place by the calls on the first
/// B panel, which also write them packed, and from the packed buffer afterwards.
pub(crate) struct ASource {
    pub(crate) in_place: *const f32,
    pub(crate) lda: isize,
    pub(crate) full: usize,
    /// The group after the first `full` (a short last one) is read in place as well, by
    /// an edge kernel of exactly its height.
    pub(crate) edge_in_place: bool,
    /// Packed micro-panels of `MR·kcb` values: groups `full..` (at index `g − full`), or
    /// with `fuse` all groups (at index `g`).
    pub(crate) packed: *mut f32,
    pub(crate) fuse: bool,
}

/// One block of C for [`macro_kernel`]: `mcb × ncb` elements at `c` (strides `rsc`,
/// `csc`), computed as `alpha·A·B + beta·C` over depth `kcb`.
#[derive(Clone, Copy)]
pub(crate) struct Block {
    pub(crate) mcb: usize,
    pub(crate) kcb: usize,
    pub(crate) ncb: usize,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) c: *mut f32,
    pub(crate) rsc: isize,
    pub(crate) csc: isize,
}

/// The packed B panels of one [`macro_kernel`] call: panel `q` starts at `ptr[q·stride]`;
/// the panels `panels` are visited from `first` (in `panels`) to the end and then from the
/// start, and `ready(q)` is called before panel `q` is read (a multi-threaded call packs it
/// there).
pub(crate) struct BPanels<'a> {
    pub(crate) ptr: *const f32,
    pub(crate) stride: usize,
    pub(crate) panels: std::ops::Range<usize>,
    pub(crate) first: usize,
    pub(crate) ready: &'a dyn Fn(usize),
}

/// Loops 2 and 1 over one A block and the B panels of `b` (each used to depth `kcb`).
/// With `a_src.fuse`, the calls on `b.first` pack A.
///
/// # Safety
/// `blk.c` points at element (0, 0) of the `mcb × ncb` block of C, which is writable
/// (readable if `beta != 0`); A's groups are readable to depth `kcb`, and `a_src.packed` is
/// writable for its fused groups and touched by nothing else meanwhile; each panel `q`
/// holds `nr·kcb` packed values once `ready(q)` returns; the CPU has `ukr`'s ISA.
#[inline]
pub(crate) unsafe fn macro_kernel(ukr: &Ukr, blk: &Block, a_src: &ASource, b: &BPanels<'_>) {
    let Block {
        mcb,
        kcb,
        ncb,
        alpha,
        beta,
        c,
        rsc,
        csc,
    } = *blk;
    let BPanels {
        ptr: bpack,
        stride: b_stride,
        ref panels,
        first,
        ready,
    } = *b;
    let (mr, nr) = (ukr.mr, ukr.nr);
    let mut tmp = [0.0f32; 512];
    let len = panels.len();
    for i in 0..len {
        let q = panels.start + (first - panels.start + i) % len;
        ready(q);
        let j0 = q * nr;
        let cols = nr.min(ncb - j0);
        // SAFETY: panel q of the packed B lies inside it, and is packed (`ready`).
        let bp = unsafe { bpack.add(q * b_stride) };
        for r in 0..mcb.div_ceil(mr) {
            let i0 = r * mr;
            let rows = mr.min(mcb - i0);
            // (A pointer, its row stride or 0 when packed, where a fused call packs it.)
            let (ap, lda, a_out) = if r < a_src.full {
                // SAFETY: group r of the block's rows lies inside A's view.
                let here = unsafe { a_src.in_place.offset((r * mr) as isize * a_src.lda) };
                if !a_src.fuse {
                    (here, a_src.lda, None)
                } else {
                    // SAFETY: with `fuse` the packed buffer holds every group.
                    let dst = unsafe { a_src.packed.add(r * mr * kcb) };
                    if q == first {
                        (here, a_src.lda, Some(dst))
                    } else {
                        (dst.cast_const(), 0, None)
                    }
                }
            } else if a_src.edge_in_place {
                // SAFETY: the short last group's rows lie inside A's view.
                let here = unsafe { a_src.in_place.offset((r * mr) as isize * a_src.lda) };
                (here, a_src.lda, None)
            } else {
                let g = if a_src.fuse { r } else { r - a_src.full };
                (
                    // SAFETY: packed group g lies inside the packed buffer.
                    unsafe { a_src.packed.add(g * mr * kcb).cast_const() },
                    0,
                    None,
                )
            };
            // SAFETY: (i0, j0) is inside the block.
            let cp = unsafe { c.offset(i0 as isize * rsc + j0 as isize * csc) };
            if let Some((fused, a_out)) = ukr.fused.zip(a_out) {
                // A fused call (the driver fuses only where the kernel exists, on full row
                // groups): it packs the A rows it reads in place.
                debug_assert_eq!(rows, mr);
                if cols == nr {
                    // SAFETY: a full tile inside C; A and B as described above; the packed
                    // destinations hold kcb·mr and kcb·nr values.
                    unsafe { fused(kcb, alpha, ap, lda, a_out, bp, beta, cp, rsc, csc) };
                } else {
                    // SAFETY: as above, on the mr × nr scratch tile; then only the
                    // rows × cols part that lies inside C is written.
                    unsafe {
                        fused(
                            kcb,
                            alpha,
                            ap,
                            lda,
                            a_out,
                            bp,
                            0.0,
                            tmp.as_mut_ptr(),
                            nr as isize,
                            1,
                        );
                        store_tile(rows, cols, &tmp, nr, beta, cp, rsc, csc);
                    }
                }
                continue;
            }
            if rows == mr && cols == nr {
                // SAFETY: a full tile inside C; panels hold kcb·mr and kcb·nr values.
                unsafe { (ukr.run)(kcb, alpha, ap, lda, bp, beta, cp, rsc, csc) };
            } else if let Some((h, edge)) =
                ukr.edge_for(rows).filter(|&(h, _)| lda == 0 || h == rows)
            {
                // A short last row group: a kernel of `h ≥ rows` rows on the same packed A
                // panel, whose rows past `rows` are zero padding, or of exactly `rows` rows
                // in place (rows past the group in place may lie outside A).
                if h == rows && cols == nr {
                    // SAFETY: a full `h × nr` tile inside C; the packed A panel (mr high)
                    // holds these rows to depth kcb.
                    unsafe { edge(kcb, alpha, ap, lda, bp, beta, cp, rsc, csc) };
                } else {
                    // SAFETY: the scratch tile holds h × nr ≤ 512 values, row-major; then
                    // only the rows × cols part that lies inside C is written.
                    unsafe {
                        edge(
                            kcb,
                            alpha,
                            ap,
                            lda,
                            bp,
                            0.0,
                            tmp.as_mut_ptr(),
                            nr as isize,
                            1,
                        );
                        store_tile(rows, cols, &tmp, nr, beta, cp, rsc, csc);
                    }
                }
            } else {
                // SAFETY: the scratch tile is mr × nr ≤ 512 values, row-major.
                unsafe {
                    (ukr.run)(
                        kcb,
                        alpha,
                        ap,
                        lda,
                        bp,
                        0.0,
                        tmp.as_mut_ptr(),
                        nr as isize,
                        1,
                    )
                };
                // SAFETY: only the rows × cols part that lies inside C is written.
                unsafe { store_tile(rows, cols, &tmp, nr, beta, cp, rsc, csc) };
            }
        }
    }
}
