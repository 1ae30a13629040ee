//! Matrix–vector-shaped kernels for decoding, where a few query rows meet a long run of
//! keys and packing K or V would cost as much as using them once.
//!
//! * [`dot_rows_with`]: `S[r, j] = alpha·Σ_x Q[r, x]·K[j, x]` — each key row is loaded once
//!   and dotted with up to four query rows at a time (vertical FMAs over `x`, one
//!   horizontal sum per output).
//! * [`axpy_rows_with`]: `O[r, :] += Σ_j P[r, j]·V[j, :]` — each value row is loaded once
//!   and added into every output row with its weight; zero weights are skipped.
//! * [`dot_rows_indexed_with`], [`axpy_rows_indexed_with`]: the same for rows scattered in
//!   memory (a paged KV cache, any page size): row `j` starts at element `rows[j]`, one
//!   call for the whole run of keys instead of one per page.
//!
//! K and V may be f32, f16 or bf16 ([`Element`]): 16-bit rows are widened in registers
//! (F16C `vcvtph2ps`, a shift for bf16), so decoding from a 16-bit cache reads half the
//! bytes. 8-bit rows (int8, fp8: [`Code`](crate::quant::Code)s) go through
//! the `*_quant_with` twins ([`dot_rows_quant_with`] and friends), which widen each code in
//! registers and fold a per-row scale into the score or the weight. Both stream K and V in
//! memory order and prefetch the rows ahead (P·V spreads its requests over every column
//! slice and key of a block). Each variant's twin is [`dot_rows_ref`] / [`axpy_rows_ref`]
//! (f64 accumulation).

use crate::dispatch::Isa;
use crate::dtype::Element;
use crate::dtype::RowElem;
use crate::error::{KernelError, Result};
use crate::gemm::{MatMut, MatRef};
use crate::simd::{dispatch, load_row_raw, IsaKernel, SimdOps};

mod axpy;
mod indexed;
mod quant;
mod rows;

use axpy::AxpyRows;

pub use indexed::{axpy_rows_indexed_with, dot_rows_indexed_with};
pub use quant::{
    axpy_rows_indexed_quant_with, axpy_rows_quant_ref, axpy_rows_quant_with,
    dot_rows_indexed_quant_with, dot_rows_quant_ref, dot_rows_quant_with,
};
pub use rows::Heads;
use rows::{Rows, Shift, Strided};

/// How many rows ahead the decode kernels prefetch K and V.
const PREFETCH_ROWS: usize = 16;

/// What [`dot_rows_body`] prefetches of a token's rows over `heads` (rows of `len`
/// values): one run when the heads lie side by side (`stride == len`), else each head's
/// row (a dense `[B, H, L, D]` cache seen through a block table puts a token's heads `L·D`
/// apart: one run over that span would ask for every row between them).
#[derive(Clone, Copy)]
struct Pf {
    rows: usize,
    ld: usize,
    len: usize,
}

impl Pf {
    fn of(heads: Heads, len: usize) -> Pf {
        if heads.stride == len || heads.count == 1 {
            Pf {
                rows: 1,
                ld: 0,
                len: (heads.count - 1) * heads.stride + len,
            }
        } else {
            Pf {
                rows: heads.count,
                ld: heads.stride,
                len,
            }
        }
    }
}

/// Scale `j` of `sc`, or 1 for none (null), times `E::RAW_SCALE` (the power of two the
/// kernels' loads divide `E`'s values by, see [`RowElem::RAW_SCALE`]): `x·1` is `x`, so
/// unscaled rows keep their bits, and the power of two is exact.
///
/// # Safety
/// `sc` is null or readable at `j`.
#[inline(always)]
pub(super) unsafe fn scale_at<E: RowElem>(sc: *const f32, j: usize) -> f32 {
    let s = if sc.is_null() {
        1.0
    } else {
        // SAFETY: caller contract.
        unsafe { *sc.add(j) }
    };
    s * E::RAW_SCALE
}

/// Head `h`'s band of `n` scales in `sc` (null stays null).
#[inline(always)]
pub(super) fn head_scales(sc: *const f32, h: usize, n: usize) -> *const f32 {
    if sc.is_null() {
        sc
    } else {
        sc.wrapping_add(h * n)
    }
}

