//! # fastattn for Python
//!
//! The extension module `fastattn._fastattn` of the Python package `fastattn` (built with
//! maturin: `pip install ./crates/python`). It calls the Rust API of `fastattn-attention`
//! directly ([`attention::sdpa_into_dyn`]), not the C ABI.
//!
//! * Inputs are numpy arrays or torch CPU tensors of float32, float16 or bfloat16 with any
//!   strides, read in place (module `view`); outputs are allocated in the kind of the query and
//!   written in place.
//! * Each Python function's shape rules (torch's SDPA: broadcasting, grouped heads, 2-D to
//!   N-D; FlashAttention-2's `[B, L, H, D]`) become one or more library calls on strided
//!   4-D views (module `attn`). Torch's top-left causal mask is expressed without a mask tensor
//!   (`attn::top_left_causal`).
//! * The GIL is released while the library computes; the thread count follows
//!   `torch.get_num_threads()` for torch inputs and `fastattn.set_num_threads` otherwise
//!   (module `pool`).
//! * Every refusal is a Python exception: `TypeError` for a wrong kind or dtype,
//!   `ValueError` for shapes and options, with the library's message.
//! * Autograd: a call on torch tensors that require grad goes through
//!   `fastattn._autograd` (a `torch.autograd.Function`), whose forward calls the private
//!   `_sdpa_fwd` (or `flash_attn_func` with its LSE) and whose backward calls `_sdpa_bwd` /
//!   `_flash_bwd`: the library's backward pass ([`attention::sdpa_backward_into_dyn`]) on
//!   the same plan and options as the forward, into float32 gradients.
//!
//! The pure-Python package (`python/fastattn/`) adds autograd, the torch custom ops, the
//! transformers integration and the benchmark.

mod attn;
mod dlpack;
mod pool;
mod view;

use attention::AttnPath;
use attn::{Alibi, KvLengths, MaskBuf, Plan, Scores};
use pool::Threads;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, IntoPyObjectExt};
use view::{Elem, Kind, Output, View};

/// A library error as a Python `ValueError` carrying its message.
fn attn_err(e: attention::AttnError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Whether any of `objs` is a torch tensor that requires grad while grad mode is on: the
/// call then goes through `fastattn._autograd`, which records it in the autograd graph
/// (a `torch.autograd.Function` whose backward calls `_sdpa_bwd` or `_flash_bwd`).
fn needs_graph(py: Python<'_>, objs: &[Option<&Bound<'_, PyAny>>]) -> PyResult<bool> {
    let Some(t) = view::torch(py)? else {
        return Ok(false);
    };
    if !t.is_grad_enabled.call0(py)?.extract::<bool>(py)? {
        return Ok(false);
    }
    for o in objs.iter().flatten() {
        if t.is_tensor(o)? && o.getattr(intern!(py, "requires_grad"))?.extract::<bool>()? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Calls `fastattn._autograd.call(name, args)`.
fn with_graph(py: Python<'_>, name: &str, args: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
    with_graph_kw(py, name, args, None)
}

/// Calls `fastattn._autograd.call(name, args, kwargs)`.
fn with_graph_kw<'py>(
    py: Python<'py>,
    name: &str,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let m = py.import(intern!(py, "fastattn._autograd"))?;
    Ok(m.getattr(intern!(py, "call"))?
        .call1((name, args, kwargs))?
        .unbind())
}

/// The threads for a call whose query is `q`.
fn threads_for(py: Python<'_>, q: &View<'_>) -> PyResult<Threads> {
    match q.kind {
        Kind::Torch => Threads::torch(py),
        Kind::Numpy => Threads::numpy(),
    }
}

/// What a call returns.
struct Outputs<'py> {
    out: Option<Output<'py>>,
    lse: Option<Output<'py>>,
    weights: Option<Output<'py>>,
}

