//! Packing of A and B into the micro-panel layout the microkernels read.
//!
//! * A block (`mc × kc`) → `ceil(mc / MR)` panels; panel `q` holds rows `q·MR .. q·MR+MR`
//!   column by column: element `(i, p)` of the panel is at `p·MR + i`.
//! * B block (`kc × nc`) → `ceil(nc / NR)` panels; element `(p, j)` of panel `q` is at
//!   `p·NR + j`.
//!
//! Rows/columns past the edge of the block are filled with zeros, so the microkernel always
//! runs a full `MR × NR` tile and the extra results are simply not stored.

use crate::dispatch::Isa;
use crate::simd::{dispatch, IsaKernel, SimdOps};

/// Packs the `mc × kc` block of A at `a` (strides `rsa`, `csa`) into `out`.
///
/// # Safety
/// `a.offset(i·rsa + p·csa)` must be readable for every `i < mc`, `p < kc`, and `out` must
/// hold at least `ceil(mc / MR)·MR·kc` elements.
#[inline]
pub(crate) unsafe fn pack_a<const MR: usize>(
    mc: usize,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    out: &mut [f32],
) {
    let panels = mc.div_ceil(MR);
    assert!(out.len() >= panels * MR * kc);
    let mut o = out.as_mut_ptr();
    for q in 0..panels {
        let rows = (mc - q * MR).min(MR);
        // SAFETY: the caller guarantees the block is readable; the row offset stays inside it.
        let a_q = unsafe { a.offset((q * MR) as isize * rsa) };
        #[cfg(target_arch = "x86_64")]
        if rows == MR && csa == 1 && MR.is_multiple_of(4) {
            // Row-major A: 4×4 transposes (SSE, baseline on x86-64).
            // SAFETY: the MR rows of the panel are readable for `kc` columns; `o` has room
            // for the panel's MR·kc values (assert above).
            unsafe {
                pack_a_rows_sse::<MR>(kc, a_q, rsa, o);
                o = o.add(MR * kc);
            }
            continue;
        }
        if rows == MR && rsa == 1 {
            // Column-major A: each column of the panel is MR contiguous values.
            for p in 0..kc {
                // SAFETY: rows `0..MR` of column `p` are inside the block; `o` has room for
                // `MR` more values (checked by the assert above).
                unsafe {
                    std::ptr::copy_nonoverlapping(a_q.offset(p as isize * csa), o, MR);
                    o = o.add(MR);
                }
            }
        } else {
            for p in 0..kc {
                for i in 0..MR {
                    let v = if i < rows {
                        // SAFETY: `i < rows` keeps the read inside the block.
                        unsafe { *a_q.offset(i as isize * rsa + p as isize * csa) }
                    } else {
                        0.0
                    };
                    // SAFETY: `o` has room (assert above); it advances once per value.
                    unsafe {
                        *o = v;
                        o = o.add(1);
                    }
                }
            }
        }
    }
}

