//! The ISA variants a test loops over.

use kernels::Isa;

/// The ISAs this CPU runs ([`Isa::available`]), after printing
/// `"skipped: <isa> not on this CPU"` for each one it lacks.
pub fn variants() -> Vec<Isa> {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!("skipped: {isa} not on this CPU");
        }
    }
    Isa::available()
}

/// An ISA this CPU cannot run (NEON is refused on every x86 build).
///
/// # Panics
/// If this CPU runs every ISA.
pub fn missing_isa() -> Isa {
    Isa::ALL
        .into_iter()
        .find(|i| !i.is_supported())
        .expect("at least one ISA (neon) is unsupported")
}
