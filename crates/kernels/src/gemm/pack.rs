//! Packing of A and B into the micro-panel layout the microkernels read.
//!
//! * A block (`mc × kc`) → `ceil(mc / MR)` panels; panel `q` holds rows `q·MR .. q·MR+MR`
//!   column by column: element `(i, p)` of the panel is at `p·MR + i`.
//! * B block (`kc × nc`) → `ceil(nc / NR)` panels; element `(p, j)` of panel `q` is at
//!   `p·NR + j`.
//!
//! Rows/columns past the edge of the block are filled with zeros, so the microkernel always
//! runs a full `MR × NR` tile and the extra results are simply not stored.

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
    debug_assert!(cols <= NR && panel.len() >= NR * kc);
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
