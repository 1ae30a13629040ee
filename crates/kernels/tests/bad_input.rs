//! One test per kernels row (`K*`) of the bad-input catalogue in `docs/HARDENING.md`
//! (Rust API): every kind of bad input the public kernels APIs can get, and the exact error
//! (or the defined result) it gets. The attention rows (`A*`) are in the attention crate's
//! `tests/bad_input.rs`. Row ids (`K1`, ...) are those of the catalogue.

use fastattn_kernels::gemm::packed::{gemm_packed_b, PackedB};
use fastattn_kernels::gemm::reference::gemm_ref;
use fastattn_kernels::gemv::{axpy_rows_with, dot_rows_with};
use fastattn_kernels::softmax::{
    softmax, softmax_inplace, softmax_inplace_with, softmax_row_with, softmax_with, RowOptions,
};
use fastattn_kernels::{gemm, gemm_with, set_isa, Isa, KernelError, MatMut, MatRef, Parallelism};
use testutil::{assert_err, missing_isa};

#[test]
fn k01_matrix_view_past_its_buffer_is_buffer_too_small() {
    let a = [0.0f32; 11];
    assert_err!(
        MatRef::new(&a, 3, 4, 4, 1),
        KernelError::BufferTooSmall {
            op: "MatRef::new",
            operand: "data",
            needed: 12,
            len: 11
        }
    );
    let mut c = [0.0f32; 5];
    assert_err!(
        MatMut::new(&mut c, 2, 3, 3, 1),
        KernelError::BufferTooSmall {
            op: "MatMut::new",
            needed: 6,
            len: 5,
            ..
        }
    );
    // A gapped stride that steps outside.
    assert_err!(
        MatRef::new(&a, 2, 2, 9, 3),
        KernelError::BufferTooSmall { needed: 13, .. }
    );
}

#[test]
fn k02_matrix_view_whose_extent_overflows_is_overflow() {
    let a = [0.0f32; 4];
    assert_err!(
        MatRef::new(&a, usize::MAX, 2, 2, 1),
        KernelError::Overflow { op: "MatRef::new" }
    );
    let mut c = [0.0f32; 4];
    assert_err!(
        MatMut::new(&mut c, 3, 3, usize::MAX / 2, 1),
        KernelError::Overflow { op: "MatMut::new" }
    );
}

#[test]
fn k03_output_view_aliasing_itself_is_bad_stride() {
    let mut c = [0.0f32; 64];
    // Zero stride over an extent > 1.
    assert_err!(
        MatMut::new(&mut c, 4, 1, 0, 1),
        KernelError::BadStride {
            op: "MatMut::new",
            ..
        }
    );
    // Overlapping rows: row stride smaller than the row's span.
    assert_err!(
        MatMut::new(&mut c, 4, 4, 2, 1),
        KernelError::BadStride { .. }
    );
    // Both strides equal.
    assert_err!(
        MatMut::new(&mut c, 3, 3, 5, 5),
        KernelError::BadStride { .. }
    );
}

#[test]
fn k04_output_sharing_memory_with_an_input_needs_disjoint_borrows() {
    // C overlapping A or B cannot be expressed: `MatMut` holds a `&mut [f32]`, so the
    // borrow checker refuses a `MatRef` of the same memory. The only way to use one buffer
    // for both is two disjoint halves, which works.
    let mut buf = [0.0f32; 8];
    buf[..4].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
    let (a, c) = buf.split_at_mut(4);
    let av = MatRef::row_major(a, 2, 2).unwrap();
    gemm(1.0, av, av, 0.0, MatMut::row_major(c, 2, 2).unwrap()).unwrap();
    assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
}

