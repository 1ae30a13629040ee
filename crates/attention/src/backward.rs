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
//! One task per `(batch, key/value head, chunk of keys)` (chunks of at
//! least [`BWD_KEY_CHUNK`] keys, at most [`BWD_MAX_CHUNKS`] per head, fixed by `Lk`
//! alone). A task walks its keys in blocks of [`BWD_KEY_BLOCK`]; for each block it loops
//! over every query head of the group and every tile of [`BWD_QUERY_TILE`] queries ([`BWD_QUERY_TILE_DENSE`] without a causal mask or
//! window) in a
//! fixed order, accumulating the block's `dK` and `dV` (which it owns) and its share of
//! the group's `dQ` in a buffer of its own. The shares are summed in chunk order at the
//! end. Nothing is reduced across tasks in an order that timing could change, so the
//! gradients are bit-identical at any thread count, without atomics; the memory beyond
//! the inputs and outputs is the row statistics (`D`, O(L)), the shares (at most
//! [`BWD_MAX_CHUNKS`] × dQ's size) and per-thread tiles.
//!
//! Per (block, tile): `S = scale·Q·Kᵀ` and `dP = dO·Vᵀ` with Kᵀ and Vᵀ packed once per
//! block, `dV += Pᵀ·dO` and `dK += dSᵀ·Q` with the group's Q and dO tiles packed once per
//! task, `dQ += dS·K` with K packed once per block: five tile products, as in
//! FlashAttention-2.
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
use kernels::gemm::packed::{gemm_packed_b, PackedB};
use kernels::gemm::{MatMut, MatRef};
use kernels::gemv::axpy_rows_with;
use kernels::{Isa, Parallelism};
use std::cell::RefCell;

/// Keys per block of the backward pass (a constant: the split never depends on threads).
pub const BWD_KEY_BLOCK: usize = 128;
/// Query rows per tile of the backward pass.
pub const BWD_QUERY_TILE: usize = 128;
/// Query rows per tile when every row sees every key (no causal mask, no window): no
/// diagonal is wasted, and longer tiles amortise the per-tile work better.
pub const BWD_QUERY_TILE_DENSE: usize = 192;

/// Query rows per tile for `p` (depends on the options only).
fn query_tile(p: &Problem<'_>) -> usize {
    if p.causal || p.window_left.is_some() || p.window_right.is_some() {
        BWD_QUERY_TILE
    } else {
        BWD_QUERY_TILE_DENSE
    }
}

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
    // SAFETY: the tasks write disjoint rows of dK and dV (one chunk of keys of one
    // (batch, key/value head) each); dQ is written after them, by this thread only; nothing
    // else accesses the views during the call (they are borrowed mutably here).
    let (dq_p, dk_p, dv_p) = unsafe {
        (
            SyncPtr::new(grads.dq.as_mut_ptr()),
            SyncPtr::new(grads.dk.as_mut_ptr()),
            SyncPtr::new(grads.dv.as_mut_ptr()),
        )
    };
    // One task per (b, kvh, key chunk): the chunk's dK and dV, and its share of the
    // group's dQ in a buffer of its own; the shares are summed in chunk order after.
    let (chunks, chunk_len) = key_chunks(p.lk);
    let group = p.group();
    let part_len = (group * p.lq * p.d).max(1);
    let tasks = p.b * p.hkv * chunks;
    let mut parts = vec![0.0f32; tasks * part_len];
    kernels::parallel::try_for_each_chunk_mut(threads, &mut parts, part_len, |t, part| {
        let (bh, c) = (t / chunks, t % chunks);
        let (b, kvh) = (bh / p.hkv, bh % p.hkv);
        let (j_lo, j_hi) = (c * chunk_len, ((c + 1) * chunk_len).min(p.lk));
        with_ws(|ws| {
            inputs.chunk(ws, b, kvh, j_lo, j_hi, part, |j0, kb, dk, dv| {
                for r in 0..kb {
                    let j = j0 + r;
                    // SAFETY: rows (b, kvh, j) of dK and dV are inside their views, and
                    // this task owns the rows of its key chunk.
                    unsafe {
                        write_row(
                            dk_p,
                            b * dks[0] + kvh * dks[1] + j * dks[2],
                            dks[3],
                            &dk[r * p.d..(r + 1) * p.d],
                            p.scale,
                        );
                        write_row(
                            dv_p,
                            b * dvs[0] + kvh * dvs[1] + j * dvs[2],
                            dvs[3],
                            &dv[r * p.dv..(r + 1) * p.dv],
                            1.0,
                        );
                    }
                }
            })
        })
    })?;
    // dQ = scale · Σ_c part_c, in chunk order.
    let mut row = vec![0.0f32; p.d];
    for b in 0..p.b {
        for kvh in 0..p.hkv {
            let base = (b * p.hkv + kvh) * chunks;
            for g in 0..group {
                let h = kvh * group + g;
                for i in 0..p.lq {
                    let e = (g * p.lq + i) * p.d;
                    row.copy_from_slice(&parts[base * part_len + e..][..p.d]);
                    for c in 1..chunks {
                        let share = &parts[(base + c) * part_len + e..][..p.d];
                        for (a, &x) in row.iter_mut().zip(share) {
                            *a += x;
                        }
                    }
                    // SAFETY: row (b, h, i) of dQ is inside its view; the tasks are done
                    // and this loop is the only writer.
                    unsafe {
                        write_row(
                            dq_p,
                            b * dqs[0] + h * dqs[1] + i * dqs[2],
                            dqs[3],
                            &row,
                            p.scale,
                        )
                    };
                }
            }
        }
    }
    Ok(())
}

