//! The backward pass: gradients `dQ`, `dK`, `dV` of [`crate::sdpa`] from the forward's
//! output `O`, its log-sum-exp and the output gradient `dO` (FlashAttention-2's algorithm,
//! tile by tile, with O(L) memory beyond the inputs and outputs).
//!
//! With `P = exp(logits − lse)` recomputed from the forward's LSE and
//! `D = rowsum(dO ∘ O)`:
//!
//! ```text
//! dV = Pᵀ·dO      dP = dO·Vᵀ      dS = P ∘ (dP − D) ∘ cap'      dQ = scale·dS·K      dK = scale·dSᵀ·Q
//! ```
//!
//! where `cap' = 1 − tanh²(s/cap)` is the soft-cap's derivative (1 without soft-capping).
//! ALiBi and additive masks shift the logits by constants, so they change `P` but add no
//! factor; the mask and the slopes get no gradient.
//!
//! # Determinism
//! The work is split in two passes whose tasks own disjoint gradient rows, so nothing is
//! reduced across tasks and no split depends on the thread count:
//!
//! 1. one task per `(batch, key/value head, block of` [`BWD_KEY_BLOCK`] `keys)` accumulates
//!    that block's `dK` and `dV` over every query head of its group and every query tile, in
//!    a fixed order;
//! 2. one task per `(batch, query head, tile of` [`BWD_QUERY_TILE`] `queries)` accumulates
//!    its `dQ` over the key blocks in order.
//!
//! Pass 2 recomputes `S` and `dP` (seven tile products instead of five), the price of
//! bit-identical gradients at any thread count without atomics or an `Lq × Lk` buffer.
//!
//! # Keys a query cannot see
//! Their weight is exactly 0, and their `dS` is set to 0 by selection, never by a multiply,
//! so a NaN or an infinity in a key or value row that no query can see (the padding of a KV
//! cache) does not reach any gradient; blocks of K holding one go through the zero-skipping
//! [`kernels::gemv::axpy_rows_with`] for `dQ`.

use crate::error::{AttnError, Result};
use crate::options::Problem;
use crate::tensor::{AnyRef, DynTensor, TensorMut, TensorRef};
use crate::{SdpaOptions, SyncPtr};
use kernels::dtype::{all_finite, Element};
use kernels::gemm::{gemm_with, MatMut, MatRef};
use kernels::gemv::axpy_rows_with;
use kernels::{Isa, Parallelism};
use std::cell::RefCell;

/// Keys per block of the backward pass (a constant: the split never depends on threads).
pub const BWD_KEY_BLOCK: usize = 128;
/// Query rows per tile of the backward pass.
pub const BWD_QUERY_TILE: usize = 128;

/// Where [`sdpa_backward_into`] writes the gradients: f32 views shaped like Q, K and V.
#[derive(Debug)]
#[non_exhaustive]
pub struct SdpaGrads<'g> {
    /// `[B, Hq, Lq, D]`, the gradient of Q.
    pub dq: TensorMut<'g>,
    /// `[B, Hkv, Lk, D]`, the gradient of K (summed over the query heads of each group).
    pub dk: TensorMut<'g>,
    /// `[B, Hkv, Lk, Dv]`, the gradient of V (summed likewise).
    pub dv: TensorMut<'g>,
}

impl<'g> SdpaGrads<'g> {
    /// The three gradient views.
    pub fn new(dq: TensorMut<'g>, dk: TensorMut<'g>, dv: TensorMut<'g>) -> Self {
        SdpaGrads { dq, dk, dv }
    }
}

/// Gradients returned by [`sdpa_backward`], contiguous `[B, H, L, D]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Gradients {
    /// `[B, Hq, Lq, D]`.
    pub dq: Vec<f32>,
    /// `[B, Hkv, Lk, D]`.
    pub dk: Vec<f32>,
    /// `[B, Hkv, Lk, Dv]`.
    pub dv: Vec<f32>,
}

fn numel(dims: [usize; 4], what: &'static str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(AttnError::Overflow { what })
}

