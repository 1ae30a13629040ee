//! Builds `examples/c/demo.c` with the system C compiler (`$CC`, else `cc`) against the
//! static library and runs it: CBLAS and strided GEMM, softmax and attention checked
//! against naive C loops, and every error code.

mod common;

use std::process::Command;

/// Native libraries Rust's std needs when a static Rust library is linked by a C compiler
/// (`rustc --print native-static-libs`).
fn native_libs() -> Option<&'static [&'static str]> {
    if cfg!(target_os = "linux") {
        Some(&[
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
    } else if cfg!(target_os = "macos") {
        Some(&["-lSystem", "-lc", "-lm"])
    } else {
        None
    }
}

#[test]
fn c_demo_builds_and_passes() {
    let Some(native) = native_libs() else {
        println!("skipped: no C link recipe for this OS");
        return;
    };
    let root = common::repo_root();
    let lib = common::artifact("FASTATTN_STATIC_LIB", "libfastattn.a");
    let out_dir = common::profile_dir().join("capi-c-example");
    std::fs::create_dir_all(&out_dir).expect("can create the output folder");
    let exe = out_dir.join("fastattn_demo");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let build = Command::new(&cc)
        .args(["-O2", "-std=c99", "-Wall", "-Wextra"])
        .arg(root.join("examples/c/demo.c"))
        .arg("-I")
        .arg(root.join("crates/capi/include"))
        .arg(&lib)
        .args(native)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        build.status.success(),
        "{cc} failed on examples/c/demo.c:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let warnings = String::from_utf8_lossy(&build.stderr);
    assert!(warnings.trim().is_empty(), "{cc} warns:\n{warnings}");

    let run = Command::new(&exe).output().expect("the demo runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "the C demo failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stdout.contains(" 0 failed"),
        "unexpected demo output:\n{stdout}"
    );
}