/// Writes `scale · src` to the `src.len()` elements of a gradient row starting at `base`,
/// `stride` apart.
///
/// # Safety
/// The elements are inside the view behind `dst`, and no other thread accesses them
/// meanwhile.
unsafe fn write_row(dst: SyncPtr, base: usize, stride: usize, src: &[f32], scale: f32) {
    if src.is_empty() {
        return;
    }
    if stride == 1 {
        // SAFETY: the caller's contract: a contiguous row inside the view, owned here.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.get().add(base), src.len()) };
        for (o, &x) in out.iter_mut().zip(src) {
            *o = scale * x;
        }
    } else {
        for (x, &v) in src.iter().enumerate() {
            // SAFETY: as above, element x of the strided row.
            unsafe { *dst.get().add(base + x * stride) = scale * v };
        }
    }
}

/// Keys per task of the backward pass: at least [`BWD_KEY_CHUNK`], and at most
/// [`BWD_MAX_CHUNKS`] chunks per key/value head, so that the chunks' dQ shares take at
/// most that many times dQ's size. Returns `(chunks, keys per chunk)`; both depend on `Lk`
/// only (never on the thread count).
fn key_chunks(lk: usize) -> (usize, usize) {
    let chunks = lk.div_ceil(BWD_KEY_CHUNK).clamp(1, BWD_MAX_CHUNKS);
    let len = lk.div_ceil(chunks).div_ceil(BWD_KEY_BLOCK) * BWD_KEY_BLOCK;
    (lk.div_ceil(len.max(1)).max(1), len.max(1))
}

/// Keys per task, at least (the chunk count is `ceil(Lk / BWD_KEY_CHUNK)`, at most [`BWD_MAX_CHUNKS`]).
pub const BWD_KEY_CHUNK: usize = 1024;
/// Key chunks per key/value head, at most.
pub const BWD_MAX_CHUNKS: usize = 4;