/// The gradients of [`crate::sdpa`] with respect to Q, K and V, into new contiguous
/// buffers.
///
/// `o` is the forward's output and `lse` its log-sum-exp (`[B, Hq, Lq]` contiguous, from
/// [`crate::SdpaOutputs::with_lse`]), both from a call with the same inputs and `opts`;
/// `d_o` is the gradient of the loss with respect to `o`. Q, K, V, O and dO may each be
/// f32, f16 or bf16; the gradients are f32.
///
/// ```
/// use fastattn_attention::{sdpa_into, sdpa_backward, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
/// let dims = [1, 2, 7, 4];
/// let x: Vec<f32> = (0..56).map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5).collect();
/// let t = TensorRef::contiguous(&x, dims)?;
/// let opts = SdpaOptions::new().with_causal(true);
/// let (mut o, mut lse) = (vec![0.0f32; 56], vec![0.0f32; 14]);
/// sdpa_into(t, t, t, TensorMut::contiguous(&mut o, dims)?, &opts,
///           SdpaOutputs::default().with_lse(Some(&mut lse)))?;
/// let d_o = vec![1.0f32; 56]; // the loss is sum(O)
/// let g = sdpa_backward(t, t, t, TensorRef::contiguous(&o, dims)?,
///                       TensorRef::contiguous(&d_o, dims)?, &lse, &opts)?;
/// // Each output row is a convex mix of value rows, so sum(O) grows by exactly one per
/// // unit added to all of a head's values: the dV of a head sums to Lq·Dv.
/// let s: f32 = g.dv[..28].iter().sum();
/// assert!((s - 28.0).abs() < 1e-4);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// The forward's shape and option errors, and shape errors for `o`, `d_o` and `lse`.
pub fn sdpa_backward<Q: Element, K: Element, V: Element, O: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    o: TensorRef<'_, O>,
    d_o: TensorRef<'_, G>,
    lse: &[f32],
    opts: &SdpaOptions<'_>,
) -> Result<Gradients> {
    Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let mut dq = vec![0.0f32; numel(q.dims(), "dQ")?];
    let mut dk = vec![0.0f32; numel(k.dims(), "dK")?];
    let mut dv = vec![0.0f32; numel(v.dims(), "dV")?];
    sdpa_backward_into(
        q,
        k,
        v,
        o,
        d_o,
        lse,
        SdpaGrads::new(
            TensorMut::contiguous(&mut dq, q.dims())?,
            TensorMut::contiguous(&mut dk, k.dims())?,
            TensorMut::contiguous(&mut dv, v.dims())?,
        ),
        opts,
    )?;
    Ok(Gradients { dq, dk, dv })
}

/// [`sdpa_backward`] into caller-given (strided) gradient views.
///
/// # Errors
/// As [`sdpa_backward`], and shape errors for the gradient views.
#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward_into<Q: Element, K: Element, V: Element, O: Element, G: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    o: TensorRef<'_, O>,
    d_o: TensorRef<'_, G>,
    lse: &[f32],
    grads: SdpaGrads<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    sdpa_backward_into_dyn(
        q.into(),
        k.into(),
        v.into(),
        o.into(),
        d_o.into(),
        lse,
        grads,
        opts,
    )
}

