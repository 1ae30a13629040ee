//! # fastattn for Python: the extension's core
//!
//! The extension module `fastattn._fastattn` of the Python package `fastattn` (built with
//! maturin: `pip install ./crates/python`). It calls the Rust API of `fastattn-attention`
//! directly ([`attention::sdpa_into_dyn`]), not the C ABI.
//!
//! The public functions (`scaled_dot_product_attention`, `flash_attn_func`,
//! `attention_weights`, ...) are Python (`python/fastattn/_functions.py`): they take the
//! arguments, check the ones only Python sees (dropout, autograd), describe the call once as
//! a `Call` (module `call`) and hand it, with the tensors, to one of this module's private
//! entry points:
//!
//! * `forward(call, q, k, v, mask)`: the output, `(out, lse)` or `(weights, lse)`, as the
//!   call says;
//! * `backward(call, q, k, v, mask, out, lse, grad_out)`: the float32 gradients
//!   `(dq, dk, dv)` of a forward on the same call ([`attention::sdpa_backward_into_dyn`]);
//! * `time_forward(call, q, k, v, mask, calls)`: the library calls alone, timed (the
//!   Rust side of `python -m fastattn.bench --overhead`);
//! * `varlen_forward(call, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table)`,
//!   `varlen_backward(call, q, k, v, out, lse, grad_out, cu_seqlens_q, cu_seqlens_k)` and
//!   `paged_kv_write(k, v, k_cache, v_cache, slot_mapping)`: serving attention (module
//!   `serving`: packed sequences, paged caches read in place and written, the gradients
//!   of packed sequences with the sinks'); both forward and write take 8-bit (int8, fp8)
//!   caches with scales through `kv_format`, `k_scale`, `v_scale` (module `quant`);
//! * `set_num_threads`, `get_num_threads`, `kernel_variant`.
//!
//! Inside:
//!
//! * Inputs are numpy arrays or torch CPU tensors of float32, float16 or bfloat16 with any
//!   strides, read in place (module `view`); outputs are allocated in the kind of the query and
//!   written in place.
//! * Each call's shape rules (torch's SDPA: broadcasting, grouped heads, 2-D to N-D;
//!   FlashAttention-2's `[B, L, H, D]`) become one or more library calls on strided 4-D
//!   views (module `attn`). Torch's top-left causal mask is expressed without a mask tensor
//!   (`attn::top_left_causal`).
//! * The GIL is released while the library computes; the thread count follows
//!   `torch.get_num_threads()` for torch inputs and `fastattn.set_num_threads` otherwise
//!   (module `pool`).
//! * Every refusal is a Python exception: `TypeError` for a wrong kind or dtype,
//!   `ValueError` for shapes and options, with the library's message.
//!
//! Autograd is Python's too (`fastattn.torch`: the `fastattn::attention` torch op, whose
//! registered backward calls `backward`).

mod attn;
mod call;
mod dlpack;
mod pool;
mod quant;
mod run;
mod serving;
mod view;

use call::{Call, Returns};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use run::{attn_err, threads_for, Prepared};
use view::Output;

/// Runs the forward of `call` on `q`, `k`, `v` (and `mask`): the output, `(out, lse)` or
/// `(weights, lse)` as `call` says (the output in the kind and dtype of `q`; LSE and
/// weights float32). Records no autograd node.
#[pyfunction]
#[pyo3(signature = (call, q, k, v, mask=None))]
fn forward<'py>(
    py: Python<'py>,
    call: &Bound<'py, Call>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let call = call.get();
    let p = Prepared::new(call, q, k, v, mask)?;
    match call.returns {
        Returns::Out => {
            let o = p.execute(py, true, false, false)?;
            Ok(o.out.expect("asked for").into_obj().unbind())
        }
        Returns::OutLse => {
            let o = p.execute(py, true, true, false)?;
            let out = o.out.expect("asked for").into_obj();
            (out, o.lse.expect("asked for").into_obj()).into_py_any(py)
        }
        Returns::WeightsLse => {
            let o = p.execute(py, false, true, true)?;
            let w = o.weights.expect("asked for").into_obj();
            (w, o.lse.expect("asked for").into_obj()).into_py_any(py)
        }
    }
}

