//! `paged_kv_write`: new rows scattered to their slots of a `[num_blocks, block_size, Hkv,
//! D]` cache, converted, against a plain reference loop; skipped slots; bad input refused
//! with nothing written.

use fastattn_attention::{bf16, f16, paged_kv_write, AttnError, Element, TensorMut, TensorRef};
use rand::seq::SliceRandom;
use rand::Rng;
use testutil::{assert_err, rand_t, seeded};

/// The reference: every element by hand, through f32.
#[allow(clippy::too_many_arguments)]
fn write_ref<S: Element, T: Element>(
    src: &[S],
    src_strides: [usize; 4],
    cache: &mut [T],
    [_, bs, hkv, d]: [usize; 4],
    cache_pad: usize,
    tokens: usize,
    slots: &[i64],
) {
    for (t, &slot) in slots.iter().enumerate().take(tokens) {
        let Ok(s) = usize::try_from(slot) else {
            continue;
        };
        let (page, off) = (s / bs, s % bs);
        for h in 0..hkv {
            for x in 0..d {
                let i = h * src_strides[1] + t * src_strides[2] + x * src_strides[3];
                let o = ((page * bs + off) * hkv + h) * (d + cache_pad) + x;
                cache[o] = T::from_f32(src[i].to_f32());
            }
        }
    }
}

