//! Running a described call: the views of its operands and its plan ([`Prepared`]), the
//! forward ([`Prepared::execute`]) and the backward ([`Prepared::gradients`]), with the
//! outputs allocated in the query's kind and the GIL released while the library computes.

use crate::attn::{self, MaskBuf, Plan, Scores};
use crate::call::{Call, Rules};
use crate::pool::Threads;
use crate::view::{self, Elem, Kind, Output, View};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

/// A library error as a Python `ValueError` carrying its message.
pub(crate) fn attn_err(e: attention::AttnError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The threads for a call whose query is `q`.
pub(crate) fn threads_for(py: Python<'_>, q: &View<'_>) -> PyResult<Threads> {
    match q.kind {
        Kind::Torch => Threads::torch(py),
        Kind::Numpy => Ok(Threads::numpy()),
    }
}

/// What a forward computed.
pub(crate) struct Outputs<'py> {
    pub(crate) out: Option<Output<'py>>,
    pub(crate) lse: Option<Output<'py>>,
    pub(crate) weights: Option<Output<'py>>,
}

/// The shared checks of the torch rules: float Q, K, V of one dtype, and a mask that is
/// bool, float32 or the query's dtype (`strict_mask`, torch's rule).
fn check_torch_dtypes(
    q: &View<'_>,
    k: &View<'_>,
    v: &View<'_>,
    mask: Option<&View<'_>>,
    strict_mask: bool,
    mixed_kv: bool,
) -> PyResult<()> {
    for (name, t) in [("query", q), ("key", k), ("value", v)] {
        if t.elem == Elem::Bool {
            return Err(PyTypeError::new_err(format!(
                "{name}: dtype bool is not supported ({})",
                view::supported("", "")
            )));
        }
    }
    if mixed_kv && k.elem == v.elem {
        // A cache in another float dtype than the model's: K and V agree, Q may differ.
    } else if q.elem != k.elem || q.elem != v.elem {
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

/// A call ready to run: the views of its operands, its plan and its score options.
pub(crate) struct Prepared<'py> {
    pub(crate) q: View<'py>,
    pub(crate) k: View<'py>,
    pub(crate) v: View<'py>,
    pub(crate) mask: Option<View<'py>>,
    pub(crate) plan: Plan,
    pub(crate) scores: Scores,
}

impl<'py> Prepared<'py> {
    /// Reads the operands of `call` and lays the problem out by its rules.
    pub(crate) fn new(
        call: &Call,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: &Bound<'py, PyAny>,
        mask: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prepared<'py>> {
        let names = match call.rules {
            Rules::Torch { .. } => ["query", "key", "value"],
            Rules::Flash { .. } => ["q", "k", "v"],
        };
        let q = View::new(q, names[0])?;
        let k = View::new(k, names[1])?;
        let v = View::new(v, names[2])?;
        let mask = mask.map(|m| View::new(m, "attn_mask")).transpose()?;
        let (plan, scores) = match &call.rules {
            Rules::Torch {
                gqa,
                blhd,
                strict_mask,
                mixed_kv,
            } => {
                check_torch_dtypes(&q, &k, &v, mask.as_ref(), *strict_mask, *mixed_kv)?;
                if call.causal && mask.is_some() {
                    return Err(PyValueError::new_err(
                        "attn_mask must be None when is_causal=True (as in torch)",
                    ));
                }
                let mut plan = attn::plan_torch(&q, &k, &v, mask.as_ref(), *gqa, *blhd)?;
                if call.causal {
                    let n = plan.q.shape.len();
                    plan.masking = attn::top_left_causal(plan.q.shape[n - 2], plan.k.shape[n - 2]);
                }
                (plan, call.scores(0)?)
            }
            Rules::Flash {
                window_left,
                window_right,
                kv_lengths,
                ..
            } => {
                let scores = call.scores(q.shape.first().copied().unwrap_or(0))?;
                let per_batch = matches!(scores.alibi, Some(attn::Alibi::PerCall(_)));
                let mut plan = attn::plan_flash(&q, &k, &v, mask.as_ref(), per_batch)?;
                plan.masking.causal = call.causal;
                plan.masking.window_left = *window_left;
                plan.masking.window_right = *window_right;
                plan.masking.kv_lengths = kv_lengths.clone().map(attn::KvLengths::Each);
                (plan, scores)
            }
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

    /// Runs the forward: allocates the outputs asked for (in the query's kind; the output
    /// in the query's dtype, LSE and weights in float32), releases the GIL and computes.
    pub(crate) fn execute(
        &self,
        py: Python<'py>,
        want_out: bool,
        want_lse: bool,
        want_weights: bool,
    ) -> PyResult<Outputs<'py>> {
        let plan = &self.plan;
        let (qd, kd, vd) = (self.q.data()?, self.k.data()?, self.v.data()?);
        let mask_buf = match (self.mask.as_ref(), &plan.mask) {
            (Some(m), Some(l)) => Some(MaskBuf::new(m.data()?, l.clone())),
            _ => None,
        };
        let mut out = if want_out {
            Some(Output::zeros(&self.q, &plan.out.shape, self.q.elem)?)
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
            Some(Output::zeros(&self.q, &plan.lse_shape, Elem::F32)?)
        } else {
            None
        };
        let mut weights = if want_weights {
            Some(Output::zeros(&self.q, &plan.weights_shape, Elem::F32)?)
        } else {
            None
        };
        let threads = threads_for(py, &self.q)?;
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
                &self.scores,
                threads.parallelism(),
            )?;
            py.detach(|| threads.run(|| job.run())).map_err(attn_err)?;
        }
        Ok(Outputs { out, lse, weights })
    }

    /// Runs the backward: from the forward's output `out` and LSE `lse` (as the forward
    /// returned them) and the output's gradient `grad_out` (the output's shape, any
    /// strides and float dtype), the float32 gradients `(dq, dk, dv)`, shaped as
    /// [`Plan::grads`]. Releases the GIL while computing.
    pub(crate) fn gradients(
        &self,
        py: Python<'py>,
        out: &Bound<'py, PyAny>,
        lse: &Bound<'py, PyAny>,
        grad_out: &Bound<'py, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let plan = &self.plan;
        let o = View::new(out, "out")?;
        let g = View::new(grad_out, "grad_out")?;
        let l = View::new(lse, "lse")?;
        for (name, t) in [("out", &o), ("grad_out", &g)] {
            if t.elem == Elem::Bool {
                return Err(PyTypeError::new_err(format!(
                    "{name}: dtype bool is not supported ({})",
                    view::supported("", "")
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
