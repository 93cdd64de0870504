//! `config.json` of a Hugging Face causal LM, reduced to what our forward needs.

use anyhow::{Context, Result, bail};
use candle_nn::Activation;
use candle_transformers::models::llama::{Llama3RopeConfig, Llama3RopeType, LlamaEosToks};
use serde::Deserialize;
use std::path::Path;

/// Supported architecture families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 / Qwen2.5 (`model_type: "qwen2"`): q/k/v projections carry a bias.
    Qwen2,
    /// Llama 2/3, SmolLM, Mistral-style (`model_type: "llama" | "mistral"`).
    Llama,
}

impl Arch {
    /// The `model_type` string written to `config.json` for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IdOrIds {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<Activation>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    rope_scaling: Option<serde_json::Value>,
    bos_token_id: Option<IdOrIds>,
    eos_token_id: Option<IdOrIds>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// The model hyper-parameters, common to every supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub hidden_act: Activation,
    /// Bias on q/k/v projections (always true for qwen2).
    pub attention_bias: bool,
    /// Llama-3 style rope scaling (`rope_type: "llama3"`), the only scaling supported.
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Qwen2 fields kept for the stock candle config.
    pub sliding_window: usize,
    pub max_window_layers: usize,
    pub use_sliding_window: bool,
}

/// Llama-3 rope frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

