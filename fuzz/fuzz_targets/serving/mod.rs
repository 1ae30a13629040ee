//! The serving calls of the C ABI (`fa_sdpa_varlen`, `fa_paged_kv_write`): a random batch
//! of sequences over packed or paged K/V, valid by construction, and at most one mutation
//! from the list of docs/HARDENING.md (C28-C31). A valid call must equal the Rust call bit
//! for bit; a mutated one must return its code and write nothing.

use super::{code, last_error, refused, OK, SENTINEL};
use arbitrary::{Result, Unstructured};
use attention::{SdpaOptions, SeqIdx, TensorMut, TensorRef, VarlenSeqs};
use super::common::small;
use fastattn_capi::*;
use std::ffi::c_int;
use std::ptr::null;


#[derive(Debug, Clone, Copy, PartialEq)]
enum ServeMut {
    None,
    CuQDecreases,
    CuQLastWrong,
    CuKLastWrong,
    BlockPastCaches,
    BlockNegative,
    UsedTooMany,
    NullSeqs,
    UnknownIndexDtype,
    OutOverlapsQ,
    LseOverlapsOut,
    SinkNan,
    SlotPastCache,
    CachesDifferentTypes,
}

/// `[1, h, t, d]` view strides of a packed `[t, h, d]` buffer.
fn packed(h: usize, t: usize, d: usize) -> [isize; 4] {
    [(t * h * d) as isize, d as isize, (h * d) as isize, 1]
}

fn contiguous(dims: [usize; 4]) -> [isize; 4] {
    let [_, b, c, d] = dims;
    [(b * c * d) as isize, (c * d) as isize, d as isize, 1]
}

fn tensor(data: *mut f32, dims: [usize; 4], strides: [isize; 4]) -> fa_tensor {
    fa_tensor {
        data: data.cast(),
        dims,
        strides,
        dtype: 0,
    }
}

