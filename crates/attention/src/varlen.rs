//! Variable-length batches: many sequences of different lengths in one call, their keys
//! and values packed or in a paged cache (FlashAttention-2's `varlen` and `kvcache`
//! semantics).
//!
//! Queries are packed `[Tq, Hq, D]`: sequence `s` owns tokens `cu_seqlens_q[s] ..
//! cu_seqlens_q[s + 1]`. They are passed as the `[1, Hq, Tq, D]` view of that memory
//! ([`TensorRef::from_blhd`](crate::TensorRef::from_blhd) with dims `[1, Hq, Tq, D]`, or
//! any strides), and the output `[Tq, Hq, Dv]` likewise. Keys and values come
//! - **packed**, `[1, Hkv, Tk, D]` views with `cu_seqlens_k`: sequence `s` owns key tokens
//!   `cu_seqlens_k[s] ..`; or
//! - from a **paged cache** ([`BlockTable`]): K and V are `[num_blocks, block_size, Hkv,
//!   D]` views, and sequence `s`'s key `j` is row `j % block_size` of page
//!   `block_table[s][j / block_size]`. The pages are read in place.
//!
//! Each sequence is its own attention problem with every option of [`SdpaOptions`]
//! (causal bottom-right aligned, so a chunk of new queries sees its cached prefix and
//! itself; window, soft-cap, ALiBi, sinks, GQA, `Dv ≠ D`, scale) except `mask` and
//! `kv_lengths` (per-sequence key counts are `seqused_k`). A sequence with no queries adds
//! nothing; one with no keys gets zero outputs. The sequences' tiles are scheduled
//! together: short sequences share the threads, a long decode is split along its keys.
//! Results are bit-identical at any thread count.

use crate::error::{AttnError, Result};
use crate::job::{Job, LseOut};
use crate::kv::{KvMem, KvSource};
use crate::options::{AttnPath, Problem, SdpaOptions};
use crate::quant::KvRef;
use crate::tensor::{AnyOut, AnyRef, DynTensor, DynTensorMut, TensorMut, TensorRef};
use crate::SyncPtr;
use kernels::Element;

/// Integer offsets or counts, as int32 or int64 (both are common in callers' tensors).
#[derive(Debug, Clone, Copy)]
pub enum SeqIdx<'a> {
    /// int32 values.
    I32(&'a [i32]),
    /// int64 values.
    I64(&'a [i64]),
}

impl SeqIdx<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            SeqIdx::I32(s) => s.len(),
            SeqIdx::I64(s) => s.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as i64.
    pub fn get(&self, i: usize) -> i64 {
        match self {
            SeqIdx::I32(s) => s[i] as i64,
            SeqIdx::I64(s) => s[i],
        }
    }
}

impl<'a> From<&'a [i32]> for SeqIdx<'a> {
    fn from(s: &'a [i32]) -> Self {
        SeqIdx::I32(s)
    }
}

impl<'a> From<&'a [i64]> for SeqIdx<'a> {
    fn from(s: &'a [i64]) -> Self {
        SeqIdx::I64(s)
    }
}

/// A block table: row-major `[B, blocks_per_seq]` page indices. Sequence `s`'s key `j` is
/// in page `table[s·blocks_per_seq + j / block_size]`. Entries past a sequence's last page
/// are never read (transformers pads them with -1).
#[derive(Debug, Clone, Copy)]
pub struct BlockTable<'a> {
    /// The page indices.
    pub table: &'a [i32],
    /// Entries per sequence (the table's row length).
    pub blocks_per_seq: usize,
}

/// The sequences of a variable-length call: see the [module docs](self).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct VarlenSeqs<'a> {
    /// `[B + 1]` query offsets: 0, non-decreasing, last = `Tq`.
    pub cu_seqlens_q: SeqIdx<'a>,
    /// `[B + 1]` key offsets into packed K/V (0, non-decreasing, last = `Tk`); with a
    /// block table they only give the key counts (their differences), where `seqused_k`
    /// is not given.
    pub cu_seqlens_k: Option<SeqIdx<'a>>,
    /// `[B]` valid keys per sequence (FlashAttention-2's `seqused_k`, `cache_seqlens`): the
    /// first `seqused_k[s]` keys of the sequence's span or pages.
    pub seqused_k: Option<SeqIdx<'a>>,
    /// Pages of a paged cache: K and V are then `[num_blocks, block_size, Hkv, D]`.
    pub block_table: Option<BlockTable<'a>>,
}