#[test]
fn k05_gemm_shape_mismatches_are_shape_mismatch() {
    let x = [1.0f32; 64];
    let mut c = [0.0f32; 256];
    let a = MatRef::row_major(&x, 3, 4).unwrap();
    // A is 3×4, B must be 4×n.
    let b = MatRef::row_major(&x, 5, 2).unwrap();
    assert_err!(
        gemm(1.0, a, b, 0.0, MatMut::row_major(&mut c, 3, 2).unwrap()),
        KernelError::ShapeMismatch { op: "gemm", .. }
    );
    // C must be 3×n.
    let b = MatRef::row_major(&x, 4, 2).unwrap();
    assert_err!(
        gemm(1.0, a, b, 0.0, MatMut::row_major(&mut c, 2, 2).unwrap()),
        KernelError::ShapeMismatch { op: "gemm", .. }
    );
    assert_err!(
        gemm(1.0, a, b, 0.0, MatMut::row_major(&mut c, 3, 3).unwrap()),
        KernelError::ShapeMismatch { op: "gemm", .. }
    );
    // Packed B: depth beyond the packed depth, column offset off the panel grid, columns
    // past B.
    let isa = Isa::best();
    let nr = fastattn_kernels::gemm::tile_of(isa).1;
    let mut pb = PackedB::new(isa).unwrap();
    pb.pack(MatRef::row_major(&x, 2, 2 * nr.min(16)).unwrap_or(b))
        .unwrap();
    let deep = MatRef::row_major(&x, 2, 3).unwrap();
    assert_err!(
        gemm_packed_b(
            1.0,
            deep,
            &pb,
            0,
            0.0,
            MatMut::row_major(&mut c, 2, 1).unwrap()
        ),
        KernelError::ShapeMismatch {
            op: "gemm_packed_b",
            ..
        }
    );
    let a2 = MatRef::row_major(&x, 2, 2).unwrap();
    assert_err!(
        gemm_packed_b(
            1.0,
            a2,
            &pb,
            1,
            0.0,
            MatMut::row_major(&mut c, 2, 1).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
    assert_err!(
        gemm_packed_b(
            1.0,
            a2,
            &pb,
            0,
            0.0,
            MatMut::row_major(&mut c, 2, pb.n() + 1).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
}

#[test]
fn k06_gemm_zero_sizes_are_fine_and_touch_nothing_outside() {
    let x = [1.0f32; 16];
    // m = 0 or n = 0: nothing is touched (C may be empty).
    let mut empty: [f32; 0] = [];
    let a0 = MatRef::new(&x, 0, 4, 4, 1).unwrap();
    let b = MatRef::row_major(&x, 4, 4).unwrap();
    gemm(
        1.0,
        a0,
        b,
        0.0,
        MatMut::new(&mut empty, 0, 4, 4, 1).unwrap(),
    )
    .unwrap();
    // k = 0: C = beta·C, and beta = 0 writes zeros without reading (NaN does not stay).
    let a_k0 = MatRef::<f32>::new(&[], 2, 0, 0, 1).unwrap();
    let b_k0 = MatRef::<f32>::new(&[], 0, 2, 2, 1).unwrap();
    let mut c = [f32::NAN, f32::NAN, f32::NAN, f32::NAN, -7.0];
    gemm(
        1.0,
        a_k0,
        b_k0,
        0.0,
        MatMut::row_major(&mut c[..4], 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(c, [0.0, 0.0, 0.0, 0.0, -7.0]);
    let mut c = [2.0f32; 4];
    gemm(
        1.0,
        a_k0,
        b_k0,
        0.5,
        MatMut::row_major(&mut c, 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(c, [1.0; 4]);
    // A huge m with n = 0 (a broadcast A of one element) does no work.
    let one = [3.0f32];
    let ah = MatRef::new(&one, usize::MAX, 3, 0, 0).unwrap();
    let bh = MatRef::<f32>::new(&[], 3, 0, 0, 1).unwrap();
    gemm(
        1.0,
        ah,
        bh,
        0.0,
        MatMut::new(&mut empty, usize::MAX, 0, 0, 1).unwrap(),
    )
    .unwrap();
}

#[test]
fn k07_gemm_nan_and_inf_follow_ieee_and_beta_zero_never_reads_c() {
    // NaN in A row 0 poisons C row 0 only; inf in B column 1 gives ±inf (or NaN where it
    // meets a zero) in that column only.
    let mut a = vec![1.0f32; 3 * 2];
    a[0] = f32::NAN;
    let mut b = vec![1.0f32; 2 * 3];
    b[1] = f32::INFINITY;
    for isa in Isa::available() {
        let mut c = vec![f32::NAN; 9];
        gemm_with(
            isa,
            Parallelism::Sequential,
            1.0,
            MatRef::row_major(&a, 3, 2).unwrap(),
            MatRef::row_major(&b, 2, 3).unwrap(),
            0.0,
            MatMut::row_major(&mut c, 3, 3).unwrap(),
        )
        .unwrap();
        assert!(c[..3].iter().all(|v| v.is_nan()), "{isa}: {c:?}");
        assert_eq!(
            c[3..],
            [2.0, f32::INFINITY, 2.0, 2.0, f32::INFINITY, 2.0],
            "{isa}"
        );
    }
    // alpha = 0: A and B are not read (BLAS semantics), C = beta·C.
    let nan = [f32::NAN; 4];
    let mut c = [4.0f32; 4];
    gemm(
        0.0,
        MatRef::row_major(&nan, 2, 2).unwrap(),
        MatRef::row_major(&nan, 2, 2).unwrap(),
        0.5,
        MatMut::row_major(&mut c, 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(c, [2.0; 4]);
}

#[test]
fn k08_forcing_an_isa_the_cpu_lacks_is_unsupported_isa() {
    let isa = missing_isa();
    let x = [1.0f32; 4];
    let mut c = [0.0f32; 4];
    let name = isa.name().to_string();
    let r = gemm_with(
        isa,
        Parallelism::Sequential,
        1.0,
        MatRef::row_major(&x, 2, 2).unwrap(),
        MatRef::row_major(&x, 2, 2).unwrap(),
        0.0,
        MatMut::row_major(&mut c, 2, 2).unwrap(),
    );
    assert_eq!(r, Err(KernelError::UnsupportedIsa { isa: name.clone() }));
    assert_eq!(c, [0.0; 4], "nothing written");
    assert_err!(PackedB::new(isa), KernelError::UnsupportedIsa { .. });
    assert_err!(
        softmax_row_with(isa, &mut [1.0, 2.0], &RowOptions::new()),
        KernelError::UnsupportedIsa { .. }
    );
    let before = fastattn_kernels::current_isa();
    assert_eq!(
        set_isa(Some(isa)),
        Err(KernelError::UnsupportedIsa { isa: name })
    );
    assert_eq!(fastattn_kernels::current_isa(), before, "setting unchanged");
    assert_err!(Isa::from_name("sse9"), KernelError::UnsupportedIsa { .. });
}

#[test]
fn k09_fastattn_isa_naming_a_missing_isa_makes_calls_fail_not_crash() {
    if testutil::child::is_child() {
        // Child: FASTATTN_ISA names an ISA this CPU lacks.
        assert_err!(
            fastattn_kernels::current_isa(),
            KernelError::UnsupportedIsa { .. }
        );
        let x = [1.0f32; 4];
        let mut c = [0.0f32; 4];
        assert_err!(
            gemm(
                1.0,
                MatRef::row_major(&x, 2, 2).unwrap(),
                MatRef::row_major(&x, 2, 2).unwrap(),
                0.0,
                MatMut::row_major(&mut c, 2, 2).unwrap()
            ),
            KernelError::UnsupportedIsa { .. }
        );
        assert_err!(
            softmax_inplace(&mut c, 2),
            KernelError::UnsupportedIsa { .. }
        );
        // A per-call ISA still works.
        gemm_with(
            Isa::Scalar,
            Parallelism::Sequential,
            1.0,
            MatRef::row_major(&x, 2, 2).unwrap(),
            MatRef::row_major(&x, 2, 2).unwrap(),
            0.0,
            MatMut::row_major(&mut c, 2, 2).unwrap(),
        )
        .unwrap();
        assert_eq!(c, [2.0; 4]);
        return;
    }
    for value in [missing_isa().name(), "sse9"] {
        testutil::child::run_as_child(
            "k09_fastattn_isa_naming_a_missing_isa_makes_calls_fail_not_crash",
            &[("FASTATTN_ISA", value)],
        );
    }
}

#[test]
fn k10_softmax_shape_errors() {
    let x = [0.0f32; 6];
    let mut out = [0.0f32; 6];
    assert_err!(
        softmax_inplace(&mut [0.0; 6], 0),
        KernelError::InvalidArgument { .. }
    );
    softmax_inplace(&mut [], 0).unwrap();
    assert_err!(
        softmax_inplace(&mut [0.0; 6], 4),
        KernelError::ShapeMismatch { .. }
    );
    assert_err!(
        softmax(&x, &mut out[..5], 3),
        KernelError::ShapeMismatch { op: "softmax", .. }
    );
    let mask = [0.0f32; 4];
    let o = RowOptions::new().with_mask(&mask);
    assert_err!(
        softmax_with(Isa::best(), Parallelism::Sequential, &x, &mut out, 3, &o),
        KernelError::ShapeMismatch { .. }
    );
    assert_err!(
        softmax_row_with(Isa::best(), &mut [0.0; 3], &o),
        KernelError::ShapeMismatch {
            op: "softmax_row",
            ..
        }
    );
    assert_err!(
        fastattn_kernels::exp::exp_slice(&x, &mut out[..2]),
        KernelError::ShapeMismatch {
            op: "exp_slice",
            ..
        }
    );
}

#[test]
fn k11_softmax_nan_inf_and_fully_masked_rows_have_defined_results() {
    let n = f32::NAN;
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    for isa in Isa::available() {
        let mut x = [
            1.0, n, 2.0, // NaN: the row is NaN
            1.0, inf, 2.0, // +inf: the row is NaN (inf − inf)
            ninf, ninf, ninf, // fully masked: zeros
            1e30, -1e30, 1e30, // huge but finite: no NaN
        ];
        softmax_inplace_with(isa, Parallelism::Sequential, &mut x, 3, &RowOptions::new()).unwrap();
        assert!(x[..6].iter().all(|v| v.is_nan()), "{isa}: {x:?}");
        assert_eq!(x[6..], [0.0, 0.0, 0.0, 0.5, 0.0, 0.5], "{isa}");
    }
}

#[test]
fn k12_gemv_forms_refuse_strided_rows_and_bad_shapes() {
    let x = [1.0f32; 32];
    let mut s = [0.0f32; 32];
    let q = MatRef::row_major(&x, 1, 4).unwrap();
    let k_strided = MatRef::new(&x, 3, 4, 8, 2).unwrap();
    assert_err!(
        dot_rows_with(
            Isa::best(),
            1.0,
            q,
            k_strided,
            MatMut::row_major(&mut s, 1, 3).unwrap()
        ),
        KernelError::BadStride { op: "dot_rows", .. }
    );
    let k = MatRef::row_major(&x, 3, 5).unwrap();
    assert_err!(
        dot_rows_with(
            Isa::best(),
            1.0,
            q,
            k,
            MatMut::row_major(&mut s, 1, 3).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
    let p = MatRef::row_major(&x, 1, 3).unwrap();
    let v = MatRef::row_major(&x, 3, 4).unwrap();
    assert_err!(
        axpy_rows_with(Isa::best(), p, v, MatMut::new(&mut s, 1, 4, 8, 2).unwrap()),
        KernelError::BadStride {
            op: "axpy_rows",
            ..
        }
    );
    assert_err!(
        axpy_rows_with(Isa::best(), p, v, MatMut::row_major(&mut s, 1, 5).unwrap()),
        KernelError::ShapeMismatch { .. }
    );
}

/// Was a bug until 687114a: `gemm_with` read a row-broadcast A (row stride 0, unit column
/// stride) in place with `lda = 0`, which the microkernel takes for "packed": wrong results
/// and a heap over-read (found by `proptest_gemm`; AddressSanitizer confirmed the over-read).
#[test]
fn k13_gemm_a_with_zero_row_stride_and_unit_col_stride_matches_ref() {
    // A is one row [1, 2, 3] repeated 32 times (row stride 0). The buffer is padded with
    // NaN so that the misread stays inside the allocation (no real out-of-bounds read in
    // this test) and shows as NaN.
    let mut a = vec![f32::NAN; 3 + 64 * 3];
    a[..3].copy_from_slice(&[1.0, 2.0, 3.0]);
    let b = [1.0f32; 3];
    let av = MatRef::new(&a[..3], 32, 3, 0, 1).unwrap();
    let bv = MatRef::row_major(&b, 3, 1).unwrap();
    for isa in Isa::available() {
        let mut c = vec![0.0f32; 32];
        gemm_with(
            isa,
            Parallelism::Sequential,
            1.0,
            av,
            bv,
            0.0,
            MatMut::row_major(&mut c, 32, 1).unwrap(),
        )
        .unwrap();
        let mut want = vec![0.0f32; 32];
        gemm_ref(
            1.0,
            av,
            bv,
            0.0,
            MatMut::row_major(&mut want, 32, 1).unwrap(),
        );
        assert_eq!(want, vec![6.0; 32]);
        assert_eq!(c, want, "{isa}");
    }
}