/// What every task reads.
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
struct Ws {
    /// The group's Q and dO, dense f32 (`group·Lq × d`, `group·Lq × dv`), and per query
    /// tile both packed as GEMM B operands (rows × d, rows × dv).
    q: Vec<f32>,
    g: Vec<f32>,
    q_packs: Vec<PackedB>,
    g_packs: Vec<PackedB>,
    /// K block `kb × d` and V block `kb × dv` (dense f32), packed as Kᵀ, Vᵀ and K.
    k: Vec<f32>,
    v: Vec<f32>,
    kt_pack: Option<PackedB>,
    vt_pack: Option<PackedB>,
    k_pack: Option<PackedB>,
    /// A K block's copy with unseen non-finite rows zeroed, and its pack.
    k_fix: Vec<f32>,
    k_fix_pack: Option<PackedB>,
    /// S, then P (`rows × BWD_KEY_BLOCK`); dP, then dS; the soft-cap derivative.
    s: Vec<f32>,
    dp: Vec<f32>,
    cap: Vec<f32>,
    /// dK (unscaled) and dV of the current key block.
    dk: Vec<f32>,
    dv: Vec<f32>,
    iv: Vec<(usize, usize)>,
    /// Per row group of the current tile: the keys of the block it computes.
    lim: Vec<usize>,
}

impl Ws {
    fn new() -> Self {
        Ws {
            q: Vec::new(),
            g: Vec::new(),
            q_packs: Vec::new(),
            g_packs: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            kt_pack: None,
            vt_pack: None,
            k_pack: None,
            k_fix: Vec::new(),
            k_fix_pack: None,
            s: Vec::new(),
            dp: Vec::new(),
            cap: Vec::new(),
            dk: Vec::new(),
            dv: Vec::new(),
            iv: Vec::new(),
            lim: Vec::new(),
        }
    }
}

thread_local! {
    static WS: RefCell<Vec<Ws>> = const { RefCell::new(Vec::new()) };
}

