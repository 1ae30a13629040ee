//! The `dequant` suite: the 8-bit codecs of `kernels::quant` (int8, FP8 E4M3, FP8 E5M2)
//! widened to f32 with a scale, against the bf16 → f32 conversion of `kernels::convert`.
//! Every case is `--full` only (48 rows add about 15 s): run it with `--full` or name a case
//! (`--filter dequant/4096`).

use super::shape::parse_dims;
use crate::case::{Bound, Case, Impl};
use crate::Result;
use fastattn_benches::random_vec;
use kernels::convert::to_f32_with;
use kernels::quant::{dequant_f8e4m3_row, dequant_f8e5m2_row, dequant_i8_row, F8E4M3, F8E5M2};
use kernels::{bf16, DType, Isa};
use std::sync::{Arc, Mutex};

/// Dequantisation sizes, as [`EXP_SIZES`](super::EXP_SIZES): in L1, in L2, and streaming
/// from memory (16 MiB of 8-bit codes in, 64 MiB of f32 out).
pub const DEQUANT_SIZES: &[(usize, Bound)] = &[
    (4096, Bound::Cache),
    (1 << 18, Bound::Cache),
    (1 << 24, Bound::Memory),
];

/// The dequant suite: [`DEQUANT_SIZES`], every case `--full` only.
pub fn dequant_cases() -> Vec<Case> {
    DEQUANT_SIZES
        .iter()
        .map(|&(n, b)| dequant_case(n, b).full_only())
        .collect()
}

pub(super) fn dequant_from_shape(shape: &str) -> Result<Case> {
    let n = parse_dims(shape, 1, "N (elements)")?[0];
    let bound = if n >= 1 << 22 {
        Bound::Memory
    } else {
        Bound::Cache
    };
    Ok(dequant_case(n, bound))
}

/// `dst[i] = scale · decode(src[i])` on `n` codes, one thread, per available variant:
/// `{isa}-i8`, `{isa}-f8e4m3`, `{isa}-f8e5m2` (`kernels::quant::dequant_*_row`) and the
/// 16-bit baseline `{isa}-bf16` (`kernels::convert::to_f32_with`, no scale). Counts no
/// flops; bytes are n read + 4n written (2n + 4n for the bf16 rows).
pub fn dequant_case(n: usize, bound: Bound) -> Case {
    Case::new(
        "dequant",
        n.to_string(),
        format!("n={n}"),
        0.0,
        5.0 * n as f64,
        bound,
        move || {
            let x = random_vec(n, 5);
            let i8s: Arc<Vec<i8>> = Arc::new(x.iter().map(|v| (127.0 * v) as i8).collect());
            let e4: Arc<Vec<F8E4M3>> =
                Arc::new(x.iter().map(|v| F8E4M3::from_f32(448.0 * v)).collect());
            let e5: Arc<Vec<F8E5M2>> =
                Arc::new(x.iter().map(|v| F8E5M2::from_f32(57344.0 * v)).collect());
            let b16: Arc<Vec<bf16>> = Arc::new(x.iter().map(|&v| bf16::from_f32(v)).collect());
            // One output buffer shared by the implementations (they never run at once).
            let out = Arc::new(Mutex::new(vec![0.0f32; n]));
            let mut impls = Vec::new();
            for isa in Isa::available() {
                let (src, o) = (i8s.clone(), out.clone());
                impls.push(codec_row(isa, "i8", move || {
                    dequant_i8_row(isa, &src, 0.01, &mut o.lock().expect("not poisoned"))
                }));
                let (src, o) = (e4.clone(), out.clone());
                impls.push(codec_row(isa, "f8e4m3", move || {
                    dequant_f8e4m3_row(isa, &src, 0.01, &mut o.lock().expect("not poisoned"))
                }));
                let (src, o) = (e5.clone(), out.clone());
                impls.push(codec_row(isa, "f8e5m2", move || {
                    dequant_f8e5m2_row(isa, &src, 0.01, &mut o.lock().expect("not poisoned"))
                }));
                let (src, o) = (b16.clone(), out.clone());
                let run = move |_t: usize| {
                    to_f32_with(isa, &src, &mut o.lock().expect("not poisoned"))
                        .expect("an available ISA runs");
                };
                impls.push(Impl::ours_dtype(isa, DType::BF16, 6.0 * n as f64, run).at_threads(1));
            }
            impls
        },
    )
}

/// Variant `isa` decoding `codec` (row `avx2-i8`), one thread, moving the case's bytes.
fn codec_row(
    isa: Isa,
    codec: &str,
    mut call: impl FnMut() -> kernels::Result<()> + Send + 'static,
) -> Impl {
    let mut imp = Impl::ours(isa, move |_t: usize| {
        call().expect("an available ISA runs");
    })
    .at_threads(1);
    imp.name = format!("{}-{codec}", isa.name());
    imp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequant_case_has_four_rows_per_variant_that_run() {
        let case = dequant_case(37, Bound::Cache);
        assert_eq!((case.flops, case.bytes), (0.0, 5.0 * 37.0));
        let mut impls = (case.setup)();
        assert_eq!(impls.len(), 4 * Isa::available().len());
        let names: Vec<&str> = impls.iter().map(|i| i.name.as_str()).collect();
        for row in ["scalar-i8", "scalar-f8e4m3", "scalar-f8e5m2", "scalar-bf16"] {
            assert!(names.contains(&row), "{names:?}");
        }
        let b16 = impls.iter().find(|i| i.name == "scalar-bf16").unwrap();
        assert_eq!(b16.bytes, Some(6.0 * 37.0));
        for imp in impls.iter_mut() {
            (imp.run)(1);
        }
        assert!(dequant_cases().iter().all(|c| c.full_only));
        let c = dequant_from_shape("16777216").unwrap();
        assert_eq!(
            (c.id().as_str(), c.bound),
            ("dequant/16777216", Bound::Memory)
        );
        assert!(dequant_from_shape("4x4").is_err());
    }
}
