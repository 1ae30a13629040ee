//! The materialised path: per head, `S = scale·Q·Kᵀ` (GEMM) → score mods and row softmax
//! (vectorised exp) → `O = P·V` (GEMM). It holds an `Lq × Lk` buffer per head in flight and
//! is used when the attention weights are asked for (or when forced for profiling).

use crate::error::Result;
use crate::job::Job;
use crate::tensor::{with_mat, TensorMut};
use crate::SyncPtr;
use kernels::gemm::gemm_with;
use kernels::gemm::{MatMut, MatRef};
use kernels::gemv::axpy_rows_with;
use kernels::softmax::online::exp_row_update;
use kernels::Parallelism;

/// Runs the materialised path, writing the output, and the weights / LSE when given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(job: &Job<'_>, weights: Option<&mut TensorMut<'_>>) -> Result<()> {
    let (p, q, k, v) = (&job.p, &job.q, &job.k, &job.v);
    let out_p = job.out;
    let heads: Vec<(usize, usize)> = (0..p.b)
        .flat_map(|b| (0..p.hq).map(move |h| (b, h)))
        .collect();
    let threads = kernels::parallel::current_threads();
    let par_heads = p.par == Parallelism::Rayon && threads > 1 && heads.len() >= threads;
    let inner_par = if par_heads {
        Parallelism::Sequential
    } else {
        p.par
    };
    let os = job.os;
    let ws_strides = weights.as_ref().map(|w| w.strides());
    // SAFETY: each head writes only its own rows of out / weights / lse; nothing else
    // touches them during the call.
    let w_p = weights.map(|w| unsafe { SyncPtr::new(w.as_mut_ptr()) });
    let qs = q.strides();
    // Per (batch, key/value head): a dense copy of V where it holds a NaN or an infinity
    // (found once here, not once per query head of the group).
    let mut v_nonfinite = Vec::with_capacity(p.b * p.hkv);
    let mut scratch = Vec::new();
    for b in 0..p.b {
        for kvh in 0..p.hkv {
            v_nonfinite.push(match (p.lk, p.dv) {
                (0, _) | (_, 0) => None,
                (lk, dv) => {
                    let vs = v.contiguous(p.isa, b, kvh, 0, lk, dv, &mut scratch)?;
                    with_mat!(vs.mem, (vs.base, lk, dv, vs.row_stride, vs.col_stride), m => {
                        crate::nonfinite::dense_if_nonfinite(m)
                    })
                }
            });
        }
    }
    let one = |&(b, h): &(usize, usize)| -> Result<()> {
        let kvh = h / p.group();
        let (lq, lk) = (p.lq, p.lk);
        let mut s = vec![0.0f32; lq * lk];
        if lq == 0 {
            return Ok(());
        }
        // K and V of the head as one matrix each (a dense source's own rows: no copy).
        let (mut k_scratch, mut v_scratch) = (Vec::new(), Vec::new());
        if lk > 0 {
            // Q[b, h] is lq×d and K[b, kvh] lk×d inside their checked views (all dims are
            // non-zero here, or d = 0 and nothing is read); S is a fresh lq×lk buffer.
            let sm = MatMut::new(&mut s, lq, lk, lk, 1)?;
            let qb = q.offset(b, h, 0, 0);
            let ks = k.contiguous(p.isa, b, kvh, 0, lk, p.d, &mut k_scratch)?;
            with_mat!(q, (qb, lq, p.d, qs[2], qs[3]), qm => {
                with_mat!(ks.mem, (ks.base, lk, p.d, ks.row_stride, ks.col_stride), km => {
                    gemm_with(p.isa, inner_par, p.scale, qm, km.t(), 0.0, sm)?
                })
            });
        }
        for i in 0..lq {
            let row = &mut s[i * lk..(i + 1) * lk];
            p.modify_row(b, h, i, 0, row);
            let (mx, sum) = exp_row_update(p.isa, row, 1.0, f32::NEG_INFINITY)?;
            let (inv, val) = p.finish(h, mx, sum);
            for x in row.iter_mut() {
                *x *= inv;
            }
            if let Some(lse) = job.lse {
                // SAFETY: (b, h, i) is an entry of the job; this head owns it.
                unsafe { lse.store(b, h, i, val) };
            }
            if let (Some(w), Some(wst)) = (w_p, ws_strides) {
                let base = b * wst[0] + h * wst[1] + i * wst[2];
                for (j, &x) in row.iter().enumerate() {
                    // SAFETY: (b, h, i, j) is inside the checked weights view; this head
                    // owns it.
                    unsafe { *w.get().add(base + j * wst[3]) = x };
                }
            }
        }
        if let Some(vd) = &v_nonfinite[b * p.hkv + kvh] {
            // A NaN or infinity in V. A row of V that no query of this head sees (its
            // column of P is all zero) contributes nothing: zeroed in a copy, the GEMM
            // then gives what it gives on clean values, bit for bit. If a query sees such
            // a row, zero weights are skipped instead (keys the other rows cannot see),
            // as the decode path and the reference do, never the GEMM's 0·NaN = NaN.
            let dv = p.dv;
            let mut vc = vd.clone();
            let skip_zeros = crate::nonfinite::zero_unseen_nonfinite_rows(&mut vc, dv, &s, lq, lk);
            let mut o = vec![0.0f32; lq * dv];
            let (pm, vm) = (
                MatRef::new(&s, lq, lk, lk, 1)?,
                MatRef::new(&vc, lk, dv, dv, 1)?,
            );
            let om = MatMut::new(&mut o, lq, dv, dv, 1)?;
            if skip_zeros {
                axpy_rows_with(p.isa, pm, vm, om)?;
            } else {
                gemm_with(p.isa, inner_par, 1.0, pm, vm, 0.0, om)?;
            }
            for i in 0..lq {
                // SAFETY: (b, h, i, 0..dv) is inside the checked output view; this head
                // owns it.
                unsafe { out_p.store_row(job.out_row(b, h, i), os[3], p.dv, |x| o[i * p.dv + x]) };
            }
            return Ok(());
        }
        // P is lq×lk (fresh), V[b, kvh] lk×dv inside its view. With lk = 0 the GEMM only
        // writes zeros (k = 0, beta = 0).
        let pm = MatRef::new(&s, lq, lk, lk, 1)?;
        let vs = v.contiguous(p.isa, b, kvh, 0, lk, p.dv, &mut v_scratch)?;
        match out_p.as_f32() {
            _ if p.dv == 0 => {}
            Some(o) => {
                let (base, rso, cso) = (job.out_row(b, h, 0), os[2] as isize, os[3] as isize);
                with_mat!(vs.mem, (vs.base, lk, p.dv, vs.row_stride, vs.col_stride), vm => {
                    // SAFETY: P is lq×lk (fresh); V[b, kvh] is lk×dv inside its checked
                    // view; O[b, h] is lq×dv inside the checked output view, written by
                    // this head only and overlapping no input (the output is borrowed
                    // mutably for the call).
                    unsafe {
                        kernels::gemm::gemm_ptr_with(
                            p.isa, inner_par, lq, lk, p.dv, 1.0, pm.data().as_ptr(), lk as isize, 1,
                            vm.data().as_ptr(), vs.row_stride as isize, vs.col_stride as isize, 0.0,
                            o.get().wrapping_add(base), rso, cso,
                        )?
                    }
                });
            }
            None => {
                // A 16-bit output: the f32 result rounded once, as it is stored.
                let mut o = vec![0.0f32; lq * p.dv];
                let om = MatMut::new(&mut o, lq, p.dv, p.dv, 1)?;
                with_mat!(vs.mem, (vs.base, lk, p.dv, vs.row_stride, vs.col_stride), vm => {
                    gemm_with(p.isa, inner_par, 1.0, pm, vm, 0.0, om)?
                });
                for i in 0..lq {
                    // SAFETY: (b, h, i, 0..dv) is inside the checked output view; this
                    // head owns it.
                    unsafe {
                        out_p.store_row(job.out_row(b, h, i), os[3], p.dv, |x| o[i * p.dv + x])
                    };
                }
            }
        }
        Ok(())
    };
    let team = if par_heads { threads } else { 1 };
    kernels::parallel::try_for_each(team, heads.len(), |i| one(&heads[i]))
}