fn with_ws<R>(f: impl FnOnce(&mut Ws) -> R) -> R {
    let mut ws = WS.with(|w| w.borrow_mut().pop()).unwrap_or_else(Ws::new);
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
    dst: &mut [f32],
) -> Result<()> {
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

/// `pack` (made for `isa` if missing or made for another variant) holding `m`.
fn pack_into(slot: &mut Option<PackedB>, isa: Isa, m: MatRef<'_>) -> Result<()> {
    if slot.as_ref().is_none_or(|p| p.isa() != isa) {
        *slot = Some(PackedB::new(isa)?);
    }
    if let Some(p) = slot.as_mut() {
        p.pack(m)?;
    }
    Ok(())
}

impl Inputs<'_, '_> {
    /// Visible intervals of query rows `i0 .. i0 + rows` of batch `b` into `ws.iv`.
    fn intervals(&self, ws: &mut Ws, b: usize, i0: usize, rows: usize) {
        ws.iv.clear();
        ws.iv
            .extend((i0..i0 + rows).map(|i| self.p.key_interval(b, i)));
    }

    /// One task: keys `j_lo .. j_hi` of `(b, kvh)`. For every block of them, `dK`
    /// (unscaled) and `dV` over every query of the group are handed to `write(j0, kb, dk,
    /// dv)`; the group's `dQ` share (unscaled, `group·Lq × d`) accumulates in `part`.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        ws: &mut Ws,
        b: usize,
        kvh: usize,
        j_lo: usize,
        j_hi: usize,
        part: &mut [f32],
        mut write: impl FnMut(usize, usize, &[f32], &[f32]),
    ) -> Result<()> {
        let p = self.p;
        let (d, dv, group, qt) = (p.d, p.dv, p.group(), query_tile(p));
        let tiles = p.lq.div_ceil(qt);
        let n_valid = p.kv_len(b);
        // The group's Q and dO, gathered and packed once per task.
        let seen_any = j_lo < n_valid;
        if seen_any {
            ws.q.resize(group * p.lq * d, 0.0);
            ws.g.resize(group * p.lq * dv, 0.0);
            while ws.q_packs.len() < group * tiles {
                ws.q_packs.push(PackedB::new(p.isa)?);
                ws.g_packs.push(PackedB::new(p.isa)?);
            }
            for g in 0..group {
                let h = kvh * group + g;
                let (qo, go) = (g * p.lq * d, g * p.lq * dv);
                gather_rows(p.isa, self.q, b, h, 0, p.lq, d, &mut ws.q[qo..])?;
                gather_rows(p.isa, self.d_o, b, h, 0, p.lq, dv, &mut ws.g[go..])?;
                for t in 0..tiles {
                    let (i0, rows) = (t * qt, qt.min(p.lq - t * qt));
                    let slot = g * tiles + t;
                    if ws.q_packs[slot].isa() != p.isa {
                        ws.q_packs[slot] = PackedB::new(p.isa)?;
                        ws.g_packs[slot] = PackedB::new(p.isa)?;
                    }
                    if d > 0 {
                        ws.q_packs[slot].pack(MatRef::new(&ws.q[qo + i0 * d..], rows, d, d, 1)?)?;
                    }
                    if dv > 0 {
                        ws.g_packs[slot].pack(MatRef::new(
                            &ws.g[go + i0 * dv..],
                            rows,
                            dv,
                            dv,
                            1,
                        )?)?;
                    }
                }
            }
        }
        let ld = BWD_KEY_BLOCK;
        for j0 in (j_lo..j_hi).step_by(BWD_KEY_BLOCK) {
            let kb = BWD_KEY_BLOCK.min(j_hi - j0);
            ws.dk.clear();
            ws.dk.resize(kb * d, 0.0);
            ws.dv.clear();
            ws.dv.resize(kb * dv, 0.0);
            if j0 >= n_valid {
                write(j0, kb, &ws.dk, &ws.dv);
                continue;
            }
            ws.k.resize(kb * d, 0.0);
            ws.v.resize(kb * dv, 0.0);
            gather_rows(p.isa, self.k, b, kvh, j0, kb, d, &mut ws.k)?;
            gather_rows(p.isa, self.v, b, kvh, j0, kb, dv, &mut ws.v)?;
            if d > 0 {
                let km = MatRef::new(&ws.k, kb, d, d, 1)?;
                pack_into(&mut ws.kt_pack, p.isa, km.t())?;
                pack_into(&mut ws.k_pack, p.isa, km)?;
            }
            if dv > 0 {
                pack_into(
                    &mut ws.vt_pack,
                    p.isa,
                    MatRef::new(&ws.v, kb, dv, dv, 1)?.t(),
                )?;
            }
            let k_finite = all_finite(&ws.k);
            for g in 0..group {
                let h = kvh * group + g;
                for t in 0..tiles {
                    let (i0, rows) = (t * qt, qt.min(p.lq - t * qt));
                    self.intervals(ws, b, i0, rows);
                    let slot = g * tiles + t;
                    if !self.probs(ws, b, h, i0, j0, kb, g)? {
                        continue;
                    }
                    let dsm = MatRef::new(&ws.dp, rows, kb, ld, 1)?;
                    // dV += Pᵀ·dO, dK += dSᵀ·Q (the transposed A operands are packed), over
                    // the keys some row of the tile computed (past them P and dS are 0).
                    let wmax = ws.lim.iter().copied().max().unwrap_or(0);
                    if dv > 0 {
                        gemm_packed_b(
                            1.0,
                            MatRef::new(&ws.s, rows, wmax, ld, 1)?.t(),
                            &ws.g_packs[slot],
                            0,
                            1.0,
                            MatMut::new(&mut ws.dv, wmax, dv, dv, 1)?,
                        )?;
                    }
                    if d == 0 {
                        continue;
                    }
                    gemm_packed_b(
                        1.0,
                        MatRef::new(&ws.dp, rows, wmax, ld, 1)?.t(),
                        &ws.q_packs[slot],
                        0,
                        1.0,
                        MatMut::new(&mut ws.dk, wmax, d, d, 1)?,
                    )?;
                    // dQ += dS·K, each row group over its own width.
                    let off = (g * p.lq + i0) * d;
                    if k_finite {
                        if let Some(kp) = &ws.k_pack {
                            let mr = kernels::gemm::tile_of(p.isa).0;
                            if ws.lim.iter().all(|&w| w == kb) {
                                let dq = MatMut::new(&mut part[off..], rows, d, d, 1)?;
                                gemm_packed_b(1.0, dsm, kp, 0, 1.0, dq)?;
                            } else {
                                for (gi, &w) in ws.lim.iter().enumerate() {
                                    let (r0, rg) = (gi * mr, mr.min(rows - gi * mr));
                                    if w > 0 {
                                        gemm_packed_b(
                                            1.0,
                                            MatRef::new(&ws.dp[r0 * ld..], rg, w, ld, 1)?,
                                            kp,
                                            0,
                                            1.0,
                                            MatMut::new(&mut part[off + r0 * d..], rg, d, d, 1)?,
                                        )?;
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    let dq = MatMut::new(&mut part[off..], rows, d, d, 1)?;
                    // A NaN or infinity in the block: a key row whose dS column is all
                    // zero (no row of the tile sees it) contributes nothing and is zeroed
                    // in a copy, so the GEMM gives what it gives on clean values; if a row
                    // sees such a key, the zero-skipping kernel keeps it out of the rows
                    // that do not.
                    ws.k_fix.clear();
                    ws.k_fix.extend_from_slice(&ws.k);
                    let skip_zeros = crate::flash::zero_unseen_nonfinite_rows(
                        &mut ws.k_fix,
                        d,
                        &ws.dp,
                        rows,
                        ld,
                    );
                    let kfm = MatRef::new(&ws.k_fix, kb, d, d, 1)?;
                    if skip_zeros {
                        axpy_rows_with(p.isa, dsm, kfm, dq)?;
                    } else {
                        pack_into(&mut ws.k_fix_pack, p.isa, kfm)?;
                        if let Some(kp) = &ws.k_fix_pack {
                            gemm_packed_b(1.0, dsm, kp, 0, 1.0, dq)?;
                        }
                    }
                }
            }
            write(j0, kb, &ws.dk, &ws.dv);
        }
        Ok(())
    }

    /// Recomputes `P` and `dS` of query rows `i0 .. i0 + rows` of head `h` (group member
    /// `g`) against the key block `j0 .. j0 + kb` (in `ws.k`,
    /// `ws.v` and their packs), with `ws.iv` holding each row's visible interval: `P` lands
    /// in `ws.s`, `dS` in `ws.dp` (row stride [`BWD_KEY_BLOCK`]). Returns false if no row
    /// sees any key of the block (nothing computed).
    #[allow(clippy::too_many_arguments)]
    fn probs(
        &self,
        ws: &mut Ws,
        b: usize,
        h: usize,
        i0: usize,
        j0: usize,
        kb: usize,
        g: usize,
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
        // S = scale·Q·Kᵀ, dP = dO·Vᵀ (Q and dO read in place, Kᵀ and Vᵀ packed). Row
        // groups of MR rows (the microkernel's height) that see fewer keys of the block
        // than its width (the causal diagonal, a window's edge) stop at their own width
        // `lim[g]`: the columns past it are invisible to all their rows.
        let (qo, go) = ((g * p.lq + i0) * d, (g * p.lq + i0) * dv);
        let mr = kernels::gemm::tile_of(p.isa).0;
        ws.lim.clear();
        for grp in ws.iv.chunks(mr) {
            let hi = grp
                .iter()
                .filter(|(lo, hi)| lo < hi)
                .map(|&(_, hi)| hi)
                .max()
                .unwrap_or(j0);
            ws.lim.push(hi.clamp(j0, j1) - j0);
        }
        for (gi, &w) in ws.lim.iter().enumerate() {
            let (r0, rg) = (gi * mr, mr.min(rows - gi * mr));
            match &ws.kt_pack {
                Some(kt) if d > 0 && w > 0 => gemm_packed_b(
                    p.scale,
                    MatRef::new(&ws.q[qo + r0 * d..], rg, d, d, 1)?,
                    kt,
                    0,
                    0.0,
                    MatMut::new(&mut ws.s[r0 * ld..], rg, w, ld, 1)?,
                )?,
                _ => {}
            }
            match &ws.vt_pack {
                Some(vt) if dv > 0 && w > 0 => gemm_packed_b(
                    1.0,
                    MatRef::new(&ws.g[go + r0 * dv..], rg, dv, dv, 1)?,
                    vt,
                    0,
                    0.0,
                    MatMut::new(&mut ws.dp[r0 * ld..], rg, w, ld, 1)?,
                )?,
                _ => {}
            }
            for r in r0..r0 + rg {
                // Columns past `w` are not computed: invisible to the group (P = 0).
                let (srow, dprow) = (
                    &mut ws.s[r * ld..r * ld + kb],
                    &mut ws.dp[r * ld..r * ld + kb],
                );
                if d == 0 {
                    srow[..w].fill(0.0);
                }
                srow[w..].fill(f32::NEG_INFINITY);
                if dv == 0 {
                    dprow.fill(0.0);
                } else {
                    dprow[w..].fill(0.0);
                }
            }
        }
        if p.softcap.is_some() {
            ws.cap.resize(rows * ld, 0.0);
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
                sub_row(p.isa, row, lse);
                kernels::exp::exp_inplace_with(p.isa, row)?;
            }
            let dprow = &mut ws.dp[r * ld..r * ld + kb];
            let cap = p.softcap.map(|_| &ws.cap[r * ld..r * ld + kb]);
            ds_row(p.isa, dprow, row, cap, dsum);
        }
        Ok(true)
    }
}

/// `row −= lse`, before the exp that gives P.
#[inline(always)]
fn sub_body(row: &mut [f32], lse: f32) {
    for s in row.iter_mut() {
        *s -= lse;
    }
}

/// `dS = P ∘ (dP − D) ∘ cap'` in place of `dp`, and exactly 0 where P is 0 (a key the row
/// cannot see: selected, not multiplied, so a non-finite dP stays out).
#[inline(always)]
fn ds_body(dp: &mut [f32], p: &[f32], cap: Option<&[f32]>, dsum: f32) {
    match cap {
        Some(cap) => {
            for ((g, &pr), &c) in dp.iter_mut().zip(p).zip(cap) {
                *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) * c };
            }
        }
        None => {
            for (g, &pr) in dp.iter_mut().zip(p) {
                *g = if pr == 0.0 { 0.0 } else { pr * (*g - dsum) };
            }
        }
    }
}

/// The same element-wise loops compiled for AVX2 and for AVX-512 (vectorised by the
/// compiler: no reduction, so every width gives the same results).
#[cfg(target_arch = "x86_64")]
mod wide {
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sub_avx2(row: &mut [f32], lse: f32) {
        super::sub_body(row, lse)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn ds_avx2(dp: &mut [f32], p: &[f32], cap: Option<&[f32]>, dsum: f32) {
        super::ds_body(dp, p, cap, dsum)
    }
    #[target_feature(enable = "avx512f")]
    pub(super) fn sub_avx512(row: &mut [f32], lse: f32) {
        super::sub_body(row, lse)
    }
    #[target_feature(enable = "avx512f")]
    pub(super) fn ds_avx512(dp: &mut [f32], p: &[f32], cap: Option<&[f32]>, dsum: f32) {
        super::ds_body(dp, p, cap, dsum)
    }
}

/// Which compiled width the element-wise loops of variant `isa` run at: 2 (AVX-512),
/// 1 (AVX2) or 0 (the baseline build), as far as the CPU has it.
fn width(isa: Isa) -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return 2,
            Isa::Avx2Fma | Isa::Avx512
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma") =>
            {
                return 1
            }
            _ => {}
        }
    }
    let _ = isa;
    0
}

fn sub_row(isa: Isa, row: &mut [f32], lse: f32) {
    match width(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `width` returned 2 only where the CPU has AVX-512F.
        2 => unsafe { wide::sub_avx512(row, lse) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `width` returned 1 only where the CPU has AVX2 and FMA.
        1 => unsafe { wide::sub_avx2(row, lse) },
        _ => sub_body(row, lse),
    }
}

fn ds_row(isa: Isa, dp: &mut [f32], p: &[f32], cap: Option<&[f32]>, dsum: f32) {
    match width(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `width` returned 2 only where the CPU has AVX-512F.
        2 => unsafe { wide::ds_avx512(dp, p, cap, dsum) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `width` returned 1 only where the CPU has AVX2 and FMA.
        1 => unsafe { wide::ds_avx2(dp, p, cap, dsum) },
        _ => ds_body(dp, p, cap, dsum),
    }
}