/// Runs `plan` on the views: allocates the outputs asked for (in the query's kind; the
/// output in `out_elem`, LSE and weights in float32), releases the GIL and computes.
#[allow(clippy::too_many_arguments)]
fn execute<'py>(
    py: Python<'py>,
    q: &View<'py>,
    k: &View<'py>,
    v: &View<'py>,
    mask: Option<&View<'py>>,
    plan: &Plan,
    scores: &Scores,
    want_out: bool,
    want_lse: bool,
    want_weights: bool,
) -> PyResult<Outputs<'py>> {
    let (qd, kd, vd) = (q.data()?, k.data()?, v.data()?);
    let mask_buf = match (mask, &plan.mask) {
        (Some(m), Some(l)) => Some(MaskBuf::new(m.data()?, l.clone())),
        _ => None,
    };
    let mut out = if want_out {
        Some(Output::zeros(q, &plan.out.shape, q.elem)?)
    } else {
        None
    };
    // The library always writes an output; when the caller does not want it, a scratch
    // buffer takes it (the plan's output layout is contiguous over its shape).
    let mut scratch = if want_out {
        Vec::new()
    } else {
        vec![0.0f32; plan.out.shape.iter().product()]
    };
    let mut lse = if want_lse {
        Some(Output::zeros(q, &plan.lse_shape, Elem::F32)?)
    } else {
        None
    };
    let mut weights = if want_weights {
        Some(Output::zeros(q, &plan.weights_shape, Elem::F32)?)
    } else {
        None
    };
    let threads = threads_for(py, q)?;
    {
        let out_data = match out.as_mut() {
            Some(o) => o.data(),
            None => view::DataMut::F32(&mut scratch),
        };
        let mut job = attn::Job::new(
            plan,
            qd,
            kd,
            vd,
            mask_buf.as_ref(),
            out_data,
            lse.as_mut().map(Output::f32_data).transpose()?,
            weights.as_mut().map(Output::f32_data).transpose()?,
            scores,
            threads.parallelism(),
        )?;
        py.detach(|| threads.run(|| job.run())).map_err(attn_err)?;
    }
    Ok(Outputs { out, lse, weights })
}

/// The shared checks of the torch-semantics functions: float Q, K, V of one dtype, and a
/// mask that is bool, float32 or the query's dtype (`strict_mask`, torch's rule).
fn check_torch_dtypes(
    q: &View<'_>,
    k: &View<'_>,
    v: &View<'_>,
    mask: Option<&View<'_>>,
    strict_mask: bool,
) -> PyResult<()> {
    for (name, t) in [("query", q), ("key", k), ("value", v)] {
        if t.elem == Elem::Bool {
            return Err(PyTypeError::new_err(format!(
                "{name}: dtype bool is not supported (float32, float16, bfloat16)"
            )));
        }
    }
    if q.elem != k.elem || q.elem != v.elem {
        return Err(PyTypeError::new_err(format!(
            "query, key and value must have the same dtype, got {}, {} and {}",
            q.elem.name(),
            k.elem.name(),
            v.elem.name()
        )));
    }
    if let Some(m) = mask {
        if strict_mask && !matches!(m.elem, Elem::Bool | Elem::F32) && m.elem != q.elem {
            return Err(PyTypeError::new_err(format!(
                "attn_mask must be bool, float32 or the query's dtype ({}), got {}",
                q.elem.name(),
                m.elem.name()
            )));
        }
    }
    Ok(())
}

fn scale_f32(scale: Option<f64>) -> Option<f32> {
    scale.map(|s| s as f32)
}

/// A problem ready to run: the views of its operands, its plan and its score options.
struct Prepared<'py> {
    q: View<'py>,
    k: View<'py>,
    v: View<'py>,
    mask: Option<View<'py>>,
    plan: Plan,
    scores: Scores,
}

