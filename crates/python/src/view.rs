//! Reading numpy arrays and torch tensors as strided views, and allocating outputs.
//!
//! A [`View`] is what the library needs of an input: the address of its first element, its
//! element type, its shape and its strides in elements (non-negative). It keeps the Python
//! object alive, so the memory it points to stays valid while the view exists.
//!
//! * numpy: read through rust-numpy's array object (data pointer, shape, byte strides). An
//!   array the library cannot address in place (a negative stride, a stride that is not a
//!   multiple of the element size, misaligned data, non-native byte order) is copied once
//!   with `numpy.ascontiguousarray`, and the copy is read instead.
//! * torch: a plain `torch.Tensor` (or `Parameter`) is read in one C call through torch's
//!   DLPack exchange table (`crate::dlpack`); a subclass, or a torch without the table,
//!   through `data_ptr()`, `shape`, `stride()`, `dtype`, `layout` and `is_cpu`. Either
//!   way strides are in elements and never negative, and torch keeps a view inside its
//!   storage. No `numpy()` round trip, so bfloat16 needs no numpy dtype. A misaligned
//!   tensor (`torch.frombuffer` at an odd offset) is cloned.
//!
//! Outputs are allocated zeroed in the kind of a given input (torch: the exchange table's
//! allocator, else `new_empty`, then zeroed here; numpy: `zeros`) and written in place.

use crate::dlpack::{self, Api, DataType};
use attention::{f16, DType};
use kernels::dtype::DTypeEnum;
use numpy::npyffi::{self, NPY_TYPES};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use std::ffi::c_int;

/// Element types the binding reads and writes: the kernels' storage types, and bool
/// (masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    /// A storage type ([`DType`]).
    Num(DType),
    /// `bool` (masks).
    Bool,
}

impl Elem {
    /// float32 (LSE, weights, gradients).
    pub(crate) const F32: Elem = Elem::Num(DType::F32);

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::Num(d) => d.size(),
            Elem::Bool => 1,
        }
    }

    /// The name torch and numpy use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Elem::Num(d) => py_dtype(d).name,
            Elem::Bool => "bool",
        }
    }
}

/// How Python spells a storage type.
struct PyDType {
    /// The name torch (`torch.<name>`) and numpy use.
    name: &'static str,
    /// The DLPack type code (the bits are the type's size).
    dl_code: u8,
    /// How numpy holds it.
    numpy: Numpy,
}

/// A storage type in numpy.
#[derive(Clone, Copy)]
enum Numpy {
    /// A numpy type number, and the allocation of a zeroed array of it.
    Builtin(
        NPY_TYPES,
        for<'py> fn(Python<'py>, &[usize]) -> Bound<'py, PyAny>,
    ),
    /// A dtype from a numpy extension (ml_dtypes, as JAX uses), known by its type's name
    /// and size.
    Named,
}

/// The Python spelling of each storage type: the binding's one table of them.
fn py_dtype(d: DType) -> PyDType {
    match d {
        DType::F32 => PyDType {
            name: "float32",
            dl_code: dlpack::FLOAT,
            numpy: Numpy::Builtin(NPY_TYPES::NPY_FLOAT, numpy_zeros::<f32>),
        },
        DType::F16 => PyDType {
            name: "float16",
            dl_code: dlpack::FLOAT,
            numpy: Numpy::Builtin(NPY_TYPES::NPY_HALF, numpy_zeros::<f16>),
        },
        DType::BF16 => PyDType {
            name: "bfloat16",
            dl_code: dlpack::BFLOAT,
            numpy: Numpy::Named,
        },
    }
}

/// A zeroed numpy array of `T`.
fn numpy_zeros<'py, T: numpy::Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyAny> {
    numpy::PyArray::<T, _>::zeros(py, shape, false).into_any()
}

