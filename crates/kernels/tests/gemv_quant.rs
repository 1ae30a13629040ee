//! The decode kernels on 8-bit keys and values with per-row scales
//! (`dot_rows_quant_with`, `axpy_rows_quant_with` and their indexed twins): against the
//! f64 oracles for every variant and code type, on odd and edge sizes; indexed equal to
//! strided bit for bit (several heads included); zero weights skip NaN codes; wrong scale
//! counts refused.

use fastattn_kernels::gemv::{
    axpy_rows_indexed_quant_with, axpy_rows_quant_ref, axpy_rows_quant_with,
    dot_rows_indexed_quant_with, dot_rows_quant_ref, dot_rows_quant_with, Heads,
};
use fastattn_kernels::quant::{Code, F8E4M3, F8E5M2};
use fastattn_kernels::{KernelError, MatMut, MatRef};
use rand::Rng;
use testutil::{assert_err, rand_vec, seeded, variants};

/// Random finite codes of type `C`.
fn codes<C: Code>(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<C> {
    (0..n)
        .map(|_| loop {
            let c: C = from_byte(rng.random::<u8>());
            if c.decode().is_finite() {
                break c;
            }
        })
        .collect()
}

fn from_byte<C: Code>(b: u8) -> C {
    match C::QTYPE {
        fastattn_kernels::quant::QuantType::I8 => cast::<i8, C>(b as i8),
        fastattn_kernels::quant::QuantType::F8E4M3 => cast::<F8E4M3, C>(F8E4M3::from_bits(b)),
        fastattn_kernels::quant::QuantType::F8E5M2 => cast::<F8E5M2, C>(F8E5M2::from_bits(b)),
    }
}

/// `x` as `C` when they are the same type.
fn cast<T: Copy + 'static, C: Copy + 'static>(x: T) -> C {
    *(&x as &dyn std::any::Any)
        .downcast_ref::<C>()
        .expect("same type")
}

fn scales(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0.01f32..2.0)).collect()
}

/// `|got − want| ≤ 1e-5·(Σ|terms| + 1)`, the f32 accumulation bound of these sizes.
fn close(got: f32, want: f32, mag: f64, label: &str) {
    let tol = 1e-5 * (mag + 1.0);
    assert!(
        ((got as f64) - (want as f64)).abs() <= tol,
        "{label}: {got} vs {want} (tol {tol})"
    );
}

fn check<C: Code>(seed: u64) {
    let mut rng = seeded(seed);
    for isa in variants() {
        let mut rng2 = seeded(seed + 100);
        for &rows in &[1usize, 2, 3, 4, 5, 8] {
            for &n in &[0usize, 1, 3, 4, 7, 17, 70, 130] {
                for &d in &[1usize, 7, 16, 33, 128] {
                    let k: Vec<C> = codes(&mut rng2, n * d);
                    let sc = scales(&mut rng2, n);
                    let q = rand_vec(&mut rng2, rows * d);
                    let qm = MatRef::row_major(&q, rows, d).unwrap();
                    let km = MatRef::row_major(&k, n, d).unwrap();
                    let label = format!("{isa:?} {:?} rows {rows} n {n} d {d}", C::QTYPE);
                    let mut s = vec![0.0f32; rows * n];
                    let mut want = vec![0.0f32; rows * n];
                    let sm = MatMut::row_major(&mut s, rows, n).unwrap();
                    dot_rows_quant_with(isa, 0.7, qm, km, &sc, sm).unwrap();
                    dot_rows_quant_ref(
                        0.7,
                        qm,
                        km,
                        &sc,
                        MatMut::row_major(&mut want, rows, n).unwrap(),
                    );
                    for r in 0..rows {
                        for j in 0..n {
                            let mag: f64 = (0..d)
                                .map(|x| (q[r * d + x] as f64 * k[j * d + x].decode() as f64).abs())
                                .sum::<f64>()
                                * 0.7
                                * sc[j] as f64;
                            close(s[r * n + j], want[r * n + j], mag, &format!("dot {label}"));
                        }
                    }
                    // Weights with zeros, and a padded output.
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
                    let o0 = rand_vec(&mut rng2, rows * (d + 1));
                    let (mut o, mut ow) = (o0.clone(), o0.clone());
                    let om = MatMut::new(&mut o, rows, d, d + 1, 1).unwrap();
                    axpy_rows_quant_with(isa, pm, km, &sc, om).unwrap();
                    axpy_rows_quant_ref(
                        pm,
                        km,
                        &sc,
                        MatMut::new(&mut ow, rows, d, d + 1, 1).unwrap(),
                    );
                    for r in 0..rows {
                        for x in 0..d {
                            let mag: f64 = o0[r * (d + 1) + x].abs() as f64
                                + (0..n)
                                    .map(|j| {
                                        (p[r * n + j] as f64
                                            * sc[j] as f64
                                            * k[j * d + x].decode() as f64)
                                            .abs()
                                    })
                                    .sum::<f64>();
                            let i = r * (d + 1) + x;
                            close(o[i], ow[i], mag, &format!("axpy {label}"));
                        }
                        // The padding column is untouched.
                        assert_eq!(o[r * (d + 1) + d].to_bits(), o0[r * (d + 1) + d].to_bits());
                    }
                }
            }
        }
    }
}

