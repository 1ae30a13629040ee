//! Serving attention: the variable-length forward ([`varlen_forward`], packed or paged K/V
//! through [`attention::sdpa_varlen_into_dyn`]) and paged KV cache writes
//! ([`paged_kv_write`], [`attention::paged_kv_write`]), behind
//! `fastattn.flash_attn_varlen_func`, `fastattn.flash_attn_with_kvcache` and
//! `fastattn.paged_kv_write`.
//!
//! Index arrays (`cu_seqlens`, `seqused_k`, `block_table`, `slot_mapping`) arrive as
//! contiguous int32 or int64 numpy arrays (the Python layer makes them so, without a copy
//! for CPU torch tensors) and are read in place.

use crate::call::{Call, Returns, Rules, Slopes};
use crate::quant::{self, Codes, Fmt, ScaleArg, WriteScales};
use crate::run::{attn_err, threads_for};
use crate::view::{Data, DataMut, Elem, Output, View};
use attention::quant::KvRef;
use attention::{
    AttnError, DynTensor, DynTensorMut, Element, SdpaGrads, SdpaOptions, SeqIdx, TensorMut,
    TensorRef, VarlenSeqs,
};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

/// A 1-D index array, read in place.
enum Idx<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

impl<'py> Idx<'py> {
    fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Idx<'py>> {
        if let Ok(a) = obj.cast::<PyArray1<i32>>() {
            return Ok(Idx::I32(a.try_readonly()?));
        }
        if let Ok(a) = obj.cast::<PyArray1<i64>>() {
            return Ok(Idx::I64(a.try_readonly()?));
        }
        Err(PyTypeError::new_err(format!(
            "{what} must be a 1-D int32 or int64 array"
        )))
    }

    fn seq(&self, what: &str) -> PyResult<SeqIdx<'_>> {
        let bad = || PyValueError::new_err(format!("{what} must be contiguous"));
        Ok(match self {
            Idx::I32(a) => SeqIdx::I32(a.as_slice().map_err(|_| bad())?),
            Idx::I64(a) => SeqIdx::I64(a.as_slice().map_err(|_| bad())?),
        })
    }

    fn to_i64(&self, what: &str) -> PyResult<Vec<i64>> {
        Ok(match self.seq(what)? {
            SeqIdx::I32(s) => s.iter().map(|&x| i64::from(x)).collect(),
            SeqIdx::I64(s) => s.to_vec(),
        })
    }
}

/// A block table `[B, max_blocks]`: int32 read in place, int64 narrowed to int32.
enum Table<'py> {
    I32(PyReadonlyArray2<'py, i32>),
    Narrowed(Vec<i32>, usize),
}

impl<'py> Table<'py> {
    fn new(obj: &Bound<'py, PyAny>) -> PyResult<Table<'py>> {
        if let Ok(a) = obj.cast::<PyArray2<i32>>() {
            return Ok(Table::I32(a.try_readonly()?));
        }
        if let Ok(a) = obj.cast::<PyArray2<i64>>() {
            let a = a.try_readonly()?;
            let cols = a.shape()[1];
            let v = a
                .as_slice()
                .map_err(|_| PyValueError::new_err("block_table must be contiguous"))?
                .iter()
                .map(|&x| i32::try_from(x).unwrap_or(i32::MIN))
                .collect();
            return Ok(Table::Narrowed(v, cols));
        }
        Err(PyTypeError::new_err(
            "block_table must be a 2-D int32 or int64 array",
        ))
    }

    /// The entries, row-major, and the row length.
    fn table(&self) -> PyResult<(&[i32], usize)> {
        Ok(match self {
            Table::I32(a) => (
                a.as_slice()
                    .map_err(|_| PyValueError::new_err("block_table must be contiguous"))?,
                a.shape()[1],
            ),
            Table::Narrowed(v, cols) => (v, *cols),
        })
    }
}

/// A read-only 4-D tensor over `data`.
fn tensor<'a>(
    data: Data<'a>,
    what: &str,
    dims: [usize; 4],
    strides: [usize; 4],
) -> PyResult<DynTensor<'a>> {
    let t: Result<DynTensor<'a>, AttnError> = kernels::match_dtype!(data,
        Data(x) => TensorRef::new(x, dims, strides).map(Into::into),
        Data::Bool(_) | Data::Bytes(_) => {
            return Err(PyTypeError::new_err(format!(
                "{what}: dtype bool is not supported ({})",
                crate::view::supported("", "")
            )))
        }
    );
    t.map_err(attn_err)
}

