//! One test per attention row (`A*`) of the bad-input catalogue in `docs/HARDENING.md`
//! (Rust API): every kind of bad input the public attention APIs can get, and the exact
//! error (or the defined result) it gets. The kernels rows (`K*`) are in the kernels
//! crate's `tests/bad_input.rs`. Tests marked `#[ignore = "bug: ..."]` are known bugs:
//! they fail today and state what the fixed library must do.
//!
//! Row ids (`K1`, `A7`, ...) are those of the catalogue.

use fastattn_attention::reference::sdpa_ref;
use fastattn_attention::{
    sdpa, sdpa_into, sdpa_with_weights, AttnError, AttnPath, KvCache, Mask, MhaConfig, MhaWeights,
    MultiHeadAttention, RopeConfig, SdpaOptions, SdpaOutputs, TensorMut, TensorRef,
};
use kernels::{Isa, KernelError};
use testutil::{assert_err, max_abs_diff, missing_isa, seq};

/// A dense `[1, 1, l, d]` view.
fn t1(x: &[f32], l: usize, d: usize) -> TensorRef<'_> {
    TensorRef::contiguous(x, [1, 1, l, d]).unwrap()
}

fn qkv(dims: [usize; 4]) -> Vec<f32> {
    seq(dims.iter().product(), 0.37)
}

#[test]
fn a01_tensor_view_past_its_buffer_is_layout() {
    let x = vec![0.0f32; 63];
    assert_err!(
        TensorRef::contiguous(&x, [1, 2, 8, 4]),
        AttnError::Layout { .. }
    );
    assert_err!(
        TensorRef::new(&x, [1, 1, 2, 2], [0, 0, 62, 1]),
        AttnError::Layout { .. }
    );
    let mut o = vec![0.0f32; 63];
    assert_err!(
        TensorMut::from_blhd(&mut o, [1, 2, 8, 4]),
        AttnError::Layout { .. }
    );
}

#[test]
fn a02_tensor_whose_size_overflows_is_overflow() {
    let x = vec![0.0f32; 8];
    assert_err!(
        TensorRef::contiguous(&x, [usize::MAX, 2, 2, 2]),
        AttnError::Overflow { what: "tensor" }
    );
    // Zero strides keep the extent small, but the element count still overflows.
    assert_err!(
        TensorRef::new(&x, [1 << 40, 1 << 40, 1, 1], [0, 0, 0, 0]),
        AttnError::Overflow { .. }
    );
    let mut o = vec![0.0f32; 8];
    assert_err!(
        TensorMut::new(&mut o, [3, 2, 2, 2], [usize::MAX / 2, 1, 1, 1]),
        AttnError::Overflow {
            what: "output tensor"
        }
    );
}

#[test]
fn a03_contiguous_and_blhd_views_with_overflowing_dims_are_overflow_errors() {
    let x = vec![0.0f32; 8];
    let dims = [1, 1 << 32, 1 << 32, 1];
    let r = std::panic::catch_unwind(|| {
        (
            TensorRef::contiguous(&x, dims).map(|_| ()),
            TensorRef::from_blhd(&x, dims).map(|_| ()),
        )
    });
    let (a, b) = r.expect("no panic");
    assert_err!(a, AttnError::Overflow { .. });
    assert_err!(b, AttnError::Overflow { .. });
}

#[test]
fn a04_output_view_aliasing_itself_is_layout() {
    let mut o = vec![0.0f32; 64];
    assert_err!(
        TensorMut::new(&mut o, [1, 2, 8, 4], [0, 0, 4, 1]),
        AttnError::Layout { .. }
    );
    assert_err!(
        TensorMut::new(&mut o, [1, 2, 4, 4], [32, 4, 2, 1]),
        AttnError::Layout { .. }
    );
    // Output overlapping an input: refused at compile time (`&mut` vs `&`), as for GEMM.
}