/// One full panel of row-major A (unit column stride): `out[p·MR + i] = a[i·rsa + p]`,
/// four rows × four columns per SSE transpose, the last `kc % 4` columns one by one. Also
/// packs a column-major B panel (`MR` = NR columns, `rsa` = the column stride).
///
/// # Safety
/// `a.offset(i·rsa + p)` readable for `i < MR`, `p < kc`; `out` writable for `MR·kc`
/// values; `MR` a multiple of 4.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn pack_a_rows_sse<const MR: usize>(kc: usize, a: *const f32, rsa: isize, out: *mut f32) {
    use std::arch::x86_64::{
        _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };
    let full = kc / 4 * 4;
    for g in (0..MR).step_by(4) {
        // SAFETY: rows g..g+4 < MR of the panel, columns p..p+4 ≤ full ≤ kc: inside the
        // caller's readable block; stores go to out[(p + c)·MR + g .. + 4] with
        // p + c < kc: inside the caller's MR·kc values. SSE is baseline on x86-64.
        unsafe {
            let r = |i: usize| a.offset((g + i) as isize * rsa);
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let mut p = 0;
            while p < full {
                let x0 = _mm_loadu_ps(r0.add(p));
                let x1 = _mm_loadu_ps(r1.add(p));
                let x2 = _mm_loadu_ps(r2.add(p));
                let x3 = _mm_loadu_ps(r3.add(p));
                // [a0 b0 a1 b1], [a2 b2 a3 b3], [c0 d0 c1 d1], [c2 d2 c3 d3]
                let t0 = _mm_unpacklo_ps(x0, x1);
                let t1 = _mm_unpackhi_ps(x0, x1);
                let t2 = _mm_unpacklo_ps(x2, x3);
                let t3 = _mm_unpackhi_ps(x2, x3);
                let o = out.add(p * MR + g);
                _mm_storeu_ps(o, _mm_movelh_ps(t0, t2));
                _mm_storeu_ps(o.add(MR), _mm_movehl_ps(t2, t0));
                _mm_storeu_ps(o.add(2 * MR), _mm_movelh_ps(t1, t3));
                _mm_storeu_ps(o.add(3 * MR), _mm_movehl_ps(t3, t1));
                p += 4;
            }
            for p in full..kc {
                for i in 0..4 {
                    *out.add(p * MR + g + i) = *a.offset((g + i) as isize * rsa + p as isize);
                }
            }
        }
    }
}

/// Packs `panels` consecutive full panels of a row-major B (unit column stride) row by
/// row: row `p` of the block is read once, contiguously, and its `NR`-wide pieces go to
/// row `p` of each panel (panel `q` at `out[q·NR·kc ..]`). Reading B down one panel at a
/// time instead walks `kc` rows at B's row stride for every panel, which the hardware
/// prefetcher follows poorly (B packing was 5.7% of a 512³ product that way).
///
/// # Safety
/// `b.offset(p·rsb + j)` readable for `p < kc`, `j < panels·NR`.
#[inline(always)]
pub(crate) unsafe fn pack_b_rows<const NR: usize>(
    kc: usize,
    panels: usize,
    b: *const f32,
    rsb: isize,
    out: &mut [f32],
) {
    assert!(out.len() >= panels * NR * kc);
    let o = out.as_mut_ptr();
    for p in 0..kc {
        // SAFETY: row `p`, columns `q·NR .. q·NR + NR` for `q < panels` are readable
        // (caller contract); the destination `q·NR·kc + p·NR .. + NR` lies inside `out`
        // (asserted above) and does not overlap B.
        unsafe {
            let src = b.offset(p as isize * rsb);
            for q in 0..panels {
                std::ptr::copy_nonoverlapping(src.add(q * NR), o.add(q * NR * kc + p * NR), NR);
            }
        }
    }
}

/// [`pack_b_rows`] as a [`dispatch`] body, with the panel width chosen at run time: run
/// under the ISA's `#[target_feature]`, its copies are as wide as the ISA's vectors.
struct PackBRows<'a> {
    nr: usize,
    kc: usize,
    panels: usize,
    b: *const f32,
    rsb: isize,
    out: &'a mut [f32],
}

impl IsaKernel for PackBRows<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let (kc, panels, b, rsb, out) = (self.kc, self.panels, self.b, self.rsb, self.out);
        // SAFETY: forwarded contract of `pack_b_rows_dyn`.
        unsafe {
            match self.nr {
                4 => pack_b_rows::<4>(kc, panels, b, rsb, out),
                16 => pack_b_rows::<16>(kc, panels, b, rsb, out),
                32 => pack_b_rows::<32>(kc, panels, b, rsb, out),
                nr => unreachable!("no microkernel has NR = {nr}"),
            }
        }
    }
}

