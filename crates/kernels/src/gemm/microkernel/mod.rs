//! Register-blocked `MR × NR` microkernels, one per ISA, all from one generic body over
//! [`SimdOps`](crate::simd::SimdOps).
//!
//! A microkernel computes `C ← alpha·A·B + beta·C` for one full `MR × NR` tile from a packed
//! A micro-panel (`k × MR`, see [`super::pack`]) and a packed B micro-panel (`k × NR`). The
//! accumulators stay in registers for the whole `k` loop; each step is one load of the B row
//! (`NR / LANES` vectors), `MR` broadcasts of A and `MR·NR / LANES` FMAs. `beta == 0`
//! overwrites C without reading it. Edge tiles are the driver's job: it runs the kernel on a
//! scratch tile and copies the valid part.
//!
//! | ISA | kernel | accumulators |
//! |-----|--------|--------------|
//! | Scalar | 4 × 4 | 16 f32 |
//! | Portable (`wide::f32x8`) | 6 × 16 | 12 vectors |
//! | Avx2Fma | 6 × 16 | 12 ymm of 16 |
//! | Avx512 | 12 × 32 | 24 zmm of 32 |

mod table;

use crate::simd::SimdOps;
pub(crate) use table::ukr_for;

/// Signature shared by every microkernel: `(k, alpha, a, lda, b, beta, c, rsc, csc)`.
///
/// `lda == 0` means A is a packed micro-panel; otherwise A is row-major with row stride
/// `lda` (`a.offset(i·lda + p)` for `i < MR`, `p < k`).
///
/// # Safety (of every function of this type)
/// A readable as described, `b` for `k·NR` values; `c.offset(i·rsc + j·csc)` readable
/// (unless `beta == 0`) and writable for `i < MR`, `j < NR`; the CPU has the kernel's ISA.
pub(crate) type UkrFn =
    unsafe fn(usize, f32, *const f32, isize, *const f32, f32, *mut f32, isize, isize);

/// Signature of the fused microkernels, `(k, alpha, a, lda, a_out, b, beta, c, rsc, csc)`,
/// which compute a full tile like [`UkrFn`] from A rows read in place (row stride
/// `lda != 0`, unit column stride) while writing them to `a_out` as a packed `k × MR`
/// micro-panel for the calls that follow: the driver then needs no separate packing pass
/// over A.
///
/// # Safety (of every function of this type)
/// As [`UkrFn`] with A in place, plus: `a_out` writable for `k·MR` values, overlapping
/// neither A, B nor C.
pub(crate) type UkrFusedFn =
    unsafe fn(usize, f32, *const f32, isize, *mut f32, *const f32, f32, *mut f32, isize, isize);

/// A microkernel and its tile.
#[derive(Clone, Copy)]
pub(crate) struct Ukr {
    /// Rows of the tile.
    pub mr: usize,
    /// Columns of the tile.
    pub nr: usize,
    /// The kernel.
    pub run: UkrFn,
    /// XNNPACK-style name (`ukr_6x16_avx2`).
    pub name: &'static str,
    /// Kernels for a last row group shorter than `mr`, by ascending height: each computes
    /// `rows × NR` from the same `mr`-high packed A panels (or in-place rows), so an edge
    /// group of, say, 4 rows costs a 4-row kernel instead of a full tile on scratch.
    pub edges: &'static [(usize, UkrFn)],
    /// The fused variant of `run` (see [`UkrFusedFn`]), where the ISA has one.
    pub fused: Option<UkrFusedFn>,
}

impl Ukr {
    /// The smallest edge kernel that covers `rows < mr` rows, and its height.
    pub fn edge_for(&self, rows: usize) -> Option<(usize, UkrFn)> {
        self.edges.iter().copied().find(|&(h, _)| h >= rows)
    }

    /// Whether an edge kernel is exactly `rows` high (4 or 8 rows of AVX-512, 2 or 4 of
    /// AVX2): it reads no row past the group's, so it can take A rows in place.
    pub fn exact_edge(&self, rows: usize) -> bool {
        self.edge_for(rows).is_some_and(|(h, _)| h == rows)
    }
}

