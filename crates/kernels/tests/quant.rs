//! The 8-bit codecs: every fp8 code against the format definitions, round trips, ties to
//! even between every pair of adjacent codes, saturation, subnormals and signed zero; the
//! row dequantisers of every ISA bit-identical to the scalar references; quantise-on-write
//! error bounds and refusals.

use fastattn_kernels::quant::reference::{
    dequant_f8e4m3_row_ref, dequant_f8e5m2_row_ref, dequant_i8_row_ref, fp8_decode_ref,
    fp8_encode_ref, Fp8Spec, E4M3_SPEC, E5M2_SPEC,
};
use fastattn_kernels::quant::{
    dequant_f8e4m3_row, dequant_f8e5m2_row, dequant_i8_row, f8_scale_for, quantize_f8e4m3_row,
    quantize_f8e5m2_row, quantize_i8_row, F8E4M3, F8E5M2,
};
use fastattn_kernels::{Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testutil::variants;

/// One fp8 type seen through plain functions, so the tests run once per format.
struct Fmt {
    name: &'static str,
    spec: Fp8Spec,
    nan_code: u8,
    max: f32,
    max_code: u8,
    to_f32: fn(u8) -> f32,
    from_f32: fn(f32) -> u8,
}

const FORMATS: [Fmt; 2] = [
    Fmt {
        name: "e4m3fn",
        spec: E4M3_SPEC,
        nan_code: 0x7F,
        max: 448.0,
        max_code: 0x7E,
        to_f32: |b| F8E4M3::from_bits(b).to_f32(),
        from_f32: |x| F8E4M3::from_f32(x).to_bits(),
    },
    Fmt {
        name: "e5m2",
        spec: E5M2_SPEC,
        nan_code: 0x7E,
        max: 57344.0,
        max_code: 0x7B,
        to_f32: |b| F8E5M2::from_bits(b).to_f32(),
        from_f32: |x| F8E5M2::from_f32(x).to_bits(),
    },
];

fn is_nan_code(f: &Fmt, c: u8) -> bool {
    fp8_decode_ref(f.spec, c).is_nan()
}

#[test]
fn fp8_every_code_decodes_exactly_as_the_definition() {
    for f in &FORMATS {
        let mut nans = 0;
        for c in 0..=255u8 {
            let want = fp8_decode_ref(f.spec, c);
            let got = (f.to_f32)(c);
            if want.is_nan() {
                nans += 1;
                assert!(
                    got.is_nan(),
                    "{} code {c:#04x}: got {got}, want NaN",
                    f.name
                );
            } else {
                assert_eq!(
                    f64::from(got).to_bits(),
                    want.to_bits(),
                    "{} code {c:#04x}: got {got:e}, want {want:e}",
                    f.name
                );
            }
        }
        assert_eq!(nans, if f.name == "e4m3fn" { 2 } else { 6 }, "{}", f.name);
    }
    // Spot values from the format tables (OCP FP8 spec).
    assert_eq!(F8E4M3::from_bits(0x7E).to_f32(), 448.0);
    assert_eq!(F8E4M3::from_bits(0x01).to_f32(), 2f32.powi(-9));
    assert_eq!(F8E4M3::from_bits(0x08).to_f32(), 2f32.powi(-6));
    assert_eq!(F8E5M2::from_bits(0x7B).to_f32(), 57344.0);
    assert_eq!(F8E5M2::from_bits(0x01).to_f32(), 2f32.powi(-16));
    assert_eq!(F8E5M2::from_bits(0xFC).to_f32(), f32::NEG_INFINITY);
}

#[test]
fn fp8_every_finite_code_round_trips() {
    for f in &FORMATS {
        for c in 0..=255u8 {
            if is_nan_code(f, c) {
                continue;
            }
            let v = (f.to_f32)(c);
            let back = (f.from_f32)(v);
            if v.is_infinite() {
                // e5m2 ±inf saturate (documented), they are never written.
                assert_eq!(back, (c & 0x80) | f.max_code, "{} code {c:#04x}", f.name);
            } else {
                assert_eq!(
                    back, c,
                    "{} code {c:#04x} ({v:e}) came back as {back:#04x}",
                    f.name
                );
            }
        }
    }
}

#[test]
fn fp8_nan_encodes_to_a_nan_code_with_its_sign() {
    for f in &FORMATS {
        for x in [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001)] {
            let c = (f.from_f32)(x);
            assert!(is_nan_code(f, c), "{} {x}: {c:#04x}", f.name);
            assert_eq!(c & 0x7F, f.nan_code, "{}", f.name);
            assert_eq!(c & 0x80 != 0, x.is_sign_negative(), "{}", f.name);
        }
    }
}