#[test]
fn a05_mismatched_attention_shapes_are_shape() {
    let x = qkv([2, 4, 8, 8]);
    let t = |dims| TensorRef::contiguous(&x, dims).unwrap();
    let d = SdpaOptions::default();
    // Batch sizes differ.
    assert_err!(
        sdpa(t([1, 2, 4, 4]), t([2, 2, 4, 4]), t([2, 2, 4, 4]), &d),
        AttnError::Shape { .. }
    );
    // Head dims differ.
    assert_err!(
        sdpa(t([1, 2, 4, 4]), t([1, 2, 4, 5]), t([1, 2, 4, 4]), &d),
        AttnError::Shape { .. }
    );
    // K and V disagree on Hkv or Lk.
    assert_err!(
        sdpa(t([1, 2, 4, 4]), t([1, 2, 4, 4]), t([1, 1, 4, 4]), &d),
        AttnError::Shape { .. }
    );
    assert_err!(
        sdpa(t([1, 2, 4, 4]), t([1, 2, 4, 4]), t([1, 2, 5, 4]), &d),
        AttnError::Shape { .. }
    );
}

#[test]
fn a06_hq_not_a_multiple_of_hkv_is_head_groups() {
    let x = qkv([1, 6, 4, 4]);
    let t = |dims| TensorRef::contiguous(&x, dims).unwrap();
    let d = SdpaOptions::default();
    assert_err!(
        sdpa(t([1, 4, 4, 4]), t([1, 3, 4, 4]), t([1, 3, 4, 4]), &d),
        AttnError::HeadGroups { hq: 4, hkv: 3 }
    );
    assert_err!(
        sdpa(t([1, 2, 4, 4]), t([1, 0, 4, 4]), t([1, 0, 4, 4]), &d),
        AttnError::HeadGroups { hq: 2, hkv: 0 }
    );
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(16, 4).with_kv_heads(3), false, 1),
        AttnError::HeadGroups { hq: 4, hkv: 3 }
    );
}

#[test]
fn a07_wrong_output_weights_or_lse_sizes_are_shape() {
    let x = qkv([1, 2, 4, 4]);
    let t = TensorRef::contiguous(&x, [1, 2, 4, 4]).unwrap();
    let d = SdpaOptions::default();
    let mut o = vec![7.0f32; 64];
    let run = |o: &mut [f32], od, extras| {
        sdpa_into(t, t, t, TensorMut::contiguous(o, od).unwrap(), &d, extras)
    };
    assert_err!(
        run(&mut o, [1, 2, 4, 5], SdpaOutputs::default()),
        AttnError::Shape { .. }
    );
    let mut w = vec![0.0f32; 64];
    assert_err!(
        run(
            &mut o,
            [1, 2, 4, 4],
            SdpaOutputs::default()
                .with_weights(Some(TensorMut::contiguous(&mut w, [1, 2, 4, 3]).unwrap()))
                .with_lse(None)
        ),
        AttnError::Shape { .. }
    );
    let mut lse = vec![0.0f32; 7];
    assert_err!(
        run(
            &mut o,
            [1, 2, 4, 4],
            SdpaOutputs::default()
                .with_weights(None)
                .with_lse(Some(&mut lse))
        ),
        AttnError::Shape { .. }
    );
    assert!(o.iter().all(|&v| v == 7.0), "nothing written on error");
}

#[test]
fn a08_mask_of_the_wrong_shape_is_option() {
    let x = qkv([2, 2, 4, 4]);
    let t = TensorRef::contiguous(&x, [2, 2, 4, 4]).unwrap();
    let bools = vec![true; 2 * 2 * 4 * 5];
    let adds = vec![0.0f32; 2 * 3 * 4 * 4];
    for (what, mask) in [
        (
            "Lk",
            Mask::Bool(TensorRef::contiguous(&bools, [1, 1, 4, 5]).unwrap()),
        ),
        (
            "Lq",
            Mask::Bool(TensorRef::contiguous(&bools, [1, 1, 5, 4]).unwrap()),
        ),
        (
            "heads not Hq|1",
            Mask::Additive(TensorRef::contiguous(&adds, [1, 3, 4, 4]).unwrap()),
        ),
        (
            "batch not B|1",
            Mask::Additive(TensorRef::contiguous(&adds, [3, 1, 4, 4]).unwrap()),
        ),
    ] {
        let o = SdpaOptions::default().with_mask(Some(mask));
        let r = sdpa(t, t, t, &o);
        assert!(matches!(r, Err(AttnError::Option { .. })), "{what}: {r:?}");
    }
}

