//! The library calls of a plan: the forward ([`Job`]) and the backward ([`GradJob`]),
//! one call per outer index.

use super::operand::{advance, check_operand, offset, Alibi, MaskBuf, Operand, Scores};
use super::plan::{value_err, KvLengths, Layout, Plan};
use crate::view::{Data, DataMut};
use attention::{
    sdpa_backward_into_dyn, sdpa_into_dyn, AttnError, DynTensorMut, SdpaGrads, SdpaOptions,
    SdpaOutputs, TensorMut,
};
use kernels::Parallelism;
use pyo3::PyResult;

/// What every library call of a plan reads, and the options it runs with; shared by the
/// forward ([`Job`]) and the backward ([`GradJob`]).
struct Calls<'a> {
    plan: &'a Plan,
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    mask: Option<Operand<'a>>,
    scores: &'a Scores,
    par: Parallelism,
    /// The key count of each batch entry of a call, for [`KvLengths::All`].
    all_lens: Vec<usize>,
}

impl<'a> Calls<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<Calls<'a>> {
        for (name, d, l) in [
            ("query", &q, &plan.q),
            ("key", &k, &plan.k),
            ("value", &v, &plan.v),
        ] {
            check_operand(name, d, l)?;
        }
        let count: usize = plan.outer.iter().product();
        let b = plan.q.shape[plan.q.shape.len() - 4];
        let hq = plan.q.shape[plan.q.shape.len() - 3];
        if let Some(KvLengths::Each(l)) = &plan.masking.kv_lengths {
            if l.len() != count * b {
                return Err(value_err(format!(
                    "kv_lengths has {} values, the batch is {}",
                    l.len(),
                    count * b
                )));
            }
        }
        let all_lens = match &plan.masking.kv_lengths {
            Some(KvLengths::All(n)) => vec![*n; b],
            _ => Vec::new(),
        };
        if let Some(Alibi::PerCall(a)) = &scores.alibi {
            if a.len() != count * hq {
                return Err(value_err(format!(
                    "alibi_slopes has {} values, expected {count} × {hq}",
                    a.len()
                )));
            }
        }
        Ok(Calls {
            plan,
            q: Operand::new(q, &plan.q),
            k: Operand::new(k, &plan.k),
            v: Operand::new(v, &plan.v),
            mask: mask.map(MaskBuf::operand),
            scores,
            par,
            all_lens,
        })
    }

    /// The number of library calls (one per outer index).
    fn count(&self) -> usize {
        self.plan.outer.iter().product()
    }

    /// The options of call number `call`, at outer index `idx`.
    fn options(&self, call: usize, idx: &[usize]) -> Result<SdpaOptions<'_>, AttnError> {
        let plan = self.plan;
        let b = self.q.dims[0];
        let hq = self.q.dims[1];
        let mut opts = SdpaOptions::new()
            .with_scale(self.scores.scale)
            .with_causal(plan.masking.causal)
            .with_window(plan.masking.window_left, plan.masking.window_right)
            .with_softcap(self.scores.softcap)
            .with_path(self.scores.path)
            .with_isa(self.scores.isa)
            .with_sinks(self.scores.sinks.as_deref())
            .with_parallelism(self.par);
        match &plan.masking.kv_lengths {
            None => {}
            Some(KvLengths::All(_)) => opts = opts.with_kv_lengths(Some(&self.all_lens)),
            Some(KvLengths::Each(l)) => {
                opts = opts.with_kv_lengths(l.get(call * b..(call + 1) * b));
            }
        }
        match &self.scores.alibi {
            None => {}
            Some(Alibi::Shared(a)) => opts = opts.with_alibi_slopes(Some(a)),
            Some(Alibi::PerCall(a)) => {
                opts = opts.with_alibi_slopes(a.get(call * hq..(call + 1) * hq));
            }
        }
        if let Some(m) = &self.mask {
            opts = opts.with_mask(m.mask(idx)?);
        }
        Ok(opts)
    }
}

/// The forward calls of a plan, with the memory they read and write.
pub(crate) struct Job<'a> {
    calls: Calls<'a>,
    out: DataMut<'a>,
    lse: Option<&'a mut [f32]>,
    weights: Option<&'a mut [f32]>,
}

