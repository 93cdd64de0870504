//! ftkit-model: causal LMs on candle for training and inference.
//!
//! - [`config`]: `config.json` → [`ModelConfig`] for `qwen2` and `llama` (Llama 2/3, SmolLM,
//!   Mistral-style), convertible to candle-transformers' own configs.
//! - [`source`]: `--model DIR | FILE.gguf | ORG/NAME[@REV]` → local files ([`resolve`]), via hf-hub with
//!   `HF_HOME`/`HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` ([`HubOptions::from_env`]).
//! - [`gguf`]: a `.gguf` file (llama, qwen2) as [`GgufFile`]: `config()`, `tokenizer()`,
//!   `tokenizer_config()`, `qtensors(device)` (quantized, HF names, llama q/k rows un-permuted),
//!   `var_builder(dtype, device)` (dequantized by candle). `resolve` accepts `FILE.gguf` or a
//!   directory holding one; `CausalLm::from_files`, `ModelConfig::from_file`, `load_tokenizer`
//!   and `TokenizerConfig::load` then read it like the safetensors layout. Writing:
//!   [`gguf::write::GgufWriter`] (GGUF v3, one tensor at a time), [`gguf::metadata`] (the
//!   `general.*`, `<arch>.*`, `tokenizer.ggml.*` and `adapter.*` keys llama.cpp reads; the
//!   `tokenizer.ggml.pre` name of a tokenizer), `llama_qk_permute_rows` (llama.cpp's q/k order).
//! - [`tensors`]: [`tensors::ModelTensors`], a model's weights one F32 tensor at a time by HF name
//!   (safetensors read with pread, or a GGUF dequantized), for exports.
//! - [`chat`]: `tokenizer_config.json`, the model's Jinja chat template rendered with minijinja,
//!   and [`encode_chat`] → token ids + assistant mask.
//! - [`model`]: [`CausalLm`], our differentiable forward (qwen2, llama): `load(cfg, vb)`,
//!   `hidden(ids, opts)` → `[b, s, h]`, `logits(hidden)`, `forward` = both; `ForwardOpts` takes
//!   segment ids (block-diagonal attention for packing, see `packed_row`) and position ids.
//!   `mmap_var_builder(files, dtype, device)` maps the safetensors.
//! - [`lora`]: `LoraConfig` (rank, alpha, dropout, rslora, targets from `parse_targets`,
//!   seed), `CausalLm::attach_lora(cfg, &varmap)` (A/B F32 Vars under PEFT keys),
//!   `CausalLm::lora_params()` (sorted `(peft_key, Var)`), `check_gradients(&grads, &params)`
//!   (fail loudly at start-up), `frozen_linear` (CustomOp2: backward returns only dL/dx),
//!   `lora_linear` (the whole LoRA layer as one CPU F32 op, default; `CausalLm::set_fused_lora`).
//! - [`peft`]: `save_adapter`, `load_adapter`, `AdapterConfig::from_lora`,
//!   `CausalLm::attach_adapter` (resume / continue from PEFT files), `merge_weight`/`merge_into`.
//! - [`pretrained`]: [`Pretrained::load`]`(spec, hub, dtype, device)`: a model as tools name it,
//!   with tokenizer, tokenizer config, chat template and digest (ft-train-lora, the local backend).
//! - [`device`]: `DeviceSpec`/`DTypeSpec` (`FromStr`), `open_device` (auto → CPU fallback with
//!   a note), `resolve_dtype` (auto: bf16 on CUDA, f32 on CPU). Feature `cuda` builds candle
//!   with CUDA.
//! - [`ops`]: candle's fused softmax / RMSNorm / rope with a closed-form backward attached
//!   (used by default; `CausalLm::set_fused_ops(false)` switches to autograd over basic ops).
//! - [`attention`]: self-attention (rope, grouped heads, mask, softmax, values) as one CPU F32
//!   op with a closed-form backward; [`mlp`]: a frozen SwiGLU MLP as one op in row blocks;
//!   [`fused`]: one-pass SwiGLU and RMSNorm kernels; [`matmul`]: bounds-checked strided views
//!   over gemm for them. Other devices and dtypes keep the candle-op formulation.
//! - [`generate`]: local generation. [`generate::Generator`]`::new(&model, &tok, eos)`,
//!   `encode_chat`/`encode_text`, `generate(&prompts, &GenOptions, Option<&mut dyn
//!   LogitsProcessor>)` → [`generate::Generation`] (text, tokens, finish reason, token counts):
//!   batched (left padding, finished rows dropped), greedy or temperature/top-k/top-p with a
//!   per-prompt seeded stream, stop strings, EOS ids; [`generate::cache`]: the inference
//!   forward `CausalLm::forward_cached` with a [`generate::KvCache`] (no autograd, candle's
//!   fused kernels, LoRA applied).
//! - [`quant`]: QLoRA's frozen matrices in blocks ([`quant::QuantMatrix`]: candle's GGUF blocks
//!   or NF4, multiplied tile by tile), `BaseQuant` (`--quantize`); [`frozen`]: a frozen matrix as
//!   a tensor or blocks (`Frozen::linear`, `embedding`: input gradient only);
//!   `CausalLm::load_with(cfg, vb, &LoadOptions { quantize, gguf })` quantizes while loading.
//! - [`checkpoint`]: gradient checkpointing of decoder layers (`ForwardOpts::checkpoint`).
//! - [`runtime`]: glibc allocator settings for CPU training (`tune_for_cpu_training`).
//! - [`fixtures`]: tiny deterministic random models + BPE tokenizers for tests (each family's
//!   real pre-tokenizer, so transformers tokenises them as we do).
//! - [`rng`]: the seedable RNG used for weights, LoRA init and dropout.
//! - [`constrain`]: constrained JSON decoding: a [`constrain::Shape`] (QA pairs, judge scores)
//!   compiled against a vocabulary's token bytes; per sequence, the allowed tokens of each step.
//!
//! No clap here: tools parse flags and call these functions.
//!
//! Training recipe (what ft-train-lora does):
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ftkit_model::*;
//! use candle_nn::Optimizer;
//! let files = resolve(&ModelSource::parse("./tiny")?, &HubOptions::from_env(false))?;
//! let device = device::open_device("auto".parse()?, &mut |m| eprintln!("ft-x: {m}"))?;
//! let dtype = device::resolve_dtype("auto".parse()?, &device);
//! let mut model = CausalLm::from_files(&files, dtype, &device)?;
//! let varmap = candle_nn::VarMap::new();
//! let lora = LoraConfig { rank: 16, alpha: 32.0, dropout: 0.05, rslora: false,
//!     targets: parse_targets("q_proj,k_proj,v_proj,o_proj")?, seed: 1 };
//! model.attach_lora(&lora, &varmap)?;
//! let tok = load_tokenizer(&files.tokenizer)?;
//! let tcfg = TokenizerConfig::load(files.tokenizer_config.as_deref(), files.chat_template.as_deref())?;
//! let tmpl = ChatTemplate::from_config(&tcfg)?;
//! let enc = encode_chat(&[ChatMessage::new("user", "Hi"), ChatMessage::new("assistant", "Hello")], &tmpl, &tok)?;
//! let ids = candle_core::Tensor::new(enc.ids.as_slice(), &device)?.unsqueeze(0)?;
//! let mut opts = ForwardOpts::default();
//! opts.mode.dropout_seed = Some(1234); // per step/micro-batch: deterministic dropout
//! let hidden = model.hidden(&ids, &opts)?;          // [1, s, h]
//! let logits = model.logits(&hidden)?;              // select loss positions first on big vocabs
//! # let loss = logits.sum_all()?;
//! let grads = loss.backward()?;
//! check_gradients(&grads, &model.lora_params())?;   // first step: fail loudly
//! let tensors: Vec<_> = model.lora_params().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
//! peft::save_adapter("out".as_ref(), &peft::AdapterConfig::from_lora(&lora, Some("org/name")), &tensors)?;
//! # Ok(()) }
//! ```

