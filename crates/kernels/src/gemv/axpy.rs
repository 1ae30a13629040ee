//! `O[r, :] += Σ_j P[r, j]·scale_j·V[j, :]`: the P·V half of the decode kernels, in blocks
//! of value rows with the output slices in registers and the next block's lines prefetched
//! a share per column slice and key.

use super::rows::{Heads, Rows, Shift};
use super::{head_scales, scale_at};
use crate::dtype::RowElem;
use crate::simd::{load_row_raw, IsaKernel, SimdOps};

/// Value rows per block of [`axpy_rows_body`]: a block of V (64 rows of up to 128 f32, 32
/// KiB) stays in L1 while each slice of its columns is accumulated in registers.
const AXPY_BLOCK: usize = 64;

/// What [`axpy_block`] prefetches for key `j`: the bytes `lo .. hi` (64 apart) of the
/// `rows` rows (stride `ld` elements) that start at value row `j + dist`, for the keys with
/// `j & mask == phase`; `rows == 0` for none. The requests are spread evenly over the
/// block's column slices and keys ([`AxpyPf::slice`]), not issued in bursts.
#[derive(Clone, Copy)]
struct AxpyPf {
    rows: usize,
    ld: usize,
    dist: usize,
    lo: usize,
    hi: usize,
    mask: usize,
    phase: usize,
}

impl AxpyPf {
    const NONE: AxpyPf = AxpyPf {
        rows: 0,
        ld: 0,
        dist: 0,
        lo: 0,
        hi: 0,
        mask: 0,
        phase: 0,
    };

    /// This prefetch for slice `c` of `nsl`, columns `x0 .. x1`, of rows of `dv` values of
    /// `E`. When the slices outnumber the rows' 64-byte lines by a power of two `k`, slice
    /// `c` asks for line `c / k` of every `k`-th key's row; else each slice asks for the
    /// lines that start in its own columns, for every key.
    fn slice<E>(self, c: usize, nsl: usize, (x0, x1): (usize, usize), dv: usize) -> AxpyPf {
        let sz = std::mem::size_of::<E>();
        let lines = (dv * sz).div_ceil(64);
        let k = nsl / lines.max(1);
        if k >= 1 && k * lines == nsl && k.is_power_of_two() {
            let lo = c / k * 64;
            AxpyPf {
                lo,
                hi: lo + 1,
                mask: k - 1,
                phase: c % k,
                ..self
            }
        } else {
            AxpyPf {
                lo: (x0 * sz).div_ceil(64) * 64,
                hi: x1 * sz,
                mask: 0,
                phase: 0,
                ..self
            }
        }
    }

    /// Prefetches this slice's lines for key `j`, whose rows ahead start at `row`.
    ///
    /// # Safety
    /// The ISA of `S` is present (`row` need not be valid: prefetches never fault).
    #[inline(always)]
    unsafe fn issue<S: SimdOps, E>(self, j: usize, row: *const E) {
        if j & self.mask != self.phase {
            return;
        }
        for r in 0..self.rows {
            let base = row.wrapping_add(r * self.ld).cast::<u8>();
            let mut o = self.lo;
            while o < self.hi {
                // SAFETY: prefetching never faults; the ISA is present.
                unsafe { S::prefetch(base.wrapping_add(o).cast()) };
                o += 64;
            }
        }
    }
}

/// `O[r, x0 .. x0 + NV·LANES] += Σ_j P[r, j]·V[j, x0 ..]` for `R` rows and the value rows
/// `j0 .. j1`, with the `R × NV` output vectors held in registers across the block. The
/// weights come from `w` (key-major: `w[(j − j0)·R + r]` is `P[r, j]·scale[j]`), each
/// broadcast straight from memory. Zero weights of P are skipped (`SKIP`); each element is
/// still accumulated key by key, in order, with one FMA per key, exactly as one row at a
/// time would. With `PF`, each key also issues `pf`'s prefetches ([`AxpyPf::issue`]).
///
/// # Safety
/// As [`axpy_rows_body`], for rows `0..R`, value rows `j0..j1` and columns
/// `x0 .. x0 + NV·LANES ≤ dv`; `w` readable for `(j1 − j0)·R` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_block<
    S: SimdOps,
    E: RowElem,
    V: Rows<Elem = E>,
    const R: usize,
    const NV: usize,
    const SKIP: bool,
    const PF: bool,
