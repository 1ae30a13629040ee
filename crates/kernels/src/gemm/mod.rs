//! Single-precision GEMM, `C ← alpha·A·B + beta·C`, Goto/BLIS style.
//!
//! # Algorithm
//! Five loops around a register-blocked microkernel (see [`params`] for what each block
//! keeps in which cache):
//!
//! ```text
//! for jc in 0..n step NC            // loop 5
//!   for pc in 0..k step KC          // loop 4: pack B[pc.., jc..] into KC×NR panels
//!     for ic in 0..m step MC        // loop 3: pack A[ic.., pc..] into MC×KC (MR-row panels)
//!       for jr in 0..NC step NR     // loop 2
//!         for ir in 0..MC step MR   // loop 1
//!           microkernel: MR×NR tile of C += A panel · B panel
//! ```
//!
//! Packing buffers are 64-byte aligned and reused from a per-thread pool (no allocation per
//! call once warm). Edge tiles run the full microkernel on zero-padded panels into a scratch
//! tile and copy the valid part, so elements of C outside the `m × n` view are never
//! touched. `beta` is applied on the first `KC` step only; `beta == 0` never reads C.
//!
//! # Parallelism
//! Only independent blocks of C are split across rayon tasks (`MC` row blocks, and groups of
//! `NR` panels when there are too few row blocks), never the `k` loop, so every element of
//! C is computed by the same sequence of operations whatever the thread count: results are
//! bit-for-bit identical at 1, 2 or 16 threads. Work goes to the rayon pool the call is made
//! in (so `RAYON_NUM_THREADS` and `ThreadPool::install` apply); problems under
//! [`PAR_MIN_FLOPS`] stay on the calling thread.
//!
//! The calling thread takes part: it and `threads − 1` jobs spawned into the pool claim
//! (row block, panel group) tasks from a shared counter, and each group of B panels is
//! packed by the first task that needs it (tasks running at the same time start at
//! different panels, so they pack different groups), with no barrier between packing and
//! compute. Measured at n = 512 on two threads against the previous design (all work
//! handed to the pool, B packed in a parallel pass before the tasks): the pass and its
//! barrier cost 50 µs of a 930 µs call, waking the sleeping caller at the end another
//! 30–60 µs; per-call medians went from 265 to 290–297 GFLOP/s.

pub(crate) mod microkernel;
pub(crate) mod pack;
pub mod packed;
pub mod params;
pub mod reference;

use crate::buffer::with_scratch;
use crate::dispatch::{current_isa, Isa};
use crate::dtype::{DType, Element};
use crate::error::{KernelError, Result};
use crate::parallel::{team, Claims, Parallelism, SyncPtr};
use microkernel::{store_tile, ukr_for, Ukr};
use params::{block_sizes_for, cache_sizes, BlockSizes};
use std::sync::OnceLock;

/// Problems with fewer floating-point operations (`2·m·n·k`) than this run on the calling
/// thread.
///
/// A split pays when the pool's workers are awake (calls back to back, as in a model's
/// forward pass) and costs a worker's wake-up (tens of microseconds on a virtual machine)
/// when they sleep. Measured on a 2-core Zen 4 VM (avx512 kernel, interleaved runs,
/// medians, GFLOP/s, two threads against one): back to back, 64×256×64 (2 Mflop) 178
/// against 109, 96³ 148 against 109, 64³ 118 against 104; with 1 ms of sleep between calls
/// the split loses at every size up to 128³ (64³: 19 against 93, 64×256×64 47 against 89,
/// 128³ 52 against 90). The bar sits at 2 Mflop, so the per-head shapes of attention
/// (64×64×256, 64×256×64) are split and the smallest ones, which gain least and lose most,
/// are not.
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// The microkernel tile `(MR, NR)` a variant uses.
///
/// ```
/// let (mr, nr) = fastattn_kernels::gemm::tile_of(fastattn_kernels::Isa::Scalar);
/// assert_eq!((mr, nr), (4, 4));
/// ```
pub fn tile_of(isa: Isa) -> (usize, usize) {
    let u = ukr_for_any(isa);
    (u.mr, u.nr)
}

