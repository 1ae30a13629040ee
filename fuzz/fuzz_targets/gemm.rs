//! Fuzzes the safe GEMM API: `MatRef`/`MatMut` construction from arbitrary sizes, strides
//! (zero, gapped, too large) and buffer lengths (sometimes too short), then `gemm_with` and
//! `gemm_packed_b` with arbitrary scalars, variants and parallelism.
//!
//! Checks: a view is either refused with a documented error or valid; a call on valid views
//! either returns a documented error (shape mismatch) or leaves every element of C's buffer
//! outside the view untouched and, for finite inputs, the view equal to the f64 reference
//! within `c·k·ε·Σ|a·b|`.

#![no_main]

mod common;

use arbitrary::{Result, Unstructured};
use common::values;
use kernels::gemm::packed::{gemm_packed_b, PackedB};
use kernels::gemm::reference::gemm_ref;
use kernels::{gemm_with, Isa, KernelError, MatMut, MatRef, Parallelism};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

const SENTINEL: f32 = -12345.0;

/// Strides and a buffer length for a `rows × cols` view; the length is sometimes short.
fn layout(u: &mut Unstructured<'_>, rows: usize, cols: usize) -> Result<(usize, usize, usize)> {
    let (rs, cs) = match u.int_in_range(0u8..=5)? {
        0 => (cols, 1),
        1 => (1, rows),
        2 => (cols + u.int_in_range(0..=3)?, 1),
        3 => (u.int_in_range(0..=50)?, u.int_in_range(0..=50)?),
        4 => (0, u.int_in_range(0..=2)?),
        _ => (u.int_in_range(0..=2)?, 0),
    };
    let need = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    let slack = u.int_in_range(-2i64..=3)?;
    let len = (need as i64 + slack).max(0) as usize;
    Ok((rs, cs, len))
}

fn is_view_error(e: &KernelError) -> bool {
    matches!(
        e,
        KernelError::BufferTooSmall { .. }
            | KernelError::Overflow { .. }
            | KernelError::BadStride { .. }
    )
}

