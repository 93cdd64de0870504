//! The bridge to `ftkit-model`: loading, chat template, LoRA, adapter files.

use crate::Args;
use crate::batch::Batch;
use crate::data::Message;
use crate::train::TrainModel;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use ftkit_model::chat::{ChatMessage, ChatTemplate, TokenizerConfig, encode_chat};
use ftkit_model::device::{DTypeSpec, DeviceSpec, open_device, resolve_dtype};
use ftkit_model::lora::{ForwardMode, LoraConfig, parse_targets};
use ftkit_model::model::{CausalLm, ForwardOpts};
use ftkit_model::peft::{AdapterConfig, save_adapter};
use ftkit_model::source::{HubOptions, ModelSource, resolve};
use std::path::Path;
use tokenizers::Tokenizer;

/// A base model with LoRA attached, its tokenizer and chat template.
pub struct Lm {
    model: CausalLm,
    params: Vec<(String, Var)>,
    lora: LoraConfig,
    model_name: String,
    model_sha256: String,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    pad_id: u32,
    device: Device,
    dtype: DType,
    _varmap: VarMap,
}

impl Lm {
    /// Resolves `--model`, opens the device, loads weights (mmap), tokenizer and template, and attaches
    /// LoRA as the flags say (A initialised from `--seed`, B zero).
    pub fn load(args: &Args) -> Result<Self> {
        let device_spec: DeviceSpec = args.device.parse().map_err(usage_of)?;
        let dtype_spec: DTypeSpec = args.dtype.parse().map_err(usage_of)?;
        let targets = parse_targets(&args.target).map_err(usage_of)?;
        let source = ModelSource::parse(&args.model)?;
        let files = resolve(&source, &HubOptions::from_env(args.offline))?;
        let model_sha256 = files.digest()?;
        let quiet = args.run.quiet;
        let device = open_device(device_spec, &mut |m: &str| {
            if !quiet {
                ftkit_core::cli::warn(m);
            }
        })?;
        let dtype = resolve_dtype(dtype_spec, &device);
        let mut model = CausalLm::from_files(&files, dtype, &device)?;
        let hidden = model.config.hidden_size;
        if args.rank > hidden {
            // A rank above the hidden size adds parameters and no expressiveness (and PEFT refuses it).
            return Err(anyhow::Error::new(ftkit_core::Usage(format!(
                "--rank {} is above the model's hidden size {hidden}",
                args.rank
            ))));
        }
        let tokenizer = ftkit_model::load_tokenizer(&files.tokenizer)?;
        let tok_cfg = TokenizerConfig::load(
            files.tokenizer_config.as_deref(),
            files.chat_template.as_deref(),
        )?;
        let template = ChatTemplate::from_config(&tok_cfg)
            .with_context(|| format!("{}: chat template", args.model))?;
        let pad_id = [&tok_cfg.pad_token, &tok_cfg.eos_token]
            .into_iter()
            .flatten()
            .find_map(|t| tokenizer.token_to_id(t))
            .unwrap_or(0);
        let lora = LoraConfig {
            rank: args.rank,
            alpha: args.alpha,
            dropout: args.dropout as f32,
            rslora: args.rslora,
            targets,
            seed: args.seed,
        };
        let varmap = VarMap::new();
        model.attach_lora(&lora, &varmap)?;
        let params = model.lora_params();
        Ok(Self {
            model,
            params,
            lora,
            model_name: args.model.clone(),
            model_sha256,
            tokenizer,
            template,
            pad_id,
            device,
            dtype,
            _varmap: varmap,
        })
    }

    /// Token ids of a conversation rendered with the model's chat template, and per token whether it
    /// belongs to an assistant reply.
    pub fn encode(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        let e = encode_chat(&msgs, &self.template, &self.tokenizer)?;
        Ok((e.ids, e.assistant_mask))
    }

    /// SHA-256 over the model's files (see `ModelFiles::digest`).
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn architecture(&self) -> String {
        format!("{:?}", self.model.arch()).to_lowercase()
    }

    pub fn device_name(&self) -> String {
        match &self.device {
            Device::Cpu => "cpu".into(),
            d => format!("{:?}", d.location()).to_lowercase(),
        }
    }

    pub fn dtype_name(&self) -> String {
        self.dtype.as_str().to_string()
    }

    pub fn trainable_parameters(&self) -> u64 {
        self.params.iter().map(|(_, v)| v.elem_count() as u64).sum()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

fn usage_of(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(ftkit_core::Usage(format!("{e:#}")))
}

impl TrainModel for Lm {
    fn features(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
        let d = &self.device;
        let shape = (batch.rows, batch.len);
        let ids = Tensor::from_slice(&batch.ids, shape, d)?;
        let (segment_ids, position_ids) = if batch.packed {
            (
                Some(Tensor::from_slice(&batch.segment, shape, d)?),
                Some(Tensor::from_slice(&batch.position, shape, d)?),
            )
        } else {
            (None, None)
        };
        let opts = ForwardOpts {
            segment_ids,
            position_ids,
            mode: ForwardMode { dropout_seed },
        };
        let hidden = self.model.hidden(&ids, &opts)?;
        let h = hidden.dim(2)?;
        let select = Tensor::from_slice(&batch.select, batch.select.len(), d)?;
        Ok(hidden
            .reshape((batch.rows * batch.len, h))?
            .index_select(&select, 0)?)
    }

    fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.model.logits(features)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.params.clone()
    }

    fn save_adapter(&self, dir: &Path) -> Result<()> {
        let config = AdapterConfig::from_lora(&self.lora, Some(&self.model_name));
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        save_adapter(dir, &config, &tensors)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
