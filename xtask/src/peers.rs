//! The peers: the implementations that are not ours (matrixmultiply, the gemm crate, a
//! materialised attention, std, torch), by the names reports and `--peers` use.

/// Names of the peer implementations a suite may register (besides our ISA variants).
pub const PEERS: &[&str] = &[
    MATRIXMULTIPLY,
    GEMM_CRATE,
    MATERIALIZED_MM,
    STD,
    TORCH,
    DENSE_PER_SEQ,
    DENSE_DECODE,
    CANDLE,
];

/// Whether the implementation named `name` is a peer: one of [`PEERS`], or a peer's row in
/// another element type (`torch-bf16`).
pub fn is_peer(name: &str) -> bool {
    PEERS
        .iter()
        .any(|p| name == *p || name.strip_prefix(p).is_some_and(|r| r.starts_with('-')))
}

/// PyTorch: `torch.mm` on GEMM cases, SDPA on attention cases ([`crate::torch`]).
pub const TORCH: &str = "torch";

/// The `matrixmultiply` crate's `sgemm`.
pub const MATRIXMULTIPLY: &str = "matrixmultiply";
/// The `gemm` crate (`gemm::gemm`, f32).
pub const GEMM_CRATE: &str = "gemm-crate";
/// Plain attention that materialises the score matrix, its GEMMs on `matrixmultiply`.
pub const MATERIALIZED_MM: &str = "materialized-mm";
/// Our dense attention called once per sequence of a variable-length batch (the `varlen`
/// suite's baseline: what a caller without the varlen API does).
pub const DENSE_PER_SEQ: &str = "dense-per-seq";
/// Our dense decode over a contiguous `[B, Hkv, L, D]` cache (the `paged` suite's
/// baseline for reading pages in place).
pub const DENSE_DECODE: &str = "dense-decode";
/// candle's own CPU attention: matmul, softmax, matmul over the full score matrix
/// (`fastattn_candle::reference::attention_matmul_softmax`, what candle-transformers' models
/// run), f32.
pub const CANDLE: &str = "candle";
/// A plain Rust loop on the standard library's `f32::exp` (exp and softmax baseline).
pub const STD: &str = "std";

/// Environment variable that sets `matrixmultiply`'s thread count, once per process.
pub const MATMUL_THREADS_VAR: &str = "MATMUL_NUM_THREADS";

/// The thread count `matrixmultiply` runs with in this process, if it is known.
///
/// matrixmultiply's `threading` feature starts its own pool on first use, sized by
/// `MATMUL_NUM_THREADS` (default: the physical core count), and never resizes it. So it is
/// measured at exactly that many threads and reported under that count only; `main` sets
/// the variable to 1 when it is unset. `None` when the variable is unset or not a number.
pub fn matrixmultiply_threads() -> Option<usize> {
    std::env::var(MATMUL_THREADS_VAR)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(|n| n.max(1))
}
