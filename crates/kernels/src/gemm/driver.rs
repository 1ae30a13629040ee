//! Loops 5 to 3 of the GEMM: the blocked driver. It splits `n` into `NC` blocks (loop 5)
//! and `k` into depth blocks (loop 4, B packed into `NR`-column panels), and deals (row
//! block, panel share) tasks (loop 3, A read in place or packed) to the threads; each task
//! runs the [`macro_kernel`] over its tiles.

use super::api::{block_sizes, ARead};
use super::macro_kernel::{macro_kernel, ASource, BPanels, Block};
use super::microkernel::{ukr_for, Ukr};
use super::{pack, params};
use crate::buffer::with_scratch;
use crate::dispatch::Isa;
use crate::dtype::{DType, Element};
use crate::parallel::{team, Claims, Parallelism, SyncPtr};

/// When a call is split: its estimated one-thread time, from the flops times a learned cost
/// per flop (`parallel::SplitGate`), must reach `parallel::gate::MIN_SPLIT`. The prior,
/// 0.01 ns per flop (100 GFLOP/s), is about what one AVX-512 core reaches on the small
/// shapes that sit near the threshold.
///
/// History: with rayon's pool as helpers, a split call waited for a sleeping worker to
/// wake, and a fixed 2 Mflop bar (`PAR_MIN_FLOPS`) kept the smallest shapes on one thread;
/// at n = 128 two threads still took 1.35× the one-thread time. Helpers no longer hold up
/// a call, and the bar is measured per machine.
pub static GEMM_GATE: crate::parallel::SplitGate = crate::parallel::SplitGate::new(0.01);

/// Most B panels in one `NC` block (NC ≤ 4080 columns, NR ≥ 4).
const MAX_PANELS: usize = 1024;

/// The operands of one product `C ← alpha·A·B + beta·C`, as pointers and element strides
/// (as matrixmultiply's `GemmParameters`): `A` is `m × k` (row stride `rsa`, column stride
/// `csa`), `B` `k × n`, `C` `m × n`.
pub(crate) struct GemmParams<TA, TB> {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) alpha: f32,
    pub(crate) a: *const TA,
    pub(crate) rsa: isize,
    pub(crate) csa: isize,
    pub(crate) b: *const TB,
    pub(crate) rsb: isize,
    pub(crate) csb: isize,
    pub(crate) beta: f32,
    pub(crate) c: *mut f32,
    pub(crate) rsc: isize,
    pub(crate) csc: isize,
}

// Not derived: a derive would require `TA: Copy` and `TB: Copy`.
impl<TA, TB> Clone for GemmParams<TA, TB> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<TA, TB> Copy for GemmParams<TA, TB> {}

/// The blocked driver. `isa` must be supported.
///
/// # Safety
/// As [`super::sgemm`] for the operands in `p`, and the CPU has `isa`.
pub(crate) unsafe fn gemm_unchecked<TA: Element, TB: Element>(
    isa: Isa,
    par: Parallelism,
    a_read: ARead,
    p: GemmParams<TA, TB>,
) {
    let GemmParams {
        m,
        k,
        n,
        alpha,
        beta,
        c,
        rsc,
        csc,
        ..
    } = p;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // SAFETY: C's view is writable (and readable when beta != 0).
        unsafe { scale_c(m, n, beta, c, rsc, csc) };
        return;
    }
    let d = Driver::new(isa, par, a_read, p);
    GEMM_GATE.run(isa, d.flops, d.threads, || {
        let nc = d.nc;
        for jc in (0..n).step_by(nc) {
            let ncb = nc.min(n - jc);
            for pc in (0..k).step_by(d.kc) {
                // SAFETY: forwarded contract; the block lies inside the product.
                unsafe { d.depth_block(jc, ncb, pc) };
            }
        }
    });
}

/// What every task of one call shares: the operands and the blocking.
struct Driver<TA, TB> {
    isa: Isa,
    ukr: Ukr,
    mr: usize,
    nr: usize,
    p: GemmParams<TA, TB>,
    threads: usize,
    /// `2·m·n·k`, the work the split decision weighs.
    flops: f64,
    /// Groups of MR rows of C, dealt out to `n_ic` row blocks.
    groups: usize,
    n_ic: usize,
    /// Depth of a block (equal blocks of at most KC).
    kc: usize,
    nc: usize,
    /// A is read in place.
    in_place: bool,
    /// A is packed by the fused kernels.
    fuse_a: bool,
}

// SAFETY: a Driver is shared only by the tasks of one call, which write disjoint tiles of C
// (each owns a different (row block, panel share) pair) and only read A and B.
unsafe impl<TA, TB> Sync for Driver<TA, TB> {}

