//! Where the decode kernels find their key or value rows: at a fixed stride (a matrix) or
//! at listed offsets (a paged cache), and the heads that share one list.

/// Where a kernel finds its key or value rows: row `j` at `base + j·ld` ([`Strided`]) or at
/// `base + off[j]` ([`Indexed`], rows scattered over pages). The kernels do the same
/// arithmetic on either, so both give the same bits on the same values.
pub(super) trait Rows: Copy {
    /// The element type of the rows.
    type Elem;
    /// Row `j`'s first value.
    ///
    /// # Safety
    /// `j` is a row of the set.
    unsafe fn row(self, j: usize) -> *const Self::Elem;
    /// An address at or near row `j`, for prefetching only (never dereferenced; `j` may be
    /// past the last row).
    fn ahead(self, j: usize) -> *const Self::Elem;
}

/// Rows at a fixed stride.
pub(super) struct Strided<E> {
    pub(super) base: *const E,
    pub(super) ld: usize,
}

impl<E> Clone for Strided<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Strided<E> {}

impl<E> Rows for Strided<E> {
    type Elem = E;
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const E {
        // SAFETY: row j is inside the matrix (caller contract).
        unsafe { self.base.add(j * self.ld) }
    }
    #[inline(always)]
    fn ahead(self, j: usize) -> *const E {
        self.base.wrapping_add(j * self.ld)
    }
}

/// The rows of `K` shifted by `off` elements (another head's rows of the same tokens).
pub(super) struct Shift<K> {
    pub(super) k: K,
    pub(super) off: usize,
}

impl<K: Copy> Clone for Shift<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: Copy> Copy for Shift<K> {}

impl<K: Rows> Rows for Shift<K> {
    type Elem = K::Elem;
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const K::Elem {
        // SAFETY: the shifted row is inside the slice (caller contract).
        unsafe { self.k.row(j).add(self.off) }
    }
    #[inline(always)]
    fn ahead(self, j: usize) -> *const K::Elem {
        self.k.ahead(j).wrapping_add(self.off)
    }
}

/// Several heads that share one list of rows: head `h`'s row `j` is `h·stride` elements
/// after row `j`, and its query (weight) and output rows are the `h`-th of `count` equal
/// bands of Q and S (P and O). A paged cache keeps the key/value heads of a token side by
/// side, so taking all heads a few tokens at a time reads each page's rows in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Heads (≥ 1).
    pub count: usize,
    /// Elements from one head's row to the next head's.
    pub stride: usize,
}

impl Heads {
    /// One head: the rows as given.
    pub const ONE: Heads = Heads {
        count: 1,
        stride: 0,
    };
}

/// Rows at element offsets `off[0 .. n]` from `base`.
pub(super) struct Indexed<E> {
    pub(super) base: *const E,
    pub(super) off: *const usize,
    pub(super) n: usize,
}

impl<E> Clone for Indexed<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Indexed<E> {}

impl<E> Rows for Indexed<E> {
    type Elem = E;
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const E {
        // SAFETY: j < n, and every offset was checked to start a readable row.
        unsafe { self.base.add(*self.off.add(j)) }
    }
    #[inline(always)]
    fn ahead(self, j: usize) -> *const E {
        if j < self.n {
            // SAFETY: j < n: inside the offset list.
            self.base.wrapping_add(unsafe { *self.off.add(j) })
        } else {
            self.base
        }
    }
}
