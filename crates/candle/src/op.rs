//! The candle custom op behind every entry point: it reads Q, K and V in place from their
//! `CpuStorage` and `Layout` (offset and element strides become a fastattn
//! [`TensorRef`]), runs fastattn, and hands candle a new storage in the query's dtype.

use crate::options::{Mask, SdpaOptions};
use attention::{AttnError, DynTensor, DynTensorMut, Element, SdpaOutputs, TensorMut, TensorRef};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Error, Layout, Result, Shape, Storage, Tensor, WithDType,
};

/// How the op lays out its output (always contiguous, in the query's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutLayout {
    /// `[B, Hq, Lq, Dv]` (`sdpa`).
    Bhld,
    /// `[B, Lq, Hq, Dv]` (`flash_attn`).
    Blhd,
    /// `[Tq, Hq, Dv]` (`flash_attn_varlen`; the problem is `B = 1`).
    Packed,
}

/// A mask as the op holds it.
#[derive(Debug, Clone)]
pub(crate) enum MaskData {
    /// An f32 CPU tensor of rank 2 to 4, read in place.
    Additive(Tensor),
    /// A boolean mask made from a `u8` tensor (true = visible), seen as `[m0, m1, Lq, Lk]`.
    Bool {
        data: Vec<bool>,
        dims: [usize; 4],
        strides: [usize; 4],
    },
}

/// Packed-sequence offsets of a varlen call.
#[derive(Debug, Clone)]
pub(crate) struct Varlen {
    pub cu_q: Vec<i64>,
    pub cu_k: Vec<i64>,
}

/// The attention op: options owned, so candle can keep it for its backward graph.
#[derive(Debug, Clone)]
pub(crate) struct AttnOp {
    /// The public function's name, for error messages.
    pub name: &'static str,
    pub out: OutLayout,
    /// The options (their `mask` is unused: see `mask`).
    pub opts: SdpaOptions,
    pub mask: Option<MaskData>,
    pub varlen: Option<Varlen>,
}

/// An fastattn error as a candle error naming the function.
pub(crate) fn attn_err(op: &'static str) -> impl Fn(AttnError) -> Error {
    move |e| Error::Msg(format!("{op}: {e}")).bt()
}

/// The `[B, H, L, D]` view of a rank-4 layout over `s`, without copying.
fn view<'a>(op: &'static str, name: &str, s: &'a CpuStorage, l: &Layout) -> Result<DynTensor<'a>> {
    let (Ok(dims), Ok(strides)) = (
        <[usize; 4]>::try_from(l.dims()),
        <[usize; 4]>::try_from(l.stride()),
    ) else {
        bail!("{op}: {name} has shape {:?}, expected rank 4", l.dims())
    };
    fn typed<T: Copy>(
        v: &[T],
        off: usize,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> attention::Result<TensorRef<'_, T>> {
        TensorRef::new(v.get(off..).unwrap_or(&[]), dims, strides)
    }
    let off = l.start_offset();
    let err = attn_err(op);
    Ok(match s {
        CpuStorage::F32(v) => typed(v, off, dims, strides).map_err(err)?.into(),
        CpuStorage::F16(v) => typed(v, off, dims, strides).map_err(err)?.into(),
        CpuStorage::BF16(v) => typed(v, off, dims, strides).map_err(err)?.into(),
        other => bail!(
            "{op}: {name} has dtype {:?}; fastattn takes f32, f16 or bf16",
            other.dtype()
        ),
    })
}

/// Dims and strides of a rank-2..4 mask layout as a `[m0, m1, Lq, Lk]` view: missing
/// leading dims are 1, and a size-1 query or key dim is stretched with stride 0.
pub(crate) fn mask_dims(
    l_dims: &[usize],
    l_strides: &[usize],
    lq: usize,
    lk: usize,
) -> ([usize; 4], [usize; 4]) {
    let r = l_dims.len().min(4);
    let mut dims = [1usize; 4];
    let mut strides = [0usize; 4];
    for i in 0..r {
        dims[4 - r + i] = l_dims[l_dims.len() - r + i];
        strides[4 - r + i] = l_strides[l_strides.len() - r + i];
    }
    for (a, want) in [(2, lq), (3, lk)] {
        if dims[a] == 1 {
            dims[a] = want;
            strides[a] = 0;
        }
    }
    for a in 0..2 {
        if dims[a] == 1 {
            strides[a] = 0;
        }
    }
    (dims, strides)
}

