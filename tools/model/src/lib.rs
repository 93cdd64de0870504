//! ftkit-model: causal LMs on candle for training and inference.
//!
//! - [`config`]: `config.json` → [`ModelConfig`] for `qwen2` and `llama` (Llama 2/3, SmolLM,
//!   Mistral-style), convertible to candle-transformers' own configs.
//! - [`source`]: `--model DIR | ORG/NAME[@REV]` → local files ([`resolve`]), via hf-hub with
//!   `HF_HOME`/`HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` ([`HubOptions::from_env`]).
//! - [`chat`]: `tokenizer_config.json`, the model's Jinja chat template rendered with minijinja,
//!   and [`encode_chat`] → token ids + assistant mask.
//! - [`fixtures`]: tiny deterministic random models + BPE tokenizers for tests.
//! - [`rng`]: the seedable RNG used for weights, LoRA init and dropout.
//!
//! No clap here: tools parse flags and call these functions.

pub mod chat;
pub mod config;
pub mod fixtures;
pub mod rng;
pub mod source;

pub use chat::{ChatMessage, ChatTemplate, EncodedChat, TokenizerConfig, encode_chat};
pub use config::{Arch, ModelConfig};
pub use source::{HubOptions, ModelFiles, ModelSource, resolve};

/// Load `tokenizer.json`.
pub fn load_tokenizer(path: &std::path::Path) -> anyhow::Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}
