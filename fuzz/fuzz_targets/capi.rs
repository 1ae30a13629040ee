//! Fuzzes the C ABI's argument checks. Each input builds a call that is valid by
//! construction (every pointer covers exactly the memory its view reaches) and then applies
//! at most one documented mutation (NULL, misaligned or overflowing pointers and extents,
//! negative or zero strides, self-aliasing or overlapping outputs, mismatched shapes,
//! invalid options, too-small leading dimensions, ...). The serving calls
//! (`fa_sdpa_varlen`, `fa_paged_kv_write`) are in `serving/`.
//!
//! Checks: a valid call returns `FA_OK` and matches a naive f64 computation; a mutated call
//! returns the mutation's status code, writes nothing and sets `fa_last_error()`; no call
//! ever touches memory outside the described views (AddressSanitizer), panics through the
//! boundary, or leaks (LeakSanitizer, with the handle create/free cycles).

#![no_main]

mod common;
mod serving;

use arbitrary::{Result, Unstructured};
use common::{small, values};
use fastattn_capi::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::{c_int, CStr};
use std::ptr::{null, null_mut};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0u8..=5).unwrap_or(0) {
        0 => sgemm(&mut u),
        1 => cblas(&mut u),
        2 => softmax(&mut u),
        3 => sdpa(&mut u),
        4 => serving::serving(&mut u),
        _ => handles(&mut u),
    };
});

const OK: c_int = fa_status::FA_OK as c_int;
const SENTINEL: f32 = -999.0;

