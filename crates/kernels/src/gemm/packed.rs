//! GEMM against a B operand packed once and reused: the building block of the attention
//! tiles (Kᵀ and V are packed once per head and multiplied by many query tiles).

use super::microkernel::{ukr_for, Ukr};
use super::{macro_kernel, pack, ASource, MatMut, MatRef};
use crate::buffer::with_scratch;
use crate::dispatch::Isa;
use crate::error::{KernelError, Result};

/// A `k × n` matrix B packed into `NR`-column panels of full depth `k` for one variant's
/// microkernel. [`PackedB::pack`] reuses the allocation, so one `PackedB` per worker can be
/// refilled block after block without allocating.
///
/// ```
/// use fastattn_kernels::gemm::{packed::{PackedB, gemm_packed_b}, MatRef, MatMut};
/// let isa = fastattn_kernels::Isa::best();
/// let b = [1.0f32, 2.0, 3.0, 4.0]; // 2×2
/// let mut pb = PackedB::new(isa)?;
/// pb.pack(MatRef::row_major(&b, 2, 2)?)?;
/// let mut c = [0.0f32; 4];
/// gemm_packed_b(1.0, MatRef::row_major(&b, 2, 2)?, &pb, 0, 0.0, MatMut::row_major(&mut c, 2, 2)?)?;
/// assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
/// # Ok::<(), fastattn_kernels::KernelError>(())
/// ```
#[derive(Clone)]
pub struct PackedB {
    ukr: Ukr,
    isa: Isa,
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("isa", &self.isa)
            .field("k", &self.k)
            .field("n", &self.n)
            .finish()
    }
}

impl PackedB {
    /// An empty packed operand for `isa`'s microkernel.
    ///
    /// # Errors
    /// [`KernelError::UnsupportedIsa`] if the CPU lacks `isa`.
    pub fn new(isa: Isa) -> Result<Self> {
        isa.check()?;
        Ok(PackedB {
            ukr: ukr_for(isa),
            isa,
            k: 0,
            n: 0,
            data: Vec::new(),
        })
    }

    /// Packs `b` (replacing the previous contents; the buffer only grows). A 16-bit `b` is
    /// converted to f32 as it is packed.
    ///
    /// # Errors
    /// [`KernelError::Overflow`] if the packed size does not fit in memory sizes.
    pub fn pack<T: crate::Element>(&mut self, b: MatRef<'_, T>) -> Result<()> {
        let nr = self.ukr.nr;
        let (k, n) = (b.rows(), b.cols());
        let panels = n.div_ceil(nr);
        let len = panels
            .checked_mul(nr)
            .and_then(|x| x.checked_mul(k))
            .ok_or(KernelError::Overflow {
                op: "PackedB::pack",
            })?;
        if self.data.len() < len {
            self.data.resize(len, 0.0);
        }
        self.k = k;
        self.n = n;
        if len == 0 {
            return Ok(());
        }
        for (q, panel) in self.data[..len].chunks_exact_mut(nr * k).enumerate() {
            let cols = nr.min(n - q * nr);
            // SAFETY: the view was bounds-checked when built; the panel reads rows 0..k and
            // columns q·nr .. q·nr + cols, all inside it.
            unsafe {
                pack::pack_b_panel_cvt(
                    self.isa,
                    nr,
                    k,
                    cols,
                    b.data().as_ptr().add(q * nr * b.col_stride()),
                    b.row_stride() as isize,
                    b.col_stride() as isize,
                    panel,
                )
            };
        }
        Ok(())
    }

    /// Whether every packed value is finite (no NaN, no infinity; the zero padding is).
    pub fn all_finite(&self) -> bool {
        let len = self.n.div_ceil(self.ukr.nr) * self.ukr.nr * self.k;
        crate::dtype::all_finite(&self.data[..len])
    }

    /// Rows (the depth of the product).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Panel width `NR`: column offsets passed to [`gemm_packed_b`] must be multiples of it.
    pub fn nr(&self) -> usize {
        self.ukr.nr
    }
    /// The variant it was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// `C ← alpha·A·B[..k, col0 .. col0 + n] + beta·C` on the calling thread, with B packed
/// (`k = A.cols() ≤ B.k()`: A may use a leading part of B's depth, which attention uses to
/// stop at the causal diagonal).
/// A is read in place when its rows are contiguous (`col_stride == 1`), else packed into a
/// per-thread scratch; edge rows are always packed (zero-padded).
///
/// # Errors
/// [`KernelError::ShapeMismatch`] if A is not m×k with k ≤ `b.k()`, C not m×n, the columns
/// run past B, or `col0` is not a multiple of [`PackedB::nr`].
pub fn gemm_packed_b(
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedB,
    col0: usize,
    beta: f32,
    mut c: MatMut<'_>,
) -> Result<()> {
    // A may use a leading part of B's depth (the first `k` rows of every panel).
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    let ukr = b.ukr;
    let (mr, nr) = (ukr.mr, ukr.nr);
    if a.rows() != m || k > b.k || !col0.is_multiple_of(nr) || col0.saturating_add(n) > b.n {
        return Err(KernelError::ShapeMismatch {
            op: "gemm_packed_b",
            expected: format!(
                "A {m}×k with k ≤ {}, columns {col0}..{} within B's {} (col0 a multiple of {nr})",
                b.k,
                col0.saturating_add(n),
                b.n
            ),
            got: format!("A {}×{}", a.rows(), a.cols()),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (rsc, csc) = (c.row_stride() as isize, c.col_stride() as isize);
    let c_ptr = c.as_mut_ptr();
    if k == 0 || alpha == 0.0 {
        for i in 0..m {
            for j in 0..n {
                let v = if beta == 0.0 { 0.0 } else { beta * c.get(i, j) };
                c.set(i, j, v);
            }
        }
        return Ok(());
    }
    let in_place = a.col_stride() == 1 && a.row_stride() > 0;
    let full_groups = if in_place { m / mr } else { 0 };
    // A short last group with an edge kernel of exactly its height is read in place too
    // (see `gemm_unchecked`).
    let rem = m - full_groups * mr;
    let edge_in_place = in_place && ukr.exact_edge(rem);
    let packed_rows = if edge_in_place { 0 } else { rem };
    with_scratch(packed_rows.div_ceil(mr) * mr * k, |apack| {
        if packed_rows > 0 {
            // SAFETY: rows full_groups·mr .. m and columns 0..k are inside A's checked view.
            unsafe {
                pack::pack_a_dyn(
                    mr,
                    packed_rows,
                    k,
                    a.data().as_ptr().add(full_groups * mr * a.row_stride()),
                    a.row_stride() as isize,
                    a.col_stride() as isize,
                    apack,
                )
            };
        }
        let a_src = ASource {
            in_place: a.data().as_ptr(),
            lda: a.row_stride() as isize,
            full: full_groups,
            edge_in_place,
            packed: apack.as_mut_ptr(),
            fuse: false,
        };
        // SAFETY: C's checked view is m × n; A's rows are in its checked view (in place) or
        // packed; B's panels from column col0 on hold depth b.k ≥ k; the ISA was checked by
        // PackedB::new.
        unsafe {
            macro_kernel(
                &ukr,
                m,
                k,
                n,
                0..n.div_ceil(nr),
                0,
                &|_| {},
                alpha,
                &a_src,
                b.data[col0 / nr * nr * b.k..].as_ptr(),
                nr * b.k,
                beta,
                c_ptr,
                rsc,
                csc,
            )
        };
    });
    Ok(())
}
