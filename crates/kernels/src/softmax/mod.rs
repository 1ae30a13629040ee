//! Fused, numerically stable softmax and log-softmax over rows, and the online-softmax
//! building blocks of the fused attention kernel ([`online`]), and the element-wise rows of
//! the attention backward pass ([`backward`]).
//!
//! # Math
//! For a row `x` of `n` values, the logits are `s_j = scale·x_j + mask_j` (`mask_j = 0`
//! without a mask; columns past a causal limit count as `s_j = −inf`), and with
//! `m = max_j s_j`:
//!
//! ```text
//! softmax(s)_j     = exp(s_j − m) / Σ_k exp(s_k − m)
//! log_softmax(s)_j = (s_j − m) − ln Σ_k exp(s_k − m)
//! ```
//!
//! Subtracting the max keeps every exponent `≤ 0`, so logits of ±1e4 or ±1e30 neither
//! overflow nor turn into NaN, and the largest term is exactly `exp(0) = 1`, so the sum is
//! at least 1. Outputs of softmax lie in `[0, 1]`.
//!
//! # Fusion
//! A row is read at most three times while it sits in L1: the max of the logits, then
//! `exp(s − m)` written out with its running sum (log-softmax only sums), then the
//! normalisation by `1/sum` (log-softmax writes `(s − m) − ln sum`). The scale, the additive
//! mask and the causal limit are folded into the logit computation of each pass, so
//! attention can hand over raw `q·k` scores ([`softmax_row_with`]). The exp is
//! [`crate::exp`]'s vector exp, tails go through the same vector code with masked loads.
//!
//! # Edge semantics (tested)
//! - A row whose logits are all −inf (fully masked) gives **all zeros** (log-softmax: all
//!   −inf), not NaN.
//! - A NaN anywhere in a row's logits makes that whole row NaN (other rows are unaffected).
//!   So does a +inf logit (as `inf − inf`), and `+inf` under a `−inf` mask (the mask is
//!   *added*).
//! - An empty row, or an empty slice of rows, is fine and does nothing.
//! - Columns past a causal limit are exactly 0 (log-softmax: −inf).
//! - Probabilities below about `f32::MIN_POSITIVE` (`1.18e-38`) are flushed to 0: no
//!   subnormal is produced (on x86 each multiply with a subnormal result costs a microcode
//!   assist of ~100 cycles, which would make rows with widely spread or masked logits
//!   10–30× slower). The exp flushes the same way ([`crate::exp`]).
//!
//! # Parallelism
//! The slice-of-rows forms split rows across the current thread count
//! ([`Parallelism::Rayon`]) when the input holds at least [`PAR_MIN_ELEMENTS`] values, in
//! tasks of whole rows; every row is computed by the same instructions whatever the split,
//! so results are bit-identical at any thread count. A single row is never split.
//!
//! ```
//! use fastattn_kernels::softmax::softmax_inplace;
//! let mut x = vec![1.0f32, 2.0, 3.0, 1e4, 1e4, -1e4];
//! softmax_inplace(&mut x, 3)?;
//! assert!((x[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! assert_eq!(&x[3..], &[0.5, 0.5, 0.0]);
//! # Ok::<(), fastattn_kernels::KernelError>(())
//! ```

pub mod backward;
pub(crate) mod kernel;
pub mod online;
pub mod reference;

use crate::dispatch::{current_isa, Isa};
use crate::error::{KernelError, Result};
use crate::parallel::Parallelism;
use crate::simd::{dispatch, IsaKernel, SimdOps};
use kernel::Mode;

/// Inputs with fewer values than this run on the calling thread even with
/// [`Parallelism::Rayon`]: at ~2 G values/s that is ~30 µs of work, below which waking
/// workers costs more than it saves.
pub const PAR_MIN_ELEMENTS: usize = 1 << 16;

/// Values per rayon task (rounded to whole rows, at least one row).
const PAR_TASK_ELEMENTS: usize = 1 << 14;

