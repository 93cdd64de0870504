//! The model GGUF (merged or not) and the adapter GGUF, written one tensor at a time.

use crate::inputs::Inputs;
use crate::{Quant, Written};
use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ftkit_model::gguf::metadata::{
    adapter_metadata, check_model_keys, file_type, model_metadata, tokenizer_metadata,
};
use ftkit_model::gguf::write::{GgufWriter, TensorPlan};
use ftkit_model::gguf::{
    GgufFile, gguf_name, hf_name, llama_qk_heads, llama_qk_permute_rows, llama_qk_unpermute_rows,
    reorder_tensor_rows,
};
use ftkit_model::peft::{Adapter, AdapterConfig, TargetModules};
use ftkit_model::quant::{fitting, type_name};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The GGUF type of HF tensor `name` of `dims` under `quant`, by llama.cpp's rules: vectors
/// (norms, biases) F32; with a 4-bit type the output matrix — the embedding when it is tied —
/// Q6_K (Q8_0 when its rows do not fit 256-blocks), as llama-quantize's Q4_K_M does; a matrix
/// whose rows do not fit the type's block falls back as llama-quantize does (Q4_K → Q5_0, then
/// F16 for rows that fit no 32-block).
pub fn tensor_type(quant: Quant, name: &str, dims: &[usize], tied: bool) -> GgmlDType {
    if dims.len() < 2 {
        return GgmlDType::F32;
    }
    let cols = dims[dims.len() - 1];
    let output = name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
    match quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 => GgmlDType::F16,
        Quant::Bf16 => GgmlDType::BF16,
        Quant::Q8_0 => fitting(GgmlDType::Q8_0, cols),
        Quant::Q4_0 | Quant::Q4K if output => fitting(GgmlDType::Q6K, cols),
        Quant::Q4_0 => fitting(GgmlDType::Q4_0, cols),
        Quant::Q4K => fitting(GgmlDType::Q4K, cols),
    }
}

/// The largest type among the matrices: what `general.file_type` names.
fn main_type(quant: Quant) -> GgmlDType {
    match quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 => GgmlDType::F16,
        Quant::Bf16 => GgmlDType::BF16,
        Quant::Q8_0 => GgmlDType::Q8_0,
        Quant::Q4_0 => GgmlDType::Q4_0,
        Quant::Q4K => GgmlDType::Q4K,
    }
}

/// llama.cpp's tensor order: embedding, blocks by number, output norm, output.
fn gguf_order(hf: &str) -> (usize, usize, String) {
    let layer = hf
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    match (hf, layer) {
        ("model.embed_tokens.weight", _) => (0, 0, String::new()),
        (_, Some(l)) => (1, l, hf.to_string()),
        ("model.norm.weight", _) => (2, 0, String::new()),
        _ => (3, 0, hf.to_string()),
    }
}

/// Tokenizer keys: a GGUF base's own, as they are; otherwise rebuilt from `tokenizer.json`.
fn tokenizer_keys(inputs: &Inputs) -> Result<Vec<(String, Value)>> {
    match &inputs.files.gguf {
        Some(path) => Ok(GgufFile::open(path)?.tokenizer_keys()),
        None => tokenizer_metadata(&inputs.tokenizer, &inputs.tokenizer_config, &inputs.cfg),
    }
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    ))
}

fn finish(wr: GgufWriter<std::io::BufWriter<std::fs::File>>, path: &Path) -> Result<()> {
    let file = wr
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {} (fsync)", path.display()))
}