impl<'a> Job<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        out: DataMut<'a>,
        lse: Option<&'a mut [f32]>,
        weights: Option<&'a mut [f32]>,
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<Job<'a>> {
        Ok(Job {
            calls: Calls::new(plan, q, k, v, mask, scores, par)?,
            out,
            lse,
            weights,
        })
    }

    /// Runs every library call (one per outer index), in order.
    pub(crate) fn run(&mut self) -> Result<(), AttnError> {
        let c = &self.calls;
        let plan = c.plan;
        let (out_outer, out_dims, out_strides) = plan.out.contiguous().split();
        let [b, h, lq, _] = out_dims;
        let lk = plan.k.shape[plan.k.shape.len() - 2];
        let per_lse = b * h * lq;
        let per_w = per_lse * lk;
        let mut idx = vec![0usize; plan.outer.len()];
        for call in 0..c.count() {
            let opts = c.options(call, &idx)?;
            let off = offset(&idx, &out_outer);
            let out: DynTensorMut<'_> = kernels::match_dtype!(&mut self.out,
                DataMut(x) => TensorMut::new(tail_mut(x, off), out_dims, out_strides)?.into());
            let mut extras = SdpaOutputs::default();
            if let Some(l) = self.lse.as_deref_mut() {
                extras = extras.with_lse(Some(&mut l[call * per_lse..(call + 1) * per_lse]));
            }
            if let Some(w) = self.weights.as_deref_mut() {
                let w = &mut w[call * per_w..(call + 1) * per_w];
                extras = extras.with_weights(Some(TensorMut::contiguous(w, [b, h, lq, lk])?));
            }
            sdpa_into_dyn(
                c.q.tensor(&idx)?,
                c.k.tensor(&idx)?,
                c.v.tensor(&idx)?,
                out,
                &opts,
                extras,
            )?;
            advance(&mut idx, &plan.outer);
        }
        Ok(())
    }
}

/// The backward calls of a plan: the forward's inputs, its output `o` and LSE, the output's
/// gradient `d_o`, and the float32 gradient buffers (contiguous, shaped as
/// [`Plan::grads`]).
pub(crate) struct GradJob<'a> {
    calls: Calls<'a>,
    o: Operand<'a>,
    d_o: Operand<'a>,
    lse: &'a [f32],
    grads: [&'a mut [f32]; 3],
}

impl<'a> GradJob<'a> {
    /// `o` and `d_o` with their layouts over the plan (from [`Plan::out`]); `lse` laid out
    /// as the forward wrote it (contiguous `[outer…, B, H, Lq]`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &'a Plan,
        q: Data<'a>,
        k: Data<'a>,
        v: Data<'a>,
        mask: Option<&'a MaskBuf<'a>>,
        o: (Data<'a>, Layout),
        d_o: (Data<'a>, Layout),
        lse: &'a [f32],
        grads: [&'a mut [f32]; 3],
        scores: &'a Scores,
        par: Parallelism,
    ) -> PyResult<GradJob<'a>> {
        let calls = Calls::new(plan, q, k, v, mask, scores, par)?;
        check_operand("out", &o.0, &o.1)?;
        check_operand("grad_out", &d_o.0, &d_o.1)?;
        let rows: usize = plan.lse_shape.iter().product();
        if lse.len() != rows {
            return Err(value_err(format!(
                "lse has {} values, expected {rows}",
                lse.len()
            )));
        }
        for ((name, g), p) in ["dq", "dk", "dv"].iter().zip(&grads).zip(&plan.grads) {
            let want: usize = p.shape.iter().product();
            if g.len() != want {
                return Err(value_err(format!(
                    "{name}: {} elements, expected {want}",
                    g.len()
                )));
            }
        }
        Ok(GradJob {
            calls,
            o: Operand::new(o.0, &o.1),
            d_o: Operand::new(d_o.0, &d_o.1),
            lse,
            grads,
        })
    }

    /// Runs the backward of every library call, in order.
    pub(crate) fn run(&mut self) -> Result<(), AttnError> {
        let c = &self.calls;
        let plan = c.plan;
        let [b, h, lq, _] = c.q.dims;
        let per_lse = b * h * lq;
        let layouts = plan.grads.each_ref().map(|p| p.contiguous().split());
        let mut idx = vec![0usize; plan.outer.len()];
        for call in 0..c.count() {
            let opts = c.options(call, &idx)?;
            let [dq, dk, dv] = &mut self.grads;
            let grads = SdpaGrads::new(
                grad_view(dq, &layouts[0], &idx)?,
                grad_view(dk, &layouts[1], &idx)?,
                grad_view(dv, &layouts[2], &idx)?,
            );
            sdpa_backward_into_dyn(
                c.q.tensor(&idx)?,
                c.k.tensor(&idx)?,
                c.v.tensor(&idx)?,
                self.o.tensor(&idx)?,
                self.d_o.tensor(&idx)?,
                &self.lse[call * per_lse..(call + 1) * per_lse],
                grads,
                &opts,
            )?;
            advance(&mut idx, &plan.outer);
        }
        Ok(())
    }
}

/// The view of one call's part of a gradient buffer, laid out as `l` (outer strides, dims,
/// strides).
fn grad_view<'b>(
    buf: &'b mut [f32],
    l: &(Vec<usize>, [usize; 4], [usize; 4]),
    idx: &[usize],
) -> Result<TensorMut<'b>, AttnError> {
    TensorMut::new(tail_mut(buf, offset(idx, &l.0)), l.1, l.2)
}

fn tail_mut<T>(s: &mut [T], off: usize) -> &mut [T] {
    let n = s.len();
    &mut s[off.min(n)..]
}