/// Prefetches `rows` rows of `len` values at `p` (stride `ld`), one request per cache line.
///
/// # Safety
/// The ISA of `S` is present (`p` need not be valid: prefetches never fault).
#[inline(always)]
unsafe fn prefetch_rows<S: SimdOps, E>(p: *const E, rows: usize, ld: usize, len: usize) {
    // One request per 64-byte line.
    let step = (64 / std::mem::size_of::<E>()).max(1);
    for r in 0..rows {
        for x in (0..len).step_by(step) {
            // SAFETY: prefetching never faults; the ISA is present.
            unsafe { S::prefetch(p.wrapping_add(r * ld + x).cast()) };
        }
    }
}

/// # Safety
/// `q` readable for `R` rows of `d` (stride `ldq`), `kj` for `d` values, `s` writable at
/// `r·lds` for `r < R`; the ISA of `S` is present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_group<S: SimdOps, E: RowElem, const R: usize>(
    d: usize,
    alpha: f32,
    scale: f32,
    q: *const f32,
    ldq: usize,
    kj: *const E,
    s: *mut f32,
    lds: usize,
) {
    let dvec = d - d % S::LANES;
    // SAFETY: reads stay within the rows described above; the ISA is present.
    unsafe {
        let mut acc = [S::zero(); R];
        let mut x = 0;
        while x < dvec {
            let kv = load_row_raw::<S, E>(kj.add(x));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::fma(S::load(q.add(r * ldq + x)), kv, *a);
            }
            x += S::LANES;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut t = S::hsum(*a);
            for x in dvec..d {
                t += *q.add(r * ldq + x) * (*kj.add(x)).raw();
            }
            *s.add(r * lds) = (alpha * scale) * t;
        }
    }
}

/// [`dot_group`] for `KJ` key rows at once (`k.row(j) ..= k.row(j + KJ − 1)`): `KJ`
/// times the independent FMA chains and each query vector loaded once per `KJ` keys. Each
/// output is still one chain over `x` in order, so any `KJ` gives the same bits.
///
/// # Safety
/// As [`dot_group`], for key rows `j .. j + KJ` of `k`, and outputs `s + r·lds + t`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_groupk<S: SimdOps, E: RowElem, K: Rows<Elem = E>, const R: usize, const KJ: usize>(
    d: usize,
    alpha: f32,
    sc: *const f32,
    q: *const f32,
    ldq: usize,
    k: K,
    j: usize,
    s: *mut f32,
    lds: usize,
) {
    let dvec = d - d % S::LANES;
    // SAFETY: reads stay within the rows described above; the ISA is present.
    unsafe {
        let kr: [*const E; KJ] = std::array::from_fn(|t| k.row(j + t));
        let mut acc = [[S::zero(); KJ]; R];
        let mut x = 0;
        while x < dvec {
            let mut kv = [S::zero(); KJ];
            for (t, kk) in kv.iter_mut().enumerate() {
                *kk = load_row_raw::<S, E>(kr[t].add(x));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = S::load(q.add(r * ldq + x));
                for t in 0..KJ {
                    a[t] = S::fma(qv, kv[t], a[t]);
                }
            }
            x += S::LANES;
        }
        // Every sum first, then the stores: S may alias Q and the scales as far as the
        // compiler knows, so a store between two sums would make it reload them.
        let f: [f32; KJ] = std::array::from_fn(|t| alpha * scale_at::<E>(sc, j + t));
        // The horizontal sums four accumulators at a time (output `i` is row `i / KJ`,
        // key `i % KJ`), each as `hsum` would give it.
        let mut out = [[0.0f32; KJ]; R];
        let mut i = 0;
        while i + 4 <= R * KJ {
            let h = S::hsum4(std::array::from_fn(|u| acc[(i + u) / KJ][(i + u) % KJ]));
            for (u, &hu) in h.iter().enumerate() {
                out[(i + u) / KJ][(i + u) % KJ] = hu;
            }
            i += 4;
        }
        while i < R * KJ {
            out[i / KJ][i % KJ] = S::hsum(acc[i / KJ][i % KJ]);
            i += 1;
        }
        for (r, o) in out.iter_mut().enumerate() {
            for (t, v) in o.iter_mut().enumerate() {
                for x in dvec..d {
                    *v += *q.add(r * ldq + x) * (*kr[t].add(x)).raw();
                }
                *v *= f[t];
            }
        }
        for (r, o) in out.iter().enumerate() {
            for (t, &v) in o.iter().enumerate() {
                *s.add(r * lds + t) = v;
            }
        }
    }
}

