//! Builds C programs with the system C compiler (`$CC`, else `cc`) against the static
//! library and runs them: the example `examples/c/demo.c` (a user's first program), the
//! conformance suite `tests/c/conformance.c` (CBLAS and strided GEMM, softmax, attention and
//! its backward pass checked against naive C loops, and every error code) and the README's
//! C quick start.

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

/// Compiles `source` against the static library into `name` and runs it: (stdout,
/// stderr), after asserting that it built without warnings and exited with 0.
fn build_and_run(source: &std::path::Path, name: &str, native: &[&str]) -> (String, String) {
    let root = common::repo_root();
    let lib = common::artifact("FASTATTN_STATIC_LIB", "libfastattn_capi.a");
    let out_dir = common::profile_dir().join("capi-c-example");
    std::fs::create_dir_all(&out_dir).expect("can create the output folder");
    let exe = out_dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let build = Command::new(&cc)
        .args(["-O2", "-std=c99", "-Wall", "-Wextra"])
        .arg(source)
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
        "{cc} failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&build.stderr)
    );
    let warnings = String::from_utf8_lossy(&build.stderr);
    assert!(warnings.trim().is_empty(), "{cc} warns:\n{warnings}");

    let run = Command::new(&exe).output().expect("the program runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    println!("{stdout}");
    assert!(
        run.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        source.display(),
        run.status
    );
    (stdout, stderr)
}

#[test]
fn c_demo_builds_and_runs() {
    let Some(native) = native_libs() else {
        println!("skipped: no C link recipe for this OS");
        return;
    };
    let demo = common::repo_root().join("examples/c/demo.c");
    let (stdout, _) = build_and_run(&demo, "fastattn_demo", native);
    for line in [
        "attention: out[0] = ",
        "refused as expected",
        "decode: 8 positions cached",
        "serving: 3 requests decoded from a paged cache",
        "done",
    ] {
        assert!(
            stdout.contains(line),
            "the demo did not print {line:?}:\n{stdout}"
        );
    }
}

#[test]
fn c_conformance_suite_passes() {
    let Some(native) = native_libs() else {
        println!("skipped: no C link recipe for this OS");
        return;
    };
    let suite = common::repo_root().join("crates/capi/tests/c/conformance.c");
    let (stdout, _) = build_and_run(&suite, "fastattn_conformance", native);
    assert!(
        stdout.contains(" 0 failed"),
        "unexpected conformance output:\n{stdout}"
    );
}

#[test]
fn readme_c_quick_start_builds_and_runs() {
    let Some(native) = native_libs() else {
        println!("skipped: no C link recipe for this OS");
        return;
    };
    let readme = std::fs::read_to_string(common::repo_root().join("README.md"))
        .expect("README.md is readable");
    let start = readme
        .find("```c\n")
        .expect("README.md has a C quick start")
        + 5;
    let len = readme[start..].find("```").expect("the C block ends");
    let out_dir = common::profile_dir().join("capi-c-example");
    std::fs::create_dir_all(&out_dir).expect("can create the output folder");
    let source = out_dir.join("quickstart.c");
    std::fs::write(&source, &readme[start..start + len]).expect("can write quickstart.c");
    let (stdout, _) = build_and_run(&source, "quickstart", native);
    assert!(stdout.contains("out[0] = "), "unexpected output:\n{stdout}");
}
