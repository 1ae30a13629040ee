//! Vector conversions between f32 and the 16-bit storage types, with scalar twins.
//!
//! * f16 → f32: F16C `vcvtph2ps` (AVX2 variant) or its AVX-512F form; bf16 → f32: a 16-bit
//!   left shift of the zero-extended value. Both are exact.
//! * f32 → f16: `vcvtps2ph` with round-to-nearest-even; f32 → bf16: integer
//!   round-to-nearest-even on the bit pattern, NaN kept quiet. Both equal the `half`
//!   crate's conversions ([`to_f32_ref`], [`from_f32_ref`]), bit for bit on non-NaN values.
//!
//! The packing routines and decode kernels use the same per-ISA loads
//! (the crate's `SimdOps`), so what is tested here is what they run.

use crate::dispatch::Isa;
use crate::dtype::Element;
use crate::error::{KernelError, Result};
use crate::simd::{dispatch, load_as, store_as, IsaKernel, SimdOps};

/// # Safety
/// `src` readable and `dst` writable for `n` values; the ISA of `S` is present.
#[inline(always)]
unsafe fn convert_body<S: SimdOps, A: Element, B: Element>(n: usize, src: *const A, dst: *mut B) {
    let nv = n - n % S::LANES;
    let mut i = 0;
    // SAFETY: i + LANES ≤ nv ≤ n in the loop, i < n in the tail (caller contract).
    unsafe {
        while i < nv {
            store_as::<S, B>(dst.add(i), load_as::<S, A>(src.add(i)));
            i += S::LANES;
        }
        while i < n {
            *dst.add(i) = B::from_f32((*src.add(i)).to_f32());
            i += 1;
        }
    }
}

/// [`convert_body`] as a [`dispatch`] body.
struct Convert<A, B> {
    n: usize,
    src: *const A,
    dst: *mut B,
}

impl<A: Element, B: Element> IsaKernel for Convert<A, B> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        // SAFETY: forwarded contract of `convert_raw`; the ISA of `S` is present.
        unsafe { convert_body::<S, A, B>(self.n, self.src, self.dst) }
    }
}

/// Converts `n` values at `src` into `dst` with `isa`'s kernel (no checks).
///
/// # Safety
/// `src` readable and `dst` writable for `n` values, not overlapping; the CPU has `isa`.
#[inline]
pub(crate) unsafe fn convert_raw<A: Element, B: Element>(
    isa: Isa,
    n: usize,
    src: *const A,
    dst: *mut B,
) {
    // SAFETY: forwarded contract; the CPU has `isa`.
    unsafe { dispatch(isa, Convert { n, src, dst }) }
}

fn same_len(op: &'static str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("dst of {a} values"),
            got: format!("{b}"),
        });
    }
    Ok(())
}

/// Widens `src` into `dst` (same length) with `isa`'s kernel.
///
/// ```
/// use fastattn_kernels::{convert::to_f32_with, f16, Isa};
/// let h: Vec<f16> = [0.5f32, -2.0, 65504.0].iter().map(|&x| f16::from_f32(x)).collect();
/// let mut f = [0.0f32; 3];
/// to_f32_with(Isa::best(), &h, &mut f)?;
/// assert_eq!(f, [0.5, -2.0, 65504.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ, [`KernelError::UnsupportedIsa`]
/// if the CPU lacks `isa`.
pub fn to_f32_with<E: Element>(isa: Isa, src: &[E], dst: &mut [f32]) -> Result<()> {
    isa.check()?;
    same_len("to_f32_with", src.len(), dst.len())?;
    // SAFETY: both slices hold src.len() values and do not overlap (one is &mut); the ISA
    // was checked.
    unsafe { convert_raw(isa, src.len(), src.as_ptr(), dst.as_mut_ptr()) };
    Ok(())
}

/// Rounds `src` into `dst` (same length), to nearest, ties to even, with `isa`'s kernel.
///
/// # Errors
/// As [`to_f32_with`].
pub fn from_f32_with<E: Element>(isa: Isa, src: &[f32], dst: &mut [E]) -> Result<()> {
    isa.check()?;
    same_len("from_f32_with", src.len(), dst.len())?;
    // SAFETY: as in `to_f32_with`.
    unsafe { convert_raw(isa, src.len(), src.as_ptr(), dst.as_mut_ptr()) };
    Ok(())
}

/// Converts `src` into `dst` (same length) between any two element types, through f32
/// (exact widening, then rounding to nearest, ties to even), with `isa`'s kernel.
///
/// # Errors
/// As [`to_f32_with`].
pub fn convert_with<A: Element, B: Element>(isa: Isa, src: &[A], dst: &mut [B]) -> Result<()> {
    isa.check()?;
    same_len("convert_with", src.len(), dst.len())?;
    // SAFETY: as in `to_f32_with`.
    unsafe { convert_raw(isa, src.len(), src.as_ptr(), dst.as_mut_ptr()) };
    Ok(())
}

/// The scalar twin of [`to_f32_with`] (the `half` crate's conversion).
pub fn to_f32_ref<E: Element>(src: &[E]) -> Vec<f32> {
    src.iter().map(|x| x.to_f32()).collect()
}

/// The scalar twin of [`from_f32_with`] (the `half` crate's conversion).
pub fn from_f32_ref<E: Element>(src: &[f32]) -> Vec<E> {
    src.iter().map(|&x| E::from_f32(x)).collect()
}
