//! The registry of benchmark suites: what `cargo xtask bench` measures and what
//! `cargo xtask profile <kernel>` can run.
//!
//! # Adding a suite
//! Write a function listing its cases and one building a case from a `--shape` string,
//! then add a [`Suite`] entry to [`suites`]. A case is a [`Case`]: its work (flops, bytes,
//! [`Bound`](crate::case::Bound)) and a setup closure that builds the inputs once and returns one [`Impl`](crate::case::Impl) per
//! implementation, each a closure performing one call. Setup runs only when the case is
//! selected, so large inputs cost nothing otherwise. See [`gemm_case`] for the pattern.
//! Each suite has a file of its own (`gemm`, `elementwise`, `attention`, `layer`,
//! `serving` for `varlen` and `paged`, `dequant`).
//!
//! The `attention` suite compares every variant's fused path with a materialised attention
//! on matrixmultiply ([`MATERIALIZED_MM`](crate::peers::MATERIALIZED_MM)). GEMM and attention
//! cases also name what the torch peer computes on them ([`Case::with_torch`]: `torch.mm`,
//! SDPA). The `layer` suite
//! times the whole multi-head attention layer (prefill, and decoding against a cache).
//! The `dequant` suite (`--full` only, or a case named exactly: `--filter dequant/4096`)
//! times the 8-bit codecs of `kernels::quant` (int8, FP8 E4M3, FP8 E5M2 → f32) per variant,
//! next to the bf16 → f32 conversion.

mod attention;
mod dequant;
mod elementwise;
mod gemm;
mod layer;
mod serving;
mod shape;

pub use self::attention::{attention_case, attention_cases, backward_case, backward_cases};
pub use dequant::{dequant_case, dequant_cases, DEQUANT_SIZES};
pub use elementwise::{
    exp_case, exp_cases, softmax_case, softmax_cases, EXP_SIZES, SOFTMAX_SHAPES,
};
pub use gemm::{gemm_case, gemm_cases, parse_gemm_shape, FULL_SQUARES, SCALAR_QUICK_MAX_FLOPS};
pub use layer::{layer_case, layer_cases};
pub use serving::{paged_case, paged_cases, varlen_case, varlen_cases, MIXED_LENGTHS};

use self::attention::{attention_from_shape, backward_from_shape};
use crate::case::Case;
use crate::Result;
use dequant::dequant_from_shape;
use elementwise::{exp_from_shape, softmax_from_shape};
use gemm::gemm_from_shape;
use layer::layer_from_shape;
use serving::{paged_from_shape, varlen_from_shape};
/// A suite: its cases, and how `profile` builds one case from a shape.
pub struct Suite {
    /// Name (`gemm`): the `--filter` word and the `profile` kernel name.
    pub name: &'static str,
    /// Every case, quick and `--full` only.
    pub cases: fn() -> Vec<Case>,
    /// One case from a `--shape` string, for `cargo xtask profile`.
    pub from_shape: fn(&str) -> Result<Case>,
    /// What `--shape` looks like for this suite (shown in errors).
    pub shape_help: &'static str,
    /// The shape `profile` uses when none is given.
    pub default_shape: &'static str,
}

/// Every suite, in the order `bench` runs them.
pub fn suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "gemm",
            cases: gemm_cases,
            from_shape: gemm_from_shape,
            shape_help: "MxKxN (C is MxN, A MxK, B KxN) or N for a square",
            default_shape: "512x512x512",
        },
        Suite {
            name: "exp",
            cases: exp_cases,
            from_shape: exp_from_shape,
            shape_help: "N (elements)",
            default_shape: "262144",
        },
        Suite {
            name: "softmax",
            cases: softmax_cases,
            from_shape: softmax_from_shape,
            shape_help: "ROWSxLEN (rows of LEN values)",
            default_shape: "64x1024",
        },
        Suite {
            name: "attention",
            cases: attention_cases,
            from_shape: attention_from_shape,
            shape_help: "HQxHKVxLQxLKxD[c] (append c for causal), e.g. 8x8x1024x1024x64c",
            default_shape: "8x8x1024x1024x64",
        },
        Suite {
            name: "backward",
            cases: backward_cases,
            from_shape: backward_from_shape,
            shape_help: "HQxHKVxLQxLKxD[c][f] (c: causal; f: forward + backward)",
            default_shape: "8x8x1024x1024x64",
        },
        Suite {
            name: "layer",
            cases: layer_cases,
            from_shape: layer_from_shape,
            shape_help:
                "DMODELxHQxHKVxL[+CACHE] (L tokens; +CACHE: decode after CACHE cached tokens)",
            default_shape: "768x12x12x512",
        },
        Suite {
            name: "varlen",
            cases: varlen_cases,
            from_shape: varlen_from_shape,
            shape_help: "HQxHKVxD[c]: the 16-sequence mixed batch (c: causal)",
            default_shape: "8x8x64c",
        },
        Suite {
            name: "paged",
            cases: paged_cases,
            from_shape: paged_from_shape,
            shape_help: "SEQSxCACHEDxHQxHKVxDxBLOCK (decode from a bf16 paged cache)",
            default_shape: "32x4096x32x8x128x16",
        },
        Suite {
            name: "dequant",
            cases: dequant_cases,
            from_shape: dequant_from_shape,
            shape_help: "N (elements)",
            default_shape: "262144",
        },
    ]
}

