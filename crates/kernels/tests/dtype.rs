//! 16-bit storage: the conversions of every variant against the `half` crate, and the GEMM,
//! packing and decode kernels on f16/bf16 operands against the same kernels on the widened
//! f32 values (16-bit → f32 is exact, so the results must be bit-identical) and against
//! the f64 reference.

use fastattn_kernels::convert::{from_f32_ref, from_f32_with, to_f32_ref, to_f32_with};
use fastattn_kernels::gemm::packed::{gemm_packed_b, PackedB};
use fastattn_kernels::gemm::{gemm_with_a_read, reference::gemm_ref, ARead};
use fastattn_kernels::gemv::{axpy_rows_with, dot_rows_with};
use fastattn_kernels::{bf16, f16, DType, Element, Isa, MatMut, MatRef, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::{rand_t, rand_vec, widen};

/// Values that exercise rounding and the special cases of both 16-bit formats.
fn special_values(rng: &mut StdRng) -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-45,
        65504.0,
        65520.0, // rounds to inf in f16
        65519.0,
        6.0e-8,
        3.0e-8,
        1.0 + 1.0 / 256.0,  // a bf16 tie: to even (1.0)
        1.0 + 3.0 / 256.0,  // a bf16 tie: to even (up)
        1.0 + 1.0 / 2048.0, // an f16 tie
        1.0 + 3.0 / 2048.0,
        f32::from_bits(0x7f7f_ffff),
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0x0000_8000),
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
    ];
    for _ in 0..200 {
        v.push(f32::from_bits(rng.random::<u32>()));
        v.push(rng.random_range(-70000.0f32..70000.0));
        v.push(rng.random_range(-1e-4f32..1e-4));
    }
    v
}

fn check_conversions<T: Element>(isa: Isa) {
    let mut rng = StdRng::seed_from_u64(17);
    let all = special_values(&mut rng);
    for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100, all.len()] {
        let src = &all[..n];
        let want: Vec<T> = from_f32_ref(src);
        let mut got = vec![T::default(); n];
        from_f32_with(isa, src, &mut got).unwrap();
        for i in 0..n {
            let (g, w) = (got[i].to_f32(), want[i].to_f32());
            if w.is_nan() {
                assert!(
                    g.is_nan(),
                    "{isa} {:?} n={n} i={i}: {} gave {g}",
                    T::DTYPE,
                    src[i]
                );
            } else {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{isa} {:?} n={n} i={i}: {:e} gave {g:e}, want {w:e}",
                    T::DTYPE,
                    src[i]
                );
            }
        }
        // Widening is exact and bit-identical to the reference (NaN payloads included).
        let mut back = vec![0.0f32; n];
        to_f32_with(isa, &want, &mut back).unwrap();
        let r = to_f32_ref(&want);
        for i in 0..n {
            assert!(
                back[i].to_bits() == r[i].to_bits() || (back[i].is_nan() && r[i].is_nan()),
                "{isa} {:?} widen n={n} i={i}",
                T::DTYPE
            );
        }
    }
}

#[test]
fn conversions_of_every_variant_match_the_half_crate() {
    for isa in Isa::available() {
        check_conversions::<f16>(isa);
        check_conversions::<bf16>(isa);
        check_conversions::<f32>(isa);
    }
}

#[test]
fn conversions_refuse_mismatched_lengths() {
    let mut d = [f16::ZERO; 3];
    assert!(from_f32_with(Isa::Scalar, &[1.0, 2.0], &mut d).is_err());
    let mut f = [0.0f32; 1];
    assert!(to_f32_with(Isa::Scalar, &d, &mut f).is_err());
}

#[test]
fn dtype_names_round_trip() {
    for t in DType::ALL {
        assert_eq!(DType::from_name(t.name()), Some(t));
    }
    assert_eq!(DType::from_name("bfloat16"), Some(DType::BF16));
    assert_eq!(DType::from_name("f64"), None);
    assert_eq!(DType::F16.size(), 2);
}