impl<'py> Prepared<'py> {
    /// Runs the forward (see [`execute`]).
    fn execute(&self, py: Python<'py>, want: (bool, bool, bool)) -> PyResult<Outputs<'py>> {
        execute(
            py,
            &self.q,
            &self.k,
            &self.v,
            self.mask.as_ref(),
            &self.plan,
            &self.scores,
            want.0,
            want.1,
            want.2,
        )
    }

    /// Runs the backward: from the forward's output `out` and LSE `lse` (as the forward
    /// returned them) and the output's gradient `grad_out` (the output's shape, any
    /// strides and float dtype), the float32 gradients `(dq, dk, dv)`, shaped as
    /// [`Plan::grads`]. Releases the GIL while computing.
    fn gradients(
        &self,
        py: Python<'py>,
        grad_out: &Bound<'py, PyAny>,
        out: &Bound<'py, PyAny>,
        lse: &Bound<'py, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let plan = &self.plan;
        let o = View::new(out, "out")?;
        let g = View::new(grad_out, "grad_out")?;
        let l = View::new(lse, "lse")?;
        for (name, t) in [("out", &o), ("grad_out", &g)] {
            if t.elem == Elem::Bool {
                return Err(PyTypeError::new_err(format!(
                    "{name}: dtype bool is not supported (float32, float16, bfloat16)"
                )));
            }
            if t.shape != plan.out.shape {
                return Err(PyValueError::new_err(format!(
                    "{name} has shape {:?}, the attention output is {:?}",
                    t.shape, plan.out.shape
                )));
            }
        }
        if l.elem != Elem::F32 {
            return Err(PyTypeError::new_err(format!(
                "lse must be float32, got {}",
                l.elem.name()
            )));
        }
        if l.shape != plan.lse_shape || !view::is_contiguous(&l.shape, &l.strides) {
            return Err(PyValueError::new_err(format!(
                "lse must be a contiguous {:?} tensor (the forward's), got shape {:?}",
                plan.lse_shape, l.shape
            )));
        }
        let view::Data::F32(lse_data) = l.data()? else {
            return Err(PyTypeError::new_err("lse must be float32"));
        };
        let (qd, kd, vd) = (self.q.data()?, self.k.data()?, self.v.data()?);
        let mask_buf = match (self.mask.as_ref(), &plan.mask) {
            (Some(m), Some(ml)) => Some(MaskBuf::new(m.data()?, ml.clone())),
            _ => None,
        };
        let o_layout = plan.out.layout(&o.strides);
        let g_layout = plan.out.layout(&g.strides);
        let zeros = |i: usize| Output::zeros(&self.q, &plan.grads[i].shape, Elem::F32);
        let (mut dq, mut dk, mut dv) = (zeros(0)?, zeros(1)?, zeros(2)?);
        let threads = threads_for(py, &self.q)?;
        {
            let grads = [dq.f32_data()?, dk.f32_data()?, dv.f32_data()?];
            let mut job = attn::GradJob::new(
                plan,
                qd,
                kd,
                vd,
                mask_buf.as_ref(),
                (o.data()?, o_layout),
                (g.data()?, g_layout),
                lse_data,
                grads,
                &self.scores,
                threads.parallelism(),
            )?;
            py.detach(|| threads.run(|| job.run())).map_err(attn_err)?;
        }
        (dq.into_obj(), dk.into_obj(), dv.into_obj()).into_py_any(py)
    }
}

/// The views and plan of a torch-semantics call (shared by `scaled_dot_product_attention`,
/// `attention_weights`, the transformers entry and their backward).
#[allow(clippy::too_many_arguments)]
fn prepare_torch<'py>(
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
    softcap: Option<f64>,
    blhd: bool,
    strict_mask: bool,
) -> PyResult<Prepared<'py>> {
    let q = View::new(query, "query")?;
    let k = View::new(key, "key")?;
    let v = View::new(value, "value")?;
    let mask = attn_mask.map(|m| View::new(m, "attn_mask")).transpose()?;
    check_torch_dtypes(&q, &k, &v, mask.as_ref(), strict_mask)?;
    if is_causal && mask.is_some() {
        return Err(PyValueError::new_err(
            "attn_mask must be None when is_causal=True (as in torch)",
        ));
    }
    let mut plan = attn::plan_torch(&q, &k, &v, mask.as_ref(), enable_gqa, blhd)?;
    if is_causal {
        let n = plan.q.shape.len();
        plan.masking = attn::top_left_causal(plan.q.shape[n - 2], plan.k.shape[n - 2]);
    }
    let scores = Scores {
        scale: scale_f32(scale),
        softcap: softcap.map(|c| c as f32),
        ..Scores::default()
    };
    Ok(Prepared {
        q,
        k,
        v,
        mask,
        plan,
        scores,
    })
}

