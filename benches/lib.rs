//! Shapes and fixtures shared by the criterion benches and `cargo xtask bench`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Square GEMM sizes of the quick suite.
pub const SQUARES: &[usize] = &[64, 128, 256, 512, 1024];

/// Attention- and layer-shaped GEMMs `(m, k, n)`.
pub const RECT: &[(usize, usize, usize)] = &[(64, 64, 256), (64, 256, 64), (512, 768, 2304)];

/// `len` uniform values in [-1, 1) from a fixed seed.
pub fn random_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `C = A·B` with the `gemm` crate (row-major, sequential or all threads).
pub fn gemm_crate(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    threads: usize,
) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: a is m×k, b k×n, c m×n, all row-major and of those lengths.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `C = A·B` with `matrixmultiply` (row-major).
pub fn matrixmultiply_sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: lengths checked above; row-major strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}