/// S rows `r0..` of one head against key rows `j .. j + 4` (four at a time).
///
/// # Safety
/// As [`dot_rows_body`] for this head's `rows` rows and keys `j .. j + 4`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_key4<S: SimdOps, E: RowElem, K: Rows<Elem = E>>(
    rows: usize,
    d: usize,
    alpha: f32,
    sc: *const f32,
    q: *const f32,
    ldq: usize,
    k: K,
    j: usize,
    s: *mut f32,
    lds: usize,
) {
    // With 16 vector registers (AVX2), 3–4 rows × 4 keys of accumulators spill: those take
    // the four keys as two pairs (3–4 × 2 + 2 + 1 registers).
    let pairs = S::LANES < 16;
    let mut r0 = 0;
    // SAFETY: rows r0.. of Q and S, keys j..j+4 of K; forwarded contract.
    unsafe {
        while r0 < rows {
            let (qr, sr) = (q.add(r0 * ldq), s.add(r0 * lds + j));
            let s2 = sr.add(2);
            match rows - r0 {
                1 => dot_groupk::<S, E, K, 1, 4>(d, alpha, sc, qr, ldq, k, j, sr, lds),
                2 => dot_groupk::<S, E, K, 2, 4>(d, alpha, sc, qr, ldq, k, j, sr, lds),
                3 if pairs => {
                    dot_groupk::<S, E, K, 3, 2>(d, alpha, sc, qr, ldq, k, j, sr, lds);
                    dot_groupk::<S, E, K, 3, 2>(d, alpha, sc, qr, ldq, k, j + 2, s2, lds);
                }
                3 => dot_groupk::<S, E, K, 3, 4>(d, alpha, sc, qr, ldq, k, j, sr, lds),
                _ if pairs => {
                    dot_groupk::<S, E, K, 4, 2>(d, alpha, sc, qr, ldq, k, j, sr, lds);
                    dot_groupk::<S, E, K, 4, 2>(d, alpha, sc, qr, ldq, k, j + 2, s2, lds);
                }
                _ => dot_groupk::<S, E, K, 4, 4>(d, alpha, sc, qr, ldq, k, j, sr, lds),
            }
            r0 += 4;
        }
    }
}

/// # Safety
/// Q `heads.count·rows × d` (stride `ldq`) and the `n` rows of `d` values of `k` (each
/// head's: shifted by `h·heads.stride`) readable, S `heads.count·rows × n` (stride `lds`)
/// writable; the ISA of `S` is present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows_body<S: SimdOps, E: RowElem, K: Rows<Elem = E>>(
    rows: usize,
    heads: Heads,
    n: usize,
    d: usize,
    alpha: f32,
    sc: *const f32,
    q: *const f32,
    ldq: usize,
    k: K,
    s: *mut f32,
    lds: usize,
) {
    // One token's rows over all heads: one run when they lie side by side.
    let pf = Pf::of(heads, d);
    // Tokens ahead: PREFETCH_ROWS for one head; with several, each token carries several
    // rows, so fewer tokens ahead (measured on the Xeon, 8 heads: 4 tokens beat 16).
    let ahead = (PREFETCH_ROWS / heads.count).max(4);
    let n4 = n - n % 4;
    for j in (0..n4).step_by(4) {
        // SAFETY: rows j..j+4 ≤ n of K; every head's rows of Q and S; forwarded contract.
        unsafe {
            // Ask for the key rows PREFETCH_ROWS ahead: one stream per query group is too
            // little memory-level parallelism for the hardware prefetcher alone.
            for t in 0..4 {
                prefetch_rows::<S, E>(k.ahead(j + ahead + t), pf.rows, pf.ld, pf.len);
            }
            for h in 0..heads.count {
                let kh = Shift {
                    k,
                    off: h * heads.stride,
                };
                let (qh, sh) = (q.add(h * rows * ldq), s.add(h * rows * lds));
                let sch = head_scales(sc, h, n);
                dot_key4::<S, E, Shift<K>>(rows, d, alpha, sch, qh, ldq, kh, j, sh, lds);
            }
        }
    }
    for j in n4..n {
        // SAFETY: row j < n of K; every head's rows of Q and S; forwarded contract.
        unsafe {
            for h in 0..heads.count {
                let kj = k.row(j).add(h * heads.stride);
                let (qh, sh) = (q.add(h * rows * ldq), s.add(h * rows * lds));
                let scj = scale_at::<E>(head_scales(sc, h, n), j);
                let mut r0 = 0;
                while r0 < rows {
                    let (qr, sr) = (qh.add(r0 * ldq), sh.add(r0 * lds + j));
                    match rows - r0 {
                        1 => dot_group::<S, E, 1>(d, alpha, scj, qr, ldq, kj, sr, lds),
                        2 => dot_group::<S, E, 2>(d, alpha, scj, qr, ldq, kj, sr, lds),
                        3 => dot_group::<S, E, 3>(d, alpha, scj, qr, ldq, kj, sr, lds),
                        _ => dot_group::<S, E, 4>(d, alpha, scj, qr, ldq, kj, sr, lds),
                    }
                    r0 += 4;
                }
            }
        }
    }
}