/// Name of the microkernel a variant uses (`ukr_6x16_avx2`, ...).
pub fn microkernel_name(isa: Isa) -> &'static str {
    ukr_for_any(isa).name
}

fn ukr_for_any(isa: Isa) -> Ukr {
    // Tile metadata is safe to hand out even for an ISA the CPU lacks; only running the
    // kernel needs the feature.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => microkernel::x86::UKR_AVX512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => microkernel::x86::UKR_AVX2,
        Isa::Scalar => microkernel::scalar::UKR_SCALAR,
        _ => microkernel::portable::UKR_PORTABLE,
    }
}

/// Environment variable that overrides the block sizes, as `MC,KC,NC` (for tuning).
pub const BLOCKS_ENV_VAR: &str = "FASTATTN_GEMM_BLOCKS";

/// The block sizes the GEMM uses for `isa` on this machine.
pub fn block_sizes(isa: Isa) -> BlockSizes {
    static ENV: OnceLock<Option<(usize, usize, usize)>> = OnceLock::new();
    let (mr, nr) = tile_of(isa);
    let env = ENV.get_or_init(|| {
        let v = std::env::var(BLOCKS_ENV_VAR).ok()?;
        let parts: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        match parts[..] {
            [mc, kc, nc] if mc > 0 && kc > 0 && nc > 0 => Some((mc, kc, nc)),
            _ => None,
        }
    });
    match *env {
        Some((mc, kc, nc)) => BlockSizes {
            mc: mc.next_multiple_of(mr),
            kc,
            nc: nc.next_multiple_of(nr),
        },
        None => block_sizes_for(mr, nr, cache_sizes()),
    }
}

/// Drop-in for `matrixmultiply::sgemm`: `C ← alpha·A·B + beta·C` for an `m × k` A, a
/// `k × n` B and an `m × n` C given by pointers and element strides (row stride `rs*`,
/// column stride `cs*`; transposes are expressed by swapping strides; any sign allowed).
/// Uses the current variant ([`current_isa`]) and the current rayon pool.
///
/// `beta == 0` overwrites C without reading it; `m`, `n` or `k` may be 0; elements of C
/// outside the view are not touched.
///
/// # Safety
/// For every `i < m`, `j < n`, `p < k`: `a.offset(i·rsa + p·csa)` and
/// `b.offset(p·rsb + j·csb)` are readable, `c.offset(i·rsc + j·csc)` is writable (and
/// readable if `beta != 0`), C's view does not overlap itself or A and B, and no other
/// thread accesses C during the call.
///
/// # Panics
/// If `FASTATTN_ISA` names an unknown ISA or one this CPU lacks (the safe API returns
/// that as an error instead).
///
/// ```
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // 2×2 row-major
/// let mut c = [0.0f32; 4];
/// // SAFETY: all three are 2×2 row-major arrays of 4 elements.
/// unsafe { fastattn_kernels::sgemm(2, 2, 2, 1.0, a.as_ptr(), 2, 1, a.as_ptr(), 2, 1, 0.0, c.as_mut_ptr(), 2, 1) };
/// assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let isa = current_isa().unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract.
    unsafe {
        sgemm_with(
            isa,
            Parallelism::Rayon,
            m,
            k,
            n,
            alpha,
            a,
            rsa,
            csa,
            b,
            rsb,
            csb,
            beta,
            c,
            rsc,
            csc,
        )
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// [`sgemm`] with the variant and the parallelism chosen by the caller.
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_with(
    isa: Isa,
    par: Parallelism,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) -> Result<()> {
    // SAFETY: forwarded contract (f32 operands).
    unsafe {
        gemm_ptr_with(
            isa, par, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
        )
    }
}

/// [`sgemm_with`] for A and B of any element type ([`Element`]; 16-bit operands are
/// converted to f32 as they are packed).
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// # Safety
/// As [`sgemm`], with `a` and `b` pointing at `TA` and `TB` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ptr_with<TA: Element, TB: Element>(
    isa: Isa,
    par: Parallelism,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const TA,
    rsa: isize,
    csa: isize,
    b: *const TB,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) -> Result<()> {
    isa.check()?;
    // SAFETY: forwarded contract; `isa` checked above.
    unsafe {
        gemm_unchecked(
            isa,
            par,
            ARead::Auto,
            m,
            k,
            n,
            alpha,
            a,
            rsa,
            csa,
            b,
            rsb,
            csb,
            beta,
            c,
            rsc,
            csc,
        )
    };
    Ok(())
}

