//! The fused (flash) path: tiles of query rows against blocks of packed keys and values
//! with an online softmax; only per-thread scratch of tile size, never an `Lq × Lk` buffer.
//!
//! Per key/value head, Kᵀ is packed once into the GEMM's `NR`-column panels and V once per
//! block of [`KEY_BLOCK`] keys; every query tile of the head's query group reuses them. A
//! tile of up to [`QUERY_TILE`] rows then loops over key blocks:
//!
//! ```text
//! S = scale·Q_tile·Kᵀ_block              (GEMM microkernel on packed Kᵀ)
//! S = mods(S)                             (soft-cap, ALiBi, masks; skipped on clean blocks)
//! m' = max(m, rowmax S);  P = exp(S − m') (vectorised exp)
//! O = O·exp(m − m') ;  l = l·exp(m − m') + rowsum P
//! O += P·V_block                          (GEMM microkernel, P read in place)
//! ```
//!
//! and finishes with `O / l`. Blocks that no row of the tile can see (causal future,
//! outside the window, padding) are skipped, so causal attention does about half the work.
//!
//! Decoding (few query rows, long key sequences) splits the keys into chunks of
//! [`DECODE_CHUNK`] (a constant, never the thread count), attends each chunk separately and
//! merges the partial `(O, m, l)` with their log-sum-exp in chunk order (flash-decoding).
//! Every row is thus computed by the same operations in the same order at any thread
//! count: results are bit-for-bit identical at 1, 2 or 16 threads.
//!
//! A decode over a paged cache (whose pages keep a token's key/value heads side by side)
//! is one tile of all the sequence's query rows, split into chunks of [`KEY_BLOCK`] keys,
//! whose decode kernels read every head of a few tokens at a time
//! ([`kernels::gemv::Heads`]).
//!
//! Keys and values are read through the crate's key/value source seam (`kv.rs`): packing
//! asks it for one matrix of rows per head or block, the direct decode kernels run once per
//! row segment it hands out.

use crate::direct::{self, DirectBufs};
use crate::error::Result;
use crate::job::Job;
use crate::kv::KvSource;
use crate::nonfinite::dense_copy;
use crate::options::Problem;
use crate::tensor::{with_mat, AnyRef};
use kernels::gemm::packed::{gemm_packed_b, PackedB};
use kernels::gemm::{MatMut, MatRef};
use kernels::gemv::axpy_rows_with;
use kernels::softmax::online::exp_row_update;
use kernels::Isa;
use std::cell::RefCell;

/// Keys per block (a multiple of every microkernel's `NR`).
///
/// Bench-tuned with [`QUERY_TILE`] on the dev Xeon (1 thread, H = 8, D = 64, best of 5 on
/// a noisy host): 96 × 512 beat the 64 × 256 starting point by 6% at L = 512 (one block:
/// no online rescaling at all), 1.5–2% at L = 1024, causal 2048 and D = 128; 128-key
/// blocks were slower. The tile's S (96 × 512 f32, 192 KiB) lives in L2.
pub const KEY_BLOCK: usize = 512;
/// Target query rows per tile; the tile is rounded up to a multiple of the microkernel's
/// `MR` ([`query_tile`]) so that no row group runs as a partial edge tile.
pub const QUERY_TILE: usize = 96;

/// Query rows per tile for `isa`: [`QUERY_TILE`] rounded up to a multiple of its `MR`.
pub fn query_tile(isa: Isa) -> usize {
    let (mr, _) = kernels::gemm::tile_of(isa);
    QUERY_TILE.div_ceil(mr) * mr
}
/// Keys per chunk of the flash-decoding split.
pub const DECODE_CHUNK: usize = 2048;
/// Total key/value packing memory above which query groups are processed one at a time.
const PACK_BUDGET_BYTES: usize = 64 << 20;

