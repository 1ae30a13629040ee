//! Parsing the `--shape` strings of `cargo xtask profile`.

use crate::Result;

/// Parses `N` or `AxB` (`dims` numbers, positive) for the exp / softmax shapes.
pub(super) fn parse_dims(shape: &str, dims: usize, help: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = shape
        .split(['x', 'X', '*', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("--shape {shape:?}: expected {help}"))?;
    if v.len() != dims || v.contains(&0) {
        return Err(format!("--shape {shape:?}: expected {help}, all positive").into());
    }
    Ok(v)
}