/// The blocked driver. `isa` must be supported.
///
/// # Safety
/// As [`sgemm`], and the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_unchecked<TA: Element, TB: Element>(
    isa: Isa,
    par: Parallelism,
    a_read: ARead,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const TA,
    rsa: isize,
    csa: isize,
    b: *const TB,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // SAFETY: C's view is writable (and readable when beta != 0).
        unsafe { scale_c(m, n, beta, c, rsc, csc) };
        return;
    }
    let ukr = ukr_for(isa);
    let (mr, nr) = (ukr.mr, ukr.nr);
    let bs = block_sizes(isa);
    let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let threads = match par {
        Parallelism::Sequential => 1,
        Parallelism::Rayon if flops < PAR_MIN_FLOPS => 1,
        Parallelism::Rayon => crate::parallel::current_threads(),
    };
    // Row blocks of equal size (a multiple of MR), so no worker gets a sliver; with several
    // threads, at least two blocks per thread where each keeps at least 4·MR rows (fewer
    // blocks are made up for by splitting the columns below).
    let min_blocks = if threads > 1 {
        (2 * threads).min(m / (4 * mr)).max(1)
    } else {
        1
    };
    // Rows are dealt out in groups of MR: block `ib` holds groups
    // `ib·groups/n_ic .. (ib+1)·groups/n_ic` (sizes differ by at most one group, none above
    // MC). With several threads the block count is a multiple of the thread count: 5 equal
    // blocks over 2 threads (n = 1024) capped the speed-up at 5/3 = 1.67×.
    let groups = m.div_ceil(mr);
    let mut n_ic = groups.div_ceil(bs.mc / mr).max(min_blocks);
    if threads > 1 {
        n_ic = n_ic.next_multiple_of(threads).min(groups);
    }
    let row0 = |ib: usize| (ib * groups / n_ic * mr).min(m);
    // SAFETY: shared across tasks only for disjoint tiles of C (each task owns a different
    // (row block, panel group) pair), and A, B are only read.
    let (a_p, b_p, c_p) = unsafe {
        (
            SyncPtr::new(a as *mut TA),
            SyncPtr::new(b as *mut TB),
            SyncPtr::new(c),
        )
    };

    // Depth blocks of equal size (at most KC, a multiple of 8 where possible): k = 512 with
    // KC = 384 would otherwise run a 128-deep block whose C traffic is paid for with only a
    // quarter of the FMAs (measured 8% slower at n = 512 than two 256-deep blocks).
    let kc = k
        .div_ceil(k.div_ceil(bs.kc).max(1))
        .next_multiple_of(8)
        .min(bs.kc);
    // How a task gets its A block (the same for every block): row-major A (unit column
    // stride) is read in place unless MR rows at its row stride crowd one L1 set
    // (`params::rows_crowd_l1`), where a fused kernel packs it on the task's first B panel
    // (see `task` below).
    // A 16-bit A is always packed (converted as it is).
    let row_major = csa == 1 && rsa != 0 && TA::DTYPE == DType::F32;
    let in_place = row_major
        && match a_read {
            ARead::Auto => !params::rows_crowd_l1(rsa.unsigned_abs(), mr, &params::cache_sizes()),
            ARead::InPlace => true,
            ARead::Packed => false,
        };
    let fuse_a = row_major && !in_place && ukr.fused.is_some();

    for jc in (0..n).step_by(bs.nc) {
        let ncb = bs.nc.min(n - jc);
        let n_panels = ncb.div_ceil(nr);
        for pc in (0..k).step_by(kc) {
            let kcb = kc.min(k - pc);
            let beta_step = if pc == 0 { beta } else { 1.0 };
            with_scratch(n_panels * nr * kcb, |bpack| {
                // SAFETY: the packed panels are shared by the tasks below: each group of
                // panels is written by the one task that claims it, and read only after
                // its claim reports it packed.
                let b_out = unsafe { SyncPtr::new(bpack.as_mut_ptr()) };
                // B[pc.., jc..] is packed in groups of panels: one group with one thread;
                // with several, small enough that each thread's first task packs different
                // groups (they start at different panels, see `first` below), so the
                // packing is shared with no barrier before the compute.
                let group = if threads > 1 {
                    n_panels.div_ceil(2 * threads)
                } else {
                    n_panels
                };
                // Packs group g (a row-major B's full panels row by row, the rest, and other
                // layouts, panel by panel).
                // SAFETY (of the calls): no other thread touches group g's panels meanwhile.
                let pack_group = |g: usize| {
                    let q0 = g * group;
                    let count = group.min(n_panels - q0);
                    // SAFETY: panels q0 .. q0 + count lie inside the buffer, and only this
                    // call touches them (see above).
                    let chunk = unsafe {
                        std::slice::from_raw_parts_mut(
                            b_out.get().add(q0 * nr * kcb),
                            count * nr * kcb,
                        )
                    };
                    // Panels q0 .. q0 + full are whole (nr columns inside the block).
                    let full = if csb == 1 && TB::DTYPE == DType::F32 {
                        count.min((ncb / nr).saturating_sub(q0))
                    } else {
                        0
                    };
                    if full > 0 {
                        // SAFETY: rows pc..pc+kcb and columns jc + q0·nr .. + full·nr of B
                        // are inside the caller's view; the chunk holds count ≥ full panels.
                        unsafe {
                            pack::pack_b_rows_dyn(
                                nr,
                                kcb,
                                full,
                                b_p.get()
                                    .cast::<f32>()
                                    .offset(pc as isize * rsb + (jc + q0 * nr) as isize),
                                rsb,
                                chunk,
                            )
                        };
                    }
                    for (i, panel) in chunk.chunks_mut(nr * kcb).enumerate().skip(full) {
                        let q = q0 + i;
                        let j0 = jc + q * nr;
                        // SAFETY: rows pc..pc+kcb and columns j0..j0+cols of B are inside
                        // the caller's view (cols ≤ n - j0).
                        unsafe {
                            pack::pack_b_panel_cvt(
                                isa,
                                nr,
                                kcb,
                                nr.min(ncb - q * nr),
                                b_p.get().offset(pc as isize * rsb + j0 as isize * csb),
                                rsb,
                                csb,
                                panel,
                            )
                        }
                    }
                };

                // Tasks: (row block, share of the B panels). With several threads the
                // panels are split into one share per thread (where each gets at least 4
                // panels, or 2 where there are fewer than 4 row blocks per thread): tasks
                // are claimed in turn, so the threads working at the same time take the
                // same row block's different shares, and each tends to keep to its share
                // of the packed B, which then stays in its own L2 across row blocks
                // instead of every thread streaming all of it. Measured on two threads,
                // AVX-512 (Xeon): n = 256 +17%, 512 +3%, 2048 +5.6%, 512×768×2304 +2.7%,
                // 1024 unchanged; AVX2 n = 512 +2.4%. The 2-panel shares, on Zen 4 (few
                // row blocks, 4–7 panels): 128³ +13%, 160³ +6%, 192³ +7%, 256×256×128
                // +22%, 128×512×128 +20%; with many row blocks they lose (1024×512×128
                // −4%, 18 blocks), where the row split alone balances the threads. Fewer
                // row blocks than two per thread are made up for by more shares.
                let jsplit = if threads > 1 {
                    let min_panels = if n_ic < 4 * threads { 2 } else { 4 };
                    let share = threads.min(n_panels / min_panels).max(1);
                    let fill = if n_ic < 2 * threads {
                        (2 * threads).div_ceil(n_ic)
                    } else {
                        1
                    };
                    share.max(fill).min(n_panels)
                } else {
                    1
                };
                let per_split = n_panels.div_ceil(jsplit);
                let ntasks = n_ic * jsplit;
                // Runs task t; `ready(q)` is called before panel q is read.
                let task = |t: usize, ready: &dyn Fn(usize)| {
                    let (ib, js) = (t / jsplit, t % jsplit);
                    let ic = row0(ib);
                    let mcb = row0(ib + 1) - ic;
                    let q0 = js * per_split;
                    let q1 = (q0 + per_split).min(n_panels);
                    if q0 >= q1 {
                        return;
                    }
                    // Tasks that run at the same time start at different panels (and so
                    // pack different groups first): with a share per thread they have
                    // different shares already (staggering within them measured 3% slower
                    // at n = 256); otherwise the t-th of each `threads` starts at the t-th
                    // part of its panels.
                    let first = if jsplit >= threads {
                        q0
                    } else {
                        q0 + (t % threads) * (q1 - q0) / threads
                    };
                    // Row-major A (unit column stride) is read in place: its rows are
                    // contiguous along k, which is what the kernel streams. Only a partial
                    // last group of rows is packed (zero-padded); other layouts pack all.
                    // Rows that crowd one L1 set evict each other (and the B micro-panel):
                    // pack those.
                    // Those are packed by the kernel calls on the task's first B panel (a
                    // fused kernel reads the rows in place and writes the packed panel).
                    let full = if in_place || fuse_a { mcb / mr } else { 0 };
                    // A last, short group that an edge kernel covers exactly is read in
                    // place too (at n = 64 packing it cost 3.5% of the call).
                    let rem = mcb - full * mr;
                    let edge_in_place = (in_place || fuse_a) && ukr.exact_edge(rem);
                    let packed_rows = if edge_in_place { 0 } else { rem };
                    // With `fuse_a` the buffer holds every group (the full ones filled by
                    // the fused calls), otherwise only the packed ones.
                    let first_packed = if fuse_a { full } else { 0 };
                    // SAFETY: (ic, pc) is inside A's view.
                    let a_blk = unsafe { a_p.get().offset(ic as isize * rsa + pc as isize * csa) };
                    let groups_packed = first_packed + packed_rows.div_ceil(mr);
                    with_scratch(groups_packed * mr * kcb, |apack| {
                        if packed_rows > 0 {
                            // SAFETY: rows ic+full·mr .. ic+mcb, columns pc..pc+kcb of A are
                            // in the view.
                            unsafe {
                                pack::pack_a_cvt(
                                    isa,
                                    mr,
                                    packed_rows,
                                    kcb,
                                    a_blk.offset((full * mr) as isize * rsa),
                                    rsa,
                                    csa,
                                    &mut apack[first_packed * mr * kcb..],
                                )
                            };
                        }
                        let a_src = ASource {
                            // Read in place only when A is f32 (`row_major`).
                            in_place: a_blk.cast::<f32>(),
                            lda: rsa,
                            full,
                            edge_in_place,
                            packed: apack.as_mut_ptr(),
                            fuse: fuse_a,
                        };
                        // SAFETY: the tile range (ic.., jc + q0·nr ..) is inside C and owned
                        // by this task alone; A rows of the block are in the view; every
                        // panel is packed before it is read (`ready`).
                        unsafe {
                            macro_kernel(
                                &ukr,
                                mcb,
                                kcb,
                                ncb,
                                q0..q1,
                                first,
                                ready,
                                alpha,
                                &a_src,
                                b_out.get(),
                                nr * kcb,
                                beta_step,
                                c_p.get().offset(ic as isize * rsc + jc as isize * csc),
                                rsc,
                                csc,
                            )
                        };
                    });
                };
                // Each group is packed by the first task to need it (on one thread: all of
                // B, by the first task's first panel).
                let claims = Claims::<MAX_PANELS>::new();
                let ready = |q: usize| claims.ensure(q / group, || pack_group(q / group));
                // Leaf tasks: a tile waits for nothing but another tile's B packing.
                team(threads, ntasks, true, |t| task(t, &ready));
            });
        }
    }
}