impl<'a> VarlenSeqs<'a> {
    /// Sequences with these query offsets; add the keys' description with the `with_*`
    /// methods.
    pub fn new(cu_seqlens_q: impl Into<SeqIdx<'a>>) -> Self {
        VarlenSeqs {
            cu_seqlens_q: cu_seqlens_q.into(),
            cu_seqlens_k: None,
            seqused_k: None,
            block_table: None,
        }
    }

    /// Sets [`cu_seqlens_k`](Self::cu_seqlens_k).
    pub fn with_cu_seqlens_k(mut self, cu: impl Into<SeqIdx<'a>>) -> Self {
        self.cu_seqlens_k = Some(cu.into());
        self
    }

    /// Sets [`seqused_k`](Self::seqused_k).
    pub fn with_seqused_k(mut self, used: impl Into<SeqIdx<'a>>) -> Self {
        self.seqused_k = Some(used.into());
        self
    }

    /// Sets [`block_table`](Self::block_table) from row-major `[B, blocks_per_seq]`
    /// entries.
    pub fn with_block_table(mut self, table: &'a [i32], blocks_per_seq: usize) -> Self {
        self.block_table = Some(BlockTable {
            table,
            blocks_per_seq,
        });
        self
    }
}

/// Variable-length attention into a new packed `[Tq, Hq, Dv]` buffer (f32).
///
/// ```
/// use fastattn_attention::{sdpa_varlen, SdpaOptions, TensorRef, VarlenSeqs};
/// // Two sequences of 3 and 2 tokens, 2 heads of 4, packed K/V of the same lengths.
/// let (hq, d) = (2, 4);
/// let x: Vec<f32> = (0..5 * hq * d).map(|i| (i % 11) as f32 * 0.1).collect();
/// let t = TensorRef::from_blhd(&x, [1, hq, 5, d])?;
/// let cu: &[i32] = &[0, 3, 5];
/// let seqs = VarlenSeqs::new(cu).with_cu_seqlens_k(cu);
/// let out = sdpa_varlen(t, t, t, &seqs, &SdpaOptions::new().with_causal(true))?;
/// assert_eq!(out.len(), 5 * hq * d);
/// // The second sequence's first query sees only its own first key.
/// assert!((out[3 * hq * d] - x[3 * hq * d]).abs() < 1e-6);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// As [`sdpa_varlen_into_dyn`].
pub fn sdpa_varlen<Q: Element, K: Element, V: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
) -> Result<Vec<f32>> {
    let [_, hq, tq, _] = q.dims();
    let dv = v.dims()[3];
    let n = hq
        .checked_mul(tq)
        .and_then(|x| x.checked_mul(dv))
        .ok_or(AttnError::Overflow { what: "output" })?;
    let mut out = vec![0.0f32; n];
    let o = TensorMut::from_blhd(&mut out, [1, hq, tq, dv])?;
    sdpa_varlen_into_dyn(q.into(), k.into(), v.into(), o.into(), seqs, opts, None)?;
    Ok(out)
}

/// [`sdpa_varlen_into_dyn`] for statically typed views.
///
/// # Errors
/// As [`sdpa_varlen_into_dyn`].
pub fn sdpa_varlen_into<Q: Element, K: Element, V: Element, O: Element>(
    q: TensorRef<'_, Q>,
    k: TensorRef<'_, K>,
    v: TensorRef<'_, V>,
    out: TensorMut<'_, O>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
    lse: Option<&mut [f32]>,
) -> Result<()> {
    sdpa_varlen_into_dyn(q.into(), k.into(), v.into(), out.into(), seqs, opts, lse)
}

