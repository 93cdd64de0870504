//! The metadata of a GGUF we write: `general.*`, the `<arch>.*` hyper-parameters (the inverse of
//! [`GgufFile::config`]), `tokenizer.ggml.*` from a `tokenizers::Tokenizer` (the inverse of
//! [`GgufFile::tokenizer`]) and the `adapter.*` keys of a LoRA adapter file — under the names and
//! value types llama.cpp's convert_hf_to_gguf.py and convert_lora_to_gguf.py write.

use super::GgufFile;
use super::tokenizer::{SUPPORTED_PRE, pipeline};
use crate::chat::TokenizerConfig;
use crate::config::{Arch, ModelConfig};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use tokenizers::{NormalizedString, Normalizer, OffsetReferential, OffsetType};
use tokenizers::{PreTokenizedString, PreTokenizer, Tokenizer};

/// llama.cpp's `chktxt` (convert_hf_to_gguf_update.py): whitespace runs, emoji, digit runs, CJK,
/// Khmer, Cyrillic, quotes and contractions — the text on which pre-tokenizers are told apart.
pub const CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn u32v(x: usize) -> Value {
    Value::U32(x as u32)
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// How `tok` splits `text` before BPE: its normalizer, then its pre-tokenizer.
fn pre_splits(
    normalizer: Option<&dyn Normalizer>,
    pre: Option<&dyn PreTokenizer>,
    text: &str,
) -> Result<Vec<String>> {
    let mut n = NormalizedString::from(text);
    if let Some(norm) = normalizer {
        norm.normalize(&mut n).map_err(|e| anyhow!("{e}"))?;
    }
    let mut p = PreTokenizedString::from(n);
    if let Some(pre) = pre {
        pre.pre_tokenize(&mut p).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(
        p.get_splits(OffsetReferential::Normalized, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect(),
    )
}

/// The `tokenizer.ggml.pre` name (llama.cpp's) of a byte-level BPE tokenizer: the one among
/// [`SUPPORTED_PRE`] whose normalizer and pre-tokenizer split [`CHECK_TEXT`] exactly as `tok`'s do
/// — llama.cpp's converter recognises tokenizers by their output on that text too. None fits: an
/// error, because llama.cpp would split the text differently from the model's training.
pub fn pre_tokenizer_name(tok: &Tokenizer) -> Result<&'static str> {
    let ours = pre_splits(
        tok.get_normalizer().map(|n| n as &dyn Normalizer),
        tok.get_pre_tokenizer().map(|p| p as &dyn PreTokenizer),
        CHECK_TEXT,
    )?;
    for name in SUPPORTED_PRE {
        let Some((norm, pre)) = pipeline(name)? else {
            continue;
        };
        let theirs = pre_splits(
            norm.as_ref().map(|n| n as &dyn Normalizer),
            Some(&pre),
            CHECK_TEXT,
        )?;
        if theirs == ours {
            return Ok(name);
        }
    }
    bail!(
        "the tokenizer's pre-tokenizer is none that llama.cpp knows and we can write ({}): \
         its GGUF would tokenize differently",
        SUPPORTED_PRE.join(", ")
    )
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` for a byte-level BPE `tok` (a
/// `tokenizer.json`) of a model with `vocab_size` embedding rows. Tokens by id, padded with
/// `[PAD{id}]` (type UNUSED) up to `vocab_size` as llama.cpp's converter does; added tokens are
/// CONTROL when special, USER_DEFINED otherwise; `add_bos_token` is whether encoding prepends the
/// BOS. An EOS token is required: without it llama.cpp and Ollama never stop.
pub fn tokenizer_metadata(
    tok: &Tokenizer,
    tcfg: &TokenizerConfig,
    cfg: &ModelConfig,
) -> Result<Vec<(String, Value)>> {
    let json: serde_json::Value = serde_json::from_str(
        &tok.to_string(false)
            .map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?,
    )?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!(
            "only byte-level BPE tokenizers can be written to GGUF (this one is {})",
            model["type"]
        );
    }
    let pre = pre_tokenizer_name(tok)?;
    let vocab = tok.get_vocab(true);
    let n = vocab
        .values()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0)
        .max(cfg.vocab_size);
    if n > cfg.vocab_size {
        bail!(
            "the tokenizer has ids up to {} but the model only {} embedding rows",
            n - 1,
            cfg.vocab_size
        );
    }
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (t, id) in vocab {
        tokens[id as usize] = Some(t);
    }
    let added = tok.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for (id, t) in tokens.into_iter().enumerate() {
        let ty = match (&t, added.get(&(id as u32))) {
            (None, _) => UNUSED,
            (_, Some(a)) if a.special => CONTROL,
            (_, Some(_)) => USER_DEFINED,
            _ => NORMAL,
        };
        types.push(Value::I32(ty));
        names.push(Value::String(t.unwrap_or_else(|| format!("[PAD{id}]"))));
    }
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json: model.merges missing")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::String(s.clone())),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            _ => Err(anyhow!("tokenizer.json: bad merge {m}")),
        })
        .collect::<Result<Vec<_>>>()?;
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_to_id(t));
    let eos = id_of(&tcfg.eos_token)
        .or_else(|| cfg.eos_token_ids.first().copied())
        .context("the model names no EOS token (tokenizer_config.json eos_token or config.json eos_token_id)")?;
    let bos = id_of(&tcfg.bos_token).or(cfg.bos_token_id);
    let add_bos = match bos {
        Some(b) => adds_bos(tok, b)?,
        None => false,
    };
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), string("gpt2")),
        ("tokenizer.ggml.pre".to_string(), string(pre)),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(names)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(eos)),
    ];
    if let Some(b) = bos {
        meta.push(("tokenizer.ggml.bos_token_id".to_string(), Value::U32(b)));
    }
    if let Some(p) = id_of(&tcfg.pad_token) {
        meta.push(("tokenizer.ggml.padding_token_id".to_string(), Value::U32(p)));
    }
    meta.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        Value::Bool(add_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".to_string(),
        Value::Bool(false),
    ));
    if let Some(t) = &tcfg.chat_template {
        meta.push(("tokenizer.chat_template".to_string(), string(t)));
    }
    Ok(meta)
}

/// Whether encoding with special tokens prepends `bos` (llama.cpp's `add_bos_token`).
pub fn adds_bos(tok: &Tokenizer, bos: u32) -> Result<bool> {
    let enc = |special| {
        tok.encode("a", special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| anyhow!("{e}"))
    };
    let (with, without) = (enc(true)?, enc(false)?);
    Ok(with.len() > without.len() && with.first() == Some(&bos))
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a model whose large tensors are `t`.
pub fn file_type(t: candle_core::quantized::GgmlDType) -> u32 {
    use candle_core::quantized::GgmlDType as G;
    match t {
        G::F32 => 0,
        G::F16 => 1,
        G::Q4_0 => 2,
        G::Q4_1 => 3,
        G::Q8_0 => 7,
        G::Q5_0 => 8,
        G::Q5_1 => 9,
        G::Q2K => 10,
        G::Q3K => 12,
        G::Q4K => 15, // Q4_K_M: what llama-quantize names a Q4_K model with a Q6_K output
        G::Q5K => 17,
        G::Q6K => 18,
        G::BF16 => 32,
        G::Q8_1 | G::Q8K => 7,
    }
}

/// `general.*` and the `<arch>.*` hyper-parameters of `cfg`, as [`GgufFile::config`] reads them.
pub fn model_metadata(
    cfg: &ModelConfig,
    name: &str,
    file_type: u32,
) -> Result<Vec<(String, Value)>> {
    if cfg.rope_scaling.is_some() {
        bail!(
            "llama3 rope scaling is not written to GGUF yet (llama.cpp needs a rope_freqs tensor)"
        );
    }
    let a = cfg.arch.model_type();
    Ok(vec![
        ("general.architecture".to_string(), string(a)),
        ("general.type".to_string(), string("model")),
        ("general.name".to_string(), string(name)),
        ("general.file_type".to_string(), Value::U32(file_type)),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (
            "general.alignment".to_string(),
            u32v(super::write::ALIGNMENT),
        ),
        (format!("{a}.vocab_size"), u32v(cfg.vocab_size)),
        (
            format!("{a}.context_length"),
            u32v(cfg.max_position_embeddings),
        ),
        (format!("{a}.embedding_length"), u32v(cfg.hidden_size)),
        (format!("{a}.block_count"), u32v(cfg.num_hidden_layers)),
        (
            format!("{a}.feed_forward_length"),
            u32v(cfg.intermediate_size),
        ),
        (
            format!("{a}.attention.head_count"),
            u32v(cfg.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u32v(cfg.num_key_value_heads),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (format!("{a}.rope.dimension_count"), u32v(cfg.head_dim)),
        (format!("{a}.attention.key_length"), u32v(cfg.head_dim)),
        (format!("{a}.attention.value_length"), u32v(cfg.head_dim)),
    ])
}

/// The keys of a LoRA adapter GGUF (convert_lora_to_gguf.py): llama.cpp checks the type, the
/// adapter type and the base's architecture, and scales by `alpha / r` (alpha as FLOAT32).
pub fn adapter_metadata(arch: Arch, alpha: f64, name: &str) -> Vec<(String, Value)> {
    vec![
        (
            "general.architecture".to_string(),
            string(arch.model_type()),
        ),
        ("general.type".to_string(), string("adapter")),
        ("general.name".to_string(), string(name)),
        ("adapter.type".to_string(), string("lora")),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha as f32)),
    ]
}

/// Keys llama.cpp fails without (for our two architectures): checked before a model is written,
/// so a missing one is an error here rather than at the user's `ollama create`.
pub fn check_model_keys(meta: &[(String, Value)]) -> Result<()> {
    let has = |k: &str| meta.iter().any(|(key, _)| key == k);
    let arch = meta
        .iter()
        .find(|(k, _)| k == "general.architecture")
        .and_then(|(_, v)| v.to_string().ok())
        .context("GGUF metadata: general.architecture missing")?;
    let mut missing = vec![];
    for k in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.layer_norm_rms_epsilon",
    ] {
        let key = format!("{arch}.{k}");
        if !has(&key) {
            missing.push(key);
        }
    }
    for k in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
    ] {
        if !has(k) {
            missing.push(k.to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "GGUF metadata lacks keys llama.cpp needs: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

impl GgufFile {
    /// A GGUF's metadata without a file (tensors absent): to read back, before writing, what a
    /// metadata set means, e.g. the tokenizer it rebuilds. `origin` names it in errors.
    pub fn from_metadata(origin: &str, metadata: &[(String, Value)]) -> Self {
        Self {
            path: origin.into(),
            content: Content {
                magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
                metadata: metadata.iter().cloned().collect::<HashMap<_, _>>(),
                tensor_infos: HashMap::new(),
                tensor_data_offset: 0,
            },
        }
    }

    /// Every `tokenizer.*` key of this file, sorted by key: a GGUF's own tokenizer copied as is.
    pub fn tokenizer_keys(&self) -> Vec<(String, Value)> {
        let mut keys: Vec<(String, Value)> = self
            .content
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }
}