/// Most B panels in one `NC` block (NC ≤ 4080 columns, NR ≥ 4).
const MAX_PANELS: usize = 1024;

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

/// Loops 2 and 1 over one A block and the B panels `panels` (panel `q` starts at
/// `bpack[q·b_stride]` and is used to depth `kcb`), visited from `first` (in `panels`) to
/// the end and then from the start; `ready(q)` is called before panel `q` is read (a
/// multi-threaded call packs it there). With `a_src.fuse`, the calls on `first` pack A.
///
/// # Safety
/// `c` points at element (0, 0) of the `mcb × ncb` block of C, which is writable (readable
/// if `beta != 0`); A's groups are readable to depth `kcb`, and `a_src.packed` is writable
/// for its fused groups and touched by nothing else meanwhile; each panel `q` holds
/// `nr·kcb` packed values once `ready(q)` returns; the CPU has `ukr`'s ISA.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn macro_kernel(
    ukr: &Ukr,
    mcb: usize,
    kcb: usize,
    ncb: usize,
    panels: std::ops::Range<usize>,
    first: usize,
    ready: &dyn Fn(usize),
    alpha: f32,
    a_src: &ASource,
    bpack: *const f32,
    b_stride: usize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
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

/// `C ← beta·C` (`beta == 0` writes zeros without reading).
///
/// # Safety
/// C's `m × n` view writable (readable if `beta != 0`).
unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
    for i in 0..m {
        for j in 0..n {
            // SAFETY: (i, j) inside the view.
            unsafe {
                let p = c.offset(i as isize * rsc + j as isize * csc);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
    }
}

/// Checks that the strided `rows × cols` view fits in `len` elements.
fn view_extent(
    op: &'static str,
    operand: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .ok_or(KernelError::Overflow { op })?;
    if last >= len {
        return Err(KernelError::BufferTooSmall {
            op,
            operand,
            needed: last + 1,
            len,
        });
    }
    if last > isize::MAX as usize / 4 {
        return Err(KernelError::Overflow { op });
    }
    Ok(())
}

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
/// `T` is f32 or a 16-bit storage type ([`Element`]), which the GEMM
/// converts to f32 as it packs.
#[derive(Debug)]
pub struct MatRef<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<T> Clone for MatRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatRef<'_, T> {}

impl<'a, T: crate::Element> MatRef<'a, T> {
    /// A `rows × cols` view with row stride `rs` and column stride `cs` (in elements).
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if the view reaches past `data`,
    /// [`KernelError::Overflow`] if its extent does not fit in `isize`.
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        view_extent("MatRef::new", "data", data.len(), rows, cols, rs, cs)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view (`rs = cols`, `cs = 1`).
    ///
    /// ```
    /// let a = fastattn_kernels::gemm::MatRef::row_major(&[1.0, 2.0, 3.0], 1, 3).unwrap();
    /// assert_eq!(a.get(0, 2), 3.0);
    /// ```
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A dense column-major view (`rs = 1`, `cs = rows`).
    pub fn col_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transpose (swaps the strides; no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row stride in elements.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Column stride in elements.
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    /// Element `(i, j)`. Panics when out of range.
    pub fn get(&self, i: usize, j: usize) -> T {
        assert!(i < self.rows && j < self.cols, "MatRef::get out of range");
        self.data[i * self.rs + j * self.cs]
    }
    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
}

/// A mutable strided matrix view whose elements are pairwise distinct (checked).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// A `rows × cols` view with strides `rs`, `cs`.
    ///
    /// # Errors
    /// As [`MatRef::new`], and [`KernelError::BadStride`] if two elements of the view would
    /// share memory (e.g. a zero stride). The accepted layouts are those where one stride
    /// is at least the other times its extent (every dense, transposed, padded or gapped
    /// layout); exotic interleavings are refused even when they do not overlap.
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        let op = "MatMut::new";
        view_extent(op, "data", data.len(), rows, cols, rs, cs)?;
        if rows == 0 || cols == 0 {
            // An empty view touches nothing.
        } else if rows > 1 && cols > 1 {
            let ok = (cs >= 1 && rs >= cs.saturating_mul(cols))
                || (rs >= 1 && cs >= rs.saturating_mul(rows));
            if !ok {
                return Err(KernelError::BadStride {
                    op,
                    reason: format!(
                        "output view {rows}x{cols} with strides ({rs}, {cs}) would alias itself"
                    ),
                });
            }
        } else if (rows > 1 && rs == 0) || (cols > 1 && cs == 0) {
            return Err(KernelError::BadStride {
                op,
                reason: "a zero stride makes the output alias itself".into(),
            });
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A dense column-major view.
    pub fn col_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Element `(i, j)`. Panics when out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatMut::get out of range");
        self.data[i * self.rs + j * self.cs]
    }
    /// Sets element `(i, j)`. Panics when out of range.
    pub fn set(&mut self, i: usize, j: usize, v: f32) {
        assert!(i < self.rows && j < self.cols, "MatMut::set out of range");
        self.data[i * self.rs + j * self.cs] = v;
    }
    /// Row stride in elements.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Column stride in elements.
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    /// Pointer to element (0, 0), for kernels that write through the checked view.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
    /// Reborrows the view.
    pub fn rb(&mut self) -> MatMut<'_> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// `C ← alpha·A·B + beta·C` on checked views, with the current variant and rayon.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] unless A is m×k, B k×n and C m×n;
/// [`KernelError::UnsupportedIsa`] if `FASTATTN_ISA` forces an ISA this CPU lacks.
///
/// ```
/// use fastattn_kernels::gemm::{gemm, MatRef, MatMut};
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2×3
/// let mut c = [0.0; 4];
/// // C = A·Aᵀ
/// gemm(1.0, MatRef::row_major(&a, 2, 3)?, MatRef::row_major(&a, 2, 3)?.t(), 0.0,
///      MatMut::row_major(&mut c, 2, 2)?)?;
/// assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn gemm<TA: Element, TB: Element>(
    alpha: f32,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    gemm_with(current_isa()?, Parallelism::Rayon, alpha, a, b, beta, c)
}

/// [`gemm`] with the variant and the parallelism chosen by the caller.
///
/// # Errors
/// As [`gemm`]; [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
pub fn gemm_with<TA: Element, TB: Element>(
    isa: Isa,
    par: Parallelism,
    alpha: f32,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    gemm_with_a_read(isa, par, ARead::Auto, alpha, a, b, beta, c)
}

/// How the GEMM reads a row-major A (unit column stride); other layouts are always packed.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ARead {
    /// In place unless `MR` rows crowd one L1 set ([`params::rows_crowd_l1`]).
    Auto,
    /// Always in place.
    InPlace,
    /// Always packed (by the fused kernels, where the variant has them).
    Packed,
}