/// Kᵀ and V of keys `origin .. end` of one key/value head, packed for the microkernel, one
/// pack of each per block of [`KEY_BLOCK`] keys (so a source that does not keep the keys
/// as one matrix, a paged cache, is staged a block at a time, never as a whole).
struct KvPacks {
    k: Vec<PackedB>,
    v: Vec<PackedB>,
    /// Per V block: a dense row-major copy (`kb × dv`) where the block holds a NaN or an
    /// infinity, else `None`. Such a block's P·V skips zero weights
    /// ([`kernels::gemv::axpy_rows_with`]) instead of running the GEMM, where a key that a
    /// row cannot see (weight 0) would still add `0·NaN = NaN` to it.
    v_nonfinite: Vec<Option<Vec<f32>>>,
    /// Where a block's rows that the source does not keep as one matrix are staged for
    /// packing (unused by a dense source).
    scratch: Vec<f32>,
    isa: Isa,
    origin: usize,
    end: usize,
}

impl KvPacks {
    fn new(isa: Isa) -> Result<Self> {
        isa.check()?;
        Ok(KvPacks {
            k: Vec::new(),
            v: Vec::new(),
            v_nonfinite: Vec::new(),
            scratch: Vec::new(),
            isa,
            origin: 0,
            end: 0,
        })
    }