/// Torch-semantics attention (see [`prepare_torch`]), computing the outputs in `want`
/// (output, LSE, weights).
#[allow(clippy::too_many_arguments)]
fn torch_semantics<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
    softcap: Option<f64>,
    blhd: bool,
    strict_mask: bool,
    want: (bool, bool, bool),
) -> PyResult<Outputs<'py>> {
    prepare_torch(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        softcap,
        blhd,
        strict_mask,
    )?
    .execute(py, want)
}

/// Scaled dot-product attention with the semantics of
/// `torch.nn.functional.scaled_dot_product_attention`, on torch tensors or numpy arrays.
///
/// `query` is `[..., Hq, Lq, E]`, `key` `[..., Hk, Lk, E]`, `value` `[..., Hv, Lk, Ev]`
/// (2-D or more; batch dimensions broadcast); the result is `[..., Hq, Lq, Ev]` in the
/// query's kind and dtype (float32, float16 or bfloat16; Q, K and V of one dtype), read and
/// written without copies, whatever the strides.
///
/// * `attn_mask`: bool (True = the key may be seen) or float (added to the scores; float32
///   or the query's dtype), broadcast to `[..., Hq, Lq, Lk]`. A row with no visible key
///   gives 0.
/// * `dropout_p`: must be 0 (`ValueError` otherwise).
/// * `is_causal`: query `i` sees keys `j <= i` (aligned to the top left, as torch's);
///   not together with `attn_mask`.
/// * `scale`: default `1/sqrt(E)`.
/// * `enable_gqa`: `Hq` may be a multiple of `Hk = Hv` (grouped-query attention, without
///   repeating K and V); without it the head counts must be equal or 1.
///
/// Differentiable on torch tensors that require grad (the library's backward pass, through
/// `fastattn._autograd`): the gradients come back in the inputs' dtypes and shapes, summed
/// over broadcast dimensions. The mask gets no gradient (one that requires grad is a
/// `ValueError`).
#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask=None, dropout_p=0.0, is_causal=false, scale=None, enable_gqa=false))]
#[allow(clippy::too_many_arguments)]
fn scaled_dot_product_attention<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    dropout_p: f64,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
) -> PyResult<Py<PyAny>> {
    if dropout_p != 0.0 {
        return Err(PyValueError::new_err(format!(
            "dropout_p must be 0.0: fastattn has no dropout (got {dropout_p})"
        )));
    }
    if needs_graph(py, &[Some(query), Some(key), Some(value), attn_mask])? {
        let args = (
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        );
        return with_graph(py, "scaled_dot_product_attention", args.into_pyobject(py)?);
    }
    let o = torch_semantics(
        py,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        None,
        false,
        true,
        (true, false, false),
    )?;
    Ok(o.out.expect("asked for").into_obj().unbind())
}

