//! The bridge to `ftkit-model`: loading, chat template, LoRA, adapter files.

use crate::Args;
use crate::batch::Batch;
use crate::data::Message;
use crate::train::TrainModel;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use ftkit_core::Usage;
use ftkit_model::Pretrained;
use ftkit_model::chat::{ChatMessage, ChatTemplate, encode_chat};
use ftkit_model::device::{DTypeSpec, DeviceSpec, open_device, resolve_dtype};
use ftkit_model::lora::{ForwardMode, LoraConfig, parse_targets};
use ftkit_model::model::{CausalLm, ForwardOpts};
use ftkit_model::peft::{AdapterConfig, load_adapter, save_adapter};
use ftkit_model::quant::BaseQuant;
use ftkit_model::source::HubOptions;
use std::path::Path;
use tokenizers::Tokenizer;

/// How the base model's frozen matrices are held (`training_report.json`'s `base_weights`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseWeights {
    /// `--quantize` (`nf4+dq` with `--double-quant`), `null` without.
    pub quantize: Option<String>,
    #[serde(flatten)]
    pub matrices: ftkit_model::model::FrozenMatrices,
}

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
    /// `--gradient-checkpointing`.
    checkpoint: bool,
    _varmap: VarMap,
}

impl Lm {
    /// Resolves `--model`, opens the device, loads weights (mmap), tokenizer and template, and attaches
    /// LoRA: the `--adapter` folder's when given (evaluation), else a new one as the flags say (A
    /// initialised from `--seed`, B zero).
    pub fn load(args: &Args) -> Result<Self> {
        let device_spec: DeviceSpec = args.device.parse().map_err(Usage::of)?;
        let dtype_spec: DTypeSpec = args.dtype.parse().map_err(Usage::of)?;
        let targets = parse_targets(&args.target).map_err(Usage::of)?;
        let quiet = args.run.quiet;
        let device = open_device(device_spec, &mut |m: &str| {
            if !quiet {
                ftkit_core::cli::warn(m);
            }
        })?;
        let dtype = resolve_dtype(dtype_spec, &device);
        let hub = HubOptions::from_env(args.offline);
        let lm = Pretrained::load_with(&args.model, &hub, dtype, &device, args.base_quant())?;
        let pad_id = lm.pad_id();
        let Pretrained {
            mut model,
            tokenizer,
            template,
            sha256: model_sha256,
            ..
        } = lm;
        let hidden = model.config.hidden_size;
        if args.rank > hidden {
            // A rank above the hidden size adds parameters and no expressiveness (and PEFT refuses it).
            return Err(anyhow::Error::new(Usage(format!(
                "--rank {} is above the model's hidden size {hidden}",
                args.rank
            ))));
        }
        let lora = LoraConfig {
            rank: args.rank,
            alpha: args.alpha,
            dropout: args.dropout as f32,
            rslora: args.rslora,
            targets,
            seed: args.seed,
        };
        let varmap = VarMap::new();
        match &args.adapter {
            Some(dir) => {
                let adapter = load_adapter(dir, &device)?;
                model
                    .attach_adapter(&adapter, &varmap)
                    .with_context(|| format!("--adapter {}", dir.display()))?;
            }
            None => {
                model.attach_lora(&lora, &varmap)?;
            }
        }
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
            checkpoint: args.gradient_checkpointing,
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

    /// The frozen matrices' size and formats, with `--quantize`'s name.
    pub fn base_weights(&self, quantize: Option<BaseQuant>) -> BaseWeights {
        BaseWeights {
            quantize: quantize.map(|q| q.name().to_string()),
            matrices: self.model.frozen_matrices(),
        }
    }

    pub fn trainable_parameters(&self) -> u64 {
        self.params.iter().map(|(_, v)| v.elem_count() as u64).sum()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
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
            // Training passes a dropout seed, evaluation none (and needs no backward).
            checkpoint: self.checkpoint && dropout_seed.is_some(),
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