#[test]
fn a09_key_lengths_of_the_wrong_count_or_above_lk_are_option() {
    let x = qkv([2, 1, 4, 4]);
    let t = TensorRef::contiguous(&x, [2, 1, 4, 4]).unwrap();
    for lens in [&[4usize][..], &[4, 4, 4], &[4, 5]] {
        let o = SdpaOptions::default().with_kv_lengths(Some(lens));
        assert_err!(sdpa(t, t, t, &o), AttnError::Option { .. });
    }
}

#[test]
fn a10_alibi_slopes_of_the_wrong_count_or_not_finite_are_option() {
    let x = qkv([1, 2, 4, 4]);
    let t = TensorRef::contiguous(&x, [1, 2, 4, 4]).unwrap();
    for slopes in [
        &[0.5f32][..],
        &[0.5, 0.25, 0.125],
        &[0.5, f32::NAN],
        &[f32::INFINITY, 0.5],
    ] {
        let o = SdpaOptions::default().with_alibi_slopes(Some(slopes));
        assert_err!(sdpa(t, t, t, &o), AttnError::Option { .. });
    }
}

#[test]
fn a11_non_finite_scale_or_bad_softcap_are_option() {
    let x = qkv([1, 1, 4, 4]);
    let t = TensorRef::contiguous(&x, [1, 1, 4, 4]).unwrap();
    for scale in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let o = SdpaOptions::default().with_scale(Some(scale));
        assert_err!(sdpa(t, t, t, &o), AttnError::Option { .. });
    }
    for cap in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let o = SdpaOptions::default().with_softcap(Some(cap));
        assert_err!(sdpa(t, t, t, &o), AttnError::Option { .. });
    }
}

#[test]
fn a12_weights_with_the_flash_path_forced_is_option() {
    let x = qkv([1, 1, 4, 4]);
    let t = TensorRef::contiguous(&x, [1, 1, 4, 4]).unwrap();
    let o = SdpaOptions::default().with_path(AttnPath::Flash);
    let mut out = vec![0.0f32; 16];
    let mut w = vec![0.0f32; 16];
    assert_err!(
        sdpa_into(
            t,
            t,
            t,
            TensorMut::contiguous(&mut out, [1, 1, 4, 4]).unwrap(),
            &o,
            SdpaOutputs::default()
                .with_weights(Some(TensorMut::contiguous(&mut w, [1, 1, 4, 4]).unwrap()))
                .with_lse(None),
        ),
        AttnError::Option { .. }
    );
    assert_err!(sdpa_with_weights(t, t, t, &o), AttnError::Option { .. });
}

#[test]
fn a13_forcing_an_isa_the_cpu_lacks_is_a_kernel_error() {
    let isa = missing_isa();
    let x = qkv([1, 1, 4, 4]);
    let t = TensorRef::contiguous(&x, [1, 1, 4, 4]).unwrap();
    let o = SdpaOptions::default().with_isa(Some(isa));
    assert_eq!(
        sdpa(t, t, t, &o),
        Err(AttnError::Kernel(KernelError::UnsupportedIsa {
            isa: isa.name().into()
        }))
    );
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(8, 2).with_isa(isa), false, 1),
        AttnError::Kernel(KernelError::UnsupportedIsa { .. })
    );
}

/// `FASTATTN_ISA` naming an ISA this CPU lacks (K9 for the kernels): attention calls fail
/// with the kernel error instead of crashing, and a per-call ISA still works.
#[test]
fn a13b_fastattn_isa_naming_a_missing_isa_makes_sdpa_fail_not_crash() {
    if testutil::child::is_child() {
        // Child: FASTATTN_ISA names an ISA this CPU lacks.
        let x = [1.0f32; 4];
        let t = TensorRef::contiguous(&x, [1, 1, 2, 2]).unwrap();
        assert_err!(
            sdpa(t, t, t, &SdpaOptions::default()),
            AttnError::Kernel(KernelError::UnsupportedIsa { .. })
        );
        // A per-call ISA still works.
        let o = SdpaOptions::default().with_isa(Some(Isa::Scalar));
        sdpa(t, t, t, &o).unwrap();
        return;
    }
    for value in [missing_isa().name(), "sse9"] {
        testutil::child::run_as_child(
            "a13b_fastattn_isa_naming_a_missing_isa_makes_sdpa_fail_not_crash",
            &[("FASTATTN_ISA", value)],
        );
    }
}

