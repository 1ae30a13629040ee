//! The DLPack C exchange API (`__dlpack_c_exchange_api__`, DLPack ≥ 1.2), torch's fast
//! path for reading and allocating tensors from C.
//!
//! A framework publishes a table of C functions as a capsule named `dlpack_exchange_api`
//! on its tensor type. Two of them make a call's torch overhead small:
//! `dltensor_from_py_object_no_sync` fills a caller-owned `DLTensor` (data pointer,
//! shape, strides, dtype, device) from a tensor object in one C call, instead of six
//! attribute lookups per tensor; `managed_tensor_allocator` with
//! `managed_tensor_to_py_object_no_sync` makes a new tensor without going through
//! `Tensor.new_empty`'s Python argument parsing. The layouts below are those of
//! `dlpack.h` 1.x (torch ships it as `ATen/dlpack.h`); the table is used only when its
//! major version is 1. Where the table is missing (torch < 2.9) or refuses an object, the
//! binding reads the tensor's attributes instead (`view.rs`).

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_char, c_int, c_void, CStr};

/// `DLPackVersion`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // the C layout: every field is there, not every one is read
struct Version {
    major: u32,
    minor: u32,
}

/// `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub(crate) device_type: i32,
    pub(crate) device_id: i32,
}

/// `kDLCPU`.
pub(crate) const CPU: i32 = 1;

/// `DLDataType`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataType {
    pub(crate) code: u8,
    pub(crate) bits: u8,
    pub(crate) lanes: u16,
}

/// `kDLFloat`, `kDLBfloat`, `kDLBool`.
pub(crate) const FLOAT: u8 = 2;
pub(crate) const BFLOAT: u8 = 4;
pub(crate) const BOOL: u8 = 6;

/// `DLTensor`.
#[repr(C)]
pub(crate) struct DlTensor {
    data: *mut c_void,
    device: Device,
    ndim: i32,
    dtype: DataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

impl DlTensor {
    fn empty() -> DlTensor {
        DlTensor {
            data: std::ptr::null_mut(),
            device: Device {
                device_type: 0,
                device_id: 0,
            },
            ndim: 0,
            dtype: DataType {
                code: 0,
                bits: 0,
                lanes: 0,
            },
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        }
    }
}

/// `DLManagedTensorVersioned`.
#[repr(C)]
#[allow(dead_code)] // the C layout
struct ManagedTensorVersioned {
    version: Version,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut ManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DlTensor,
}

type SetError = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char);
type Allocator = unsafe extern "C" fn(
    *mut DlTensor,
    *mut *mut ManagedTensorVersioned,
    *mut c_void,
    Option<SetError>,
) -> c_int;
type ManagedFromPy = unsafe extern "C" fn(*mut c_void, *mut *mut ManagedTensorVersioned) -> c_int;
type ManagedToPy = unsafe extern "C" fn(*mut ManagedTensorVersioned, *mut *mut c_void) -> c_int;
type DlTensorFromPy = unsafe extern "C" fn(*mut c_void, *mut DlTensor) -> c_int;
type CurrentStream = unsafe extern "C" fn(i32, i32, *mut *mut c_void) -> c_int;

/// `DLPackExchangeAPIHeader`.
#[repr(C)]
#[allow(dead_code)] // the C layout
struct Header {
    version: Version,
    prev_api: *mut Header,
}

/// `DLPackExchangeAPI`.
#[repr(C)]
#[allow(dead_code)] // the C layout
struct ExchangeApi {
    header: Header,
    managed_tensor_allocator: Option<Allocator>,
    managed_tensor_from_py_object_no_sync: Option<ManagedFromPy>,
    managed_tensor_to_py_object_no_sync: Option<ManagedToPy>,
    dltensor_from_py_object_no_sync: Option<DlTensorFromPy>,
    current_work_stream: Option<CurrentStream>,
}

/// A framework's exchange table, checked to be DLPack 1.x.
pub(crate) struct Api {
    /// The capsule, kept so the table stays alive.
    _capsule: Py<PyAny>,
    from_py: DlTensorFromPy,
    allocator: Option<Allocator>,
    to_py: Option<ManagedToPy>,
}

const CAPSULE_NAME: &CStr = c"dlpack_exchange_api";

