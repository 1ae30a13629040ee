//! Row dequantisation: `dst[i] = decode(src[i]) × scale` in f32, one SIMD body per ISA
//! (through the crate's `SimdOps`) and the scalar twins in [`super::reference`].
//!
//! Decoding is exact on every ISA, so the only rounding is the one f32 product, and every
//! ISA gives the same bits as the reference:
//! * int8: sign-extend, convert (`vpmovsxbd` + `vcvtdq2ps`);
//! * e5m2: the code shifted left by 8 is an f16; F16C / AVX-512 widen it (`vcvtph2ps`);
//! * e4m3fn: sign to bit 15 and magnitude to bits 7..14 make an f16 worth `code / 2^8`
//!   (exponent bias 15 against 7; e4m3 subnormals become f16 subnormals), the NaN
//!   magnitude gets an all-ones exponent, `vcvtph2ps` widens, and an exact `× 256`
//!   restores the value before the `× scale`.
//!
//! Scalar and Portable decode each code with [`F8E4M3::to_f32`] / [`F8E5M2::to_f32`].

use super::{F8E4M3, F8E5M2};
use crate::dispatch::Isa;
use crate::dtype::RowElem;
use crate::error::{KernelError, Result};
use crate::simd::{dispatch, load_row, IsaKernel, SimdOps};

/// `dst[i] = decode(src[i]) × scale` for `i < n`.
///
/// # Safety
/// `src` readable and `dst` writable for `n` values; the ISA of `S` is present.
#[inline(always)]
unsafe fn dequant_body<S: SimdOps, C: RowElem>(n: usize, src: *const C, scale: f32, dst: *mut f32) {
    let nv = n - n % S::LANES;
    let mut i = 0;
    // SAFETY: i + LANES ≤ nv ≤ n in the vector loop, i < n in the tail (caller contract).
    unsafe {
        let s = S::splat(scale);
        while i < nv {
            S::store(dst.add(i), S::mul(load_row::<S, C>(src.add(i)), s));
            i += S::LANES;
        }
        while i < n {
            *dst.add(i) = (*src.add(i)).value() * scale;
            i += 1;
        }
    }
}

/// [`dequant_body`] as a [`dispatch`] body.
struct Dequant<C> {
    n: usize,
    src: *const C,
    scale: f32,
    dst: *mut f32,
}

impl<C: RowElem> IsaKernel for Dequant<C> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        // SAFETY: forwarded contract of `dequant_row`; the ISA of `S` is present.
        unsafe { dequant_body::<S, C>(self.n, self.src, self.scale, self.dst) }
    }
}

/// The checked entry of the three row kernels.
fn dequant_row<C: RowElem>(
    op: &'static str,
    isa: Isa,
    src: &[C],
    scale: f32,
    dst: &mut [f32],
) -> Result<()> {
    isa.check()?;
    if src.len() != dst.len() {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("dst of {} values", src.len()),
            got: format!("{}", dst.len()),
        });
    }
    let k = Dequant {
        n: src.len(),
        src: src.as_ptr(),
        scale,
        dst: dst.as_mut_ptr(),
    };
    // SAFETY: both slices hold src.len() values and do not overlap (one is &mut); the ISA
    // was checked.
    unsafe { dispatch(isa, k) };
    Ok(())
}

/// Dequantises an int8 row: `dst[i] = src[i] as f32 × scale` (one f32 product; the same
/// bits on every ISA as [`dequant_i8_row_ref`](super::reference::dequant_i8_row_ref)).
///
/// ```
/// use fastattn_kernels::{quant::dequant_i8_row, Isa};
/// let mut out = [0.0f32; 3];
/// dequant_i8_row(Isa::best(), &[-127, 0, 64], 0.5, &mut out)?;
/// assert_eq!(out, [-63.5, 0.0, 32.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ, [`KernelError::UnsupportedIsa`] if
/// the CPU lacks `isa`.
pub fn dequant_i8_row(isa: Isa, src: &[i8], scale: f32, dst: &mut [f32]) -> Result<()> {
    dequant_row("dequant_i8_row", isa, src, scale, dst)
}

/// Dequantises an fp8 e4m3fn row: `dst[i] = src[i].to_f32() × scale` (one f32 product; the
/// same bits on every ISA as
/// [`dequant_f8e4m3_row_ref`](super::reference::dequant_f8e4m3_row_ref)).
///
/// ```
/// use fastattn_kernels::{quant::{dequant_f8e4m3_row, F8E4M3}, Isa};
/// let src = [F8E4M3::from_f32(1.5), F8E4M3::from_f32(-448.0)];
/// let mut out = [0.0f32; 2];
/// dequant_f8e4m3_row(Isa::best(), &src, 0.25, &mut out)?;
/// assert_eq!(out, [0.375, -112.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// As [`dequant_i8_row`].
pub fn dequant_f8e4m3_row(isa: Isa, src: &[F8E4M3], scale: f32, dst: &mut [f32]) -> Result<()> {
    dequant_row("dequant_f8e4m3_row", isa, src, scale, dst)
}

/// Dequantises an fp8 e5m2 row: `dst[i] = src[i].to_f32() × scale` (one f32 product; the
/// same bits on every ISA as
/// [`dequant_f8e5m2_row_ref`](super::reference::dequant_f8e5m2_row_ref)).
///
/// ```
/// use fastattn_kernels::{quant::{dequant_f8e5m2_row, F8E5M2}, Isa};
/// let src = [F8E5M2::from_f32(1.5), F8E5M2::from_f32(-0.25)];
/// let mut out = [0.0f32; 2];
/// dequant_f8e5m2_row(Isa::best(), &src, 2.0, &mut out)?;
/// assert_eq!(out, [3.0, -0.5]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// As [`dequant_i8_row`].
pub fn dequant_f8e5m2_row(isa: Isa, src: &[F8E5M2], scale: f32, dst: &mut [f32]) -> Result<()> {
    dequant_row("dequant_f8e5m2_row", isa, src, scale, dst)
}