/// Variable-length attention (see the [module docs](self)) into a caller-given output
/// view `[1, Hq, Tq, Dv]` (the packed `[Tq, Hq, Dv]` or any strides), with the optional
/// log-sum-exp `[Hq, Tq]` (contiguous; `-inf` for queries that see no key and have no
/// sink). Q, K, V and the output may each be f32, f16 or bf16.
///
/// # Errors
/// Before anything is written: [`AttnError::Shape`] for views that disagree (Q or the
/// output not `[1, ..]`, heads, `D`/`Dv`, the two caches' pages, the LSE length);
/// [`AttnError::Option`] for offsets that are not 0-based and non-decreasing, whose last
/// entry is not the packed length or whose count differs from the batch, `seqused_k`
/// above a sequence's keys or pages, a block index out of range where it is read, a
/// missing `cu_seqlens_k` (packed K/V) or key count (paged), a `mask` or `kv_lengths`
/// option, and any option error of [`crate::sdpa`];
/// [`AttnError::HeadGroups`] when `Hq` is not a multiple of `Hkv`.
pub fn sdpa_varlen_into_dyn(
    q: DynTensor<'_>,
    k: DynTensor<'_>,
    v: DynTensor<'_>,
    out: DynTensorMut<'_>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
    lse: Option<&mut [f32]>,
) -> Result<()> {
    sdpa_varlen_kv_into(q, k.into(), v.into(), out, seqs, opts, lse)
}

/// [`sdpa_varlen_into_dyn`] with keys and values that may be 8-bit ([`KvRef`]): packed
/// `[1, Hkv, Tk, D]` codes with scales per token and head (`[1, Hkv, Tk]`), per head or per
/// tensor, or a paged 8-bit cache `[num_blocks, block_size, Hkv, D]` with scales
/// `[num_blocks, block_size, Hkv]` (int8), per head (strides `[0, 0, 1]`) or per tensor
/// (see [`crate::quant`]). The scales of every row a sequence reads are checked (finite,
/// positive) before any work; a paged cache's unused slots are not read.
///
/// # Errors
/// As [`sdpa_varlen_into_dyn`], and [`AttnError::Scale`] for a bad scale on a row read.
pub fn sdpa_varlen_kv_into(
    q: DynTensor<'_>,
    k: KvRef<'_>,
    v: KvRef<'_>,
    mut out: DynTensorMut<'_>,
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'_>,
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let plan = plan(q.dims(), k.dims(), v.dims(), out.dims(), seqs, opts)?;
    let [_, hq, tq, _] = q.dims();
    if let Some(l) = &lse {
        if l.len() != hq * tq {
            return Err(AttnError::Shape {
                what: format!("lse has {} values, expected Hq·Tq = {}", l.len(), hq * tq),
            });
        }
    }
    let (q, k, v) = (AnyRef::of_dyn(q), KvMem::of(k), KvMem::of(v));
    let os = out.strides();
    // SAFETY: the sequences own disjoint token ranges of the output, their tasks write
    // disjoint rows, and nothing else accesses it during the call (borrowed mutably here).
    let out_p = unsafe { AnyOut::of_dyn(&mut out) };
    let lse_p = lse.map(|l| l.as_mut_ptr());
    let qs = q.strides();
    let jobs: Vec<Job<'_>> = plan
        .into_iter()
        .map(|s| {
            let (kt, vt) = match seqs.block_table {
                None => (
                    KvSource::dense(k.skip_rows(s.k0), s.keys),
                    KvSource::dense(v.skip_rows(s.k0), s.keys),
                ),
                Some(bt) => {
                    let table = &bt.table[s.seq * bt.blocks_per_seq..][..bt.blocks_per_seq];
                    let pages = |t| KvSource::Paged {
                        t,
                        block_size: s.block_size,
                        table,
                        len: s.keys,
                    };
                    (pages(k), pages(v))
                }
            };
            Job {
                q: q.tail(s.q0 * qs[2]),
                k: kt,
                v: vt,
                out: out_p,
                out_base: s.q0 * os[2],
                os,
                lse: lse_p.map(|ptr| LseOut {
                    // SAFETY: the sequence's entries `h·Tq + q0 + i` are inside the
                    // checked LSE buffer, written by the sequence's tasks only.
                    ptr: unsafe { SyncPtr::new(ptr.wrapping_add(s.q0)) },
                    sb: 0,
                    sh: tq,
                }),
                p: s.p,
            }
        })
        .collect();
    for j in &jobs {
        j.k.check_scales(j.p.b, j.p.hkv)?;
        j.v.check_scales(j.p.b, j.p.hkv)?;
    }
    match opts.path {
        AttnPath::Materialized => jobs
            .iter()
            .try_for_each(|j| crate::materialized::run(j, None)),
        _ => crate::flash::run(&jobs),
    }
}