    /// `old` if it was packed for `isa`'s microkernel, else a new one: a thread's cached
    /// packs may come from a call that forced another variant.
    fn reuse(old: Option<KvPacks>, isa: Isa) -> Result<Self> {
        match old {
            Some(p) if p.isa == isa => Ok(p),
            _ => KvPacks::new(isa),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pack(
        &mut self,
        p: &Problem<'_>,
        k: &KvSource<'_>,
        v: &KvSource<'_>,
        b: usize,
        kvh: usize,
        origin: usize,
        end: usize,
    ) -> Result<()> {
        let n = end - origin;
        let blocks = n.div_ceil(KEY_BLOCK);
        while self.k.len() < blocks {
            self.k.push(PackedB::new(p.isa)?);
        }
        while self.v.len() < blocks {
            self.v.push(PackedB::new(p.isa)?);
        }
        self.v_nonfinite.resize(blocks, None);
        for blk in 0..blocks {
            let j0 = origin + blk * KEY_BLOCK;
            let kb = KEY_BLOCK.min(end - j0);
            // Kᵀ (d × kb) of the block: one matrix from the source (its own rows when it
            // keeps them as one, as a dense source does).
            let ks = k.contiguous(p.isa, b, kvh, j0, j0 + kb, p.d, &mut self.scratch)?;
            with_mat!(ks.mem, (ks.base, p.d, kb, ks.col_stride, ks.row_stride), m => self.k[blk].pack(m)?);
            let vs = v.contiguous(p.isa, b, kvh, j0, j0 + kb, p.dv, &mut self.scratch)?;
            with_mat!(vs.mem, (vs.base, kb, p.dv, vs.row_stride, vs.col_stride), vm => {
                self.v[blk].pack(vm)?;
                // The packed copy holds the block's values (as f32) and zero padding.
                self.v_nonfinite[blk] = if self.v[blk].all_finite() {
                    None
                } else {
                    Some(dense_copy(vm))
                };
            });
        }
        self.origin = origin;
        self.end = end;
        Ok(())
    }
}

/// Where a tile reads its keys and values: packed panels, or (for decoding, when a tile
/// has at most [`DIRECT_MAX_ROWS`] rows) the caller's K and V rows in place.
enum Kv<'a, 'p> {
    Packed(&'p KvPacks),
    Direct {
        k: &'p KvSource<'a>,
        v: &'p KvSource<'a>,
        origin: usize,
        end: usize,
    },
}

impl Kv<'_, '_> {
    fn range(&self) -> (usize, usize) {
        match self {
            Kv::Packed(p) => (p.origin, p.end),
            Kv::Direct { origin, end, .. } => (*origin, *end),
        }
    }
}

/// The staircase of a key block `j0 .. jend`: for each group of `mr` rows (the
/// microkernel's height) of the visible key intervals `iv`, how many of the block's leading
/// keys some row of the group sees (`lim[g]`, 0 when none does). Keys past a group's width
/// are invisible to all its rows, so its products stop there.
pub(crate) fn group_limits(
    iv: &[(usize, usize)],
    mr: usize,
    j0: usize,
    jend: usize,
    lim: &mut Vec<usize>,
) {
    lim.clear();
    for grp in iv.chunks(mr) {
        let hi = grp
            .iter()
            .filter(|(lo, hi)| lo < hi)
            .map(|&(_, hi)| hi)
            .max()
            .unwrap_or(j0);
        lim.push(hi.clamp(j0, jend) - j0);
    }
}

/// Tiles of at most this many rows read K and V in place (no packing).
pub const DIRECT_MAX_ROWS: usize = 8;

/// Whether tiles of `p` use the in-place (decode) kernels.
fn direct_ok(p: &Problem<'_>, k: &KvSource<'_>, v: &KvSource<'_>) -> bool {
    p.group() * p.lq <= DIRECT_MAX_ROWS && k.unit_cols() && v.unit_cols() && p.d > 0 && p.dv > 0
}

/// Per-thread scratch of one tile.
struct Ws {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    iv: Vec<(usize, usize)>,
    lim: Vec<usize>,
    /// Scratch of the direct (decode) kernels.
    direct: DirectBufs,
    packs: Option<KvPacks>,
}

thread_local! {
    static WS: RefCell<Vec<Ws>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch taken from this thread's pool (re-entrant: a worker that steals
/// another tile while waiting gets its own).
fn with_ws<R>(f: impl FnOnce(&mut Ws) -> R) -> R {
    let mut ws = WS.with(|w| w.borrow_mut().pop()).unwrap_or_else(|| Ws {
        q: Vec::new(),
        s: Vec::new(),
        o: Vec::new(),
        m: Vec::new(),
        l: Vec::new(),
        iv: Vec::new(),
        lim: Vec::new(),
        direct: DirectBufs::default(),
        packs: None,
    });
    let r = f(&mut ws);
    WS.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < 4 {
            w.push(ws);
        }
    });
    r
}

/// A tile: rows `r0 .. r1` of the query group of `(b, kvh)`, where group row `r` is query
/// `i = r % Lq` of head `h = kvh·group + r / Lq`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    b: usize,
    kvh: usize,
    r0: usize,
    r1: usize,
    /// Key/value heads the tile spans from `kvh` on (1, except for a decode over a paged
    /// cache: one tile of every query row of the sequence, whose rows are `heads` bands,
    /// one per key/value head, read together token by token).
    heads: usize,
}

/// The tiles of one query group: whole heads per tile when `Lq` is short (so GQA decoding
/// reads each key once for all heads of the group), else tiles within a head.
fn group_tiles(p: &Problem<'_>, b: usize, kvh: usize, out: &mut Vec<Tile>) {
    let rows = p.group() * p.lq;
    let qt = query_tile(p.isa);
    if p.lq == 0 {
        return;
    }
    if p.lq >= qt {
        for h in 0..p.group() {
            for i0 in (0..p.lq).step_by(qt) {
                let r0 = h * p.lq + i0;
                out.push(Tile {
                    b,
                    kvh,
                    r0,
                    r1: r0 + qt.min(p.lq - i0),
                    heads: 1,
                });
            }
        }
    } else {
        let step = (qt / p.lq) * p.lq;
        for r0 in (0..rows).step_by(step) {
            out.push(Tile {
                b,
                kvh,
                r0,
                r1: (r0 + step).min(rows),
                heads: 1,
            });
        }
    }
}

/// Attends the rows of `t` over the keys in `packs`, leaving unnormalised `O`, the running
/// max `m` and sum `l` in `ws`.
fn attend(p: &Problem<'_>, q: &AnyRef<'_>, t: Tile, kv: &Kv<'_, '_>, ws: &mut Ws) -> Result<()> {
    let (origin, end) = kv.range();
    let rows = t.r1 - t.r0;
    let (d, dv) = (p.d, p.dv);
    ws.q.resize(rows * d, 0.0);
    ws.s.resize(rows * KEY_BLOCK, 0.0);
    ws.o.clear();
    ws.o.resize(rows * dv, 0.0);
    ws.m.clear();
    ws.m.resize(rows, f32::NEG_INFINITY);
    ws.l.clear();
    ws.l.resize(rows, 0.0);
    ws.iv.clear();
    let qs = q.strides();
    let (mut tile_lo, mut tile_hi) = (usize::MAX, 0);
    for r in 0..rows {
        let (h, i) = row_hi(p, t, r);
        let base = q.offset(t.b, h, i, 0);
        let dst = &mut ws.q[r * d..(r + 1) * d];
        if d > 0 {
            // (With d = 0 there is nothing to gather: the view may describe no memory.)
            q.gather(p.isa, base, qs[3], dst)?;
        }
        let (lo, hi) = p.key_interval(t.b, i);
        let (lo, hi) = (lo.max(origin), hi.min(end));
        ws.iv.push((lo, hi));
        if lo < hi {
            tile_lo = tile_lo.min(lo);
            tile_hi = tile_hi.max(hi);
        }
    }
    if tile_lo >= tile_hi {
        return Ok(());
    }
    let mods = p.has_score_mods();
    let mr = kernels::gemm::tile_of(p.isa).0;
    let first = (tile_lo - origin) / KEY_BLOCK;
    let last = (tile_hi - origin).div_ceil(KEY_BLOCK);
    for blk in first..last {
        let j0 = origin + blk * KEY_BLOCK;
        let j1 = (j0 + KEY_BLOCK).min(end);
        if ws
            .iv
            .iter()
            .all(|&(lo, hi)| hi <= j0 || lo >= j1 || lo >= hi)
        {
            continue;
        }
        // Columns past every row's last visible key (the causal diagonal) are not computed:
        // S stops there and P·V uses only that leading part of the packed V block.
        let jend = j1.min(tile_hi);
        let kbn = jend - j0;
        let clean = !mods && ws.iv.iter().all(|&(lo, hi)| lo <= j0 && hi >= jend);
        // Row groups of MR rows (the microkernel's height) that see fewer keys of this
        // block than the tile's last row (the causal diagonal, a window) stop earlier:
        // their S and P·V use only their own leading width `lim[g]`.
        group_limits(&ws.iv[..rows], mr, j0, jend, &mut ws.lim);
        let staircase = matches!(kv, Kv::Packed(_)) && ws.lim.iter().any(|&w| w < kbn);
        let qm = MatRef::new(&ws.q, rows, d, d, 1)?;
        match kv {
            Kv::Packed(packs) if staircase => {
                for (g, &w) in ws.lim.iter().enumerate() {
                    let (r0, rg) = (g * mr, mr.min(rows - g * mr));
                    if w > 0 {
                        gemm_packed_b(
                            p.scale,
                            MatRef::new(&ws.q[r0 * d..], rg, d, d, 1)?,
                            &packs.k[blk],
                            0,
                            0.0,
                            MatMut::new(&mut ws.s[r0 * KEY_BLOCK..], rg, w, KEY_BLOCK, 1)?,
                        )?;
                    }
                }
            }
            Kv::Packed(packs) => {
                let sm = MatMut::new(&mut ws.s, rows, kbn, KEY_BLOCK, 1)?;
                gemm_packed_b(p.scale, qm, &packs.k[blk], 0, 0.0, sm)?
            }
            // The keys in place: scattered rows (a paged cache) in one call, else one
            // segment of the source at a time (a dense source has one), each into its own
            // columns of S.
            Kv::Direct { k, .. } => {
                let heads = (t.b, t.kvh, t.heads);
                let (s, bufs) = (&mut ws.s[..], &mut ws.direct);
                direct::scores(p.isa, p.scale, qm, k, heads, (j0, jend), s, KEY_BLOCK, bufs)?
            }
        }
        for r in 0..rows {
            let row = &mut ws.s[r * KEY_BLOCK..r * KEY_BLOCK + kbn];
            if staircase {
                // Columns past the group's width were not computed (all invisible).
                row[ws.lim[r / mr]..].fill(f32::NEG_INFINITY);
            }
            if !clean {
                let (h, i) = row_hi(p, t, r);
                // Blocks lie inside the pack, so the row's own interval covers any clipping.
                p.modify_row(t.b, h, i, j0, row);
            }
            let m_old = ws.m[r];
            let (m_new, sum) = exp_row_update(p.isa, row, 1.0, m_old)?;
            if m_new != m_old && m_old != f32::NEG_INFINITY {
                let alpha = (m_old - m_new).exp();
                for x in &mut ws.o[r * dv..(r + 1) * dv] {
                    *x *= alpha;
                }
                ws.l[r] *= alpha;
            }
            ws.m[r] = m_new;
            ws.l[r] += sum;
        }
        let pm = MatRef::new(&ws.s, rows, kbn, KEY_BLOCK, 1)?;
        match kv {
            // A NaN or infinity in this V block: skip zero weights (keys a row cannot see,
            // whose columns of P are 0 here, staircase columns included).
            Kv::Packed(packs) if packs.v_nonfinite[blk].is_some() => {
                let vd = packs.v_nonfinite[blk].as_deref().unwrap_or_default();
                let om = MatMut::new(&mut ws.o, rows, dv, dv, 1)?;
                axpy_rows_with(p.isa, pm, MatRef::new(vd, kbn, dv, dv, 1)?, om)?
            }
            Kv::Packed(packs) if staircase => {
                for (g, &w) in ws.lim.iter().enumerate() {
                    let (r0, rg) = (g * mr, mr.min(rows - g * mr));
                    if w > 0 {
                        gemm_packed_b(
                            1.0,
                            MatRef::new(&ws.s[r0 * KEY_BLOCK..], rg, w, KEY_BLOCK, 1)?,
                            &packs.v[blk],
                            0,
                            1.0,
                            MatMut::new(&mut ws.o[r0 * dv..], rg, dv, dv, 1)?,
                        )?;
                    }
                }
            }
            Kv::Packed(packs) => {
                let om = MatMut::new(&mut ws.o, rows, dv, dv, 1)?;
                gemm_packed_b(1.0, pm, &packs.v[blk], 0, 1.0, om)?
            }
            // O += P·V over the values in place: scattered rows in one call, else segment
            // by segment (in key order).
            Kv::Direct { v, .. } => {
                let heads = (t.b, t.kvh, t.heads);
                let (o, bufs) = (&mut ws.o[..], &mut ws.direct);
                let (sp, shape) = (&ws.s[..], (rows, dv));
                direct::accumulate(p.isa, sp, KEY_BLOCK, v, heads, (j0, jend), o, shape, bufs)?
            }
        }
    }
    Ok(())
}

/// `(h, i)` of group row `r` of tile `t`.
#[inline]
fn row_hi(p: &Problem<'_>, t: Tile, r: usize) -> (usize, usize) {
    let gr = t.r0 + r;
    (t.kvh * p.group() + gr / p.lq, gr % p.lq)
}

/// Writes the finished tile rows (`O / l`, zeros where a row has no weight; sinks folded
/// in, see [`Problem::finish`]) and their log-sum-exp.
///
/// # Safety
/// `job.out` and `job.lse` are valid for the job's rows (checked views), and no other
/// thread writes the rows of `t`.
unsafe fn finish_rows(job: &Job<'_>, t: Tile, o: &[f32], m: &[f32], l: &[f32]) {
    let (p, dv) = (&job.p, job.p.dv);
    for r in 0..t.r1 - t.r0 {
        let (h, i) = row_hi(p, t, r);
        let (inv, lse) = p.finish(h, m[r], l[r]);
        // SAFETY: (t.b, h, i, 0..dv) is inside the output view; this tile owns the row.
        unsafe {
            job.out
                .store_row(job.out_row(t.b, h, i), job.os[3], dv, |x| {
                    o[r * dv + x] * inv
                })
        };
        if let Some(out) = job.lse {
            // SAFETY: (t.b, h, i) is an entry of the job; this tile owns it.
            unsafe { out.store(t.b, h, i, lse) };
        }
    }
}

/// A query group `(b, kvh)` of a job and its tiles `tiles[t0 .. t1]`.
#[derive(Debug, Clone, Copy)]
struct Group {
    job: usize,
    b: usize,
    kvh: usize,
    t0: usize,
    t1: usize,
    /// Keys per chunk when the job runs split along its keys (flash-decoding), else 0.
    chunk: usize,
}

/// Runs the fused path over the jobs of one call (a dense call has one).
///
/// Every query group of every job is built into tiles first. A job whose keys are long
/// and whose tiles are few (decoding) is split along its keys into [`DECODE_CHUNK`]s; the
/// others run a task per query group (packing its keys once), with the group's tiles
/// spread over the threads. Every choice depends on the problem only, never on the thread
/// count.
pub(crate) fn run(jobs: &[Job<'_>]) -> Result<()> {
    let mut tiles = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for (ji, job) in jobs.iter().enumerate() {
        let p = &job.p;
        let first = groups.len();
        let t_first = tiles.len();
        // A decode over scattered rows (a paged cache, whose pages keep the key/value heads
        // of a token side by side): one tile of all the sequence's query rows, its key
        // blocks read for every head a few tokens at a time (`Heads`), in chunks of one
        // key block. (A head at a time over the whole history reads 1/Hkv of every row of
        // every page, with a TLB miss every few rows.) A dense decode splits only when it
        // has few tiles and long keys.
        let scattered = direct_ok(p, &job.k, &job.v) && job.k.is_scattered();
        for b in 0..p.b {
            if scattered && p.lq > 0 && p.hkv > 0 {
                groups.push(Group {
                    job: ji,
                    b,
                    kvh: 0,
                    t0: tiles.len(),
                    t1: tiles.len() + 1,
                    chunk: 0,
                });
                tiles.push(Tile {
                    b,
                    kvh: 0,
                    r0: 0,
                    r1: p.hq * p.lq,
                    heads: p.hkv,
                });
                continue;
            }
            for kvh in 0..p.hkv {
                let t0 = tiles.len();
                group_tiles(p, b, kvh, &mut tiles);
                if tiles.len() > t0 {
                    groups.push(Group {
                        job: ji,
                        b,
                        kvh,
                        t0,
                        t1: tiles.len(),
                        chunk: 0,
                    });
                }
            }
        }
        let chunk = if scattered {
            KEY_BLOCK
        } else if tiles.len() - t_first < 16 && p.lk >= 2 * DECODE_CHUNK {
            DECODE_CHUNK
        } else {
            0
        };
        for g in &mut groups[first..] {
            g.chunk = chunk;
        }
    }
    // Threads for the call's teams: 1 (every team runs inline) unless the call may use
    // several and is long enough to gain from them.
    let Some(split) = crate::gates::flash_split(jobs) else {
        return Ok(());
    };
    let threads = split.threads;
    let (chunked, whole): (Vec<Group>, Vec<Group>) = groups.iter().partition(|g| g.chunk > 0);
    split.run(|| {
        run_groups(jobs, &tiles, &whole, threads)?;
        run_split(jobs, &tiles, &chunked, threads)
    })
}

/// One task per query group: pack its keys once, then its tiles (over the threads).
fn run_groups(jobs: &[Job<'_>], tiles: &[Tile], groups: &[Group], threads: usize) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let run_group = |g: &Group| -> Result<()> {
        let job = &jobs[g.job];
        let (p, k, v) = (&job.p, &job.k, &job.v);
        let direct = direct_ok(p, k, v);
        // The keys the source holds for the head, within the batch's key length.
        let n = p.kv_len(g.b).min(k.len(g.b, g.kvh));
        let mut packs = KvPacks::reuse(with_ws(|ws| ws.packs.take()), p.isa)?;
        if !direct {
            packs.pack(p, k, v, g.b, g.kvh, 0, n)?;
        }
        let kv = if direct {
            Kv::Direct {
                k,
                v,
                origin: 0,
                end: n,
            }
        } else {
            Kv::Packed(&packs)
        };
        let one = |t: &Tile| -> Result<()> {
            with_ws(|ws| {
                attend(p, &job.q, *t, &kv, ws)?;
                // SAFETY: this tile's rows are written by this task only.
                unsafe { finish_rows(job, *t, &ws.o, &ws.m, &ws.l) };
                Ok(())
            })
        };
        let ts = &tiles[g.t0..g.t1];
        let r = kernels::parallel::try_for_each(threads, ts.len(), |i| one(&ts[i]));
        with_ws(|ws| ws.packs = Some(packs));
        r
    };
    // Packs are f32 whatever the input type.
    let pack_bytes = jobs
        .iter()
        .map(|j| j.p.lk * (j.p.d + j.p.dv) * 4)
        .max()
        .unwrap_or(0);
    let outer = if pack_bytes.saturating_mul(threads) <= PACK_BUDGET_BYTES {
        threads
    } else {
        1
    };
    kernels::parallel::try_for_each(outer, groups.len(), |i| run_group(&groups[i]))
}

/// Flash-decoding: every (tile, key chunk) of the groups is a task; partial results are
/// merged in chunk order.
fn run_split(jobs: &[Job<'_>], tiles: &[Tile], groups: &[Group], threads: usize) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    // Tasks: (group, tile, chunk), a job's tasks ordered by chunk, then tile: the threads
    // take runs of consecutive tasks, so one thread reads a chunk of keys for all the
    // job's heads in turn.
    let mut tasks = Vec::new();
    let mut first = 0;
    while first < groups.len() {
        let job = groups[first].job;
        let end = first + groups[first..].iter().take_while(|g| g.job == job).count();
        let chunk = groups[first].chunk;
        // At least one chunk: a sequence without keys still finishes its rows (zeros, and
        // the sink or -inf as the LSE).
        for c in 0..jobs[job].p.lk.div_ceil(chunk).max(1) {
            for (gi, g) in groups.iter().enumerate().take(end).skip(first) {
                for ti in g.t0..g.t1 {
                    tasks.push((gi, ti, c));
                }
            }
        }
        first = end;
    }
    // Partial results are sized by the largest tile, not the tile target (decode tiles
    // hold a few rows).
    let qt = groups
        .iter()
        .flat_map(|g| &tiles[g.t0..g.t1])
        .map(|t| t.r1 - t.r0)
        .max()
        .unwrap_or(0)
        .max(1);
    let dv = jobs[groups[0].job].p.dv;
    // One partial output block per task; at least one element wide so that Dv = 0 still
    // gives one chunk per task (the max and sum partials are needed for the LSE).
    let po_len = (qt * dv).max(1);
    let mut part_o = vec![0.0f32; tasks.len() * po_len];
    let mut part_ml = vec![0.0f32; tasks.len() * 2 * qt];
    let task = |idx: usize, po: &mut [f32], pml: &mut [f32]| -> Result<()> {
        let (gi, ti, c) = tasks[idx];
        let (g, t) = (groups[gi], tiles[ti]);
        let job = &jobs[g.job];
        let (p, k, v) = (&job.p, &job.k, &job.v);
        let rows = t.r1 - t.r0;
        let (pm, pl) = pml.split_at_mut(qt);
        pm[..rows].fill(f32::NEG_INFINITY);
        pl[..rows].fill(0.0);
        let chunk = g.chunk;
        let lo = c * chunk;
        let hi = ((c + 1) * chunk).min(p.kv_len(t.b).min(k.len(t.b, t.kvh)));
        if lo >= hi {
            return Ok(());
        }
        // Skip the chunk if no row of the tile sees any of its keys.
        let visible = (t.r0..t.r1).any(|gr| {
            let (a, z) = p.key_interval(t.b, gr % p.lq);
            a < hi && z > lo && a < z
        });
        if !visible {
            return Ok(());
        }
        with_ws(|ws| {
            if direct_ok(p, k, v) {
                let kv = Kv::Direct {
                    k,
                    v,
                    origin: lo,
                    end: hi,
                };
                attend(p, &job.q, t, &kv, ws)?;
            } else {
                let mut packs = KvPacks::reuse(ws.packs.take(), p.isa)?;
                let r = packs
                    .pack(p, k, v, t.b, t.kvh, lo, hi)
                    .and_then(|_| attend(p, &job.q, t, &Kv::Packed(&packs), ws));
                ws.packs = Some(packs);
                r?;
            }
            po[..rows * dv].copy_from_slice(&ws.o[..rows * dv]);
            pm[..rows].copy_from_slice(&ws.m[..rows]);
            pl[..rows].copy_from_slice(&ws.l[..rows]);
            Ok(())
        })
    };
    kernels::parallel::try_for_each_chunk_mut2(
        threads,
        &mut part_o,
        po_len,
        &mut part_ml,
        2 * qt,
        task,
    )?;
    // Merge: M = max m_c, l = Σ l_c·e^(m_c − M), O = Σ O_c·e^(m_c − M), in chunk order:
    // the tasks sorted by (tile, chunk), so each tile's are consecutive.
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| (tasks[i].1, tasks[i].2));
    let mut o = vec![0.0f32; qt * dv];
    let (mut m, mut l) = (vec![0.0f32; qt], vec![0.0f32; qt]);
    let mut first = 0;
    while first < order.len() {
        let (gi, ti, _) = tasks[order[first]];
        let parts = &order[first
            ..first
                + order[first..]
                    .iter()
                    .take_while(|&&i| tasks[i].1 == ti)
                    .count()];
        let (job, t) = (&jobs[groups[gi].job], tiles[ti]);
        for r in 0..t.r1 - t.r0 {
            let ms = parts.iter().map(|&i| part_ml[i * 2 * qt + r]);
            let mx = ms.fold(f32::NEG_INFINITY, f32::max);
            let orow = &mut o[r * dv..(r + 1) * dv];
            orow.fill(0.0);
            let mut sum = 0.0f32;
            if mx != f32::NEG_INFINITY {
                for &i in parts {
                    let base = i * 2 * qt;
                    let (mc, lc) = (part_ml[base + r], part_ml[base + qt + r]);
                    if mc == f32::NEG_INFINITY {
                        continue;
                    }
                    let w = (mc - mx).exp();
                    sum += lc * w;
                    let po = &part_o[i * po_len + r * dv..][..dv];
                    for (x, y) in orow.iter_mut().zip(po) {
                        *x += w * y;
                    }
                }
            }
            m[r] = mx;
            l[r] = sum;
        }
        // SAFETY: each tile's rows are written once, here, sequentially.
        unsafe { finish_rows(job, t, &o, &m, &l) };
        first += parts.len();
    }
    Ok(())
}
