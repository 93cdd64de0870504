//! Writes the benchmark model of scripts/bench-train and a training file whose examples all exceed
//! 256 tokens: `make-bench-model MODEL_DIR TRAIN_JSONL llama|qwen2 N_EXAMPLES`.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use std::io::Write;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, train, arch, n] = args.as_slice() else {
        bail!("usage: make-bench-model MODEL_DIR TRAIN_JSONL llama|qwen2 N_EXAMPLES");
    };
    let base = match arch.as_str() {
        "llama" => TinySpec::llama(7),
        "qwen2" => TinySpec::qwen2(7),
        other => bail!("unknown architecture {other}"),
    };
    // Issue 5's shape: hidden 512, 4 layers (8 heads of 64), MLP 1408.
    let spec = TinySpec {
        hidden_size: 512,
        intermediate_size: 1408,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        init_std: 0.02,
        ..base
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
        for _ in 0..400 {
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
