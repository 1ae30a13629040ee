//! The public GEMM entry points: the pointer API ([`sgemm`], [`sgemm_with`],
//! [`gemm_ptr_with`]), the checked-view API ([`gemm`], [`gemm_with`]), the tile and block
//! sizes a variant uses (with the `FASTATTN_GEMM_BLOCKS` override) and the microkernel
//! timer of `cargo xtask profile`.

use super::driver::{gemm_unchecked, GemmParams};
use super::microkernel::ukr_for;
use super::params::{block_sizes_for, cache_sizes, BlockSizes};
use super::view::{MatMut, MatRef};
use crate::dispatch::{current_isa, Isa};
use crate::dtype::Element;
use crate::error::{KernelError, Result};
use crate::parallel::Parallelism;
use std::sync::OnceLock;

/// The microkernel tile `(MR, NR)` a variant uses.
///
/// ```
/// let (mr, nr) = fastattn_kernels::gemm::tile_of(fastattn_kernels::Isa::Scalar);
/// assert_eq!((mr, nr), (4, 4));
/// ```
pub fn tile_of(isa: Isa) -> (usize, usize) {
    let u = ukr_for(isa);
    (u.mr, u.nr)
}

/// Name of the microkernel a variant uses (`ukr_6x16_avx2`, ...).
pub fn microkernel_name(isa: Isa) -> &'static str {
    ukr_for(isa).name
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
/// Uses the current variant ([`current_isa`]) and the current thread count
/// ([`parallel::current_threads`](crate::parallel::current_threads)).
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
            GemmParams {
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
            },
        )
    };
    Ok(())
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
    /// In place unless `MR` rows crowd one L1 set ([`super::params::rows_crowd_l1`]).
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
            GemmParams {
                m: c.rows,
                k: a.cols,
                n: c.cols,
                alpha,
                a: a.data.as_ptr(),
                rsa: a.rs as isize,
                csa: a.cs as isize,
                b: b.data.as_ptr(),
                rsb: b.rs as isize,
                csb: b.cs as isize,
                beta,
                c: c.data.as_mut_ptr(),
                rsc: c.rs as isize,
                csc: c.cs as isize,
            },
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