/// The finite non-negative codes of `f` in increasing order of value.
fn positive_codes(f: &Fmt) -> Vec<u8> {
    (0..0x80u8)
        .filter(|&c| fp8_decode_ref(f.spec, c).is_finite())
        .collect()
}

#[test]
fn fp8_midpoints_between_adjacent_codes_round_to_even() {
    for f in &FORMATS {
        let codes = positive_codes(f);
        for w in codes.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let (a, b) = ((f.to_f32)(lo), (f.to_f32)(hi));
            let mid = (f64::from(a) + f64::from(b)) / 2.0;
            let m = mid as f32;
            assert_eq!(
                f64::from(m),
                mid,
                "{}: midpoint {mid} not exact in f32",
                f.name
            );
            let even = if lo % 2 == 0 { lo } else { hi };
            for sign in [0u8, 0x80] {
                let x = if sign == 0 { m } else { -m };
                assert_eq!(
                    (f.from_f32)(x),
                    sign | even,
                    "{}: tie {x:e} between {lo:#04x} and {hi:#04x}",
                    f.name
                );
                assert_eq!(
                    fp8_encode_ref(f.spec, x, f.nan_code),
                    sign | even,
                    "{} ref",
                    f.name
                );
                // Just off the midpoint rounds to the nearer code.
                let below = f32::from_bits(m.to_bits() - 1);
                let above = f32::from_bits(m.to_bits() + 1);
                let (below, above) = if sign == 0 {
                    (below, above)
                } else {
                    (-below, -above)
                };
                assert_eq!((f.from_f32)(below), sign | lo, "{}: {below:e}", f.name);
                assert_eq!((f.from_f32)(above), sign | hi, "{}: {above:e}", f.name);
            }
        }
    }
}

#[test]
fn fp8_encoding_matches_the_search_reference_on_random_values() {
    let seed = 32;
    let mut rng = StdRng::seed_from_u64(seed);
    for f in &FORMATS {
        for i in 0..20_000 {
            let x = match i % 3 {
                0 => f32::from_bits(rng.random::<u32>()),
                1 => rng.random_range(-1.2 * f.max..1.2 * f.max),
                _ => rng.random_range(-0.05f32..0.05) * 2f32.powi(-(i % 20)),
            };
            let want = fp8_encode_ref(f.spec, x, f.nan_code);
            let got = (f.from_f32)(x);
            assert_eq!(
                got,
                want,
                "seed {seed} {} x={x:e} ({:#010x})",
                f.name,
                x.to_bits()
            );
        }
    }
}

#[test]
fn fp8_saturates_at_the_largest_finite_value() {
    for f in &FORMATS {
        for x in [f.max, f.max * 1.01, f.max * 1e3, f32::MAX, f32::INFINITY] {
            assert_eq!((f.from_f32)(x), f.max_code, "{} {x:e}", f.name);
            assert_eq!((f.from_f32)(-x), 0x80 | f.max_code, "{} {:e}", f.name, -x);
        }
    }
    assert_eq!(F8E4M3::from_f32(470.0).to_f32(), 448.0);
    assert_eq!(F8E5M2::from_f32(65504.0).to_f32(), 57344.0);
}

#[test]
fn fp8_subnormals_and_signed_zero() {
    // e4m3: spacing 2^-9 below 2^-6; e5m2: spacing 2^-16 below 2^-14.
    for (f, sp) in [(&FORMATS[0], 2f32.powi(-9)), (&FORMATS[1], 2f32.powi(-16))] {
        let m_max = (1u8 << f.spec.man_bits) - 1;
        for k in 1..=m_max {
            assert_eq!((f.from_f32)(f32::from(k) * sp), k, "{} {k}·spacing", f.name);
            assert_eq!((f.to_f32)(k), f32::from(k) * sp, "{}", f.name);
        }
        // Half the smallest subnormal is a tie with zero: to even (0); just above, up.
        assert_eq!((f.from_f32)(sp / 2.0), 0, "{}", f.name);
        assert_eq!((f.from_f32)(sp * 0.5000001), 1, "{}", f.name);
        assert_eq!((f.from_f32)(-sp / 4.0), 0x80, "{}", f.name);
        assert_eq!((f.from_f32)(1e-45), 0, "{}", f.name);
        assert_eq!((f.from_f32)(0.0), 0x00, "{}", f.name);
        assert_eq!((f.from_f32)(-0.0), 0x80, "{}", f.name);
        let nz = (f.to_f32)(0x80);
        assert!(
            nz == 0.0 && nz.is_sign_negative(),
            "{}: -0 decodes to {nz}",
            f.name
        );
    }
}

