//! 8-bit (int8, fp8 e4m3fn / e5m2) K/V caches with f32 scales, for the serving calls
//! (`varlen_forward`, `paged_kv_write`).
//!
//! The Python layer hands an 8-bit cache over as a uint8 numpy array over the cache's own
//! memory (torch: `cache.view(torch.uint8).numpy()`, no copy) with its format's name
//! (`"int8"`, `"float8_e4m3fn"`, `"float8_e5m2"`), and its scales as a contiguous 1-D
//! float32 numpy array with the element strides that map a row `(i0, i1, i2)` of the
//! library's 4-D view of the codes to its scale (0 broadcasts: per tensor, per head).

use crate::run::attn_err;
use crate::view::Data;
use attention::quant::{KvRef, QuantTensor};
use attention::quant_cache::PagedScales;
use attention::{AttnError, Element, TensorMut, TensorRef};
use kernels::quant::{Code, F8E4M3, F8E5M2};
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArray1,
    PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The format of an 8-bit cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fmt {
    I8,
    E4M3,
    E5M2,
}

impl Fmt {
    pub(crate) fn parse(s: &str) -> PyResult<Fmt> {
        match s {
            "int8" => Ok(Fmt::I8),
            "float8_e4m3fn" => Ok(Fmt::E4M3),
            "float8_e5m2" => Ok(Fmt::E5M2),
            _ => Err(PyValueError::new_err(format!(
                "kv_format must be \"int8\", \"float8_e4m3fn\" or \"float8_e5m2\", got {s:?}"
            ))),
        }
    }
}

/// A uint8 numpy array holding 8-bit codes, read in place (`W`: its borrow).
pub(crate) struct Codes<W> {
    _guard: W,
    addr: usize,
    pub(crate) shape: Vec<usize>,
    /// Element (= byte) strides; 0 for dimensions of size 1.
    pub(crate) strides: Vec<usize>,
}

fn layout(shape: &[usize], raw: &[isize], what: &str) -> PyResult<(Vec<usize>, Vec<usize>)> {
    let empty = shape.contains(&0);
    let mut strides = Vec::with_capacity(shape.len());
    for (&d, &s) in shape.iter().zip(raw) {
        if d <= 1 || empty {
            strides.push(0);
        } else if s >= 0 {
            strides.push(s as usize);
        } else {
            return Err(PyValueError::new_err(format!(
                "{what}: an 8-bit cache with a negative stride is not supported"
            )));
        }
    }
    Ok((shape.to_vec(), strides))
}

fn not_u8(what: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{what}: an 8-bit cache arrives as a uint8 numpy array over its bytes"
    ))
}

impl<'py, G> Codes<G> {
    /// Reads `obj` (a uint8 numpy array), holding the borrow `guard` takes of it.
    fn borrow(
        obj: &Bound<'py, PyAny>,
        what: &str,
        guard: impl FnOnce(&Bound<'py, PyArrayDyn<u8>>) -> PyResult<G>,
    ) -> PyResult<Self> {
        let a = obj.cast::<PyArrayDyn<u8>>().map_err(|_| not_u8(what))?;
        let (shape, strides) = layout(a.shape(), a.strides(), what)?;
        Ok(Codes {
            addr: a.data() as usize,
            _guard: guard(a)?,
            shape,
            strides,
        })
    }
}

impl<'py> Codes<PyReadonlyArrayDyn<'py, u8>> {
    /// Reads `obj` (a uint8 numpy array).
    pub(crate) fn read(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        Self::borrow(obj, what, |a| Ok(a.try_readonly()?))
    }
}

impl<'py> Codes<PyReadwriteArrayDyn<'py, u8>> {
    /// Reads `obj` (a writable uint8 numpy array), to write it in place.
    pub(crate) fn write(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        Self::borrow(obj, what, |a| Ok(a.try_readwrite()?))
    }
}

