//! The description of one call ([`Call`]): which shape rules, which options, which
//! outputs. The Python layer builds it with keyword arguments (`Call.torch(...)`,
//! `Call.flash(...)`); it is parsed and checked once, here, and every entry point of the
//! extension (`forward`, `backward`, `time_forward`) takes it whole.

use crate::attn::{Alibi, Scores};
use attention::AttnPath;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;

/// Which shape rules a call follows, with the options only those rules have.
#[derive(Debug, Clone)]
pub(crate) enum Rules {
    /// `torch.nn.functional.scaled_dot_product_attention`'s (top-left `is_causal`).
    Torch {
        /// `enable_gqa`: grouped query heads.
        gqa: bool,
        /// The output laid out `[B, Lq, H, Ev]` (4-D inputs only), as transformers wants.
        blhd: bool,
        /// torch's rule for the mask dtype: bool, float32 or the query's.
        strict_mask: bool,
        /// K and V may have another float dtype than Q (one dtype for both): a
        /// `FastattnCache` storing bf16 under an f32 model. Not torch's rule.
        mixed_kv: bool,
    },
    /// FlashAttention-2's `flash_attn_func` (`[B, L, H, D]`, bottom-right aligned).
    Flash {
        window_left: Option<usize>,
        window_right: Option<usize>,
        alibi: Option<Slopes>,
        kv_lengths: Option<Vec<usize>>,
    },
}

/// ALiBi slopes as given: one row for every batch entry, or one row per entry.
#[derive(Debug, Clone)]
pub(crate) enum Slopes {
    Shared(Vec<f32>),
    /// Rows that differ (checked against the batch when the call runs).
    Rows(Vec<Vec<f32>>),
}

/// What a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returns {
    /// The output.
    Out,
    /// `(out, lse)`.
    OutLse,
    /// `(weights, lse)`.
    WeightsLse,
}

impl Returns {
    fn parse(s: &str) -> PyResult<Returns> {
        match s {
            "out" => Ok(Returns::Out),
            "out_lse" => Ok(Returns::OutLse),
            "weights_lse" => Ok(Returns::WeightsLse),
            other => Err(PyValueError::new_err(format!(
                "returns must be 'out', 'out_lse' or 'weights_lse', got {other:?}"
            ))),
        }
    }
}

/// One call, described: shape rules, options, outputs (see the [module docs](self)).
#[pyclass(module = "fastattn._fastattn", frozen)]
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) rules: Rules,
    pub(crate) returns: Returns,
    /// Torch rules: top-left `is_causal`; flash rules: bottom-right `causal`.
    pub(crate) causal: bool,
    pub(crate) scale: Option<f32>,
    pub(crate) softcap: Option<f32>,
    pub(crate) path: AttnPath,
    pub(crate) isa: Option<kernels::Isa>,
    /// Attention sinks: one logit per query head (checked against the heads by the
    /// library).
    pub(crate) sinks: Option<Vec<f32>>,
}

#[pymethods]
impl Call {
    /// A call with torch's shape rules (`scaled_dot_product_attention`,
    /// `attention_weights`, the transformers entry).
    #[staticmethod]
    #[pyo3(signature = (*, returns="out", is_causal=false, scale=None, enable_gqa=false, softcap=None, blhd=false, strict_mask=true, sinks=None, mixed_kv=false))]
    #[allow(clippy::too_many_arguments)]
    fn torch(
        returns: &str,
        is_causal: bool,
        scale: Option<f64>,
        enable_gqa: bool,
        softcap: Option<f64>,
        blhd: bool,
        strict_mask: bool,
        sinks: Option<Vec<f32>>,
        mixed_kv: bool,
    ) -> PyResult<Call> {
        Ok(Call {
            rules: Rules::Torch {
                gqa: enable_gqa,
                blhd,
                strict_mask,
                mixed_kv,
            },
            returns: Returns::parse(returns)?,
            causal: is_causal,
            scale: scale.map(|s| s as f32),
            softcap: softcap.map(|c| c as f32),
            path: AttnPath::Auto,
            isa: None,
            sinks,
        })
    }