/// `[T, H, D]` as the library's `[1, H, T, D]` view.
fn packed(v: &View<'_>, what: &str) -> PyResult<([usize; 4], [usize; 4])> {
    packed_of(&v.shape, &v.strides, what)
}

/// [`packed`] of a shape and its element strides.
fn packed_of(s: &[usize], st: &[usize], what: &str) -> PyResult<([usize; 4], [usize; 4])> {
    if s.len() != 3 {
        return Err(PyValueError::new_err(format!(
            "{what} must be 3-D [total_tokens, heads, headdim], got shape {s:?}"
        )));
    }
    Ok(([1, s[1], s[0], s[2]], [0, st[1], st[0], st[2]]))
}

/// A paged cache `[num_blocks, block_size, H, D]` as is.
fn paged(v: &View<'_>, what: &str) -> PyResult<([usize; 4], [usize; 4])> {
    paged_of(&v.shape, &v.strides, what)
}

/// [`paged`] of a shape and its element strides.
fn paged_of(s: &[usize], st: &[usize], what: &str) -> PyResult<([usize; 4], [usize; 4])> {
    if s.len() != 4 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a 4-D paged cache [num_blocks, block_size, heads, headdim], got shape {s:?}"
        )));
    }
    Ok(([s[0], s[1], s[2], s[3]], [st[0], st[1], st[2], st[3]]))
}

/// The ALiBi row of a variable-length `call`, after checking that it is one: a
/// `Call.flash(...)` without `kv_lengths`, with at most one `(Hq,)` row of slopes.
fn varlen_alibi(call: &Call) -> PyResult<Option<&[f32]>> {
    let Rules::Flash {
        alibi, kv_lengths, ..
    } = &call.rules
    else {
        return Err(PyValueError::new_err(
            "the variable-length calls take a Call.flash(...)",
        ));
    };
    if kv_lengths.is_some() {
        return Err(PyValueError::new_err(
            "kv_lengths: pass seqused_k to a variable-length call",
        ));
    }
    match alibi {
        None => Ok(None),
        Some(Slopes::Shared(row)) => Ok(Some(row.as_slice())),
        Some(Slopes::Rows(_)) => Err(PyValueError::new_err(
            "alibi_slopes: a variable-length call takes one (Hq,) row for every sequence",
        )),
    }
}

/// The library options of a variable-length `call` (checked by [`varlen_alibi`]).
fn varlen_options<'c>(
    call: &'c Call,
    alibi: Option<&'c [f32]>,
    par: kernels::Parallelism,
) -> SdpaOptions<'c> {
    let (window_left, window_right) = match &call.rules {
        Rules::Flash {
            window_left,
            window_right,
            ..
        } => (*window_left, *window_right),
        _ => (None, None),
    };
    SdpaOptions::new()
        .with_scale(call.scale)
        .with_causal(call.causal)
        .with_window(window_left, window_right)
        .with_softcap(call.softcap)
        .with_alibi_slopes(alibi)
        .with_sinks(call.sinks.as_deref())
        .with_path(call.path)
        .with_isa(call.isa)
        .with_parallelism(par)
}