const LENGTHS: [usize; 13] = [0, 1, 2, 7, 15, 16, 17, 31, 33, 64, 127, 257, 1000];

fn assert_same_bits(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{label} i={i}: got {g:e}, want {w:e}");
    }
}

#[test]
fn dequant_rows_of_every_isa_match_the_reference_bit_for_bit() {
    let seed = 3232;
    let mut rng = StdRng::seed_from_u64(seed);
    for isa in variants() {
        for n in LENGTHS {
            for scale in [1.0f32, 0.0173, 3.5e-3, 1e30, 1e-40] {
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                let label = format!("seed {seed} {isa} n={n} scale={scale:e}");

                let q: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
                let mut out = vec![f32::NAN; n];
                dequant_i8_row(isa, &q, scale, &mut out).unwrap();
                assert_same_bits(&format!("i8 {label}"), &out, &dequant_i8_row_ref(&q, scale));

                let e4: Vec<F8E4M3> = bytes.iter().map(|&b| F8E4M3::from_bits(b)).collect();
                dequant_f8e4m3_row(isa, &e4, scale, &mut out).unwrap();
                let want = dequant_f8e4m3_row_ref(&e4, scale);
                assert_same_bits(&format!("e4m3 {label}"), &out, &want);

                let e5: Vec<F8E5M2> = bytes.iter().map(|&b| F8E5M2::from_bits(b)).collect();
                dequant_f8e5m2_row(isa, &e5, scale, &mut out).unwrap();
                let want = dequant_f8e5m2_row_ref(&e5, scale);
                assert_same_bits(&format!("e5m2 {label}"), &out, &want);
            }
        }
    }
}

#[test]
fn dequant_rows_cover_all_256_codes_on_every_isa() {
    let all: Vec<u8> = (0..=255u8).collect();
    for isa in variants() {
        let mut out = vec![0.0f32; 256];
        let e4: Vec<F8E4M3> = all.iter().map(|&b| F8E4M3::from_bits(b)).collect();
        dequant_f8e4m3_row(isa, &e4, 1.0, &mut out).unwrap();
        assert_same_bits(
            &format!("{isa} e4m3"),
            &out,
            &dequant_f8e4m3_row_ref(&e4, 1.0),
        );
        let e5: Vec<F8E5M2> = all.iter().map(|&b| F8E5M2::from_bits(b)).collect();
        dequant_f8e5m2_row(isa, &e5, 1.0, &mut out).unwrap();
        assert_same_bits(
            &format!("{isa} e5m2"),
            &out,
            &dequant_f8e5m2_row_ref(&e5, 1.0),
        );
        let q: Vec<i8> = all.iter().map(|&b| b as i8).collect();
        dequant_i8_row(isa, &q, 1.0, &mut out).unwrap();
        assert_same_bits(&format!("{isa} i8"), &out, &dequant_i8_row_ref(&q, 1.0));
    }
}

#[test]
fn dequant_rows_refuse_length_mismatch_and_missing_isa() {
    let mut out = [0.0f32; 3];
    let err = dequant_i8_row(Isa::Scalar, &[1, 2], 1.0, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::ShapeMismatch {
                op: "dequant_i8_row",
                ..
            }
        ),
        "{err}"
    );
    let e4 = [F8E4M3::default(); 2];
    assert!(dequant_f8e4m3_row(Isa::Scalar, &e4, 1.0, &mut out).is_err());
    let e5 = [F8E5M2::default(); 3];
    let missing = testutil::missing_isa();
    let err = dequant_f8e5m2_row(missing, &e5, 1.0, &mut out).unwrap_err();
    assert!(matches!(err, KernelError::UnsupportedIsa { .. }), "{err}");
}

