//! The decode kernels on rows scattered in memory (`dot_rows_indexed_with`,
//! `axpy_rows_indexed_with`, a paged cache's access): bit-identical to the strided kernels
//! on a matrix of the same rows, for every variant, storage type, odd and edge sizes, with
//! zero weights; bad offsets and shapes refused.

use fastattn_kernels::gemv::{
    axpy_rows_indexed_with, axpy_rows_with, dot_rows_indexed_with, dot_rows_with, Heads,
};
use fastattn_kernels::{bf16, f16, Element, KernelError, MatMut, MatRef};
use rand::seq::SliceRandom;
use rand::Rng;
use testutil::{assert_err, rand_t, rand_vec, seeded, variants};

/// `n` rows of `d` values scattered (shuffled, with gaps) over a larger buffer: the buffer,
/// the offsets, and the same rows as a dense `n × d` matrix.
fn scatter<E: Element>(
    rng: &mut rand::rngs::StdRng,
    n: usize,
    d: usize,
) -> (Vec<E>, Vec<usize>, Vec<E>) {
    let dense: Vec<E> = rand_t(rng, n * d);
    let slots = n + 3;
    let stride = d + 2;
    let mut order: Vec<usize> = (0..slots).collect();
    order.shuffle(rng);
    let mut buf: Vec<E> = rand_t(rng, slots * stride);
    let mut off = Vec::with_capacity(n);
    for (j, &slot) in order.iter().take(n).enumerate() {
        let o = slot * stride + 1;
        buf[o..o + d].copy_from_slice(&dense[j * d..(j + 1) * d]);
        off.push(o);
    }
    (buf, off, dense)
}