/// The attention weights of a torch-semantics call (same arguments as
/// `scaled_dot_product_attention`, without dropout): `(weights, lse)`, float32, with
/// `weights[..., h, i, j]` the weight query `i` gives key `j` (rows sum to 1, or are all 0
/// when no key is visible) and `lse[..., h, i]` the log-sum-exp of row `i`'s scores
/// (`-inf` when no key is visible). Not differentiable: on inputs that require grad, the
/// results' backward raises `NotImplementedError`.
#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask=None, is_causal=false, scale=None, enable_gqa=false))]
#[allow(clippy::too_many_arguments)]
fn attention_weights<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
) -> PyResult<Py<PyAny>> {
    if needs_graph(py, &[Some(query), Some(key), Some(value), attn_mask])? {
        let args = (query, key, value, attn_mask, is_causal, scale, enable_gqa);
        return with_graph(py, "attention_weights", args.into_pyobject(py)?);
    }
    let o = torch_semantics(
        py,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        None,
        false,
        true,
        (false, true, true),
    )?;
    let w = o.weights.expect("asked for").into_obj();
    let l = o.lse.expect("asked for").into_obj();
    (w, l).into_py_any(py)
}

/// A sequence (list, tuple, numpy array, torch tensor) as a Python list.
fn as_list<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    if obj.hasattr(intern!(py, "tolist"))? {
        obj.call_method0(intern!(py, "tolist"))
    } else {
        Ok(obj.clone())
    }
}

fn window(x: i64, side: &str) -> PyResult<Option<usize>> {
    match x {
        -1 => Ok(None),
        x if x >= 0 => Ok(Some(x as usize)),
        x => Err(PyValueError::new_err(format!(
            "window_size: {side} must be -1 (unbounded) or >= 0, got {x}"
        ))),
    }
}

/// FlashAttention-2's `flash_attn_func`: `q` `[B, Lq, Hq, D]`, `k` `[B, Lk, Hkv, D]`, `v`
/// `[B, Lk, Hkv, Dv]` (Hq a multiple of Hkv: GQA/MQA), result `[B, Lq, Hq, Dv]` in q's
/// kind and dtype. Q, K and V may each be float32, float16 or bfloat16, with any strides.
///
/// Queries are aligned to the bottom right of the keys (query `i` sits at position
/// `i + n - Lq`, with `n` the batch's valid key count), as in FlashAttention-2 and the
/// Rust library.
///
/// * `causal`: keys after the query's position are hidden.
/// * `softmax_scale`: default `1/sqrt(D)`.
/// * `window_size=(left, right)`: keys at most `left` before / `right` after the query's
///   position (-1: unbounded).
/// * `softcap`: `cap * tanh(s / cap)` on the scores (0: off).
/// * `alibi_slopes`: `(Hq,)` or `(B, Hq)`; subtracts `slope * |pos - j|`.
/// * `return_lse`: also return the log-sum-exp `[B, Hq, Lq]` (float32): `(out, lse)`. The
///   LSE is not differentiable (no gradient flows back through it).
/// * `kv_lengths`: `B` valid key counts (keys past them are padding).
/// * `attn_mask` (keyword): a bool or additive mask broadcast to `[B, Hq, Lq, Lk]` (not
///   in FlashAttention-2; the library has it).
/// * `dropout_p`, `deterministic` (keywords, for FlashAttention-2 callers): dropout must
///   be 0; every call is deterministic (bit-identical at any thread count).
/// * `path` (keyword): `"auto"`, `"flash"` or `"materialized"` (both give the same
///   results within rounding; for profiling).
/// * `variant` (keyword): force a kernel variant (`"scalar"`, `"portable"`, `"avx2"`,
///   `"avx512"`); one this CPU lacks is a `ValueError`.
///
/// Differentiable on torch tensors that require grad, with every option: the gradients of
/// q, k and v come back in their dtypes (dK and dV summed over each group of query heads).
/// The mask and the ALiBi slopes get no gradient (a tensor of them that requires grad is a
/// `ValueError`).
#[pyfunction]
#[pyo3(signature = (q, k, v, causal=false, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, return_lse=false, kv_lengths=None, *, attn_mask=None, dropout_p=0.0, deterministic=true, path=None, variant=None))]
#[allow(clippy::too_many_arguments)]
fn flash_attn_func<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    causal: bool,
    softmax_scale: Option<f64>,
    window_size: (i64, i64),
    softcap: f64,
    alibi_slopes: Option<&Bound<'py, PyAny>>,
    return_lse: bool,
    kv_lengths: Option<&Bound<'py, PyAny>>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    dropout_p: f64,
    deterministic: bool,
    path: Option<&str>,
    variant: Option<&str>,
) -> PyResult<Py<PyAny>> {
    if dropout_p != 0.0 {
        return Err(PyValueError::new_err(format!(
            "dropout_p must be 0.0: fastattn has no dropout (got {dropout_p})"
        )));
    }
    // Results never depend on the thread count: every call is deterministic.
    let _ = deterministic;
    if needs_graph(py, &[Some(q), Some(k), Some(v), attn_mask, alibi_slopes])? {
        let args = (
            q,
            k,
            v,
            causal,
            softmax_scale,
            window_size,
            softcap,
            alibi_slopes,
            return_lse,
            kv_lengths,
        );
        let kw = PyDict::new(py);
        kw.set_item(intern!(py, "attn_mask"), attn_mask)?;
        kw.set_item(intern!(py, "path"), path)?;
        kw.set_item(intern!(py, "variant"), variant)?;
        return with_graph_kw(py, "flash_attn_func", args.into_pyobject(py)?, Some(kw));
    }
    let p = prepare_flash(
        q,
        k,
        v,
        causal,
        softmax_scale,
        window_size,
        softcap,
        alibi_slopes,
        kv_lengths,
        attn_mask,
        path,
        variant,
    )?;
    let o = p.execute(py, (true, return_lse, false))?;
    let out = o.out.expect("asked for").into_obj();
    if return_lse {
        (out, o.lse.expect("asked for").into_obj()).into_py_any(py)
    } else {
        Ok(out.unbind())
    }
}