pub fn serving(u: &mut Unstructured<'_>) -> Result<()> {
    use fa_status::*;
    let n = u.int_in_range(0..=3)?;
    let hkv = u.int_in_range(1..=2)?;
    let hq = hkv * u.int_in_range(1..=2)?;
    let d = u.int_in_range(1..=4)?;
    let bs = u.int_in_range(1..=3)?;
    let lq: Vec<usize> = (0..n).map(|_| u.int_in_range(0..=3).unwrap_or(0)).collect();
    let lk: Vec<usize> = (0..n).map(|_| u.int_in_range(0..=6).unwrap_or(0)).collect();
    let paged: bool = u.arbitrary()?;
    let i64s: bool = u.arbitrary()?;
    let mutation = *u.choose(&[
        ServeMut::None,
        ServeMut::None,
        ServeMut::None,
        ServeMut::CuQDecreases,
        ServeMut::CuQLastWrong,
        ServeMut::CuKLastWrong,
        ServeMut::BlockPastCaches,
        ServeMut::BlockNegative,
        ServeMut::UsedTooMany,
        ServeMut::NullSeqs,
        ServeMut::UnknownIndexDtype,
        ServeMut::OutOverlapsQ,
        ServeMut::LseOverlapsOut,
        ServeMut::SinkNan,
        ServeMut::SlotPastCache,
        ServeMut::CachesDifferentTypes,
    ])?;
    let (tq, tk) = (lq.iter().sum::<usize>(), lk.iter().sum::<usize>());
    let cum = |l: &[usize]| -> Vec<i64> {
        std::iter::once(0)
            .chain(l.iter().scan(0i64, |s, &x| {
                *s += x as i64;
                Some(*s)
            }))
            .collect()
    };
    let (mut cu_q, mut cu_k) = (cum(&lq), cum(&lk));
    let mut q: Vec<f32> = (0..tq * hq * d).map(|_| small(u).unwrap_or(0.0)).collect();
    let k: Vec<f32> = (0..tk * hkv * d).map(|_| small(u).unwrap_or(0.0)).collect();
    let v: Vec<f32> = (0..tk * hkv * d).map(|_| small(u).unwrap_or(0.0)).collect();
    // Pages: sequence s's keys in pages of its row, in the order pages are handed out.
    let bps = lk.iter().map(|l| l.div_ceil(bs)).max().unwrap_or(0) + 1;
    let nb = lk.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 1;
    let mut table = vec![-1i32; n * bps];
    let row = hkv * d;
    let (mut kc, mut vc) = (vec![0.0f32; nb * bs * row], vec![0.0f32; nb * bs * row]);
    let mut slots = vec![-1i64; tk];
    let mut next = 0;
    for s in 0..n {
        for j in 0..lk[s] {
            if j % bs == 0 {
                table[s * bps + j / bs] = next;
                next += 1;
            }
            slots[cu_k[s] as usize + j] = table[s * bps + j / bs] as i64 * bs as i64 + (j % bs) as i64;
        }
    }
    // The caches are filled through fa_paged_kv_write (checked against the Rust call).
    let cd = [nb, bs, hkv, d];
    let mut kr = k.clone();
    let mut vr = v.clone();
    let kt = tensor(kr.as_mut_ptr(), [1, hkv, tk, d], packed(hkv, tk, d));
    let vt = tensor(vr.as_mut_ptr(), [1, hkv, tk, d], packed(hkv, tk, d));
    let mut kct = tensor(kc.as_mut_ptr(), cd, contiguous(cd));
    let mut vct = tensor(vc.as_mut_ptr(), cd, contiguous(cd));
    let mut other = vec![0u16; nb * bs * row];
    let mut write_slots = slots.clone();
    let write_want = match mutation {
        ServeMut::SlotPastCache if tk > 0 => {
            write_slots[0] = (nb * bs) as i64;
            Some(FA_ERR_INVALID_ARGUMENT)
        }
        ServeMut::CachesDifferentTypes => {
            vct.data = other.as_mut_ptr().cast();
            vct.dtype = fa_dtype::FA_DTYPE_BF16 as i32;
            Some(FA_ERR_INVALID_ARGUMENT)
        }
        _ => None,
    };
    // SAFETY: every view covers exactly its buffer; `write_slots` holds tk values.
    let rc = unsafe { fa_paged_kv_write(&kt, &vt, &mut kct, &mut vct, write_slots.as_ptr()) };
    if let Some(want) = write_want {
        refused(rc, want, "fa_paged_kv_write", &format!("{mutation:?}"));
        assert!(kc.iter().all(|&x| x == 0.0) && other.iter().all(|&x| x == 0), "{mutation:?}: a cache was written");
        return Ok(());
    }
    assert_eq!(rc, OK, "fa_paged_kv_write: {}", last_error());
    let (mut wk, mut wv) = (vec![0.0f32; kc.len()], vec![0.0f32; vc.len()]);
    attention::paged_kv_write(
        TensorRef::new(&k, [1, hkv, tk, d], [tk * row, d, row, 1]).unwrap(),
        TensorRef::new(&v, [1, hkv, tk, d], [tk * row, d, row, 1]).unwrap(),
        TensorMut::contiguous(&mut wk, cd).unwrap(),
        TensorMut::contiguous(&mut wv, cd).unwrap(),
        &slots,
    )
    .unwrap();
    assert!(kc == wk && vc == wv, "fa_paged_kv_write differs from the Rust call");

    // The attention call.
    let mut used: Vec<i64> = (0..n).map(|s| u.int_in_range(0..=lk[s] as i64).unwrap_or(0)).collect();
    let with_used: bool = u.arbitrary()?;
    let causal: bool = u.arbitrary()?;
    let mut sinks: Vec<f32> = (0..hq).map(|_| small(u).unwrap_or(0.0)).collect();
    let with_sinks: bool = u.arbitrary()?;
    let mut out = vec![SENTINEL; tq * hq * d];
    let mut lse = vec![SENTINEL; hq * tq];
    let mut want = Some(FA_ERR_INVALID_ARGUMENT);
    let mut index_dtype = i64s as i32;
    let (mut out_p, mut lse_p) = (out.as_mut_ptr(), lse.as_mut_ptr());
    let read_page = (0..n).find(|&s| (if with_used { used[s] } else { lk[s] as i64 }) > 0);
    match mutation {
        ServeMut::CuQDecreases if n >= 2 && cu_q[1] > 0 => cu_q[1] = cu_q[2] + 1,
        ServeMut::CuQLastWrong => cu_q[n] += 1,
        ServeMut::CuKLastWrong if !paged => cu_k[n] += 1,
        ServeMut::BlockPastCaches if paged && read_page.is_some() => {
            table[read_page.unwrap() * bps] = nb as i32
        }
        ServeMut::BlockNegative if paged && read_page.is_some() => {
            table[read_page.unwrap() * bps] = -1
        }
        ServeMut::UsedTooMany if n > 0 => {
            used[0] = if paged { (bps * bs) as i64 + 1 } else { lk[0] as i64 + 1 }
        }
        ServeMut::UnknownIndexDtype => index_dtype = 2,
        ServeMut::SinkNan => sinks[0] = f32::NAN,
        ServeMut::NullSeqs => want = Some(FA_ERR_NULL_POINTER),
        ServeMut::OutOverlapsQ if tq > 0 => {
            out_p = q.as_mut_ptr();
            want = Some(FA_ERR_BAD_STRIDE)
        }
        ServeMut::LseOverlapsOut if tq > 0 => {
            lse_p = out.as_mut_ptr();
            want = Some(FA_ERR_BAD_STRIDE)
        }
        _ => want = None,
    }
    let with_used = with_used || mutation == ServeMut::UsedTooMany;
    let with_sinks = with_sinks || mutation == ServeMut::SinkNan;
    let narrow = |x: &[i64]| -> Vec<i32> { x.iter().map(|&v| v as i32).collect() };
    let (cu_q32, cu_k32, used32) = (narrow(&cu_q), narrow(&cu_k), narrow(&used));
    let ptr = |a: &Vec<i64>, b: &Vec<i32>| -> *const std::ffi::c_void {
        if i64s { a.as_ptr().cast() } else { b.as_ptr().cast() }
    };
    let mut seqs = fa_varlen_seqs::default();
    seqs.batch = n;
    seqs.index_dtype = index_dtype;
    seqs.cu_seqlens_q = ptr(&cu_q, &cu_q32);
    seqs.cu_seqlens_k = ptr(&cu_k, &cu_k32);
    if with_used {
        seqs.seqused_k = ptr(&used, &used32);
    }
    if paged {
        seqs.block_table = table.as_ptr();
        seqs.blocks_per_seq = bps;
    }
    let mut opts = fa_sdpa_options::default();
    opts.causal = causal as i32;
    opts.lse = lse_p;
    if with_sinks {
        opts.sinks = sinks.as_ptr();
    }
    let q_t = tensor(q.as_mut_ptr(), [1, hq, tq, d], packed(hq, tq, d));
    let (k_t, v_t) = if paged {
        (kct, tensor(vc.as_mut_ptr(), cd, contiguous(cd)))
    } else {
        (kt, vt)
    };
    let mut o_t = tensor(out_p, [1, hq, tq, d], packed(hq, tq, d));
    let sp: *const fa_varlen_seqs = if mutation == ServeMut::NullSeqs { null() } else { &seqs };
    let q_before = q.clone();
    // SAFETY: every view covers exactly its buffer; the arrays hold what `seqs` says.
    let rc: c_int = unsafe { fa_sdpa_varlen(&q_t, &k_t, &v_t, &mut o_t, sp, &opts) };
    if let Some(want) = want {
        refused(rc, want, "fa_sdpa_varlen", &format!("{mutation:?}"));
        assert!(out.iter().chain(&lse).all(|&x| x == SENTINEL), "{mutation:?}: an output was written");
        assert!(q == q_before, "{mutation:?}: q was written");
        return Ok(());
    }
    assert_eq!(rc, code(FA_OK), "fa_sdpa_varlen {mutation:?}: {}", last_error());
    let mut rs = VarlenSeqs::new(SeqIdx::I64(&cu_q)).with_cu_seqlens_k(SeqIdx::I64(&cu_k));
    if with_used {
        rs = rs.with_seqused_k(SeqIdx::I64(&used));
    }
    let (kr, vr): (&[f32], &[f32]) = if paged {
        rs = rs.with_block_table(&table, bps);
        (&kc, &vc)
    } else {
        (&k, &v)
    };
    let kvd = if paged { cd } else { [1, hkv, tk, d] };
    let kvs = if paged { contiguous(cd) } else { packed(hkv, tk, d) };
    let kvs = kvs.map(|x| x as usize);
    let mut ro = vec![0.0f32; out.len()];
    let mut rl = vec![0.0f32; lse.len()];
    let ps = packed(hq, tq, d).map(|x| x as usize);
    let r = SdpaOptions::default()
        .with_causal(causal)
        .with_sinks(with_sinks.then_some(&sinks[..]));
    attention::sdpa_varlen_into_dyn(
        TensorRef::new(&q, [1, hq, tq, d], ps).unwrap().into(),
        TensorRef::new(kr, kvd, kvs).unwrap().into(),
        TensorRef::new(vr, kvd, kvs).unwrap().into(),
        TensorMut::new(&mut ro, [1, hq, tq, d], ps).unwrap().into(),
        &rs,
        &r,
        Some(&mut rl),
    )
    .unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(bits(&out) == bits(&ro) && bits(&lse) == bits(&rl), "fa_sdpa_varlen differs from the Rust call");
    Ok(())
}