#[test]
fn quantize_i8_round_trip_error_is_at_most_half_a_step() {
    let seed = 3201;
    let mut rng = StdRng::seed_from_u64(seed);
    for n in LENGTHS {
        for amp in [1.0f32, 1e-3, 1e4, 1e-30] {
            let src: Vec<f32> = (0..n).map(|_| rng.random_range(-amp..amp)).collect();
            let mut q = vec![0i8; n];
            let scale = quantize_i8_row(&src, &mut q).unwrap();
            let amax = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if amax == 0.0 {
                assert_eq!(scale, 1.0, "seed {seed} n={n}");
            } else {
                assert_eq!(
                    scale,
                    (amax / 127.0).max(f32::MIN_POSITIVE),
                    "seed {seed} n={n}"
                );
            }
            let mut back = vec![0.0f32; n];
            dequant_i8_row(Isa::Scalar, &q, scale, &mut back).unwrap();
            for i in 0..n {
                assert!((-127..=127).contains(&q[i]), "seed {seed} n={n} i={i}");
                let err = f64::from(src[i]) - f64::from(back[i]);
                let bound = f64::from(scale) / 2.0 * (1.0 + 1e-6);
                assert!(
                    err.abs() <= bound,
                    "seed {seed} amp={amp} n={n} i={i}: {} → {} × {scale:e}: error {err:e}",
                    src[i],
                    q[i]
                );
            }
        }
    }
}

#[test]
fn quantize_i8_is_exact_on_codes_times_scale_and_handles_zero_rows() {
    let scale = 0.03125f32;
    let codes: Vec<i8> = (-127..=127).collect();
    let src: Vec<f32> = codes.iter().map(|&c| f32::from(c) * scale).collect();
    let mut q = vec![0i8; src.len()];
    assert_eq!(
        quantize_i8_row(&src, &mut q).unwrap(),
        127.0 * scale / 127.0
    );
    assert_eq!(q, codes);
    // Ties go to even: 0.5 and 1.5 steps.
    let mut q = [0i8; 3];
    quantize_i8_row(&[127.0, 0.5, 1.5], &mut q).unwrap();
    assert_eq!(q, [127, 0, 2]);
    let mut q = [5i8; 4];
    assert_eq!(
        quantize_i8_row(&[0.0, -0.0, 0.0, 0.0], &mut q).unwrap(),
        1.0
    );
    assert_eq!(q, [0; 4]);
    assert_eq!(quantize_i8_row(&[], &mut []).unwrap(), 1.0);
}

#[test]
fn quantize_refuses_non_finite_values_and_bad_scales() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut q = [7i8; 3];
        let err = quantize_i8_row(&[1.0, bad, 2.0], &mut q).unwrap_err();
        assert!(err.to_string().contains("index 1"), "{err}");
        assert_eq!(q, [7; 3], "nothing written on error");
        let mut e4 = [F8E4M3::default(); 3];
        assert!(quantize_f8e4m3_row(&[1.0, 2.0, bad], 1.0, &mut e4).is_err());
        let mut e5 = [F8E5M2::default(); 1];
        assert!(quantize_f8e5m2_row(&[bad], 1.0, &mut e5).is_err());
    }
    for scale in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let mut e4 = [F8E4M3::default(); 1];
        let err = quantize_f8e4m3_row(&[1.0], scale, &mut e4).unwrap_err();
        assert!(matches!(err, KernelError::InvalidArgument { .. }), "{err}");
        let mut e5 = [F8E5M2::default(); 1];
        assert!(
            quantize_f8e5m2_row(&[1.0], scale, &mut e5).is_err(),
            "{scale}"
        );
    }
    assert!(quantize_i8_row(&[1.0], &mut [0i8; 2]).is_err());
    assert!(f8_scale_for(f32::NAN, 448.0).is_err());
    assert!(f8_scale_for(-1.0, 448.0).is_err());
    assert!(f8_scale_for(1.0, 0.0).is_err());
}

#[test]
fn quantize_fp8_is_exact_on_codes_times_scale() {
    let scale = 0.375f32;
    for c in 0..=255u8 {
        let e4 = F8E4M3::from_bits(c);
        let v = e4.to_f32();
        if v.is_finite() {
            let mut q = [F8E4M3::default()];
            quantize_f8e4m3_row(&[v * scale], scale, &mut q).unwrap();
            assert_eq!(q[0], e4, "e4m3 code {c:#04x}");
        }
        let e5 = F8E5M2::from_bits(c);
        let v = e5.to_f32();
        if v.is_finite() {
            let mut q = [F8E5M2::default()];
            quantize_f8e5m2_row(&[v * scale], scale, &mut q).unwrap();
            assert_eq!(q[0], e5, "e5m2 code {c:#04x}");
        }
    }
}