/// [`dot_rows_body`] as a [`dispatch`] body.
pub(super) struct DotRows<K> {
    pub(super) rows: usize,
    pub(super) heads: Heads,
    pub(super) n: usize,
    pub(super) d: usize,
    pub(super) alpha: f32,
    /// Per-row scales, `heads.count × n` (head-major), or null for none.
    pub(super) sc: *const f32,
    pub(super) q: *const f32,
    pub(super) ldq: usize,
    pub(super) k: K,
    pub(super) s: *mut f32,
    pub(super) lds: usize,
}

impl<K: Rows<Elem: RowElem>> IsaKernel for DotRows<K> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let k = self;
        // SAFETY: as `dot_rows_body` (the caller's contract); the ISA of `S` is present.
        unsafe {
            dot_rows_body::<S, K::Elem, K>(
                k.rows, k.heads, k.n, k.d, k.alpha, k.sc, k.q, k.ldq, k.k, k.s, k.lds,
            )
        }
    }
}

/// The scales' pointer (null for none), after checking that there are `n` of them.
pub(super) fn scale_ptr(op: &'static str, scales: Option<&[f32]>, n: usize) -> Result<*const f32> {
    match scales {
        None => Ok(std::ptr::null()),
        Some(sc) if sc.len() == n => Ok(sc.as_ptr()),
        Some(sc) => Err(KernelError::ShapeMismatch {
            op,
            expected: format!("{n} row scales"),
            got: format!("{}", sc.len()),
        }),
    }
}

pub(super) fn contiguous_rows(op: &'static str, what: &str, cs: usize) -> Result<()> {
    if cs != 1 {
        return Err(KernelError::BadStride {
            op,
            reason: format!("{what} must have contiguous rows (column stride 1), got {cs}"),
        });
    }
    Ok(())
}

/// `S[r, j] = alpha·Σ_x Q[r, x]·K[j, x]` (S ← alpha·Q·Kᵀ) for a few query rows against many
/// key rows, reading each key row once.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] unless Q is r×d, K n×d and S r×n;
/// [`KernelError::BadStride`] unless all three have column stride 1;
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
///
/// ```
/// use fastattn_kernels::{gemv::dot_rows_with, Isa, MatRef, MatMut};
/// let q = [1.0f32, 2.0];
/// let k = [1.0f32, 1.0, 0.0, 3.0, 2.0, 0.5];
/// let mut s = [0.0; 3];
/// dot_rows_with(Isa::best(), 1.0, MatRef::row_major(&q, 1, 2)?, MatRef::row_major(&k, 3, 2)?,
///               MatMut::row_major(&mut s, 1, 3)?)?;
/// assert_eq!(s, [3.0, 6.0, 3.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn dot_rows_with<E: Element>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: MatRef<'_, E>,
    s: MatMut<'_>,
) -> Result<()> {
    dot_rows_impl(isa, alpha, q, k, None, s)
}

