//! The ISA variants a test loops over.

use kernels::Isa;

/// The ISAs this CPU runs ([`Isa::available`]), after printing
/// "skipped: <isa> not on this CPU" for each one it lacks.
pub fn variants() -> Vec<Isa> {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!("skipped: {isa} not on this CPU");
        }
    }
    Isa::available()
}