/// [`gemm_with`] with the choice of [`ARead`] forced, so that tests reach every path of
/// every variant on any machine (the automatic choice depends on its L1 geometry).
///
/// # Errors
/// As [`gemm_with`].
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_with_a_read<TA: Element, TB: Element>(
    isa: Isa,
    par: Parallelism,
    a_read: ARead,
    alpha: f32,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    isa.check()?;
    let op = "gemm";
    if a.cols != b.rows || a.rows != c.rows || b.cols != c.cols {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("A m×k, B k×n, C m×n (A is {}×{})", a.rows, a.cols),
            got: format!("B {}×{}, C {}×{}", b.rows, b.cols, c.rows, c.cols),
        });
    }
    // SAFETY: the views were bounds-checked when built (every element index fits in its
    // slice and in isize); C is an exclusive, self-disjoint view, so it overlaps neither
    // A nor B; `isa` was checked.
    unsafe {
        gemm_unchecked(
            isa,
            par,
            a_read,
            c.rows,
            a.cols,
            c.cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            c.rs as isize,
            c.cs as isize,
        )
    };
    Ok(())
}

/// Runs `isa`'s microkernel `iters` times on one pair of `k`-deep panels (L1-resident) and
/// returns the seconds taken: the kernel's ceiling, for profiling (`cargo xtask profile`).
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
#[doc(hidden)]
pub fn microkernel_seconds(isa: Isa, k: usize, iters: usize) -> Result<f64> {
    isa.check()?;
    let u = ukr_for(isa);
    let a = vec![0.5f32; u.mr * k];
    let b = vec![0.25f32; u.nr * k];
    let mut c = vec![0.0f32; u.mr * u.nr];
    let t = std::time::Instant::now();
    for _ in 0..iters {
        // SAFETY: panels of k·mr and k·nr values, a full mr×nr row-major C; ISA checked.
        unsafe {
            (u.run)(
                k,
                1.0,
                std::hint::black_box(a.as_ptr()),
                0,
                b.as_ptr(),
                1.0,
                c.as_mut_ptr(),
                u.nr as isize,
                1,
            )
        };
    }
    std::hint::black_box(&c);
    Ok(t.elapsed().as_secs_f64())
}
