//! The example's Llama-style block decodes the same tokens with fastattn's attention as
//! with candle's matmul–softmax attention.

#[allow(dead_code)]
#[path = "../examples/llama_block.rs"]
mod llama_block;

use llama_block::{Attn, Block, Config};

#[test]
fn llama_block_greedy_tokens_equal_candle_attention() -> candle_core::Result<()> {
    for seed in [20261206u64, 7, 1234] {
        let block = Block::new(Config::default(), seed)?;
        let prompt = [3u32, 14, 15, 92, 65, 35, 89, 79, 32];
        let (plain, plain_logits) = block.generate(&prompt, 10, Attn::Candle)?;
        let (fused, fused_logits) = block.generate(&prompt, 10, Attn::Fastattn)?;
        assert_eq!(plain, fused, "seed {seed}: tokens differ");
        for (step, (a, b)) in plain_logits.iter().zip(&fused_logits).enumerate() {
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "seed {seed}, step {step}: logits differ by {d}");
        }
    }
    Ok(())
}
