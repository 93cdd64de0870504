//! The HF model folder: merged weights as safetensors (sharded above --shard-size, with
//! `model.safetensors.index.json`), `config.json`, the tokenizer files and a
//! `generation_config.json` whose `eos_token_id` lists every id that ends a reply.
//!
//! Shards are serialised by the safetensors crate, so one shard's tensors are in memory at a time.

use crate::inputs::Inputs;
use crate::{Dtype, Written};
use anyhow::{Context, Result, anyhow};
use candle_core::Tensor;
use ftkit_core::io::write_atomic;
use ftkit_model::config::Arch;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

fn st_dtype(d: Dtype) -> safetensors::Dtype {
    match d {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::Bf16 => safetensors::Dtype::BF16,
        Dtype::F16 => safetensors::Dtype::F16,
    }
}

fn bytes(t: &Tensor, d: Dtype) -> Result<Vec<u8>> {
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    let t = t.to_dtype(d.candle())?.flatten_all()?;
    Ok(match d {
        Dtype::F32 => le(t.to_vec1::<f32>()?, f32::to_le_bytes),
        Dtype::Bf16 => le(t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        Dtype::F16 => le(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    write_atomic(path, (serde_json::to_string_pretty(v)? + "\n").as_bytes())
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", path.display()))
}

/// `config.json`: the base's own (its dtype updated) or, for a GGUF base, one built from the
/// hyper-parameters.
fn config_json(inputs: &Inputs, dtype: Dtype) -> Result<Value> {
    let c = &inputs.cfg;
    let mut v = match &inputs.files.gguf {
        None => read_json(&inputs.files.config)?,
        Some(_) => json!({
            "architectures": [match c.arch { Arch::Qwen2 => "Qwen2ForCausalLM", Arch::Llama => "LlamaForCausalLM" }],
            "model_type": c.arch.model_type(),
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_ids.first(),
        }),
    };
    let obj = v.as_object_mut().context("config.json is not an object")?;
    // transformers 4 reads torch_dtype, 5 reads dtype.
    obj.insert("torch_dtype".into(), json!(dtype.name()));
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), json!(dtype.name()));
    }
    Ok(v)
}

fn generation_config(inputs: &Inputs) -> Result<Value> {
    let own = inputs
        .files
        .config
        .parent()
        .map(|d| d.join("generation_config.json"))
        .filter(|p| inputs.files.gguf.is_none() && p.is_file());
    let mut v = match own {
        Some(p) => read_json(&p)?,
        None => json!({}),
    };
    let obj = v
        .as_object_mut()
        .context("generation_config.json is not an object")?;
    let mut ids: Vec<u32> = match obj.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|i| i as u32))
            .collect(),
        _ => vec![],
    };
    let ends = ftkit_model::generate::eos_ids(
        &inputs.cfg,
        &inputs.tokenizer,
        Some(&inputs.tokenizer_config),
    );
    for id in ends {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if let Some(b) = inputs.cfg.bos_token_id {
        obj.entry("bos_token_id").or_insert(json!(b));
    }
    obj.insert(
        "eos_token_id".into(),
        if ids.len() == 1 {
            json!(ids[0])
        } else {
            json!(ids)
        },
    );
    obj.entry("_from_model_config").or_insert(json!(false));
    Ok(v)
}

/// The tokenizer files: the base's own, or for a GGUF base the rebuilt tokenizer and a
/// tokenizer_config.json with its chat template and special tokens.
fn tokenizer_files(inputs: &Inputs, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    if inputs.files.gguf.is_some() {
        let json = inputs
            .tokenizer
            .to_string(true)
            .map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let t = &inputs.tokenizer_config;
        write_json(
            &dir.join("tokenizer_config.json"),
            &json!({
                "bos_token": t.bos_token, "eos_token": t.eos_token, "pad_token": t.pad_token,
                "chat_template": t.chat_template,
                "model_max_length": inputs.cfg.max_position_embeddings,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }),
        )?;
        files.extend(["tokenizer.json".into(), "tokenizer_config.json".into()]);
        return Ok(());
    }
    let src_dir = inputs.files.tokenizer.parent().unwrap_or(Path::new("."));
    let mut copy = |from: &Path, name: &str| -> Result<()> {
        let bytes =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        write_atomic(&dir.join(name), &bytes)?;
        files.push(name.to_string());
        Ok(())
    };
    copy(&inputs.files.tokenizer, "tokenizer.json")?;
    if let Some(p) = &inputs.files.tokenizer_config {
        copy(p, "tokenizer_config.json")?;
    }
    if let Some(p) = &inputs.files.chat_template {
        copy(p, "chat_template.jinja")?;
    }
    for extra in ["special_tokens_map.json", "vocab.json", "merges.txt"] {
        let p = src_dir.join(extra);
        if p.is_file() {
            copy(&p, extra)?;
        }
    }
    Ok(())
}

/// Writes the folder into `dir`.
pub fn write(inputs: &Inputs, dir: &Path, dtype: Dtype, shard_size: u64) -> Result<Written> {
    let mut written = Written::default();
    write_json(&dir.join("config.json"), &config_json(inputs, dtype)?)?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config(inputs)?,
    )?;
    written
        .files
        .extend(["config.json".into(), "generation_config.json".into()]);
    tokenizer_files(inputs, dir, &mut written.files)?;

    // Shards by size in name order; a tensor larger than the limit gets a shard of its own.
    let elem = dtype.candle().size_in_bytes() as u64;
    let mut shards: Vec<Vec<&String>> = vec![vec![]];
    let mut size = 0u64;
    for name in &inputs.names {
        let n: u64 = inputs.tensors.dims(name)?.iter().product::<usize>() as u64 * elem;
        if size > 0 && size + n > shard_size {
            shards.push(vec![]);
            size = 0;
        }
        if let Some(s) = shards.last_mut() {
            s.push(name);
        }
        size += n;
    }
    let count = shards.len();
    let file_of = |k: usize| {
        if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (k, shard) in shards.iter().enumerate() {
        let mut data = Vec::with_capacity(shard.len());
        for name in shard {
            let t = inputs.merged(name, true)?;
            data.push((name.as_str(), t.dims().to_vec(), bytes(&t, dtype)?));
            written
                .tensors
                .push((name.to_string(), dtype.name().into()));
        }
        let views = data
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(st_dtype(dtype), s.clone(), b)
                    .map(|v| (*n, v))
                    .map_err(|e| anyhow!("{n}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| anyhow!("serialising {}: {e}", file_of(k)))?;
        total += data.iter().map(|d| d.2.len() as u64).sum::<u64>();
        write_atomic(&dir.join(file_of(k)), &bytes)?;
        for name in shard {
            weight_map.insert(name.to_string(), json!(file_of(k)));
        }
        written.files.push(file_of(k));
    }
    if count > 1 {
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
        written.files.push("model.safetensors.index.json".into());
    }
    Ok(written)
}
