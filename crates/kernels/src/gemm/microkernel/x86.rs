//! x86-64 microkernels: AVX2+FMA 6 × 16 and AVX-512F 12 × 32.

use super::{ukr_body, ukr_fused_body, Ukr};
use crate::simd::avx2::Avx2Ops;
use crate::simd::avx512::Avx512Ops;

/// Defines a kernel of any signature: a `#[target_feature]` function (`$tf`) whose body is
/// `$body`, and the plain `unsafe fn` (`$name`, storable as a function pointer) that calls
/// it. The dispatcher only hands `$name` out where the CPU has the ISA.
macro_rules! isa_fn {
    ($name:ident, $tf:ident, $feat:literal, ($($arg:ident: $ty:ty),* $(,)?), $body:expr) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $tf($($arg: $ty),*) {
            // SAFETY: the ISA is enabled on this function; pointer contract forwarded.
            unsafe { $body }
        }

        /// # Safety
        /// See the kernel's function type; the CPU has the kernel's ISA.
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
    ($name:ident, $tf:ident, $feat:literal, $ops:ty, $mr:literal, $nv:literal, $panel:literal) => {
        isa_fn!(
            $name,
            $tf,
            $feat,
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
    ($name:ident, $tf:ident, $feat:literal, $ops:ty, $mr:literal, $nv:literal) => {
        isa_fn!(
            $name,
            $tf,
            $feat,
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

ukr_fused_fn!(
    ukr_6x16_avx2_fused,
    ukr_6x16_avx2_fused_tf,
    "avx2,fma",
    Avx2Ops,
    6,
    2
);
ukr_fused_fn!(
    ukr_12x32_avx512_fused,
    ukr_12x32_avx512_fused_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    12,
    2
);

ukr_fn!(
    ukr_6x16_avx2,
    ukr_6x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    6,
    2,
    6
);
ukr_fn!(
    ukr_2x16_avx2,
    ukr_2x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    2,
    2,
    6
);
ukr_fn!(
    ukr_4x16_avx2,
    ukr_4x16_avx2_tf,
    "avx2,fma",
    Avx2Ops,
    4,
    2,
    6
);
ukr_fn!(
    ukr_12x32_avx512,
    ukr_12x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    12,
    2,
    12
);
ukr_fn!(
    ukr_4x32_avx512,
    ukr_4x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    4,
    2,
    12
);
ukr_fn!(
    ukr_8x32_avx512,
    ukr_8x32_avx512_tf,
    "avx512f,avx2,fma",
    Avx512Ops,
    8,
    2,
    12
);

pub(crate) const UKR_AVX2: Ukr = Ukr {
    mr: 6,
    nr: 16,
    run: ukr_6x16_avx2,
    name: "ukr_6x16_avx2",
    edges: &[(2, ukr_2x16_avx2), (4, ukr_4x16_avx2)],
    fused: Some(ukr_6x16_avx2_fused),
};

pub(crate) const UKR_AVX512: Ukr = Ukr {
    mr: 12,
    nr: 32,
    run: ukr_12x32_avx512,
    name: "ukr_12x32_avx512",
    edges: &[(4, ukr_4x32_avx512), (8, ukr_8x32_avx512)],
    fused: Some(ukr_12x32_avx512_fused),
};
