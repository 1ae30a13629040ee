//! Matrix–vector-shaped kernels for decoding, where a few query rows meet a long run of
//! keys and packing K or V would cost as much as using them once.
//!
//! * [`dot_rows_with`]: `S[r, j] = alpha·Σ_x Q[r, x]·K[j, x]` — each key row is loaded once
//!   and dotted with up to four query rows at a time (vertical FMAs over `x`, one
//!   horizontal sum per output).
//! * [`axpy_rows_with`]: `O[r, :] += Σ_j P[r, j]·V[j, :]` — each value row is loaded once
//!   and added into every output row with its weight; zero weights are skipped.
//!
//! K and V may be f32, f16 or bf16 ([`Element`]): 16-bit rows are widened in registers
//! (F16C `vcvtph2ps`, a shift for bf16), so decoding from a 16-bit cache reads half the
//! bytes. Both stream K and V in memory order, so their speed is the memory bandwidth. Each
//! variant's twin is [`dot_rows_ref`] / [`axpy_rows_ref`] (f64 accumulation).

use crate::dispatch::Isa;
use crate::dtype::Element;
use crate::error::{KernelError, Result};
use crate::gemm::microkernel::{load_as, SimdOps};
use crate::gemm::{MatMut, MatRef};

/// How many rows ahead the decode kernels prefetch K and V.
const PREFETCH_ROWS: usize = 16;

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
unsafe fn dot_group<S: SimdOps, E: Element, const R: usize>(
    d: usize,
    alpha: f32,
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
            let kv = load_as::<S, E>(kj.add(x));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::fma(S::load(q.add(r * ldq + x)), kv, *a);
            }
            x += S::LANES;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut t = S::reduce_add(*a);
            for x in dvec..d {
                t += *q.add(r * ldq + x) * (*kj.add(x)).to_f32();
            }
            *s.add(r * lds) = alpha * t;
        }
    }
}

/// [`dot_group`] for four consecutive key rows at once (`kj`, `kj + ldk`, ...): four times
/// the independent FMA chains and each query vector loaded once per four keys.
///
/// # Safety
/// As [`dot_group`], for key rows `kj + t·ldk`, `t < 4`, and outputs `s + r·lds + t`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_group4<S: SimdOps, E: Element, const R: usize>(
    d: usize,
    alpha: f32,
    q: *const f32,
    ldq: usize,
    kj: *const E,
    ldk: usize,
    s: *mut f32,
    lds: usize,
) {
    let dvec = d - d % S::LANES;
    // SAFETY: reads stay within the rows described above; the ISA is present.
    unsafe {
        let mut acc = [[S::zero(); 4]; R];
        let mut x = 0;
        while x < dvec {
            let kv = [
                load_as::<S, E>(kj.add(x)),
                load_as::<S, E>(kj.add(ldk + x)),
                load_as::<S, E>(kj.add(2 * ldk + x)),
                load_as::<S, E>(kj.add(3 * ldk + x)),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = S::load(q.add(r * ldq + x));
                for t in 0..4 {
                    a[t] = S::fma(qv, kv[t], a[t]);
                }
            }
            x += S::LANES;
        }
        for (r, a) in acc.iter().enumerate() {
            for (t, &at) in a.iter().enumerate() {
                let mut v = S::reduce_add(at);
                for x in dvec..d {
                    v += *q.add(r * ldq + x) * (*kj.add(t * ldk + x)).to_f32();
                }
                *s.add(r * lds + t) = alpha * v;
            }
        }
    }
}

/// # Safety
/// Q `rows × d` (stride `ldq`), K `n × d` (stride `ldk`) readable, S `rows × n` (stride
/// `lds`) writable; the ISA of `S` is present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows_body<S: SimdOps, E: Element>(
    rows: usize,
    n: usize,
    d: usize,
    alpha: f32,
    q: *const f32,
    ldq: usize,
    k: *const E,
    ldk: usize,
    s: *mut f32,
    lds: usize,
) {
    let n4 = n - n % 4;
    for j in (0..n4).step_by(4) {
        // SAFETY: rows j..j+4 ≤ n of K; rows r0.. of Q and S; forwarded contract.
        unsafe {
            let kj = k.add(j * ldk);
            // Ask for the key rows PREFETCH_ROWS ahead: one stream per query group is too
            // little memory-level parallelism for the hardware prefetcher alone.
            prefetch_rows::<S, E>(kj.wrapping_add(PREFETCH_ROWS * ldk), 4, ldk, d);
            let mut r0 = 0;
            while r0 < rows {
                let (qr, sr) = (q.add(r0 * ldq), s.add(r0 * lds + j));
                match rows - r0 {
                    1 => dot_group4::<S, E, 1>(d, alpha, qr, ldq, kj, ldk, sr, lds),
                    2 => dot_group4::<S, E, 2>(d, alpha, qr, ldq, kj, ldk, sr, lds),
                    3 => dot_group4::<S, E, 3>(d, alpha, qr, ldq, kj, ldk, sr, lds),
                    _ => dot_group4::<S, E, 4>(d, alpha, qr, ldq, kj, ldk, sr, lds),
                }
                r0 += 4;
            }
        }
    }
    for j in n4..n {
        // SAFETY: row j < n of K; rows r0.. of Q and S; forwarded contract.
        unsafe {
            let kj = k.add(j * ldk);
            let mut r0 = 0;
            while r0 < rows {
                let (qr, sr) = (q.add(r0 * ldq), s.add(r0 * lds + j));
                match rows - r0 {
                    1 => dot_group::<S, E, 1>(d, alpha, qr, ldq, kj, sr, lds),
                    2 => dot_group::<S, E, 2>(d, alpha, qr, ldq, kj, sr, lds),
                    3 => dot_group::<S, E, 3>(d, alpha, qr, ldq, kj, sr, lds),
                    _ => dot_group::<S, E, 4>(d, alpha, qr, ldq, kj, sr, lds),
                }
                r0 += 4;
            }
        }
    }
}

