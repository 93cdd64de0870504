//! ftkit-model: causal LMs on candle for training and inference.
//!
//! - [`config`]: `config.json` → [`ModelConfig`] for `qwen2` and `llama` (Llama 2/3, SmolLM,
//!   Mistral-style), convertible to candle-transformers' own configs.
//! - [`source`]: `--model DIR | ORG/NAME[@REV]` → local files ([`resolve`]), via hf-hub with
//!   `HF_HOME`/`HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` ([`HubOptions::from_env`]).
//! - [`chat`]: `tokenizer_config.json`, the model's Jinja chat template rendered with minijinja,
//!   and [`encode_chat`] → token ids + assistant mask.
//! - [`model`]: [`CausalLm`], our differentiable forward (qwen2, llama): `load(cfg, vb)`,
//!   `hidden(ids, opts)` → `[b, s, h]`, `logits(hidden)`, `forward` = both; `ForwardOpts` takes
//!   segment ids (block-diagonal attention for packing, see `packed_row`) and position ids.
//!   `mmap_var_builder(files, dtype, device)` maps the safetensors.
//! - [`lora`]: `LoraConfig` (rank, alpha, dropout, rslora, targets from `parse_targets`,
//!   seed), `CausalLm::attach_lora(cfg, &varmap)` (A/B F32 Vars under PEFT keys),
//!   `CausalLm::lora_params()` (sorted `(peft_key, Var)`), `check_gradients(&grads, &params)`
//!   (fail loudly at start-up), `frozen_linear` (CustomOp2: backward returns only dL/dx).
//! - [`peft`]: `save_adapter`, `load_adapter`, `AdapterConfig::from_lora`,
//!   `CausalLm::attach_adapter` (resume / continue from PEFT files), `merge_weight`/`merge_into`.
//! - [`device`]: `DeviceSpec`/`DTypeSpec` (`FromStr`), `open_device` (auto → CPU fallback with
//!   a note), `resolve_dtype` (auto: bf16 on CUDA, f32 on CPU). Feature `cuda` builds candle
//!   with CUDA.
//! - [`fixtures`]: tiny deterministic random models + BPE tokenizers for tests.
//! - [`rng`]: the seedable RNG used for weights, LoRA init and dropout.
//!
//! No clap here: tools parse flags and call these functions.

pub mod chat;
pub mod config;
pub mod device;
pub mod fixtures;
pub mod lora;
pub mod model;
pub mod ops;
pub mod peft;
pub mod rng;
pub mod source;

pub use chat::{ChatMessage, ChatTemplate, EncodedChat, TokenizerConfig, encode_chat};
pub use config::{Arch, ModelConfig};
pub use lora::{LoraConfig, check_gradients, parse_targets};
pub use model::{CausalLm, ForwardOpts, packed_row};
pub use source::{HubOptions, ModelFiles, ModelSource, resolve};

/// Load `tokenizer.json`.
pub fn load_tokenizer(path: &std::path::Path) -> anyhow::Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}