/// [`pack_b_rows`] with the panel width chosen at run time, compiled for `isa` (so a
/// forced `FASTATTN_ISA=portable` runs no AVX copies).
///
/// # Safety
/// As [`pack_b_rows`] with `NR = nr`; the CPU has `isa`.
pub(crate) unsafe fn pack_b_rows_dyn(
    isa: Isa,
    nr: usize,
    kc: usize,
    panels: usize,
    b: *const f32,
    rsb: isize,
    out: &mut [f32],
) {
    let k = PackBRows {
        nr,
        kc,
        panels,
        b,
        rsb,
        out,
    };
    // SAFETY: forwarded contract; the CPU has `isa`.
    unsafe { dispatch(isa, k) }
}

/// Packs one `kc × cols` panel (`cols ≤ NR`) of B into `panel` (`NR·kc` values).
///
/// # Safety
/// `b.offset(p·rsb + j·csb)` readable for `p < kc`, `j < cols`.
#[inline]
pub(crate) unsafe fn pack_b_panel<const NR: usize>(
    kc: usize,
    cols: usize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    panel: &mut [f32],
) {
    assert!(cols <= NR && panel.len() >= NR * kc);
    #[cfg(target_arch = "x86_64")]
    if cols == NR && rsb == 1 && NR.is_multiple_of(4) {
        // Column-major B (attention's Kᵀ): column j is contiguous along p, so the panel is
        // the transpose of NR such columns, as a row-major A panel is of MR rows.
        // SAFETY: columns 0..NR of the panel are readable for `kc` rows (caller contract);
        // the panel holds NR·kc values (asserted above).
        unsafe { pack_a_rows_sse::<NR>(kc, b, csb, panel.as_mut_ptr()) };
        return;
    }
    if cols == NR && csb == 1 {
        for (p, dst) in panel.chunks_exact_mut(NR).take(kc).enumerate() {
            // SAFETY: row `p` of the panel holds NR contiguous readable values.
            let src = unsafe { std::slice::from_raw_parts(b.offset(p as isize * rsb), NR) };
            dst.copy_from_slice(src);
        }
    } else {
        for (p, dst) in panel.chunks_exact_mut(NR).take(kc).enumerate() {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = if j < cols {
                    // SAFETY: `p < kc`, `j < cols`: inside the block.
                    unsafe { *b.offset(p as isize * rsb + j as isize * csb) }
                } else {
                    0.0
                };
            }
        }
    }
}

/// [`pack_a`] with the panel height chosen at run time (monomorphised for the tile heights
/// the microkernels use).
///
/// # Safety
/// As [`pack_a`], with `MR = mr`.
pub(crate) unsafe fn pack_a_dyn(
    mr: usize,
    mc: usize,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            4 => pack_a::<4>(mc, kc, a, rsa, csa, out),
            6 => pack_a::<6>(mc, kc, a, rsa, csa, out),
            8 => pack_a::<8>(mc, kc, a, rsa, csa, out),
            12 => pack_a::<12>(mc, kc, a, rsa, csa, out),
            14 => pack_a::<14>(mc, kc, a, rsa, csa, out),
            _ => unreachable!("no microkernel has MR = {mr}"),
        }
    }
}

/// [`pack_b_panel`] with the panel width chosen at run time.
///
/// # Safety
/// As [`pack_b_panel`], with `NR = nr`.
pub(crate) unsafe fn pack_b_panel_dyn(
    nr: usize,
    kc: usize,
    cols: usize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    panel: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        match nr {
            4 => pack_b_panel::<4>(kc, cols, b, rsb, csb, panel),
            8 => pack_b_panel::<8>(kc, cols, b, rsb, csb, panel),
            16 => pack_b_panel::<16>(kc, cols, b, rsb, csb, panel),
            32 => pack_b_panel::<32>(kc, cols, b, rsb, csb, panel),
            _ => unreachable!("no microkernel has NR = {nr}"),
        }
    }
}