/// The `k` loop: `ab += A·B` over one micro-panel pair. With `PACKED` A is a packed
/// micro-panel (element `(i, p)` at `p·MR + i`), otherwise a row-major block with row stride
/// `lda` (element `(i, p)` at `i·lda + p`), which lets attention feed its probability tile
/// to the kernel without packing it.
///
/// # Safety
/// As [`UkrFn`]; the ISA of `S` is present.
#[inline(always)]
unsafe fn k_loop<
    S: SimdOps,
    const MR: usize,
    const NV: usize,
    const PANEL: usize,
    const PACKED: bool,
    const PF: bool,
>(
    k: usize,
    a: *const f32,
    lda: isize,
    b: *const f32,
    ab: &mut [[S::V; NV]; MR],
) {
    let nr = NV * S::LANES;
    let (mut a, mut b) = (a, b);
    let a_step = if PACKED { PANEL } else { 1 };
    let pf = S::PREFETCH_B_STEPS;
    // Unrolled by 4: fewer loop-control uops between the FMAs.
    for _ in 0..k / S::UNROLL {
        for u in 0..S::UNROLL {
            if PF && pf > 0 {
                // One prefetch per cache line of the B row `pf` steps ahead (past the
                // panel's end it touches the next panel or nothing: prefetches never fault).
                for line in (0..nr).step_by(16) {
                    // SAFETY: the ISA is present; the address is only a hint.
                    unsafe { S::prefetch(b.wrapping_add((u + pf) * nr + line)) };
                }
            }
            // SAFETY: steps p..p+4 of the panels exist (k / 4 full groups).
            unsafe {
                step::<S, MR, NV, PACKED, false>(
                    a.add(u * a_step),
                    lda,
                    std::ptr::null_mut(),
                    b.add(u * nr),
                    ab,
                )
            };
        }
        // SAFETY: advancing by 4 steps within (or one past) the panels.
        unsafe {
            a = a.add(S::UNROLL * a_step);
            b = b.add(S::UNROLL * nr);
        }
    }
    for _ in 0..k % S::UNROLL {
        // SAFETY: advancing within (or one past) the panels; step p < k exists.
        unsafe {
            step::<S, MR, NV, PACKED, false>(a, lda, std::ptr::null_mut(), b, ab);
            a = a.add(a_step);
            b = b.add(nr);
        }
    }
}

/// One step of the `k` loop: `ab += A[:, p]·B[p, :]`. With `AOUT` the step's `MR` values
/// of A are also written to `a_out[0..MR]` (the fused kernels pack A as they read it).
///
/// # Safety
/// `a` (layout as in [`k_loop`]) and `b` point at an existing step; with `AOUT`, `a_out`
/// is writable for `MR` values; the ISA is present.
#[inline(always)]
unsafe fn step<
    S: SimdOps,
    const MR: usize,
    const NV: usize,
    const PACKED: bool,
    const AOUT: bool,