/// Writes the model (the adapter merged when `merge`) as a GGUF at `path`.
pub fn write_model(
    inputs: &Inputs,
    path: &Path,
    quant: Quant,
    name: &str,
    merge: bool,
) -> Result<Written> {
    let cfg = &inputs.cfg;
    let mut meta = model_metadata(cfg, name, file_type(main_type(quant)))?;
    meta.extend(tokenizer_keys(inputs)?);
    check_model_keys(&meta)?;
    let mut names: Vec<&String> = inputs
        .names
        .iter()
        .filter(|n| !(cfg.tie_word_embeddings && n.as_str() == "lm_head.weight"))
        .collect();
    names.sort_by_key(|n| gguf_order(n));
    let mut plan = Vec::with_capacity(names.len());
    for hf in &names {
        let dims = inputs.tensors.dims(hf)?;
        plan.push(TensorPlan {
            name: gguf_name(hf).with_context(|| format!("{hf} has no GGUF name"))?,
            dtype: tensor_type(quant, hf, &dims, cfg.tie_word_embeddings),
            dims,
        });
    }
    let file_name = file_name(path);
    let mut written = Written {
        files: vec![file_name],
        ..Default::default()
    };
    let mut wr = GgufWriter::create(create(path)?, &meta, plan.clone())?;
    for (hf, p) in names.iter().zip(&plan) {
        let mut t = inputs.merged(hf, merge)?;
        if let Some(heads) = llama_qk_heads(cfg.arch, cfg, hf) {
            t = reorder_tensor_rows(&t, &llama_qk_permute_rows(t.dim(0)?, heads)?)?;
        }
        let q = QTensor::quantize(&t, p.dtype).with_context(|| format!("quantizing {hf}"))?;
        wr.tensor(&q)?;
        written.tensors.push((p.name.clone(), type_name(p.dtype)));
    }
    finish(wr, path)?;
    Ok(written)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(GGUF base name, lora_a, lora_b)` for each adapted layer, as llama.cpp reads them: A `[r, in]`
/// and B `[out, r]` as PEFT stores them (GGUF `ne` = `[in, r]`, `[r, out]`), B's rows permuted
/// for llama q/k like the base weight they add to.
fn adapter_tensors(inputs: &Inputs, adapter: &Adapter) -> Result<Vec<(String, Tensor, Tensor)>> {
    let cfg = &inputs.cfg;
    let mut out = Vec::new();
    for m in adapter.modules() {
        let (a, b) = adapter
            .pair(&m)
            .with_context(|| format!("{m}: lora_B missing"))?;
        let base = gguf_name(&format!("{m}.weight"))
            .with_context(|| format!("{m}: no llama.cpp name for this layer"))?;
        let b = match llama_qk_heads(cfg.arch, cfg, &m) {
            Some(heads) => reorder_tensor_rows(b, &llama_qk_permute_rows(b.dim(0)?, heads)?)?,
            None => b.clone(),
        };
        out.push((base, a.clone(), b));
    }
    out.sort_by(|x, y| {
        gguf_order(&hf_name(&x.0).unwrap_or_default())
            .cmp(&gguf_order(&hf_name(&y.0).unwrap_or_default()))
    });
    Ok(out)
}

/// llama.cpp scales an adapter by `alpha / r`; an rsLoRA adapter's scale is `alpha / √r`, so its
/// alpha is written as `scale · r`, which gives llama.cpp the scale it was trained with.
fn llama_cpp_alpha(cfg: &AdapterConfig) -> f64 {
    cfg.scale() * cfg.r as f64
}

/// Writes the adapter alone as llama.cpp's LoRA GGUF at `path` (tensors F32).
pub fn write_adapter(inputs: &Inputs, path: &Path, name: &str) -> Result<Written> {
    let adapter = &inputs
        .adapter
        .as_ref()
        .context("no --adapter to write")?
        .adapter;
    let meta = adapter_metadata(inputs.cfg.arch, llama_cpp_alpha(&adapter.config), name);
    let tensors = adapter_tensors(inputs, adapter)?;
    let mut plan = Vec::new();
    let mut qts = Vec::new();
    for (base, a, b) in &tensors {
        for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
            let q = QTensor::quantize(t, GgmlDType::F32)?;
            plan.push(TensorPlan {
                name: format!("{base}.{suffix}"),
                dims: q.shape().dims().to_vec(),
                dtype: GgmlDType::F32,
            });
            qts.push(q);
        }
    }
    let mut written = Written {
        files: vec![file_name(path)],
        ..Default::default()
    };
    let mut wr = GgufWriter::create(create(path)?, &meta, plan.clone())?;
    for (q, p) in qts.iter().zip(&plan) {
        wr.tensor(q)?;
        written.tensors.push((p.name.clone(), "f32".into()));
    }
    finish(wr, path)?;
    Ok(written)
}

/// An adapter GGUF read back as a PEFT adapter for a model of `arch` (B's llama q/k rows back in
/// HF order; `r` from A's rows, `lora_alpha` = llama.cpp's alpha, so `scale()` is what llama.cpp
/// applies).
pub fn read_adapter(path: &Path, cfg: &ftkit_model::ModelConfig) -> Result<Adapter> {
    let origin = path.display().to_string();
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot open {origin}"))?,
    );
    let content = Content::read(&mut reader).with_context(|| format!("{origin}: not a GGUF"))?;
    let text = |k: &str| {
        content
            .metadata
            .get(k)
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default()
    };
    if text("general.type") != "adapter" || text("adapter.type") != "lora" {
        bail!("{origin}: not a LoRA adapter GGUF");
    }
    if text("general.architecture") != cfg.arch.model_type() {
        bail!(
            "{origin}: an adapter for {:?}, the base is {}",
            text("general.architecture"),
            cfg.arch.model_type()
        );
    }
    let alpha = content
        .metadata
        .get("adapter.lora.alpha")
        .context("adapter.lora.alpha missing")?
        .to_f32()? as f64;
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut r = 0;
    let mut modules = std::collections::BTreeSet::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for g in names {
        let (base, part) = g
            .rsplit_once('.')
            .with_context(|| format!("{origin}: tensor {g}"))?;
        let hf = hf_name(base).with_context(|| format!("{origin}: tensor {g}"))?;
        let module = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
        let mut t = content.tensor(&mut reader, g, &dev)?.dequantize(&dev)?;
        let key = match part {
            "lora_a" => {
                r = t.dim(0)?;
                "lora_A"
            }
            "lora_b" => {
                if let Some(heads) = llama_qk_heads(cfg.arch, cfg, &module) {
                    t = reorder_tensor_rows(&t, &llama_qk_unpermute_rows(t.dim(0)?, heads)?)?;
                }
                "lora_B"
            }
            other => bail!("{origin}: tensor {g}: unknown part {other:?}"),
        };
        modules.insert(module.rsplit('.').next().unwrap_or_default().to_string());
        tensors.insert(format!("base_model.model.{module}.{key}.weight"), t);
    }
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r,
        lora_alpha: alpha,
        lora_dropout: 0.0,
        target_modules: TargetModules::List(modules.into_iter().collect()),
        use_rslora: false,
        bias: "none".into(),
        base_model_name_or_path: None,
        fan_in_fan_out: false,
        inference_mode: true,
        other: BTreeMap::new(),
    };
    Ok(Adapter { config, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_llama_cpp() {
        let q = |quant, name: &str, dims: &[usize], tied| {
            type_name(tensor_type(quant, name, dims, tied))
        };
        assert_eq!(
            q(
                Quant::Q4K,
                "model.layers.0.input_layernorm.weight",
                &[576],
                false
            ),
            "f32"
        );
        assert_eq!(
            q(
                Quant::Q4K,
                "model.layers.0.mlp.up_proj.weight",
                &[1536, 512],
                false
            ),
            "q4k"
        );
        // SmolLM2: 576 columns are not 256-blocks.
        assert_eq!(
            q(
                Quant::Q4K,
                "model.layers.0.mlp.up_proj.weight",
                &[1536, 576],
                false
            ),
            "q5_0"
        );
        assert_eq!(
            q(Quant::Q4K, "model.embed_tokens.weight", &[49152, 576], true),
            "q8_0"
        );
        assert_eq!(
            q(
                Quant::Q4K,
                "model.embed_tokens.weight",
                &[49152, 512],
                false
            ),
            "q4k"
        );
        assert_eq!(
            q(Quant::Q4_0, "lm_head.weight", &[49152, 512], false),
            "q6k"
        );
        assert_eq!(
            q(
                Quant::Q8_0,
                "model.layers.0.mlp.up_proj.weight",
                &[64, 48],
                false
            ),
            "f16"
        );
        assert_eq!(
            q(
                Quant::Bf16,
                "model.layers.0.self_attn.q_proj.bias",
                &[64],
                false
            ),
            "f32"
        );
    }

    #[test]
    fn order_is_llama_cpp_s() {
        let mut v = vec![
            "lm_head.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.norm.weight",
            "model.layers.2.mlp.up_proj.weight",
            "model.embed_tokens.weight",
        ];
        v.sort_by_key(|n| gguf_order(n));
        assert_eq!(
            v,
            [
                "model.embed_tokens.weight",
                "model.layers.2.mlp.up_proj.weight",
                "model.layers.10.mlp.up_proj.weight",
                "model.norm.weight",
                "lm_head.weight"
            ]
        );
    }
}