pub mod attention;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod constrain;
pub mod device;
// Tiny models, tokenizers and test tensors: for tests, examples and benchmarks only, kept out of release
// builds (the `fixtures` feature, which the dev-dependencies of the test and example targets turn on).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod matmul;
pub mod mlp;
pub mod model;
pub mod ops;
pub mod peft;
pub mod pretrained;
pub mod quant;
pub mod rng;
pub mod runtime;
pub mod source;
pub mod tensors;
pub mod vnni;

pub use chat::{ChatMessage, ChatTemplate, EncodedChat, TokenizerConfig, encode_chat};
pub use config::{Arch, ModelConfig};
pub use gguf::GgufFile;
pub use lora::{LoraConfig, check_gradient_list, check_gradients, parse_targets};
pub use model::{CausalLm, ForwardOpts, packed_row};
pub use pretrained::Pretrained;
pub use source::{HubOptions, ModelFiles, ModelSource, resolve};

/// Load `tokenizer.json`, or rebuild the tokenizer of a `.gguf` file ([`GgufFile::tokenizer`]).
pub fn load_tokenizer(path: &std::path::Path) -> anyhow::Result<tokenizers::Tokenizer> {
    if gguf::is_gguf(path) {
        return GgufFile::open(path)?.tokenizer();
    }
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}