impl<W> Codes<W> {
    /// The bytes the codes reach, `[first, end)`.
    pub(crate) fn bytes(&self) -> PyResult<(usize, usize)> {
        Ok((
            self.addr,
            self.addr + crate::view::span(&self.shape, &self.strides)?,
        ))
    }

    /// The codes as a slice of `C` from element 0 to the last one reached.
    fn slice<C: Code>(&self) -> PyResult<&[C]> {
        let n = crate::view::span(&self.shape, &self.strides)?;
        if n == 0 {
            return Ok(&[]);
        }
        // SAFETY: `addr` is the data of a live numpy array (held by the borrow guard) that
        // reaches its span of bytes in one allocation; `C` is a one-byte transparent code
        // type (i8, F8E4M3, F8E5M2) for which every bit pattern is valid, alignment 1.
        Ok(unsafe { std::slice::from_raw_parts(self.addr as *const C, n) })
    }

    /// The codes as a writable slice of `C`.
    ///
    /// # Safety
    /// No other slice of the same memory may be alive meanwhile (the caller checks the
    /// operands of its call do not overlap), and the guard must be a readwrite borrow.
    unsafe fn slice_mut<C: Code>(&mut self) -> PyResult<&mut [C]> {
        let n = crate::view::span(&self.shape, &self.strides)?;
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as `slice`, and the caller's contract for exclusive access.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut C, n) })
    }
}

/// The scales of 8-bit K or V: a contiguous float32 array, and the element strides over
/// the three row dimensions of the library's 4-D view of the codes.
pub(crate) type ScaleArg<'py> = (PyReadonlyArray1<'py, f32>, [usize; 3]);

/// `codes` (of `fmt`) with `scale`, as the library's K or V, at `dims` and `strides`.
pub(crate) fn kv_ref<'a, W>(
    fmt: Fmt,
    codes: &'a Codes<W>,
    dims: [usize; 4],
    strides: [usize; 4],
    scale: &'a ScaleArg<'_>,
    what: &str,
) -> PyResult<KvRef<'a>> {
    let s = scale
        .0
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what}: the scales must be contiguous")))?;
    fn quant<'a, C: Code>(
        c: &'a [C],
        dims: [usize; 4],
        strides: [usize; 4],
        s: &'a [f32],
        ss: [usize; 3],
    ) -> Result<KvRef<'a>, AttnError> {
        Ok(QuantTensor::new(TensorRef::new(c, dims, strides)?, s, ss)?.into())
    }
    match fmt {
        Fmt::I8 => quant::<i8>(codes.slice()?, dims, strides, s, scale.1),
        Fmt::E4M3 => quant::<F8E4M3>(codes.slice()?, dims, strides, s, scale.1),
        Fmt::E5M2 => quant::<F8E5M2>(codes.slice()?, dims, strides, s, scale.1),
    }
    .map_err(attn_err)
}

/// The scales of an 8-bit cache that `paged_kv_write` writes into.
pub(crate) enum WriteScales<'py> {
    /// One per slot and head, computed and written (int8 always; fp8 on request).
    PerRow(PyReadwriteArray1<'py, f32>),
    /// The caller's 1 or Hkv scales (fp8).
    Fixed(PyReadonlyArray1<'py, f32>),
}

impl<'py> WriteScales<'py> {
    /// The scales in `obj` (a 1-D float32 numpy array): written per row, or read.
    pub(crate) fn new(per_row: bool, obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        let a = obj.cast::<numpy::PyArray1<f32>>().map_err(|_| {
            PyTypeError::new_err(format!("{what} must be a 1-D float32 numpy array"))
        })?;
        Ok(if per_row {
            WriteScales::PerRow(a.try_readwrite()?)
        } else {
            WriteScales::Fixed(a.try_readonly()?)
        })
    }

    /// The bytes the scales reach.
    pub(crate) fn bytes(&self) -> (usize, usize) {
        let (p, n) = match self {
            WriteScales::PerRow(a) => (a.data() as usize, a.len()),
            WriteScales::Fixed(a) => (a.data() as usize, a.len()),
        };
        (p, p + 4 * n)
    }

    fn paged(&mut self, what: &str) -> PyResult<PagedScales<'_>> {
        let bad = || PyValueError::new_err(format!("{what}: the scales must be contiguous"));
        Ok(match self {
            WriteScales::PerRow(a) => PagedScales::PerRow(a.as_slice_mut().map_err(|_| bad())?),
            WriteScales::Fixed(a) => PagedScales::Fixed(a.as_slice().map_err(|_| bad())?),
        })
    }
}