/// The supported types as a message lists them, with `prefix` (`torch.`) and `extra`.
pub(crate) fn supported(prefix: &str, extra: &str) -> String {
    let names: Vec<String> = DType::ALL
        .iter()
        .map(|&d| format!("{prefix}{}", py_dtype(d).name))
        .collect();
    format!("{}{extra}", names.join(", "))
}

/// Which library an object comes from (outputs are made in the kind of the query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Numpy,
    Torch,
}

/// The torch objects the binding compares with or calls, looked up once.
pub(crate) struct Torch {
    tensor: Py<PyType>,
    strided: Py<PyAny>,
    /// The dtype object of each storage type, in the order of [`DType::ALL`].
    dtypes: Vec<Py<PyAny>>,
    bool_: Py<PyAny>,
    /// `torch.get_num_threads`.
    pub(crate) get_num_threads: Py<PyAny>,
    /// `torch.nn.Parameter` (read through the exchange table, like `torch.Tensor`).
    parameter: Py<PyType>,
    /// torch's DLPack exchange table, where it has one.
    api: Option<Api>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();

/// The torch objects, if torch has been imported (the binding never imports torch itself:
/// an object can only be a tensor if the caller has imported torch).
pub(crate) fn torch(py: Python<'_>) -> PyResult<Option<&Torch>> {
    if let Some(t) = TORCH.get(py) {
        return Ok(Some(t));
    }
    let modules = py
        .import(intern!(py, "sys"))?
        .getattr(intern!(py, "modules"))?;
    if !modules.contains(intern!(py, "torch"))? {
        return Ok(None);
    }
    TORCH
        .get_or_try_init(py, || {
            let t = py.import(intern!(py, "torch"))?;
            let get = |name: &str| -> PyResult<Py<PyAny>> { Ok(t.getattr(name)?.unbind()) };
            Ok::<_, PyErr>(Torch {
                tensor: t.getattr("Tensor")?.cast_into::<PyType>()?.unbind(),
                strided: get("strided")?,
                dtypes: DType::ALL
                    .iter()
                    .map(|&d| get(py_dtype(d).name))
                    .collect::<PyResult<_>>()?,
                bool_: get("bool")?,
                get_num_threads: get("get_num_threads")?,
                parameter: t
                    .getattr("nn")?
                    .getattr("Parameter")?
                    .cast_into::<PyType>()?
                    .unbind(),
                api: Api::of(&t.getattr("Tensor")?),
            })
        })
        .map(Some)
}

impl Torch {
    /// The torch dtype object of `e`.
    fn dtype(&self, py: Python<'_>, e: Elem) -> Py<PyAny> {
        match e {
            Elem::Num(d) => self.dtypes[d as usize].clone_ref(py),
            Elem::Bool => self.bool_.clone_ref(py),
        }
    }

    /// Whether `obj` is a `torch.Tensor`.
    pub(crate) fn is_tensor(&self, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
        obj.is_instance(self.tensor.bind(obj.py()))
    }

    /// The exchange table, for objects whose type is exactly `torch.Tensor` or
    /// `torch.nn.Parameter` (subclasses such as fake or functional tensors go through their
    /// attributes, which may dispatch to Python).
    fn api_for(&self, obj: &Bound<'_, PyAny>) -> Option<&Api> {
        let ty = obj.get_type();
        let py = obj.py();
        if ty.is(self.tensor.bind(py)) || ty.is(self.parameter.bind(py)) {
            self.api.as_ref()
        } else {
            None
        }
    }
}

/// The DLPack data type of an element type.
fn dl_dtype(e: Elem) -> DataType {
    let (code, bits) = match e {
        Elem::Num(d) => (py_dtype(d).dl_code, 8 * d.size() as u8),
        Elem::Bool => (dlpack::BOOL, 8),
    };
    DataType {
        code,
        bits,
        lanes: 1,
    }
}

/// A strided view of a numpy array or a torch tensor (see the [module docs](self)).
pub(crate) struct View<'py> {
    /// The object the memory belongs to (a copy, when the original could not be read in
    /// place). Holding it keeps `addr` valid.
    obj: Bound<'py, PyAny>,
    /// Address of element `[0, …, 0]`, aligned for `elem` (any value when empty).
    addr: usize,
    pub(crate) elem: Elem,
    pub(crate) kind: Kind,
    pub(crate) shape: Vec<usize>,
    /// Element strides; 0 for dimensions of size 1.
    pub(crate) strides: Vec<usize>,
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl<'py> View<'py> {
    /// Reads `obj` (`what` names it in error messages).
    pub(crate) fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<View<'py>> {
        if let Ok(arr) = obj.cast::<PyUntypedArray>() {
            return View::numpy(arr, what, true);
        }
        if let Some(t) = torch(obj.py())? {
            if t.is_tensor(obj)? {
                return View::torch(t, obj, what, true);
            }
        }
        Err(PyTypeError::new_err(format!(
            "{what} must be a torch.Tensor or a numpy.ndarray, got {}",
            type_name(obj)
        )))
    }

