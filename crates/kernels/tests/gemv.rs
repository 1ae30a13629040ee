//! Decode kernels (dot_rows, axpy_rows) of every variant against their f64 references.

use fastattn_kernels::gemv::{axpy_rows_ref, axpy_rows_with, dot_rows_ref, dot_rows_with};
use fastattn_kernels::{Isa, KernelError, MatMut, MatRef};
use rand::rngs::StdRng;
use rand::SeedableRng;
use testutil::rand_vec;

#[test]
fn dot_and_axpy_rows_match_ref_for_every_variant() {
    let mut seed = 0;
    for isa in Isa::available() {
        for rows in [1, 2, 3, 4, 5, 8, 9] {
            for d in [1, 7, 16, 33, 128] {
                for n in [1, 5, 100] {
                    seed += 1;
                    let mut rng = StdRng::seed_from_u64(seed);
                    let label = format!("isa={isa} rows={rows} d={d} n={n} seed={seed}");
                    // Padded row strides: d + 3.
                    let ld = d + 3;
                    let q = rand_vec(&mut rng, rows * ld);
                    let k = rand_vec(&mut rng, n * ld);
                    let qv = MatRef::new(&q, rows, d, ld, 1).unwrap();
                    let kv = MatRef::new(&k, n, d, ld, 1).unwrap();
                    let (mut s, mut s_ref) = (vec![0.0; rows * n], vec![0.0; rows * n]);
                    dot_rows_with(
                        isa,
                        0.5,
                        qv,
                        kv,
                        MatMut::row_major(&mut s, rows, n).unwrap(),
                    )
                    .unwrap();
                    dot_rows_ref(0.5, qv, kv, MatMut::row_major(&mut s_ref, rows, n).unwrap());
                    for (a, b) in s.iter().zip(&s_ref) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (d as f32 + 1.0),
                            "{label}: dot {a} vs {b}"
                        );
                    }
                    // P with some exact zeros (masked keys) and V with NaN behind them.
                    let mut p = rand_vec(&mut rng, rows * n);
                    let mut v = rand_vec(&mut rng, n * ld);
                    for j in (0..n).step_by(3) {
                        for r in 0..rows {
                            p[r * n + j] = 0.0;
                        }
                        v[j * ld] = f32::NAN;
                    }
                    let pv = MatRef::row_major(&p, rows, n).unwrap();
                    let vv = MatRef::new(&v, n, d, ld, 1).unwrap();
                    let o0 = rand_vec(&mut rng, rows * d);
                    let (mut o, mut o_ref) = (o0.clone(), o0);
                    axpy_rows_with(isa, pv, vv, MatMut::row_major(&mut o, rows, d).unwrap())
                        .unwrap();
                    axpy_rows_ref(pv, vv, MatMut::row_major(&mut o_ref, rows, d).unwrap());
                    for (a, b) in o.iter().zip(&o_ref) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (n as f32 + 1.0),
                            "{label}: axpy {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gemv_kernels_refuse_bad_shapes_and_strides() {
    let x = vec![0.0f32; 64];
    let mut s = vec![0.0f32; 64];
    let q = MatRef::row_major(&x, 2, 4).unwrap();
    let k = MatRef::row_major(&x, 3, 5).unwrap();
    let r = dot_rows_with(
        Isa::Scalar,
        1.0,
        q,
        k,
        MatMut::row_major(&mut s, 2, 3).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })));
    let kt = MatRef::col_major(&x, 3, 4).unwrap();
    let r = dot_rows_with(
        Isa::Scalar,
        1.0,
        q,
        kt,
        MatMut::row_major(&mut s, 2, 3).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::BadStride { .. })));
}

/// The kernels give the same bits on any split of the keys (the decode calls them block by
/// block and chunk by chunk): each score is computed alone, whatever its position among the
/// keys of a call, and each output element takes its keys one by one in order.
#[test]
fn dot_and_axpy_rows_give_the_same_bits_on_any_split_of_the_keys() {
    let mut seed = 1000;
    for isa in Isa::available() {
        for rows in [1, 3, 4, 6] {
            for d in [7, 16, 40, 128] {
                seed += 1;
                let mut rng = StdRng::seed_from_u64(seed);
                let n = 203;
                let q = rand_vec(&mut rng, rows * d);
                let k = rand_vec(&mut rng, n * d);
                let mut p = rand_vec(&mut rng, rows * n);
                for j in (0..n).step_by(7) {
                    p[(j % rows) * n + j] = 0.0;
                }
                let o0 = rand_vec(&mut rng, rows * d);
                let qv = MatRef::row_major(&q, rows, d).unwrap();
                let whole = |cuts: &[usize]| {
                    let (mut s, mut o) = (vec![0.0f32; rows * n], o0.clone());
                    let mut j0 = 0;
                    for &j1 in cuts.iter().chain([n].iter()) {
                        let m = j1 - j0;
                        let kv = MatRef::row_major(&k[j0 * d..j1 * d], m, d).unwrap();
                        let sm = MatMut::new(&mut s[j0..], rows, m, n, 1).unwrap();
                        dot_rows_with(isa, 0.3, qv, kv, sm).unwrap();
                        let pm = MatRef::new(&p[j0..], rows, m, n, 1).unwrap();
                        let om = MatMut::row_major(&mut o, rows, d).unwrap();
                        axpy_rows_with(isa, pm, kv, om).unwrap();
                        j0 = j1;
                    }
                    (s, o)
                };
                let (s1, o1) = whole(&[]);
                for cuts in [&[1usize, 2, 3][..], &[63, 64, 65], &[5, 130, 131, 200]] {
                    let (s2, o2) = whole(cuts);
                    let label = format!("isa={isa} rows={rows} d={d} cuts={cuts:?}");
                    assert!(
                        s1.iter().zip(&s2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{label}: scores"
                    );
                    assert!(
                        o1.iter().zip(&o2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{label}: outputs"
                    );
                }
            }
        }
    }
}
