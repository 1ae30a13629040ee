//! The checked-in header is the one cbindgen generates from the current sources, and it
//! compiles cleanly as C and as C++.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/fastattn.h");
const GENERATED: &str = concat!(env!("OUT_DIR"), "/fastattn.h");

#[test]
fn header_is_current() {
    let generated =
        std::fs::read_to_string(GENERATED).expect("build.rs writes $OUT_DIR/fastattn.h");
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    if generated != checked_in {
        let line = generated
            .lines()
            .zip(checked_in.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "crates/capi/include/fastattn.h is stale (first difference at {line}): run \
             `cargo build -p fastattn-capi` outside CI (CI unset) and commit the header"
        );
    }
}

/// Compiles `#include "fastattn.h"` with `compiler` in `lang` mode, warnings as errors.
fn compiles(compiler: &str, lang: &str, extra: &[&str]) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let mut child = match Command::new(compiler)
        .args(["-x", lang, "-fsyntax-only", "-Wall", "-Wextra", "-Werror"])
        .args(extra)
        .arg("-I")
        .arg(&include)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: {compiler} not runnable ({e})");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"#include \"fastattn.h\"\nint main(void) { return FA_OK; }\n")
        .expect("compiler reads stdin");
    let out = child.wait_with_output().expect("compiler finishes");
    assert!(
        out.status.success(),
        "{compiler} -x {lang} rejects fastattn.h:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c99() {
    compiles("cc", "c", &["-std=c99", "-pedantic"]);
}

#[test]
fn header_compiles_as_cpp() {
    compiles("c++", "c++", &["-std=c++11"]);
}