/// The views and plan of a `flash_attn_func` call (and of its backward).
#[allow(clippy::too_many_arguments)]
fn prepare_flash<'py>(
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    causal: bool,
    softmax_scale: Option<f64>,
    window_size: (i64, i64),
    softcap: f64,
    alibi_slopes: Option<&Bound<'py, PyAny>>,
    kv_lengths: Option<&Bound<'py, PyAny>>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    path: Option<&str>,
    variant: Option<&str>,
) -> PyResult<Prepared<'py>> {
    let qv = View::new(q, "q")?;
    let kv = View::new(k, "k")?;
    let vv = View::new(v, "v")?;
    let mask = attn_mask.map(|m| View::new(m, "attn_mask")).transpose()?;
    let (wl, wr) = (
        window(window_size.0, "left")?,
        window(window_size.1, "right")?,
    );
    let alibi = match alibi_slopes {
        None => None,
        Some(a) => {
            let a = as_list(a)?;
            if let Ok(row) = a.extract::<Vec<f32>>() {
                Some(Alibi::Shared(row))
            } else {
                let rows: Vec<Vec<f32>> = a.extract().map_err(|_| {
                    PyTypeError::new_err("alibi_slopes must be a (Hq,) or (B, Hq) float sequence")
                })?;
                if rows.windows(2).all(|w| w[0] == w[1]) && !rows.is_empty() {
                    Some(Alibi::Shared(rows[0].clone()))
                } else {
                    let b = qv.shape.first().copied().unwrap_or(0);
                    if rows.len() != b {
                        return Err(PyValueError::new_err(format!(
                            "alibi_slopes has {} rows, the batch is {b}",
                            rows.len()
                        )));
                    }
                    Some(Alibi::PerCall(rows.concat()))
                }
            }
        }
    };
    let per_batch = matches!(alibi, Some(Alibi::PerCall(_)));
    let mut plan = attn::plan_flash(&qv, &kv, &vv, mask.as_ref(), per_batch)?;
    plan.masking.causal = causal;
    plan.masking.window_left = wl;
    plan.masking.window_right = wr;
    if let Some(l) = kv_lengths {
        let lens: Vec<i64> = as_list(l)?
            .extract()
            .map_err(|_| PyTypeError::new_err("kv_lengths must be a sequence of ints"))?;
        let lens = lens
            .into_iter()
            .map(|n| {
                usize::try_from(n)
                    .map_err(|_| PyValueError::new_err(format!("kv_lengths: {n} is negative")))
            })
            .collect::<PyResult<Vec<usize>>>()?;
        plan.masking.kv_lengths = Some(KvLengths::Each(lens));
    }
    let path = match path {
        None | Some("auto") => AttnPath::Auto,
        Some("flash") => AttnPath::Flash,
        Some("materialized") => AttnPath::Materialized,
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "path must be 'auto', 'flash' or 'materialized', got {other:?}"
            )))
        }
    };
    let isa = variant
        .map(|name| kernels::Isa::from_name(name).and_then(kernels::Isa::check))
        .transpose()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let scores = Scores {
        scale: scale_f32(softmax_scale),
        softcap: (softcap != 0.0).then_some(softcap as f32),
        alibi,
        path,
        isa,
    };
    Ok(Prepared {
        q: qv,
        k: kv,
        v: vv,
        mask,
        plan,
        scores,
    })
}

