//! Runs `examples/python/sdpa_demo.py` (ctypes + numpy) against this build's shared
//! library, when `python3` (or `$PYTHON`) with numpy is available. Elsewhere the test prints
//! "skipped: ..." and passes, unless `FASTATTN_REQUIRE_PYTHON=1` (set by CI, which installs
//! numpy) makes a missing interpreter or numpy a failure.

mod common;

use std::process::Command;

fn shared_lib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libfastattn_capi.dylib"
    } else if cfg!(windows) {
        "fastattn_capi.dll"
    } else {
        "libfastattn_capi.so"
    }
}

#[test]
fn python_demo_passes() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let required = std::env::var("FASTATTN_REQUIRE_PYTHON")
        .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    let missing = match Command::new(&python).args(["-c", "import numpy"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(_) => Some(format!("numpy is not installed for {python}")),
        Err(e) => Some(format!("{python} not runnable ({e})")),
    };
    if let Some(why) = missing {
        assert!(!required, "FASTATTN_REQUIRE_PYTHON is set but {why}");
        println!("skipped: {why}");
        return;
    }
    let lib = common::artifact("FASTATTN_LIB", shared_lib_name());
    let script = common::repo_root().join("examples/python/sdpa_demo.py");
    let run = Command::new(&python)
        .arg(&script)
        .env("FASTATTN_LIB", &lib)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "{} failed ({}):\n{stdout}\n{}",
        script.display(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "unexpected output:\n{stdout}");
}
