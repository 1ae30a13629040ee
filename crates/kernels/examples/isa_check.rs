//! Exits 0 if this CPU runs the ISA named by the first argument (`scalar`, `avx2`, ...),
//! 1 otherwise; prints the variant `current_isa()` picks. Used by `.ci/run`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    match fastattn_kernels::Isa::from_name(&name).and_then(fastattn_kernels::Isa::check) {
        Ok(isa) => println!(
            "{isa} supported; current: {:?}",
            fastattn_kernels::current_isa()
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