/// The gradients of the variable-length forward of `call` on packed K/V (the library's
/// `sdpa_varlen_backward_into_dyn`): `out` `[Tq, Hq, Dv]` and `lse` `[Hq, Tq]` float32
/// from the forward, `grad_out` like `out`. Returns `(dq, dk, dv, dsinks)` as float32 in
/// q's kind, `dsinks` `(Hq,)` when the call has sinks, else `None`.
#[pyfunction]
#[pyo3(signature = (call, q, k, v, out, lse, grad_out, cu_seqlens_q, cu_seqlens_k))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn varlen_backward<'py>(
    py: Python<'py>,
    call: &Bound<'py, Call>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    grad_out: &Bound<'py, PyAny>,
    cu_seqlens_q: &Bound<'py, PyAny>,
    cu_seqlens_k: &Bound<'py, PyAny>,
) -> PyResult<Py<PyAny>> {
    let call = call.get();
    let alibi = varlen_alibi(call)?;
    let (qv, kv, vv) = (View::new(q, "q")?, View::new(k, "k")?, View::new(v, "v")?);
    let (ov, gv, lv) = (
        View::new(out, "out")?,
        View::new(grad_out, "grad_out")?,
        View::new(lse, "lse")?,
    );
    let (qd, qs) = packed(&qv, "q")?;
    let (kd, ks) = packed(&kv, "k")?;
    let (vd, vs) = packed(&vv, "v")?;
    let (od, os) = packed(&ov, "out")?;
    let (gd, gs) = packed(&gv, "grad_out")?;
    let ([_, hq, tq, d], [_, hkv, tk, dv]) = (qd, vd);
    if lv.elem != Elem::F32 || lv.shape != [hq, tq] || lv.strides != [tq, 1] {
        return Err(PyValueError::new_err(format!(
            "lse must be the forward's contiguous float32 [{hq}, {tq}], got {} {:?}",
            lv.elem.name(),
            lv.shape
        )));
    }
    let Data::F32(lse_data) = lv.data()? else {
        return Err(PyTypeError::new_err("lse must be float32"));
    };
    let cu_q = Idx::new(cu_seqlens_q, "cu_seqlens_q")?;
    let cu_k = Idx::new(cu_seqlens_k, "cu_seqlens_k")?;
    let seqs =
        VarlenSeqs::new(cu_q.seq("cu_seqlens_q")?).with_cu_seqlens_k(cu_k.seq("cu_seqlens_k")?);
    let zeros = |shape: &[usize]| Output::zeros(&qv, shape, Elem::F32);
    let (mut dq, mut dk, mut dvo) = (
        zeros(&[tq, hq, d])?,
        zeros(&[tk, hkv, d])?,
        zeros(&[tk, hkv, dv])?,
    );
    let mut ds = match call.sinks {
        Some(_) => Some(zeros(&[hq])?),
        None => None,
    };
    let threads = threads_for(py, &qv)?;
    let opts = varlen_options(call, alibi, threads.parallelism());
    let (qt, kt, vt) = (
        tensor(qv.data()?, "q", qd, qs)?,
        tensor(kv.data()?, "k", kd, ks)?,
        tensor(vv.data()?, "v", vd, vs)?,
    );
    let (ot, gt) = (
        tensor(ov.data()?, "out", od, os)?,
        tensor(gv.data()?, "grad_out", gd, gs)?,
    );
    {
        let mut grads = SdpaGrads::new(
            packed_mut(dq.f32_data()?, hq, tq, d)?,
            packed_mut(dk.f32_data()?, hkv, tk, d)?,
            packed_mut(dvo.f32_data()?, hkv, tk, dv)?,
        );
        if let Some(s) = ds.as_mut() {
            grads = grads.with_dsinks(Some(s.f32_data()?));
        }
        py.detach(|| {
            threads.run(|| {
                attention::sdpa_varlen_backward_into_dyn(
                    qt, kt, vt, ot, gt, lse_data, grads, &seqs, &opts,
                )
            })
        })
        .map_err(attn_err)?;
    }
    let ds = ds.map(Output::into_obj);
    (dq.into_obj(), dk.into_obj(), dvo.into_obj(), ds).into_py_any(py)
}

