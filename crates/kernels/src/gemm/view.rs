//! Checked strided matrix views: [`MatRef`] (read-only, any element type) and [`MatMut`]
//! (f32, self-disjoint), the operands of the safe GEMM and decode entry points.

use crate::error::{KernelError, Result};

/// Checks that the strided `rows × cols` view fits in `len` elements.
fn view_extent(
    op: &'static str,
    operand: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .ok_or(KernelError::Overflow { op })?;
    if last >= len {
        return Err(KernelError::BufferTooSmall {
            op,
            operand,
            needed: last + 1,
            len,
        });
    }
    if last > isize::MAX as usize / 4 {
        return Err(KernelError::Overflow { op });
    }
    Ok(())
}

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
/// `T` is f32 or a 16-bit storage type ([`Element`](crate::Element)), which the GEMM
/// converts to f32 as it packs; the decode kernels also take views of 8-bit codes
/// ([`Code`](crate::quant::Code)).
#[derive(Debug)]
pub struct MatRef<'a, T = f32> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<T> Clone for MatRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatRef<'_, T> {}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A `rows × cols` view with row stride `rs` and column stride `cs` (in elements).
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if the view reaches past `data`,
    /// [`KernelError::Overflow`] if its extent does not fit in `isize`.
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        view_extent("MatRef::new", "data", data.len(), rows, cols, rs, cs)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view (`rs = cols`, `cs = 1`).
    ///
    /// ```
    /// let a = fastattn_kernels::gemm::MatRef::row_major(&[1.0, 2.0, 3.0], 1, 3).unwrap();
    /// assert_eq!(a.get(0, 2), 3.0);
    /// ```
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A dense column-major view (`rs = 1`, `cs = rows`).
    pub fn col_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transpose (swaps the strides; no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row stride in elements.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Column stride in elements.
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    /// Element `(i, j)`. Panics when out of range.
    pub fn get(&self, i: usize, j: usize) -> T {
        assert!(i < self.rows && j < self.cols, "MatRef::get out of range");
        self.data[i * self.rs + j * self.cs]
    }
    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
}

/// A mutable strided matrix view whose elements are pairwise distinct (checked).
#[derive(Debug)]
pub struct MatMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> MatMut<'a> {
    /// A `rows × cols` view with strides `rs`, `cs`.
    ///
    /// # Errors
    /// As [`MatRef::new`], and [`KernelError::BadStride`] if two elements of the view would
    /// share memory (e.g. a zero stride). The accepted layouts are those where one stride
    /// is at least the other times its extent (every dense, transposed, padded or gapped
    /// layout); exotic interleavings are refused even when they do not overlap.
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        let op = "MatMut::new";
        view_extent(op, "data", data.len(), rows, cols, rs, cs)?;
        if rows == 0 || cols == 0 {
            // An empty view touches nothing.
        } else if rows > 1 && cols > 1 {
            let ok = (cs >= 1 && rs >= cs.saturating_mul(cols))
                || (rs >= 1 && cs >= rs.saturating_mul(rows));
            if !ok {
                return Err(KernelError::BadStride {
                    op,
                    reason: format!(
                        "output view {rows}x{cols} with strides ({rs}, {cs}) would alias itself"
                    ),
                });
            }
        } else if (rows > 1 && rs == 0) || (cols > 1 && cs == 0) {
            return Err(KernelError::BadStride {
                op,
                reason: "a zero stride makes the output alias itself".into(),
            });
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A dense column-major view.
    pub fn col_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Element `(i, j)`. Panics when out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatMut::get out of range");
        self.data[i * self.rs + j * self.cs]
    }
    /// Sets element `(i, j)`. Panics when out of range.
    pub fn set(&mut self, i: usize, j: usize, v: f32) {
        assert!(i < self.rows && j < self.cols, "MatMut::set out of range");
        self.data[i * self.rs + j * self.cs] = v;
    }
    /// Row stride in elements.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Column stride in elements.
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    /// Pointer to element (0, 0), for kernels that write through the checked view.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
    /// Reborrows the view.
    pub fn rb(&mut self) -> MatMut<'_> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}
