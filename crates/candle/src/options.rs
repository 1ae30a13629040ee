//! The options of [`crate::sdpa`]: fastattn's [`SdpaOptions`](attention::SdpaOptions)
//! with candle tensors for the mask and owned vectors for the per-head values, so an
//! options value can outlive the call that built it.

use candle_core::Tensor;
use kernels::Parallelism;

/// An explicit attention mask over `[B|1, Hq|1, Lq|1, Lk|1]`.
///
/// The tensor may have rank 2 (`[Lq, Lk]`), 3 or 4; missing leading dimensions and
/// dimensions of size 1 broadcast (they are read with stride 0, never expanded), as do
/// candle's own `broadcast_as` views.
///
/// Two boolean conventions exist in candle code, so the variant says which one a `u8`
/// tensor follows:
/// * [`Mask::Allow`]: non-zero = the query may look at the key (PyTorch's boolean masks);
/// * [`Mask::Block`]: non-zero = masked out (candle-transformers' models build such a
///   `u8` mask for `masked_fill(scores, mask, -inf)`).
#[derive(Debug, Clone)]
pub enum Mask {
    /// Added to the scaled (and soft-capped) score; `-inf` hides the key. Any float dtype:
    /// f32 is read in place, f16, bf16 and f64 are converted to f32 once per call.
    Additive(Tensor),
    /// A `u8` tensor, non-zero where the key is visible. Converted to fastattn's boolean
    /// mask: one pass over the bytes its view reaches, which keeps its strides (a
    /// broadcast or transposed view is not expanded).
    Allow(Tensor),
    /// A `u8` tensor, non-zero where the key is hidden (candle-transformers' convention).
    /// Converted like [`Mask::Allow`].
    Block(Tensor),
}

impl Mask {
    /// The mask tensor.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Mask::Additive(t) | Mask::Allow(t) | Mask::Block(t) => t,
        }
    }
}

/// Options of [`crate::sdpa`], mirroring [`attention::SdpaOptions`] (whose docs state the
/// semantics of each option exactly). `SdpaOptions::default()` is plain non-causal
/// attention with scale `1/√D`.
///
/// ```
/// use fastattn_candle::SdpaOptions;
/// let opts = SdpaOptions::new().with_causal(true).with_scale(0.125).with_window(Some(256), Some(0));
/// assert!(opts.causal && opts.scale == Some(0.125) && opts.window_left == Some(256));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SdpaOptions {
    /// Score scale; `None` means `1/√D`.
    pub scale: Option<f32>,
    /// Causal masking, aligned to the bottom right (query `i` sits at key position
    /// `i + Lk − Lq`, as in FlashAttention-2 and candle-flash-attn).
    pub causal: bool,
    /// An explicit additive or boolean mask.
    pub mask: Option<Mask>,
    /// Valid key count per batch entry (right padding): `B` values, each `≤ Lk`.
    pub kv_lengths: Option<Vec<usize>>,
    /// Sliding window: keys at most this many positions before the query's position.
    pub window_left: Option<usize>,
    /// Sliding window: keys at most this many positions after the query's position.
    pub window_right: Option<usize>,
    /// ALiBi slopes, one per query head: the score of key `j` for query position `p` gets
    /// `− slope·|p − j|`.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Logit soft-capping `cap·tanh(s/cap)` (Gemma 2); finite and > 0.
    pub softcap: Option<f32>,
    /// Attention sinks: one logit per query head that joins every row's softmax
    /// denominator and adds no value (gpt-oss).
    pub sinks: Option<Vec<f32>>,
    /// Threads: fastattn's thread team (the default) or the calling thread only.
    pub parallelism: Parallelism,
}

impl SdpaOptions {
    /// Plain non-causal attention with scale `1/√D` (the same as `default()`).
    pub fn new() -> Self {
        SdpaOptions::default()
    }

    /// Sets [`scale`](Self::scale) (`None`: `1/√D`).
    pub fn with_scale(mut self, scale: impl Into<Option<f32>>) -> Self {
        self.scale = scale.into();
        self
    }

    /// Sets [`causal`](Self::causal).
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// Sets [`mask`](Self::mask).
    pub fn with_mask(mut self, mask: impl Into<Option<Mask>>) -> Self {
        self.mask = mask.into();
        self
    }

    /// Sets [`kv_lengths`](Self::kv_lengths).
    pub fn with_kv_lengths(mut self, kv_lengths: Option<Vec<usize>>) -> Self {
        self.kv_lengths = kv_lengths;
        self
    }

    /// Sets [`window_left`](Self::window_left) and [`window_right`](Self::window_right)
    /// (`None`: unbounded on that side).
    pub fn with_window(mut self, left: Option<usize>, right: Option<usize>) -> Self {
        self.window_left = left;
        self.window_right = right;
        self
    }

    /// Sets [`alibi_slopes`](Self::alibi_slopes).
    pub fn with_alibi_slopes(mut self, slopes: Option<Vec<f32>>) -> Self {
        self.alibi_slopes = slopes;
        self
    }

    /// Sets [`softcap`](Self::softcap).
    pub fn with_softcap(mut self, softcap: impl Into<Option<f32>>) -> Self {
        self.softcap = softcap.into();
        self
    }

    /// Sets [`sinks`](Self::sinks).
    pub fn with_sinks(mut self, sinks: Option<Vec<f32>>) -> Self {
        self.sinks = sinks;
        self
    }

    /// Sets [`parallelism`](Self::parallelism).
    pub fn with_parallelism(mut self, parallelism: Parallelism) -> Self {
        self.parallelism = parallelism;
        self
    }
}
