//! The microkernel table of every ISA ([`Ukr`] records of function pointers) and
//! [`ukr_for`], the one place one is selected from an [`Isa`]. Every kernel is the generic
//! body ([`ukr_body`], [`ukr_fused_body`]) instantiated with the ISA's
//! [`SimdOps`](crate::simd::SimdOps); the x86 ones run it under `#[target_feature]`.

use super::{ukr_body, ukr_fused_body, Ukr};
use crate::dispatch::Isa;
#[cfg(target_arch = "x86_64")]
use crate::simd::{avx2::Avx2Ops, avx512::Avx512Ops};
use crate::simd::{ScalarOps, WideOps};

/// The microkernel table of `isa`: the one place a GEMM kernel is selected from an
/// [`Isa`]. Tile metadata is safe to hand out even for an ISA the CPU lacks; only running
/// the kernels needs the feature (the callers check it).
pub(crate) fn ukr_for(isa: Isa) -> Ukr {
    match isa {
        Isa::Scalar => UKR_SCALAR,
        Isa::Portable => UKR_PORTABLE,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => UKR_AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => UKR_AVX512,
        // No x86-64 kernels in this build (32-bit x86 runs the portable ones); Neon is
        // reserved (refused as unsupported) and would run them too.
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2Fma | Isa::Avx512 => UKR_PORTABLE,
        Isa::Neon => UKR_PORTABLE,
    }
}

/// Defines a kernel of any signature, `$name` (a plain `unsafe fn`, storable as a function
/// pointer) whose body is `$body`. With `[$tf, $feat]` the body runs in a
/// `#[target_feature(enable = $feat)]` function `$tf` that `$name` calls; [`ukr_for`] only
/// hands `$name` out where the CPU has the ISA.
macro_rules! isa_fn {
    ($name:ident, ($($arg:ident: $ty:ty),* $(,)?), $body:expr) => {
        /// # Safety
        /// See the kernel's function type.
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name($($arg: $ty),*) {
            // SAFETY: forwarded contract.
            unsafe { $body }
        }
    };
    ($name:ident [$tf:ident, $feat:literal], ($($arg:ident: $ty:ty),* $(,)?), $body:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $tf($($arg: $ty),*) {
            // SAFETY: the ISA is enabled on this function; pointer contract forwarded.
            unsafe { $body }
        }

        /// # Safety
        /// See the kernel's function type; the CPU has the kernel's ISA.
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name($($arg: $ty),*) {
            // SAFETY: forwarded contract (the dispatcher only hands this out when the ISA
            // exists).
            unsafe { $tf($($arg),*) }
        }
    };
}

/// Defines one microkernel of type [`super::UkrFn`] computing `$mr` rows of a tile from
/// packed A panels `$panel` rows high.
macro_rules! ukr_fn {
    ($name:ident $([$tf:ident, $feat:literal])?, $ops:ty, $mr:literal, $nv:literal, $panel:literal) => {
        isa_fn!(
            $name $([$tf, $feat])?,
            (
                k: usize,
                alpha: f32,
                a: *const f32,
                lda: isize,
                b: *const f32,
                beta: f32,
                c: *mut f32,
                rsc: isize,
                csc: isize,
            ),
            ukr_body::<$ops, $mr, $nv, $panel>(k, alpha, a, lda, b, beta, c, rsc, csc)
        );
    };
}

/// Defines a fused microkernel of type [`super::UkrFusedFn`].
macro_rules! ukr_fused_fn {
    ($name:ident $([$tf:ident, $feat:literal])?, $ops:ty, $mr:literal, $nv:literal) => {
        isa_fn!(
            $name $([$tf, $feat])?,
            (
                k: usize,
                alpha: f32,
                a: *const f32,
                lda: isize,
                a_out: *mut f32,
                b: *const f32,
                beta: f32,
                c: *mut f32,
                rsc: isize,
                csc: isize,
            ),
            ukr_fused_body::<$ops, $mr, $nv>(k, alpha, a, lda, a_out, b, beta, c, rsc, csc)
        );
    };
}

// Scalar: 4 × 4 of plain f32, the fallback on any CPU.
ukr_fn!(ukr_4x4_scalar, ScalarOps, 4, 4, 4);

const UKR_SCALAR: Ukr = Ukr {
    mr: 4,
    nr: 4,
    run: ukr_4x4_scalar,
    name: "ukr_4x4_scalar",
    edges: &[],
    fused: None,
};

// Portable: 6 × 16 on `wide::f32x8` (whatever SIMD the build target has).
ukr_fn!(ukr_6x16_portable, WideOps, 6, 2, 6);
ukr_fused_fn!(ukr_6x16_portable_fused, WideOps, 6, 2);

const UKR_PORTABLE: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_portable,
    name: "ukr_6x16_portable",
    edges: &[],
    fused: Some(ukr_6x16_portable_fused),
};

// AVX2+FMA: 6 × 16, with 2- and 4-row edge kernels.
ukr_fused_fn!(ukr_6x16_avx2_fused [ukr_6x16_avx2_fused_tf, "avx2,fma"], Avx2Ops, 6, 2);
ukr_fn!(ukr_6x16_avx2 [ukr_6x16_avx2_tf, "avx2,fma"], Avx2Ops, 6, 2, 6);
ukr_fn!(ukr_2x16_avx2 [ukr_2x16_avx2_tf, "avx2,fma"], Avx2Ops, 2, 2, 6);
ukr_fn!(ukr_4x16_avx2 [ukr_4x16_avx2_tf, "avx2,fma"], Avx2Ops, 4, 2, 6);

#[cfg(target_arch = "x86_64")]
const UKR_AVX2: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_avx2,
    name: "ukr_6x16_avx2",
    edges: &[(2, ukr_2x16_avx2), (4, ukr_4x16_avx2)],
    fused: Some(ukr_6x16_avx2_fused),
};

// AVX-512F: 12 × 32, with 4- and 8-row edge kernels.
ukr_fused_fn!(ukr_12x32_avx512_fused [ukr_12x32_avx512_fused_tf, "avx512f,avx2,fma"], Avx512Ops, 12, 2);
ukr_fn!(ukr_12x32_avx512 [ukr_12x32_avx512_tf, "avx512f,avx2,fma"], Avx512Ops, 12, 2, 12);
ukr_fn!(ukr_4x32_avx512 [ukr_4x32_avx512_tf, "avx512f,avx2,fma"], Avx512Ops, 4, 2, 12);
ukr_fn!(ukr_8x32_avx512 [ukr_8x32_avx512_tf, "avx512f,avx2,fma"], Avx512Ops, 8, 2, 12);

#[cfg(target_arch = "x86_64")]
const UKR_AVX512: Ukr = Ukr {
    mr: 12,
    nr: 32,
    run: ukr_12x32_avx512,
    name: "ukr_12x32_avx512",
    edges: &[(4, ukr_4x32_avx512), (8, ukr_8x32_avx512)],
    fused: Some(ukr_12x32_avx512_fused),
};
