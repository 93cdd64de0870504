//! A model as the tools name it (`--model DIR|FILE.gguf|ORG/NAME[@REV]`), loaded with everything a
//! tool needs around the weights: tokenizer, tokenizer config, chat template, and the files' digest.
//! ft-train-lora and the local generation backend load through here, so a model means the same
//! thing to both.

use crate::chat::{ChatTemplate, TokenizerConfig};
use crate::model::CausalLm;
use crate::source::{HubOptions, ModelFiles, ModelSource, resolve};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use tokenizers::Tokenizer;

pub struct Pretrained {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub tokenizer_config: TokenizerConfig,
    pub template: ChatTemplate,
    pub files: ModelFiles,
    /// SHA-256 over the model's files ([`ModelFiles::digest`]): its identity wherever it lies.
    pub sha256: String,
}

impl Pretrained {
    /// Resolves `spec` (a folder, a `.gguf` file or a hub id) and loads weights (mmap; a GGUF's
    /// dequantized into `dtype`), tokenizer and chat template.
    pub fn load(spec: &str, hub: &HubOptions, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(spec, hub, dtype, device, None)
    }

    /// [`Self::load`] with the frozen matrices quantized as `quantize` says (QLoRA; see
    /// [`CausalLm::load_with`]).
    pub fn load_with(
        spec: &str,
        hub: &HubOptions,
        dtype: DType,
        device: &Device,
        quantize: Option<crate::quant::BaseQuant>,
    ) -> Result<Self> {
        let source = ModelSource::parse(spec)?;
        let files = resolve(&source, hub)?;
        let sha256 = files.digest()?;
        let model = CausalLm::from_files_with(&files, dtype, device, quantize)?;
        let tokenizer = crate::load_tokenizer(&files.tokenizer)?;
        let tokenizer_config = TokenizerConfig::load(
            files.tokenizer_config.as_deref(),
            files.chat_template.as_deref(),
        )?;
        let template = ChatTemplate::from_config(&tokenizer_config)
            .with_context(|| format!("{spec}: chat template"))?;
        Ok(Self {
            model,
            tokenizer,
            tokenizer_config,
            template,
            files,
            sha256,
        })
    }

    /// The padding id: the tokenizer config's pad token, else its eos token, else 0 (padded
    /// positions are masked, so any id works; these keep the tensors readable).
    pub fn pad_id(&self) -> u32 {
        let cfg = &self.tokenizer_config;
        [&cfg.pad_token, &cfg.eos_token]
            .into_iter()
            .flatten()
            .find_map(|t| self.tokenizer.token_to_id(t))
            .unwrap_or(0)
    }

    /// Keeps the quantized blocks of a GGUF's linear weights for inference
    /// ([`CausalLm::quantize_for_inference`]): generation then reads the blocks, as llama.cpp does,
    /// not their f32 copies. Nothing for safetensors models or dtypes other than F32. Returns the
    /// number of layers that got them.
    pub fn quantize_for_inference(&mut self) -> Result<usize> {
        match &self.files.gguf {
            Some(path) if self.model.dtype() == DType::F32 => {
                let file = crate::gguf::GgufFile::open(path)?;
                let blocks = file.qtensors(self.model.device())?;
                self.model.quantize_for_inference(blocks)
            }
            _ => Ok(0),
        }
    }

    /// Token ids that end a reply ([`crate::generate::default_eos_ids`]).
    pub fn eos_ids(&self) -> Vec<u32> {
        crate::generate::default_eos_ids(&self.model, &self.tokenizer, Some(&self.tokenizer_config))
    }
}
