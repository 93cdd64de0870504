//! Tests only: convert a tiny safetensors model (from `fixtures::write_tiny_model`) to GGUF the way
//! llama.cpp's convert_hf_to_gguf.py does, so the GGUF loader can be checked against the
//! safetensors one. The q/k permutation here is the converter's reshape/swap-axes, written with
//! tensor ops, independent of the loader's row arithmetic.

use crate::config::{Arch, ModelConfig};
use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// llama.cpp's `LlamaModel.permute`: `[heads, 2, hd/2, in]` with axes 1 and 2 swapped.
pub fn llama_permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, 2, rows / heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// Write `out` (GGUF) from the model directory `dir`: 2-D weights as `qtype`, norms and biases as
/// F32 (as llama.cpp keeps them), tokenizer keys with `tokenizer.ggml.pre = pre` (default: what the
/// fixture's pre-tokenizer is: `gpt-2` for llama, `qwen2` for qwen2).
pub fn write_tiny_gguf(dir: &Path, out: &Path, qtype: GgmlDType, pre: Option<&str>) -> Result<()> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let tok = crate::load_tokenizer(&dir.join("tokenizer.json"))?;
    let tcfg = crate::TokenizerConfig::load(Some(&dir.join("tokenizer_config.json")), None)?;
    // The keys ft-merge-export writes (checked against llama.cpp's converter and llama.cpp itself,
    // scripts/check-export), with `tokenizer.ggml.pre` forced when asked.
    let mut meta = super::metadata::model_metadata(&cfg, "tiny", 0)?;
    for (k, v) in super::metadata::tokenizer_metadata(&tok, &tcfg, &cfg)? {
        let v = match (k.as_str(), pre) {
            ("tokenizer.ggml.pre", Some(p)) => Value::String(p.to_string()),
            _ => v,
        };
        meta.push((k, v));
    }

    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .context("tiny model weights")?;
    let mut names: Vec<&String> = st.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let g = super::gguf_name(name).with_context(|| format!("no GGUF name for {name}"))?;
        let mut w = st[name].to_dtype(DType::F32)?;
        if cfg.arch == Arch::Llama {
            if name.contains(".self_attn.q_proj.") {
                w = llama_permute(&w, cfg.num_attention_heads)?;
            } else if name.contains(".self_attn.k_proj.") {
                w = llama_permute(&w, cfg.num_key_value_heads)?;
            }
        }
        let ty = if w.rank() == 2 { qtype } else { GgmlDType::F32 };
        tensors.push((g, QTensor::quantize(&w, ty)?));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}