fn check<E: Element>(seed: u64) {
    let mut rng = seeded(seed);
    for isa in variants() {
        for &rows in &[1usize, 2, 3, 4, 5, 8] {
            for &n in &[0usize, 1, 3, 4, 7, 17, 70, 130] {
                for &d in &[1usize, 7, 16, 33, 128] {
                    let (buf, off, dense) = scatter::<E>(&mut rng, n, d);
                    let q = rand_vec(&mut rng, rows * d);
                    let qm = MatRef::row_major(&q, rows, d).unwrap();
                    let km = MatRef::row_major(&dense, n, d).unwrap();
                    let (mut s1, mut s2) = (vec![0.0f32; rows * n], vec![0.0f32; rows * n]);
                    dot_rows_with(
                        isa,
                        0.7,
                        qm,
                        km,
                        MatMut::row_major(&mut s1, rows, n).unwrap(),
                    )
                    .unwrap();
                    let sm = MatMut::row_major(&mut s2, rows, n).unwrap();
                    dot_rows_indexed_with(isa, 0.7, qm, &buf, &off, Heads::ONE, sm).unwrap();
                    let label = format!("{isa:?} {} rows {rows} n {n} d {d}", E::DTYPE);
                    assert!(
                        s1.iter().zip(&s2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "dot {label}"
                    );
                    // Weights with zeros (skipped keys) and a padded output.
                    let p: Vec<f32> = (0..rows * n)
                        .map(|_| {
                            if rng.random_bool(0.3) {
                                0.0
                            } else {
                                rng.random()
                            }
                        })
                        .collect();
                    let pm = MatRef::row_major(&p, rows, n).unwrap();
                    let o0 = rand_vec(&mut rng, rows * (d + 1));
                    let (mut o1, mut o2) = (o0.clone(), o0);
                    let vm = MatRef::row_major(&dense, n, d).unwrap();
                    axpy_rows_with(
                        isa,
                        pm,
                        vm,
                        MatMut::new(&mut o1, rows, d, d + 1, 1).unwrap(),
                    )
                    .unwrap();
                    let om = MatMut::new(&mut o2, rows, d, d + 1, 1).unwrap();
                    axpy_rows_indexed_with(isa, pm, &buf, &off, Heads::ONE, om).unwrap();
                    assert!(
                        o1.iter().zip(&o2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "axpy {label}"
                    );
                }
            }
        }
    }
}

#[test]
fn indexed_rows_equal_strided_rows_bit_for_bit() {
    check::<f32>(1);
    check::<bf16>(2);
    check::<f16>(3);
}

#[test]
fn indexed_rows_refuse_bad_offsets_and_shapes() {
    let isa = fastattn_kernels::Isa::Scalar;
    let k = vec![1.0f32; 10];
    let q = [1.0f32; 4];
    let qm = MatRef::row_major(&q, 1, 4).unwrap();
    let mut s = [0.0f32; 2];
    // A row that runs past the slice, an offset that overflows.
    for off in [[0usize, 7], [0, usize::MAX]] {
        let sm = MatMut::row_major(&mut s, 1, 2).unwrap();
        assert_err!(
            dot_rows_indexed_with(isa, 1.0, qm, &k, &off, Heads::ONE, sm),
            KernelError::ShapeMismatch { .. }
        );
    }
    assert_eq!(s, [0.0, 0.0]);
    // S of the wrong width.
    let sm = MatMut::row_major(&mut s, 1, 2).unwrap();
    assert_err!(
        dot_rows_indexed_with(isa, 1.0, qm, &k, &[0], Heads::ONE, sm),
        KernelError::ShapeMismatch { .. }
    );
    // axpy: P and the offsets disagree; a row past the slice.
    let p = [1.0f32, 1.0];
    let pm = MatRef::row_major(&p, 1, 2).unwrap();
    let mut o = [0.0f32; 4];
    let om = MatMut::row_major(&mut o, 1, 4).unwrap();
    assert_err!(
        axpy_rows_indexed_with(isa, pm, &k, &[0], Heads::ONE, om),
        KernelError::ShapeMismatch { .. }
    );
    let om = MatMut::row_major(&mut o, 1, 4).unwrap();
    assert_err!(
        axpy_rows_indexed_with(isa, pm, &k, &[0, 8], Heads::ONE, om),
        KernelError::ShapeMismatch { .. }
    );
    assert_eq!(o, [0.0; 4]);
}

/// Several heads sharing one list of rows (a paged cache's token-major pages: head `h`'s
/// row is `h·stride` after head 0's): band `h` of Q/S and P/O equals the one-head kernel on
/// that head's rows, bit for bit.
#[test]
fn heads_equal_one_head_at_a_time() {
    let mut rng = seeded(4);
    for isa in variants() {
        for &(heads, per, n, d) in &[
            (8usize, 4usize, 37usize, 128usize),
            (3, 1, 5, 16),
            (2, 3, 70, 33),
            (1, 2, 9, 8),
        ] {
            // Token-major rows: token j at slot[j]·heads·d, head h at + h·d.
            let slots: Vec<usize> = {
                let mut v: Vec<usize> = (0..n + 2).collect();
                v.shuffle(&mut rng);
                v.truncate(n);
                v
            };
            let buf: Vec<bf16> = rand_t(&mut rng, (n + 2) * heads * d);
            let off: Vec<usize> = slots.iter().map(|s| s * heads * d).collect();
            let q = rand_vec(&mut rng, heads * per * d);
            let mut s_all = vec![0.0f32; heads * per * n];
            dot_rows_indexed_with(
                isa,
                0.3,
                MatRef::row_major(&q, heads * per, d).unwrap(),
                &buf,
                &off,
                Heads {
                    count: heads,
                    stride: d,
                },
                MatMut::row_major(&mut s_all, heads * per, n).unwrap(),
            )
            .unwrap();
            let p: Vec<f32> = (0..heads * per * n).map(|_| rng.random()).collect();
            let mut o_all = vec![0.5f32; heads * per * d];
            axpy_rows_indexed_with(
                isa,
                MatRef::row_major(&p, heads * per, n).unwrap(),
                &buf,
                &off,
                Heads {
                    count: heads,
                    stride: d,
                },
                MatMut::row_major(&mut o_all, heads * per, d).unwrap(),
            )
            .unwrap();
            for h in 0..heads {
                let offh: Vec<usize> = off.iter().map(|o| o + h * d).collect();
                let mut s1 = vec![0.0f32; per * n];
                let qh = MatRef::row_major(&q[h * per * d..], per, d).unwrap();
                dot_rows_indexed_with(
                    isa,
                    0.3,
                    qh,
                    &buf,
                    &offh,
                    Heads::ONE,
                    MatMut::row_major(&mut s1, per, n).unwrap(),
                )
                .unwrap();
                assert!(
                    s1.iter()
                        .zip(&s_all[h * per * n..])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} dot head {h}"
                );
                let mut o1 = vec![0.5f32; per * d];
                let ph = MatRef::row_major(&p[h * per * n..], per, n).unwrap();
                axpy_rows_indexed_with(
                    isa,
                    ph,
                    &buf,
                    &offh,
                    Heads::ONE,
                    MatMut::row_major(&mut o1, per, d).unwrap(),
                )
                .unwrap();
                assert!(
                    o1.iter()
                        .zip(&o_all[h * per * d..])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} axpy head {h}"
                );
            }
        }
    }
    // Rows not in whole bands, the last head past the slice.
    let k = vec![1.0f32; 16];
    let q = [1.0f32; 12];
    let mut s = [0.0f32; 3];
    let two = Heads {
        count: 2,
        stride: 4,
    };
    let r = dot_rows_indexed_with(
        kernels_isa(),
        1.0,
        MatRef::row_major(&q, 3, 4).unwrap(),
        &k,
        &[0],
        two,
        MatMut::row_major(&mut s, 3, 1).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })));
    let mut s2 = [0.0f32; 2];
    let r = dot_rows_indexed_with(
        kernels_isa(),
        1.0,
        MatRef::row_major(&q, 2, 4).unwrap(),
        &k,
        &[9],
        two,
        MatMut::row_major(&mut s2, 2, 1).unwrap(),
    );
    assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })));
}

fn kernels_isa() -> fastattn_kernels::Isa {
    fastattn_kernels::Isa::Scalar
}
