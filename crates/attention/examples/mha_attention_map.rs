//! Builds a small causal self-attention layer with rotary embeddings, runs a short
//! sentence through it and prints its attention matrices as tables: row = token, column =
//! the token it looks at, entry = attention weight (`.` where causality hides the token).
//!
//! `cargo run --release -p fastattn-attention --example mha_attention_map [seed]`
//!
//! The weights are random (seeded), so the patterns are not linguistic; the point is to show
//! how to read the matrix: every row sums to 1, the first token can only look at itself, and
//! identical tokens ("the") get identical embeddings.

use fastattn_attention::{MhaConfig, MultiHeadAttention, OwnedMhaWeights, RopeConfig, SdpaOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let tokens = ["the", "cat", "sat", "on", "the", "mat", "and", "slept"];
    let (d_model, heads) = (32, 4);
    let cfg = MhaConfig::new(d_model, heads).with_rope(RopeConfig::default());
    // Random weights, with the query projection scaled up so that the softmax is sharper
    // than at initialisation (where every row is close to uniform), then built from these
    // caller-given weights.
    let mut w = OwnedMhaWeights::random(&cfg, true, seed)?;
    w.wq.iter_mut().for_each(|x| *x *= 6.0);
    let layer = MultiHeadAttention::new(cfg, w.as_weights())?;

    // One embedding per distinct word, from a seeded generator.
    let mut vocab: Vec<&str> = tokens.to_vec();
    vocab.sort_unstable();
    vocab.dedup();
    let mut rng = StdRng::seed_from_u64(seed);
    let table: Vec<Vec<f32>> = vocab
        .iter()
        .map(|_| (0..d_model).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let x: Vec<f32> = tokens
        .iter()
        .flat_map(|t| table[vocab.binary_search(t).unwrap()].iter().copied())
        .collect();

    let l = tokens.len();
    let causal = SdpaOptions::default().with_causal(true);
    let (_y, w) = layer.forward_with_weights(&x, 1, l, &causal)?;
    println!(
        "causal self-attention, d_model = {d_model}, {heads} heads, RoPE, seed {seed}\n\
         row = token, column = the token it looks at\n"
    );
    for h in 0..heads {
        print_table(
            &format!("head {h}"),
            &tokens,
            &w[h * l * l..(h + 1) * l * l],
        );
    }
    let mean: Vec<f32> = (0..l * l)
        .map(|i| (0..heads).map(|h| w[h * l * l + i]).sum::<f32>() / heads as f32)
        .collect();
    print_table("mean over heads", &tokens, &mean);
    Ok(())
}

fn print_table(title: &str, tokens: &[&str], w: &[f32]) {
    let l = tokens.len();
    println!("{title}");
    print!("{:>8} |", "");
    for t in tokens {
        print!("{t:>6}");
    }
    println!("  | looks most at");
    println!("{}", "-".repeat(10 + 6 * l + 17));
    for (i, row) in w.chunks(l).enumerate() {
        print!("{:>8} |", tokens[i]);
        for (j, &p) in row.iter().enumerate() {
            if j > i {
                print!("{:>6}", ".");
            } else {
                print!("{p:>6.2}");
            }
        }
        let best = (0..l).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        println!("  | {} (#{best})", tokens[best]);
    }
    println!();
}