/// What is folded into the logits of a row: `s_j = scale·x_j + mask_j`, with the columns
/// past `causal_limit` counted as −inf.
///
/// For the slice-of-rows forms (`softmax_inplace_with`, ...) the options apply to every
/// row, with two per-row readings:
/// - `mask` may hold one row (`row_len` values, added to every row) or one mask row per row
///   (as many values as the input);
/// - `causal_limit = Some(c)` lets row `i` (counting from 0 in the slice) see the columns
///   `0..=c + i`: the causal diagonal of a block of queries whose first query sees `c + 1`
///   keys (`c = 0` is the square lower-triangular mask).
///
/// ```
/// use fastattn_kernels::softmax::RowOptions;
/// let mask = [0.0, f32::NEG_INFINITY, 0.0];
/// let opts = RowOptions::new().with_scale(0.125).with_mask(&mask);
/// assert_eq!(opts.scale, 0.125);
/// assert_eq!(RowOptions::default().scale, 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RowOptions<'a> {
    /// Multiplies every value before the mask is added (attention passes `1/√d`).
    pub scale: f32,
    /// Additive mask (`0` keeps a column, `−inf` removes it, anything else biases it).
    pub mask: Option<&'a [f32]>,
    /// Columns with index `> causal_limit` count as −inf (see the type docs for rows).
    pub causal_limit: Option<usize>,
}

impl RowOptions<'static> {
    /// Scale 1, no mask, no causal limit: the plain softmax.
    pub const fn new() -> Self {
        RowOptions {
            scale: 1.0,
            mask: None,
            causal_limit: None,
        }
    }
}

impl Default for RowOptions<'static> {
    fn default() -> Self {
        RowOptions::new()
    }
}

impl<'a> RowOptions<'a> {
    /// The same options with `scale`.
    pub fn with_scale(self, scale: f32) -> Self {
        RowOptions { scale, ..self }
    }

    /// The same options with an additive mask.
    pub fn with_mask<'b>(self, mask: &'b [f32]) -> RowOptions<'b>
    where
        'a: 'b,
    {
        RowOptions {
            scale: self.scale,
            mask: Some(mask),
            causal_limit: self.causal_limit,
        }
    }

    /// The same options with a causal limit: columns `> limit` count as −inf.
    pub fn with_causal_limit(self, limit: usize) -> Self {
        RowOptions {
            causal_limit: Some(limit),
            ..self
        }
    }
}

/// How the mask applies to the rows of one call.
#[derive(Clone, Copy)]
enum MaskRows<'a> {
    None,
    /// One row, added to every row.
    Broadcast(&'a [f32]),
    /// One row per row of the input (sliced to the rows of a task).
    PerRow(&'a [f32]),
}

/// Softmax or log-softmax over whole rows of `dst` (of `src` when given, else in place).
struct RowsKernel<'a> {
    mode: Mode,
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
    row_len: usize,
    /// Index of the first row within the caller's slice (for the causal diagonal).
    first_row: usize,
    scale: f32,
    mask: MaskRows<'a>,
    causal: Option<usize>,
}

impl IsaKernel for RowsKernel<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: SimdOps>(self) {
        let n = self.row_len;
        debug_assert!(n > 0 && self.dst.len().is_multiple_of(n));
        debug_assert!(self.src.is_none_or(|s| s.len() == self.dst.len()));
        let rows = self.dst.len() / n;
        let dst = self.dst.as_mut_ptr();
        let src = match self.src {
            Some(s) => s.as_ptr(),
            None => dst as *const f32,
        };
        for r in 0..rows {
            let nv = match self.causal {
                Some(c) => c
                    .saturating_add(self.first_row + r)
                    .saturating_add(1)
                    .min(n),
                None => n,
            };
            let mask = match self.mask {
                MaskRows::None => None,
                MaskRows::Broadcast(m) => Some(m.as_ptr()),
                MaskRows::PerRow(m) => Some(m[r * n..(r + 1) * n].as_ptr()),
            };
            // SAFETY: row r spans `r·n .. (r+1)·n`, inside `src` and `dst` (both hold
            // `rows·n` values, checked by the callers); they are the same pointer or
            // distinct slices; a mask row holds `n` values (checked); `nv <= n`; the ISA
            // is present (caller contract).
            unsafe {
                kernel::row::<S>(
                    self.mode,
                    src.add(r * n),
                    mask,
                    dst.add(r * n),
                    n,
                    nv,
                    self.scale,
                )
            };
        }
    }
}

