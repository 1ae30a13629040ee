//! The operands of the library calls: masks made ready for the library ([`MaskBuf`]),
//! strided inputs sliced per call ([`Operand`]), and the score options of a call
//! ([`Scores`]).

use super::plan::{value_err, Layout};
use crate::view::{span, Data};
use attention::{AttnError, AttnPath, DynTensor, Mask, TensorRef};
use pyo3::exceptions::PyTypeError;
use pyo3::PyResult;

/// Copies the elements a layout addresses into a compact buffer (dimensions of stride 0
/// stay broadcast), converting each with `f`; returns the buffer and its layout.
fn compact<T: Copy, U>(src: &[T], l: &Layout, f: impl Fn(T) -> U) -> (Vec<U>, Layout) {
    let eff: Vec<usize> = l
        .shape
        .iter()
        .zip(&l.strides)
        .map(|(&d, &s)| if s == 0 { 1 } else { d })
        .collect();
    let dense = Layout::contiguous(&eff);
    let n: usize = eff.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; eff.len()];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&l.strides).map(|(i, s)| i * s).sum();
        out.push(f(src[off]));
        for d in (0..eff.len()).rev() {
            idx[d] += 1;
            if idx[d] < eff[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let strides = dense
        .strides
        .iter()
        .zip(&eff)
        .map(|(&s, &d)| if d == 1 { 0 } else { s })
        .collect();
    (
        out,
        Layout {
            shape: l.shape.clone(),
            strides,
        },
    )
}

/// A mask ready for the library: borrowed in place, or converted.
pub(crate) enum MaskBuf<'a> {
    Bool(&'a [bool], Layout),
    F32(&'a [f32], Layout),
    OwnedBool(Vec<bool>, Layout),
    OwnedF32(Vec<f32>, Layout),
}

impl<'a> MaskBuf<'a> {
    /// Prepares `data` laid out as `l` (bool: as is, or each byte `!= 0`; f32: as is;
    /// f16/bf16: widened to f32).
    pub(crate) fn new(data: Data<'a>, l: Layout) -> MaskBuf<'a> {
        if let Data::F32(s) = data {
            return MaskBuf::F32(s, l);
        }
        kernels::match_dtype!(data,
            // Every other float type is widened to f32 (f32 returned above).
            Data(s) => {
                let (v, l) = compact(s, &l, kernels::Element::to_f32);
                MaskBuf::OwnedF32(v, l)
            },
            Data::Bool(s) => MaskBuf::Bool(s, l),
            Data::Bytes(s) => {
                let (v, l) = compact(s, &l, |b| b != 0);
                MaskBuf::OwnedBool(v, l)
            }
        )
    }

    pub(super) fn operand(&self) -> Operand<'_> {
        match self {
            MaskBuf::Bool(s, l) => Operand::new(Data::Bool(s), l),
            MaskBuf::F32(s, l) => Operand::new(Data::F32(s), l),
            MaskBuf::OwnedBool(v, l) => Operand::new(Data::Bool(v), l),
            MaskBuf::OwnedF32(v, l) => Operand::new(Data::F32(v), l),
        }
    }
}

/// An input of the library calls.
pub(super) struct Operand<'a> {
    pub(super) data: Data<'a>,
    pub(super) outer: Vec<usize>,
    pub(super) dims: [usize; 4],
    pub(super) strides: [usize; 4],
}

/// `s[off..]`, empty when `off` is past the end (an empty view; the library then checks
/// the extent and refuses anything else).
fn tail<T>(s: &[T], off: usize) -> &[T] {
    s.get(off..).unwrap_or(&[])
}

pub(super) fn offset(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

impl<'a> Operand<'a> {
    pub(super) fn new(data: Data<'a>, l: &Layout) -> Operand<'a> {
        let (outer, dims, strides) = l.split();
        Operand {
            data,
            outer,
            dims,
            strides,
        }
    }

    pub(super) fn tensor(&self, idx: &[usize]) -> Result<DynTensor<'a>, AttnError> {
        let off = offset(idx, &self.outer);
        let (d, s) = (self.dims, self.strides);
        Ok(kernels::match_dtype!(self.data,
            Data(x) => TensorRef::new(tail(x, off), d, s)?.into(),
            Data::Bool(_) | Data::Bytes(_) => {
                return Err(AttnError::Option {
                    what: "query, key and value must be float tensors, not bool".into(),
                })
            }
        ))
    }

    pub(super) fn mask(&self, idx: &[usize]) -> Result<Mask<'a>, AttnError> {
        let off = offset(idx, &self.outer);
        let (d, s) = (self.dims, self.strides);
        if let Data::Bool(x) = self.data {
            return Ok(Mask::Bool(TensorRef::new(tail(x, off), d, s)?));
        }
        if let Data::F32(x) = self.data {
            return Ok(Mask::Additive(TensorRef::new(tail(x, off), d, s)?));
        }
        Err(AttnError::Option {
            what: "a mask is bool or float32 once prepared".into(),
        })
    }
}

/// Scale, soft-cap, ALiBi and sinks of a call, and the path and kernel variant that run it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scores {
    pub(crate) scale: Option<f32>,
    pub(crate) softcap: Option<f32>,
    pub(crate) alibi: Option<Alibi>,
    pub(crate) path: AttnPath,
    pub(crate) isa: Option<kernels::Isa>,
    /// Attention sinks, one logit per query head.
    pub(crate) sinks: Option<Vec<f32>>,
}

/// ALiBi slopes of the library calls.
#[derive(Debug, Clone)]
pub(crate) enum Alibi {
    /// One row of Hq slopes for every call.
    Shared(Vec<f32>),
    /// One row of Hq slopes per outer index, concatenated (checked before any call).
    PerCall(Vec<f32>),
}

/// Checks that Q, K and V are float data.
fn float_input(name: &str, d: &Data<'_>) -> PyResult<()> {
    if matches!(d, Data::Bool(_) | Data::Bytes(_)) {
        return Err(PyTypeError::new_err(format!(
            "{name}: dtype bool is not supported ({})",
            crate::view::supported("", "")
        )));
    }
    Ok(())
}

/// The elements `d` holds.
fn data_len(d: &Data<'_>) -> usize {
    kernels::match_dtype!(d, Data(x) => x.len(), Data::Bool(x) => x.len(), Data::Bytes(x) => x.len())
}

/// Checks that `d` is float data reaching every element of `l`.
pub(super) fn check_operand(name: &str, d: &Data<'_>, l: &Layout) -> PyResult<()> {
    float_input(name, d)?;
    let need = span(&l.shape, &l.strides)?;
    let have = data_len(d);
    if need > have {
        return Err(value_err(format!(
            "{name}: the layout needs {need} elements, the tensor has {have}"
        )));
    }
    Ok(())
}

/// Steps an outer index to the next one (row-major).
pub(super) fn advance(idx: &mut [usize], outer: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < outer[d] {
            break;
        }
        idx[d] = 0;
    }
}
