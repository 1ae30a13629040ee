//! Paged KV caches: writing new key and value rows into their pages.
//!
//! A paged cache stores K (and V) as `[num_blocks, block_size, Hkv, D]`, FlashAttention-2's
//! layout and that of the per-layer views of transformers' paged cache: page `p` holds the
//! rows of `block_size` consecutive positions of one sequence, for every key/value head. A
//! token's place is its **slot**, `p · block_size + offset`. [`paged_kv_write`] scatters new
//! rows to their slots, as vLLM's `reshape_and_cache` does; attention over the pages
//! through a block table is the serving work that builds on it.

use crate::error::{AttnError, Result};
use crate::tensor::{convert_row, TensorMut, TensorRef};
use kernels::{Element, Isa};

/// Writes the new key and value rows of `T` tokens into paged caches, converted to the
/// caches' element type (exact, or rounded to nearest even; the same bits on every ISA).
///
/// - `k`, `v`: the new rows as `[1, Hkv, T, D]` / `[1, Hkv, T, Dv]` views: token `t` of head
///   `h` at `[0, h, t, ..]`. A packed `[T, Hkv, D]` buffer is the view with strides
///   `[T·Hkv·D, D, Hkv·D, 1]`; any strides are accepted.
/// - `k_cache`, `v_cache`: `[num_blocks, block_size, Hkv, D]` / `[.., Dv]` views (any
///   strides), the same `num_blocks` and `block_size`.
/// - `slot_mapping[t]`: where token `t` goes, `block · block_size + offset`; `-1` skips
///   the token (as vLLM's padding tokens). Two tokens with one slot: the later one wins.
///
/// ```
/// use fastattn_attention::{paged_kv_write, TensorMut, TensorRef, bf16};
/// // Two tokens, one KV head of 4, into a bf16 cache of 3 pages of 2 slots.
/// let k = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let mut kc = vec![bf16::ZERO; 3 * 2 * 4];
/// let mut vc = vec![bf16::ZERO; 3 * 2 * 4];
/// let rows = TensorRef::new(&k, [1, 1, 2, 4], [8, 4, 4, 1])?;
/// paged_kv_write(rows, rows, TensorMut::contiguous(&mut kc, [3, 2, 1, 4])?,
///                TensorMut::contiguous(&mut vc, [3, 2, 1, 4])?, &[5, -1])?;
/// assert_eq!(kc[5 * 4].to_f32(), 1.0); // token 0 → page 2, offset 1
/// assert!(kc[..5 * 4].iter().all(|x| x.to_f32() == 0.0)); // token 1 skipped
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
///
/// # Errors
/// Before anything is written: [`AttnError::Shape`] when the views disagree (batch ≠ 1,
/// token or head counts, `D`/`Dv`, the two caches' pages) or `slot_mapping` does not hold
/// one slot per token; [`AttnError::Option`] for a slot below `-1` or past the cache
/// (`num_blocks · block_size`); [`AttnError::Kernel`] when the forced ISA is missing.
pub fn paged_kv_write<S: Element, T: Element>(
    k: TensorRef<'_, S>,
    v: TensorRef<'_, S>,
    mut k_cache: TensorMut<'_, T>,
    mut v_cache: TensorMut<'_, T>,
    slot_mapping: &[i64],
) -> Result<()> {
    check_write(
        k.dims(),
        v.dims(),
        k_cache.dims(),
        v_cache.dims(),
        slot_mapping,
    )?;
    let [_, hkv, _, _] = k.dims();
    let bs = k_cache.dims()[1];
    let isa = kernels::current_isa()?;
    for (t, &s) in slot_mapping.iter().enumerate() {
        if s < 0 {
            continue;
        }
        let (page, off) = (s as usize / bs, s as usize % bs);
        for h in 0..hkv {
            write_row(isa, &k, h, t, &mut k_cache, page, off)?;
            write_row(isa, &v, h, t, &mut v_cache, page, off)?;
        }
    }
    Ok(())
}

/// Row `[0, h, t, ..]` of `src` into row `[page, off, h, ..]` of `dst`, converted.
fn write_row<S: Element, T: Element>(
    isa: Isa,
    src: &TensorRef<'_, S>,
    h: usize,
    t: usize,
    dst: &mut TensorMut<'_, T>,
    page: usize,
    off: usize,
) -> Result<()> {
    let (s0, ss) = (src.offset(0, h, t, 0), src.strides()[3]);
    let (d0, ds) = (dst.offset(page, off, h, 0), dst.strides()[3]);
    let n = src.dims()[3];
    convert_row(isa, src.data(), s0, ss, dst.data_mut(), d0, ds, n)
}

/// The checks of [`paged_kv_write`] (and its 8-bit twin) on the dims of the new rows, the
/// caches and the slot mapping.
pub(crate) fn check_write(
    k: [usize; 4],
    v: [usize; 4],
    k_cache: [usize; 4],
    v_cache: [usize; 4],
    slot_mapping: &[i64],
) -> Result<()> {
    let [kb, hkv, tokens, d] = k;
    let [vb, vh, vt, dv] = v;
    let [nblk, bs, ch, cd] = k_cache;
    let [vnblk, vbs, vch, cdv] = v_cache;
    let shape = |what: String| Err(AttnError::Shape { what });
    if kb != 1 || vb != 1 {
        return shape(format!(
            "paged_kv_write: new rows are [1, Hkv, T, D], got batch {kb} (k) and {vb} (v)"
        ));
    }
    if (vh, vt) != (hkv, tokens) {
        return shape(format!(
            "paged_kv_write: k has {hkv} heads × {tokens} tokens, v {vh} × {vt}"
        ));
    }
    if (ch, cd) != (hkv, d) || (vch, cdv) != (hkv, dv) {
        return shape(format!(
            "paged_kv_write: caches [.., .., {ch}, {cd}] and [.., .., {vch}, {cdv}] do not \
             hold rows of {hkv} heads × {d} (k) / {dv} (v)"
        ));
    }
    if (vnblk, vbs) != (nblk, bs) {
        return shape(format!(
            "paged_kv_write: k cache has {nblk} pages of {bs}, v cache {vnblk} of {vbs}"
        ));
    }
    if slot_mapping.len() != tokens {
        return shape(format!(
            "paged_kv_write: slot_mapping has {} entries for {tokens} tokens",
            slot_mapping.len()
        ));
    }
    let slots = nblk.checked_mul(bs).ok_or(AttnError::Overflow {
        what: "paged cache slots",
    })?;
    if let Some((t, &s)) = slot_mapping
        .iter()
        .enumerate()
        .find(|&(_, &s)| s < -1 || (s >= 0 && s as u64 >= slots as u64))
    {
        return Err(AttnError::Option {
            what: format!(
                "paged_kv_write: slot_mapping[{t}] = {s} is neither -1 nor a slot of the \
                 cache (0..{slots})"
            ),
        });
    }
    Ok(())
}
