//! `tokenizer.ggml.*` → a `tokenizers::Tokenizer`, and `tokenizer.chat_template` → our
//! [`TokenizerConfig`].
//!
//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) only. The pre-tokenizer is the one the model's
//! own `tokenizer.json` uses, chosen by `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp lists the
//! same splits as regexes): a name we do not know is an error, never a silent fallback, because a
//! wrong split still encodes — into ids the model was not trained on.

use super::GgufFile;
use crate::chat::TokenizerConfig;
use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, unicode::NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

/// Qwen2's pre-tokenizer regex: the one in Qwen2.5's `tokenizer.json`, and the one transformers'
/// `Qwen2Tokenizer` installs (it rebuilds the pipeline from vocab + merges, ignoring the file's
/// `pre_tokenizer`). Unlike GPT-2's, it splits every digit on its own and never joins a space
/// to a number.
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex (its `tokenizer.json` `pre_tokenizer`, llama.cpp's `llama-bpe`): like
/// Qwen2's but numbers go in runs of up to three digits.
pub const LLAMA3_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names we rebuild.
pub const SUPPORTED_PRE: &[&str] = &["gpt-2", "smollm", "qwen2", "llama-bpe"];

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

fn byte_level(use_regex: bool) -> ByteLevel {
    ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(true)
        .use_regex(use_regex)
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    Ok(PreTokenizerWrapper::Split(
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?,
    ))
}

/// Normalizer and pre-tokenizer of the `tokenizer.json` that `pre` stands for.
pub(crate) fn pipeline(
    pre: &str,
) -> Result<Option<(Option<NormalizerWrapper>, PreTokenizerWrapper)>> {
    Ok(Some(match pre {
        // GPT-2: the byte-level pre-tokenizer's own regex.
        "gpt-2" => (None, PreTokenizerWrapper::ByteLevel(byte_level(true))),
        // SmolLM / SmolLM2: each digit alone, then GPT-2's split.
        "smollm" => (
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level(true)),
            ])),
        ),
        "qwen2" => (
            Some(NormalizerWrapper::NFC(NFC)),
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(QWEN2_PRETOKENIZE_REGEX)?,
                PreTokenizerWrapper::ByteLevel(byte_level(false)),
            ])),
        ),
        "llama-bpe" => (
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(LLAMA3_PRETOKENIZE_REGEX)?,
                PreTokenizerWrapper::ByteLevel(byte_level(false)),
            ])),
        ),
        _ => return Ok(None),
    }))
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        bail!("{}: {key} is not an array", g.origin());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            v => bail!("{}: {key}[{i}] is not a string: {v:?}", g.origin()),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn ints(g: &GgufFile, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        bail!("{}: {key} is not an array", g.origin());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::I32(x) => Ok(*x as i64),
            Value::U32(x) => Ok(*x as i64),
            Value::I8(x) => Ok(*x as i64),
            Value::U8(x) => Ok(*x as i64),
            Value::I64(x) => Ok(*x),
            v => bail!("{}: {key}[{i}] is not an integer: {v:?}", g.origin()),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl GgufFile {
    /// The token list (`tokenizer.ggml.tokens`), by id.
    pub fn tokens(&self) -> Result<Vec<&str>> {
        strings(self, "tokenizer.ggml.tokens")?
            .with_context(|| format!("{}: missing tokenizer.ggml.tokens", self.origin()))
    }

    fn token_at(&self, key: &str) -> Result<Option<String>> {
        let Some(id) = self.uint(key)? else {
            return Ok(None);
        };
        let tokens = self.tokens()?;
        let tok = tokens
            .get(id)
            .with_context(|| format!("{}: {key} = {id} is not a token id", self.origin()))?;
        Ok(Some(tok.to_string()))
    }

    /// The tokenizer rebuilt from `tokenizer.ggml.*`: byte-level BPE with the model's
    /// pre-tokenizer (by `tokenizer.ggml.pre`, see [`SUPPORTED_PRE`]), control tokens as special
    /// added tokens, user-defined tokens as (non-special) added tokens, a BOS prepended by the
    /// post-processor when `tokenizer.ggml.add_bos_token` is true.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let origin = self.origin();
        let model = self
            .string("tokenizer.ggml.model")?
            .with_context(|| format!("{origin}: missing tokenizer.ggml.model"))?;
        match model {
            "gpt2" => {}
            "llama" => bail!(
                "{origin}: SentencePiece GGUF tokenizers (tokenizer.ggml.model = llama) are not supported yet"
            ),
            other => {
                bail!("{origin}: unsupported tokenizer.ggml.model {other:?} (supported: gpt2)")
            }
        }
        let pre = self.string("tokenizer.ggml.pre")?.with_context(|| {
            format!(
                "{origin}: missing tokenizer.ggml.pre (supported: {})",
                SUPPORTED_PRE.join(", ")
            )
        })?;
        let (normalizer, pre_tokenizer) = pipeline(pre)?.with_context(|| {
            format!(
                "{origin}: unsupported tokenizer.ggml.pre {pre:?} (supported: {})",
                SUPPORTED_PRE.join(", ")
            )
        })?;
        let tokens = self.tokens()?;
        let mut vocab = Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            vocab.entry(t.to_string()).or_insert(id as u32);
        }
        let merges = strings(self, "tokenizer.ggml.merges")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("{origin}: tokenizer.ggml.merges[{i}] = {m:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            // Llama 3's tokenizer.json: a word already in the vocabulary is one token.
            .ignore_merges(pre == "llama-bpe")
            .build()
            .map_err(|e| anyhow!("{origin}: cannot build the BPE model: {e}"))?;
        let mut tok = Tokenizer::new(bpe);
        if let Some(n) = normalizer {
            tok.with_normalizer(Some(n))
                .map_err(|e| anyhow!("{origin}: normalizer: {e}"))?;
        }
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));

        let types = ints(self, "tokenizer.ggml.token_type")?.unwrap_or_default();
        let added = |kind: i64| -> Vec<AddedToken> {
            types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| **t == kind)
                .map(|(_, s)| AddedToken::from(s.to_string(), kind == TOKEN_CONTROL))
                .collect()
        };
        tok.add_special_tokens(added(TOKEN_CONTROL))
            .map_err(|e| anyhow!("{origin}: special tokens: {e}"))?;
        tok.add_tokens(added(TOKEN_USER_DEFINED))
            .map_err(|e| anyhow!("{origin}: user-defined tokens: {e}"))?;

        let add_bos = self
            .boolean("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let post = match (add_bos, self.uint("tokenizer.ggml.bos_token_id")?) {
            (true, Some(id)) => {
                let bos = self
                    .token_at("tokenizer.ggml.bos_token_id")?
                    .with_context(|| format!("{origin}: bos token {id}"))?;
                let template = TemplateProcessing::builder()
                    .try_single(format!("{bos} $A"))
                    .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
                    .map_err(|e| anyhow!("{origin}: bos template: {e}"))?
                    .special_tokens(vec![(bos.clone(), id as u32)])
                    .build()
                    .map_err(|e| anyhow!("{origin}: bos template: {e}"))?;
                PostProcessorWrapper::Template(template)
            }
            (true, None) => bail!("{origin}: add_bos_token is set but bos_token_id is missing"),
            (false, _) => PostProcessorWrapper::ByteLevel(ByteLevel::default().trim_offsets(false)),
        };
        tok.with_post_processor(Some(post));
        Ok(tok)
    }

    /// The chat template (`tokenizer.chat_template`) and the bos/eos/pad token strings.
    pub fn tokenizer_config(&self) -> Result<TokenizerConfig> {
        Ok(TokenizerConfig {
            chat_template: self.string("tokenizer.chat_template")?.map(str::to_string),
            bos_token: self.token_at("tokenizer.ggml.bos_token_id")?,
            eos_token: self.token_at("tokenizer.ggml.eos_token_id")?,
            pad_token: self.token_at("tokenizer.ggml.padding_token_id")?,
        })
    }
}
