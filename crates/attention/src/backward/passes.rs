//! One task's passes: for every block of its keys, every query head of the group and
//! every query tile, `P` and `dS` recomputed from the forward's LSE, then `dV`, `dK` and
//! the task's dQ share (five tile products, as in FlashAttention-2).

use super::workspace::{gather_rows, pack_into, Ws};
use super::{BWD_KEY_BLOCK, BWD_QUERY_TILE, BWD_QUERY_TILE_DENSE};
use crate::error::Result;
use crate::kv::KvSource;
use crate::options::Problem;
use crate::tensor::AnyRef;
use kernels::dtype::all_finite;
use kernels::gemm::packed::{gemm_packed_b, PackedB};
use kernels::gemm::{MatMut, MatRef};
use kernels::gemv::axpy_rows_with;
use kernels::softmax::backward::{ds_row_with, sub_exp_row_with};

/// Query rows per tile for `p` (depends on the options only).
fn query_tile(p: &Problem<'_>) -> usize {
    if p.causal || p.window_left.is_some() || p.window_right.is_some() {
        BWD_QUERY_TILE
    } else {
        BWD_QUERY_TILE_DENSE
    }
}

/// What every task reads.
pub(super) struct Inputs<'a, 'p> {
    pub(super) p: &'p Problem<'a>,
    pub(super) q: &'p AnyRef<'a>,
    pub(super) k: &'p KvSource<'a>,
    pub(super) v: &'p KvSource<'a>,
    pub(super) d_o: &'p AnyRef<'a>,
    pub(super) lse: &'p [f32],
    pub(super) dsum: &'p [f32],
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
    pub(super) fn chunk(
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
        let n_valid = p.kv_len(b).min(self.k.len(b, kvh));
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
            self.k.gather_rows(p.isa, b, kvh, j0, kb, d, &mut ws.k)?;
            self.v.gather_rows(p.isa, b, kvh, j0, kb, dv, &mut ws.v)?;
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
                    let skip_zeros = crate::nonfinite::zero_unseen_nonfinite_rows(
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
        crate::flash::group_limits(&ws.iv, mr, j0, j1, &mut ws.lim);
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
                sub_exp_row_with(p.isa, row, lse)?;
            }
            let dprow = &mut ws.dp[r * ld..r * ld + kb];
            let cap = p.softcap.map(|_| &ws.cap[r * ld..r * ld + kb]);
            ds_row_with(p.isa, dprow, row, cap, dsum)?;
        }
        Ok(true)
    }
}
