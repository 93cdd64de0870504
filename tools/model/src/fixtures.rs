//! Tiny, deterministic model directories for tests (no downloads): a byte-level BPE tokenizer
//! trained in-process from [`CORPUS`], a random-init qwen2 or llama model with the real Hugging
//! Face key layout, and a `tokenizer_config.json` with a real chat template.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! ftkit_model::fixtures::write_tiny_model(dir.path(), &ftkit_model::fixtures::TinySpec::qwen2(7))?;
//! # Ok(()) }
//! ```

use crate::config::Arch;
use crate::rng::Rng;
use anyhow::{Context, Result, anyhow};
use candle_core::{Device, Tensor};

use std::path::Path;
use tokenizers::Tokenizer;

/// A `shape` tensor (CPU, F32) of Normal(0, `std`) values from the stream `(seed, label)`: tests'
/// random inputs.
pub fn random_normal(
    label: &str,
    shape: &[usize],
    seed: u64,
    std: f64,
) -> candle_core::Result<Tensor> {
    let v = Rng::derive(seed, label).normal_vec(shape.iter().product(), 0.0, std);
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Each tensor's values as bit patterns, for bit-exact comparisons.
pub fn bits(tensors: &[Tensor]) -> candle_core::Result<Vec<Vec<u32>>> {
    tensors
        .iter()
        .map(|t| {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        })
        .collect()
}

/// `max |a − b| / max(max |b|, 1e-6)`: how far `a` strays from the reference `b`, relative to
/// `b`'s largest value (shapes must match).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let max_abs = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
    Ok(max_abs(&(a - b)?)? / max_abs(b)?.max(1e-6))
}

/// Qwen2.5's ChatML template (tool branches omitted; the text paths are Qwen's own).
pub const CHATML_TEMPLATE: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- raise_exception('tool calls are not supported by this template') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Meta-Llama-3-8B-Instruct's chat template, verbatim.
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Training text for the fixture tokenizer (and a handy toy dataset).
pub const CORPUS: &str = "\
The quick brown fox jumps over the lazy dog. A tokenizer splits text into tokens.
Fine-tuning adapts a pretrained language model to a task with a small dataset.
LoRA adds low-rank matrices A and B to frozen linear layers; only A and B are trained.
What is the capital of France? The capital of France is Paris.
What is two plus two? Two plus two is four. What is three plus three? It is six.
Question: Which river flows through London? Answer: The Thames flows through London.
You are a helpful assistant. Please answer the question briefly and accurately.
Rust is a systems programming language focused on safety, speed and concurrency.
Data pipelines read JSONL records, transform them and write JSONL records again.
Each record keeps its document id, chunk id and offsets so that lineage is preserved.
The model reads the prompt, then writes the answer one token at a time until it stops.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } \" '
";

/// Shape and seed of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub tie_word_embeddings: bool,
    /// Tokenizer vocabulary size target (specials + 256 bytes + merges).
    pub vocab_size: usize,
    /// Rows of the embedding and `lm_head` (`config.json` `vocab_size`) when larger than the
    /// tokenizer's vocabulary, as real models pad it (Qwen2.5: 151936); `None` = the tokenizer's.
    pub model_vocab_size: Option<usize>,
    /// Number of safetensors shards (1 = a single `model.safetensors`).
    pub shards: usize,
    /// Standard deviation of the random weights.
    pub init_std: f64,
    pub seed: u64,
    /// The context written to `config.json` (and the tokenizer's `model_max_length`).
    pub max_position_embeddings: usize,
}

impl TinySpec {
    /// Qwen2-style: q/k/v bias, tied embeddings, ChatML template.
    pub fn qwen2(seed: u64) -> Self {
        Self {
            arch: Arch::Qwen2,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            tie_word_embeddings: true,
            vocab_size: 400,
            model_vocab_size: None,
            shards: 1,
            init_std: 0.1,
            seed,
            max_position_embeddings: 512,
        }
    }

    /// Llama-3-style: no bias, separate lm_head, Llama-3 template.
    pub fn llama(seed: u64) -> Self {
        Self {
            arch: Arch::Llama,
            tie_word_embeddings: false,
            ..Self::qwen2(seed)
        }
    }

    /// Special tokens of this family, in id order.
    pub fn special_tokens(&self) -> &'static [&'static str] {
        match self.arch {
            Arch::Qwen2 => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            Arch::Llama => &[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
        }
    }
}

pub use crate::gguf::tokenizer::QWEN2_PRETOKENIZE_REGEX;