>(
    j0: usize,
    j1: usize,
    x0: usize,
    pf: AxpyPf,
    w: *const f32,
    p: *const f32,
    ldp: usize,
    v: V,
    o: *mut f32,
    ldo: usize,
) {
    // SAFETY: every access is inside the rows and columns named above (caller contract).
    unsafe {
        let mut acc = [[S::zero(); NV]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            for (c, x) in a.iter_mut().enumerate() {
                *x = S::load(o.add(r * ldo + x0 + c * S::LANES));
            }
        }
        for j in j0..j1 {
            if PF {
                pf.issue::<S, E>(j, v.ahead(j + pf.dist));
            }
            let vj = v.row(j).add(x0);
            let mut vv = [S::zero(); NV];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = load_row_raw::<S, E>(vj.add(c * S::LANES));
            }
            let wj = w.add((j - j0) * R);
            for (r, a) in acc.iter_mut().enumerate() {
                if SKIP && *p.add(r * ldp + j) == 0.0 {
                    continue;
                }
                let ps = S::splat(*wj.add(r));
                for (x, &vx) in a.iter_mut().zip(&vv) {
                    *x = S::fma(ps, vx, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, &x) in a.iter().enumerate() {
                S::store(o.add(r * ldo + x0 + c * S::LANES), x);
            }
        }
    }
}

/// [`axpy_block`] with zero weights skipped (`zeros`) or not, prefetching (`pf.rows > 0`)
/// or not.
///
/// # Safety
/// As [`axpy_block`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_block_any<
    S: SimdOps,
    E: RowElem,
    V: Rows<Elem = E>,
    const R: usize,
    const NV: usize,
>(
    zeros: bool,
    j0: usize,
    j1: usize,
    x0: usize,
    pf: AxpyPf,
    w: *const f32,
    p: *const f32,
    ldp: usize,
    v: V,
    o: *mut f32,
    ldo: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match (zeros, pf.rows > 0) {
            (true, true) => {
                axpy_block::<S, E, V, R, NV, true, true>(j0, j1, x0, pf, w, p, ldp, v, o, ldo)
            }
            (true, false) => {
                axpy_block::<S, E, V, R, NV, true, false>(j0, j1, x0, pf, w, p, ldp, v, o, ldo)
            }
            (false, true) => {
                axpy_block::<S, E, V, R, NV, false, true>(j0, j1, x0, pf, w, p, ldp, v, o, ldo)
            }
            (false, false) => {
                axpy_block::<S, E, V, R, NV, false, false>(j0, j1, x0, pf, w, p, ldp, v, o, ldo)
            }
        }
    }
}

/// [`axpy_block`] for `R` rows over every column slice of the block: two vectors at a
/// time, then one, then the scalar tail. The block's weights `P[r, j]·scale[j]` are
/// gathered key-major first (the same products the FMAs used before, so the same bits).
/// With `prefetch.rows > 0`, every slice prefetches its lines of the rows
/// `prefetch.dist` keys ahead (the last vector slice also the tail's).
///
/// # Safety
/// As [`axpy_block`], for all `dv` columns; `j1 − j0 ≤ AXPY_BLOCK`, `R ≤ 4`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_block_rows<S: SimdOps, E: RowElem, V: Rows<Elem = E>, const R: usize>(
    j0: usize,
    j1: usize,
    dv: usize,
    prefetch: AxpyPf,
    p: *const f32,
    ldp: usize,
    sc: *const f32,
    v: V,
    o: *mut f32,
    ldo: usize,
) {
    let (two, one) = (2 * S::LANES, S::LANES);
    let mut wb = [0.0f32; AXPY_BLOCK * 4];
    // Zero weights (keys a row cannot see) must not touch V; blocks without any take
    // the branch-free loop (the same FMAs, so the same bits).
    let mut zeros = false;
    // SAFETY: the column slices stay below dv; forwarded contract.
    unsafe {
        for j in j0..j1 {
            let scj = scale_at::<E>(sc, j);
            for r in 0..R {
                let pr = *p.add(r * ldp + j);
                zeros |= pr == 0.0;
                wb[(j - j0) * R + r] = pr * scj;
            }
        }
        let w = wb.as_ptr();
        // Slices: two vectors at a time, then one; the last also prefetches the tail.
        let nsl = dv / two + usize::from(dv % two >= one);
        let end = |x1: usize| if x1 + one > dv { dv } else { x1 };
        let (mut x0, mut c) = (0, 0);
        while x0 + two <= dv {
            let pf = prefetch.slice::<E>(c, nsl, (x0, end(x0 + two)), dv);
            axpy_block_any::<S, E, V, R, 2>(zeros, j0, j1, x0, pf, w, p, ldp, v, o, ldo);
            (x0, c) = (x0 + two, c + 1);
        }
        if x0 + one <= dv {
            let pf = prefetch.slice::<E>(c, nsl, (x0, dv), dv);
            axpy_block_any::<S, E, V, R, 1>(zeros, j0, j1, x0, pf, w, p, ldp, v, o, ldo);
            x0 += one;
        }
        for r in 0..R {
            for x in x0..dv {
                let orow = o.add(r * ldo);
                let mut t = *orow.add(x);
                for j in j0..j1 {
                    if *p.add(r * ldp + j) != 0.0 {
                        t += wb[(j - j0) * R + r] * (*v.row(j).add(x)).raw();
                    }
                }
                *orow.add(x) = t;
            }
        }
    }
}