/// The `[1, h, t, w]` view of a packed `[t, h, w]` f32 gradient.
fn packed_mut(x: &mut [f32], h: usize, t: usize, w: usize) -> PyResult<TensorMut<'_>> {
    TensorMut::new(x, [1, h, t, w], [0, w, h * w, 1]).map_err(attn_err)
}

/// The variable-length forward of `call` (FlashAttention-2 rules): `q` `[Tq, Hq, D]`;
/// `k`, `v` packed `[Tk, Hkv, D]` (with `cu_seqlens_k`) or, with `block_table`, paged
/// caches `[num_blocks, block_size, Hkv, D]`. Returns the output `[Tq, Hq, Dv]` (the
/// query's kind and dtype), or `(out, lse)` with the LSE `[Hq, Tq]` float32.
#[pyfunction]
#[pyo3(signature = (call, q, k, v, cu_seqlens_q, cu_seqlens_k=None, seqused_k=None, block_table=None, kv_format=None, k_scale=None, v_scale=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn varlen_forward<'py>(
    py: Python<'py>,
    call: &Bound<'py, Call>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    cu_seqlens_q: &Bound<'py, PyAny>,
    cu_seqlens_k: Option<&Bound<'py, PyAny>>,
    seqused_k: Option<&Bound<'py, PyAny>>,
    block_table: Option<&Bound<'py, PyAny>>,
    kv_format: Option<&str>,
    k_scale: Option<ScaleArg<'py>>,
    v_scale: Option<ScaleArg<'py>>,
) -> PyResult<Py<PyAny>> {
    let call = call.get();
    let alibi = varlen_alibi(call)?;
    let want_lse = match call.returns {
        Returns::Out => false,
        Returns::OutLse => true,
        Returns::WeightsLse => {
            return Err(PyValueError::new_err(
                "a variable-length call returns no attention weights",
            ))
        }
    };
    let fmt = kv_format.map(Fmt::parse).transpose()?;
    let qv = View::new(q, "q")?;
    let (qd, qs) = packed(&qv, "q")?;
    let [_, hq, tq, _] = qd;
    let side = |x: &Bound<'py, PyAny>, what: &str| -> PyResult<KvSide<'py>> {
        Ok(match fmt {
            None => KvSide::Float(View::new(x, what)?),
            Some(_) => KvSide::Codes(Codes::read(x, what)?),
        })
    };
    let (kv, vv) = (side(k, "k")?, side(v, "v")?);
    let lay = |x: &KvSide<'_>, what: &str| {
        let (sh, st) = x.layout();
        if block_table.is_some() {
            paged_of(sh, st, &format!("{what}_cache"))
        } else {
            packed_of(sh, st, what)
        }
    };
    let ((kd, ks), (vd, vs)) = (lay(&kv, "k")?, lay(&vv, "v")?);
    if fmt.is_none() && (k_scale.is_some() || v_scale.is_some()) {
        return Err(PyValueError::new_err(
            "k_scale/v_scale are for 8-bit caches; these are float",
        ));
    }
    let dv = vd[3];
    let cu_q = Idx::new(cu_seqlens_q, "cu_seqlens_q")?;
    let cu_k = cu_seqlens_k
        .map(|x| Idx::new(x, "cu_seqlens_k"))
        .transpose()?;
    let used = seqused_k.map(|x| Idx::new(x, "seqused_k")).transpose()?;
    let table = block_table.map(Table::new).transpose()?;
    let mut seqs = VarlenSeqs::new(cu_q.seq("cu_seqlens_q")?);
    if let Some(c) = &cu_k {
        seqs = seqs.with_cu_seqlens_k(c.seq("cu_seqlens_k")?);
    }
    if let Some(u) = &used {
        seqs = seqs.with_seqused_k(u.seq("seqused_k")?);
    }
    if let Some(t) = &table {
        let (entries, cols) = t.table()?;
        seqs = seqs.with_block_table(entries, cols);
    }
    let mut out = Output::zeros(&qv, &[tq, hq, dv], qv.elem)?;
    let mut lse = if want_lse {
        Some(Output::zeros(&qv, &[hq, tq], Elem::F32)?)
    } else {
        None
    };
    let threads = threads_for(py, &qv)?;
    let qt = tensor(qv.data()?, "q", qd, qs)?;
    let kt = kv.kv_ref(fmt, kd, ks, k_scale.as_ref(), "k")?;
    let vt = vv.kv_ref(fmt, vd, vs, v_scale.as_ref(), "v")?;
    let opts = varlen_options(call, alibi, threads.parallelism());
    {
        let out_dims = [1, hq, tq, dv];
        let out_strides = [0, dv, hq * dv, 1];
        let ot: DynTensorMut<'_> = kernels::match_dtype!(out.data(),
            DataMut(x) => TensorMut::new(x, out_dims, out_strides).map_err(attn_err)?.into());
        let lse_data = lse.as_mut().map(Output::f32_data).transpose()?;
        py.detach(|| {
            threads.run(|| attention::sdpa_varlen_kv_into(qt, kt, vt, ot, &seqs, &opts, lse_data))
        })
        .map_err(attn_err)?;
    }
    match lse {
        None => Ok(out.into_obj().unbind()),
        Some(l) => (out.into_obj(), l.into_obj()).into_py_any(py),
    }
}