fn check_decode_kernels<T: Element>(isa: Isa) {
    for (rows, n, d) in [
        (1, 1, 1),
        (1, 37, 64),
        (3, 61, 17),
        (4, 64, 128),
        (5, 13, 33),
        (8, 100, 8),
    ] {
        let seed = (rows * 1000 + n * 10 + d) as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let ld = d + 3; // padded rows
        let q = rand_vec(&mut rng, rows * d);
        let k: Vec<T> = rand_t(&mut rng, n * ld);
        let kw = widen(&k);
        let mut s16 = vec![0.0f32; rows * n];
        let mut s32 = vec![0.0f32; rows * n];
        let qm = MatRef::new(&q, rows, d, d, 1).unwrap();
        dot_rows_with(
            isa,
            0.5,
            qm,
            MatRef::new(&k, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut s16, rows, n).unwrap(),
        )
        .unwrap();
        dot_rows_with(
            isa,
            0.5,
            qm,
            MatRef::new(&kw, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut s32, rows, n).unwrap(),
        )
        .unwrap();
        assert_eq!(s16, s32, "{isa} {:?} dot_rows seed {seed}", T::DTYPE);
        let mut sr = vec![0.0f32; rows * n];
        fastattn_kernels::gemv::dot_rows_ref(
            0.5,
            qm,
            MatRef::new(&k, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut sr, rows, n).unwrap(),
        );
        for (a, b) in s16.iter().zip(&sr) {
            assert!(
                (a - b).abs() <= 1e-5 * (d as f32),
                "{isa} {:?} seed {seed}",
                T::DTYPE
            );
        }
        // P·V with a few zero weights.
        let mut p = rand_vec(&mut rng, rows * n);
        for x in p.iter_mut().step_by(3) {
            *x = 0.0;
        }
        let v: Vec<T> = rand_t(&mut rng, n * ld);
        let vw = widen(&v);
        let o0 = rand_vec(&mut rng, rows * d);
        let (mut o16, mut o32, mut or) = (o0.clone(), o0.clone(), o0.clone());
        let pm = MatRef::row_major(&p, rows, n).unwrap();
        axpy_rows_with(
            isa,
            pm,
            MatRef::new(&v, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut o16, rows, d).unwrap(),
        )
        .unwrap();
        axpy_rows_with(
            isa,
            pm,
            MatRef::new(&vw, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut o32, rows, d).unwrap(),
        )
        .unwrap();
        assert_eq!(o16, o32, "{isa} {:?} axpy_rows seed {seed}", T::DTYPE);
        fastattn_kernels::gemv::axpy_rows_ref(
            pm,
            MatRef::new(&v, n, d, ld, 1).unwrap(),
            MatMut::row_major(&mut or, rows, d).unwrap(),
        );
        for (a, b) in o16.iter().zip(&or) {
            assert!(
                (a - b).abs() <= 1e-5 * (n as f32),
                "{isa} {:?} seed {seed}",
                T::DTYPE
            );
        }
    }
}

#[test]
fn decode_kernels_read_16_bit_rows_like_their_widened_values() {
    for isa in Isa::available() {
        check_decode_kernels::<f16>(isa);
        check_decode_kernels::<bf16>(isa);
    }
}

/// (rows, cols, rs, cs, len) of a layout: 0 row-major, 1 column-major, 2 gapped.
fn layout(l: usize, rows: usize, cols: usize) -> (usize, usize, usize) {
    let (rs, cs) = match l {
        0 => (cols + 1, 1),
        1 => (1, rows + 2),
        _ => (2 * (2 * cols + 1), 2),
    };
    (
        rs,
        cs,
        if rows * cols == 0 {
            1
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        },
    )
}

