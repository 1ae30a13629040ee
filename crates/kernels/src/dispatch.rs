//! Instruction-set variants, their detection, and the override a person uses for profiling.
//!
//! The best variant is detected once and cached. It can be forced for the whole process
//! with the environment variable `FASTATTN_ISA` (`scalar`, `portable`, `avx2`, `avx512`,
//! `neon`; read once, at the first kernel call) or with [`set_isa`]; functions named `*_with`
//! take an [`Isa`] per call. Forcing an ISA the CPU lacks is an error
//! ([`KernelError::UnsupportedIsa`]), never an illegal instruction.
//!
//! # Where a variant is selected
//! Detection and the override live here; the kernels are selected from an [`Isa`] in two
//! places only, each one exhaustive `match` (no wildcard arm, so a new variant fails to
//! compile until both name it):
//!
//! | kernels | selected by | file |
//! |---------|-------------|------|
//! | every SIMD body: exp, softmax and online softmax, f16/bf16 conversion, the decode kernels (`gemv`), B-panel packing | `simd::dispatch` (runs a body generic over `simd::SimdOps` under the ISA's `#[target_feature]`) | `simd/mod.rs`, ops in `simd/{scalar,portable,avx2,avx512}.rs` |
//! | GEMM microkernels (tile size, main, edge and fused kernels as function pointers) | `gemm::microkernel::ukr_for` (one `Ukr` table per ISA) | `gemm/microkernel/table.rs` |
//!
//! Besides: [`Isa::name`] / [`Isa::c_name`] (the names, also for the C API) and
//! [`Isa::is_supported`] (detection) here. A new ISA is a variant here, an ops file in
//! `simd/` with its runner, and an arm in each of the two selectors.

use crate::error::{KernelError, Result};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A kernel variant, named by the instruction set it is written for.
///
/// Not `#[non_exhaustive]`: every crate of the workspace matches it exhaustively, so a new
/// variant makes the compiler point at each place that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain scalar loops: the last-resort fallback, runs everywhere.
    Scalar,
    /// Portable SIMD on the `wide` crate (what CPUs without a dedicated variant get).
    Portable,
    /// x86-64 AVX2 with FMA3 and F16C (`std::arch` intrinsics; every AVX2 CPU has F16C).
    Avx2Fma,
    /// x86-64 AVX-512F (`std::arch` intrinsics).
    Avx512,
    /// AArch64 NEON. Reserved: this build runs the `Portable` kernels there for now, so
    /// forcing it is refused as unsupported.
    Neon,
}

impl Isa {
    /// Every variant, in increasing order of preference.
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Portable,
        Isa::Avx2Fma,
        Isa::Avx512,
        Isa::Neon,
    ];

    /// The short name used by `FASTATTN_ISA` and in reports.
    ///
    /// ```
    /// assert_eq!(fastattn_kernels::Isa::Avx2Fma.name(), "avx2");
    /// ```
    pub fn name(self) -> &'static str {
        match self.c_name().to_str() {
            Ok(s) => s,
            Err(_) => unreachable!("ISA names are ASCII"),
        }
    }

    /// [`name`](Isa::name) as a NUL-terminated C string (for the C API, which cannot match
    /// on this non-exhaustive enum).
    ///
    /// ```
    /// assert_eq!(fastattn_kernels::Isa::Avx512.c_name(), c"avx512");
    /// ```
    pub fn c_name(self) -> &'static CStr {
        match self {
            Isa::Scalar => c"scalar",
            Isa::Portable => c"portable",
            Isa::Avx2Fma => c"avx2",
            Isa::Avx512 => c"avx512",
            Isa::Neon => c"neon",
        }
    }

    /// Parses a short name (case-insensitive; `avx2fma` and `avx512f` are accepted too).
    ///
    /// ```
    /// use fastattn_kernels::Isa;
    /// assert_eq!(Isa::from_name("AVX2").unwrap(), Isa::Avx2Fma);
    /// assert!(Isa::from_name("sse9").is_err());
    /// ```
    pub fn from_name(name: &str) -> Result<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "portable" | "wide" => Ok(Isa::Portable),
            "avx2" | "avx2fma" | "avx2+fma" => Ok(Isa::Avx2Fma),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            other => Err(KernelError::UnsupportedIsa {
                isa: other.to_string(),
            }),
        }
    }

    /// Whether this CPU (and this build) can run the variant.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar | Isa::Portable => true,
            Isa::Avx2Fma => detect_avx2_fma(),
            Isa::Avx512 => detect_avx512(),
            Isa::Neon => false,
        }
    }

    /// Every variant this CPU can run, in increasing order of preference.
    ///
    /// ```
    /// assert!(fastattn_kernels::Isa::available().contains(&fastattn_kernels::Isa::Scalar));
    /// ```
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The fastest variant this CPU can run (detected once, then cached).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().expect("scalar is always available"))
    }

    /// `Ok(self)` when supported, else [`KernelError::UnsupportedIsa`].
    pub fn check(self) -> Result<Isa> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(KernelError::UnsupportedIsa {
                isa: self.name().to_string(),
            })
        }
    }

    /// The override's code: the variant's position in [`Isa::ALL`] plus one (0 is "none").
    /// An exhaustive match, so a new variant must be given its code here (no panic, unlike
    /// a search of `ALL`); the test `all_lists_every_variant_in_code_order` checks that
    /// `ALL` lists the codes 1..=n in order.
    fn to_u8(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Portable => 2,
            Isa::Avx2Fma => 3,
            Isa::Avx512 => 4,
            Isa::Neon => 5,
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.to_u8() == v)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detect_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}
#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn detect_avx2_fma() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn detect_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && detect_avx2_fma()
}
#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512() -> bool {
    false
}