    /// `may_copy`: whether an array that cannot be read in place may be copied (once).
    fn numpy(arr: &Bound<'py, PyUntypedArray>, what: &str, may_copy: bool) -> PyResult<View<'py>> {
        let py = arr.py();
        let dtype = arr.dtype();
        let num = dtype.num();
        let mut elem = (num == NPY_TYPES::NPY_BOOL as c_int).then_some(Elem::Bool);
        for d in DType::ALL {
            if elem.is_some() {
                break;
            }
            let found = match py_dtype(d).numpy {
                Numpy::Builtin(t, _) => num == t as c_int,
                // e.g. ml_dtypes' bfloat16 (the numpy dtype JAX uses).
                Numpy::Named => {
                    dtype.itemsize() == d.size()
                        && dtype.typeobj().name()?.to_cow()? == py_dtype(d).name
                }
            };
            if found {
                elem = Some(Elem::Num(d));
            }
        }
        let Some(elem) = elem else {
            return Err(PyTypeError::new_err(format!(
                "{what}: numpy dtype {} is not supported ({})",
                dtype.str()?,
                supported("", if what.contains("mask") { ", bool" } else { "" })
            )));
        };
        let size = elem.size();
        let shape = arr.shape().to_vec();
        // SAFETY: `arr` is a live numpy array (checked by the cast), so its fields are
        // readable while we hold it.
        let addr = unsafe { (*npyffi::_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).data } as usize;
        let empty = shape.contains(&0);
        let mut strides = Vec::with_capacity(shape.len());
        let mut direct =
            empty || (addr.is_multiple_of(size) && dtype.is_native_byteorder() != Some(false));
        for (&d, &s) in shape.iter().zip(arr.strides()) {
            if d <= 1 || empty {
                strides.push(0);
            } else if s >= 0 && (s as usize).is_multiple_of(size) {
                strides.push(s as usize / size);
            } else {
                direct = false;
                strides.push(0);
            }
        }
        if !direct {
            if !may_copy {
                return Err(PyValueError::new_err(format!(
                    "{what}: numpy could not make an aligned, native-order copy"
                )));
            }
            // Negative or odd strides, misaligned or byte-swapped data: one new contiguous,
            // aligned, native copy (`numpy.array` copies even a contiguous input), then
            // read that.
            let np = py.import(intern!(py, "numpy"))?;
            let native = dtype.call_method1(intern!(py, "newbyteorder"), ("=",))?;
            let copy = np.call_method1(intern!(py, "array"), (arr, native))?;
            let copy = copy.cast_into::<PyUntypedArray>()?;
            return View::numpy(&copy, what, false);
        }
        Ok(View {
            obj: arr.clone().into_any(),
            addr,
            elem,
            kind: Kind::Numpy,
            shape,
            strides,
        })
    }

    /// `may_copy`: as in [`View::numpy`].
    fn torch(
        t: &Torch,
        obj: &Bound<'py, PyAny>,
        what: &str,
        may_copy: bool,
    ) -> PyResult<View<'py>> {
        if let Some(api) = t.api_for(obj) {
            if let Some(v) = View::torch_dlpack(api, obj) {
                return Ok(v);
            }
        }
        View::torch_attributes(t, obj, what, may_copy)
    }

