//! Rotary position embeddings (RoPE), rotate-half convention (GPT-NeoX, Llama).
//!
//! A head vector `x` of even length `D` at position `p` is rotated pairwise: for
//! `j < D/2` the pair `(x[j], x[j + D/2])` turns by the angle `p·θ_j`, with
//! `θ_j = base^(−2j/D)`:
//!
//! ```text
//! x'[j]       = x[j]·cos(p·θ_j) − x[j + D/2]·sin(p·θ_j)
//! x'[j + D/2] = x[j + D/2]·cos(p·θ_j) + x[j]·sin(p·θ_j)
//! ```
//!
//! Rotating both queries and keys this way makes their dot product depend only on the
//! distance between the two positions. Angles are computed in f64 and rounded once to f32,
//! so positions far beyond the table (computed on the fly) get exactly the values the table
//! would have held.

use crate::error::{AttnError, Result};

/// The usual RoPE base (RoFormer, GPT-NeoX, Llama 1/2).
pub const DEFAULT_ROPE_BASE: f32 = 10_000.0;

/// Positions whose `cos`/`sin` are tabulated by default; later positions are computed on
/// the fly.
pub const DEFAULT_ROPE_TABLE: usize = 4096;

/// Settings of the rotary embedding.
///
/// ```
/// let cfg = fastattn_attention::RopeConfig::new().with_base(500_000.0);
/// assert_eq!(cfg.table_positions, fastattn_attention::rope::DEFAULT_ROPE_TABLE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RopeConfig {
    /// Frequency base (`10000` by default; Llama 3 uses `500000`). Finite and `> 0`.
    pub base: f32,
    /// Positions `0 .. table_positions` get precomputed `cos`/`sin` rows (memory
    /// `table_positions·D·4` bytes); later positions are computed when needed.
    pub table_positions: usize,
}

impl RopeConfig {
    /// The defaults: base 10000, a table of [`DEFAULT_ROPE_TABLE`] positions.
    pub fn new() -> Self {
        RopeConfig::default()
    }

    /// Sets the frequency [`base`](Self::base).
    pub fn with_base(mut self, base: f32) -> Self {
        self.base = base;
        self
    }

    /// Sets [`table_positions`](Self::table_positions).
    pub fn with_table_positions(mut self, positions: usize) -> Self {
        self.table_positions = positions;
        self
    }
}

impl Default for RopeConfig {
    fn default() -> Self {
        RopeConfig {
            base: DEFAULT_ROPE_BASE,
            table_positions: DEFAULT_ROPE_TABLE,
        }
    }
}