/// [`pack_b_panel_dyn`] for a B of any element type, converted to f32 as it is packed: a
/// row-major B's rows are widened straight into the panel, a column-major B's columns into
/// an L1-sized scratch that is then transposed like f32 columns; other layouts go element
/// by element.
///
/// # Safety
/// As [`pack_b_panel`], with `NR = nr`; the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_b_panel_cvt<T: crate::Element>(
    isa: crate::Isa,
    nr: usize,
    kc: usize,
    cols: usize,
    b: *const T,
    rsb: isize,
    csb: isize,
    panel: &mut [f32],
) {
    use crate::convert::convert_raw;
    if T::DTYPE == crate::DType::F32 {
        // SAFETY: T is f32; forwarded contract.
        unsafe { pack_b_panel_dyn(nr, kc, cols, b.cast(), rsb, csb, panel) };
        return;
    }
    assert!(cols <= nr && panel.len() >= nr * kc);
    if csb == 1 {
        for (p, dst) in panel.chunks_exact_mut(nr).take(kc).enumerate() {
            // SAFETY: row p holds `cols` contiguous readable values (caller contract); the
            // destination row of the panel holds nr ≥ cols values.
            unsafe { convert_raw(isa, cols, b.offset(p as isize * rsb), dst.as_mut_ptr()) };
            dst[cols..].fill(0.0);
        }
    } else if rsb == 1 {
        crate::buffer::with_scratch(cols * kc, |tmp| {
            for j in 0..cols {
                // SAFETY: column j holds `kc` contiguous readable values (caller contract);
                // the scratch holds cols·kc values.
                unsafe {
                    convert_raw(
                        isa,
                        kc,
                        b.offset(j as isize * csb),
                        tmp.as_mut_ptr().add(j * kc),
                    )
                };
            }
            // SAFETY: the scratch is a kc × cols column-major f32 block.
            unsafe { pack_b_panel_dyn(nr, kc, cols, tmp.as_ptr(), 1, kc as isize, panel) };
        });
    } else {
        for (p, dst) in panel.chunks_exact_mut(nr).take(kc).enumerate() {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = if j < cols {
                    // SAFETY: `p < kc`, `j < cols`: inside the block.
                    unsafe { (*b.offset(p as isize * rsb + j as isize * csb)).to_f32() }
                } else {
                    0.0
                };
            }
        }
    }
}

/// [`pack_a_dyn`] for an A of any element type, converted to f32 as it is packed (through
/// a row-major f32 scratch of the block's rows).
///
/// # Safety
/// As [`pack_a`], with `MR = mr`; the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_a_cvt<T: crate::Element>(
    isa: crate::Isa,
    mr: usize,
    mc: usize,
    kc: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    out: &mut [f32],
) {
    if T::DTYPE == crate::DType::F32 {
        // SAFETY: T is f32; forwarded contract.
        unsafe { pack_a_dyn(mr, mc, kc, a.cast(), rsa, csa, out) };
        return;
    }
    crate::buffer::with_scratch(mc * kc, |tmp| {
        for i in 0..mc {
            let row = &mut tmp[i * kc..(i + 1) * kc];
            // SAFETY: row i of the block is readable for kc columns (caller contract).
            let src = unsafe { a.offset(i as isize * rsa) };
            if csa == 1 {
                // SAFETY: the row's kc values are contiguous; `row` holds kc values.
                unsafe { crate::convert::convert_raw(isa, kc, src, row.as_mut_ptr()) };
            } else {
                for (p, d) in row.iter_mut().enumerate() {
                    // SAFETY: p < kc: inside the block.
                    *d = unsafe { (*src.offset(p as isize * csa)).to_f32() };
                }
            }
        }
        // SAFETY: the scratch is a row-major mc × kc f32 block.
        unsafe { pack_a_dyn(mr, mc, kc, tmp.as_ptr(), kc as isize, 1, out) };
    });
}