    /// A torch tensor read through the exchange table; `None` for anything the direct
    /// path would not take as is (another device or dtype, a negative stride, misaligned
    /// data): the attribute path then copies it or says why not.
    fn torch_dlpack(api: &Api, obj: &Bound<'py, PyAny>) -> Option<View<'py>> {
        let d = api.read(obj)?;
        if d.device.device_type != dlpack::CPU {
            return None;
        }
        let elem = DType::ALL
            .into_iter()
            .map(Elem::Num)
            .chain([Elem::Bool])
            .find(|&e| dl_dtype(e) == d.dtype)?;
        let shape: Vec<usize> = d
            .shape
            .iter()
            .map(|&x| usize::try_from(x).ok())
            .collect::<Option<_>>()?;
        let empty = shape.contains(&0);
        if !empty && !d.addr.is_multiple_of(elem.size()) {
            return None;
        }
        let mut strides = Vec::with_capacity(shape.len());
        for (&n, &st) in shape.iter().zip(&d.strides) {
            strides.push(if n <= 1 || empty {
                0
            } else {
                usize::try_from(st).ok()?
            });
        }
        Some(View {
            obj: obj.clone(),
            addr: d.addr,
            elem,
            kind: Kind::Torch,
            shape,
            strides,
        })
    }

    /// A torch tensor read through `dtype`, `layout`, `is_cpu`, `shape`, `stride()` and
    /// `data_ptr()`.
    fn torch_attributes(
        t: &Torch,
        obj: &Bound<'py, PyAny>,
        what: &str,
        may_copy: bool,
    ) -> PyResult<View<'py>> {
        let py = obj.py();
        let dtype = obj.getattr(intern!(py, "dtype"))?;
        let elem = if dtype.is(&t.bool_) {
            Elem::Bool
        } else if let Some(i) = t.dtypes.iter().position(|x| dtype.is(x)) {
            Elem::Num(DType::ALL[i])
        } else {
            return Err(PyTypeError::new_err(format!(
                "{what}: dtype {} is not supported ({})",
                dtype.str()?,
                supported(
                    "torch.",
                    if what.contains("mask") {
                        ", torch.bool"
                    } else {
                        ""
                    }
                )
            )));
        };
        if !obj.getattr(intern!(py, "layout"))?.is(&t.strided) {
            return Err(PyTypeError::new_err(format!(
                "{what}: only strided (dense) tensors are supported, got layout {}",
                obj.getattr(intern!(py, "layout"))?.str()?
            )));
        }
        if !obj.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            return Err(PyValueError::new_err(format!(
                "{what} is on {}; fastattn runs on the CPU",
                obj.getattr(intern!(py, "device"))?.str()?
            )));
        }
        let shape: Vec<usize> = obj.getattr(intern!(py, "shape"))?.extract()?;
        let raw: Vec<isize> = obj.call_method0(intern!(py, "stride"))?.extract()?;
        let addr: usize = obj.call_method0(intern!(py, "data_ptr"))?.extract()?;
        let empty = shape.contains(&0);
        let copy = |why: &str| -> PyResult<View<'py>> {
            if !may_copy {
                return Err(PyValueError::new_err(format!("{what}: {why}")));
            }
            let c = obj.call_method0(intern!(py, "clone"))?;
            View::torch_attributes(t, &c.call_method0(intern!(py, "contiguous"))?, what, false)
        };
        if !empty && !addr.is_multiple_of(elem.size()) {
            return copy("misaligned data");
        }
        let mut strides = Vec::with_capacity(shape.len());
        for (&d, &s) in shape.iter().zip(&raw) {
            if d <= 1 || empty {
                strides.push(0);
            } else if s >= 0 {
                strides.push(s as usize);
            } else {
                return copy("negative stride");
            }
        }
        Ok(View {
            obj: obj.clone(),
            addr,
            elem,
            kind: Kind::Torch,
            shape,
            strides,
        })
    }

    /// A view the binding writes in place (a KV cache): the caller's own memory, never a
    /// copy (a numpy array or torch tensor that would need one, or a read-only numpy
    /// array, is a `ValueError`).
    pub(crate) fn target(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<View<'py>> {
        let py = obj.py();
        if let Ok(arr) = obj.cast::<PyUntypedArray>() {
            let writeable: bool = arr
                .getattr(intern!(py, "flags"))?
                .getattr(intern!(py, "writeable"))?
                .extract()?;
            if !writeable {
                return Err(PyValueError::new_err(format!(
                    "{what} is a read-only numpy array; it is written in place"
                )));
            }
            return View::numpy(arr, what, false);
        }
        if let Some(t) = torch(py)? {
            if t.is_tensor(obj)? {
                return View::torch(t, obj, what, false);
            }
        }
        Err(PyTypeError::new_err(format!(
            "{what} must be a torch.Tensor or a numpy.ndarray, got {}",
            type_name(obj)
        )))
    }

    /// The bytes the view reaches, `[first, end)` (empty for an empty view).
    pub(crate) fn bytes(&self) -> PyResult<(usize, usize)> {
        let n = self.span()? * self.elem.size();
        Ok((self.addr, self.addr + n))
    }

    /// The memory of a [`target`](Self::target) view as a writable typed slice of
    /// [`span`](Self::span) elements.
    ///
    /// # Safety
    /// No other slice of the same memory may be alive while the returned one is (the
    /// caller checks that the views of one call do not overlap, [`View::bytes`]), and no
    /// Python thread may touch the memory meanwhile (as with any extension that writes
    /// numpy or torch memory with the GIL released).
    pub(crate) unsafe fn data_mut(&self) -> PyResult<DataMut<'_>> {
        let n = self.span()?;
        match self.elem {
            Elem::Num(d) => Ok(kernels::with_dtype!(d, T => {
                // SAFETY: the view's span, aligned for `T` (checked in `new`), inside one
                // allocation of its object, which `self` keeps alive; every bit pattern
                // is a valid `T`; no other slice of it is alive (the caller's contract).
                DataMut::from_typed::<T>(unsafe { raw_slice_mut(self.addr, n) })
            })),
            Elem::Bool => Err(PyTypeError::new_err(format!(
                "a bool tensor is not a KV cache ({})",
                supported("", "")
            ))),
        }
    }

    /// Elements from element 0 to the last element the view reaches, inclusive (0 when
    /// the view is empty).
    pub(crate) fn span(&self) -> PyResult<usize> {
        span(&self.shape, &self.strides)
    }

    /// The memory of the view as a typed slice of [`span`](Self::span) elements.
    pub(crate) fn data(&self) -> PyResult<Data<'_>> {
        let n = self.span()?;
        Ok(match self.elem {
            Elem::Num(d) => kernels::with_dtype!(d, T => {
                // SAFETY: the view's span, as `raw_slice` requires; `T` is the element
                // type of the memory (numpy's dtype number or torch's dtype object,
                // checked in `new`), and every bit pattern is a valid value of a storage
                // type (`kernels::Element`).
                Data::from_typed::<T>(unsafe { raw_slice(self.addr, n) })
            }),
            Elem::Bool => {
                // SAFETY: the view's span, as `raw_slice` requires; u8 has no invalid
                // values.
                let bytes: &[u8] = unsafe { raw_slice(self.addr, n) };
                if bytes.iter().all(|&b| b <= 1) {
                    // SAFETY: every byte is 0 or 1, a valid bool, and bool has the size
                    // and alignment of u8.
                    Data::Bool(unsafe { raw_slice(self.addr, n) })
                } else {
                    // A bool tensor made by reinterpreting other bytes: read each byte as
                    // `!= 0`, the way torch and numpy treat it.
                    Data::Bytes(bytes)
                }
            }
        })
    }
}

