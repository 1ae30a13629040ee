//! Paths shared by the tests that build or load the library from outside Rust.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `target/<profile>/deps`, where the test binaries live. When cargo builds this package's
/// lib for the tests, its `libfastattn_capi.a` / `libfastattn_capi.so` land here too (cargo copies
/// them up to `target/<profile>/` only for `cargo build`).
pub fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// `target/<profile>`.
pub fn profile_dir() -> PathBuf {
    deps_dir()
        .parent()
        .expect("deps is inside target/<profile>")
        .to_path_buf()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// A library artifact: `$env_var` if set, else the newer of `target/<profile>/deps/<file>`
/// (built with the tests) and `target/<profile>/<file>` (from `cargo build`).
pub fn artifact(env_var: &str, file_name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    [deps_dir().join(file_name), profile_dir().join(file_name)]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "{file_name} is in neither {} nor {}: build the fastattn-capi package, or set \
                 {env_var}",
                deps_dir().display(),
                profile_dir().display()
            )
        })
}
