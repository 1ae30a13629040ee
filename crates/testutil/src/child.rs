//! Tests that must run in a process of their own (an environment variable read once per
//! process, such as `FASTATTN_ISA`): the test runs its own binary again, filtered to itself,
//! with [`CHILD_ENV`] set, and the child takes the other branch.

/// Set in the child process that [`run_as_child`] starts.
pub const CHILD_ENV: &str = "FASTATTN_HARDENING_CHILD";

/// Whether this process is a child started by [`run_as_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the test `test` (its full name, as `--exact` takes it) of the current test binary in
/// a new process with [`CHILD_ENV`] and the variables `env` set, and asserts that it ran and
/// passed (its output is printed otherwise).
pub fn run_as_child(test: &str, env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{test} with {env:?}: child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} with {env:?}: the child ran no test:\n{stdout}"
    );
}