/// `attention::paged_kv_write_quant` of float rows (`k`, `v` as dtype-erased data) into the
/// 8-bit caches `kc`, `vc` of `fmt`: dims and strides of k, v, the K cache and the V cache.
///
/// # Safety
/// The caches' and scales' memory must not be reached by any other live slice (the caller
/// checks the operands do not overlap).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_rows_quant<W>(
    fmt: Fmt,
    k: Data<'_>,
    v: Data<'_>,
    kc: &mut Codes<W>,
    ks: &mut WriteScales<'_>,
    vc: &mut Codes<W>,
    vs: &mut WriteScales<'_>,
    l: [[usize; 4]; 8],
    slots: &[i64],
) -> PyResult<()> {
    let (ksc, vsc) = (ks.paged("k_scale")?, vs.paged("v_scale")?);
    match fmt {
        Fmt::I8 => {
            // SAFETY: the caller's contract (no other slice of the caches is alive).
            let (a, b) = unsafe { (kc.slice_mut::<i8>()?, vc.slice_mut::<i8>()?) };
            write_typed(k, v, a, ksc, b, vsc, l, slots)
        }
        Fmt::E4M3 => {
            // SAFETY: as above.
            let (a, b) = unsafe { (kc.slice_mut::<F8E4M3>()?, vc.slice_mut::<F8E4M3>()?) };
            write_typed(k, v, a, ksc, b, vsc, l, slots)
        }
        Fmt::E5M2 => {
            // SAFETY: as above.
            let (a, b) = unsafe { (kc.slice_mut::<F8E5M2>()?, vc.slice_mut::<F8E5M2>()?) };
            write_typed(k, v, a, ksc, b, vsc, l, slots)
        }
    }
}

/// [`write_rows_quant`] into caches of codes `C`.
#[allow(clippy::too_many_arguments)]
fn write_typed<C: Code>(
    k: Data<'_>,
    v: Data<'_>,
    kc: &mut [C],
    ks: PagedScales<'_>,
    vc: &mut [C],
    vs: PagedScales<'_>,
    l: [[usize; 4]; 8],
    slots: &[i64],
) -> PyResult<()> {
    #[allow(clippy::too_many_arguments)]
    fn typed<S: Element, C: Code>(
        k: &[S],
        v: &[S],
        kc: &mut [C],
        ks: PagedScales<'_>,
        vc: &mut [C],
        vs: PagedScales<'_>,
        l: [[usize; 4]; 8],
        slots: &[i64],
    ) -> Result<(), AttnError> {
        attention::quant_cache::paged_kv_write_quant(
            TensorRef::new(k, l[0], l[1])?,
            TensorRef::new(v, l[2], l[3])?,
            TensorMut::new(kc, l[4], l[5])?,
            ks,
            TensorMut::new(vc, l[6], l[7])?,
            vs,
            slots,
        )
    }
    match (k, v) {
        (Data::F32(a), Data::F32(b)) => typed(a, b, kc, ks, vc, vs, l, slots),
        (Data::F16(a), Data::F16(b)) => typed(a, b, kc, ks, vc, vs, l, slots),
        (Data::BF16(a), Data::BF16(b)) => typed(a, b, kc, ks, vc, vs, l, slots),
        _ => {
            return Err(PyTypeError::new_err(
                "paged_kv_write: k and v must share a float dtype",
            ))
        }
    }
    .map_err(attn_err)
}