#[test]
fn a14_zero_sizes_give_defined_results() {
    let x = qkv([1, 2, 4, 4]);
    let d = SdpaOptions::default();
    // B, Hq or Lq = 0: an empty output, nothing else.
    for qd in [[0, 2, 4, 4], [1, 0, 4, 4], [1, 2, 0, 4]] {
        let kd = [qd[0], if qd[1] == 0 { 0 } else { 2 }, 4, 4];
        let q = TensorRef::contiguous(&x, qd).unwrap();
        let k = TensorRef::contiguous(&x, kd).unwrap();
        assert_eq!(sdpa(q, k, k, &d).unwrap(), Vec::<f32>::new(), "{qd:?}");
    }
    let q = TensorRef::contiguous(&x, [1, 2, 4, 4]).unwrap();
    // Lk = 0: no key is visible: zeros, LSE −inf (both paths).
    let k0 = TensorRef::<f32>::contiguous(&[], [1, 2, 0, 4]).unwrap();
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        let mut out = vec![f32::NAN; 32];
        let mut lse = vec![0.0f32; 8];
        sdpa_into(
            q,
            k0,
            k0,
            TensorMut::contiguous(&mut out, [1, 2, 4, 4]).unwrap(),
            &d.clone().with_path(path),
            SdpaOutputs::default()
                .with_weights(None)
                .with_lse(Some(&mut lse)),
        )
        .unwrap();
        assert_eq!(out, vec![0.0; 32], "{path:?}");
        assert_eq!(lse, vec![f32::NEG_INFINITY; 8], "{path:?}");
    }
    // D = 0: every score is 0, so the output is the mean of the visible values.
    let e: [f32; 0] = [];
    let q0 = TensorRef::contiguous(&e, [1, 1, 2, 0]).unwrap();
    let k0 = TensorRef::contiguous(&e, [1, 1, 2, 0]).unwrap();
    let v = TensorRef::contiguous(&[1.0, 3.0, 5.0, 7.0], [1, 1, 2, 2]).unwrap();
    assert_eq!(sdpa(q0, k0, v, &d).unwrap(), [3.0, 5.0, 3.0, 5.0]);
    // Dv = 0: an empty output.
    let v0 = TensorRef::contiguous(&e, [1, 2, 4, 0]).unwrap();
    assert_eq!(sdpa(q, q, v0, &d).unwrap(), Vec::<f32>::new());
}

#[test]
fn a15_sdpa_with_empty_dv_still_fills_lse_and_weights() {
    let x = qkv([1, 1, 4, 2]);
    let t = TensorRef::contiguous(&x, [1, 1, 4, 2]).unwrap();
    let v0 = TensorRef::<f32>::contiguous(&[], [1, 1, 4, 0]).unwrap();
    let d = SdpaOptions::default();
    let want = sdpa_ref(t, t, v0, &d).unwrap();
    let (_, w) = sdpa_with_weights(t, t, v0, &d).unwrap();
    for (g, r) in w.iter().zip(&want.weights) {
        assert!(
            (g - r).abs() < 1e-5,
            "weights {w:?}, want {:?}",
            want.weights
        );
    }
}

#[test]
fn a16_empty_tensors_with_huge_extents_are_overflow_not_a_panic() {
    // B·Hq·Lq·Lk·(D + Dv) is refused when it overflows, even when a zero extent makes the
    // tensors empty (every size product the paths form must fit).
    let e: [f32; 0] = [];
    let q = TensorRef::contiguous(&e, [1 << 62, 8, 0, 4]).unwrap();
    let mut o: [f32; 0] = [];
    assert_err!(
        sdpa_into(
            q,
            q,
            q,
            TensorMut::contiguous(&mut o, [1 << 62, 8, 0, 4]).unwrap(),
            &SdpaOptions::default(),
            SdpaOutputs::default(),
        ),
        AttnError::Overflow { .. }
    );
}