/// One depth block of one `NC` block: the packed B panels and how they are shared.
struct DepthBlock {
    jc: usize,
    ncb: usize,
    pc: usize,
    kcb: usize,
    beta: f32,
    n_panels: usize,
    /// Panels per packing group.
    group: usize,
    /// Panel shares per row block.
    jsplit: usize,
    per_split: usize,
    /// The packed panels (shared: each group is written by the one task that claims it,
    /// and read only after its claim reports it packed).
    b_out: SyncPtr<f32>,
}

impl<TA: Element, TB: Element> Driver<TA, TB> {
    /// The blocking and threading of a call (`m, n, k > 0`, `alpha != 0`).
    fn new(isa: Isa, par: Parallelism, a_read: ARead, p: GemmParams<TA, TB>) -> Self {
        let GemmParams {
            m, k, n, rsa, csa, ..
        } = p;
        let ukr = ukr_for(isa);
        let (mr, nr) = (ukr.mr, ukr.nr);
        let bs = block_sizes(isa);
        let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
        let threads = match par {
            Parallelism::Sequential => 1,
            Parallelism::Rayon => {
                GEMM_GATE.threads(isa, flops as f64, crate::parallel::current_threads())
            }
        };
        // Row blocks of equal size (a multiple of MR), so no worker gets a sliver; with
        // several threads, at least two blocks per thread where each keeps at least 4·MR
        // rows (fewer blocks are made up for by splitting the columns below).
        let min_blocks = if threads > 1 {
            (2 * threads).min(m / (4 * mr)).max(1)
        } else {
            1
        };
        // Rows are dealt out in groups of MR: block `ib` holds groups
        // `ib·groups/n_ic .. (ib+1)·groups/n_ic` (sizes differ by at most one group, none
        // above MC). With several threads the block count is a multiple of the thread
        // count: 5 equal blocks over 2 threads (n = 1024) capped the speed-up at 5/3 = 1.67×.
        let groups = m.div_ceil(mr);
        let mut n_ic = groups.div_ceil(bs.mc / mr).max(min_blocks);
        if threads > 1 {
            n_ic = n_ic.next_multiple_of(threads).min(groups);
        }
        // Depth blocks of equal size (at most KC, a multiple of 8 where possible): k = 512
        // with KC = 384 would otherwise run a 128-deep block whose C traffic is paid for
        // with only a quarter of the FMAs (measured 8% slower at n = 512 than two 256-deep
        // blocks).
        let kc = k
            .div_ceil(k.div_ceil(bs.kc).max(1))
            .next_multiple_of(8)
            .min(bs.kc);
        // How a task gets its A block (the same for every block): row-major A (unit column
        // stride) is read in place unless MR rows at its row stride crowd one L1 set
        // (`params::rows_crowd_l1`), where a fused kernel packs it on the task's first B
        // panel (see `task` below).
        // A 16-bit A is always packed (converted as it is).
        let row_major = csa == 1 && rsa != 0 && TA::DTYPE == DType::F32;
        let in_place = row_major
            && match a_read {
                ARead::Auto => {
                    !params::rows_crowd_l1(rsa.unsigned_abs(), mr, &params::cache_sizes())
                }
                ARead::InPlace => true,
                ARead::Packed => false,
            };
        let fuse_a = row_major && !in_place && ukr.fused.is_some();
        Driver {
            isa,
            ukr,
            mr,
            nr,
            p,
            threads,
            flops: flops as f64,
            groups,
            n_ic,
            kc,
            nc: bs.nc,
            in_place,
            fuse_a,
        }
    }

    /// First row of row block `ib`.
    fn row0(&self, ib: usize) -> usize {
        (ib * self.groups / self.n_ic * self.mr).min(self.p.m)
    }