>(
    a: *const f32,
    lda: isize,
    a_out: *mut f32,
    b: *const f32,
    ab: &mut [[S::V; NV]; MR],
) {
    // SAFETY: forwarded contract.
    unsafe {
        let mut bv = [S::zero(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = S::load(b.add(v * S::LANES));
        }
        for (i, row) in ab.iter_mut().enumerate() {
            let x = if PACKED {
                *a.add(i)
            } else {
                *a.offset(i as isize * lda)
            };
            if AOUT {
                *a_out.add(i) = x;
            }
            let ai = S::splat(x);
            for (acc, &bv) in row.iter_mut().zip(bv.iter()) {
                *acc = S::fma(ai, bv, *acc);
            }
        }
    }
}

/// The microkernel body, generic over the vector ops, tile height `MR` and `NV` vectors
/// per tile row (`NR = NV·LANES`). Inlined into each ISA's `#[target_feature]` wrapper.
///
/// `PANEL ≥ MR` is the height of the packed A micro-panel it reads (element `(i, p)` at
/// `p·PANEL + i`): the main kernels have `PANEL = MR`; the edge kernels compute only the
/// first `MR` rows of a full-height panel (see [`Ukr::edges`]).
///
/// # Safety
/// As [`UkrFn`], with `NR = NV·S::LANES`; `MR·NR ≤ 512`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_body<S: SimdOps, const MR: usize, const NV: usize, const PANEL: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: isize,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let nr = NV * S::LANES;
    // SAFETY: the caller runs this only where the ISA of `S` is present.
    let zero = unsafe { S::zero() };
    let mut ab = [[zero; NV]; MR];
    // alpha and beta are parked in memory across the k loop: kept in registers they would
    // push an accumulator out of the 16 ymm registers of the AVX2 kernel (a spill per step).
    let scalars = [alpha, beta];
    // Prefetching pays only in deep k loops: in short ones (attention's S = Q·Kᵀ at
    // D = 64, small products) C and B are in L1 or L2 and the hints cost 2–3%.
    let deep = k >= 128;
    // SAFETY: forwarded contract; `k_run` steps from the start of the panels.
    let run = |k_run: usize, a: *const f32, b: *const f32, ab: &mut [[S::V; NV]; MR]| unsafe {
        run_k::<S, MR, NV, PANEL>(k_run, a, lda, b, deep, ab)
    };
    let tail = if deep && csc == 1 {
        C_PREFETCH_STEPS.min(k)
    } else {
        0
    };
    run(k - tail, a, b, &mut ab);
    if tail > 0 {
        for i in 0..MR {
            // SAFETY: the ISA is present; prefetches never fault.
            unsafe {
                let p = c.wrapping_offset(i as isize * rsc);
                S::prefetch(p);
                if nr > 16 {
                    S::prefetch(p.wrapping_add(nr / 2));
                }
                S::prefetch(p.wrapping_add(nr - 1));
            }
        }
        let a_off = if lda == 0 {
            (k - tail) * PANEL
        } else {
            k - tail
        };
        run(
            tail,
            a.wrapping_add(a_off),
            b.wrapping_add((k - tail) * nr),
            &mut ab,
        );
    }
    // SAFETY: forwarded contract (the C tile).
    unsafe { write_tile::<S, MR, NV>(&ab, &scalars, c, rsc, csc) }
}

/// The end of every kernel: `C ← alpha·ab + beta·C` for the `MR × NR` tile (`beta == 0`
/// does not read C); `scalars` is `[alpha, beta]`, read from memory only now.
///
/// # Safety
/// The tile of C as in [`UkrFn`]; the ISA of `S` is present.
#[inline(always)]
unsafe fn write_tile<S: SimdOps, const MR: usize, const NV: usize>(
    ab: &[[S::V; NV]; MR],
    scalars: &[f32; 2],
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let nr = NV * S::LANES;
    // SAFETY: reading two initialised locals; the ISA is present.
    let (alpha, beta) = unsafe {
        (
            std::ptr::read_volatile(&scalars[0]),
            std::ptr::read_volatile(&scalars[1]),
        )
    };
    // SAFETY: the ISA is present.
    let (alpha_v, beta_v) = unsafe { (S::splat(alpha), S::splat(beta)) };
    if csc == 1 {
        for (i, row) in ab.iter().enumerate() {
            for (v, &acc) in row.iter().enumerate() {
                // SAFETY: element (i, v·LANES ..) of the tile, writable (and readable when
                // beta != 0) by the caller's contract; columns are contiguous since csc == 1.
                unsafe {
                    let p = c.offset(i as isize * rsc + (v * S::LANES) as isize);
                    let mut r = S::mul(alpha_v, acc);
                    if beta != 0.0 {
                        r = S::fma(beta_v, S::load(p), r);
                    }
                    S::store(p, r);
                }
            }
        }
    } else {
        let mut tmp = [0.0f32; 512];
        for (i, row) in ab.iter().enumerate() {
            for (v, &acc) in row.iter().enumerate() {
                // SAFETY: `i·nr + v·LANES + LANES ≤ MR·NR ≤ 512`; the ISA is present.
                unsafe {
                    S::store(
                        tmp.as_mut_ptr().add(i * nr + v * S::LANES),
                        S::mul(alpha_v, acc),
                    )
                };
            }
        }
        // SAFETY: forwarded tile contract.
        unsafe { store_tile(MR, nr, &tmp, nr, beta, c, rsc, csc) };
    }
}