/// Train a byte-level BPE tokenizer on [`CORPUS`] with `specials` as special tokens (ids 0..),
/// GPT-2 style pre-tokenization (what the llama fixture uses).
pub fn train_tokenizer(specials: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    train_tokenizer_for(Arch::Llama, specials, vocab_size)
}

/// Train a byte-level BPE tokenizer on [`CORPUS`] with the pipeline `arch`'s real tokenizers
/// use: for qwen2, NFC + [`QWEN2_PRETOKENIZE_REGEX`] split + byte-level (as Qwen2.5's
/// `tokenizer.json`, and as transformers' `Qwen2Tokenizer` rebuilds it, so the fixture tokenises
/// identically in transformers and here); for llama, GPT-2's byte-level regex.
pub fn train_tokenizer_for(arch: Arch, specials: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::models::{ModelWrapper, TrainerWrapper};
    use tokenizers::normalizers::{NormalizerWrapper, unicode::NFC};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{
        AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        SplitDelimiterBehavior,
    };

    let mut tok = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    match arch {
        Arch::Qwen2 => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("qwen2 pre-tokenizer regex: {e}"))?;
            tok.with_normalizer(Some(NormalizerWrapper::NFC(NFC)))
                .map_err(|e| anyhow!("qwen2 normalizer: {e}"))?;
            tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(
                    ByteLevel::default()
                        .add_prefix_space(false)
                        .use_regex(false),
                ),
            ]))));
        }
        Arch::Llama => {
            tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(
                ByteLevel::default().add_prefix_space(false),
            )));
        }
    }
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(
        ByteLevel::default().trim_offsets(false),
    )));
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(1)
            .special_tokens(
                specials
                    .iter()
                    .map(|s| AddedToken::from(s.to_string(), true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    tok.train(&mut trainer, CORPUS.lines())
        .map_err(|e| anyhow!("training the fixture tokenizer: {e}"))?;
    Ok(tok)
}

/// Write a safetensors file of F32 tensors (sorted by name) with `{"format":"pt"}` metadata.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    let out = crate::peft::f32_safetensors(tensors)
        .with_context(|| format!("{}: cannot serialise", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The HF tensor names and shapes of a model (without values).
pub fn weight_shapes(spec: &TinySpec, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let h = spec.hidden_size;
    let hd = h / spec.num_attention_heads;
    let q = spec.num_attention_heads * hd;
    let kv = spec.num_key_value_heads * hd;
    let i = spec.intermediate_size;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for l in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for (name, rows, cols) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ] {
            out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
            if spec.arch == Arch::Qwen2
                && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(&name)
            {
                out.push((format!("{p}.{name}.bias"), vec![rows]));
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !spec.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![vocab, h]));
    }
    out
}

/// Write `config.json`, `tokenizer.json`, `tokenizer_config.json` and the safetensors weights
/// (single file, or shards plus `model.safetensors.index.json`) of a tiny random model.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let specials = spec.special_tokens();
    let tok = train_tokenizer_for(spec.arch, specials, spec.vocab_size)?;
    let vocab = tok
        .get_vocab_size(true)
        .max(spec.model_vocab_size.unwrap_or(0));
    tok.save(dir.join("tokenizer.json"), true)
        .map_err(|e| anyhow!("saving tokenizer.json: {e}"))?;

    // tokenizer_class as in Qwen2.5's and Llama-3's own tokenizer_config.json.
    let (bos, eos, template, model_type, tokenizer_class) = match spec.arch {
        Arch::Qwen2 => (
            None,
            "<|im_end|>",
            CHATML_TEMPLATE,
            "qwen2",
            "Qwen2Tokenizer",
        ),
        Arch::Llama => (
            Some("<|begin_of_text|>"),
            "<|eot_id|>",
            LLAMA3_TEMPLATE,
            "llama",
            "PreTrainedTokenizerFast",
        ),
    };
    let id = |t: &str| tok.token_to_id(t).context("fixture special token missing");
    let eos_id = id(eos)?;
    let bos_id = match bos {
        Some(b) => id(b)?,
        None => id("<|endoftext|>")?,
    };
    let config = serde_json::json!({
        "architectures": [if spec.arch == Arch::Qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "sliding_window": 512,
        "max_window_layers": spec.num_hidden_layers,
        "use_sliding_window": false,
        "torch_dtype": "float32",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    let tok_cfg = serde_json::json!({
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": specials[0],
        "model_max_length": spec.max_position_embeddings,
        "tokenizer_class": tokenizer_class,
        "chat_template": template,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tok_cfg)? + "\n",
    )?;

    let mut tensors = Vec::new();
    for (name, shape) in weight_shapes(spec, vocab) {
        let n: usize = shape.iter().product();
        let mut rng = Rng::derive(spec.seed, &name);
        let values = if name.ends_with("norm.weight") {
            rng.normal_vec(n, 1.0, 0.1)
        } else {
            rng.normal_vec(n, 0.0, spec.init_std)
        };
        tensors.push((name, shape, values));
    }
    let shards = spec.shards.max(1);
    if shards == 1 {
        return write_f32_safetensors(&dir.join("model.safetensors"), &tensors);
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
        for (name, _, _) in chunk {
            weight_map.insert(name.clone(), file.clone().into());
        }
        write_f32_safetensors(&dir.join(&file), chunk)?;
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokenizer transformers 5 builds for a `model_type: "qwen2"` directory: its
    /// `Qwen2Tokenizer.__init__` keeps `tokenizer.json`'s vocab, merges and added tokens but
    /// installs its own normalizer and pre-tokenizer (transformers 5.23,
    /// `models/qwen2/tokenization_qwen2.py`, transcribed here as tokenizer.json JSON).
    fn as_transformers_qwen2(tok: &Tokenizer) -> Result<Tokenizer> {
        let mut json: serde_json::Value =
            serde_json::from_str(&tok.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
        json["normalizer"] = serde_json::json!({"type": "NFC"});
        json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]});
        json.to_string()
            .parse::<Tokenizer>()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Texts where GPT-2 and Qwen2 pre-tokenization differ (digits after a space, digit runs,
    /// punctuation before letters, NFD input), in the chat layout the trainer renders.
    const PROBES: &[&str] = &[
        "<|im_start|>user\nContinue 1<|im_end|>\n<|im_start|>assistant\ndata record 12 <|im_end|>\n",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.",
        "What is two plus two? It's 4, isn't it? (yes)\n\n  spaces   here\r\n",
        "cafe\u{301} na\u{ef}ve 2024-11-22 x=3.14;",
    ];

    fn ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        Ok(tok
            .encode(text, false)
            .map_err(|e| anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    #[test]
    fn qwen2_fixture_tokenizes_like_transformers_qwen2_tokenizer() -> Result<()> {
        let spec = TinySpec::qwen2(1);
        let ours = train_tokenizer_for(Arch::Qwen2, spec.special_tokens(), spec.vocab_size)?;
        let theirs = as_transformers_qwen2(&ours)?;
        for text in PROBES {
            assert_eq!(ids(&ours, text)?, ids(&theirs, text)?, "{text:?}");
        }
        // Qwen2 splits every digit on its own: "Continue 12" never has a " 1" or "12" token.
        let enc = ours
            .encode("Continue 12", false)
            .map_err(|e| anyhow!("{e}"))?;
        let toks = enc.get_tokens();
        assert_eq!(&toks[toks.len() - 3..], ["Ġ", "1", "2"], "{toks:?}");
        Ok(())
    }

    #[test]
    fn gpt2_style_tokenizer_is_not_what_transformers_builds_for_qwen2() -> Result<()> {
        // The old qwen2 fixture (GPT-2 pre-tokenization) tokenised " 1" as one token while
        // transformers split it, shifting every later position: the check above must catch it.
        let spec = TinySpec::qwen2(1);
        let gpt2 = train_tokenizer_for(Arch::Llama, spec.special_tokens(), spec.vocab_size)?;
        let theirs = as_transformers_qwen2(&gpt2)?;
        let mut differ = false;
        for text in PROBES {
            differ |= ids(&gpt2, text)? != ids(&theirs, text)?;
        }
        assert!(differ);
        Ok(())
    }

    #[test]
    fn tiny_model_tokenizer_config_names_the_family_class() -> Result<()> {
        for (spec, class) in [
            (TinySpec::qwen2(1), "Qwen2Tokenizer"),
            (TinySpec::llama(1), "PreTrainedTokenizerFast"),
        ] {
            let dir = tempfile::tempdir()?;
            write_tiny_model(dir.path(), &spec)?;
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                dir.path().join("tokenizer_config.json"),
            )?)?;
            assert_eq!(cfg["tokenizer_class"], class);
            let tok: Tokenizer = std::fs::read_to_string(dir.path().join("tokenizer.json"))?
                .parse()
                .map_err(|e| anyhow!("{e}"))?;
            if spec.arch == Arch::Qwen2 {
                let theirs = as_transformers_qwen2(&tok)?;
                for text in PROBES {
                    assert_eq!(ids(&tok, text)?, ids(&theirs, text)?, "{text:?}");
                }
            }
        }
        Ok(())
    }
}
