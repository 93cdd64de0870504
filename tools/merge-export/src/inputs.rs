//! The base model and the adapter, loaded once: config, tokenizer, tokenizer config, digests, and
//! the weights one tensor at a time ([`Inputs::merged`]).

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use ftkit_model::peft::{self, Adapter};
use ftkit_model::tensors::ModelTensors;
use ftkit_model::{HubOptions, ModelConfig, ModelFiles, ModelSource, TokenizerConfig, resolve};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub struct LoadedAdapter {
    pub dir: PathBuf,
    pub adapter: Adapter,
    /// SHA-256 over the adapter's two files.
    pub digest: String,
}

pub struct Inputs {
    pub files: ModelFiles,
    pub cfg: ModelConfig,
    pub tokenizer: Tokenizer,
    pub tokenizer_config: TokenizerConfig,
    pub tensors: ModelTensors,
    /// HF names of the base's tensors, sorted.
    pub names: Vec<String>,
    pub adapter: Option<LoadedAdapter>,
}

impl Inputs {
    pub fn load(base: &str, adapter: Option<&Path>, offline: bool) -> Result<Self> {
        let files = resolve(&ModelSource::parse(base)?, &HubOptions::from_env(offline))?;
        let cfg = ModelConfig::from_file(&files.config)?;
        let tokenizer = ftkit_model::load_tokenizer(&files.tokenizer)?;
        let tokenizer_config = TokenizerConfig::load(
            files.tokenizer_config.as_deref(),
            files.chat_template.as_deref(),
        )?;
        let tensors = ModelTensors::open(&files)?;
        let names = tensors.names();
        let adapter = adapter.map(|dir| load_adapter(dir, &names)).transpose()?;
        Ok(Self {
            files,
            cfg,
            tokenizer,
            tokenizer_config,
            tensors,
            names,
            adapter,
        })
    }

    /// Every file the base and the adapter are read from.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let f = &self.files;
        let mut v: Vec<PathBuf> = [&f.config, &f.tokenizer]
            .into_iter()
            .chain(&f.tokenizer_config)
            .chain(&f.chat_template)
            .chain(&f.weights)
            .cloned()
            .collect();
        if let Some(a) = &self.adapter {
            v.extend([
                a.dir.join(peft::CONFIG_FILE),
                a.dir.join(peft::WEIGHTS_FILE),
            ]);
        }
        v
    }

    /// Whether encoding prepends the BOS token (llama.cpp's `add_bos_token`): a template that
    /// writes it itself must then not have it in Ollama's TEMPLATE too.
    pub fn adds_bos(&self) -> bool {
        self.tokenizer_config
            .bos_token
            .as_deref()
            .and_then(|b| self.tokenizer.token_to_id(b))
            .and_then(|b| ftkit_model::gguf::metadata::adds_bos(&self.tokenizer, b).ok())
            .unwrap_or(false)
    }

    /// Base tensor `name` in F32 (HF row order), with the adapter merged into it when it adapts
    /// that layer and `merge` is set: `W + scale · B @ A` in F32.
    pub fn merged(&self, name: &str, merge: bool) -> Result<Tensor> {
        let w = self.tensors.get(name)?;
        let Some(a) = self.adapter.as_ref().filter(|_| merge) else {
            return Ok(w);
        };
        match name.strip_suffix(".weight").and_then(|m| a.adapter.pair(m)) {
            Some((la, lb)) => peft::merge_weight(&w, la, lb, a.adapter.config.scale())
                .with_context(|| format!("merging the adapter into {name}")),
            None => Ok(w),
        }
    }
}

fn load_adapter(dir: &Path, base_names: &[String]) -> Result<LoadedAdapter> {
    let adapter = peft::load_adapter(dir, &Device::Cpu)?;
    if adapter.config.bias != "none" {
        bail!(
            "{}: bias = {:?} adapters are not supported (only bias = \"none\")",
            dir.display(),
            adapter.config.bias
        );
    }
    let unknown: Vec<String> = adapter
        .modules()
        .into_iter()
        .filter(|m| base_names.binary_search(&format!("{m}.weight")).is_err())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{}: the base model has no layer {} (wrong base model?)",
            dir.display(),
            unknown.join(", ")
        );
    }
    for m in adapter.modules() {
        adapter
            .pair(&m)
            .ok_or_else(|| anyhow!("{}: {m} has lora_A but no lora_B", dir.display()))?;
    }
    let mut lines = String::new();
    for f in [peft::CONFIG_FILE, peft::WEIGHTS_FILE] {
        lines += &format!("{f}\t{}\n", ftkit_core::id::sha256_file(&dir.join(f))?);
    }
    Ok(LoadedAdapter {
        dir: dir.to_path_buf(),
        adapter,
        digest: ftkit_core::id::sha256_hex(lines.as_bytes()),
    })
}