/// [`dot_rows_with`] for any row type, with optional per-key-row scales (`n` values).
pub(super) fn dot_rows_impl<E: RowElem>(
    isa: Isa,
    alpha: f32,
    q: MatRef<'_>,
    k: MatRef<'_, E>,
    scales: Option<&[f32]>,
    mut s: MatMut<'_>,
) -> Result<()> {
    isa.check()?;
    let op = "dot_rows";
    let (rows, d, n) = (q.rows(), q.cols(), k.rows());
    if k.cols() != d || s.rows() != rows || s.cols() != n {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("Q r×d, K n×d, S r×n (Q is {rows}×{d}, K {n}×{})", k.cols()),
            got: format!("S {}×{}", s.rows(), s.cols()),
        });
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    contiguous_rows(op, "Q", q.col_stride())?;
    contiguous_rows(op, "K", k.col_stride())?;
    contiguous_rows(op, "S", s.col_stride())?;
    let sc = scale_ptr(op, scales, n)?;
    let (ldq, lds) = (q.row_stride(), s.row_stride());
    let kernel = DotRows {
        rows,
        heads: Heads::ONE,
        n,
        d,
        alpha,
        sc,
        q: q.data().as_ptr(),
        ldq,
        k: Strided {
            base: k.data().as_ptr(),
            ld: k.row_stride(),
        },
        s: s.as_mut_ptr(),
        lds,
    };
    // SAFETY: the views were bounds-checked when built and have unit column strides, so
    // every row read/written is inside its slice; S is exclusive; the ISA was checked.
    unsafe { dispatch(isa, kernel) };
    Ok(())
}

/// `O[r, :] += Σ_j P[r, j]·V[j, :]` (O ← O + P·V) for a few rows of weights against many
/// value rows, reading each value row once. Zero weights are skipped (their value rows are
/// not read, so a masked key cannot inject NaN or inf).
///
/// # Errors
/// As [`dot_rows_with`], for P r×n, V n×dv, O r×dv.
pub fn axpy_rows_with<E: Element>(
    isa: Isa,
    p: MatRef<'_>,
    v: MatRef<'_, E>,
    o: MatMut<'_>,
) -> Result<()> {
    axpy_rows_impl(isa, p, v, None, o)
}

/// [`axpy_rows_with`] for any row type, with optional per-value-row scales (`n` values).
pub(super) fn axpy_rows_impl<E: RowElem>(
    isa: Isa,
    p: MatRef<'_>,
    v: MatRef<'_, E>,
    scales: Option<&[f32]>,
    mut o: MatMut<'_>,
) -> Result<()> {
    isa.check()?;
    let op = "axpy_rows";
    let (rows, n, dv) = (p.rows(), p.cols(), v.cols());
    if v.rows() != n || o.rows() != rows || o.cols() != dv {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!(
                "P r×n, V n×dv, O r×dv (P is {rows}×{n}, V {}×{dv})",
                v.rows()
            ),
            got: format!("O {}×{}", o.rows(), o.cols()),
        });
    }
    if rows == 0 || n == 0 || dv == 0 {
        return Ok(());
    }
    contiguous_rows(op, "P", p.col_stride())?;
    contiguous_rows(op, "V", v.col_stride())?;
    contiguous_rows(op, "O", o.col_stride())?;
    let sc = scale_ptr(op, scales, n)?;
    let (ldp, ldo) = (p.row_stride(), o.row_stride());
    let kernel = AxpyRows {
        rows,
        heads: Heads::ONE,
        n,
        dv,
        p: p.data().as_ptr(),
        ldp,
        sc,
        v: Strided {
            base: v.data().as_ptr(),
            ld: v.row_stride(),
        },
        o: o.as_mut_ptr(),
        ldo,
    };
    // SAFETY: as in dot_rows_with.
    unsafe { dispatch(isa, kernel) };
    Ok(())
}

/// Oracle of [`dot_rows_with`] (f64 accumulation).
pub fn dot_rows_ref<E: Element>(alpha: f32, q: MatRef<'_>, k: MatRef<'_, E>, mut s: MatMut<'_>) {
    for r in 0..q.rows() {
        for j in 0..k.rows() {
            let t: f64 = (0..q.cols())
                .map(|x| q.get(r, x) as f64 * k.get(j, x).to_f32() as f64)
                .sum();
            s.set(r, j, (alpha as f64 * t) as f32);
        }
    }
}

/// Oracle of [`axpy_rows_with`] (f64 accumulation, zero weights skipped).
pub fn axpy_rows_ref<E: Element>(p: MatRef<'_>, v: MatRef<'_, E>, mut o: MatMut<'_>) {
    for r in 0..p.rows() {
        for x in 0..v.cols() {
            let mut t = o.get(r, x) as f64;
            for j in 0..p.cols() {
                let w = p.get(r, j);
                if w != 0.0 {
                    t += w as f64 * v.get(j, x).to_f32() as f64;
                }
            }
            o.set(r, x, t as f32);
        }
    }
}
