//! The split into tasks: the row statistics `D = rowsum(dO ∘ O)`, one task per
//! `(batch, key/value head, chunk of keys)` writing its rows of dK and dV, and the chunks'
//! dQ shares summed in chunk order at the end (see the module docs on determinism); the
//! sink logits' gradient, summed on the calling thread.

use super::passes::Inputs;
use super::workspace::with_ws;
use super::{SdpaGrads, BWD_KEY_BLOCK, BWD_KEY_CHUNK, BWD_MAX_CHUNKS};
use crate::error::Result;
use crate::kv::KvSource;
use crate::options::Problem;
use crate::tensor::{AnyRef, DynTensor};
use crate::SyncPtr;
use kernels::Parallelism;

/// The backward pass of `p` into `grads` (shapes already checked).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    p: Problem<'_>,
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    o: DynTensor<'_>,
    d_o: DynTensor<'_>,
    lse: &[f32],
    mut grads: SdpaGrads<'_>,
) -> Result<()> {
    let rows = p.b * p.hq * p.lq;
    let q = AnyRef::of_dyn(q);
    let k = KvSource::dense(AnyRef::of_dyn(k), p.lk);
    let v = KvSource::dense(AnyRef::of_dyn(v), p.lk);
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
    if let (Some(ds), Some(sinks)) = (grads.dsinks.as_deref_mut(), p.sinks) {
        sink_grads(&p, sinks, lse, &dsum, ds);
    }
    let threads = {
        let work = [p.b, p.hq, p.lq, p.lk, p.d + p.dv]
            .iter()
            .fold(4usize, |a, &x| a.saturating_mul(x));
        match p.par {
            Parallelism::Rayon => crate::gates::BACKWARD_GATE.threads(
                p.isa,
                work as f64,
                kernels::parallel::current_threads(),
            ),
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
    let units = [p.b, p.hq, p.lq, p.lk, p.d + p.dv]
        .iter()
        .fold(4usize, |a, &x| a.saturating_mul(x)) as f64;
    let gated = crate::gates::BACKWARD_GATE.run(p.isa, units, threads, || {
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
        })
    });
    gated?;
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

/// The sink logits' gradient `dσ_h = −Σ_{b, i} exp(σ_h − lse_{b,h,i})·D_{b,h,i}` into
/// `ds` (`[Hq]`), each head's sum in f64 over batches, then rows, in order (so it does not
/// depend on the thread count). A sink of `-inf` has no weight and gets 0.
fn sink_grads(p: &Problem<'_>, sinks: &[f32], lse: &[f32], dsum: &[f32], ds: &mut [f32]) {
    for (h, (d, &s)) in ds.iter_mut().zip(sinks).enumerate() {
        let mut acc = 0.0f64;
        if s != f32::NEG_INFINITY {
            for b in 0..p.b {
                let row0 = (b * p.hq + h) * p.lq;
                for (&l, &dd) in lse[row0..row0 + p.lq].iter().zip(&dsum[row0..]) {
                    // lse ≥ σ_h whenever the sink is finite (it joins the sum); a -inf
                    // there (inconsistent input) is a row with no weight.
                    if l != f32::NEG_INFINITY {
                        acc += (s as f64 - l as f64).exp() * dd as f64;
                    }
                }
            }
        }
        *d = -acc as f32;
    }
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
