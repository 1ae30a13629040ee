//! The attention problem the forward and backward tests share: shapes, a mask kind, the
//! options to switch on, the input amplitude and the seed. Building the library's options
//! from a case stays in each test (it needs the attention crate).

/// Which mask a case applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// No mask.
    None,
    /// The causal mask (bottom-right aligned).
    Causal,
    /// A boolean `[Lq, Lk]` mask broadcast over batch and heads.
    Bool,
    /// An additive `[Lq, Lk]` mask (with `-inf` entries) broadcast over batch and heads.
    Additive,
    /// A boolean `[B, Hq, Lq, Lk]` mask, one per batch and head.
    BoolPerHead,
}

/// One scaled dot-product attention case: Q `[b, hq, lq, d]`, K `[b, hkv, lk, d]`,
/// V `[b, hkv, lk, dv]`, output `[b, hq, lq, dv]`. Its `Debug` form is the case label and
/// includes the seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdpaCase {
    /// Batch size.
    pub b: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads (divides `hq`).
    pub hkv: usize,
    /// Query length.
    pub lq: usize,
    /// Key length.
    pub lk: usize,
    /// Head dimension of Q and K.
    pub d: usize,
    /// Head dimension of V and the output.
    pub dv: usize,
    /// The mask.
    pub mask: MaskKind,
    /// Per-batch key lengths below `lk` (see [`SdpaCase::key_lengths`]).
    pub padding: bool,
    /// A sliding window `(left, right)`.
    pub window: Option<(Option<usize>, Option<usize>)>,
    /// ALiBi slopes.
    pub alibi: bool,
    /// A logit soft cap.
    pub softcap: Option<f32>,
    /// Tensors in the `[B, L, H, D]` layout of model code instead of `[B, H, L, D]`.
    pub blhd: bool,
    /// Amplitude of the random Q and K values (logits grow with its square).
    pub amp: f32,
    /// The seed of the case's data.
    pub seed: u64,
}

impl SdpaCase {
    /// A case of these sizes with no mask and no options, amplitude 1 and seed 1.
    pub fn new(b: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, dv: usize) -> Self {
        SdpaCase {
            b,
            hq,
            hkv,
            lq,
            lk,
            d,
            dv,
            mask: MaskKind::None,
            padding: false,
            window: None,
            alibi: false,
            softcap: None,
            blhd: false,
            amp: 1.0,
            seed: 1,
        }
    }

    /// The logical dims of Q, K, V and the output.
    pub fn dims(&self) -> ([usize; 4], [usize; 4], [usize; 4], [usize; 4]) {
        (
            [self.b, self.hq, self.lq, self.d],
            [self.b, self.hkv, self.lk, self.d],
            [self.b, self.hkv, self.lk, self.dv],
            [self.b, self.hq, self.lq, self.dv],
        )
    }

    /// The key length of each batch: `lk` without padding, else ragged lengths below it
    /// (`lk·(i+1)/(b+1) + i mod 2` for batch `i`, so some are 0 or 1 for short keys).
    pub fn key_lengths(&self) -> Vec<usize> {
        (0..self.b)
            .map(|i| {
                if self.padding {
                    (self.lk * (i + 1)) / (self.b + 1) + i % 2
                } else {
                    self.lk
                }
            })
            .collect()
    }
}

/// The number of elements of a tensor of these dims.
pub fn numel(dims: [usize; 4]) -> usize {
    dims.iter().product()
}