/// A slice of `n` elements of `T` at address `addr`.
///
/// # Safety
/// For `n > 0`, `addr` must be aligned for `T` and valid for reads of `n` elements of `T`
/// holding valid values, for the lifetime `'a`, and nothing may write them meanwhile. A
/// [`View`] guarantees this for the span of its elements while its object lives: numpy
/// and torch keep every element of a view inside one allocation (so is every byte between
/// the first and the last), alignment is checked when the view is made, and the binding
/// never writes its inputs (the outputs are fresh allocations; the only memory it writes
/// in place, a KV cache of `paged_kv_write`, is checked not to overlap any input of that
/// call). A Python thread writing
/// the same array while the GIL is released would break the last condition, as with any
/// extension that reads numpy memory without copying.
unsafe fn raw_slice<'a, T>(addr: usize, n: usize) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    debug_assert!(addr.is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(addr as *const T, n) }
}

/// Elements from element 0 to the last one reached, inclusive (0 when empty).
pub(crate) fn span(shape: &[usize], strides: &[usize]) -> PyResult<usize> {
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut last = 0usize;
    for (&d, &s) in shape.iter().zip(strides) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| PyValueError::new_err("tensor extent overflows"))?;
    }
    Ok(last + 1)
}

/// Whether element strides `strides` lay `shape` out contiguously (row-major); the strides
/// of dimensions of size 1 do not matter.
pub(crate) fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut want = 1usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d > 1 && s != want {
            return false;
        }
        want = want.saturating_mul(d);
    }
    true
}