/// Torch-semantics attention with the extras the transformers integration needs:
/// `softcap`, any float mask dtype, and (`blhd`) the output laid out `[B, Lq, H, Ev]`.
#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask=None, is_causal=false, scale=None, enable_gqa=false, softcap=None, blhd=false))]
#[allow(clippy::too_many_arguments)]
fn _sdpa_ext<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
    softcap: Option<f64>,
    blhd: bool,
) -> PyResult<Py<PyAny>> {
    if needs_graph(py, &[Some(query), Some(key), Some(value), attn_mask])? {
        let args = (
            query, key, value, attn_mask, is_causal, scale, enable_gqa, softcap, blhd,
        );
        return with_graph(py, "_sdpa_ext", args.into_pyobject(py)?);
    }
    let o = torch_semantics(
        py,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        softcap,
        blhd,
        false,
        (true, false, false),
    )?;
    Ok(o.out.expect("asked for").into_obj().unbind())
}

/// The forward of the autograd path of the torch-semantics functions: `(out, lse)`, with
/// `lse` `[..., H, Lq]` float32 (the log-sum-exp `_sdpa_bwd` needs). Arguments as
/// `_sdpa_ext`; `strict_mask`: torch's rule for the mask dtype (bool, float32 or the
/// query's). Records no autograd node.
#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask=None, is_causal=false, scale=None, enable_gqa=false, softcap=None, blhd=false, strict_mask=true))]
#[allow(clippy::too_many_arguments)]
fn _sdpa_fwd<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
    softcap: Option<f64>,
    blhd: bool,
    strict_mask: bool,
) -> PyResult<Py<PyAny>> {
    let o = torch_semantics(
        py,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        softcap,
        blhd,
        strict_mask,
        (true, true, false),
    )?;
    let out = o.out.expect("asked for").into_obj();
    (out, o.lse.expect("asked for").into_obj()).into_py_any(py)
}