#[test]
fn a17_broadcast_keys_whose_problem_size_overflows_are_overflow() {
    // Zero strides let a one-element buffer stand for 2^60 keys; the problem size
    // 4·Lq·Lk·(D + Dv) overflows and is refused before any buffer is sized from it.
    let q = vec![0.5f32; 16];
    let one = [1.0f32];
    let qt = TensorRef::contiguous(&q, [1, 1, 16, 1]).unwrap();
    let kt = TensorRef::new(&one, [1, 1, 1 << 60, 1], [0, 0, 0, 0]).unwrap();
    for path in [AttnPath::Materialized, AttnPath::Flash] {
        let o = SdpaOptions::default().with_path(path);
        assert_err!(sdpa(qt, kt, kt, &o), AttnError::Overflow { .. });
    }
}

#[test]
fn a18_sdpa_with_zero_head_dim_and_strided_q_does_not_panic() {
    let e: [f32; 0] = [];
    let q = TensorRef::new(&e, [1, 1, 2, 0], [8, 8, 4, 1]).unwrap();
    let k = TensorRef::contiguous(&e, [1, 1, 3, 0]).unwrap();
    let v = TensorRef::contiguous(&[1.0, 2.0, 3.0], [1, 1, 3, 1]).unwrap();
    let r = std::panic::catch_unwind(|| sdpa(q, k, v, &SdpaOptions::default()));
    let out = r.expect("no panic").unwrap();
    assert_eq!(out, [2.0, 2.0]);
}

#[test]
fn a19_huge_sizes_are_overflow_errors() {
    let x = [0.0f32; 1];
    // Broadcast views make the output size overflow: sdpa refuses before allocating.
    let q = TensorRef::new(&x, [1 << 31, 1 << 31, 1, 1], [0, 0, 0, 0]).unwrap();
    let k = TensorRef::new(&x, [1 << 31, 1, 1, 1], [0, 0, 0, 0]).unwrap();
    let v = TensorRef::new(&x, [1 << 31, 1, 1, 4], [0, 0, 0, 0]).unwrap();
    assert_err!(
        sdpa(q, k, v, &SdpaOptions::default()),
        AttnError::Overflow { what: "output" }
    );
    let q = TensorRef::new(&x, [1, 1 << 32, 1 << 16, 1], [0, 0, 0, 0]).unwrap();
    let k = TensorRef::new(&x, [1, 1, 1 << 16, 1], [0, 0, 0, 0]).unwrap();
    assert_err!(
        sdpa_with_weights(q, k, k, &SdpaOptions::default()),
        AttnError::Overflow { what: "weights" }
    );
    assert_err!(
        KvCache::new(1 << 20, 1 << 20, 1 << 20, 1 << 20),
        AttnError::Overflow { what: "KV cache" }
    );
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(1 << 62, 2), false, 1),
        AttnError::Overflow { what: "weights" }
    );
    let layer = MultiHeadAttention::random(MhaConfig::new(8, 2), false, 1).unwrap();
    assert_err!(
        layer.forward(&[], usize::MAX, 2, &SdpaOptions::default()),
        AttnError::Overflow { .. }
    );
    assert_err!(
        layer.new_cache(usize::MAX, 2),
        AttnError::Overflow { what: "KV cache" }
    );
}