/// [`sdpa_backward_into`] for tensors whose element types are known only at run time (what
/// the C ABI and the Python package call).
///
/// # Errors
/// As [`sdpa_backward_into`].
#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward_into_dyn(
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    o: DynTensor<'_>,
    d_o: DynTensor<'_>,
    lse: &[f32],
    mut grads: SdpaGrads<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<()> {
    let p = Problem::new(q.dims(), k.dims(), v.dims(), opts)?;
    let out_dims = [p.b, p.hq, p.lq, p.dv];
    for (what, t) in [("output", o.dims()), ("output gradient", d_o.dims())] {
        if t != out_dims {
            return Err(AttnError::Shape {
                what: format!("{what} is {t:?}, expected {out_dims:?}"),
            });
        }
    }
    let rows = p.b * p.hq * p.lq;
    if lse.len() != rows {
        return Err(AttnError::Shape {
            what: format!("lse has {} values, expected B·Hq·Lq = {rows}", lse.len()),
        });
    }
    for (what, g, want) in [
        ("dQ", grads.dq.dims(), q.dims()),
        ("dK", grads.dk.dims(), k.dims()),
        ("dV", grads.dv.dims(), v.dims()),
    ] {
        if g != want {
            return Err(AttnError::Shape {
                what: format!("{what} is {g:?}, expected {want:?}"),
            });
        }
    }
    let (q, k, v) = (AnyRef::of_dyn(q), AnyRef::of_dyn(k), AnyRef::of_dyn(v));
    let (o, d_o) = (AnyRef::of_dyn(o), AnyRef::of_dyn(d_o));
    // D = rowsum(dO ∘ O), one value per query row (O(L) memory).
    let mut dsum = vec![0.0f32; rows];
    {
        let (mut orow, mut grow) = (vec![0.0f32; p.dv], vec![0.0f32; p.dv]);
        for b in 0..p.b {
            for h in 0..p.hq {
                for i in 0..p.lq {
                    if p.dv == 0 {
                        continue;
                    }
                    o.gather(p.isa, o.offset(b, h, i, 0), o.strides()[3], &mut orow)?;
                    d_o.gather(p.isa, d_o.offset(b, h, i, 0), d_o.strides()[3], &mut grow)?;
                    dsum[(b * p.hq + h) * p.lq + i] =
                        orow.iter().zip(&grow).map(|(a, g)| a * g).sum();
                }
            }
        }
    }
    let threads = {
        let work = [p.b, p.hq, p.lq, p.lk, p.d + p.dv]
            .iter()
            .fold(4usize, |a, &x| a.saturating_mul(x));
        match p.par {
            Parallelism::Rayon if work >= 1 << 20 => kernels::parallel::current_threads(),
            _ => 1,
        }
    };
    let inputs = Inputs {
        p: &p,
        q: &q,
        k: &k,
        v: &v,
        d_o: &d_o,
        lse,
        dsum: &dsum,
    };
    let (dqs, dks, dvs) = (grads.dq.strides(), grads.dk.strides(), grads.dv.strides());
    // SAFETY: pass 1's tasks write disjoint rows of dK and dV (one block of keys of one
    // (batch, key/value head) each), pass 2's disjoint rows of dQ; nothing else accesses
    // the views during the call (they are borrowed mutably here).
    let (dq_p, dk_p, dv_p) = unsafe {
        (
            SyncPtr::new(grads.dq.as_mut_ptr()),
            SyncPtr::new(grads.dk.as_mut_ptr()),
            SyncPtr::new(grads.dv.as_mut_ptr()),
        )
    };
    // Pass 1: dK and dV, one task per (b, kvh, key block).
    let nblk = p.lk.div_ceil(BWD_KEY_BLOCK);
    let kv_tasks = p.b * p.hkv * nblk;
    kernels::parallel::try_for_each(threads, kv_tasks, |t| {
        let (bh, blk) = (t / nblk, t % nblk);
        let (b, kvh) = (bh / p.hkv, bh % p.hkv);
        with_ws(|ws| {
            inputs.key_block(ws, b, kvh, blk)?;
            let (j0, kb) = (
                blk * BWD_KEY_BLOCK,
                BWD_KEY_BLOCK.min(p.lk - blk * BWD_KEY_BLOCK),
            );
            for r in 0..kb {
                for x in 0..p.d {
                    // SAFETY: (b, kvh, j0 + r, x) is inside dK; this task owns the row.
                    unsafe {
                        *dk_p
                            .get()
                            .add(b * dks[0] + kvh * dks[1] + (j0 + r) * dks[2] + x * dks[3]) =
                            p.scale * ws.dk[r * p.d + x]
                    };
                }
                for x in 0..p.dv {
                    // SAFETY: as above, for dV.
                    unsafe {
                        *dv_p
                            .get()
                            .add(b * dvs[0] + kvh * dvs[1] + (j0 + r) * dvs[2] + x * dvs[3]) =
                            ws.dv[r * p.dv + x]
                    };
                }
            }
            Ok::<(), AttnError>(())
        })
    })?;
    // Pass 2: dQ, one task per (b, h, query tile).
    let ntile = p.lq.div_ceil(BWD_QUERY_TILE);
    let q_tasks = p.b * p.hq * ntile;
    kernels::parallel::try_for_each(threads, q_tasks, |t| {
        let (bh, tile) = (t / ntile, t % ntile);
        let (b, h) = (bh / p.hq, bh % p.hq);
        with_ws(|ws| {
            inputs.query_tile(ws, b, h, tile)?;
            let i0 = tile * BWD_QUERY_TILE;
            let rows = BWD_QUERY_TILE.min(p.lq - i0);
            for r in 0..rows {
                for x in 0..p.d {
                    // SAFETY: (b, h, i0 + r, x) is inside dQ; this task owns the row.
                    unsafe {
                        *dq_p
                            .get()
                            .add(b * dqs[0] + h * dqs[1] + (i0 + r) * dqs[2] + x * dqs[3]) =
                            p.scale * ws.dq[r * p.d + x]
                    };
                }
            }
            Ok::<(), AttnError>(())
        })
    })
}