/// The suite called `name`.
///
/// # Errors
/// An unknown name (the message lists the suites).
pub fn suite(name: &str) -> Result<Suite> {
    let all = suites();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    let names = names.join(", ");
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("unknown kernel {name:?}; known: {names}").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::{DType, Isa};

    #[test]
    fn attention_and_layer_cases_have_16_bit_rows_that_run() {
        let best = Isa::best().name();
        for case in [
            attention_case(2, 1, 5, 9, 8, true),
            attention_case(2, 2, 1, 40, 16, false),
            layer_case(32, 4, 2, 3, 0),
            layer_case(32, 4, 2, 1, 6),
        ] {
            let mut impls = (case.setup)();
            let names: Vec<String> = impls.iter().map(|i| i.name.clone()).collect();
            assert!(names.contains(&format!("{best}-bf16")), "{names:?}");
            let b16 = impls.iter().find(|i| i.name.ends_with("-bf16")).unwrap();
            assert!(b16.bytes.unwrap() < case.bytes, "{}", case.id());
            if case.suite == "layer" && case.name.contains('+') {
                // Decode: bf16 weights with an int8 cache too.
                assert!(names.contains(&format!("{best}-bf16-i8kv")), "{names:?}");
            }
            if case.suite == "attention" {
                // The 8-bit rows (f32 Q and output) move fewer bytes than the f32 row.
                for q in ["i8", "f8e4m3", "f8e5m2"] {
                    let row = impls.iter().find(|i| i.name == format!("{best}-{q}"));
                    let row = row.unwrap_or_else(|| panic!("no {q} row in {names:?}"));
                    assert!(row.bytes.unwrap() < case.bytes, "{}", case.id());
                }
            }
            for imp in impls.iter_mut() {
                (imp.run)(1);
            }
        }
        let a = attention_case(2, 1, 5, 9, 8, true);
        let dtypes: Vec<DType> = a.torch.iter().map(|t| t.dtype()).collect();
        assert_eq!(dtypes, [DType::F32, DType::BF16]);
        assert!(crate::peers::is_peer("torch-bf16") && crate::peers::is_peer("torch"));
        assert!(!crate::peers::is_peer("avx2-bf16") && !crate::peers::is_peer("torchy"));
    }

    #[test]
    fn serving_cases_run_every_implementation() {
        for case in [
            varlen_case(&[3, 1, 5], 2, 1, 8, true),
            paged_case(3, 20, 4, 2, 8, 7),
            paged_case(2, 5, 2, 2, 4, 1),
        ] {
            let mut impls = (case.setup)();
            let names: Vec<String> = impls.iter().map(|i| i.name.clone()).collect();
            assert!(
                names.iter().any(|n| n.starts_with("dense-")),
                "{}: {names:?}",
                case.id()
            );
            for imp in impls.iter_mut() {
                (imp.run)(1);
            }
        }
        assert_eq!(MIXED_LENGTHS.iter().sum::<usize>(), 7968);
        assert!(crate::peers::is_peer("dense-per-seq") && crate::peers::is_peer("dense-decode"));
    }

    #[test]
    fn unknown_kernel_lists_the_suites() {
        let err = suite("gemv").err().unwrap().to_string();
        assert!(err.contains("gemm"), "{err}");
        assert!(suite("gemm").is_ok());
    }
}