/// A fresh output of `n` zeros of `T` behind the view `out` wants, filled by `f`.
fn run_into<T: Element + WithDType>(
    op: &'static str,
    out: OutLayout,
    dims: [usize; 4],
    f: impl FnOnce(DynTensorMut<'_>) -> attention::Result<()>,
) -> Result<CpuStorage> {
    let n = dims
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or_else(|| Error::Msg(format!("{op}: output size overflows")))?;
    let mut buf = vec![T::from_f32(0.0); n];
    let err = attn_err(op);
    let view = match out {
        OutLayout::Bhld => TensorMut::contiguous(&mut buf, dims),
        OutLayout::Blhd | OutLayout::Packed => TensorMut::from_blhd(&mut buf, dims),
    }
    .map_err(&err)?;
    f(view.into()).map_err(err)?;
    Ok(T::to_cpu_storage_owned(buf))
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name;
        let (q, k, v) = (
            view(op, "q", s1, l1)?,
            view(op, "k", s2, l2)?,
            view(op, "v", s3, l3)?,
        );
        let [b, hq, lq, _] = q.dims();
        let lk = k.dims()[2];
        let dv = v.dims()[3];
        // The additive mask's storage stays locked for reading during the call.
        let held = match &self.mask {
            Some(MaskData::Additive(t)) => Some(t.storage_and_layout()),
            _ => None,
        };
        let mask = match (&self.mask, &held) {
            (
                Some(MaskData::Bool {
                    data,
                    dims,
                    strides,
                }),
                _,
            ) => Some(attention::Mask::Bool(
                TensorRef::new(data, *dims, *strides).map_err(attn_err(op))?,
            )),
            (Some(MaskData::Additive(_)), Some((storage, l))) => {
                let Storage::Cpu(CpuStorage::F32(data)) = &**storage else {
                    bail!("{op}: the additive mask must be an f32 CPU tensor here")
                };
                let (dims, strides) = mask_dims(l.dims(), l.stride(), lq, lk);
                let data = data.get(l.start_offset()..).unwrap_or(&[]);
                Some(attention::Mask::Additive(
                    TensorRef::new(data, dims, strides).map_err(attn_err(op))?,
                ))
            }
            _ => None,
        };
        let o = &self.opts;
        let opts = attention::SdpaOptions::new()
            .with_scale(o.scale)
            .with_causal(o.causal)
            .with_mask(mask)
            .with_kv_lengths(o.kv_lengths.as_deref())
            .with_window(o.window_left, o.window_right)
            .with_alibi_slopes(o.alibi_slopes.as_deref())
            .with_softcap(o.softcap)
            .with_sinks(o.sinks.as_deref())
            .with_parallelism(o.parallelism);
        let dims = [b, hq, lq, dv];
        let call = |out: DynTensorMut<'_>| match &self.varlen {
            None => attention::sdpa_into_dyn(q, k, v, out, &opts, SdpaOutputs::default()),
            Some(s) => {
                let seqs = attention::VarlenSeqs::new(&s.cu_q[..]).with_cu_seqlens_k(&s.cu_k[..]);
                attention::sdpa_varlen_into_dyn(q, k, v, out, &seqs, &opts, None)
            }
        };
        let storage = match s1.dtype() {
            DType::F32 => run_into::<f32>(op, self.out, dims, call)?,
            DType::F16 => run_into::<half::f16>(op, self.out, dims, call)?,
            DType::BF16 => run_into::<half::bf16>(op, self.out, dims, call)?,
            dt => bail!("{op}: q has dtype {dt:?}; fastattn takes f32, f16 or bf16"),
        };
        let shape = match self.out {
            OutLayout::Bhld => Shape::from((b, hq, lq, dv)),
            OutLayout::Blhd => Shape::from((b, lq, hq, dv)),
            OutLayout::Packed => Shape::from((lq, hq, dv)),
        };
        Ok((storage, shape))
    }
}