#[test]
fn a20_nan_and_inf_inputs_poison_exactly_the_rows_that_see_them() {
    let (l, d) = (16, 4);
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        let o = SdpaOptions::default().with_causal(true).with_path(path);
        // NaN in Q row 3: output row 3 is NaN, the others are finite.
        let mut q = seq(l * d, 0.37);
        q[3 * d] = f32::NAN;
        let k = seq(l * d, 0.21);
        let v = seq(l * d, 0.11);
        let out = sdpa(t1(&q, l, d), t1(&k, l, d), t1(&v, l, d), &o).unwrap();
        for i in 0..l {
            let nan = out[i * d..(i + 1) * d].iter().any(|x| x.is_nan());
            assert_eq!(nan, i == 3, "{path:?}: NaN in Q row 3, out row {i}");
        }
        // NaN or inf in K row 5: earlier rows (causal: they cannot see key 5) equal the
        // clean result; later rows are NaN for a NaN key (for an inf key: NaN where the
        // score is +inf, the key ignored where it is −inf).
        let clean = sdpa(t1(&seq(l * d, 0.37), l, d), t1(&k, l, d), t1(&v, l, d), &o).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut k2 = k.clone();
            k2[5 * d + 1] = bad;
            let out = sdpa(t1(&seq(l * d, 0.37), l, d), t1(&k2, l, d), t1(&v, l, d), &o).unwrap();
            for i in 0..l {
                let row = &out[i * d..(i + 1) * d];
                if i >= 5 {
                    if bad.is_nan() {
                        assert!(row.iter().any(|x| x.is_nan()), "{path:?} {bad}: row {i}");
                    }
                } else {
                    assert_eq!(row, &clean[i * d..(i + 1) * d], "{path:?} {bad}: row {i}");
                }
            }
        }
        // NaN in a visible V row: the rows that weight it are NaN.
        let mut v2 = v.clone();
        v2[2 * d] = f32::NAN;
        let out = sdpa(t1(&seq(l * d, 0.37), l, d), t1(&k, l, d), t1(&v2, l, d), &o).unwrap();
        for i in 2..l {
            assert!(out[i * d].is_nan(), "{path:?}: row {i} weights V row 2");
        }
    }
}

/// A NaN or infinity in a V row that a query cannot see (causal, a boolean mask, padding)
/// leaves that query's output unchanged on every path: the GEMM's `0·NaN` must not reach
/// it (a KV cache's unused rows may hold anything).
#[test]
fn a21_nan_in_a_value_row_no_query_can_see_changes_nothing() {
    let d = 4;
    // Causal: only the last query sees the last key (one key block, then three).
    for l in [16, 1100] {
        let q = seq(l * d, 0.37);
        let v = seq(l * d, 0.11);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut v_bad = v.clone();
            v_bad[(l - 1) * d] = bad;
            for path in [AttnPath::Flash, AttnPath::Materialized] {
                let o = SdpaOptions::default().with_causal(true).with_path(path);
                let clean = sdpa(t1(&q, l, d), t1(&q, l, d), t1(&v, l, d), &o).unwrap();
                let out = sdpa(t1(&q, l, d), t1(&q, l, d), t1(&v_bad, l, d), &o).unwrap();
                // Equal within rounding: the block holding the bad row sums P·V in
                // another order (zero weights skipped) than the GEMM.
                let err = max_abs_diff(&out[..(l - 1) * d], &clean[..(l - 1) * d]);
                assert!(
                    err < 1e-5,
                    "{path:?} L={l} {bad}: rows 0..{} cannot see key {}, yet differ by {err}",
                    l - 1,
                    l - 1
                );
                assert!(
                    !out[(l - 1) * d].is_finite(),
                    "{path:?}: the last row sees it"
                );
            }
        }
    }
    // A boolean mask hides key 3 from every query; padding hides keys n.. (decode, prefill,
    // and the split-KV decode with its 2048-key chunks).
    for (lq, lk, n) in [(5, 9, 6), (1, 40, 33), (1, 5000, 4500), (7, 700, 650)] {
        let q = seq(lq * d, 0.21);
        let k = seq(lk * d, 0.17);
        let v = seq(lk * d, 0.05);
        let mut v_bad = v.clone();
        v_bad[3 * d + 1] = f32::NAN;
        for j in n..lk {
            v_bad[j * d] = if j % 2 == 0 {
                f32::NAN
            } else {
                f32::NEG_INFINITY
            };
        }
        let mut allowed = vec![true; lq * lk];
        for i in 0..lq {
            allowed[i * lk + 3] = false;
        }
        let m = TensorRef::contiguous(&allowed, [1, 1, lq, lk]).unwrap();
        let lens = [n];
        for path in [AttnPath::Auto, AttnPath::Flash, AttnPath::Materialized] {
            let o = SdpaOptions::default()
                .with_mask(Mask::Bool(m))
                .with_kv_lengths(Some(&lens))
                .with_path(path);
            let clean = sdpa(t1(&q, lq, d), t1(&k, lk, d), t1(&v, lk, d), &o).unwrap();
            let out = sdpa(t1(&q, lq, d), t1(&k, lk, d), t1(&v_bad, lk, d), &o).unwrap();
            let err = max_abs_diff(&out, &clean);
            assert!(
                err < 1e-5,
                "{path:?} Lq={lq} Lk={lk} n={n}: differs by {err}"
            );
        }
    }
}

