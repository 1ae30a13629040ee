//! Microkernel ceiling per variant: `cargo run --release --example ukr_speed -- [K]`.

fn main() {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    for isa in fastattn_kernels::Isa::available() {
        let (mr, nr) = fastattn_kernels::gemm::tile_of(isa);
        let iters = 200_000;
        let s = fastattn_kernels::gemm::microkernel_seconds(isa, k, iters).unwrap();
        let gf = 2.0 * (mr * nr * k * iters) as f64 / s / 1e9;
        println!("{isa:>9} {mr}x{nr} k={k}: {gf:.1} GFLOP/s");
    }
}