#[test]
fn quant_rows_match_the_f64_oracle() {
    check::<i8>(11);
    check::<F8E4M3>(12);
    check::<F8E5M2>(13);
}

/// Indexed rows, one head and two, equal the strided kernel on a matrix of the same rows.
fn indexed<C: Code>(seed: u64) {
    let mut rng = seeded(seed);
    for isa in variants() {
        for &(rows, n, d) in &[
            (1usize, 37usize, 64usize),
            (3, 5, 7),
            (4, 130, 128),
            (2, 1, 33),
        ] {
            for heads in [1usize, 2] {
                // Token t's head h row at t·stride + h·d + 1 of the buffer (`stride` holds
                // every head plus a gap), tokens shuffled.
                let stride = heads * d + 3;
                let slots = n + 2;
                let buf: Vec<C> = codes(&mut rng, slots * stride);
                let order: Vec<usize> = (0..slots).rev().collect();
                let off: Vec<usize> = (0..n).map(|j| order[j] * stride + 1).collect();
                let sc = scales(&mut rng, heads * n);
                let q = rand_vec(&mut rng, heads * rows * d);
                let p: Vec<f32> = (0..heads * rows * n)
                    .map(|_| {
                        if rng.random_bool(0.2) {
                            0.0
                        } else {
                            rng.random()
                        }
                    })
                    .collect();
                let hs = Heads {
                    count: heads,
                    stride: d,
                };
                let mut s = vec![0.0f32; heads * rows * n];
                let qm = MatRef::row_major(&q, heads * rows, d).unwrap();
                let sm = MatMut::row_major(&mut s, heads * rows, n).unwrap();
                dot_rows_indexed_quant_with(isa, 0.5, qm, &buf, &off, hs, &sc, sm).unwrap();
                let mut o = vec![0.25f32; heads * rows * d];
                let pm = MatRef::row_major(&p, heads * rows, n).unwrap();
                let om = MatMut::row_major(&mut o, heads * rows, d).unwrap();
                axpy_rows_indexed_quant_with(isa, pm, &buf, &off, hs, &sc, om).unwrap();
                for h in 0..heads {
                    // Head h's rows as a dense matrix.
                    let dense: Vec<C> = off
                        .iter()
                        .flat_map(|&o| buf[o + h * d..o + h * d + d].iter().copied())
                        .collect();
                    let km = MatRef::row_major(&dense, n, d).unwrap();
                    let sch = &sc[h * n..(h + 1) * n];
                    let mut s1 = vec![0.0f32; rows * n];
                    let qh = MatRef::row_major(&q[h * rows * d..], rows, d).unwrap();
                    dot_rows_quant_with(
                        isa,
                        0.5,
                        qh,
                        km,
                        sch,
                        MatMut::row_major(&mut s1, rows, n).unwrap(),
                    )
                    .unwrap();
                    let label =
                        format!("{isa:?} {:?} {rows} {n} {d} heads {heads} h {h}", C::QTYPE);
                    assert!(
                        s1.iter()
                            .zip(&s[h * rows * n..])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "dot {label}"
                    );
                    let mut o1 = vec![0.25f32; rows * d];
                    let ph = MatRef::row_major(&p[h * rows * n..], rows, n).unwrap();
                    axpy_rows_quant_with(
                        isa,
                        ph,
                        km,
                        sch,
                        MatMut::row_major(&mut o1, rows, d).unwrap(),
                    )
                    .unwrap();
                    assert!(
                        o1.iter()
                            .zip(&o[h * rows * d..])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "axpy {label}"
                    );
                }
            }
        }
    }
}

#[test]
fn indexed_quant_rows_equal_strided_rows_bit_for_bit() {
    indexed::<i8>(21);
    indexed::<F8E4M3>(22);
    indexed::<F8E5M2>(23);
}