impl Api {
    /// The table published on `tensor_type` (`__dlpack_c_exchange_api__`), if there is a
    /// usable one.
    pub(crate) fn of(tensor_type: &Bound<'_, PyAny>) -> Option<Api> {
        let py = tensor_type.py();
        let capsule = tensor_type.getattr("__dlpack_c_exchange_api__").ok()?;
        // SAFETY: `capsule` is a live object; PyCapsule_GetPointer checks that it is a
        // capsule of this name and returns NULL (with an exception set) otherwise.
        let ptr = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), CAPSULE_NAME.as_ptr()) };
        if ptr.is_null() {
            let _ = PyErr::take(py);
            return None;
        }
        // SAFETY: a capsule named "dlpack_exchange_api" holds a `DLPackExchangeAPI`
        // (dlpack.h); its header (first field) is readable in every version, and the rest
        // is read only for major version 1, whose layout `ExchangeApi` is. The capsule is
        // kept alive in `Api`, so the table outlives every use.
        let api = unsafe { &*(ptr as *const ExchangeApi) };
        if api.header.version.major != 1 {
            return None;
        }
        Some(Api {
            _capsule: capsule.unbind(),
            from_py: api.dltensor_from_py_object_no_sync?,
            allocator: api.managed_tensor_allocator,
            to_py: api.managed_tensor_to_py_object_no_sync,
        })
    }

    /// The metadata of tensor `obj`, or `None` (no exception pending) when the table
    /// cannot describe it.
    pub(crate) fn read(&self, obj: &Bound<'_, PyAny>) -> Option<Described> {
        let mut t = DlTensor::empty();
        // SAFETY: `obj` is a live tensor of the type the table was taken from (the
        // caller checks); the function fills `t` or returns non-zero with an exception
        // set, which is cleared here.
        let rc = unsafe { (self.from_py)(obj.as_ptr() as *mut c_void, &mut t) };
        if rc != 0 {
            let _ = PyErr::take(obj.py());
            return None;
        }
        let n = usize::try_from(t.ndim).ok()?;
        let dims = |p: *const i64| -> Option<Vec<i64>> {
            if n == 0 {
                return Some(Vec::new());
            }
            if p.is_null() {
                return None;
            }
            // SAFETY: shape and strides point to `ndim` values owned by the tensor,
            // valid until control returns to Python (we still hold the GIL and `obj`).
            Some(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
        };
        let shape = dims(t.shape)?;
        let strides = dims(t.strides)?;
        Some(Described {
            addr: (t.data as usize).checked_add(usize::try_from(t.byte_offset).ok()?)?,
            device: t.device,
            dtype: t.dtype,
            shape,
            strides,
        })
    }

    /// A new contiguous CPU tensor of `shape` and `dtype`: `(tensor, data address)`, or
    /// `None` (no exception pending) when the table cannot make one.
    pub(crate) fn alloc<'py>(
        &self,
        py: Python<'py>,
        shape: &[usize],
        dtype: DataType,
    ) -> Option<(Bound<'py, PyAny>, usize)> {
        let (alloc, to_py) = (self.allocator?, self.to_py?);
        let mut dims: Vec<i64> = shape
            .iter()
            .map(|&d| i64::try_from(d).ok())
            .collect::<Option<_>>()?;
        let mut proto = DlTensor::empty();
        proto.device = Device {
            device_type: CPU,
            device_id: 0,
        };
        proto.ndim = i32::try_from(dims.len()).ok()?;
        proto.dtype = dtype;
        proto.shape = dims.as_mut_ptr();
        let mut out: *mut ManagedTensorVersioned = std::ptr::null_mut();
        let mut failed = false;
        // SAFETY: `proto` describes the tensor (only dtype, ndim, shape and device are
        // read); `set_error` matches the callback type and only sets `failed`, the bool
        // passed as its context, which lives across the call.
        let rc = unsafe {
            alloc(
                &mut proto,
                &mut out,
                &mut failed as *mut bool as *mut c_void,
                Some(set_error),
            )
        };
        if rc != 0 || out.is_null() {
            let _ = PyErr::take(py);
            return None;
        }
        // SAFETY: the allocator returned an owning `DLManagedTensorVersioned` of major
        // version 1 (the table's), whose `dl_tensor` is readable.
        let (addr, contiguous) = unsafe {
            let t = &(*out).dl_tensor;
            let contiguous = t.strides.is_null() || {
                let st = std::slice::from_raw_parts(t.strides, dims.len());
                let mut acc = 1i64;
                let mut ok = true;
                for (s, d) in st.iter().zip(&dims).rev() {
                    ok &= *d <= 1 || *s == acc;
                    acc *= *d;
                }
                ok
            };
            (t.data as usize + t.byte_offset as usize, contiguous)
        };
        let mut obj: *mut c_void = std::ptr::null_mut();
        // SAFETY: `out` is an owning tensor from this table's allocator; the call takes
        // ownership of it and returns a new reference to a Python tensor.
        let rc = unsafe { to_py(out, &mut obj) };
        if rc != 0 || obj.is_null() {
            let _ = PyErr::take(py);
            return None;
        }
        // SAFETY: `obj` is a new (owned) reference to a Python object.
        let obj = unsafe { Bound::from_owned_ptr(py, obj as *mut ffi::PyObject) };
        contiguous.then_some((obj, addr))
    }
}

/// The `SetError` callback of the allocator: notes that it failed (the message is not
/// needed: the binding then allocates through Python, which reports its own error).
unsafe extern "C" fn set_error(ctx: *mut c_void, _kind: *const c_char, _message: *const c_char) {
    if !ctx.is_null() {
        // SAFETY: `ctx` is the `&mut bool` passed by `Api::alloc`, alive during the call.
        unsafe { *(ctx as *mut bool) = true };
    }
}

/// What the table says about a tensor.
pub(crate) struct Described {
    /// Address of element 0 (`data + byte_offset`).
    pub(crate) addr: usize,
    pub(crate) device: Device,
    pub(crate) dtype: DataType,
    pub(crate) shape: Vec<i64>,
    /// Element strides.
    pub(crate) strides: Vec<i64>,
}
