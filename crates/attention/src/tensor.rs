//! Four-dimensional strided views `[B, H, L, D]` over caller-owned buffers.
//!
//! A view is `dims` plus element `strides`, so the same data can be addressed in the
//! `[B, H, L, D]` layout, the `[B, L, H, D]` layout ([`TensorRef::from_blhd`]) or as a head
//! or sequence slice of a larger buffer, without copying. Views are bounds-checked when
//! built; output views are also checked not to alias themselves.

use crate::error::{AttnError, Result};
use kernels::dtype::{DTypeEnum, Element, Slice};
use kernels::{match_dtype, Isa};

fn extent(what: &'static str, len: usize, dims: [usize; 4], strides: [usize; 4]) -> Result<()> {
    if dims.contains(&0) {
        return Ok(());
    }
    let mut last = 0usize;
    for (d, s) in dims.iter().zip(strides) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or(AttnError::Overflow { what })?;
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(AttnError::Overflow { what })?;
    if last >= len || last > isize::MAX as usize / 8 {
        return Err(AttnError::Layout {
            what: format!(
                "{what}: view {dims:?} with strides {strides:?} needs {} elements, buffer has {len}",
                last.saturating_add(1)
            ),
        });
    }
    Ok(())
}

/// Contiguous strides of `[B, H, L, D]` (saturating: a view whose size overflows is then
/// refused with [`AttnError::Overflow`] when it is built).
pub fn contiguous_strides(dims: [usize; 4]) -> [usize; 4] {
    let hld = dims[1].saturating_mul(dims[2]).saturating_mul(dims[3]);
    [hld, dims[2].saturating_mul(dims[3]), dims[3], 1]
}

/// Strides of `[B, L, H, D]` memory seen as `[B, H, L, D]` (saturating, as above).
fn blhd_strides(dims: [usize; 4]) -> [usize; 4] {
    let [_, h, l, d] = dims;
    let hd = h.saturating_mul(d);
    [l.saturating_mul(hd), d, hd, 1]
}

/// A read-only `[B, H, L, D]` view of `T`: f32 (the default), f16 or bf16 for Q, K and V
/// ([`Element`]); `bool` or f32 for masks.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a, T = f32> {
    data: &'a [T],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a, T: Copy> TensorRef<'a, T> {
    /// A view with explicit element strides (0 allowed: broadcasting, for masks).
    ///
    /// # Errors
    /// [`AttnError::Layout`] if the view reaches past `data`, [`AttnError::Overflow`] if
    /// its size overflows.
    pub fn new(data: &'a [T], dims: [usize; 4], strides: [usize; 4]) -> Result<Self> {
        extent("tensor", data.len(), dims, strides)?;
        Ok(TensorRef {
            data,
            dims,
            strides,
        })
    }

    /// A dense `[B, H, L, D]` view.
    ///
    /// ```
    /// let q = vec![0.0f32; 2 * 4 * 16 * 8];
    /// let t = fastattn_attention::TensorRef::contiguous(&q, [2, 4, 16, 8]).unwrap();
    /// assert_eq!(t.strides(), [512, 128, 8, 1]);
    /// ```
    pub fn contiguous(data: &'a [T], dims: [usize; 4]) -> Result<Self> {
        Self::new(data, dims, contiguous_strides(dims))
    }

    /// A view of memory laid out `[B, L, H, D]` (as most model code keeps it), seen as
    /// `[B, H, L, D]`. `dims` is given as `[B, H, L, D]`.
    pub fn from_blhd(data: &'a [T], dims: [usize; 4]) -> Result<Self> {
        Self::new(data, dims, blhd_strides(dims))
    }

    /// `[B, H, L, D]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }
    /// Element strides.
    pub fn strides(&self) -> [usize; 4] {
        self.strides
    }
    /// The underlying buffer.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Offset of element `[b, h, l, d]`.
    #[inline]
    pub fn offset(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + l * self.strides[2] + d * self.strides[3]
    }
    /// Element `[b, h, l, d]` (panics when out of range).
    pub fn get(&self, b: usize, h: usize, l: usize, d: usize) -> T {
        assert!(b < self.dims[0] && h < self.dims[1] && l < self.dims[2] && d < self.dims[3]);
        self.data[self.offset(b, h, l, d)]
    }
    /// The same dims and strides over `data`, which has this view's length (so the
    /// view's extent check still holds).
    pub(crate) fn with_data<U>(&self, data: &'a [U]) -> TensorRef<'a, U> {
        debug_assert_eq!(data.len(), self.data.len());
        TensorRef {
            data,
            dims: self.dims,
            strides: self.strides,
        }
    }
}

/// A mutable `[B, H, L, D]` view whose elements are pairwise distinct, of f32 (the
/// default) or a 16-bit type ([`Element`]).
#[derive(Debug)]
pub struct TensorMut<'a, T = f32> {
    data: &'a mut [T],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a, T: Copy> TensorMut<'a, T> {
    /// A view with explicit strides.
    ///
    /// # Errors
    /// As [`TensorRef::new`], and [`AttnError::Layout`] if two elements would share memory
    /// (accepted: layouts where, taking dimensions in increasing stride order, each stride
    /// is at least the previous stride times its extent, which covers every dense,
    /// permuted, padded or sliced layout).
    pub fn new(data: &'a mut [T], dims: [usize; 4], strides: [usize; 4]) -> Result<Self> {
        extent("output tensor", data.len(), dims, strides)?;
        if !dims.contains(&0) {
            let mut ds: Vec<(usize, usize)> = strides
                .iter()
                .zip(dims)
                .filter(|(_, d)| *d > 1)
                .map(|(&s, d)| (s, d))
                .collect();
            ds.sort_unstable();
            let mut need = 1usize;
            for (s, d) in ds {
                if s < need {
                    return Err(AttnError::Layout {
                        what: format!(
                            "output view {dims:?} with strides {strides:?} aliases itself"
                        ),
                    });
                }
                need = s.saturating_mul(d);
            }
        }
        Ok(TensorMut {
            data,
            dims,
            strides,
        })
    }

    /// A dense `[B, H, L, D]` view.
    pub fn contiguous(data: &'a mut [T], dims: [usize; 4]) -> Result<Self> {
        Self::new(data, dims, contiguous_strides(dims))
    }

    /// A view of `[B, L, H, D]` memory seen as `[B, H, L, D]` (`dims` given as B, H, L, D).
    pub fn from_blhd(data: &'a mut [T], dims: [usize; 4]) -> Result<Self> {
        Self::new(data, dims, blhd_strides(dims))
    }

    /// `[B, H, L, D]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }
    /// Element strides.
    pub fn strides(&self) -> [usize; 4] {
        self.strides
    }
    /// Offset of element `[b, h, l, d]`.
    #[inline]
    pub fn offset(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + l * self.strides[2] + d * self.strides[3]
    }
    /// Element `[b, h, l, d]` (panics when out of range).
    pub fn get(&self, b: usize, h: usize, l: usize, d: usize) -> T {
        assert!(b < self.dims[0] && h < self.dims[1] && l < self.dims[2] && d < self.dims[3]);
        self.data[self.offset(b, h, l, d)]
    }
    /// Reborrows as read-only.
    pub fn as_ref(&self) -> TensorRef<'_, T> {
        TensorRef {
            data: self.data,
            dims: self.dims,
            strides: self.strides,
        }
    }
    /// Reborrows mutably.
    pub fn rb(&mut self) -> TensorMut<'_, T> {
        TensorMut {
            data: self.data,
            dims: self.dims,
            strides: self.strides,
        }
    }
    /// The whole buffer the view lies in (offsets from [`TensorMut::offset`]).
    pub(crate) fn data_mut(&mut self) -> &mut [T] {
        self.data
    }
    /// Raw pointer to element 0, for kernels writing disjoint parts from several threads.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut T {
        self.data.as_mut_ptr()
    }
}