/// # Safety
/// P `rows × n` (stride `ldp`), V `n × dv` (stride `ldv`) readable, O `rows × dv` (stride
/// `ldo`) readable and writable; the ISA of `S` is present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows_body<S: SimdOps, E: Element>(
    rows: usize,
    n: usize,
    dv: usize,
    p: *const f32,
    ldp: usize,
    v: *const E,
    ldv: usize,
    o: *mut f32,
    ldo: usize,
) {
    let dvec = dv - dv % S::LANES;
    for j in 0..n {
        // SAFETY: row j < n of V, rows r < rows of P and O; forwarded contract.
        unsafe {
            let vj = v.add(j * ldv);
            prefetch_rows::<S, E>(vj.wrapping_add(PREFETCH_ROWS * ldv), 1, ldv, dv);
            for r in 0..rows {
                let pr = *p.add(r * ldp + j);
                if pr == 0.0 {
                    continue;
                }
                let ps = S::splat(pr);
                let orow = o.add(r * ldo);
                let mut x = 0;
                while x < dvec {
                    S::store(
                        orow.add(x),
                        S::fma(ps, load_as::<S, E>(vj.add(x)), S::load(orow.add(x))),
                    );
                    x += S::LANES;
                }
                for x in dvec..dv {
                    *orow.add(x) += pr * (*vj.add(x)).to_f32();
                }
            }
        }
    }
}

type DotFn<E> =
    unsafe fn(usize, usize, usize, f32, *const f32, usize, *const E, usize, *mut f32, usize);
type AxpyFn<E> =
    unsafe fn(usize, usize, usize, *const f32, usize, *const E, usize, *mut f32, usize);

macro_rules! gemv_variant {
    ($dot:ident, $axpy:ident, $ops:ty $(, $feat:literal)?) => {
        /// # Safety
        /// As `dot_rows_body`; the CPU has this variant's ISA.
        $(#[target_feature(enable = $feat)])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $dot<E: Element>(
            rows: usize, n: usize, d: usize, alpha: f32, q: *const f32, ldq: usize,
            k: *const E, ldk: usize, s: *mut f32, lds: usize,
        ) {
            // SAFETY: forwarded contract; the feature is enabled on this function.
            unsafe { dot_rows_body::<$ops, E>(rows, n, d, alpha, q, ldq, k, ldk, s, lds) }
        }
        /// # Safety
        /// As `axpy_rows_body`; the CPU has this variant's ISA.
        $(#[target_feature(enable = $feat)])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $axpy<E: Element>(
            rows: usize, n: usize, dv: usize, p: *const f32, ldp: usize,
            v: *const E, ldv: usize, o: *mut f32, ldo: usize,
        ) {
            // SAFETY: forwarded contract; the feature is enabled on this function.
            unsafe { axpy_rows_body::<$ops, E>(rows, n, dv, p, ldp, v, ldv, o, ldo) }
        }
    };
}

gemv_variant!(
    dot_scalar,
    axpy_scalar,
    crate::gemm::microkernel::scalar::ScalarOps
);
gemv_variant!(
    dot_portable,
    axpy_portable,
    crate::gemm::microkernel::portable::WideOps
);
#[cfg(target_arch = "x86_64")]
gemv_variant!(
    dot_avx2,
    axpy_avx2,
    crate::gemm::microkernel::x86::Avx2Ops,
    "avx2,fma,f16c"
);
#[cfg(target_arch = "x86_64")]
gemv_variant!(
    dot_avx512,
    axpy_avx512,
    crate::gemm::microkernel::x86::Avx512Ops,
    "avx512f,avx2,fma,f16c"
);

fn kernels_for<E: Element>(isa: Isa) -> (DotFn<E>, AxpyFn<E>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (dot_avx512::<E>, axpy_avx512::<E>),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => (dot_avx2::<E>, axpy_avx2::<E>),
        Isa::Scalar => (dot_scalar::<E>, axpy_scalar::<E>),
        _ => (dot_portable::<E>, axpy_portable::<E>),
    }
}

fn contiguous_rows(op: &'static str, what: &str, cs: usize) -> Result<()> {
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
    let (ldq, ldk, lds) = (q.row_stride(), k.row_stride(), s.row_stride());
    let (dot, _) = kernels_for::<E>(isa);
    // SAFETY: the views were bounds-checked when built and have unit column strides, so
    // every row read/written is inside its slice; S is exclusive; the ISA was checked.
    unsafe {
        dot(
            rows,
            n,
            d,
            alpha,
            q.data().as_ptr(),
            ldq,
            k.data().as_ptr(),
            ldk,
            s.as_mut_ptr(),
            lds,
        )
    };
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
    let (ldp, ldv, ldo) = (p.row_stride(), v.row_stride(), o.row_stride());
    let (_, axpy) = kernels_for::<E>(isa);
    // SAFETY: as in dot_rows_with.
    unsafe {
        axpy(
            rows,
            n,
            dv,
            p.data().as_ptr(),
            ldp,
            v.data().as_ptr(),
            ldv,
            o.as_mut_ptr(),
            ldo,
        )
    };
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