/// Name of the environment variable that forces a variant.
pub const ISA_ENV_VAR: &str = "FASTATTN_ISA";

/// 0: no override; otherwise `Isa::to_u8`.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

fn env_choice() -> &'static Result<Option<Isa>> {
    static ENV: OnceLock<Result<Option<Isa>>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var(ISA_ENV_VAR) {
        Ok(v) if !v.trim().is_empty() && v.trim() != "auto" => {
            Isa::from_name(&v).and_then(Isa::check).map(Some)
        }
        _ => Ok(None),
    })
}

/// Forces a variant for every later call of this process (`None` returns to automatic
/// choice, or to `FASTATTN_ISA` if that is set). Refuses an ISA the CPU lacks.
///
/// ```
/// use fastattn_kernels::{set_isa, current_isa, Isa};
/// set_isa(Some(Isa::Scalar)).unwrap();
/// assert_eq!(current_isa().unwrap(), Isa::Scalar);
/// set_isa(None).unwrap();
/// ```
pub fn set_isa(isa: Option<Isa>) -> Result<()> {
    match isa {
        Some(i) => {
            i.check()?;
            OVERRIDE.store(i.to_u8(), Ordering::Relaxed);
        }
        None => OVERRIDE.store(0, Ordering::Relaxed),
    }
    Ok(())
}

/// The variant kernel calls use now: [`set_isa`]'s choice, else `FASTATTN_ISA`, else
/// [`Isa::best`]. An unknown or unsupported `FASTATTN_ISA` is an error here.
pub fn current_isa() -> Result<Isa> {
    if let Some(i) = Isa::from_u8(OVERRIDE.load(Ordering::Relaxed)) {
        return Ok(i);
    }
    match env_choice() {
        Ok(Some(i)) => Ok(*i),
        Ok(None) => Ok(Isa::best()),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant_in_code_order() {
        // ALL holds the codes 1..=n in order, each variant once.
        for (i, isa) in Isa::ALL.into_iter().enumerate() {
            assert_eq!(isa.to_u8() as usize, i + 1, "{isa}");
            assert_eq!(Isa::from_u8(isa.to_u8()), Some(isa));
        }
        assert_eq!(Isa::from_u8(0), None);
        assert_eq!(Isa::from_u8(Isa::ALL.len() as u8 + 1), None);
    }

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()).unwrap(), isa);
        }
    }

    #[test]
    fn best_is_available_and_scalar_always_is() {
        let av = Isa::available();
        assert!(av.contains(&Isa::Scalar) && av.contains(&Isa::Portable));
        assert!(av.contains(&Isa::best()));
    }

    #[test]
    fn unsupported_isa_is_refused() {
        assert!(matches!(
            Isa::Neon.check(),
            Err(KernelError::UnsupportedIsa { .. })
        ));
        assert!(set_isa(Some(Isa::Neon)).is_err());
    }
}