kernels::dtype_enum! {
    /// A read-only view whose element type is known only at run time (a C or Python
    /// caller's tensor): pass it to [`crate::sdpa_into_dyn`]. Built from a typed view with
    /// `From`.
    #[derive(Debug, Clone, Copy)]
    #[non_exhaustive]
    pub enum DynTensor<'a> { TensorRef<'a, _> }
}

impl DynTensor<'_> {
    /// `[B, H, L, D]`.
    pub fn dims(&self) -> [usize; 4] {
        match_dtype!(self, DynTensor(t) => t.dims())
    }
}

impl<'a, T: Element> From<TensorRef<'a, T>> for DynTensor<'a> {
    fn from(t: TensorRef<'a, T>) -> Self {
        DynTensor::from_typed(t)
    }
}

kernels::dtype_enum! {
    /// A mutable view whose element type is known only at run time (see [`DynTensor`]).
    #[derive(Debug)]
    #[non_exhaustive]
    pub enum DynTensorMut<'a> { TensorMut<'a, _> }
}

impl DynTensorMut<'_> {
    /// `[B, H, L, D]`.
    pub fn dims(&self) -> [usize; 4] {
        match_dtype!(self, DynTensorMut(t) => t.dims())
    }
    /// Element strides.
    pub fn strides(&self) -> [usize; 4] {
        match_dtype!(self, DynTensorMut(t) => t.strides())
    }
}

impl<'a, T: Element> From<TensorMut<'a, T>> for DynTensorMut<'a> {
    fn from(t: TensorMut<'a, T>) -> Self {
        DynTensorMut::from_typed(t)
    }
}

/// A read-only view of any element type: what the non-generic attention paths take (the
/// public functions are generic and erase the type here, so that each path is compiled
/// once, with a type switch only where values are read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnyRef<'a> {
    pub(crate) data: Slice<'a>,
    strides: [usize; 4],
}