/// K or V of a variable-length call: float, or 8-bit codes.
enum KvSide<'py> {
    Float(View<'py>),
    Codes(Codes<PyReadonlyArrayDyn<'py, u8>>),
}

impl KvSide<'_> {
    fn layout(&self) -> (&[usize], &[usize]) {
        match self {
            KvSide::Float(v) => (&v.shape, &v.strides),
            KvSide::Codes(c) => (&c.shape, &c.strides),
        }
    }

    fn kv_ref<'a>(
        &'a self,
        fmt: Option<Fmt>,
        dims: [usize; 4],
        strides: [usize; 4],
        scale: Option<&'a ScaleArg<'_>>,
        what: &str,
    ) -> PyResult<KvRef<'a>> {
        match (self, fmt) {
            (KvSide::Float(v), _) => Ok(tensor(v.data()?, what, dims, strides)?.into()),
            (KvSide::Codes(c), Some(f)) => {
                let s = scale.ok_or_else(|| {
                    PyValueError::new_err(format!("{what}: an 8-bit cache needs {what}_scale"))
                })?;
                quant::kv_ref(f, c, dims, strides, s, what)
            }
            (KvSide::Codes(_), None) => Err(PyTypeError::new_err("8-bit codes without a format")),
        }
    }
}

/// Whether two byte ranges share a byte.
fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