/// Checks that `t` is a CPU tensor of a float dtype fastattn reads and of rank `rank`
/// (`layout` names the dims in the message).
pub(crate) fn check_input(
    op: &'static str,
    name: &str,
    t: &Tensor,
    rank: usize,
    layout: &str,
) -> Result<()> {
    if !t.device().is_cpu() {
        bail!(
            "{op}: {name} is on {:?}; fastattn-candle runs on the CPU only (move it with `.to_device(&Device::Cpu)`)",
            t.device().location()
        )
    }
    if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        bail!(
            "{op}: {name} has dtype {:?}; fastattn takes f32, f16 or bf16",
            t.dtype()
        )
    }
    if t.rank() != rank {
        bail!(
            "{op}: {name} has shape {:?} (rank {}), expected rank {rank} {layout}",
            t.dims(),
            t.rank()
        )
    }
    Ok(())
}

/// Turns the public mask into what the op holds, after checking it against the problem
/// `[b, hq, lq, lk]`.
pub(crate) fn prepare_mask(op: &'static str, mask: &Mask, want: [usize; 4]) -> Result<MaskData> {
    let t = mask.tensor();
    if !t.device().is_cpu() {
        bail!(
            "{op}: the mask is on {:?}; fastattn-candle runs on the CPU only",
            t.device().location()
        )
    }
    let r = t.rank();
    if !(2..=4).contains(&r) {
        bail!(
            "{op}: the mask has shape {:?}, expected rank 2 to 4 broadcastable to {want:?}",
            t.dims()
        )
    }
    let full: Vec<usize> = std::iter::repeat_n(1, 4 - r)
        .chain(t.dims().iter().copied())
        .collect();
    if full.iter().zip(want).any(|(&m, w)| m != 1 && m != w) {
        bail!(
            "{op}: the mask has shape {:?}, not broadcastable to [B, Hq, Lq, Lk] = {want:?}",
            t.dims()
        )
    }
    match mask {
        Mask::Additive(t) => match t.dtype() {
            DType::F32 => Ok(MaskData::Additive(t.clone())),
            DType::F16 | DType::BF16 | DType::F64 => Ok(MaskData::Additive(t.to_dtype(DType::F32)?)),
            dt => bail!(
                "{op}: an additive mask must be a float tensor, got {dt:?} (use Mask::Allow or Mask::Block for a u8 mask)"
            ),
        },
        Mask::Allow(t) | Mask::Block(t) => {
            if t.dtype() != DType::U8 {
                bail!(
                    "{op}: a boolean mask must be a u8 tensor, got {:?} (use Mask::Additive for a float mask)",
                    t.dtype()
                )
            }
            let visible_if = matches!(mask, Mask::Allow(_));
            // The bytes the mask's view reaches, each turned into a bool, under the same
            // strides: one pass over the mask's storage, never over its broadcast.
            let (storage, l) = t.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                bail!("{op}: the mask must be a CPU tensor")
            };
            let (dims, strides) = mask_dims(l.dims(), l.stride(), want[2], want[3]);
            let extent = if dims.contains(&0) {
                0
            } else {
                1 + dims
                    .iter()
                    .zip(strides)
                    .map(|(&d, s)| (d - 1) * s)
                    .sum::<usize>()
            };
            let off = l.start_offset();
            let Some(bytes) = cpu.as_slice::<u8>()?.get(off..off + extent) else {
                bail!("{op}: the mask's layout reaches past its storage")
            };
            let data = bytes.iter().map(|&x| (x != 0) == visible_if).collect();
            Ok(MaskData::Bool {
                data,
                dims,
                strides,
            })
        }
    }
}