/// Steps before the end of a deep `k` loop at which the kernel prefetches its C tile.
const C_PREFETCH_STEPS: usize = 48;

/// The `k` loop for `k` steps, choosing the packed / in-place and prefetching variants.
///
/// # Safety
/// As [`UkrFn`] for `k` steps from `a` and `b`; the ISA of `S` is present.
#[inline(always)]
unsafe fn run_k<S: SimdOps, const MR: usize, const NV: usize, const PANEL: usize>(
    k: usize,
    a: *const f32,
    lda: isize,
    b: *const f32,
    deep: bool,
    ab: &mut [[S::V; NV]; MR],
) {
    // `lda == 0` means a packed A micro-panel, otherwise row-major A with row stride `lda`.
    let (packed, pf) = (lda == 0, deep && S::PREFETCH_B_STEPS > 0);
    if packed && pf {
        // SAFETY: forwarded contract (packed A).
        unsafe { k_loop::<S, MR, NV, PANEL, true, true>(k, a, 0, b, ab) }
    } else if packed {
        // SAFETY: forwarded contract (packed A).
        unsafe { k_loop::<S, MR, NV, PANEL, true, false>(k, a, 0, b, ab) }
    } else if pf {
        // SAFETY: forwarded contract (row-major A with row stride `lda`).
        unsafe { k_loop::<S, MR, NV, PANEL, false, true>(k, a, lda, b, ab) }
    } else {
        // SAFETY: forwarded contract (row-major A with row stride `lda`).
        unsafe { k_loop::<S, MR, NV, PANEL, false, false>(k, a, lda, b, ab) }
    }
}

/// `C[i, j] ← tile[i·ld + j] + beta·C[i, j]` for `i < rows`, `j < cols`; `beta == 0` does
/// not read C.
///
/// # Safety
/// `c.offset(i·rsc + j·csc)` readable/writable for `i < rows`, `j < cols`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn store_tile(
    rows: usize,
    cols: usize,
    tile: &[f32],
    ld: usize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: (i, j) inside the tile by the caller's contract.
            unsafe {
                let p = c.offset(i as isize * rsc + j as isize * csc);
                let t = tile[i * ld + j];
                *p = if beta == 0.0 { t } else { beta * *p + t };
            }
        }
    }
}

/// The body of the fused kernels ([`UkrFusedFn`]): a full `MR × NR` tile from A rows in
/// place, packing them as it reads them, and a packed B micro-panel.
///
/// # Safety
/// As [`UkrFusedFn`], with `NR = NV·S::LANES`; the ISA of `S` is present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_fused_body<S: SimdOps, const MR: usize, const NV: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: isize,
    a_out: *mut f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let nr = NV * S::LANES;
    // SAFETY: the ISA of `S` is present.
    let zero = unsafe { S::zero() };
    let mut ab = [[zero; NV]; MR];
    let scalars = [alpha, beta];
    // One cache line of an A row holds 16 steps: ask for each row's line this many steps
    // ahead once per line (rows far apart are not all followed by the hardware prefetcher).
    const A_AHEAD: usize = 64;
    for p in 0..k {
        if p % 16 == 0 {
            for i in 0..MR {
                let ahead = a.wrapping_offset(i as isize * lda + (p + A_AHEAD) as isize);
                // SAFETY: the ISA is present; the address is only a hint (never faults).
                unsafe { S::prefetch(ahead) };
            }
        }
        // SAFETY: step p < k of A (in place), `a_out` and B exists (caller contract).
        unsafe {
            step::<S, MR, NV, false, true>(a.add(p), lda, a_out.add(p * MR), b.add(p * nr), &mut ab)
        };
    }
    // SAFETY: forwarded contract (the C tile).
    unsafe { write_tile::<S, MR, NV>(&ab, &scalars, c, rsc, csc) }
}