/// Runs `$body` with `$m` bound to the matrix `$any.mat(...)` as a typed `MatRef`.
macro_rules! with_mat {
    ($any:expr, ($base:expr, $rows:expr, $cols:expr, $rs:expr, $cs:expr), $m:ident => $body:expr) => {
        kernels::match_dtype!($any.data.tail($base), kernels::dtype::Slice(s) => {
            let $m = kernels::gemm::MatRef::new(s, $rows, $cols, $rs, $cs)?;
            $body
        })
    };
}
pub(crate) use with_mat;

impl<'a> AnyRef<'a> {
    /// The view behind `t`.
    pub(crate) fn of_dyn(t: DynTensor<'a>) -> Self {
        match_dtype!(t, DynTensor(t) => Self::of(t))
    }

    /// Erases the element type of `t`.
    pub(crate) fn of<T: Element>(t: TensorRef<'a, T>) -> Self {
        AnyRef {
            data: T::slice(t.data),
            strides: t.strides,
        }
    }
    pub(crate) fn strides(&self) -> [usize; 4] {
        self.strides
    }
    /// The same strides over the elements from `off` on: element `(b, h, l, d)` of the
    /// result is element `off + offset(b, h, l, d)` of `self`.
    pub(crate) fn tail(&self, off: usize) -> Self {
        AnyRef {
            data: self.data.tail(off),
            strides: self.strides,
        }
    }
    #[inline]
    pub(crate) fn offset(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + l * self.strides[2] + d * self.strides[3]
    }
    /// `dst.len()` values from `base` at element stride `st`, widened to f32 (vector
    /// conversions for unit stride).
    pub(crate) fn gather(&self, isa: Isa, base: usize, st: usize, dst: &mut [f32]) -> Result<()> {
        let n = dst.len();
        if n == 0 {
            return Ok(());
        }
        if let (1, Slice::F32(s)) = (st, self.data) {
            dst.copy_from_slice(&s[base..base + n]);
            return Ok(());
        }
        match_dtype!(self.data, Slice(s) => {
            if st == 1 {
                kernels::convert::to_f32_with(isa, &s[base..base + n], dst)?;
            } else {
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = s[base + x * st].to_f32();
                }
            }
        });
        Ok(())
    }
}

kernels::dtype_enum! {
    /// Where a kernel writes output values of any element type: a raw pointer shared by
    /// tasks that write disjoint elements (built only through the `unsafe` [`AnyOut::new`]).
    #[derive(Clone, Copy)]
    pub(crate) enum AnyOut { crate::SyncPtr<_> }
}

impl AnyOut {
    /// # Safety
    /// As [`crate::SyncPtr::new`]: threads receiving it write disjoint elements of `t`'s
    /// view, with no other access meanwhile.
    pub(crate) unsafe fn new<T: Element>(t: &mut TensorMut<'_, T>) -> Self {
        // SAFETY: forwarded contract.
        AnyOut::from_typed(unsafe { crate::SyncPtr::new(t.data.as_mut_ptr()) })
    }

    /// As [`AnyOut::new`], for the view behind `t`.
    ///
    /// # Safety
    /// As [`AnyOut::new`].
    pub(crate) unsafe fn of_dyn(t: &mut DynTensorMut<'_>) -> Self {
        // SAFETY: forwarded contract.
        match_dtype!(t, DynTensorMut(t) => unsafe { Self::new(t) })
    }

    /// Stores `n` values `value(0..n)` at elements `base + x·stride`, each rounded to the
    /// output type (to nearest, ties to even, for 16-bit outputs): one dispatch on the
    /// type, then a loop compiled for it.
    ///
    /// # Safety
    /// The elements are inside the view this was built from, and owned by the calling task.
    #[inline]
    pub(crate) unsafe fn store_row(
        self,
        base: usize,
        stride: usize,
        n: usize,
        value: impl Fn(usize) -> f32,
    ) {
        match_dtype!(self, AnyOut(p): T => {
            for x in 0..n {
                // SAFETY: forwarded contract.
                unsafe { *p.get().add(base + x * stride) = T::from_f32(value(x)) };
            }
        })
    }

    /// The f32 pointer, when the output is f32.
    pub(crate) fn as_f32(self) -> Option<crate::SyncPtr<f32>> {
        if let AnyOut::F32(p) = self {
            Some(p)
        } else {
            None
        }
    }
}

/// Copies `n` values from `src` (from `s0`, stride `ss`) to `dst` (from `d0`, stride `ds`),
/// converted to `T`: one vector conversion when both strides are 1, else element by element
/// (the conversions are exact or correctly rounded, so both give the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert_row<S: Element, T: Element>(
    isa: Isa,
    src: &[S],
    s0: usize,
    ss: usize,
    dst: &mut [T],
    d0: usize,
    ds: usize,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    if ss == 1 && ds == 1 {
        kernels::convert::convert_with(isa, &src[s0..s0 + n], &mut dst[d0..d0 + n])?;
    } else {
        for x in 0..n {
            dst[d0 + x * ds] = T::from_f32(src[s0 + x * ss].to_f32());
        }
    }
    Ok(())
}