kernels::dtype_enum! {
    /// The memory of a view, typed.
    #[derive(Clone, Copy)]
    pub(crate) enum Data<'a> { &'a [_] },
    /// A bool view.
    Bool(&'a [bool]),
    /// A bool view whose bytes are not all 0 or 1 (`!= 0` is true).
    Bytes(&'a [u8]),
}

/// A fresh, zeroed, contiguous output and its memory.
pub(crate) struct Output<'py> {
    pub(crate) obj: Bound<'py, PyAny>,
    addr: usize,
    len: usize,
    elem: Elem,
}

kernels::dtype_enum! {
    /// The memory of an output, typed and writable.
    pub(crate) enum DataMut<'a> { &'a mut [_] }
}

impl<'py> Output<'py> {
    /// A zeroed contiguous array or tensor of `shape` and `elem` (not bool), of the kind
    /// of `like` (for numpy bfloat16, of `like`'s dtype).
    pub(crate) fn zeros(like: &View<'py>, shape: &[usize], elem: Elem) -> PyResult<Output<'py>> {
        let py = like.obj.py();
        if elem == Elem::Bool {
            return Err(PyTypeError::new_err(
                "outputs are float32, float16 or bfloat16",
            ));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| PyValueError::new_err("output size overflows"))?;
        let dims = || PyTuple::new(py, shape);
        // torch: through the exchange table when it can allocate, else `new_empty`.
        let fast = match (like.kind, torch(py)?) {
            (Kind::Torch, Some(t)) => t
                .api_for(&like.obj)
                .and_then(|api| api.alloc(py, shape, dl_dtype(elem))),
            _ => None,
        };
        let obj = match (like.kind, &fast) {
            (Kind::Torch, Some((o, _))) => o.clone(),
            // `new_empty`, zeroed below: torch's `new_zeros` fills large tensors on its
            // OpenMP threads, which then spin for a while and take the cores from the
            // attention call that follows.
            (Kind::Torch, None) if elem == like.elem => like
                .obj
                .call_method1(intern!(py, "new_empty"), (dims()?,))?,
            (Kind::Torch, None) => {
                let t = torch(py)?.ok_or_else(|| PyTypeError::new_err("torch is not imported"))?;
                let kw = PyDict::new(py);
                kw.set_item(intern!(py, "dtype"), t.dtype(py, elem))?;
                like.obj
                    .call_method(intern!(py, "new_empty"), (dims()?,), Some(&kw))?
            }
            (Kind::Numpy, _) => match elem {
                Elem::Num(d) => match py_dtype(d).numpy {
                    Numpy::Builtin(_, zeros) => zeros(py, shape),
                    // An extension's dtype: the query's (the output has its type).
                    Numpy::Named => {
                        let np = py.import(intern!(py, "numpy"))?;
                        let dt = like.obj.getattr(intern!(py, "dtype"))?;
                        np.call_method1(intern!(py, "zeros"), (dims()?, dt))?
                    }
                },
                Elem::Bool => unreachable!("bool outputs were refused above"),
            },
        };
        let addr = match (like.kind, &fast) {
            (Kind::Torch, Some((_, addr))) => *addr,
            (Kind::Torch, None) => obj.call_method0(intern!(py, "data_ptr"))?.extract()?,
            (Kind::Numpy, _) => {
                let arr = obj.cast::<PyUntypedArray>()?;
                // SAFETY: a live numpy array, as in `View::numpy`.
                unsafe { (*npyffi::_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).data as usize }
            }
        };
        if len > 0 && !addr.is_multiple_of(elem.size()) {
            return Err(PyValueError::new_err(
                "allocator returned misaligned memory",
            ));
        }
        if like.kind == Kind::Torch && len > 0 {
            // SAFETY: `obj` is a new contiguous tensor of `len` elements of `elem.size()`
            // bytes at `addr` (torch's allocator), owned here and seen by no one else yet;
            // zero bytes are a valid value of every element type.
            unsafe { std::ptr::write_bytes(addr as *mut u8, 0, len * elem.size()) };
        }
        Ok(Output {
            obj,
            addr,
            len,
            elem,
        })
    }

    /// The output's memory, writable.
    pub(crate) fn data(&mut self) -> DataMut<'_> {
        let (addr, n) = (self.addr, self.len);
        match self.elem {
            Elem::Num(d) => kernels::with_dtype!(d, T => {
                // SAFETY: the output's memory as `raw_slice_mut` requires (see there), of
                // `len` elements of `T`, borrowed through `&mut self`.
                DataMut::from_typed::<T>(unsafe { raw_slice_mut(addr, n) })
            }),
            Elem::Bool => unreachable!("`zeros` refuses bool outputs"),
        }
    }

    /// The output's memory as float32 (LSE and weights).
    pub(crate) fn f32_data(&mut self) -> PyResult<&mut [f32]> {
        if let DataMut::F32(x) = self.data() {
            Ok(x)
        } else {
            Err(PyTypeError::new_err("expected a float32 output"))
        }
    }

    /// The Python object, to return.
    pub(crate) fn into_obj(self) -> Bound<'py, PyAny> {
        self.obj
    }
}

/// A writable slice of `n` elements of `T` at `addr`.
///
/// # Safety
/// For `n > 0`, `addr` must be aligned for `T` and valid for reads and writes of `n`
/// initialised elements for `'a`, with no other access meanwhile. An [`Output`]
/// guarantees it: its memory was just allocated, zeroed (valid for every element type),
/// contiguous with `n` elements, and is not yet visible to Python code; `&mut self`
/// keeps the slices handed out from overlapping. [`View::data_mut`] passes its caller's
/// promise on (a KV cache written in place, whose bytes no other slice of the call
/// reaches).
unsafe fn raw_slice_mut<'a, T>(addr: usize, n: usize) -> &'a mut [T] {
    if n == 0 {
        return &mut [];
    }
    debug_assert!(addr.is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut T, n) }
}