/// Writes new rows `k` `[T, Hkv, D]` and `v` `[T, Hkv, Dv]` into the paged caches
/// `k_cache`, `v_cache` `[num_blocks, block_size, Hkv, D]` in place, at the slots of
/// `slot_mapping` (-1: skipped). Every check happens before anything is written.
///
/// With `kv_format` (`"int8"`, `"float8_e4m3fn"`, `"float8_e5m2"`) the caches are uint8
/// numpy arrays over 8-bit codes and `k_scale`, `v_scale` 1-D float32 numpy arrays: int8
/// (and fp8 with `per_row_scales`), one per slot and head (`[num_blocks·block_size·Hkv]`,
/// written with each row's scale); fp8 otherwise, 1 or Hkv given scales.
#[pyfunction]
#[pyo3(signature = (k, v, k_cache, v_cache, slot_mapping, kv_format=None, k_scale=None, v_scale=None, per_row_scales=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_kv_write<'py>(
    py: Python<'py>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    slot_mapping: &Bound<'py, PyAny>,
    kv_format: Option<&str>,
    k_scale: Option<&Bound<'py, PyAny>>,
    v_scale: Option<&Bound<'py, PyAny>>,
    per_row_scales: bool,
) -> PyResult<()> {
    if let Some(f) = kv_format {
        let fmt = Fmt::parse(f)?;
        return paged_kv_write_8bit(
            fmt,
            fmt == Fmt::I8 || per_row_scales,
            k,
            v,
            k_cache,
            v_cache,
            slot_mapping,
            k_scale,
            v_scale,
        );
    }
    if per_row_scales {
        return Err(PyValueError::new_err(
            "per_row_scales is for 8-bit caches; these are float",
        ));
    }
    if k_scale.is_some() || v_scale.is_some() {
        return Err(PyValueError::new_err(
            "k_scale/v_scale are for 8-bit caches; these are float",
        ));
    }
    let (kv, vv) = (View::new(k, "k")?, View::new(v, "v")?);
    let kc = View::target(k_cache, "k_cache")?;
    let vc = View::target(v_cache, "v_cache")?;
    let slots = Idx::new(slot_mapping, "slot_mapping")?.to_i64("slot_mapping")?;
    let (kd, ks) = packed(&kv, "k")?;
    let (vd, vs) = packed(&vv, "v")?;
    let (kcd, kcs) = paged(&kc, "k_cache")?;
    let (vcd, vcs) = paged(&vc, "v_cache")?;
    if kv.elem != vv.elem || kc.elem != vc.elem {
        return Err(PyTypeError::new_err(format!(
            "k and v must share a dtype ({} and {}), and so must the caches ({} and {})",
            kv.elem.name(),
            vv.elem.name(),
            kc.elem.name(),
            vc.elem.name()
        )));
    }
    let (kcb, vcb) = (kc.bytes()?, vc.bytes()?);
    if overlap(kcb, vcb) {
        return Err(PyValueError::new_err(
            "k_cache and v_cache overlap in memory; paged_kv_write needs two separate caches",
        ));
    }
    for (name, src) in [("k", &kv), ("v", &vv)] {
        let b = src.bytes()?;
        if overlap(b, kcb) || overlap(b, vcb) {
            return Err(PyValueError::new_err(format!(
                "{name} overlaps a cache in memory"
            )));
        }
    }
    let (kdata, vdata) = (kv.data()?, vv.data()?);
    // SAFETY: the two caches and the two sources reach disjoint bytes (checked above), so
    // these are the only slices of the caches' memory while they live.
    let (kcm, vcm) = unsafe { (kc.data_mut()?, vc.data_mut()?) };
    py.detach(|| {
        write_rows(
            kdata,
            vdata,
            kcm,
            vcm,
            [kd, ks, vd, vs, kcd, kcs, vcd, vcs],
            &slots,
        )
    })
    .map_err(attn_err)
}

