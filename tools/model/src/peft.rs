//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` (F32, metadata
//! `{"format":"pt"}`, keys `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
//! `[r, in]` and `...lora_B.weight` `[out, r]`), readable by PEFT's `PeftModel.from_pretrained`.

use crate::lora::LoraConfig;
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn default_alpha() -> f64 {
    8.0
}

fn default_bias() -> String {
    "none".into()
}

/// `adapter_config.json` (fields PEFT needs to load a LoRA adapter; unknown fields are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    /// PEFT's default when missing is 8.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `target_modules`: a list of names, or a regex string in PEFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl AdapterConfig {
    /// The config PEFT would write for `cfg` on `base_model`.
    pub fn from_lora(cfg: &LoraConfig, base_model: Option<&str>) -> Self {
        let mut targets = cfg.targets.clone();
        targets.sort();
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            lora_dropout: f64::from(cfg.dropout),
            target_modules: TargetModules::List(targets),
            use_rslora: cfg.rslora,
            bias: "none".into(),
            base_model_name_or_path: base_model.map(str::to_string),
            fan_in_fan_out: false,
            inference_mode: true,
            other: BTreeMap::new(),
        }
    }

    /// `alpha / r` (rsLoRA: `alpha / √r`).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// Write the adapter files into `dir` (created), each atomically (temp file + rename).
/// `tensors` are `(peft_key, tensor)`; they are written as F32, sorted by key.
pub fn save_adapter(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut sorted: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        sorted.push((
            k.clone(),
            t.dims().to_vec(),
            t.flatten_all()?.to_vec1::<f32>()?,
        ));
    }
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = dir.join(WEIGHTS_FILE);
    ftkit_core::io::write_atomic(&weights, &f32_safetensors(&sorted)?)?;
    let json = serde_json::to_string_pretty(&serde_json::to_value(config)?)? + "\n";
    ftkit_core::io::write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
    Ok(())
}

/// A safetensors file of F32 tensors (in the given order) with PEFT's `{"format":"pt"}` metadata.
pub(crate) fn f32_safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.as_str(),
                &s[..],
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                .map(|v| (*n, v))
                .map_err(|e| anyhow!("{n}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| anyhow!("serialising: {e}"))
}

/// A loaded adapter: config and tensors by PEFT key (F32 on `device`).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub tensors: HashMap<String, Tensor>,
}

/// Read `adapter_config.json` and `adapter_model.safetensors` from `dir`. Keys written with an
/// adapter name (`lora_A.default.weight`) are normalised to PEFT's saved form.
pub fn load_adapter(dir: &Path, device: &Device) -> Result<Adapter> {
    let cpath = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cpath)
        .with_context(|| format!("cannot read {}", cpath.display()))?;
    let config: AdapterConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid adapter config", cpath.display()))?;
    if config.peft_type != "LORA" {
        bail!(
            "{}: peft_type {:?} is not LORA",
            cpath.display(),
            config.peft_type
        );
    }
    let wpath = dir.join(WEIGHTS_FILE);
    let raw = candle_core::safetensors::load(&wpath, device)
        .with_context(|| format!("cannot read {}", wpath.display()))?;
    let mut tensors = HashMap::new();
    for (k, t) in raw {
        let key = k
            .replace(".lora_A.default.weight", ".lora_A.weight")
            .replace(".lora_B.default.weight", ".lora_B.weight");
        if !key.ends_with(".lora_A.weight") && !key.ends_with(".lora_B.weight") {
            bail!(
                "{}: unsupported tensor {k} (only lora_A/lora_B of linear layers)",
                wpath.display()
            );
        }
        tensors.insert(key, t.to_dtype(DType::F32)?);
    }
    Ok(Adapter { config, tensors })
}

impl Adapter {
    /// The `(A, B)` pair for a module path such as `model.layers.0.self_attn.q_proj`.
    pub fn pair(&self, module: &str) -> Option<(&Tensor, &Tensor)> {
        let p = format!("base_model.model.{module}");
        Some((
            self.tensors.get(&format!("{p}.lora_A.weight"))?,
            self.tensors.get(&format!("{p}.lora_B.weight"))?,
        ))
    }

    /// Module paths that carry an adapter, sorted.
    pub fn modules(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| {
                k.strip_suffix(".lora_A.weight")
                    .and_then(|p| p.strip_prefix("base_model.model."))
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }
}

/// `W + scale · B @ A` in F32, returned in `w`'s dtype.
pub fn merge_weight(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if a_in != inp || b_out != out || b_r != r {
        bail!(
            "adapter shapes A {:?} B {:?} do not fit weight {:?}",
            a.dims(),
            b.dims(),
            w.dims()
        );
    }
    let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale)?;
    Ok((w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?)
}

/// Merge an adapter into HF-named base weights (`<module>.weight`), in place.
/// Every adapter module must exist in `weights`.
pub fn merge_into(weights: &mut HashMap<String, Tensor>, adapter: &Adapter) -> Result<usize> {
    let scale = adapter.config.scale();
    let mut n = 0;
    for m in adapter.modules() {
        let (a, b) = adapter
            .pair(&m)
            .ok_or_else(|| anyhow!("adapter has lora_A but no lora_B for {m}"))?;
        let key = format!("{m}.weight");
        let w = weights
            .get(&key)
            .ok_or_else(|| anyhow!("base model has no weight {key}"))?;
        let merged = merge_weight(w, a, b, scale).with_context(|| key.clone())?;
        weights.insert(key, merged);
        n += 1;
    }
    Ok(n)
}