#[test]
fn quantize_fp8_error_bounds_hold() {
    let seed = 3202;
    let mut rng = StdRng::seed_from_u64(seed);
    let src: Vec<f32> = (0..5000)
        .map(|i| rng.random_range(-1.0f32..1.0) * 10f32.powi(i % 9 - 6))
        .collect();
    let amax = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    // (format, max, relative bound, smallest normal, subnormal spacing)
    for (name, max, rel, min_normal, spacing) in [
        (
            "e4m3",
            F8E4M3::MAX,
            2f64.powi(-4),
            2f64.powi(-6),
            2f64.powi(-9),
        ),
        (
            "e5m2",
            F8E5M2::MAX,
            2f64.powi(-3),
            2f64.powi(-14),
            2f64.powi(-16),
        ),
    ] {
        let scale = f8_scale_for(amax, max).unwrap();
        let back: Vec<f32> = if name == "e4m3" {
            let mut q = vec![F8E4M3::default(); src.len()];
            quantize_f8e4m3_row(&src, scale, &mut q).unwrap();
            q.iter().map(|c| c.to_f32() * scale).collect()
        } else {
            let mut q = vec![F8E5M2::default(); src.len()];
            quantize_f8e5m2_row(&src, scale, &mut q).unwrap();
            q.iter().map(|c| c.to_f32() * scale).collect()
        };
        let s = f64::from(scale);
        for (i, (&x, &y)) in src.iter().zip(&back).enumerate() {
            let (x, y) = (f64::from(x), f64::from(y));
            let err = (x - y).abs();
            let bound = if x.abs() / s >= min_normal {
                rel * x.abs()
            } else {
                spacing / 2.0 * s
            };
            // Slack for the f32 quotient x / scale and the product code × scale.
            let bound = bound * (1.0 + 1e-6) + 1e-6 * x.abs();
            assert!(
                err <= bound,
                "seed {seed} {name} i={i}: {x:e} → {y:e} (error {err:e})"
            );
        }
    }
}

#[test]
fn the_generic_row_quantiser_matches_each_types_own() {
    use fastattn_kernels::quant::{quantize_row, Code};
    let mut rng = testutil::seeded(77);
    for n in [0usize, 1, 7, 64, 129] {
        let x: Vec<f32> = (0..n)
            .map(|_| rand::Rng::random_range(&mut rng, -3.0f32..3.0))
            .collect();
        let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
        let sa = quantize_i8_row(&x, &mut a).unwrap();
        assert_eq!(quantize_row(&x, None, &mut b).unwrap(), sa);
        assert_eq!(a, b);
        for scale in [0.01f32, 0.5] {
            let (mut a, mut b) = (vec![F8E4M3::default(); n], vec![F8E4M3::default(); n]);
            quantize_f8e4m3_row(&x, scale, &mut a).unwrap();
            assert_eq!(quantize_row(&x, Some(scale), &mut b).unwrap(), scale);
            assert_eq!(a, b);
            let (mut a, mut b) = (vec![F8E5M2::default(); n], vec![F8E5M2::default(); n]);
            quantize_f8e5m2_row(&x, scale, &mut a).unwrap();
            quantize_row(&x, Some(scale), &mut b).unwrap();
            assert_eq!(a, b);
        }
        // Its own scale maps the largest magnitude to the largest code.
        let mut c = vec![F8E4M3::default(); n];
        let s = quantize_row(&x, None, &mut c).unwrap();
        if let Some(i) = (0..n).max_by(|&i, &j| x[i].abs().total_cmp(&x[j].abs())) {
            if x[i] != 0.0 {
                assert_eq!(c[i].decode().abs(), F8E4M3::MAX, "n {n}");
                assert!((c[i].decode() * s - x[i]).abs() <= x[i].abs() * 1e-6);
            }
        }
    }
    // Bad input: nothing written.
    let mut c = [7i8; 2];
    assert!(quantize_row(&[1.0, f32::NAN], None, &mut c).is_err());
    assert!(quantize_row(&[1.0, 2.0], Some(0.0), &mut c).is_err());
    assert!(quantize_row(&[1.0, 2.0], Some(f32::INFINITY), &mut c).is_err());
    assert_eq!(c, [7, 7]);
}