/// [`paged_kv_write`] into 8-bit caches of `fmt`; `per_row`: the scales are one per slot
/// and head, computed and written (else the caller's, read).
#[allow(clippy::too_many_arguments)]
fn paged_kv_write_8bit<'py>(
    fmt: Fmt,
    per_row: bool,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    slot_mapping: &Bound<'py, PyAny>,
    k_scale: Option<&Bound<'py, PyAny>>,
    v_scale: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let (Some(k_scale), Some(v_scale)) = (k_scale, v_scale) else {
        return Err(PyValueError::new_err(
            "an 8-bit cache needs k_scale and v_scale",
        ));
    };
    let (kv, vv) = (View::new(k, "k")?, View::new(v, "v")?);
    let slots = Idx::new(slot_mapping, "slot_mapping")?.to_i64("slot_mapping")?;
    let mut kc = Codes::write(k_cache, "k_cache")?;
    let mut vc = Codes::write(v_cache, "v_cache")?;
    let mut ksc = WriteScales::new(per_row, k_scale, "k_scale")?;
    let mut vsc = WriteScales::new(per_row, v_scale, "v_scale")?;
    let (kd, ks) = packed(&kv, "k")?;
    let (vd, vs) = packed(&vv, "v")?;
    let (kcd, kcs) = paged_of(&kc.shape, &kc.strides, "k_cache")?;
    let (vcd, vcs) = paged_of(&vc.shape, &vc.strides, "v_cache")?;
    if kv.elem != vv.elem {
        return Err(PyTypeError::new_err(format!(
            "k and v must share a dtype ({} and {})",
            kv.elem.name(),
            vv.elem.name()
        )));
    }
    // Everything written (codes, and per-row scales) must be apart from everything else.
    let written = [
        ("k_cache", kc.bytes()?),
        ("v_cache", vc.bytes()?),
        ("k_scale", ksc.bytes()),
        ("v_scale", vsc.bytes()),
    ];
    let all = [
        written[0],
        written[1],
        written[2],
        written[3],
        ("k", kv.bytes()?),
        ("v", vv.bytes()?),
    ];
    for (i, (a, ra)) in all.iter().enumerate() {
        for (b, rb) in &all[i + 1..] {
            let one_written = written.iter().any(|w| w.0 == *a || w.0 == *b);
            let scales_read_only = !per_row && [*a, *b].iter().all(|x| !x.ends_with("cache"));
            if one_written && !scales_read_only && overlap(*ra, *rb) {
                return Err(PyValueError::new_err(format!(
                    "{a} and {b} overlap in memory; paged_kv_write needs them apart"
                )));
            }
        }
    }
    let (kdata, vdata) = (kv.data()?, vv.data()?);
    // SAFETY: the caches and scales written reach bytes no other operand reaches (checked
    // above).
    unsafe {
        quant::write_rows_quant(
            fmt,
            kdata,
            vdata,
            &mut kc,
            &mut ksc,
            &mut vc,
            &mut vsc,
            [kd, ks, vd, vs, kcd, kcs, vcd, vcs],
            &slots,
        )
    }
}

/// `attention::paged_kv_write` on dtype-erased memory: dims and strides of k, v, the K
/// cache and the V cache, in pairs. k and v share a type, and so do the two caches
/// (checked by the caller; any other pairing is refused here too).
fn write_rows(
    k: Data<'_>,
    v: Data<'_>,
    kc: DataMut<'_>,
    vc: DataMut<'_>,
    l: [[usize; 4]; 8],
    slots: &[i64],
) -> Result<(), AttnError> {
    fn typed<S: Element, T: Element>(
        k: &[S],
        v: &[S],
        kc: &mut [T],
        vc: &mut [T],
        l: [[usize; 4]; 8],
        slots: &[i64],
    ) -> Result<(), AttnError> {
        attention::paged_kv_write(
            TensorRef::new(k, l[0], l[1])?,
            TensorRef::new(v, l[2], l[3])?,
            TensorMut::new(kc, l[4], l[5])?,
            TensorMut::new(vc, l[6], l[7])?,
            slots,
        )
    }
    let bad = || AttnError::Option {
        what: "paged_kv_write: k and v, and the two caches, must each share a dtype".into(),
    };
    macro_rules! caches {
        ($k:expr, $v:expr) => {
            match (kc, vc) {
                (DataMut::F32(a), DataMut::F32(b)) => typed($k, $v, a, b, l, slots),
                (DataMut::F16(a), DataMut::F16(b)) => typed($k, $v, a, b, l, slots),
                (DataMut::BF16(a), DataMut::BF16(b)) => typed($k, $v, a, b, l, slots),
                _ => Err(bad()),
            }
        };
    }
    match (k, v) {
        (Data::F32(a), Data::F32(b)) => caches!(a, b),
        (Data::F16(a), Data::F16(b)) => caches!(a, b),
        (Data::BF16(a), Data::BF16(b)) => caches!(a, b),
        _ => Err(bad()),
    }
}