    /// Loop 4's body: packs B[pc.., jc..] (shared among the tasks) and runs every task of
    /// the block.
    ///
    /// # Safety
    /// As [`gemm_unchecked`]; columns `jc .. jc + ncb` and depth `pc ..` lie inside the
    /// product.
    unsafe fn depth_block(&self, jc: usize, ncb: usize, pc: usize) {
        let (nr, threads, n_ic) = (self.nr, self.threads, self.n_ic);
        let kcb = self.kc.min(self.p.k - pc);
        let beta_step = if pc == 0 { self.p.beta } else { 1.0 };
        let n_panels = ncb.div_ceil(nr);
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
            let blk = DepthBlock {
                jc,
                ncb,
                pc,
                kcb,
                beta: beta_step,
                n_panels,
                group,
                jsplit,
                per_split,
                b_out,
            };
            // Each group is packed by the first task to need it (on one thread: all of
            // B, by the first task's first panel).
            let claims = Claims::<MAX_PANELS>::new();
            let ready = |q: usize| {
                claims.ensure(q / group, || {
                    // SAFETY: the claim gives group q / group to this task alone.
                    unsafe { self.pack_b_group(&blk, q / group) }
                })
            };
            // Leaf tasks: a tile waits for nothing but another tile's B packing.
            team(threads, ntasks, |t| {
                // SAFETY: each task owns its (row block, panel share) of C; the caller's
                // contract covers the block.
                unsafe { self.task(&blk, t, &ready) }
            });
        });
    }

    /// Packs group `g` of the block's B panels (a row-major B's full panels row by row,
    /// the rest, and other layouts, panel by panel).
    ///
    /// # Safety
    /// As [`Self::depth_block`]; no other thread touches group g's panels meanwhile.
    unsafe fn pack_b_group(&self, blk: &DepthBlock, g: usize) {
        let (nr, kcb, ncb) = (self.nr, blk.kcb, blk.ncb);
        let (jc, pc, rsb, csb) = (blk.jc, blk.pc, self.p.rsb, self.p.csb);
        let q0 = g * blk.group;
        let count = blk.group.min(blk.n_panels - q0);
        // SAFETY: panels q0 .. q0 + count lie inside the buffer, and only this
        // call touches them (see above).
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(blk.b_out.get().add(q0 * nr * kcb), count * nr * kcb)
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
                    self.isa,
                    nr,
                    kcb,
                    full,
                    self.p
                        .b
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
                    self.isa,
                    nr,
                    kcb,
                    nr.min(ncb - q * nr),
                    self.p.b.offset(pc as isize * rsb + j0 as isize * csb),
                    rsb,
                    csb,
                    panel,
                )
            }
        }
    }

    /// Runs task `t` of the block (a row block and a share of its B panels); `ready(q)` is
    /// called before panel q is read.
    ///
    /// # Safety
    /// As [`Self::depth_block`]; the task's tiles of C are touched by no other thread.
    unsafe fn task(&self, blk: &DepthBlock, t: usize, ready: &dyn Fn(usize)) {
        let (mr, nr, threads) = (self.mr, self.nr, self.threads);
        let (in_place, fuse_a, ukr) = (self.in_place, self.fuse_a, &self.ukr);
        let GemmParams {
            rsa, csa, rsc, csc, ..
        } = self.p;
        let (jc, pc, kcb) = (blk.jc, blk.pc, blk.kcb);
        let (ib, js) = (t / blk.jsplit, t % blk.jsplit);
        let ic = self.row0(ib);
        let mcb = self.row0(ib + 1) - ic;
        let q0 = js * blk.per_split;
        let q1 = (q0 + blk.per_split).min(blk.n_panels);
        if q0 >= q1 {
            return;
        }
        // Tasks that run at the same time start at different panels (and so
        // pack different groups first): with a share per thread they have
        // different shares already (staggering within them measured 3% slower
        // at n = 256); otherwise the t-th of each `threads` starts at the t-th
        // part of its panels.
        let first = if blk.jsplit >= threads {
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
        let a_blk = unsafe { self.p.a.offset(ic as isize * rsa + pc as isize * csa) };
        let groups_packed = first_packed + packed_rows.div_ceil(mr);
        with_scratch(groups_packed * mr * kcb, |apack| {
            if packed_rows > 0 {
                // SAFETY: rows ic+full·mr .. ic+mcb, columns pc..pc+kcb of A are
                // in the view.
                unsafe {
                    pack::pack_a_cvt(
                        self.isa,
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
            let c_blk = Block {
                mcb,
                kcb,
                ncb: blk.ncb,
                alpha: self.p.alpha,
                beta: blk.beta,
                // SAFETY: (ic, jc) is inside C's view.
                c: unsafe { self.p.c.offset(ic as isize * rsc + jc as isize * csc) },
                rsc,
                csc,
            };
            let b_panels = BPanels {
                ptr: blk.b_out.get(),
                stride: nr * kcb,
                panels: q0..q1,
                first,
                ready,
            };
            // SAFETY: the tile range (ic.., jc + q0·nr ..) is inside C and owned
            // by this task alone; A rows of the block are in the view; every
            // panel is packed before it is read (`ready`).
            unsafe { macro_kernel(ukr, &c_blk, &a_src, &b_panels) };
        });
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