#[test]
fn a22_windows_wider_than_any_sequence_are_no_window() {
    let x = qkv([1, 2, 5, 4]);
    let t = TensorRef::contiguous(&x, [1, 2, 5, 4]).unwrap();
    let plain = sdpa(t, t, t, &SdpaOptions::default()).unwrap();
    for w in [usize::MAX, 1 << 63, i64::MAX as usize] {
        let o = SdpaOptions::default()
            .with_window_left(Some(w))
            .with_window_right(Some(w));
        assert_eq!(sdpa(t, t, t, &o).unwrap(), plain, "window {w}");
    }
}

#[test]
fn a26_a_subnormal_softcap_is_refused() {
    // 1/cap would be infinite: a subnormal cap is an option error, not NaN output.
    let x = qkv([1, 1, 3, 4]);
    let t = TensorRef::contiguous(&x, [1, 1, 3, 4]).unwrap();
    for path in [AttnPath::Flash, AttnPath::Materialized] {
        let o = SdpaOptions::default()
            .with_softcap(Some(1e-40))
            .with_path(path);
        assert!(
            matches!(sdpa(t, t, t, &o), Err(AttnError::Option { .. })),
            "{path:?}"
        );
        assert!(matches!(
            sdpa_ref(t, t, t, &o),
            Err(AttnError::Option { .. })
        ));
    }
}

#[test]
fn a23_kv_cache_overflowing_its_capacity_is_cache_full_and_unchanged() {
    let mut cache = KvCache::new(1, 2, 4, 8).unwrap();
    let kv = qkv([1, 2, 6, 4]);
    let t6 = TensorRef::contiguous(&kv, [1, 2, 6, 4]).unwrap();
    cache.append(t6, t6).unwrap();
    let keys_before: Vec<f32> = (0..6).map(|i| cache.keys().get(0, 1, i, 3)).collect();
    let t3 = TensorRef::contiguous(&kv[..24], [1, 2, 3, 4]).unwrap();
    assert_eq!(
        cache.append(t3, t3),
        Err(AttnError::CacheFull {
            capacity: 8,
            len: 6,
            adding: 3
        })
    );
    assert_eq!(cache.len(), 6);
    let keys_after: Vec<f32> = (0..6).map(|i| cache.keys().get(0, 1, i, 3)).collect();
    assert_eq!(keys_before, keys_after);
    // Wrong batch, heads or head dim, or K and V that disagree.
    let other = TensorRef::contiguous(&kv[..16], [1, 2, 1, 8]).unwrap();
    assert_err!(cache.append(other, other), AttnError::Shape { .. });
    let one = TensorRef::contiguous(&kv[..8], [1, 2, 1, 4]).unwrap();
    let two = TensorRef::contiguous(&kv[..16], [1, 2, 2, 4]).unwrap();
    assert_err!(cache.append(one, two), AttnError::Shape { .. });
    assert_eq!(cache.len(), 6);
}

#[test]
fn a24_layer_decoding_past_its_cache_or_with_a_foreign_cache_is_refused_unchanged() {
    let layer = MultiHeadAttention::random(MhaConfig::new(8, 2), false, 3).unwrap();
    let causal = SdpaOptions::default().with_causal(true);
    let x = seq(3 * 8, 0.3);
    let mut cache = layer.new_cache(1, 4).unwrap();
    layer.forward_cached(&mut cache, &x, 1, 3, &causal).unwrap();
    assert_eq!(
        layer.forward_cached(&mut cache, &x, 1, 3, &causal),
        Err(AttnError::CacheFull {
            capacity: 4,
            len: 3,
            adding: 3
        })
    );
    assert_eq!(cache.len(), 3);
    // A cache made for another batch size or another layer shape.
    let mut wrong_batch = layer.new_cache(2, 8).unwrap();
    assert_err!(
        layer.forward_cached(&mut wrong_batch, &x, 1, 3, &causal),
        AttnError::Shape { .. }
    );
    let mut foreign = KvCache::new(1, 2, 8, 8).unwrap();
    assert_err!(
        layer.forward_cached(&mut foreign, &x, 1, 3, &causal),
        AttnError::Shape { .. }
    );
    assert_eq!((wrong_batch.len(), foreign.len()), (0, 0));
    // An option error after the room check leaves the cache unchanged too.
    let bad = SdpaOptions::default().with_kv_lengths(Some(&[1, 2]));
    assert_err!(
        layer.forward_cached(&mut cache, &x[..8], 1, 1, &bad),
        AttnError::Option { .. }
    );
    assert_eq!(cache.len(), 3);
}

