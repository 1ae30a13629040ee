//! Four-dimensional strided views `[B, H, L, D]` over caller-owned buffers.
//!
//! A view is `dims` plus element `strides`, so the same data can be addressed in the
//! `[B, H, L, D]` layout, the `[B, L, H, D]` layout ([`TensorRef::from_blhd`]) or as a head
//! or sequence slice of a larger buffer, without copying. Views are bounds-checked when
//! built; output views are also checked not to alias themselves.

use crate::error::{AttnError, Result};

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

/// A read-only `[B, H, L, D]` view of `T` (f32 for tensors, `bool` for masks).
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
}

/// A mutable `[B, H, L, D]` view whose elements are pairwise distinct.
#[derive(Debug)]
pub struct TensorMut<'a> {
    data: &'a mut [f32],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> TensorMut<'a> {
    /// A view with explicit strides.
    ///
    /// # Errors
    /// As [`TensorRef::new`], and [`AttnError::Layout`] if two elements would share memory
    /// (accepted: layouts where, taking dimensions in increasing stride order, each stride
    /// is at least the previous stride times its extent, which covers every dense,
    /// permuted, padded or sliced layout).
    pub fn new(data: &'a mut [f32], dims: [usize; 4], strides: [usize; 4]) -> Result<Self> {
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
    pub fn contiguous(data: &'a mut [f32], dims: [usize; 4]) -> Result<Self> {
        Self::new(data, dims, contiguous_strides(dims))
    }

    /// A view of `[B, L, H, D]` memory seen as `[B, H, L, D]` (`dims` given as B, H, L, D).
    pub fn from_blhd(data: &'a mut [f32], dims: [usize; 4]) -> Result<Self> {
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
    pub fn get(&self, b: usize, h: usize, l: usize, d: usize) -> f32 {
        assert!(b < self.dims[0] && h < self.dims[1] && l < self.dims[2] && d < self.dims[3]);
        self.data[self.offset(b, h, l, d)]
    }
    /// Reborrows as read-only.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef {
            data: self.data,
            dims: self.dims,
            strides: self.strides,
        }
    }
    /// Reborrows mutably.
    pub fn rb(&mut self) -> TensorMut<'_> {
        TensorMut {
            data: self.data,
            dims: self.dims,
            strides: self.strides,
        }
    }
    /// Raw pointer to element 0, for kernels writing disjoint parts from several threads.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
}