fn check_gemm<TA: Element, TB: Element>(isa: Isa) {
    for (m, k, n) in [
        (1, 1, 1),
        (7, 13, 31),
        (13, 64, 17),
        (33, 129, 47),
        (64, 300, 65),
    ] {
        for (la, lb) in [(0, 0), (0, 1), (1, 0), (2, 2)] {
            let seed = (m * 7 + k * 13 + n * 31 + la * 3 + lb) as u64;
            let mut rng = StdRng::seed_from_u64(seed);
            let (rsa, csa, lena) = layout(la, m, k);
            let (rsb, csb, lenb) = layout(lb, k, n);
            let a: Vec<TA> = rand_t(&mut rng, lena);
            let b: Vec<TB> = rand_t(&mut rng, lenb);
            let (aw, bw) = (widen(&a), widen(&b));
            let c0 = rand_vec(&mut rng, m * n);
            let (mut c16, mut c32, mut cr) = (c0.clone(), c0.clone(), c0.clone());
            gemm_with_a_read(
                isa,
                Parallelism::Rayon,
                ARead::Packed,
                0.75,
                MatRef::new(&a, m, k, rsa, csa).unwrap(),
                MatRef::new(&b, k, n, rsb, csb).unwrap(),
                0.5,
                MatMut::row_major(&mut c16, m, n).unwrap(),
            )
            .unwrap();
            gemm_with_a_read(
                isa,
                Parallelism::Sequential,
                ARead::Packed,
                0.75,
                MatRef::new(&aw, m, k, rsa, csa).unwrap(),
                MatRef::new(&bw, k, n, rsb, csb).unwrap(),
                0.5,
                MatMut::row_major(&mut c32, m, n).unwrap(),
            )
            .unwrap();
            let what = format!(
                "{isa} A {:?} B {:?} {m}x{k}x{n} layouts {la}/{lb} seed {seed}",
                TA::DTYPE,
                TB::DTYPE
            );
            assert_eq!(c16, c32, "{what}: differs from the widened f32 product");
            gemm_ref(
                0.75,
                MatRef::new(&aw, m, k, rsa, csa).unwrap(),
                MatRef::new(&bw, k, n, rsb, csb).unwrap(),
                0.5,
                MatMut::row_major(&mut cr, m, n).unwrap(),
            );
            for (x, y) in c16.iter().zip(&cr) {
                assert!(
                    (x - y).abs() <= 2e-6 * k as f32 + 1e-6,
                    "{what}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn gemm_with_16_bit_operands_equals_the_gemm_on_their_widened_values() {
    for isa in Isa::available() {
        check_gemm::<f16, f32>(isa);
        check_gemm::<f32, bf16>(isa);
        check_gemm::<bf16, bf16>(isa);
        check_gemm::<f16, f16>(isa);
    }
}

fn check_packed<T: Element>(isa: Isa) {
    for (m, k, n) in [(1, 5, 3), (6, 64, 40), (13, 97, 33), (2, 128, 512)] {
        for l in [0, 1, 2] {
            let seed = (m + k * 3 + n * 5 + l) as u64;
            let mut rng = StdRng::seed_from_u64(seed);
            let (rs, cs, len) = layout(l, k, n);
            let b: Vec<T> = rand_t(&mut rng, len);
            let bw = widen(&b);
            let a = rand_vec(&mut rng, m * k);
            let (mut p16, mut p32) = (PackedB::new(isa).unwrap(), PackedB::new(isa).unwrap());
            p16.pack(MatRef::new(&b, k, n, rs, cs).unwrap()).unwrap();
            p32.pack(MatRef::new(&bw, k, n, rs, cs).unwrap()).unwrap();
            let (mut c16, mut c32) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
            let am = MatRef::row_major(&a, m, k).unwrap();
            gemm_packed_b(
                1.0,
                am,
                &p16,
                0,
                0.0,
                MatMut::row_major(&mut c16, m, n).unwrap(),
            )
            .unwrap();
            gemm_packed_b(
                1.0,
                am,
                &p32,
                0,
                0.0,
                MatMut::row_major(&mut c32, m, n).unwrap(),
            )
            .unwrap();
            assert_eq!(
                c16,
                c32,
                "{isa} {:?} {m}x{k}x{n} layout {l} seed {seed}",
                T::DTYPE
            );
        }
    }
}

#[test]
fn packed_b_converts_16_bit_operands_exactly() {
    for isa in Isa::available() {
        check_packed::<f16>(isa);
        check_packed::<bf16>(isa);
    }
}

fn check_stored<T: Element>(isa: Isa) {
    for (m, k, n) in [
        (1, 5, 3),
        (3, 64, 40),
        (4, 100, 33),
        (5, 97, 33),
        (13, 64, 70),
    ] {
        for l in [0, 1] {
            for col0_panels in [0usize, 1] {
                let seed = (m + k * 3 + n * 5 + l + 100 * col0_panels) as u64;
                let mut rng = StdRng::seed_from_u64(seed);
                let (rs, cs, len) = layout(l, k, n);
                let b: Vec<T> = rand_t(&mut rng, len);
                let bw = widen(&b);
                let a = rand_vec(&mut rng, m * k);
                let (mut p16, mut p32) = (PackedB::new(isa).unwrap(), PackedB::new(isa).unwrap());
                p16.pack_stored(MatRef::new(&b, k, n, rs, cs).unwrap())
                    .unwrap();
                p32.pack(MatRef::new(&bw, k, n, rs, cs).unwrap()).unwrap();
                assert_eq!(p16.dtype(), T::DTYPE);
                assert_eq!(2 * p16.bytes(), p32.bytes());
                let col0 = (col0_panels * p16.nr()).min(n / p16.nr() * p16.nr());
                let nc = n - col0;
                let c0 = rand_vec(&mut rng, m * nc);
                let (mut c16, mut c32) = (c0.clone(), c0.clone());
                let am = MatRef::row_major(&a, m, k).unwrap();
                gemm_packed_b(
                    0.5,
                    am,
                    &p16,
                    col0,
                    0.25,
                    MatMut::row_major(&mut c16, m, nc).unwrap(),
                )
                .unwrap();
                gemm_packed_b(
                    0.5,
                    am,
                    &p32,
                    col0,
                    0.25,
                    MatMut::row_major(&mut c32, m, nc).unwrap(),
                )
                .unwrap();
                let what = format!(
                    "{isa} {:?} {m}x{k}x{n} layout {l} col0 {col0} seed {seed}",
                    T::DTYPE
                );
                if m > fastattn_kernels::gemm::packed::HALF_GEMV_ROWS {
                    assert_eq!(c16, c32, "{what}");
                } else {
                    for (x, y) in c16.iter().zip(&c32) {
                        assert!((x - y).abs() <= 1e-6 * k as f32, "{what}: {x} vs {y}");
                    }
                }
            }
        }
    }
}

#[test]
fn packed_b_stored_in_16_bits_gives_the_f32_packed_product() {
    for isa in Isa::available() {
        check_stored::<f16>(isa);
        check_stored::<bf16>(isa);
    }
}