/// What both passes read.
struct Inputs<'a, 'p> {
    p: &'p Problem<'a>,
    q: &'p AnyRef<'a>,
    k: &'p AnyRef<'a>,
    v: &'p AnyRef<'a>,
    d_o: &'p AnyRef<'a>,
    lse: &'p [f32],
    dsum: &'p [f32],
}

/// Per-thread scratch of one task.
#[derive(Default)]
struct Ws {
    /// Q tile `rows × d`, dO tile `rows × dv` (dense f32).
    q: Vec<f32>,
    g: Vec<f32>,
    /// K block `kb × d`, V block `kb × dv`.
    k: Vec<f32>,
    v: Vec<f32>,
    /// S, then P (`rows × BWD_KEY_BLOCK`); dP, then dS; the soft-cap derivative.
    s: Vec<f32>,
    dp: Vec<f32>,
    cap: Vec<f32>,
    /// Accumulators: dK and dV of a key block (unscaled dK), dQ of a tile (unscaled).
    dk: Vec<f32>,
    dv: Vec<f32>,
    dq: Vec<f32>,
    iv: Vec<(usize, usize)>,
}

thread_local! {
    static WS: RefCell<Vec<Ws>> = const { RefCell::new(Vec::new()) };
}

fn with_ws<R>(f: impl FnOnce(&mut Ws) -> R) -> R {
    let mut ws = WS.with(|w| w.borrow_mut().pop()).unwrap_or_default();
    let r = f(&mut ws);
    WS.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < 4 {
            w.push(ws);
        }
    });
    r
}

/// Gathers rows `r0 .. r0 + n` of head `(b, h)` of `t` into `dst` (`n × cols`, dense f32).
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    isa: Isa,
    t: &AnyRef<'_>,
    b: usize,
    h: usize,
    r0: usize,
    n: usize,
    cols: usize,
    dst: &mut Vec<f32>,
) -> Result<()> {
    dst.clear();
    dst.resize(n * cols, 0.0);
    if cols == 0 {
        return Ok(());
    }
    let st = t.strides()[3];
    for r in 0..n {
        t.gather(
            isa,
            t.offset(b, h, r0 + r, 0),
            st,
            &mut dst[r * cols..(r + 1) * cols],
        )?;
    }
    Ok(())
}