/// Checks the shapes of a slice-of-rows call; returns the number of rows.
fn check_rows(
    op: &'static str,
    len: usize,
    out_len: Option<usize>,
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<usize> {
    if let Some(o) = out_len {
        if o != len {
            return Err(KernelError::ShapeMismatch {
                op,
                expected: format!("out.len() == x.len() = {len}"),
                got: format!("out.len() = {o}"),
            });
        }
    }
    if row_len == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(KernelError::InvalidArgument {
                op,
                reason: format!("row_len is 0 but the input holds {len} values"),
            })
        };
    }
    if !len.is_multiple_of(row_len) {
        return Err(KernelError::ShapeMismatch {
            op,
            expected: format!("a length that is a multiple of row_len = {row_len}"),
            got: format!("length {len}"),
        });
    }
    if let Some(m) = opts.mask {
        if m.len() != row_len && m.len() != len {
            return Err(KernelError::ShapeMismatch {
                op,
                expected: format!("a mask of row_len = {row_len} or of x.len() = {len} values"),
                got: format!("mask.len() = {}", m.len()),
            });
        }
    }
    Ok(len / row_len)
}

/// The driver of every slice-of-rows form: checks, then one kernel call over all rows or
/// rayon tasks of whole rows.
#[allow(clippy::too_many_arguments)]
fn run_rows(
    op: &'static str,
    isa: Isa,
    par: Parallelism,
    mode: Mode,
    src: Option<&[f32]>,
    dst: &mut [f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<()> {
    isa.check()?;
    let rows = check_rows(op, dst.len(), src.map(<[f32]>::len), row_len, opts)?;
    if rows == 0 {
        return Ok(());
    }
    let mask = match opts.mask {
        None => MaskRows::None,
        Some(m) if m.len() == row_len => MaskRows::Broadcast(m),
        Some(m) => MaskRows::PerRow(m),
    };
    let (scale, causal) = (opts.scale, opts.causal_limit);
    let parallel = par == Parallelism::Rayon
        && rows > 1
        && dst.len() >= PAR_MIN_ELEMENTS
        && crate::parallel::current_threads() > 1;
    if !parallel {
        let k = RowsKernel {
            mode,
            src,
            dst,
            row_len,
            first_row: 0,
            scale,
            mask,
            causal,
        };
        // SAFETY: `isa` was checked above.
        unsafe { dispatch(isa, k) };
        return Ok(());
    }
    let rows_per_task = (PAR_TASK_ELEMENTS / row_len).max(1);
    let chunk = rows_per_task * row_len;
    let task = |t: usize, src: Option<&[f32]>, dst: &mut [f32]| {
        let first_row = t * rows_per_task;
        let mask = match mask {
            MaskRows::PerRow(m) => MaskRows::PerRow(&m[first_row * row_len..][..dst.len()]),
            other => other,
        };
        let k = RowsKernel {
            mode,
            src,
            dst,
            row_len,
            first_row,
            scale,
            mask,
            causal,
        };
        // SAFETY: `isa` was checked above.
        unsafe { dispatch(isa, k) };
    };
    let threads = crate::parallel::current_threads();
    crate::parallel::for_each_chunk_mut(threads, dst, chunk, |t, d| {
        task(t, src.map(|s| &s[t * chunk..][..d.len()]), d)
    });
    Ok(())
}

/// Checks the mask of a single-row call.
fn check_row_mask(op: &'static str, n: usize, opts: &RowOptions<'_>) -> Result<()> {
    match opts.mask {
        Some(m) if m.len() != n => Err(KernelError::ShapeMismatch {
            op,
            expected: format!("a mask of row.len() = {n} values"),
            got: format!("mask.len() = {}", m.len()),
        }),
        _ => Ok(()),
    }
}

/// The fused row softmax attention calls on raw scores: `row = softmax(scale·row + mask)`
/// with the columns past `opts.causal_limit` set to 0, in place, in three passes over the
/// row. Never uses threads.
///
/// # Errors
/// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`; [`KernelError::ShapeMismatch`]
/// if the mask length is not `row.len()`.
///
/// ```
/// use fastattn_kernels::softmax::{softmax_row_with, RowOptions};
/// use fastattn_kernels::Isa;
/// let mut scores = [2.0f32, 2.0, 50.0, -3.0];
/// let mask = [0.0, 0.0, f32::NEG_INFINITY, 0.0];
/// let opts = RowOptions::new().with_scale(0.5).with_mask(&mask).with_causal_limit(2);
/// softmax_row_with(Isa::best(), &mut scores, &opts)?;
/// assert_eq!(scores, [0.5, 0.5, 0.0, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn softmax_row_with(isa: Isa, row: &mut [f32], opts: &RowOptions<'_>) -> Result<()> {
    row_with("softmax_row", Mode::Softmax, isa, row, opts)
}

/// [`softmax_row_with`] for log-softmax: `row = log_softmax(scale·row + mask)`, columns
/// past the causal limit set to −inf.
///
/// # Errors
/// As [`softmax_row_with`].
///
/// ```
/// use fastattn_kernels::softmax::{log_softmax_row_with, RowOptions};
/// let mut x = [0.0f32, 0.0];
/// log_softmax_row_with(fastattn_kernels::Isa::Scalar, &mut x, &RowOptions::new())?;
/// assert!(x.iter().all(|&v| (v + std::f32::consts::LN_2).abs() < 1e-6));
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn log_softmax_row_with(isa: Isa, row: &mut [f32], opts: &RowOptions<'_>) -> Result<()> {
    row_with("log_softmax_row", Mode::LogSoftmax, isa, row, opts)
}

fn row_with(
    op: &'static str,
    mode: Mode,
    isa: Isa,
    row: &mut [f32],
    opts: &RowOptions<'_>,
) -> Result<()> {
    isa.check()?;
    check_row_mask(op, row.len(), opts)?;
    if row.is_empty() {
        return Ok(());
    }
    let row_len = row.len();
    let k = RowsKernel {
        mode,
        src: None,
        dst: row,
        row_len,
        first_row: 0,
        scale: opts.scale,
        mask: opts.mask.map_or(MaskRows::None, MaskRows::Broadcast),
        causal: opts.causal_limit,
    };
    // SAFETY: `isa` was checked above.
    unsafe { dispatch(isa, k) };
    Ok(())
}

/// Softmax of every row of `row_len` values of `x`, in place, with the current variant and
/// the current rayon pool.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if `x.len()` is not a multiple of `row_len`,
/// [`KernelError::InvalidArgument`] if `row_len == 0` and `x` is not empty,
/// [`KernelError::UnsupportedIsa`] if `FASTATTN_ISA` names an ISA this CPU lacks.
///
/// ```
/// let mut x = [f32::NEG_INFINITY; 4];
/// fastattn_kernels::softmax::softmax_inplace(&mut x, 2)?; // fully masked rows
/// assert_eq!(x, [0.0; 4]);
/// assert!(fastattn_kernels::softmax::softmax_inplace(&mut [0.0; 5], 2).is_err());
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn softmax_inplace(x: &mut [f32], row_len: usize) -> Result<()> {
    softmax_inplace_with(
        current_isa()?,
        Parallelism::Rayon,
        x,
        row_len,
        &RowOptions::new(),
    )
}

/// [`softmax_inplace`] with the variant, the parallelism and the row options chosen by the
/// caller.
///
/// # Errors
/// As [`softmax_inplace`], with [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`, and
/// [`KernelError::ShapeMismatch`] if the mask holds neither `row_len` nor `x.len()` values.
///
/// ```
/// use fastattn_kernels::softmax::{softmax_inplace_with, RowOptions};
/// use fastattn_kernels::{Isa, Parallelism};
/// // Causal 3×3: row i sees columns 0..=i.
/// let mut x = [0.0f32; 9];
/// let opts = RowOptions::new().with_causal_limit(0);
/// softmax_inplace_with(Isa::best(), Parallelism::Sequential, &mut x, 3, &opts)?;
/// assert_eq!(x[..6], [1.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn softmax_inplace_with(
    isa: Isa,
    par: Parallelism,
    x: &mut [f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<()> {
    run_rows(
        "softmax_inplace",
        isa,
        par,
        Mode::Softmax,
        None,
        x,
        row_len,
        opts,
    )
}

/// Out-of-place softmax: `out` = softmax of every row of `row_len` values of `x`.
///
/// # Errors
/// As [`softmax_inplace`], and [`KernelError::ShapeMismatch`] if `out.len() != x.len()`.
///
/// ```
/// let x = [0.0f32, 0.0, 0.0, 0.0];
/// let mut p = [9.0f32; 4];
/// fastattn_kernels::softmax::softmax(&x, &mut p, 4)?;
/// assert_eq!(p, [0.25; 4]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn softmax(x: &[f32], out: &mut [f32], row_len: usize) -> Result<()> {
    softmax_with(
        current_isa()?,
        Parallelism::Rayon,
        x,
        out,
        row_len,
        &RowOptions::new(),
    )
}

/// [`softmax`] with the variant, the parallelism and the row options chosen by the caller.
///
/// # Errors
/// As [`softmax_inplace_with`], and [`KernelError::ShapeMismatch`] if
/// `out.len() != x.len()`.
///
/// ```
/// use fastattn_kernels::softmax::{softmax_with, RowOptions};
/// use fastattn_kernels::{Isa, Parallelism};
/// let x = [1.0f32, 1.0, 1.0];
/// let mut p = [0.0f32; 3];
/// let mask = [0.0, 0.0, f32::NEG_INFINITY];
/// softmax_with(Isa::Scalar, Parallelism::Sequential, &x, &mut p, 3,
///              &RowOptions::new().with_mask(&mask))?;
/// assert_eq!(p, [0.5, 0.5, 0.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn softmax_with(
    isa: Isa,
    par: Parallelism,
    x: &[f32],
    out: &mut [f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<()> {
    run_rows(
        "softmax",
        isa,
        par,
        Mode::Softmax,
        Some(x),
        out,
        row_len,
        opts,
    )
}

/// Log-softmax of every row of `row_len` values of `x`, in place:
/// `x_j ← (x_j − max) − ln Σ exp(x_k − max)`. A fully masked row gives −inf.
///
/// # Errors
/// As [`softmax_inplace`].
///
/// ```
/// let mut x = [0.0f32, 0.0, 1e4, -1e4];
/// fastattn_kernels::softmax::log_softmax_inplace(&mut x, 2)?;
/// assert!((x[0] + std::f32::consts::LN_2).abs() < 1e-6);
/// assert_eq!(x[2], 0.0);
/// assert_eq!(x[3], -2e4);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn log_softmax_inplace(x: &mut [f32], row_len: usize) -> Result<()> {
    log_softmax_inplace_with(
        current_isa()?,
        Parallelism::Rayon,
        x,
        row_len,
        &RowOptions::new(),
    )
}

/// [`log_softmax_inplace`] with the variant, the parallelism and the row options chosen by
/// the caller.
///
/// # Errors
/// As [`softmax_inplace_with`].
///
/// ```
/// use fastattn_kernels::softmax::{log_softmax_inplace_with, RowOptions};
/// use fastattn_kernels::{Isa, Parallelism};
/// let mut x = [3.0f32, 3.0, 3.0, 3.0];
/// let opts = RowOptions::new().with_causal_limit(1);
/// log_softmax_inplace_with(Isa::Portable, Parallelism::Sequential, &mut x, 4, &opts)?;
/// assert_eq!(x[2..], [f32::NEG_INFINITY, f32::NEG_INFINITY]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn log_softmax_inplace_with(
    isa: Isa,
    par: Parallelism,
    x: &mut [f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<()> {
    run_rows(
        "log_softmax_inplace",
        isa,
        par,
        Mode::LogSoftmax,
        None,
        x,
        row_len,
        opts,
    )
}

/// Out-of-place log-softmax of every row of `row_len` values of `x`.
///
/// # Errors
/// As [`softmax`].
///
/// ```
/// let x = [5.0f32; 8];
/// let mut y = [0.0f32; 8];
/// fastattn_kernels::softmax::log_softmax(&x, &mut y, 8)?;
/// assert!(y.iter().all(|&v| (v + 8f32.ln()).abs() < 1e-6));
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn log_softmax(x: &[f32], out: &mut [f32], row_len: usize) -> Result<()> {
    log_softmax_with(
        current_isa()?,
        Parallelism::Rayon,
        x,
        out,
        row_len,
        &RowOptions::new(),
    )
}

/// [`log_softmax`] with the variant, the parallelism and the row options chosen by the
/// caller.
///
/// # Errors
/// As [`softmax_with`].
///
/// ```
/// use fastattn_kernels::softmax::{log_softmax_with, RowOptions};
/// use fastattn_kernels::{Isa, Parallelism};
/// let x = [1.0f32, 2.0];
/// let mut y = [0.0f32; 2];
/// log_softmax_with(Isa::Scalar, Parallelism::Rayon, &x, &mut y, 2,
///                  &RowOptions::new().with_scale(0.0))?;
/// assert!(y.iter().all(|&v| (v + std::f32::consts::LN_2).abs() < 1e-6));
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
pub fn log_softmax_with(
    isa: Isa,
    par: Parallelism,
    x: &[f32],
    out: &mut [f32],
    row_len: usize,
    opts: &RowOptions<'_>,
) -> Result<()> {
    run_rows(
        "log_softmax",
        isa,
        par,
        Mode::LogSoftmax,
        Some(x),
        out,
        row_len,
        opts,
    )
}