/// One sequence of a checked call.
pub(crate) struct SeqPlan<'a> {
    /// Its index in the batch.
    pub(crate) seq: usize,
    /// Its first query token.
    pub(crate) q0: usize,
    /// Its first key token (packed K/V; 0 with a block table).
    pub(crate) k0: usize,
    /// Its valid keys.
    pub(crate) keys: usize,
    /// The page size (1 for packed K/V).
    pub(crate) block_size: usize,
    /// Its `B = 1` problem.
    pub(crate) p: Problem<'a>,
}

/// Offsets: `n + 1` values, 0-based, non-decreasing, the last equal to `total` (where
/// given).
fn check_offsets(what: &str, cu: &SeqIdx<'_>, n: usize, total: Option<usize>) -> Result<()> {
    let bad = |why: String| {
        Err(AttnError::Option {
            what: format!("{what}: {why}"),
        })
    };
    if cu.len() != n + 1 {
        return bad(format!("{} values, expected B + 1 = {}", cu.len(), n + 1));
    }
    if cu.get(0) != 0 {
        return bad(format!("starts at {}, expected 0", cu.get(0)));
    }
    for s in 0..n {
        if cu.get(s + 1) < cu.get(s) {
            return bad(format!(
                "decreases at {s}: {} then {}",
                cu.get(s),
                cu.get(s + 1)
            ));
        }
    }
    match total {
        Some(t) if cu.get(n) != t as i64 => {
            bad(format!("ends at {}, the packed length is {t}", cu.get(n)))
        }
        _ => Ok(()),
    }
}

