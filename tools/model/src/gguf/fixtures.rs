//! Tests only: convert a tiny safetensors model (from `fixtures::write_tiny_model`) to GGUF the way
//! llama.cpp's convert_hf_to_gguf.py does, so the GGUF loader can be checked against the
//! safetensors one. The q/k permutation here is the converter's reshape/swap-axes, written with
//! tensor ops, independent of the loader's row arithmetic.

use crate::config::{Arch, ModelConfig};
use anyhow::{Context, Result, anyhow};
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
/// fixture's pre-tokenizer is: `gpt2` for llama, `qwen2` for qwen2).
pub fn write_tiny_gguf(dir: &Path, out: &Path, qtype: GgmlDType, pre: Option<&str>) -> Result<()> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let a = cfg.arch.model_type();
    let tok_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)?;
    let tok = crate::load_tokenizer(&dir.join("tokenizer.json"))?;
    let tcfg = crate::TokenizerConfig::load(Some(&dir.join("tokenizer_config.json")), None)?;

    let n = tok.get_vocab_size(true);
    let mut tokens = vec![String::new(); n];
    for (t, id) in tok.get_vocab(true) {
        tokens[id as usize] = t;
    }
    let added = tok.get_added_tokens_decoder();
    let types: Vec<Value> = (0..n as u32)
        .map(|id| {
            Value::I32(match added.get(&id) {
                Some(t) if t.special => 3,
                Some(_) => 4,
                None => 1,
            })
        })
        .collect();
    let merges: Vec<Value> = tok_json["model"]["merges"]
        .as_array()
        .context("tokenizer.json: no model.merges")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::String(s.clone())),
            serde_json::Value::Array(p) => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            _ => Err(anyhow!("tokenizer.json: bad merge {m}")),
        })
        .collect::<Result<_>>()?;
    let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_to_id(t));
    let u = |x: usize| Value::U32(x as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            format!("{a}.context_length"),
            u(cfg.max_position_embeddings),
        ),
        (format!("{a}.embedding_length"), u(cfg.hidden_size)),
        (format!("{a}.block_count"), u(cfg.num_hidden_layers)),
        (format!("{a}.feed_forward_length"), u(cfg.intermediate_size)),
        (
            format!("{a}.attention.head_count"),
            u(cfg.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(cfg.num_key_value_heads),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(
                pre.unwrap_or(match cfg.arch {
                    Arch::Llama => "gpt-2",
                    Arch::Qwen2 => "qwen2",
                })
                .into(),
            ),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    for (key, t) in [
        ("bos_token_id", &tcfg.bos_token),
        ("eos_token_id", &tcfg.eos_token),
        ("padding_token_id", &tcfg.pad_token),
    ] {
        if let Some(i) = id(t) {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(i)));
        }
    }
    if let Some(t) = &tcfg.chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
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