/// One case: `tokens` rows of `hkv × d` into `nblk` pages of `bs`, packed `[T, Hkv, D]`
/// source (`packed`) or head-major `[Hkv, T, D]`, cache rows padded by `pad` elements.
#[allow(clippy::too_many_arguments)]
fn case<S: Element, T: Element>(
    seed: u64,
    nblk: usize,
    bs: usize,
    hkv: usize,
    d: usize,
    tokens: usize,
    packed: bool,
    pad: usize,
) {
    let label = format!(
        "seed {seed}, {} -> {}, {nblk} pages of {bs}, {hkv}x{d}, {tokens} tokens, packed {packed}, pad {pad}",
        S::DTYPE, T::DTYPE
    );
    let mut rng = seeded(seed);
    // Distinct slots (a shuffled sample of the cache), some skipped.
    let mut all: Vec<i64> = (0..(nblk * bs) as i64).collect();
    all.shuffle(&mut rng);
    let slots: Vec<i64> = (0..tokens)
        .map(|t| if rng.random_bool(0.2) { -1 } else { all[t] })
        .collect();
    let k: Vec<S> = rand_t(&mut rng, tokens * hkv * d);
    let v: Vec<S> = rand_t(&mut rng, tokens * hkv * d);
    let st = if packed {
        [tokens * hkv * d, d, hkv * d, 1]
    } else {
        [tokens * hkv * d, tokens * d, d, 1]
    };
    let dims = [nblk, bs, hkv, d];
    let cst = [bs * hkv * (d + pad), hkv * (d + pad), d + pad, 1];
    let len = nblk * bs * hkv * (d + pad);
    let fill: Vec<T> = rand_t(&mut rng, len);
    let (mut kc, mut vc) = (fill.clone(), fill.clone());
    let (mut kr, mut vr) = (fill.clone(), fill);
    paged_kv_write(
        TensorRef::new(&k, [1, hkv, tokens, d], st).unwrap(),
        TensorRef::new(&v, [1, hkv, tokens, d], st).unwrap(),
        TensorMut::new(&mut kc, dims, cst).unwrap(),
        TensorMut::new(&mut vc, dims, cst).unwrap(),
        &slots,
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    write_ref(&k, st, &mut kr, dims, pad, tokens, &slots);
    write_ref(&v, st, &mut vr, dims, pad, tokens, &slots);
    for (i, (got, want)) in kc.iter().zip(&kr).chain(vc.iter().zip(&vr)).enumerate() {
        assert_eq!(
            got.to_f32().to_bits(),
            want.to_f32().to_bits(),
            "{label}: element {i}"
        );
    }
}

#[test]
fn paged_kv_write_matches_the_reference_for_every_type_pair_and_page_size() {
    let mut seed = 0;
    for &(nblk, bs, hkv, d, tokens) in &[
        (5, 1, 2, 8, 5),
        (3, 7, 1, 13, 20),
        (4, 16, 4, 64, 37),
        (2, 256, 2, 128, 300),
        (3, 4, 3, 1, 0),
    ] {
        for (packed, pad) in [(true, 0), (false, 3)] {
            seed += 1;
            case::<f32, f32>(seed, nblk, bs, hkv, d, tokens, packed, pad);
            case::<f32, bf16>(seed, nblk, bs, hkv, d, tokens, packed, pad);
            case::<f32, f16>(seed, nblk, bs, hkv, d, tokens, packed, pad);
            case::<bf16, f32>(seed, nblk, bs, hkv, d, tokens, packed, pad);
            case::<f16, bf16>(seed, nblk, bs, hkv, d, tokens, packed, pad);
            case::<bf16, bf16>(seed, nblk, bs, hkv, d, tokens, packed, pad);
        }
    }
}

#[test]
fn paged_kv_write_with_a_strided_row_matches_the_reference() {
    // A source whose rows are not unit-stride: every second element of a wider buffer.
    let (hkv, d, tokens, nblk, bs) = (2, 5, 3, 2, 2);
    let mut rng = seeded(99);
    let k: Vec<f32> = rand_t(&mut rng, 2 * tokens * hkv * d);
    let st = [2 * tokens * hkv * d, 2 * d, 2 * hkv * d, 2];
    let slots = [3i64, 0, 2];
    let dims = [nblk, bs, hkv, d];
    let mut kc = vec![bf16::ZERO; nblk * bs * hkv * d];
    let mut vc = kc.clone();
    let mut kr = kc.clone();
    let rows = TensorRef::new(&k, [1, hkv, tokens, d], st).unwrap();
    paged_kv_write(
        rows,
        rows,
        TensorMut::contiguous(&mut kc, dims).unwrap(),
        TensorMut::contiguous(&mut vc, dims).unwrap(),
        &slots,
    )
    .unwrap();
    write_ref(&k, st, &mut kr, dims, 0, tokens, &slots);
    assert_eq!(kc, kr);
    assert_eq!(vc, kr);
}

#[test]
fn paged_kv_write_refuses_bad_input_and_writes_nothing() {
    let (hkv, d, tokens, nblk, bs) = (2, 4, 3, 2, 4);
    let k = vec![1.0f32; hkv * tokens * d];
    let rows = TensorRef::contiguous(&k, [1, hkv, tokens, d]).unwrap();
    let dims = [nblk, bs, hkv, d];
    let mut kc = vec![0.0f32; nblk * bs * hkv * d];
    let mut vc = kc.clone();
    let mut run =
        |k: TensorRef<'_, f32>, v: TensorRef<'_, f32>, vdims: [usize; 4], slots: &[i64]| {
            let vlen = vdims.iter().product();
            let r = paged_kv_write(
                k,
                v,
                TensorMut::contiguous(&mut kc, dims).unwrap(),
                TensorMut::contiguous(&mut vc[..vlen], vdims).unwrap(),
                slots,
            );
            assert!(kc.iter().chain(&vc).all(|&x| x == 0.0), "nothing written");
            r
        };
    // A slot past the cache, after a valid one (which must not be written either).
    assert_err!(run(rows, rows, dims, &[0, 8, 1]), AttnError::Option { .. });
    // A slot below -1.
    assert_err!(run(rows, rows, dims, &[0, -2, 1]), AttnError::Option { .. });
    // One slot per token.
    assert_err!(run(rows, rows, dims, &[0, 1]), AttnError::Shape { .. });
    // Batch of new rows not 1.
    let b2 = TensorRef::contiguous(&k, [2, 1, tokens, d]).unwrap();
    assert_err!(run(b2, b2, dims, &[0, 1, 2]), AttnError::Shape { .. });
    // Heads of K and V differ.
    let h1 = TensorRef::contiguous(&k[..tokens * d], [1, 1, tokens, d]).unwrap();
    assert_err!(run(rows, h1, dims, &[0, 1, 2]), AttnError::Shape { .. });
    // The cache's D differs from the rows'.
    let d2 = TensorRef::contiguous(&k[..hkv * tokens * 2], [1, hkv, tokens, 2]).unwrap();
    assert_err!(run(d2, d2, dims, &[0, 1, 2]), AttnError::Shape { .. });
    // The caches' pages differ.
    assert_err!(
        run(rows, rows, [nblk, bs - 1, hkv, d], &[0, 1, 2]),
        AttnError::Shape { .. }
    );
    // A cache with no slots accepts only skipped tokens.
    assert_err!(
        run(rows, rows, dims, &[-1, -1, 8]),
        AttnError::Option { .. }
    );
    run(rows, rows, dims, &[-1, -1, -1]).unwrap();
}
