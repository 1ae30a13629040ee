//! GEMM against a B operand packed once and reused: the building block of the attention
//! tiles (Kᵀ and V are packed once per head and multiplied by many query tiles).

use super::macro_kernel::{macro_kernel, ASource, BPanels, Block};
use super::microkernel::{ukr_for, Ukr};
use super::{pack, MatMut, MatRef};
use crate::buffer::with_scratch;
use crate::dispatch::Isa;
use crate::dtype::{DType, DTypeEnum, Element};
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
///
/// [`PackedB::pack_stored`] keeps a 16-bit B in 16 bits (half the memory, half the bytes a
/// product streams), for weights packed once: [`gemm_packed_b`] then widens each panel in
/// registers (a few rows, decoding) or into an f32 scratch panel shared by all rows.
#[derive(Clone)]
pub struct PackedB {
    ukr: Ukr,
    isa: Isa,
    k: usize,
    n: usize,
    data: Vec<f32>,
    /// 16-bit panels (same layout as `data`) when packed by `pack_stored` from 16 bits.
    half: Option<Half>,
}

crate::dtype_enum! {
    /// Packed panels kept in their storage type by [`PackedB::pack_stored`] (16-bit or
    /// narrower: f32 panels are packed into `data`).
    #[derive(Clone)]
    enum Half { Vec<_> }
}

/// Products of at most this many rows against a 16-bit [`PackedB`] read the 16-bit panels
/// in registers ([`crate::gemv`]'s row kernel); more rows widen each panel once into an
/// f32 scratch panel for the microkernel.
pub const HALF_GEMV_ROWS: usize = 4;

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
            half: None,
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
        self.half = None;
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

    /// Packs `b`, keeping a 16-bit `b` in 16 bits (an f32 `b` is packed as by
    /// [`PackedB::pack`]). Meant for operands packed once and used many times (a layer's
    /// weights): each product widens the panels again.
    ///
    /// # Errors
    /// As [`PackedB::pack`].
    pub fn pack_stored<T: Element>(&mut self, b: MatRef<'_, T>) -> Result<()> {
        if T::DTYPE == DType::F32 {
            return self.pack(b);
        }
        let half = Half::from_typed(pack_bits(self.ukr.nr, b)?);
        self.data = Vec::new();
        self.half = Some(half);
        self.k = b.rows();
        self.n = b.cols();
        Ok(())
    }

    /// The element type the panels are stored in.
    pub fn dtype(&self) -> DType {
        self.half.as_ref().map_or(DType::F32, Half::dtype)
    }

    /// Bytes of packed storage in use.
    pub fn bytes(&self) -> usize {
        let len = self.n.div_ceil(self.ukr.nr) * self.ukr.nr * self.k;
        len * self.dtype().size()
    }

    /// Whether every packed value is finite (no NaN, no infinity; the zero padding is).
    pub fn all_finite(&self) -> bool {
        let len = self.n.div_ceil(self.ukr.nr) * self.ukr.nr * self.k;
        match &self.half {
            None => crate::dtype::all_finite(&self.data[..len]),
            Some(h) => crate::match_dtype!(h, Half(h) => h.iter().all(|x| x.to_f32().is_finite())),
        }
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
    if m <= HALF_GEMV_ROWS && a.col_stride() == 1 {
        if let Some(h) = &b.half {
            return crate::match_dtype!(h, Half(d) => half_rows(b, d, a, col0, alpha, beta, c));
        }
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
        if let Some(h) = &b.half {
            // SAFETY: as below, one widened panel at a time.
            unsafe {
                crate::match_dtype!(h, Half(d) => half_panels(
                    &ukr, b, d, m, k, n, col0, alpha, &a_src, beta, c_ptr, rsc, csc,
                ))
            }
            return;
        }
        // SAFETY: C's checked view is m × n; A's rows are in its checked view (in place) or
        // packed; B's panels from column col0 on hold depth b.k ≥ k; the ISA was checked by
        // PackedB::new.
        unsafe {
            macro_kernel(
                &ukr,
                &Block {
                    mcb: m,
                    kcb: k,
                    ncb: n,
                    alpha,
                    beta,
                    c: c_ptr,
                    rsc,
                    csc,
                },
                &a_src,
                &BPanels {
                    ptr: b.data[col0 / nr * nr * b.k..].as_ptr(),
                    stride: nr * b.k,
                    panels: 0..n.div_ceil(nr),
                    first: 0,
                    ready: &|_| {},
                },
            )
        };
    });
    Ok(())
}