    /// A call with FlashAttention-2's shape rules (`flash_attn_func`).
    #[staticmethod]
    #[pyo3(signature = (*, returns="out", causal=false, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, kv_lengths=None, path=None, variant=None, sinks=None))]
    #[allow(clippy::too_many_arguments)]
    fn flash(
        returns: &str,
        causal: bool,
        softmax_scale: Option<f64>,
        window_size: (i64, i64),
        softcap: f64,
        alibi_slopes: Option<&Bound<'_, PyAny>>,
        kv_lengths: Option<&Bound<'_, PyAny>>,
        path: Option<&str>,
        variant: Option<&str>,
        sinks: Option<Vec<f32>>,
    ) -> PyResult<Call> {
        let window_left = window(window_size.0, "left")?;
        let window_right = window(window_size.1, "right")?;
        let alibi = alibi_slopes.map(slopes).transpose()?;
        let kv_lengths = kv_lengths.map(lengths).transpose()?;
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
        Ok(Call {
            rules: Rules::Flash {
                window_left,
                window_right,
                alibi,
                kv_lengths,
            },
            returns: Returns::parse(returns)?,
            causal,
            scale: softmax_scale.map(|s| s as f32),
            softcap: (softcap != 0.0).then_some(softcap as f32),
            path,
            isa,
            sinks,
        })
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

impl Call {
    /// The score options of the library calls; `batch`: the query's batch size (per-batch
    /// ALiBi rows must match it).
    pub(crate) fn scores(&self, batch: usize) -> PyResult<Scores> {
        let alibi = match &self.rules {
            Rules::Flash {
                alibi: Some(Slopes::Shared(row)),
                ..
            } => Some(Alibi::Shared(row.clone())),
            Rules::Flash {
                alibi: Some(Slopes::Rows(rows)),
                ..
            } => {
                if rows.len() != batch {
                    return Err(PyValueError::new_err(format!(
                        "alibi_slopes has {} rows, the batch is {batch}",
                        rows.len()
                    )));
                }
                Some(Alibi::PerCall(rows.concat()))
            }
            Rules::Flash { alibi: None, .. } | Rules::Torch { .. } => None,
        };
        Ok(Scores {
            scale: self.scale,
            softcap: self.softcap,
            alibi,
            path: self.path,
            isa: self.isa,
            sinks: self.sinks.clone(),
        })
    }
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

/// One side of `window_size`: -1 is unbounded.
fn window(x: i64, side: &str) -> PyResult<Option<usize>> {
    match x {
        -1 => Ok(None),
        x if x >= 0 => Ok(Some(x as usize)),
        x => Err(PyValueError::new_err(format!(
            "window_size: {side} must be -1 (unbounded) or >= 0, got {x}"
        ))),
    }
}

/// `alibi_slopes`: `(Hq,)`, or `(B, Hq)` (rows all equal count as one row).
fn slopes(a: &Bound<'_, PyAny>) -> PyResult<Slopes> {
    let a = as_list(a)?;
    if let Ok(row) = a.extract::<Vec<f32>>() {
        return Ok(Slopes::Shared(row));
    }
    let rows: Vec<Vec<f32>> = a.extract().map_err(|_| {
        PyTypeError::new_err("alibi_slopes must be a (Hq,) or (B, Hq) float sequence")
    })?;
    if rows.windows(2).all(|w| w[0] == w[1]) && !rows.is_empty() {
        Ok(Slopes::Shared(rows[0].clone()))
    } else {
        Ok(Slopes::Rows(rows))
    }
}

/// `kv_lengths`: non-negative key counts.
fn lengths(l: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let lens: Vec<i64> = as_list(l)?
        .extract()
        .map_err(|_| PyTypeError::new_err("kv_lengths must be a sequence of ints"))?;
    lens.into_iter()
        .map(|n| {
            usize::try_from(n)
                .map_err(|_| PyValueError::new_err(format!("kv_lengths: {n} is negative")))
        })
        .collect()
}