/// Checks the whole call and describes each sequence that has queries.
pub(crate) fn plan<'a>(
    qd: [usize; 4],
    kd: [usize; 4],
    vd: [usize; 4],
    od: [usize; 4],
    seqs: &VarlenSeqs<'_>,
    opts: &SdpaOptions<'a>,
) -> Result<Vec<SeqPlan<'a>>> {
    let opt = |what: String| Err(AttnError::Option { what });
    let shape = |what: String| Err(AttnError::Shape { what });
    let [qb, hq, tq, d] = qd;
    if qb != 1 {
        return shape(format!("varlen Q is [1, Hq, Tq, D], got {qd:?}"));
    }
    if opts.mask.is_some() || opts.kv_lengths.is_some() {
        return opt("varlen attention takes no mask or kv_lengths (use seqused_k)".into());
    }
    let n = seqs.cu_seqlens_q.len().saturating_sub(1);
    check_offsets("cu_seqlens_q", &seqs.cu_seqlens_q, n, Some(tq))?;
    let dv = vd[3];
    if od != [1, hq, tq, dv] {
        return shape(format!(
            "varlen output is {od:?}, expected [1, {hq}, {tq}, {dv}]"
        ));
    }
    // Per sequence: (first key token, keys available) and the page size.
    let (hkv, block_size, avail): (usize, usize, Vec<(usize, usize)>) = match seqs.block_table {
        None => {
            let [kb, hkv, tk, _] = kd;
            if kb != 1 || vd[0] != 1 || vd[1] != hkv || vd[2] != tk {
                return shape(format!(
                    "packed K and V are [1, Hkv, Tk, D|Dv], got {kd:?} and {vd:?}"
                ));
            }
            let Some(cu) = &seqs.cu_seqlens_k else {
                return opt("packed varlen K/V need cu_seqlens_k".into());
            };
            check_offsets("cu_seqlens_k", cu, n, Some(tk))?;
            let avail = (0..n)
                .map(|s| (cu.get(s) as usize, (cu.get(s + 1) - cu.get(s)) as usize))
                .collect();
            (hkv, 1, avail)
        }
        Some(bt) => {
            let [nb, bs, hkv, _] = kd;
            if vd[0] != nb || vd[1] != bs || vd[2] != hkv {
                return shape(format!(
                    "paged K and V caches are [num_blocks, block_size, Hkv, D|Dv], got {kd:?} \
                     and {vd:?}"
                ));
            }
            if bs == 0 {
                return shape("paged caches need block_size ≥ 1".into());
            }
            if Some(bt.table.len()) != n.checked_mul(bt.blocks_per_seq) {
                return shape(format!(
                    "block table has {} entries, expected B·blocks_per_seq = {n}·{}",
                    bt.table.len(),
                    bt.blocks_per_seq
                ));
            }
            let held = bt.blocks_per_seq.saturating_mul(bs);
            let counts: Vec<usize> = match (&seqs.seqused_k, &seqs.cu_seqlens_k) {
                (Some(_), _) => vec![held; n],
                (None, Some(cu)) => {
                    check_offsets("cu_seqlens_k", cu, n, None)?;
                    (0..n)
                        .map(|s| (cu.get(s + 1) - cu.get(s)) as usize)
                        .collect()
                }
                (None, None) => {
                    return opt("paged varlen K/V need seqused_k or cu_seqlens_k".into())
                }
            };
            for (s, &c) in counts.iter().enumerate() {
                if c > held {
                    return opt(format!(
                        "sequence {s} has {c} keys, its {} pages hold {held}",
                        bt.blocks_per_seq
                    ));
                }
            }
            (hkv, bs, counts.into_iter().map(|c| (0, c)).collect())
        }
    };
    if kd[3] != d {
        return shape(format!("head dims differ: Q {d}, K {}", kd[3]));
    }
    // Valid keys per sequence.
    let keys: Vec<usize> = match &seqs.seqused_k {
        None => avail.iter().map(|&(_, a)| a).collect(),
        Some(used) => {
            if used.len() != n {
                return opt(format!("seqused_k has {} values, batch is {n}", used.len()));
            }
            let mut keys = Vec::with_capacity(n);
            for (s, &(_, a)) in avail.iter().enumerate() {
                let u = used.get(s);
                if u < 0 || u as usize > a {
                    return opt(format!(
                        "seqused_k[{s}] = {u} is outside 0 ..= {a} (the keys the sequence holds)"
                    ));
                }
                keys.push(u as usize);
            }
            keys
        }
    };
    // Every page a sequence's keys use is a page of the caches.
    if let Some(bt) = seqs.block_table {
        let nb = kd[0];
        for (s, &c) in keys.iter().enumerate() {
            let row = &bt.table[s * bt.blocks_per_seq..][..bt.blocks_per_seq];
            for (i, &pg) in row[..c.div_ceil(block_size)].iter().enumerate() {
                if pg < 0 || pg as usize >= nb {
                    return opt(format!(
                        "block_table[{s}][{i}] = {pg} is not a page (the caches hold {nb})"
                    ));
                }
            }
        }
    }
    let mut plan = Vec::new();
    for s in 0..n {
        let q0 = seqs.cu_seqlens_q.get(s) as usize;
        let lq = seqs.cu_seqlens_q.get(s + 1) as usize - q0;
        let nk = keys[s];
        // Every sequence is checked (options against the sizes), even one without queries.
        let p = Problem::new([1, hq, lq, d], [1, hkv, nk, d], [1, hkv, nk, dv], opts)?;
        if lq > 0 {
            plan.push(SeqPlan {
                seq: s,
                q0,
                k0: avail[s].0,
                keys: nk,
                block_size,
                p,
            });
        }
    }
    if n == 0 {
        // No sequence: still check the options against the heads.
        Problem::new([1, hq, 0, d], [1, hkv, 0, d], [1, hkv, 0, dv], opts)?;
    }
    Ok(plan)
}