/// # Safety
/// P `rows × n` (stride `ldp`) and the `n` rows of `dv` values of `v` readable, O
/// `rows × dv` (stride `ldo`) readable and writable; the ISA of `S` is present.
///
/// Blocks of [`AXPY_BLOCK`] value rows; within a block, groups of up to four output rows
/// keep two vectors of each row in registers across all the block's keys, so O is loaded
/// and stored once per block instead of once per key (the per-key form was bound by its
/// stores: one 32-byte store per 8 values of V on AVX2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows_body<S: SimdOps, E: RowElem, V: Rows<Elem = E>>(
    rows: usize,
    heads: Heads,
    n: usize,
    dv: usize,
    p: *const f32,
    ldp: usize,
    sc: *const f32,
    v: V,
    o: *mut f32,
    ldo: usize,
) {
    // The first head's first row group prefetches the rows of every head `dist` rows
    // ahead: the next block for one head; with several, each row carries several heads'
    // values and fewer rows ahead are better (measured on the Xeon, 8 heads: 8 beat 64).
    let first = AxpyPf {
        rows: heads.count,
        ld: heads.stride,
        dist: (AXPY_BLOCK / heads.count).max(8),
        ..AxpyPf::NONE
    };
    for j0 in (0..n).step_by(AXPY_BLOCK) {
        let j1 = (j0 + AXPY_BLOCK).min(n);
        for h in 0..heads.count {
            let vh = Shift {
                k: v,
                off: h * heads.stride,
            };
            // SAFETY: rows j0..j1 ≤ n of V, this head's rows of P and O; forwarded contract.
            unsafe {
                let (ph, oh) = (p.add(h * rows * ldp), o.add(h * rows * ldo));
                let mut r0 = 0;
                while r0 < rows {
                    let (pr, or) = (ph.add(r0 * ldp), oh.add(r0 * ldo));
                    let pf = if r0 == 0 && h == 0 {
                        first
                    } else {
                        AxpyPf::NONE
                    };
                    let (vv, sch) = (vh, head_scales(sc, h, n));
                    match rows - r0 {
                        1 => {
                            axpy_block_rows::<S, E, _, 1>(j0, j1, dv, pf, pr, ldp, sch, vv, or, ldo)
                        }
                        2 => {
                            axpy_block_rows::<S, E, _, 2>(j0, j1, dv, pf, pr, ldp, sch, vv, or, ldo)
                        }
                        3 => {
                            axpy_block_rows::<S, E, _, 3>(j0, j1, dv, pf, pr, ldp, sch, vv, or, ldo)
                        }
                        _ => {
                            axpy_block_rows::<S, E, _, 4>(j0, j1, dv, pf, pr, ldp, sch, vv, or, ldo)
                        }
                    }
                    r0 += 4;
                }
            }
        }
    }
}

/// [`axpy_rows_body`] as a [`dispatch`](crate::simd::dispatch) body.
pub(super) struct AxpyRows<V> {
    pub(super) rows: usize,
    pub(super) heads: Heads,
    pub(super) n: usize,
    pub(super) dv: usize,
    pub(super) p: *const f32,
    pub(super) ldp: usize,
    /// Per-row scales, `heads.count × n` (head-major), or null for none.
    pub(super) sc: *const f32,
    pub(super) v: V,
    pub(super) o: *mut f32,
    pub(super) ldo: usize,
}

impl<V: Rows<Elem: RowElem>> IsaKernel for AxpyRows<V> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let a = self;
        // SAFETY: as `axpy_rows_body` (the caller's contract); the ISA of `S` is present.
        unsafe {
            axpy_rows_body::<S, V::Elem, V>(
                a.rows, a.heads, a.n, a.dv, a.p, a.ldp, a.sc, a.v, a.o, a.ldo,
            )
        }
    }
}