impl ModelConfig {
    /// Parse `config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).with_context(|| format!("{origin}: invalid config"))?;
        let model_type = raw.model_type.clone().unwrap_or_else(|| {
            raw.architectures
                .first()
                .map(|a| a.to_lowercase())
                .unwrap_or_default()
        });
        let arch = match model_type.as_str() {
            "qwen2" | "qwen2forcausallm" => Arch::Qwen2,
            "llama" | "mistral" | "llamaforcausallm" | "mistralforcausallm" => Arch::Llama,
            other => bail!(
                "{origin}: unsupported model_type {other:?} (supported: qwen2, llama, mistral)"
            ),
        };
        if raw.mlp_bias == Some(true) {
            bail!("{origin}: mlp_bias = true is not supported");
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            bail!("{origin}: hidden_size must be a multiple of num_attention_heads");
        }
        let kv = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if kv == 0 || !raw.num_attention_heads.is_multiple_of(kv) {
            bail!("{origin}: num_attention_heads must be a multiple of num_key_value_heads");
        }
        let rope_scaling = match &raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            v.get(k)
                                .and_then(|x| x.as_f64())
                                .with_context(|| format!("{origin}: rope_scaling.{k} missing"))
                        };
                        Some(Llama3RopeScaling {
                            factor: f("factor")? as f32,
                            low_freq_factor: f("low_freq_factor")? as f32,
                            high_freq_factor: f("high_freq_factor")? as f32,
                            original_max_position_embeddings: f("original_max_position_embeddings")?
                                as usize,
                        })
                    }
                    other => bail!("{origin}: unsupported rope_scaling type {other:?}"),
                }
            }
        };
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let ids = |v: &Option<IdOrIds>| match v {
            None => vec![],
            Some(IdOrIds::One(i)) => vec![*i],
            Some(IdOrIds::Many(v)) => v.clone(),
        };
        Ok(Self {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            hidden_act: raw.hidden_act.unwrap_or(Activation::Silu),
            attention_bias: match arch {
                Arch::Qwen2 => true,
                Arch::Llama => raw.attention_bias.unwrap_or(false),
            },
            rope_scaling,
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            sliding_window: raw
                .sliding_window
                .unwrap_or(raw.max_position_embeddings.unwrap_or(4096)),
            max_window_layers: raw.max_window_layers.unwrap_or(raw.num_hidden_layers),
            use_sliding_window: raw.use_sliding_window.unwrap_or(false),
        })
    }

    /// Read and parse a `config.json` file, or the `<arch>.*` keys of a `.gguf` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            return crate::gguf::GgufFile::open(path)?.config();
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The stock candle-transformers Qwen2 config (for parity checks and inference).
    pub fn to_qwen2(&self) -> candle_transformers::models::qwen2::Config {
        candle_transformers::models::qwen2::Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            max_position_embeddings: self.max_position_embeddings,
            sliding_window: self.sliding_window,
            max_window_layers: self.max_window_layers,
            tie_word_embeddings: self.tie_word_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            use_sliding_window: self.use_sliding_window,
            hidden_act: self.hidden_act,
        }
    }

    /// The stock candle-transformers Llama config (for parity checks and inference).
    pub fn to_llama(&self) -> candle_transformers::models::llama::Config {
        candle_transformers::models::llama::Config {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            use_flash_attn: false,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta as f32,
            bos_token_id: self.bos_token_id,
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(LlamaEosToks::Single(*one)),
                many => Some(LlamaEosToks::Multiple(many.to_vec())),
            },
            rope_scaling: self.rope_scaling.map(|s| Llama3RopeConfig {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor,
                high_freq_factor: s.high_freq_factor,
                original_max_position_embeddings: s.original_max_position_embeddings,
                rope_type: Llama3RopeType::Llama3,
            }),
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        }
    }

    /// Rope inverse frequencies (`head_dim / 2` values), with llama3 scaling when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d)
            .step_by(2)
            .map(|i| match self.arch {
                // Mirror each stock implementation's rounding so f32 logits agree.
                Arch::Qwen2 => 1f32 / self.rope_theta.powf(i as f64 / d as f64) as f32,
                Arch::Llama => 1f32 / (self.rope_theta as f32).powf(i as f32 / d as f32),
            })
            .collect();
        match self.rope_scaling {
            None => base,
            Some(s) => {
                let low = s.original_max_position_embeddings as f32 / s.low_freq_factor;
                let high = s.original_max_position_embeddings as f32 / s.high_freq_factor;
                base.into_iter()
                    .map(|freq| {
                        let wavelen = 2. * std::f32::consts::PI / freq;
                        if wavelen < high {
                            freq
                        } else if wavelen > low {
                            freq / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings as f32 / wavelen
                                - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1. - smooth) * freq / s.factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qwen25_config() -> Result<()> {
        // Qwen2.5-0.5B-Instruct's config.json (abridged to the fields that matter).
        let text = r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,
          "bos_token_id":151643,"eos_token_id":151645,"hidden_act":"silu","hidden_size":896,
          "initializer_range":0.02,"intermediate_size":4864,"max_position_embeddings":32768,
          "max_window_layers":21,"model_type":"qwen2","num_attention_heads":14,
          "num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,
          "rope_theta":1000000.0,"sliding_window":32768,"tie_word_embeddings":true,
          "torch_dtype":"bfloat16","use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;
        let c = ModelConfig::from_json(text, "config.json")?;
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.num_key_value_heads, 2);
        assert!(c.tie_word_embeddings && c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![151645]);
        assert_eq!(c.to_qwen2().sliding_window, 32768);
        Ok(())
    }

    #[test]
    fn parses_llama3_config_with_rope_scaling() -> Result<()> {
        let text = r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":128000,
          "eos_token_id":[128001,128008,128009],"hidden_size":2048,"intermediate_size":8192,
          "max_position_embeddings":131072,"model_type":"llama","num_attention_heads":32,
          "num_hidden_layers":16,"num_key_value_heads":8,"rms_norm_eps":1e-05,
          "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
          "original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,
          "tie_word_embeddings":true,"vocab_size":128256}"#;
        let c = ModelConfig::from_json(text, "config.json")?;
        assert_eq!(c.arch, Arch::Llama);
        assert!(!c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(c.rope_scaling.map(|s| s.factor), Some(32.0));
        let inv = c.rope_inv_freq();
        assert_eq!(inv.len(), 32);
        // Highest frequency unscaled, lowest divided by the factor.
        assert_eq!(inv[0], 1.0);
        let unscaled = 1f32 / 500000f32.powf(62.0 / 64.0);
        assert!((inv[31] - unscaled / 32.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn rejects_unknown_arch_naming_the_file() {
        let err = ModelConfig::from_json(
            r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":4,"intermediate_size":4,
            "num_hidden_layers":1,"num_attention_heads":1,"rms_norm_eps":1e-5}"#,
            "m/config.json",
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.contains("m/config.json") && err.contains("gpt2"),
            "{err}"
        );
    }
}