/// The `NR`-column panels of `b` (element `(p, j)` of panel `q` at `q·NR·k + p·NR + j`),
/// kept in their own type, zero-padded.
fn pack_bits<T: Element>(nr: usize, b: MatRef<'_, T>) -> Result<Vec<T>> {
    let (k, n) = (b.rows(), b.cols());
    let len = n
        .div_ceil(nr)
        .checked_mul(nr)
        .and_then(|x| x.checked_mul(k))
        .ok_or(KernelError::Overflow {
            op: "PackedB::pack_stored",
        })?;
    let mut out = vec![T::default(); len];
    for (q, panel) in out
        .chunks_exact_mut(nr * k.max(1))
        .enumerate()
        .take(n.div_ceil(nr))
    {
        for p in 0..k {
            for j in 0..nr.min(n - q * nr) {
                panel[p * nr + j] = b.get(p, q * nr + j);
            }
        }
    }
    Ok(out)
}

/// `C ← alpha·A·B[.., col0 ..] + beta·C` for a few rows of A (unit column stride) against
/// 16-bit panels read in registers: each panel is a `k × NR` row-major matrix whose rows
/// are added into the output rows with A's weights ([`crate::gemv::axpy_rows_with`]).
fn half_rows<T: Element>(
    b: &PackedB,
    data: &[T],
    a: MatRef<'_>,
    col0: usize,
    alpha: f32,
    beta: f32,
    mut c: MatMut<'_>,
) -> Result<()> {
    let (m, nr) = (c.rows(), b.ukr.nr);
    with_scratch(m * nr, |tmp| {
        half_rows_into(b, data, a, col0, alpha, beta, c.rb(), tmp)
    })
}

/// [`half_rows`] with its `m × NR` scratch tile given.
#[allow(clippy::too_many_arguments)]
fn half_rows_into<T: Element>(
    b: &PackedB,
    data: &[T],
    a: MatRef<'_>,
    col0: usize,
    alpha: f32,
    beta: f32,
    mut c: MatMut<'_>,
    tmp: &mut [f32],
) -> Result<()> {
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    let nr = b.ukr.nr;
    for q in 0..n.div_ceil(nr) {
        let j0 = q * nr;
        let cols = nr.min(n - j0);
        let panel = &data[(col0 / nr + q) * nr * b.k..][..k * nr];
        tmp.fill(0.0);
        crate::gemv::axpy_rows_with(
            b.isa,
            a,
            MatRef::new(panel, k, nr, nr, 1)?,
            MatMut::new(tmp, m, nr, nr, 1)?,
        )?;
        for i in 0..m {
            for j in 0..cols {
                let v = alpha * tmp[i * nr + j];
                let v = if beta == 0.0 {
                    v
                } else {
                    v + beta * c.get(i, j0 + j)
                };
                c.set(i, j0 + j, v);
            }
        }
    }
    Ok(())
}

/// The products of the 16-bit panels from column `col0` on, one panel at a time: each is
/// widened (first `k` rows) into an f32 scratch panel, then run by the microkernel for all
/// rows of A.
///
/// # Safety
/// As [`macro_kernel`] for the `m × n` block of C at `c`, with `a_src` describing A's `m`
/// rows to depth `k ≤ b.k`; `data` holds `b`'s panels.
#[allow(clippy::too_many_arguments)]
unsafe fn half_panels<T: Element>(
    ukr: &Ukr,
    b: &PackedB,
    data: &[T],
    m: usize,
    k: usize,
    n: usize,
    col0: usize,
    alpha: f32,
    a_src: &ASource,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let nr = ukr.nr;
    with_scratch(nr * k, |panel| {
        for q in 0..n.div_ceil(nr) {
            let j0 = q * nr;
            let src = &data[(col0 / nr + q) * nr * b.k..][..k * nr];
            // SAFETY: both hold k·nr values; the ISA was checked by PackedB::new.
            unsafe { crate::convert::convert_raw(b.isa, k * nr, src.as_ptr(), panel.as_mut_ptr()) };
            // SAFETY: the caller's contract for columns j0 .. j0 + cols of the block; the
            // scratch panel holds k·nr widened values.
            unsafe {
                macro_kernel(
                    ukr,
                    &Block {
                        mcb: m,
                        kcb: k,
                        ncb: nr.min(n - j0),
                        alpha,
                        beta,
                        c: c.offset(j0 as isize * csc),
                        rsc,
                        csc,
                    },
                    a_src,
                    &BPanels {
                        ptr: panel.as_ptr(),
                        stride: nr * k,
                        panels: 0..1,
                        first: 0,
                        ready: &|_| {},
                    },
                )
            };
        }
    });
}