/// The backward of a forward of `call`: from its inputs, its output `out` and LSE `lse`
/// (as `forward` returned them with `returns="out_lse"`) and the output's gradient
/// `grad_out`, `(dq, dk, dv)` in float32. Torch rules: each gradient has the shape of its
/// input with every broadcast dimension at its full size (batch dimensions, and heads
/// shared without `enable_gqa`), to be summed back to the input's shape (`sum_to_size`);
/// flash rules: the inputs' shapes. With grouped heads, dK and dV are already summed over
/// each group.
#[pyfunction]
#[pyo3(signature = (call, q, k, v, mask, out, lse, grad_out))]
#[allow(clippy::too_many_arguments)]
fn backward<'py>(
    py: Python<'py>,
    call: &Bound<'py, Call>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    out: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    grad_out: &Bound<'py, PyAny>,
) -> PyResult<Py<PyAny>> {
    Prepared::new(call.get(), q, k, v, mask)?.gradients(py, out, lse, grad_out)
}

/// Seconds taken by `calls` back-to-back library calls of `call`'s forward on these
/// inputs (output only), timed in Rust with the views and the output built once: the
/// Rust side of the binding's overhead measurement (`python -m fastattn.bench
/// --overhead`).
#[pyfunction]
#[pyo3(signature = (call, q, k, v, mask=None, calls=100))]
fn time_forward<'py>(
    py: Python<'py>,
    call: &Bound<'py, Call>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    calls: usize,
) -> PyResult<f64> {
    let p = Prepared::new(call.get(), q, k, v, mask)?;
    let mask_buf = match (p.mask.as_ref(), &p.plan.mask) {
        (Some(m), Some(l)) => Some(attn::MaskBuf::new(m.data()?, l.clone())),
        _ => None,
    };
    let mut out = Output::zeros(&p.q, &p.plan.out.shape, p.q.elem)?;
    let threads = threads_for(py, &p.q)?;
    let mut job = attn::Job::new(
        &p.plan,
        p.q.data()?,
        p.k.data()?,
        p.v.data()?,
        mask_buf.as_ref(),
        out.data(),
        None,
        None,
        &p.scores,
        threads.parallelism(),
    )?;
    let secs = py.detach(|| {
        threads.run(|| {
            let t0 = std::time::Instant::now();
            for _ in 0..calls {
                job.run()?;
            }
            Ok(t0.elapsed().as_secs_f64())
        })
    });
    secs.map_err(attn_err)
}

/// Sets the number of threads of calls on numpy arrays (n >= 1; calls on torch tensors
/// follow `torch.get_num_threads()`).
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    pool::set_num_threads(n)
}

/// The number of threads of calls on numpy arrays (`set_num_threads`'s value, else one
/// per CPU).
#[pyfunction]
fn get_num_threads() -> usize {
    pool::get_num_threads()
}

/// Sets how long idle helper threads keep looking for work (yielding their CPU) before
/// they sleep, in milliseconds (negative or inf: never sleep).
#[pyfunction]
fn set_blocktime(ms: f64) -> PyResult<()> {
    pool::set_blocktime(ms)
}

/// The helper threads' blocktime in milliseconds (inf: never sleep).
#[pyfunction]
fn get_blocktime() -> f64 {
    pool::get_blocktime()
}

/// The name of the kernel variant in use (`avx2`, `avx512`, `neon`, ...).
#[pyfunction]
fn kernel_variant() -> PyResult<String> {
    kernels::current_isa()
        .map(|i| i.name().to_string())
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The extension module.
#[pymodule]
fn _fastattn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Call>()?;
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(time_forward, m)?)?;
    m.add_function(wrap_pyfunction!(serving::varlen_forward, m)?)?;
    m.add_function(wrap_pyfunction!(serving::varlen_backward, m)?)?;
    m.add_function(wrap_pyfunction!(serving::paged_kv_write, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_blocktime, m)?)?;
    m.add_function(wrap_pyfunction!(get_blocktime, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_variant, m)?)?;
    Ok(())
}
