//! The latency suite's cases: square GEMMs, causal prefill and a long-cache decode, each a
//! call of the library's public API that takes the [`Parallelism`] to run with, and the
//! torch op it is compared with.

use crate::torch::TorchOp;
use fastattn_benches::random_vec;
use kernels::gemm::{MatMut, MatRef};
use kernels::{gemm_with, DType, Parallelism};

/// Square GEMM sizes.
pub const GEMM_SIZES: [usize; 5] = [64, 128, 256, 512, 1024];

/// Prefill lengths (H = 8, D = 64, causal).
pub const PREFILL_LENGTHS: [usize; 3] = [128, 256, 512];

/// Decode: one query token against this many cached keys (Hq = 32, Hkv = 8, D = 128).
pub const DECODE_LK: usize = 4096;

/// One call of the case on its inputs, with the given parallelism.
pub type CallFn = Box<dyn FnMut(Parallelism)>;

/// One latency case.
pub struct LatencyCase {
    /// Name inside the suite (`gemm-256`, `prefill-512`, `decode-4096`); the id is
    /// `latency/NAME`.
    pub name: String,
    /// Readable shape.
    pub shape: String,
    /// What torch computes for it.
    pub torch: TorchOp,
    /// Builds the inputs and returns the call (run only when the case is selected).
    pub setup: Box<dyn Fn() -> CallFn>,
}

impl LatencyCase {
    /// `latency/NAME`.
    pub fn id(&self) -> String {
        format!("latency/{}", self.name)
    }
}

/// Every latency case: GEMM 64 … 1024, prefill 128 … 512, decode 4096.
pub fn latency_cases() -> Vec<LatencyCase> {
    let mut cases: Vec<LatencyCase> = GEMM_SIZES.iter().map(|&n| gemm(n)).collect();
    cases.extend(
        PREFILL_LENGTHS
            .iter()
            .map(|&l| attention(8, 8, l, l, 64, true)),
    );
    cases.push(attention(32, 8, 1, DECODE_LK, 128, false));
    cases
}

/// `C = A·B`, f32, row-major `n×n`, through `gemm_with` on the current ISA (what
/// `kernels::gemm` runs, with the parallelism chosen).
pub fn gemm(n: usize) -> LatencyCase {
    LatencyCase {
        name: format!("gemm-{n}"),
        shape: format!("m=k=n={n}"),
        torch: TorchOp::Mm { m: n, k: n, n },
        setup: Box::new(move || {
            let isa = kernels::current_isa().expect("the current ISA runs");
            let (a, b) = (random_vec(n * n, 1), random_vec(n * n, 2));
            let mut c = vec![0.0f32; n * n];
            Box::new(move |par| {
                let am = MatRef::row_major(&a, n, n).expect("A fits");
                let bm = MatRef::row_major(&b, n, n).expect("B fits");
                let cm = MatMut::row_major(&mut c, n, n).expect("C fits");
                gemm_with(isa, par, 1.0, am, bm, 0.0, cm).expect("a valid GEMM");
            })
        }),
    }
}

fn t(x: &[f32], dims: [usize; 4]) -> attention::TensorRef<'_, f32> {
    attention::TensorRef::contiguous(x, dims).expect("the buffer fits the shape")
}

/// f32 SDPA through `attention::sdpa_into` with default options (B = 1): prefill when
/// `lq > 1` (named `prefill-L`), else decode (`decode-LK`).
pub fn attention(
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    causal: bool,
) -> LatencyCase {
    let name = if lq == 1 {
        format!("decode-{lk}")
    } else {
        format!("prefill-{lq}")
    };
    LatencyCase {
        name,
        shape: format!("hq={hq} hkv={hkv} lq={lq} lk={lk} d={d} causal={causal}"),
        torch: TorchOp::Sdpa {
            hq,
            hkv,
            lq,
            lk,
            d,
            causal,
            dtype: DType::F32,
        },
        setup: Box::new(move || {
            let q = random_vec(hq * lq * d, 5);
            let k = random_vec(hkv * lk * d, 6);
            let v = random_vec(hkv * lk * d, 7);
            let mut out = vec![0.0f32; hq * lq * d];
            Box::new(move |par| {
                let opts = attention::SdpaOptions::default()
                    .with_causal(causal)
                    .with_parallelism(par);
                attention::sdpa_into(
                    t(&q, [1, hq, lq, d]),
                    t(&k, [1, hkv, lk, d]),
                    t(&v, [1, hkv, lk, d]),
                    attention::TensorMut::contiguous(&mut out, [1, hq, lq, d]).expect("fits"),
                    &opts,
                    attention::SdpaOutputs::default(),
                )
                .expect("a valid problem");
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_named_and_every_call_runs_both_ways() {
        let ids: Vec<String> = latency_cases().iter().map(LatencyCase::id).collect();
        assert_eq!(ids.len(), 9);
        assert_eq!(ids[0], "latency/gemm-64");
        assert!(ids.contains(&"latency/prefill-256".to_string()));
        assert_eq!(ids[8], "latency/decode-4096");
        for case in [
            gemm(7),
            attention(2, 1, 5, 5, 8, true),
            attention(4, 2, 1, 33, 16, false),
        ] {
            let mut call = (case.setup)();
            call(Parallelism::Sequential);
            call(Parallelism::Rayon);
        }
        assert_eq!(gemm(3).torch.command(), "mm 3 3 3");
        assert_eq!(
            attention(4, 2, 1, 33, 16, false).torch.command(),
            "sdpa 4 2 1 33 16 0"
        );
    }
}