fn code(s: fa_status) -> c_int {
    s as c_int
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next failure on this thread.
    unsafe { CStr::from_ptr(fa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Checks a refused call: the expected code, a message naming the function.
fn refused(rc: c_int, want: fa_status, func: &str, what: &str) {
    assert_eq!(rc, code(want), "{func} {what}: {}", last_error());
    assert!(
        last_error().starts_with(func),
        "{func} {what}: {}",
        last_error()
    );
}

/// A strided view's element offsets `(lo, hi)` (any stride signs).
fn reach(dims: &[usize], strides: &[isize]) -> (i128, i128) {
    let (mut lo, mut hi) = (0i128, 0i128);
    if dims.contains(&0) {
        return (0, 0);
    }
    for (&d, &s) in dims.iter().zip(strides) {
        let r = (d as i128 - 1) * s as i128;
        if r < 0 {
            lo += r;
        } else {
            hi += r;
        }
    }
    (lo, hi)
}

/// A buffer holding exactly the view `dims`/`strides` and the pointer to its element 0.
struct Buf {
    data: Vec<f32>,
    origin: usize,
}

impl Buf {
    fn new(u: &mut Unstructured<'_>, dims: &[usize], strides: &[isize], fill: Option<f32>) -> Buf {
        let (lo, hi) = reach(dims, strides);
        let len = if dims.contains(&0) {
            1
        } else {
            (hi - lo + 1) as usize
        };
        let data = match fill {
            Some(v) => vec![v; len],
            None => values(u, len, false),
        };
        Buf {
            data,
            origin: (-lo) as usize,
        }
    }
    fn ptr(&mut self) -> *mut f32 {
        // SAFETY: `origin` is inside the buffer.
        unsafe { self.data.as_mut_ptr().add(self.origin) }
    }
    fn at(&self, dims: &[usize], strides: &[isize], idx: &[usize]) -> usize {
        let _ = dims;
        let off: isize = idx.iter().zip(strides).map(|(&i, &s)| i as isize * s).sum();
        (self.origin as isize + off) as usize
    }
}

/// One byte past `p`: misaligned for f32.
fn misaligned(p: *mut f32) -> *mut f32 {
    p.cast::<u8>().wrapping_add(1).cast()
}

fn stride(u: &mut Unstructured<'_>, extent_other: usize) -> Result<isize> {
    // Any sign, zero included (broadcast inputs).
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 1,
        1 => extent_other as isize + u.int_in_range(0..=2)?,
        2 => -(u.int_in_range(1..=(extent_other as isize + 2))?),
        _ => u.int_in_range(-3..=3)?,
    })
}

// ------------------------------------------------------------------ fa_sgemm

#[derive(Debug, Clone, Copy, PartialEq)]
enum GemmMut {
    None,
    NullA,
    NullB,
    NullC,
    MisalignedA,
    MisalignedC,
    OverflowA,
    OverflowC,
    SelfAliasC,
    COverlapsB,
}

fn sgemm(u: &mut Unstructured<'_>) -> Result<()> {
    use fa_status::*;
    let (m, k, n) = (
        u.int_in_range(0..=12)?,
        u.int_in_range(0..=12)?,
        u.int_in_range(0..=12)?,
    );
    let (rsa, csa) = (stride(u, k)?, stride(u, m)?);
    let (rsb, csb) = (stride(u, n)?, stride(u, k)?);
    // C: row- or column-major, padded, either sign.
    let (s1, pad) = (u.int_in_range(1isize..=2)?, u.int_in_range(0isize..=2)?);
    let (mut rsc, mut csc) = if u.arbitrary()? {
        (s1 * n as isize + pad, s1)
    } else {
        (s1, s1 * m as isize + pad)
    };
    if u.arbitrary()? {
        rsc = -rsc;
    }
    if u.arbitrary()? {
        csc = -csc;
    }
    let alpha = *u.choose(&[1.0f32, 0.0, -0.5, 2.0])?;
    let beta = *u.choose(&[0.0f32, 1.0, 0.5])?;
    let mutation = *u.choose(&[
        GemmMut::None,
        GemmMut::None,
        GemmMut::NullA,
        GemmMut::NullB,
        GemmMut::NullC,
        GemmMut::MisalignedA,
        GemmMut::MisalignedC,
        GemmMut::OverflowA,
        GemmMut::OverflowC,
        GemmMut::SelfAliasC,
        GemmMut::COverlapsB,
    ])?;
    let reads_ab = m > 0 && n > 0 && k > 0 && alpha != 0.0;
    let writes_c = m > 0 && n > 0;
    let (mut rsa, mut rsc_m) = (rsa, rsc);
    let mut csc_m = csc;
    match mutation {
        GemmMut::OverflowA if m > 1 => rsa = isize::MAX / 3,
        GemmMut::OverflowC if m > 1 => rsc_m = isize::MAX / 3,
        GemmMut::SelfAliasC if n > 1 => csc_m = 0,
        _ => {}
    }
    let mut a = Buf::new(
        u,
        &[m, k],
        &[if rsa == isize::MAX / 3 { 0 } else { rsa }, csa],
        None,
    );
    let mut b = Buf::new(u, &[k, n], &[rsb, csb], None);
    let c_fill = if beta == 0.0 { f32::NAN } else { 0.25 };
    let mut c = Buf::new(u, &[m, n], &[rsc, csc], Some(SENTINEL));
    for i in 0..m {
        for j in 0..n {
            let at = c.at(&[m, n], &[rsc, csc], &[i, j]);
            c.data[at] = c_fill;
        }
    }
    let c0 = c.data.clone();
    let (mut ap, mut bp, mut cp) = (a.ptr() as *const f32, b.ptr() as *const f32, c.ptr());
    let mut expect = FA_OK;
    match mutation {
        GemmMut::NullA if reads_ab => (ap, expect) = (null(), FA_ERR_NULL_POINTER),
        GemmMut::NullB if reads_ab => (bp, expect) = (null(), FA_ERR_NULL_POINTER),
        GemmMut::NullC if writes_c => (cp, expect) = (null_mut(), FA_ERR_NULL_POINTER),
        GemmMut::MisalignedA if reads_ab => {
            (ap, expect) = (misaligned(ap.cast_mut()), FA_ERR_INVALID_ARGUMENT)
        }
        GemmMut::MisalignedC if writes_c => {
            (cp, expect) = (misaligned(cp), FA_ERR_INVALID_ARGUMENT)
        }
        GemmMut::OverflowA if reads_ab && m > 1 => expect = FA_ERR_BAD_SHAPE,
        GemmMut::OverflowC if writes_c && m > 1 => expect = FA_ERR_BAD_SHAPE,
        GemmMut::SelfAliasC if writes_c && n > 1 => expect = FA_ERR_BAD_STRIDE,
        GemmMut::COverlapsB if reads_ab => {
            // B read from C's own memory.
            bp = cp;
            let (blo, bhi) = reach(&[k, n], &[rsb, csb]);
            let (clo, chi) = reach(&[m, n], &[rsc, csc]);
            if blo < clo || bhi > chi {
                return Ok(()); // B would reach outside C's buffer: not a valid call to make.
            }
            expect = FA_ERR_BAD_STRIDE;
        }
        GemmMut::OverflowA | GemmMut::OverflowC | GemmMut::SelfAliasC => return Ok(()),
        _ => {}
    }
    // SAFETY: by construction every view lies in its buffer, except in the mutations,
    // which the library must refuse before any access (that is what is being tested).
    let rc = unsafe {
        fa_sgemm(
            m, k, n, alpha, ap, rsa, csa, bp, rsb, csb, beta, cp, rsc_m, csc_m,
        )
    };
    if expect != FA_OK {
        refused(rc, expect, "fa_sgemm", &format!("{mutation:?}"));
        assert!(
            c.data
                .iter()
                .zip(&c0)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "fa_sgemm {mutation:?}: C written"
        );
        return Ok(());
    }
    assert_eq!(
        rc,
        OK,
        "fa_sgemm {m}x{k}x{n} A ({rsa},{csa}) B ({rsb},{csb}) C ({rsc},{csc}): {}",
        last_error()
    );
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let ai = a.at(&[m, k], &[rsa, csa], &[i, p]);
                let bi = b.at(&[k, n], &[rsb, csb], &[p, j]);
                acc += a.data[ai] as f64 * b.data[bi] as f64;
            }
            let ci = c.at(&[m, n], &[rsc, csc], &[i, j]);
            let prior = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c0[ci] as f64
            };
            let want = alpha as f64 * acc + prior;
            let got = c.data[ci] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + k as f64),
                "C[{i},{j}] = {got}, want {want}"
            );
        }
    }
    let mut inside = vec![false; c.data.len()];
    for i in 0..m {
        for j in 0..n {
            inside[c.at(&[m, n], &[rsc, csc], &[i, j])] = true;
        }
    }
    for (idx, (&x, &ins)) in c.data.iter().zip(&inside).enumerate() {
        assert!(
            ins || x == SENTINEL,
            "C buffer element {idx} outside the view written"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ cblas_sgemm

/// Elements a stored matrix of `rows × cols` needs with leading dimension `ld` in the given
/// order (0 when empty).
fn stored_len(row_major: bool, rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    if row_major {
        (rows - 1) * ld + cols
    } else {
        (cols - 1) * ld + rows
    }
}

fn cblas(u: &mut Unstructured<'_>) -> Result<()> {
    let order = *u.choose(&[CblasRowMajor, CblasColMajor, CblasRowMajor, 7])?;
    let ta = *u.choose(&[CblasNoTrans, CblasTrans, CblasConjTrans, 0])?;
    let tb = *u.choose(&[CblasNoTrans, CblasTrans, CblasConjTrans, 115])?;
    let m: c_int = u.int_in_range(-1..=9)?;
    let n: c_int = u.int_in_range(-1..=9)?;
    let k: c_int = u.int_in_range(-1..=9)?;
    let lda: c_int = u.int_in_range(-1..=12)?;
    let ldb: c_int = u.int_in_range(-1..=12)?;
    let ldc: c_int = u.int_in_range(-1..=12)?;
    let alpha = *u.choose(&[1.0f32, 0.0, -2.0])?;
    let beta = *u.choose(&[0.0f32, 1.0, 0.5])?;
    // CBLAS validity (reference xerbla rules), checked in parameter order.
    let row_major = order == CblasRowMajor;
    let t_ok = |t| [CblasNoTrans, CblasTrans, CblasConjTrans].contains(&t);
    let (tra, trb) = (ta != CblasNoTrans, tb != CblasNoTrans);
    // Stored shapes: op(A) is m×k, op(B) k×n.
    let (ar, ac) = if tra { (k, m) } else { (m, k) };
    let (br, bc) = if trb { (n, k) } else { (k, n) };
    let ld_min = |r: c_int, c: c_int| if row_major { c.max(1) } else { r.max(1) };
    let valid = [CblasRowMajor, CblasColMajor].contains(&order)
        && t_ok(ta)
        && t_ok(tb)
        && m >= 0
        && n >= 0
        && k >= 0
        && lda >= ld_min(ar, ac)
        && ldb >= ld_min(br, bc)
        && ldc >= ld_min(m, n);
    let len = |r: c_int, c: c_int, ld: c_int| {
        if valid {
            stored_len(row_major, r as usize, c as usize, ld as usize).max(1)
        } else {
            1
        }
    };
    let a = values(u, len(ar, ac, lda), false);
    let b = values(u, len(br, bc, ldb), false);
    let mut c = values(u, len(m, n, ldc), false);
    let c0 = c.clone();
    // SAFETY: for valid arguments the buffers hold exactly what the dimensions and leading
    // dimensions describe; invalid ones must be refused before any access.
    unsafe {
        cblas_sgemm(
            order,
            ta,
            tb,
            m,
            n,
            k,
            alpha,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            ldb,
            beta,
            c.as_mut_ptr(),
            ldc,
        )
    };
    if !valid {
        assert!(last_error().contains("parameter"), "{}", last_error());
        assert!(
            c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()),
            "C written"
        );
        return Ok(());
    }
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let (lda, ldb, ldc) = (lda as usize, ldb as usize, ldc as usize);
    let idx = |r: usize, cc: usize, ld: usize| if row_major { r * ld + cc } else { cc * ld + r };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if tra {
                    a[idx(p, i, lda)]
                } else {
                    a[idx(i, p, lda)]
                };
                let bv = if trb {
                    b[idx(j, p, ldb)]
                } else {
                    b[idx(p, j, ldb)]
                };
                acc += av as f64 * bv as f64;
            }
            let ci = idx(i, j, ldc);
            let prior = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c0[ci] as f64
            };
            let want = alpha as f64 * acc + prior;
            assert!(
                (c[ci] as f64 - want).abs() <= 1e-5 * (1.0 + k as f64),
                "C[{i},{j}] = {}, want {want}",
                c[ci]
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ fa_softmax

fn softmax(u: &mut Unstructured<'_>) -> Result<()> {
    use fa_status::*;
    let rows = u.int_in_range(0..=8)?;
    let len = u.int_in_range(0..=40)?;
    let special: bool = u.arbitrary()?;
    let mut x = values(u, rows * len + 1, special);
    let x0 = x.clone();
    match u.int_in_range(0u8..=4)? {
        0 => {
            // SAFETY: refused before any access.
            let rc = unsafe { fa_softmax(null_mut(), rows.max(1), len.max(1)) };
            refused(rc, FA_ERR_NULL_POINTER, "fa_softmax", "NULL x");
        }
        1 => {
            // SAFETY: refused before any access (the product overflows).
            let rc = unsafe { fa_softmax(x.as_mut_ptr(), usize::MAX / 2 + rows, 2 + len) };
            refused(rc, FA_ERR_BAD_SHAPE, "fa_softmax", "overflow");
        }
        2 if rows * len > 0 => {
            // SAFETY: refused before any access (misaligned).
            let rc = unsafe { fa_softmax(misaligned(x.as_mut_ptr()), rows, len) };
            refused(rc, FA_ERR_INVALID_ARGUMENT, "fa_softmax", "misaligned");
        }
        _ => {
            // SAFETY: rows·len floats at x.
            let rc = unsafe { fa_softmax(x.as_mut_ptr(), rows, len) };
            assert_eq!(rc, OK, "{}", last_error());
            for r in 0..rows {
                let row = &x0[r * len..(r + 1) * len];
                if !common::finite(row) {
                    continue;
                }
                let mx = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
                let sum: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
                for j in 0..len {
                    let want = (row[j] as f64 - mx).exp() / sum;
                    assert!(
                        (x[r * len + j] as f64 - want).abs() < 1e-5,
                        "row {r} col {j}"
                    );
                }
            }
            assert_eq!(
                x[rows * len].to_bits(),
                x0[rows * len].to_bits(),
                "past the rows"
            );
            return Ok(());
        }
    }
    assert!(
        x.iter().zip(&x0).all(|(a, b)| a.to_bits() == b.to_bits()),
        "x written"
    );
    Ok(())
}

// ------------------------------------------------------------------ fa_sdpa

#[derive(Debug, Clone, Copy, PartialEq)]
enum SdpaMut {
    None,
    NullQ,
    NullKData,
    NegativeStrideK,
    ZeroStrideV,
    MisalignedV,
    SelfAliasOut,
    OutOverlapsQ,
    HeadDims,
    HeadGroups,
    OutDims,
    OverflowQ,
    Causal2,
    WindowMinus2,
    ScaleNan,
    SoftcapNegative,
    KvLengthTooLong,
    KvLengthNegative,
    SlopeInf,
    MaskShape,
    WeightsShape,
    LseOverlapsK,
    UnknownDtypeK,
    Bf16Mask,
    F16Weights,
}

fn dense(dims: [usize; 4]) -> [isize; 4] {
    let [_, h, l, d] = dims;
    [(h * l * d) as isize, (l * d) as isize, d as isize, 1]
}

fn sdpa(u: &mut Unstructured<'_>) -> Result<()> {
    use fa_status::*;
    let b = u.int_in_range(1..=2)?;
    let hkv = u.int_in_range(1..=2)?;
    let hq = hkv * u.int_in_range(1..=2)?;
    let lq = u.int_in_range(1..=6)?;
    let lk = u.int_in_range(1..=8)?;
    let d = u.int_in_range(1..=8)?;
    let dv = u.int_in_range(1..=8)?;
    let mutation = *u.choose(&[
        SdpaMut::None,
        SdpaMut::None,
        SdpaMut::None,
        SdpaMut::NullQ,
        SdpaMut::NullKData,
        SdpaMut::NegativeStrideK,
        SdpaMut::ZeroStrideV,
        SdpaMut::MisalignedV,
        SdpaMut::SelfAliasOut,
        SdpaMut::OutOverlapsQ,
        SdpaMut::HeadDims,
        SdpaMut::HeadGroups,
        SdpaMut::OutDims,
        SdpaMut::OverflowQ,
        SdpaMut::Causal2,
        SdpaMut::WindowMinus2,
        SdpaMut::ScaleNan,
        SdpaMut::SoftcapNegative,
        SdpaMut::KvLengthTooLong,
        SdpaMut::KvLengthNegative,
        SdpaMut::SlopeInf,
        SdpaMut::MaskShape,
        SdpaMut::WeightsShape,
        SdpaMut::LseOverlapsK,
        SdpaMut::UnknownDtypeK,
        SdpaMut::Bf16Mask,
        SdpaMut::F16Weights,
    ])?;
    // Layouts: [B, H, L, D] or [B, L, H, D], optionally with a padded row.
    let layout = |u: &mut Unstructured<'_>, dims: [usize; 4]| -> Result<[isize; 4]> {
        let [_, h, l, dd] = dims;
        Ok(match u.int_in_range(0u8..=2)? {
            0 => dense(dims),
            1 => [(l * h * dd) as isize, dd as isize, (h * dd) as isize, 1],
            _ => {
                let row = (dd + u.int_in_range(1..=3)?) as isize;
                [h as isize * l as isize * row, l as isize * row, row, 1]
            }
        })
    };
    let (qd, kd, vd, od) = (
        [b, hq, lq, d],
        [b, hkv, lk, d],
        [b, hkv, lk, dv],
        [b, hq, lq, dv],
    );
    let (qs, ks, vs, os) = (
        layout(u, qd)?,
        layout(u, kd)?,
        layout(u, vd)?,
        layout(u, od)?,
    );
    let mut qb = Buf::new(u, &qd, &qs, None);
    let mut kb = Buf::new(u, &kd, &ks, None);
    let mut vb = Buf::new(u, &vd, &vs, None);
    let mut ob = Buf::new(u, &od, &os, Some(SENTINEL));
    let mut q = fa_tensor {
        data: qb.ptr().cast(),
        dims: qd,
        strides: qs,
        dtype: 0,
    };
    let mut k = fa_tensor {
        data: kb.ptr().cast(),
        dims: kd,
        strides: ks,
        dtype: 0,
    };
    let mut v = fa_tensor {
        data: vb.ptr().cast(),
        dims: vd,
        strides: vs,
        dtype: 0,
    };
    let mut o = fa_tensor {
        data: ob.ptr().cast(),
        dims: od,
        strides: os,
        dtype: 0,
    };
    // Options, valid by construction.
    let mut opts = fa_sdpa_options::default();
    opts.causal = u.arbitrary::<bool>()? as i32;
    opts.scale = if u.arbitrary()? { 0.0 } else { small(u)? };
    opts.window_left = u.int_in_range(-1..=6)?;
    opts.window_right = u.int_in_range(-1..=6)?;
    opts.softcap = if u.ratio(1u8, 4)? {
        u.int_in_range(1u8..=20)? as f32
    } else {
        0.0
    };
    let mut lens: Vec<i64> = (0..b)
        .map(|_| u.int_in_range(0..=lk as i64).unwrap_or(0))
        .collect();
    if u.arbitrary()? {
        opts.kv_lengths = lens.as_ptr();
    }
    let mut slopes: Vec<f32> = (0..hq).map(|h| 0.5f32.powi(h as i32 + 1)).collect();
    if u.ratio(1u8, 4)? {
        opts.alibi_slopes = slopes.as_ptr();
    }
    let mut mask = values(u, lq * lk, false);
    let mut mt = fa_tensor {
        data: mask.as_mut_ptr().cast(),
        dims: [1, 1, lq, lk],
        strides: [0, 0, lk as isize, 1],
        dtype: 0,
    };
    if u.ratio(1u8, 4)? {
        opts.mask = &mt;
    }
    let wd = [b, hq, lq, lk];
    let mut wbuf = vec![SENTINEL; b * hq * lq * lk];
    let mut wt = fa_tensor {
        data: wbuf.as_mut_ptr().cast(),
        dims: wd,
        strides: dense(wd),
        dtype: 0,
    };
    if u.ratio(1u8, 4)? {
        opts.weights = &mut wt;
    }
    let mut lse = vec![SENTINEL; b * hq * lq];
    if u.arbitrary()? {
        opts.lse = lse.as_mut_ptr();
    }

    let expect = match mutation {
        SdpaMut::None => FA_OK,
        SdpaMut::NullQ => FA_ERR_NULL_POINTER,
        SdpaMut::NullKData => {
            k.data = null_mut();
            FA_ERR_NULL_POINTER
        }
        SdpaMut::NegativeStrideK => {
            k.strides[2] = -k.strides[2].max(1);
            FA_ERR_BAD_STRIDE
        }
        SdpaMut::ZeroStrideV if lk > 1 => {
            v.strides[2] = 0;
            FA_ERR_BAD_STRIDE
        }
        SdpaMut::MisalignedV => {
            v.data = misaligned(v.data.cast()).cast();
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::SelfAliasOut if lq > 1 => {
            o.strides[2] = 0;
            FA_ERR_BAD_STRIDE
        }
        SdpaMut::OutOverlapsQ => {
            // Point out at Q's buffer when Q's buffer is large enough to hold out's view.
            let need = reach(&od, &os).1 as usize + 1;
            if qb.data.len() < need {
                return Ok(());
            }
            o.data = qb.data.as_mut_ptr().cast();
            FA_ERR_BAD_STRIDE
        }
        SdpaMut::HeadDims => {
            // K claims a smaller head dim (its view shrinks: still inside its buffer).
            k.dims[3] = d - 1;
            if d == 1 {
                return Ok(());
            }
            FA_ERR_BAD_SHAPE
        }
        SdpaMut::HeadGroups if hkv == 2 => {
            // Hq = 3 (a view over fewer heads of Q and out when Hq was 4, else skip).
            if hq < 3 {
                return Ok(());
            }
            q.dims[1] = 3;
            o.dims[1] = 3;
            opts.alibi_slopes = null();
            opts.weights = null_mut();
            opts.lse = null_mut();
            FA_ERR_BAD_SHAPE
        }
        SdpaMut::OutDims => {
            o.dims[2] = lq - 1;
            FA_ERR_BAD_SHAPE
        }
        SdpaMut::OverflowQ if b > 1 => {
            q.strides[0] = isize::MAX / 3;
            FA_ERR_BAD_SHAPE
        }
        SdpaMut::Causal2 => {
            opts.causal = 2;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::WindowMinus2 => {
            opts.window_right = -2;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::ScaleNan => {
            opts.scale = f32::NAN;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::SoftcapNegative => {
            opts.softcap = -1.0;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::KvLengthTooLong => {
            lens[b - 1] = lk as i64 + 1;
            opts.kv_lengths = lens.as_ptr();
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::KvLengthNegative => {
            lens[0] = -1;
            opts.kv_lengths = lens.as_ptr();
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::SlopeInf => {
            slopes[hq - 1] = f32::INFINITY;
            opts.alibi_slopes = slopes.as_ptr();
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::MaskShape if lk > 1 => {
            mt.dims[3] = lk - 1;
            opts.mask = &mt;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::WeightsShape if lk > 1 => {
            wt.dims[3] = lk - 1;
            wt.strides = dense(wt.dims);
            opts.weights = &mut wt;
            FA_ERR_BAD_SHAPE
        }
        SdpaMut::LseOverlapsK => {
            if kb.data.len() < b * hq * lq {
                return Ok(());
            }
            opts.lse = kb.data.as_mut_ptr();
            FA_ERR_BAD_STRIDE
        }
        SdpaMut::UnknownDtypeK => {
            // Any code but 0, 1, 2 (fa_dtype).
            let c: i32 = u.arbitrary()?;
            k.dtype = if (0..=2).contains(&c) { c + 3 } else { c };
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::Bf16Mask => {
            // Masks are f32 only (the view is still inside its buffer at 2 bytes each).
            mt.dtype = 2;
            opts.mask = &mt;
            FA_ERR_INVALID_ARGUMENT
        }
        SdpaMut::F16Weights => {
            wt.dtype = 1;
            opts.weights = &mut wt;
            FA_ERR_INVALID_ARGUMENT
        }
        _ => return Ok(()),
    };
    let q_ptr: *const fa_tensor = if mutation == SdpaMut::NullQ {
        null()
    } else {
        &q
    };
    let (w0, l0, o0) = (wbuf.clone(), lse.clone(), ob.data.clone());
    // SAFETY: by construction every view and option array lies in live memory of the
    // documented size, except in the mutations, which must be refused before any access.
    let rc = unsafe { fa_sdpa(q_ptr, &k, &v, &mut o, &opts) };
    if expect != FA_OK {
        refused(rc, expect, "fa_sdpa", &format!("{mutation:?}"));
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same(&ob.data, &o0) && same(&wbuf, &w0) && same(&lse, &l0),
            "{mutation:?}: written"
        );
        return Ok(());
    }
    assert_eq!(rc, OK, "fa_sdpa: {}", last_error());
    // Against the Rust reference over the same views.
    fn view(buf: &Buf, dims: [usize; 4], st: [isize; 4]) -> attention::TensorRef<'_> {
        let st = st.map(|s| s as usize);
        attention::TensorRef::new(&buf.data[buf.origin..], dims, st).unwrap()
    }
    let lens_u: Vec<usize> = lens.iter().map(|&n| n as usize).collect();
    let ropts = attention::SdpaOptions::default()
        .with_scale((opts.scale != 0.0).then_some(opts.scale))
        .with_causal(opts.causal == 1)
        .with_mask((!opts.mask.is_null()).then(|| {
            attention::Mask::Additive(
                attention::TensorRef::new(&mask, [1, 1, lq, lk], [0, 0, lk, 1]).unwrap(),
            )
        }))
        .with_kv_lengths((!opts.kv_lengths.is_null()).then_some(&lens_u[..]))
        .with_window_left(usize::try_from(opts.window_left).ok())
        .with_window_right(usize::try_from(opts.window_right).ok())
        .with_alibi_slopes((!opts.alibi_slopes.is_null()).then_some(&slopes[..]))
        .with_softcap((opts.softcap != 0.0).then_some(opts.softcap));
    let want = attention::reference::sdpa_ref(
        view(&qb, qd, qs),
        view(&kb, kd, ks),
        view(&vb, vd, vs),
        &ropts,
    )
    .expect("the reference accepts a call fa_sdpa accepted");
    let out = view(&ob, od, os);
    for bb in 0..b {
        for h in 0..hq {
            for i in 0..lq {
                let row = (bb * hq + h) * lq + i;
                for x in 0..dv {
                    let (g, w) = (out.get(bb, h, i, x), want.out[row * dv + x]);
                    assert!(
                        (g - w).abs() < 1e-4,
                        "out[{bb},{h},{i},{x}] = {g}, want {w}"
                    );
                }
                if !opts.lse.is_null() {
                    let (g, w) = (lse[row], want.lse[row]);
                    assert!(
                        g == w || (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "lse[{row}] = {g}, want {w}"
                    );
                }
                if !opts.weights.is_null() {
                    for j in 0..lk {
                        let (g, w) = (wbuf[row * lk + j], want.weights[row * lk + j]);
                        assert!((g - w).abs() < 1e-4, "weight[{row},{j}] = {g}, want {w}");
                    }
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ handles

/// Create, use and free layers and caches, with refusals in between: LeakSanitizer (on in
/// libFuzzer runs) reports anything not freed.
fn handles(u: &mut Unstructured<'_>) -> Result<()> {
    use fa_status::*;
    let cfg = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: 4 * u.int_in_range(1..=4)?,
        n_heads: *u.choose(&[1usize, 2, 4, 0])?,
        n_kv_heads: *u.choose(&[0usize, 1, 2, 3])?,
        head_dim: 2 * u.int_in_range(0..=3)?,
        rope: u.int_in_range(0..=2)?,
        rope_base: 0.0,
        weight_dtype: 0,
    };
    let mut layer = null_mut();
    // SAFETY: a valid config and out pointer.
    let rc = unsafe { fa_mha_new_random(&cfg, u.int_in_range(0..=1)?, 1, &mut layer) };
    if rc != OK {
        assert!(layer.is_null(), "a failed constructor published a handle");
        return Ok(());
    }
    let (batch, seq) = (u.int_in_range(1..=2)?, u.int_in_range(1..=4)?);
    let x = values(u, batch * seq * cfg.d_model, false);
    let mut y = vec![0.0f32; x.len()];
    let mut cache = null_mut();
    let cap = u.int_in_range(0..=6)?;
    // SAFETY: live handles, buffers of batch·seq·d_model floats, handles freed once.
    unsafe {
        assert_eq!(
            fa_mha_forward(layer, x.as_ptr(), batch, seq, y.as_mut_ptr(), null()),
            OK
        );
        assert_eq!(fa_kv_cache_new(layer, batch, cap, &mut cache), OK);
        for _ in 0..u.int_in_range(1..=3)? {
            let before = fa_kv_cache_len(cache);
            let rc =
                fa_mha_forward_cached(layer, cache, x.as_ptr(), batch, seq, y.as_mut_ptr(), null());
            if before + seq > cap {
                refused(rc, FA_ERR_CACHE_FULL, "fa_mha_forward_cached", "full");
                assert_eq!(fa_kv_cache_len(cache), before);
            } else {
                assert_eq!(rc, OK, "{}", last_error());
                assert_eq!(fa_kv_cache_len(cache), before + seq);
            }
        }
        if u.arbitrary()? {
            assert_eq!(fa_kv_cache_truncate(cache, 0), OK);
        }
        fa_kv_cache_free(cache);
        fa_mha_free(layer);
    }
    Ok(())
}
