//! Writes the benchmark model of scripts/bench-train (or scripts/bench-train-gpu) and a training
//! file whose examples all exceed the benchmark's sequence length:
//! `make-bench-model MODEL_DIR TRAIN_JSONL llama|qwen2 N_EXAMPLES [SHAPE [VOCAB]]`.
//!
//! SHAPE: `bench` (default; issue 5's CPU shape: hidden 512, 4 layers, examples > 256 tokens) or
//! `qwen2-0.5b` (Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, examples
//! over 2048 tokens). VOCAB: embedding rows when more than the fixture tokenizer's few hundred
//! (Qwen2.5 pads to 151936); the extra rows are never seen as inputs but make the logits and
//! loss as large as the real model's.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use std::io::Write;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, train, arch, n, shape, vocab) = match args.as_slice() {
        [d, t, a, n] => (d, t, a, n, "bench", None),
        [d, t, a, n, s] => (d, t, a, n, s.as_str(), None),
        [d, t, a, n, s, v] => (d, t, a, n, s.as_str(), Some(v)),
        _ => bail!(
            "usage: make-bench-model MODEL_DIR TRAIN_JSONL llama|qwen2 N_EXAMPLES [bench|qwen2-0.5b [VOCAB]]"
        ),
    };
    let model_vocab_size = match vocab {
        Some(v) => Some(v.parse::<usize>().context("VOCAB")?),
        None => None,
    };
    let base = match arch.as_str() {
        "llama" => TinySpec::llama(7),
        "qwen2" => TinySpec::qwen2(7),
        other => bail!("unknown architecture {other}"),
    };
    let (spec, words_per_example) = match shape {
        // Issue 5's shape: hidden 512, 4 layers (8 heads of 64), MLP 1408.
        "bench" => (
            TinySpec {
                hidden_size: 512,
                intermediate_size: 1408,
                num_hidden_layers: 4,
                num_attention_heads: 8,
                num_key_value_heads: 8,
                init_std: 0.02,
                model_vocab_size,
                ..base
            },
            400,
        ),
        // Qwen2.5-0.5B's config.json (heads of 64, GQA 7:1, tied embeddings).
        "qwen2-0.5b" => (
            TinySpec {
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 24,
                num_attention_heads: 14,
                num_key_value_heads: 2,
                tie_word_embeddings: true,
                init_std: 0.02,
                model_vocab_size,
                ..base
            },
            2200,
        ),
        other => bail!("unknown shape {other} (expected bench or qwen2-0.5b)"),
    };
    write_tiny_model(std::path::Path::new(dir), &spec)?;
    let n: usize = n.parse().context("N_EXAMPLES")?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(train)?);
    let words = [
        "data", "record", "model", "token", "chunk", "answer", "prompt", "lineage", "offset",
        "pipeline",
    ];
    let mut x: u64 = 0x9E37_79B9;
    for i in 0..n {
        let mut text = String::new();
        for _ in 0..words_per_example {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(words[(x % words.len() as u64) as usize]);
            text.push(' ');
        }
        let rec = serde_json::json!({"instruction": format!("Continue {i}"), "output": text});
        writeln!(out, "{rec}")?;
    }
    out.flush()?;
    Ok(())
}