/// Precomputed rotary embedding for one head dimension.
///
/// ```
/// use fastattn_attention::{Rope, RopeConfig};
/// let rope = Rope::new(4, RopeConfig::default())?;
/// let mut x = [1.0f32, 0.0, 0.0, 0.0];
/// rope.apply(&mut x, 0)?; // position 0: identity
/// assert_eq!(x, [1.0, 0.0, 0.0, 0.0]);
/// rope.apply(&mut x, 1)?; // θ_0 = 1: (x0, x2) turns by one radian
/// assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
/// # Ok::<(), fastattn_attention::AttnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    base: f32,
    inv_freq: Vec<f64>,
    table_positions: usize,
    /// `[table_positions, D/2]`.
    cos: Vec<f32>,
    /// `[table_positions, D/2]`.
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for head dimension `head_dim`.
    ///
    /// # Errors
    /// [`AttnError::Option`] if `head_dim` is odd or zero or the base is not finite and
    /// positive; [`AttnError::Overflow`] if the table size overflows.
    pub fn new(head_dim: usize, cfg: RopeConfig) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(AttnError::Option {
                what: format!("RoPE needs an even, non-zero head dim, got {head_dim}"),
            });
        }
        if !(cfg.base.is_finite() && cfg.base > 0.0) {
            return Err(AttnError::Option {
                what: format!("RoPE base must be finite and > 0, got {}", cfg.base),
            });
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|j| (cfg.base as f64).powf(-2.0 * j as f64 / head_dim as f64))
            .collect();
        let n = cfg
            .table_positions
            .checked_mul(half)
            .ok_or(AttnError::Overflow { what: "RoPE table" })?;
        let mut cos = Vec::with_capacity(n);
        let mut sin = Vec::with_capacity(n);
        for p in 0..cfg.table_positions {
            for &f in &inv_freq {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok(Rope {
            head_dim,
            base: cfg.base,
            inv_freq,
            table_positions: cfg.table_positions,
            cos,
            sin,
        })
    }

    /// The head dimension `D`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The frequency base.
    pub fn base(&self) -> f32 {
        self.base
    }

    /// Rotates every head of `x` (consecutive heads of `D` values) as a token at `pos`.
    ///
    /// # Errors
    /// [`AttnError::Shape`] if `x.len()` is not a multiple of `D`.
    pub fn apply(&self, x: &mut [f32], pos: usize) -> Result<()> {
        if !x.len().is_multiple_of(self.head_dim) {
            return Err(AttnError::Shape {
                what: format!(
                    "RoPE input has {} values, not a multiple of head dim {}",
                    x.len(),
                    self.head_dim
                ),
            });
        }
        let mut scratch = Vec::new();
        self.apply_heads(x, pos, &mut scratch);
        Ok(())
    }

    /// `cos` and `sin` of the `D/2` angles at `pos`: table rows, or computed into
    /// `scratch` past the table.
    pub(crate) fn cos_sin<'s>(
        &'s self,
        pos: usize,
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], &'s [f32]) {
        let half = self.head_dim / 2;
        if pos < self.table_positions {
            let r = pos * half..(pos + 1) * half;
            return (&self.cos[r.clone()], &self.sin[r]);
        }
        scratch.clear();
        scratch.extend(self.inv_freq.iter().map(|&f| (pos as f64 * f).cos() as f32));
        scratch.extend(self.inv_freq.iter().map(|&f| (pos as f64 * f).sin() as f32));
        scratch.split_at(half)
    }

    /// Rotates the heads of `x` (`x.len()` a multiple of `D`) at `pos`.
    pub(crate) fn apply_heads(&self, x: &mut [f32], pos: usize, scratch: &mut Vec<f32>) {
        debug_assert!(x.len().is_multiple_of(self.head_dim));
        let (cos, sin) = self.cos_sin(pos, scratch);
        for head in x.chunks_exact_mut(self.head_dim) {
            rotate_half(head, cos, sin);
        }
    }
}

/// One head: `(a, b) ← (a·cos − b·sin, b·cos + a·sin)` with `a = x[..D/2]`, `b = x[D/2..]`.
#[inline]
fn rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (a, b) = x.split_at_mut(x.len() / 2);
    for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x1 * c + x0 * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_on_the_fly_angles_are_identical() {
        let small = Rope::new(
            8,
            RopeConfig {
                table_positions: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let big = Rope::new(8, RopeConfig::default()).unwrap();
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        for pos in [0, 2, 3, 100, 4095] {
            assert_eq!(
                small.cos_sin(pos, &mut s1),
                big.cos_sin(pos, &mut s2),
                "pos {pos}"
            );
        }
    }

    #[test]
    fn rope_refuses_odd_head_dims_and_bad_bases() {
        assert!(Rope::new(7, RopeConfig::default()).is_err());
        assert!(Rope::new(0, RopeConfig::default()).is_err());
        for base in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let cfg = RopeConfig {
                base,
                ..Default::default()
            };
            assert!(Rope::new(8, cfg).is_err(), "base {base}");
        }
        let r = Rope::new(8, RopeConfig::default()).unwrap();
        assert!(r.apply(&mut [0.0; 12], 1).is_err());
    }
}
