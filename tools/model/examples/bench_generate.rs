//! Generation throughput, greedy, EOS off: on the real model `FT_MODEL` names (a `.gguf`, folder or
//! hub id, loaded like every tool's `--model`; a GGUF's linear layers multiply by its quantized
//! blocks, as in the local backend, unless `FT_DEQUANTIZED=1`) with prompts cut from a
//! bundled document, or else on a random model of SmolLM2-135M's shape (llama, hidden 576, 30
//! layers, 9 heads / 3 KV heads, MLP 1536, tied embeddings, vocab 49152).
//!
//! `cargo run --release -p ftkit-model --example bench_generate [PROMPT_TOKENS NEW_TOKENS [BATCH]...]`
//! (defaults: 64 64, batches 1 8). `FT_DEVICE=cuda` (with the `cuda` feature) runs on the GPU,
//! in F32 like the CPU. Prints one line per batch size: prompt tokens/s (the prefill alone)
//! and decode tokens/s (all generated tokens of the batch over the time after the prefill), and
//! the first prompt's greedy tokens (`tokens: ...`) and the largest batch's prompts (`prompts:`,
//! JSON) for a cross-check with other runtimes. `FT_AGREEMENT=1` instead loads the model a second
//! time on f32 weights and prints how often the next token on the blocks equals f32's when both
//! read the f32 greedy continuation of the largest batch's prompts.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_model::generate::{GenOptions, Generator, KvCache};
use ftkit_model::{CausalLm, ModelSource, Pretrained, device, resolve};
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

fn main() -> Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let prompt_len = a.first().copied().unwrap_or(64);
    let new_tokens = a.get(1).copied().unwrap_or(64);
    let batches: Vec<usize> = if a.len() > 2 {
        a[2..].to_vec()
    } else {
        vec![1, 8]
    };
    let spec_dev: device::DeviceSpec = std::env::var("FT_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()?;
    let dev = device::open_device(spec_dev, &mut |m| eprintln!("bench_generate: {m}"))?;
    let dir = tempfile::tempdir()?;
    let spec = std::env::var("FT_MODEL").ok();
    let load = |spec: &str| Pretrained::load(spec, &Default::default(), DType::F32, &dev);
    let mut on_blocks = false;
    let (model, tok, name) = match &spec {
        Some(spec) => {
            let mut lm = load(spec)?;
            if std::env::var_os("FT_DEQUANTIZED").is_none() {
                on_blocks = lm.quantize_for_inference()? > 0;
            }
            (lm.model, lm.tokenizer, spec.clone())
        }
        None => random_smollm2_shape(dir.path(), &dev)?,
    };
    let g = Generator::new(&model, &tok, Vec::new());
    let opts = GenOptions {
        max_new_tokens: new_tokens,
        ..GenOptions::default()
    };
    // Prompt r is the document's tokens from 13·r on: real text for a real model, distinct rows.
    let text = include_str!("../../../testdata/docs/lighthouses.txt");
    let text_ids = tok
        .encode(text, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    let prompts_of = |b: usize| -> Vec<Vec<u32>> {
        (0..b)
            .map(|r| {
                (0..prompt_len)
                    .map(|i| text_ids[(r * 13 + i) % text_ids.len()])
                    .collect()
            })
            .collect()
    };
    let mut out = std::io::stderr().lock();
    if std::env::var_os("FT_AGREEMENT").is_some() {
        let (true, Some(spec)) = (on_blocks, &spec) else {
            anyhow::bail!("FT_AGREEMENT needs FT_MODEL naming a GGUF with blocks");
        };
        let exact = load(spec)?;
        let prompts = prompts_of(batches.iter().copied().max().unwrap_or(1));
        let (same, all) = teacher_forced_agreement(&model, &exact.model, &tok, &prompts, &opts)?;
        writeln!(
            out,
            "next tokens on blocks = on f32 weights, both fed the f32 greedy text: {same} of {all}"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{name}, f32, {dev:?}, {} threads, prompt {prompt_len}, new {new_tokens}",
        rayon::current_num_threads()
    )?;
    for &b in &batches {
        let prompts = prompts_of(b);
        // Warm-up (allocator, kernels), then the prefill alone, then the whole generation.
        g.generate(
            &prompts[..1],
            &GenOptions {
                max_new_tokens: 2,
                ..opts.clone()
            },
            None,
        )?;
        let ids: Vec<u32> = prompts.concat();
        let input = Tensor::from_vec(ids, (b, prompt_len), &dev)?;
        let t0 = Instant::now();
        let mut cache = KvCache::new(&model, vec![0; b], prompt_len)?;
        model.forward_cached(&input, &mut cache)?.to_vec2::<f32>()?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let outs = g.generate(&prompts, &opts, None)?;
        let total = t1.elapsed().as_secs_f64();
        let generated: usize = outs.iter().map(|o| o.completion_tokens).sum();
        let decode = (total - prefill).max(1e-9);
        writeln!(
            out,
            "batch {b}: prompt {:.0} tok/s, decode {:.1} tok/s ({generated} tokens in {:.2}s after a {:.2}s prefill)",
            (b * prompt_len) as f64 / prefill,
            generated.saturating_sub(b) as f64 / decode,
            decode,
            prefill
        )?;
        if b == batches[0] {
            writeln!(out, "tokens: {:?}", outs[0].tokens)?;
        }
        if b == batches.iter().copied().max().unwrap_or(b) {
            writeln!(out, "prompts: {prompts:?}")?;
        }
    }
    Ok(())
}

/// How often the model on blocks predicts the token that the f32 model chose greedily, both
/// reading the f32 continuation (teacher forcing): unlike free-running agreement, one near tie
/// cannot send the two texts apart for the rest of the run. Returns (agreeing, compared).
fn teacher_forced_agreement(
    blocks: &CausalLm,
    exact: &CausalLm,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenOptions,
) -> Result<(usize, usize)> {
    let dev = blocks.device().clone();
    let argmax = |logits: &Tensor| -> Result<u32> { Ok(logits.argmax(1)?.to_vec1::<u32>()?[0]) };
    let reference = Generator::new(exact, tok, Vec::new()).generate(prompts, opts, None)?;
    let (mut same, mut all) = (0, 0);
    for (prompt, want) in prompts.iter().zip(&reference) {
        let mut cache = KvCache::new(blocks, vec![0], prompt.len() + want.tokens.len())?;
        let input = Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?;
        let mut logits = blocks.forward_cached(&input, &mut cache)?;
        for &t in &want.tokens {
            same += usize::from(argmax(&logits)? == t);
            all += 1;
            logits = blocks.forward_cached(&Tensor::new(&[[t]], &dev)?, &mut cache)?;
        }
    }
    Ok((same, all))
}

/// A random model of SmolLM2-135M's shape, written to `dir`.
fn random_smollm2_shape(dir: &Path, dev: &Device) -> Result<(CausalLm, Tokenizer, String)> {
    let spec = TinySpec {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        tie_word_embeddings: true,
        model_vocab_size: Some(49152),
        init_std: 0.02,
        ..TinySpec::llama(1)
    };
    write_tiny_model(dir, &spec)?;
    let files = resolve(&ModelSource::Dir(dir.to_path_buf()), &Default::default())?;
    let model = CausalLm::from_files(&files, DType::F32, dev)?;
    let tok = ftkit_model::load_tokenizer(&files.tokenizer)?;
    Ok((model, tok, "smollm2-135m shape (random)".into()))
}