/// The backward of a torch-semantics call: from the output's gradient `grad_out`, the
/// forward's inputs and options, its output `out` and LSE `lse` (from `_sdpa_fwd`),
/// `(dq, dk, dv)` in float32. Each gradient has the shape of its input with every
/// broadcast dimension at its full size (batch dimensions, and heads shared without
/// `enable_gqa`): sum it back to the input's shape (`sum_to_size`). With grouped heads,
/// dK and dV are already summed over each group.
#[pyfunction]
#[pyo3(signature = (grad_out, query, key, value, out, lse, attn_mask=None, is_causal=false, scale=None, enable_gqa=false, softcap=None, blhd=false))]
#[allow(clippy::too_many_arguments)]
fn _sdpa_bwd<'py>(
    py: Python<'py>,
    grad_out: &Bound<'py, PyAny>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    is_causal: bool,
    scale: Option<f64>,
    enable_gqa: bool,
    softcap: Option<f64>,
    blhd: bool,
) -> PyResult<Py<PyAny>> {
    prepare_torch(
        query, key, value, attn_mask, is_causal, scale, enable_gqa, softcap, blhd, false,
    )?
    .gradients(py, grad_out, out, lse)
}

/// The backward of `flash_attn_func`: from the output's gradient `grad_out`, the forward's
/// inputs and options, its output `out` and LSE `lse` (`return_lse=True`), `(dq, dk, dv)`
/// in float32, shaped as q, k and v (dK and dV summed over each group of query heads).
#[pyfunction]
#[pyo3(signature = (grad_out, q, k, v, out, lse, causal=false, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, kv_lengths=None, *, attn_mask=None, variant=None))]
#[allow(clippy::too_many_arguments)]
fn _flash_bwd<'py>(
    py: Python<'py>,
    grad_out: &Bound<'py, PyAny>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    causal: bool,
    softmax_scale: Option<f64>,
    window_size: (i64, i64),
    softcap: f64,
    alibi_slopes: Option<&Bound<'py, PyAny>>,
    kv_lengths: Option<&Bound<'py, PyAny>>,
    attn_mask: Option<&Bound<'py, PyAny>>,
    variant: Option<&str>,
) -> PyResult<Py<PyAny>> {
    prepare_flash(
        q,
        k,
        v,
        causal,
        softmax_scale,
        window_size,
        softcap,
        alibi_slopes,
        kv_lengths,
        attn_mask,
        None,
        variant,
    )?
    .gradients(py, grad_out, out, lse)
}

/// Seconds taken by `calls` back-to-back library calls on these inputs (torch semantics,
/// no mask), timed in Rust with the views built once: the Rust side of the binding's
/// overhead measurement (`python -m fastattn.bench --overhead`).
#[pyfunction]
#[pyo3(signature = (query, key, value, is_causal=false, calls=100))]
fn _time_rust<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    is_causal: bool,
    calls: usize,
) -> PyResult<f64> {
    let q = View::new(query, "query")?;
    let k = View::new(key, "key")?;
    let v = View::new(value, "value")?;
    check_torch_dtypes(&q, &k, &v, None, true)?;
    let mut plan = attn::plan_torch(&q, &k, &v, None, true, false)?;
    if is_causal {
        let n = plan.q.shape.len();
        plan.masking = attn::top_left_causal(plan.q.shape[n - 2], plan.k.shape[n - 2]);
    }
    let scores = Scores::default();
    let mut out = Output::zeros(&q, &plan.out.shape, q.elem)?;
    let threads = threads_for(py, &q)?;
    let mut job = attn::Job::new(
        &plan,
        q.data()?,
        k.data()?,
        v.data()?,
        None,
        out.data(),
        None,
        None,
        &scores,
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
    m.add_function(wrap_pyfunction!(scaled_dot_product_attention, m)?)?;
    m.add_function(wrap_pyfunction!(attention_weights, m)?)?;
    m.add_function(wrap_pyfunction!(flash_attn_func, m)?)?;
    m.add_function(wrap_pyfunction!(_sdpa_ext, m)?)?;
    m.add_function(wrap_pyfunction!(_sdpa_fwd, m)?)?;
    m.add_function(wrap_pyfunction!(_sdpa_bwd, m)?)?;
    m.add_function(wrap_pyfunction!(_flash_bwd, m)?)?;
    m.add_function(wrap_pyfunction!(_time_rust, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_variant, m)?)?;
    Ok(())
}
