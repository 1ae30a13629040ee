//! The layer's weights as the caller gives them: borrowed ([`MhaWeights`]) or owned
//! ([`OwnedMhaWeights`], e.g. seeded random ones).

use super::MhaConfig;
use crate::error::Result;
use crate::linear::WeightLayout;
use kernels::Element;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Caller-given weights and biases, borrowed (copied into packed form by
/// [`MultiHeadAttention::new`](super::MultiHeadAttention::new)). Shapes: see the
/// [module docs](super). The weights are f32
/// (the default) or a 16-bit type `W` ([`Element`]), which the layer keeps in 16 bits;
/// biases are f32.
#[derive(Debug)]
pub struct MhaWeights<'a, W = f32> {
    /// Query projection.
    pub wq: &'a [W],
    /// Key projection.
    pub wk: &'a [W],
    /// Value projection.
    pub wv: &'a [W],
    /// Output projection.
    pub wo: &'a [W],
    /// Query bias `[Hq·D]`.
    pub bq: Option<&'a [f32]>,
    /// Key bias `[Hkv·D]`.
    pub bk: Option<&'a [f32]>,
    /// Value bias `[Hkv·D]`.
    pub bv: Option<&'a [f32]>,
    /// Output bias `[d_model]`.
    pub bo: Option<&'a [f32]>,
    /// Layout of all four weight matrices.
    pub layout: WeightLayout,
}

impl<W> Clone for MhaWeights<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W> Copy for MhaWeights<'_, W> {}

impl<'a, W: Element> MhaWeights<'a, W> {
    /// Weights in the `[d_in, d_out]` layout, without biases (set the `b*` fields to add
    /// them).
    pub fn new(wq: &'a [W], wk: &'a [W], wv: &'a [W], wo: &'a [W]) -> Self {
        MhaWeights {
            wq,
            wk,
            wv,
            wo,
            bq: None,
            bk: None,
            bv: None,
            bo: None,
            layout: WeightLayout::InOut,
        }
    }
}

/// Owned weights in the `[d_in, d_out]` layout, e.g. from [`OwnedMhaWeights::random`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedMhaWeights {
    /// `[d_model, Hq·D]`.
    pub wq: Vec<f32>,
    /// `[d_model, Hkv·D]`.
    pub wk: Vec<f32>,
    /// `[d_model, Hkv·D]`.
    pub wv: Vec<f32>,
    /// `[Hq·D, d_model]`.
    pub wo: Vec<f32>,
    /// `[Hq·D]`.
    pub bq: Option<Vec<f32>>,
    /// `[Hkv·D]`.
    pub bk: Option<Vec<f32>>,
    /// `[Hkv·D]`.
    pub bv: Option<Vec<f32>>,
    /// `[d_model]`.
    pub bo: Option<Vec<f32>>,
}

impl OwnedMhaWeights {
    /// Seeded random weights, uniform in `±1/√d_in` as PyTorch's `nn.Linear` initialises
    /// them, with biases (same bound) when `bias` is set. Same seed, same weights.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::new`](super::MultiHeadAttention::new) for an invalid
    /// configuration.
    pub fn random(cfg: &MhaConfig, bias: bool, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (dm, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
        let mut gen = |len: usize, d_in: usize| -> Vec<f32> {
            let a = 1.0 / (d_in as f32).sqrt();
            (0..len).map(|_| rng.random_range(-a..a)).collect()
        };
        let wq = gen(dm * qd, dm);
        let wk = gen(dm * kvd, dm);
        let wv = gen(dm * kvd, dm);
        let wo = gen(qd * dm, qd);
        let (bq, bk, bv, bo) = if bias {
            (
                Some(gen(qd, dm)),
                Some(gen(kvd, dm)),
                Some(gen(kvd, dm)),
                Some(gen(dm, qd)),
            )
        } else {
            (None, None, None, None)
        };
        Ok(OwnedMhaWeights {
            wq,
            wk,
            wv,
            wo,
            bq,
            bk,
            bv,
            bo,
        })
    }

    /// Borrows as [`MhaWeights`] (layout [`WeightLayout::InOut`]).
    pub fn as_weights(&self) -> MhaWeights<'_> {
        MhaWeights {
            wq: &self.wq,
            wk: &self.wk,
            wv: &self.wv,
            wo: &self.wo,
            bq: self.bq.as_deref(),
            bk: self.bk.as_deref(),
            bv: self.bv.as_deref(),
            bo: self.bo.as_deref(),
            layout: WeightLayout::InOut,
        }
    }
}
