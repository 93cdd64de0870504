//! The bridge to `ftkit-model`: loading, chat template, LoRA, adapter files.
//!
//! TODO(model): provisional until ftkit-model lands; `Lm::load` fails with a clear message.

use crate::Args;
use crate::batch::Batch;
use crate::data::Message;
use crate::train::TrainModel;
use anyhow::{Result, bail};
use candle_core::{Device, Tensor, Var};
use std::path::Path;

/// A base model with LoRA applied, its tokenizer and chat template.
pub struct Lm {
    device: Device,
}

impl Lm {
    pub fn load(args: &Args) -> Result<Self> {
        bail!(
            "{}: model loading is not available in this build yet",
            args.model
        )
    }
    pub fn encode(&self, _messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        bail!("no tokenizer")
    }
    pub fn pad_id(&self) -> u32 {
        0
    }
    pub fn architecture(&self) -> String {
        String::new()
    }
    pub fn device_name(&self) -> String {
        format!("{:?}", self.device)
    }
    pub fn dtype_name(&self) -> String {
        String::new()
    }
    pub fn trainable_parameters(&self) -> u64 {
        0
    }
}

impl TrainModel for Lm {
    fn logits(&self, _batch: &Batch, _dropout_seed: Option<u64>) -> Result<Tensor> {
        bail!("no model")
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
    fn save_adapter(&self, _dir: &Path) -> Result<()> {
        bail!("no model")
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