#[test]
fn zero_weights_never_read_nan_codes() {
    // Row 1 of V is all NaN codes (e4m3 0x7F, e5m2 0x7E); its weight is 0.
    let nan4 = [F8E4M3::from_bits(0x7F); 40];
    let mut v4 = vec![F8E4M3::from_f32(1.0); 3 * 40];
    v4[40..80].copy_from_slice(&nan4);
    let mut v5 = vec![F8E5M2::from_f32(1.0); 3 * 40];
    v5[40..80].copy_from_slice(&[F8E5M2::from_bits(0x7E); 40]);
    let p = [0.5f32, 0.0, 0.25];
    for isa in variants() {
        let pm = MatRef::row_major(&p, 1, 3).unwrap();
        let mut o = vec![0.0f32; 40];
        axpy_rows_quant_with(
            isa,
            pm,
            MatRef::row_major(&v4, 3, 40).unwrap(),
            &[2.0; 3],
            MatMut::row_major(&mut o, 1, 40).unwrap(),
        )
        .unwrap();
        assert!(o.iter().all(|&x| x == 1.5), "{isa:?} e4m3 {o:?}");
        let mut o = vec![0.0f32; 40];
        axpy_rows_quant_with(
            isa,
            pm,
            MatRef::row_major(&v5, 3, 40).unwrap(),
            &[2.0; 3],
            MatMut::row_major(&mut o, 1, 40).unwrap(),
        )
        .unwrap();
        assert!(o.iter().all(|&x| x == 1.5), "{isa:?} e5m2 {o:?}");
        // A visible NaN code propagates.
        let p1 = [0.5f32, 0.1, 0.25];
        let mut o = vec![0.0f32; 40];
        axpy_rows_quant_with(
            isa,
            MatRef::row_major(&p1, 1, 3).unwrap(),
            MatRef::row_major(&v4, 3, 40).unwrap(),
            &[2.0; 3],
            MatMut::row_major(&mut o, 1, 40).unwrap(),
        )
        .unwrap();
        assert!(o.iter().all(|x| x.is_nan()), "{isa:?} visible NaN");
    }
}

#[test]
fn wrong_scale_counts_are_refused() {
    let isa = fastattn_kernels::Isa::Scalar;
    let k = [1i8; 8];
    let q = [1.0f32; 4];
    let qm = MatRef::row_major(&q, 1, 4).unwrap();
    let km = MatRef::row_major(&k, 2, 4).unwrap();
    let mut s = [0.0f32; 2];
    assert_err!(
        dot_rows_quant_with(
            isa,
            1.0,
            qm,
            km,
            &[1.0],
            MatMut::row_major(&mut s, 1, 2).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
    let p = [1.0f32, 1.0];
    let mut o = [0.0f32; 4];
    assert_err!(
        axpy_rows_quant_with(
            isa,
            MatRef::row_major(&p, 1, 2).unwrap(),
            km,
            &[1.0; 3],
            MatMut::row_major(&mut o, 1, 4).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
    // Indexed: two heads need 2·n scales.
    let hs = Heads {
        count: 2,
        stride: 4,
    };
    let q2 = [1.0f32; 8];
    let mut s2 = [0.0f32; 2];
    assert_err!(
        dot_rows_indexed_quant_with(
            isa,
            1.0,
            MatRef::row_major(&q2, 2, 4).unwrap(),
            &k,
            &[0],
            hs,
            &[1.0],
            MatMut::row_major(&mut s2, 2, 1).unwrap()
        ),
        KernelError::ShapeMismatch { .. }
    );
    assert_eq!((s, o, s2), ([0.0; 2], [0.0; 4], [0.0; 2]));
}

/// Any split of the keys gives the same bits on 8-bit rows too: a score computed among the
/// last keys of a call (one key at a time) equals the same score among a group of four,
/// and each output element takes its keys in order (e4m3's 256 is folded into the scales
/// on both paths).
fn split_bits<C: Code>(seed: u64) {
    let mut rng = seeded(seed);
    for isa in variants() {
        for &(rows, d) in &[(1usize, 7usize), (4, 16), (3, 40), (4, 128)] {
            let n = 133;
            let q = rand_vec(&mut rng, rows * d);
            let k: Vec<C> = codes(&mut rng, n * d);
            let sc = scales(&mut rng, n);
            let p = rand_vec(&mut rng, rows * n);
            let o0 = rand_vec(&mut rng, rows * d);
            let qv = MatRef::row_major(&q, rows, d).unwrap();
            let run = |cuts: &[usize]| {
                let (mut s, mut o) = (vec![0.0f32; rows * n], o0.clone());
                let mut j0 = 0;
                for &j1 in cuts.iter().chain([n].iter()) {
                    let m = j1 - j0;
                    let kv = MatRef::row_major(&k[j0 * d..j1 * d], m, d).unwrap();
                    let sm = MatMut::new(&mut s[j0..], rows, m, n, 1).unwrap();
                    dot_rows_quant_with(isa, 0.7, qv, kv, &sc[j0..j1], sm).unwrap();
                    let pm = MatRef::new(&p[j0..], rows, m, n, 1).unwrap();
                    let om = MatMut::row_major(&mut o, rows, d).unwrap();
                    axpy_rows_quant_with(isa, pm, kv, &sc[j0..j1], om).unwrap();
                    j0 = j1;
                }
                (s, o)
            };
            let (s1, o1) = run(&[]);
            for cuts in [&[1usize, 2, 3][..], &[63, 64, 65, 130]] {
                let (s2, o2) = run(cuts);
                let label = format!("{:?} {isa:?} rows={rows} d={d} cuts={cuts:?}", C::QTYPE);
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&s1, &s2), "{label}: scores");
                assert!(same(&o1, &o2), "{label}: outputs");
            }
        }
    }
}

#[test]
fn quant_rows_give_the_same_bits_on_any_split_of_the_keys() {
    split_bits::<i8>(71);
    split_bits::<F8E4M3>(72);
    split_bits::<F8E5M2>(73);
}