#[test]
fn a25_layer_configs_weights_and_inputs_of_the_wrong_size_are_refused() {
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(8, 0), false, 1),
        AttnError::Shape { .. }
    );
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(0, 2), false, 1),
        AttnError::Shape { .. }
    );
    assert_err!(
        MultiHeadAttention::random(
            MhaConfig::new(8, 2)
                .with_head_dim(3)
                .with_rope(RopeConfig::default()),
            false,
            1
        ),
        AttnError::Option { .. }
    );
    let bad_base = RopeConfig::new().with_base(f32::NAN);
    assert_err!(
        MultiHeadAttention::random(MhaConfig::new(8, 2).with_rope(bad_base), false, 1),
        AttnError::Option { .. }
    );
    // A weight of the wrong length names itself.
    let w = vec![0.1f32; 64];
    let short = vec![0.1f32; 63];
    let r = MultiHeadAttention::new(MhaConfig::new(8, 2), MhaWeights::new(&w, &short, &w, &w));
    match r {
        Err(AttnError::Shape { what }) => assert!(what.contains("wk"), "{what}"),
        other => panic!("{other:?}"),
    }
    let mut with_bias = MhaWeights::new(&w, &w, &w, &w);
    with_bias.bo = Some(&short[..7]);
    assert_err!(
        MultiHeadAttention::new(MhaConfig::new(8, 2), with_bias),
        AttnError::Shape { .. }
    );
    // Inputs, outputs and contexts of the wrong length.
    let layer =
        MultiHeadAttention::new(MhaConfig::new(8, 2), MhaWeights::new(&w, &w, &w, &w)).unwrap();
    let d = SdpaOptions::default();
    assert_err!(layer.forward(&w[..15], 1, 2, &d), AttnError::Shape { .. });
    let mut y = vec![0.0f32; 15];
    assert_err!(
        layer.forward_into(&w[..16], 1, 2, &mut y, &d),
        AttnError::Shape { .. }
    );
    assert_err!(
        layer.forward_cross(&w[..16], &w[..23], 1, 2, 3, &d),
        AttnError::Shape { .. }
    );
}

#[test]
fn a15b_decode_split_with_empty_dv_fills_lse() {
    // Found by the sdpa fuzz target: the flash-decoding split (one query, keys beyond one
    // chunk) sized its partial outputs by Dv and panicked when Dv = 0.
    let lk = 5000;
    let x = qkv([1, 2, lk, 3]);
    let k = TensorRef::contiguous(&x, [1, 2, lk, 3]).unwrap();
    let q = TensorRef::contiguous(&x[..6], [1, 2, 1, 3]).unwrap();
    let v0 = TensorRef::<f32>::contiguous(&[], [1, 2, lk, 0]).unwrap();
    let want = sdpa_ref(q, k, v0, &SdpaOptions::default()).unwrap();
    for path in [AttnPath::Flash, AttnPath::Auto] {
        let d = SdpaOptions::default().with_path(path);
        let mut lse = [0.0f32; 2];
        let mut o: [f32; 0] = [];
        sdpa_into(
            q,
            k,
            v0,
            TensorMut::contiguous(&mut o, [1, 2, 1, 0]).unwrap(),
            &d,
            SdpaOutputs::default()
                .with_weights(None)
                .with_lse(Some(&mut lse)),
        )
        .unwrap();
        for (g, r) in lse.iter().zip(&want.lse) {
            assert!(
                (g - r).abs() < 1e-4 * r.abs().max(1.0),
                "{lse:?} vs {:?}",
                want.lse
            );
        }
    }
}