impl Inputs<'_, '_> {
    /// Recomputes `P` and `dS` of query rows `i0 .. i0 + rows` of head `h` (gathered in
    /// `ws.q`, `ws.g`) against the key block `j0 .. j0 + kb` (in `ws.k`, `ws.v`), with
    /// `ws.iv` holding each row's visible interval: `P` lands in `ws.s`, `dS` in `ws.dp`
    /// (row stride [`BWD_KEY_BLOCK`]). Returns false if no row sees any key of the block
    /// (nothing computed).
    fn probs(
        &self,
        ws: &mut Ws,
        b: usize,
        h: usize,
        i0: usize,
        j0: usize,
        kb: usize,
    ) -> Result<bool> {
        let p = self.p;
        let rows = ws.iv.len();
        let j1 = j0 + kb;
        let seen = |&(lo, hi): &(usize, usize)| lo < hi && lo < j1 && hi > j0;
        if !ws.iv.iter().any(seen) {
            return Ok(false);
        }
        let clean = !p.has_score_mods() && ws.iv.iter().all(|&(lo, hi)| lo <= j0 && hi >= j1);
        let ld = BWD_KEY_BLOCK;
        ws.s.resize(rows * ld, 0.0);
        ws.dp.resize(rows * ld, 0.0);
        let (d, dv) = (p.d, p.dv);
        // S = scale·Q·Kᵀ, dP = dO·Vᵀ.
        gemm_with(
            p.isa,
            Parallelism::Sequential,
            p.scale,
            MatRef::new(&ws.q, rows, d, d, 1)?,
            MatRef::new(&ws.k, kb, d, d, 1)?.t(),
            0.0,
            MatMut::new(&mut ws.s, rows, kb, ld, 1)?,
        )?;
        gemm_with(
            p.isa,
            Parallelism::Sequential,
            1.0,
            MatRef::new(&ws.g, rows, dv, dv, 1)?,
            MatRef::new(&ws.v, kb, dv, dv, 1)?.t(),
            0.0,
            MatMut::new(&mut ws.dp, rows, kb, ld, 1)?,
        )?;
        if p.softcap.is_some() {
            ws.cap.resize(rows * ld, 0.0);
        } else {
            ws.cap.clear();
        }
        for r in 0..rows {
            let i = i0 + r;
            let row = &mut ws.s[r * ld..r * ld + kb];
            if !seen(&ws.iv[r]) {
                row.fill(0.0);
                ws.dp[r * ld..r * ld + kb].fill(0.0);
                continue;
            }
            if let Some(cap) = p.softcap {
                let inv = 1.0 / cap;
                for (c, &s) in ws.cap[r * ld..r * ld + kb].iter_mut().zip(row.iter()) {
                    let t = (s * inv).tanh();
                    *c = 1.0 - t * t;
                }
            }
            if !clean {
                p.modify_row(b, h, i, j0, row);
            }
            let row_id = (b * p.hq + h) * p.lq + i;
            let lse = self.lse[row_id];
            let dsum = self.dsum[row_id];
            if lse == f32::NEG_INFINITY {
                // No visible key in the forward: zero weights.
                row.fill(0.0);
            } else {
                for s in row.iter_mut() {
                    *s -= lse;
                }
                kernels::exp::exp_inplace_with(p.isa, row)?;
            }
            let dprow = &mut ws.dp[r * ld..r * ld + kb];
            if p.softcap.is_some() {
                let cap = &ws.cap[r * ld..r * ld + kb];
                for ((g, &pr), &c) in dprow.iter_mut().zip(row.iter()).zip(cap) {
                    *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) * c };
                }
            } else {
                for (g, &pr) in dprow.iter_mut().zip(row.iter()) {
                    *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) };
                }
            }
        }
        Ok(true)
    }

    /// Visible intervals of query rows `i0 .. i0 + rows` of batch `b` into `ws.iv`.
    fn intervals(&self, ws: &mut Ws, b: usize, i0: usize, rows: usize) {
        ws.iv.clear();
        ws.iv
            .extend((i0..i0 + rows).map(|i| self.p.key_interval(b, i)));
    }

    /// Pass 1: `dK` (unscaled) and `dV` of key block `blk` of `(b, kvh)` into `ws.dk`,
    /// `ws.dv`.
    fn key_block(&self, ws: &mut Ws, b: usize, kvh: usize, blk: usize) -> Result<()> {
        let p = self.p;
        let (d, dv) = (p.d, p.dv);
        let j0 = blk * BWD_KEY_BLOCK;
        let kb = BWD_KEY_BLOCK.min(p.lk - j0);
        ws.dk.clear();
        ws.dk.resize(kb * d, 0.0);
        ws.dv.clear();
        ws.dv.resize(kb * dv, 0.0);
        if j0 >= p.kv_len(b) {
            return Ok(());
        }
        gather_rows(p.isa, self.k, b, kvh, j0, kb, d, &mut ws.k)?;
        gather_rows(p.isa, self.v, b, kvh, j0, kb, dv, &mut ws.v)?;
        for h in kvh * p.group()..(kvh + 1) * p.group() {
            for i0 in (0..p.lq).step_by(BWD_QUERY_TILE) {
                let rows = BWD_QUERY_TILE.min(p.lq - i0);
                self.intervals(ws, b, i0, rows);
                let j1 = j0 + kb;
                if !ws.iv.iter().any(|&(lo, hi)| lo < hi && lo < j1 && hi > j0) {
                    continue;
                }
                gather_rows(p.isa, self.q, b, h, i0, rows, d, &mut ws.q)?;
                gather_rows(p.isa, self.d_o, b, h, i0, rows, dv, &mut ws.g)?;
                if !self.probs(ws, b, h, i0, j0, kb)? {
                    continue;
                }
                let ld = BWD_KEY_BLOCK;
                // dV += Pᵀ·dO, dK += dSᵀ·Q.
                gemm_with(
                    p.isa,
                    Parallelism::Sequential,
                    1.0,
                    MatRef::new(&ws.s, rows, kb, ld, 1)?.t(),
                    MatRef::new(&ws.g, rows, dv, dv, 1)?,
                    1.0,
                    MatMut::new(&mut ws.dv, kb, dv, dv, 1)?,
                )?;
                gemm_with(
                    p.isa,
                    Parallelism::Sequential,
                    1.0,
                    MatRef::new(&ws.dp, rows, kb, ld, 1)?.t(),
                    MatRef::new(&ws.q, rows, d, d, 1)?,
                    1.0,
                    MatMut::new(&mut ws.dk, kb, d, d, 1)?,
                )?;
            }
        }
        Ok(())
    }

    /// Pass 2: `dQ` (unscaled) of query tile `tile` of `(b, h)` into `ws.dq`.
    fn query_tile(&self, ws: &mut Ws, b: usize, h: usize, tile: usize) -> Result<()> {
        let p = self.p;
        let (d, dv) = (p.d, p.dv);
        let i0 = tile * BWD_QUERY_TILE;
        let rows = BWD_QUERY_TILE.min(p.lq - i0);
        let kvh = h / p.group();
        ws.dq.clear();
        ws.dq.resize(rows * d, 0.0);
        self.intervals(ws, b, i0, rows);
        let (tlo, thi) = ws
            .iv
            .iter()
            .filter(|(lo, hi)| lo < hi)
            .fold((usize::MAX, 0), |(a, z), &(lo, hi)| (a.min(lo), z.max(hi)));
        if tlo >= thi || d == 0 {
            return Ok(());
        }
        gather_rows(p.isa, self.q, b, h, i0, rows, d, &mut ws.q)?;
        gather_rows(p.isa, self.d_o, b, h, i0, rows, dv, &mut ws.g)?;
        for blk in tlo / BWD_KEY_BLOCK..thi.div_ceil(BWD_KEY_BLOCK) {
            let j0 = blk * BWD_KEY_BLOCK;
            let kb = BWD_KEY_BLOCK.min(p.lk - j0);
            gather_rows(p.isa, self.k, b, kvh, j0, kb, d, &mut ws.k)?;
            gather_rows(p.isa, self.v, b, kvh, j0, kb, dv, &mut ws.v)?;
            if !self.probs(ws, b, h, i0, j0, kb)? {
                continue;
            }
            // A NaN or infinity in the block: a key row whose dS column is all zero (no row
            // of the tile sees it) contributes nothing and is zeroed, so the GEMM stays
            // exact; if a row sees such a key, the zero-skipping kernel keeps it out of the
            // rows that do not.
            let mut skip_zeros = false;
            if !all_finite(&ws.k) {
                for j in 0..kb {
                    let krow = &mut ws.k[j * d..(j + 1) * d];
                    if all_finite(krow) {
                        continue;
                    }
                    if (0..rows).all(|r| ws.dp[r * BWD_KEY_BLOCK + j] == 0.0) {
                        krow.fill(0.0);
                    } else {
                        skip_zeros = true;
                    }
                }
            }
            let ds = MatRef::new(&ws.dp, rows, kb, BWD_KEY_BLOCK, 1)?;
            let kblk = MatRef::new(&ws.k, kb, d, d, 1)?;
            let dq = MatMut::new(&mut ws.dq, rows, d, d, 1)?;
            if skip_zeros {
                axpy_rows_with(p.isa, ds, kblk, dq)?;
            } else {
                gemm_with(p.isa, Parallelism::Sequential, 1.0, ds, kblk, 1.0, dq)?;
            }
        }
        Ok(())
    }
}
