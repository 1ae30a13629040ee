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

/// The baseline attention: per head, `S = Q·Kᵀ/√d` with matrixmultiply, a scalar softmax
/// with `f32::exp`, then `O = P·V` with matrixmultiply. Contiguous `[H, L, D]` inputs.
pub fn naive_attention(
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0f32; h * lq * d];
    let mut s = vec![0.0f32; lq * lk];
    let scale = 1.0 / (d as f32).sqrt();
    for hh in 0..h {
        let (qh, kh, vh) = (&q[hh * lq * d..], &k[hh * lk * d..], &v[hh * lk * d..]);
        // SAFETY: Q is lq×d, K lk×d (read transposed), S lq×lk, all inside their slices.
        unsafe {
            matrixmultiply::sgemm(
                lq,
                d,
                lk,
                scale,
                qh.as_ptr(),
                d as isize,
                1,
                kh.as_ptr(),
                1,
                d as isize,
                0.0,
                s.as_mut_ptr(),
                lk as isize,
                1,
            )
        };
        for row in s.chunks_mut(lk) {
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                sum += *x;
            }
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
        // SAFETY: P is lq×lk, V lk×d, O lq×d, all inside their slices.
        unsafe {
            matrixmultiply::sgemm(
                lq,
                lk,
                d,
                1.0,
                s.as_ptr(),
                lk as isize,
                1,
                vh.as_ptr(),
                d as isize,
                1,
                0.0,
                out[hh * lq * d..].as_mut_ptr(),
                d as isize,
                1,
            )
        };
    }
    out
}
