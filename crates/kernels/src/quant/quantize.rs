//! Quantise-on-write (scalar): int8 with a per-row scale, fp8 with a caller-given scale.

use super::{Code, F8E4M3, F8E5M2};
use crate::error::{KernelError, Result};

fn check_len(op: &'static str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("dst of {a} values"),
            got: format!("{b}"),
        });
    }
    Ok(())
}

/// `Err` naming the first non-finite value of `src`, if any.
fn check_finite(op: &'static str, src: &[f32]) -> Result<()> {
    match src.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(KernelError::InvalidArgument {
            op,
            reason: format!(
                "value {} at index {i} is not finite (NaN/inf cannot be quantised)",
                src[i]
            ),
        }),
    }
}

/// Quantises one row (one token of one KV head) to int8, symmetric, and returns its scale.
///
/// `scale = amax / 127` where `amax = max |x|`, raised to `f32::MIN_POSITIVE` if that
/// underflows, and `1.0` for an all-zero row (so a later `x / scale` or `q × scale` never
/// divides by zero or makes NaN; the row's codes are all 0 either way).
/// `dst[i] = round_half_even(src[i] / scale)` clamped to `[-127, 127]` (−128 is never
/// written), so `|x − q·scale| ≤ scale/2` up to the rounding of the f32 quotient.
///
/// ```
/// use fastattn_kernels::quant::quantize_i8_row;
/// let mut q = [0i8; 3];
/// let scale = quantize_i8_row(&[1.27, -0.5, 0.0], &mut q)?;
/// assert_eq!(scale, 1.27 / 127.0);
/// assert_eq!(q, [127, -50, 0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ, [`KernelError::InvalidArgument`] if
/// a value is NaN or infinite (nothing is written then).
pub fn quantize_i8_row(src: &[f32], dst: &mut [i8]) -> Result<f32> {
    const OP: &str = "quantize_i8_row";
    check_len(OP, src.len(), dst.len())?;
    check_finite(OP, src)?;
    let amax = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if amax == 0.0 {
        1.0
    } else {
        (amax / 127.0).max(f32::MIN_POSITIVE)
    };
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = (x / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    Ok(scale)
}

/// The scale for filling an fp8 cache in one call: `amax / max_finite`, so the largest
/// magnitude maps to the format's largest finite value (`max_finite` is [`F8E4M3::MAX`] or
/// [`F8E5M2::MAX`]); `1.0` when `amax` is 0, and at least `f32::MIN_POSITIVE`.
///
/// ```
/// use fastattn_kernels::quant::{f8_scale_for, F8E4M3};
/// assert_eq!(f8_scale_for(896.0, F8E4M3::MAX)?, 2.0);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::InvalidArgument`] if `amax` is negative or not finite, or `max_finite` is
/// not finite and positive.
pub fn f8_scale_for(amax: f32, max_finite: f32) -> Result<f32> {
    const OP: &str = "f8_scale_for";
    if !(amax.is_finite() && amax >= 0.0) {
        return Err(KernelError::InvalidArgument {
            op: OP,
            reason: format!("amax must be finite and ≥ 0, got {amax}"),
        });
    }
    if !(max_finite.is_finite() && max_finite > 0.0) {
        return Err(KernelError::InvalidArgument {
            op: OP,
            reason: format!("max_finite must be finite and > 0, got {max_finite}"),
        });
    }
    if amax == 0.0 {
        return Ok(1.0);
    }
    Ok((amax / max_finite).max(f32::MIN_POSITIVE))
}

/// `Err` unless `scale` is finite and positive.
fn check_scale(op: &'static str, scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(KernelError::InvalidArgument {
            op,
            reason: format!("scale must be finite and > 0, got {scale}"),
        })
    }
}

/// Quantises a row to fp8 e4m3fn with a caller-given scale (vLLM's `k_scale`/`v_scale`):
/// `dst[i] = F8E4M3::from_f32(src[i] / scale)` (nearest, ties to even, saturating at ±448).
///
/// ```
/// use fastattn_kernels::quant::{quantize_f8e4m3_row, F8E4M3};
/// let mut q = [F8E4M3::default(); 2];
/// quantize_f8e4m3_row(&[3.0, -1e6], 2.0, &mut q)?;
/// assert_eq!([q[0].to_f32(), q[1].to_f32()], [1.5, -448.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ; [`KernelError::InvalidArgument`]
/// if `scale` is not finite and positive or a value is NaN or infinite (nothing is written
/// then).
pub fn quantize_f8e4m3_row(src: &[f32], scale: f32, dst: &mut [F8E4M3]) -> Result<()> {
    const OP: &str = "quantize_f8e4m3_row";
    check_len(OP, src.len(), dst.len())?;
    check_scale(OP, scale)?;
    check_finite(OP, src)?;
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = F8E4M3::from_f32(x / scale);
    }
    Ok(())
}

/// Quantises a row to fp8 e5m2 with a caller-given scale: `dst[i] =
/// F8E5M2::from_f32(src[i] / scale)` (nearest, ties to even, saturating at ±57344).
///
/// # Errors
/// As [`quantize_f8e4m3_row`].
pub fn quantize_f8e5m2_row(src: &[f32], scale: f32, dst: &mut [F8E5M2]) -> Result<()> {
    const OP: &str = "quantize_f8e5m2_row";
    check_len(OP, src.len(), dst.len())?;
    check_scale(OP, scale)?;
    check_finite(OP, src)?;
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = F8E5M2::from_f32(x / scale);
    }
    Ok(())
}

/// Quantises a row to any [`Code`] type and returns its scale: with `scale = None`, the
/// row's own scale `amax / C::MAX` (1 for an all-zero row, at least `f32::MIN_POSITIVE`:
/// int8's rule, [`quantize_i8_row`]); with `Some(s)`, the caller's scale (fp8's rule).
/// `dst[i] = C::encode(src[i] / scale)`: the same codes as the type's own row quantiser.
///
/// ```
/// use fastattn_kernels::quant::{quantize_row, F8E5M2};
/// let mut q = [F8E5M2::default(); 2];
/// let s = quantize_row(&[1.0, -2.0], None, &mut q)?;
/// assert_eq!(s, 2.0 / F8E5M2::MAX);
/// assert_eq!(q[1].to_f32() * s, -2.0);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if the lengths differ; [`KernelError::InvalidArgument`]
/// if a given scale is not finite and positive or a value is NaN or infinite (nothing is
/// written then).
pub fn quantize_row<C: Code>(src: &[f32], scale: Option<f32>, dst: &mut [C]) -> Result<f32> {
    const OP: &str = "quantize_row";
    check_len(OP, src.len(), dst.len())?;
    check_finite(OP, src)?;
    let scale = match scale {
        Some(s) => {
            check_scale(OP, s)?;
            s
        }
        None => {
            let amax = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if amax == 0.0 {
                1.0
            } else {
                (amax / C::MAX).max(f32::MIN_POSITIVE)
            }
        }
    };
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = C::encode(x / scale);
    }
    Ok(scale)
}
