//! Generates the C header `include/fastattn.h` with cbindgen from this crate's sources.
//!
//! The header is always written to `$OUT_DIR/fastattn.h`; the test `header_is_current`
//! compares that file with the checked-in `include/fastattn.h`. Outside CI the checked-in
//! copy is refreshed as well (only when its contents change), so a developer who changes
//! the API rebuilds and commits the new header. In CI (`CI` set to anything but `""`,
//! `0` or `false`) the checked-in copy is left alone, so a stale header fails the test.

use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CI");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("crates/capi/cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        // Parsing from lib.rs follows the `mod` declarations; no `cargo metadata` needed.
        .with_src(crate_dir.join("src").join("lib.rs"))
        .generate()
        .expect("cbindgen could not generate fastattn.h");

    let generated = out_dir.join("fastattn.h");
    bindings.write_to_file(&generated);

    let in_ci = std::env::var("CI")
        .map(|v| !matches!(v.trim(), "" | "0" | "false"))
        .unwrap_or(false);
    if !in_ci {
        let checked_in = crate_dir.join("include").join("fastattn.h");
        let new = std::fs::read(&generated).expect("just written");
        if std::fs::read(&checked_in).ok().as_deref() != Some(&new[..]) {
            std::fs::create_dir_all(checked_in.parent().expect("has a parent"))
                .expect("can create crates/capi/include");
            std::fs::write(&checked_in, &new).expect("can write crates/capi/include/fastattn.h");
        }
    }
}