fn scalar(u: &mut Unstructured<'_>, special: bool) -> Result<f32> {
    Ok(*u.choose(&[0.0, 1.0, -1.0, 0.5, 2.0])?).and_then(|s| {
        if special && u.ratio(1u8, 5)? {
            Ok(*u.choose(&common::SPECIALS)?)
        } else {
            Ok(s)
        }
    })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let m = u.int_in_range(0..=40)?;
    let k = u.int_in_range(0..=80)?;
    let n = u.int_in_range(0..=40)?;
    // Sometimes B's or C's shape does not fit A's.
    let (kb, mc, nc) = if u.ratio(1u8, 10)? {
        (
            u.int_in_range(0..=81)?,
            u.int_in_range(0..=41)?,
            u.int_in_range(0..=41)?,
        )
    } else {
        (k, m, n)
    };
    let special = u.ratio(1u8, 5)?;
    let (rsa, csa, la) = layout(u, m, k)?;
    let (rsb, csb, lb) = layout(u, kb, n)?;
    let (rsc, csc, lc) = layout(u, mc, nc)?;
    let isa = *u.choose(&Isa::available())?;
    let par = if u.arbitrary()? {
        Parallelism::Rayon
    } else {
        Parallelism::Sequential
    };
    let (alpha, beta) = (scalar(u, special)?, scalar(u, special)?);
    let a = values(u, la, special);
    let b = values(u, lb, special);
    let mut c = vec![SENTINEL; lc];

    let av = match MatRef::new(&a, m, k, rsa, csa) {
        Ok(v) => v,
        Err(e) => {
            assert!(is_view_error(&e), "{e:?}");
            return Ok(());
        }
    };
    let bv = match MatRef::new(&b, kb, n, rsb, csb) {
        Ok(v) => v,
        Err(e) => {
            assert!(is_view_error(&e), "{e:?}");
            return Ok(());
        }
    };
    // Positions of C's view (a MatMut proves them pairwise distinct).
    let mut in_view = vec![false; lc];
    if let Err(e) = MatMut::new(&mut c, mc, nc, rsc, csc) {
        assert!(is_view_error(&e), "{e:?}");
        return Ok(());
    }
    for i in 0..mc {
        for j in 0..nc {
            in_view[i * rsc + j * csc] = true;
        }
    }
    for (x, &v) in c.iter_mut().zip(&in_view) {
        if v {
            *x = if beta == 0.0 { f32::NAN } else { 0.75 };
        }
    }
    let c0 = c.clone();
    let r = gemm_with(
        isa,
        par,
        alpha,
        av,
        bv,
        beta,
        MatMut::new(&mut c, mc, nc, rsc, csc).unwrap(),
    );
    if (kb, mc, nc) != (k, m, n) {
        assert!(
            matches!(r, Err(KernelError::ShapeMismatch { op: "gemm", .. })),
            "{r:?}"
        );
        assert!(c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()));
        return Ok(());
    }
    r.unwrap();
    for (idx, (&x, &inside)) in c.iter().zip(&in_view).enumerate() {
        if !inside {
            assert_eq!(x, SENTINEL, "element {idx} outside C's view was written");
        }
    }
    // Special values (NaN, inf, 1e30, ...) only have to go through without harm; small
    // ones are compared with the reference.
    if !special {
        let mut want = c0.clone();
        gemm_ref(
            alpha,
            av,
            bv,
            beta,
            MatMut::new(&mut want, m, n, rsc, csc).unwrap(),
        );
        for i in 0..m {
            for j in 0..n {
                let idx = i * rsc + j * csc;
                let mag: f64 = (0..k)
                    .map(|p| (av.get(i, p) as f64 * bv.get(p, j) as f64).abs())
                    .sum();
                let tol = 2.0
                    * (k as f64 + 2.0)
                    * f32::EPSILON as f64
                    * (alpha.abs() as f64 * mag + beta.abs() as f64)
                    + 1e-30;
                let (g, w) = (c[idx] as f64, want[idx] as f64);
                assert!(
                    (g - w).abs() <= tol,
                    "{isa} {par:?} m={m} k={k} n={n} strides A ({rsa},{csa}) B ({rsb},{csb}) \
                     C ({rsc},{csc}) alpha={alpha} beta={beta}: C[{i},{j}] = {g}, want {w}"
                );
            }
        }
    }

    // The packed-B form on a sub-block of B.
    if u.arbitrary()? && k > 0 && n > 0 {
        let pisa = *u.choose(&Isa::available())?;
        let mut pb = PackedB::new(pisa).unwrap();
        pb.pack(bv).unwrap();
        let nr = pb.nr();
        let col0 = u.int_in_range(0..=n.div_ceil(nr))? * nr;
        let cols = u.int_in_range(0..=n + 1)?;
        let ku = u.int_in_range(0..=k + 1)?;
        let a2 = values(u, m * ku, false);
        let a2v = MatRef::row_major(&a2, m, ku).unwrap();
        let mut c2 = vec![0.0f32; m * cols];
        let r = gemm_packed_b(
            1.0,
            a2v,
            &pb,
            col0,
            0.0,
            MatMut::row_major(&mut c2, m, cols).unwrap(),
        );
        if ku > k || col0 + cols > n {
            assert!(
                matches!(r, Err(KernelError::ShapeMismatch { .. })),
                "{r:?} ku={ku} k={k} col0={col0} cols={cols} n={n}"
            );
        } else {
            r.unwrap();
            if !special {
                for i in 0..m {
                    for j in 0..cols {
                        let (w, mag) = (0..ku).fold((0.0f64, 0.0f64), |(s, g), p| {
                            let t = a2v.get(i, p) as f64 * bv.get(p, col0 + j) as f64;
                            (s + t, g + t.abs())
                        });
                        let tol = 2.0 * (ku as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
                        assert!(
                            (c2[i * cols + j] as f64 - w).abs() <= tol,
                            "packed {pisa}: C[{i},{j}] = {}, want {w}",
                            c2[i * cols + j]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
