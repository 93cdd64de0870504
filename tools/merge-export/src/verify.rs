//! Read the export back and compare it with what it came from: logits of the written model
//! against the base with the adapter applied as LoRA (not merged) on fixed token sequences, and
//! the ids of a GGUF's tokenizer against the source tokenizer's on a fixed text.

use crate::inputs::Inputs;
use crate::{Args, Format, Quant, Tolerance};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use ftkit_model::gguf::metadata::CHECK_TEXT;
use ftkit_model::{CausalLm, ChatMessage, ChatTemplate, ForwardOpts, GgufFile};
use serde_json::json;
use std::path::Path;

/// Texts whose tokens the logits are compared on (each cut to [`MAX_TOKENS`]).
const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912.",
    "def add(a, b):\n    return a + b  # café, naïve, 東京",
];
const MAX_TOKENS: usize = 48;

#[derive(Debug, Clone)]
pub struct Verification {
    /// What was compared ("logits", "adapter tensors").
    pub against: String,
    pub sequences: usize,
    pub tokens: usize,
    pub max_abs_diff: f64,
    pub max_abs_logit: f64,
    pub relative: f64,
    pub tolerance: Tolerance,
    /// Positions whose greedy (argmax) token is the same.
    pub top1_agreement: f64,
    pub adapter_max_abs_diff: Option<f64>,
    /// `Some(true)`: the written tokenizer gives the source's ids on the check text.
    pub tokenizer_ids_equal: Option<bool>,
}

impl Verification {
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "max_abs_diff": self.max_abs_diff, "relative": self.relative,
            "tolerance": self.tolerance.relative, "top1_agreement": self.top1_agreement,
            "top1_floor": self.tolerance.top1, "tokenizer_ids_equal": self.tokenizer_ids_equal,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "against": self.against, "sequences": self.sequences, "tokens": self.tokens,
            "max_abs_diff": self.max_abs_diff, "max_abs_logit": self.max_abs_logit,
            "relative": self.relative, "tolerance": self.tolerance.relative,
            "top1_agreement": self.top1_agreement, "top1_floor": self.tolerance.top1,
            "adapter_max_abs_diff": self.adapter_max_abs_diff,
            "tokenizer_ids_equal": self.tokenizer_ids_equal,
        })
    }

    pub fn line(&self) -> String {
        format!(
            "verified: {} on {} tokens: max |diff| {:.3e} = {:.2e} of max |logit| (at most {}), greedy tokens agree {:.1}% (at least {:.0}%){}",
            self.against,
            self.tokens,
            self.max_abs_diff,
            self.relative,
            self.tolerance.relative,
            self.top1_agreement * 100.0,
            self.tolerance.top1 * 100.0,
            match self.tokenizer_ids_equal {
                Some(true) => ", tokenizer ids equal",
                _ => "",
            }
        )
    }
}

/// Token sequences: the fixed texts, and a chat turn rendered by the model's template.
fn sequences(inputs: &Inputs) -> Result<Vec<Vec<u32>>> {
    let mut texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    if let Ok(tmpl) = ChatTemplate::from_config(&inputs.tokenizer_config)
        && let Ok(chat) = tmpl.render(
            &[
                ChatMessage::new("user", "What is the capital of France?"),
                ChatMessage::new("assistant", "Paris."),
            ],
            false,
        )
    {
        texts.push(chat);
    }
    let vocab = inputs.cfg.vocab_size as u32;
    texts
        .iter()
        .map(|t| {
            let enc = inputs
                .tokenizer
                .encode(t.as_str(), true)
                .map_err(|e| anyhow!("tokenizing a check text: {e}"))?;
            let ids: Vec<u32> = enc.get_ids().iter().copied().take(MAX_TOKENS).collect();
            if ids.iter().any(|&i| i >= vocab) || ids.is_empty() {
                bail!("the tokenizer gives ids outside the model's {vocab} embedding rows");
            }
            Ok(ids)
        })
        .collect()
}

fn logits(model: &CausalLm, seqs: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    seqs.iter()
        .map(|ids| {
            let x = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
            Ok(model.forward(&x, &ForwardOpts::default())?.squeeze(0)?)
        })
        .collect()
}

/// The model as trained: the base in F32 with the adapter as LoRA layers.
fn reference(inputs: &Inputs) -> Result<CausalLm> {
    let mut model = CausalLm::from_files(&inputs.files, DType::F32, &Device::Cpu)?;
    if let Some(a) = &inputs.adapter {
        model.attach_adapter(&a.adapter, &candle_nn::VarMap::new())?;
    }
    Ok(model)
}

fn compare(reference: &[Tensor], candidate: &[Tensor]) -> Result<(f64, f64, f64, usize)> {
    let (mut diff, mut max, mut agree, mut n) = (0f64, 0f64, 0usize, 0usize);
    for (r, c) in reference.iter().zip(candidate) {
        diff = diff.max((r - c)?.abs()?.max_all()?.to_scalar::<f32>()? as f64);
        max = max.max(r.abs()?.max_all()?.to_scalar::<f32>()? as f64);
        let (ra, ca) = (
            r.argmax(1)?.to_vec1::<u32>()?,
            c.argmax(1)?.to_vec1::<u32>()?,
        );
        agree += ra.iter().zip(&ca).filter(|(a, b)| a == b).count();
        n += ra.len();
    }
    Ok((diff, max, agree as f64 / n.max(1) as f64, n))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Ok(f64::INFINITY);
    }
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64)
}

/// The adapter read back from its GGUF against the source adapter, tensor by tensor.
fn adapter_roundtrip(inputs: &Inputs, path: &Path) -> Result<(ftkit_model::peft::Adapter, f64)> {
    let source = &inputs.adapter.as_ref().context("no adapter")?.adapter;
    let back = crate::gguf::read_adapter(path, &inputs.cfg)?;
    let mut worst = 0f64;
    if back.tensors.len() != source.tensors.len() {
        bail!(
            "{}: {} adapter tensors read back, {} written",
            path.display(),
            back.tensors.len(),
            source.tensors.len()
        );
    }
    for (k, t) in &source.tensors {
        let b = back
            .tensors
            .get(k)
            .with_context(|| format!("{}: {k} missing", path.display()))?;
        worst = worst.max(max_abs_diff(t, b)?);
    }
    if (back.config.scale() - source.config.scale()).abs() > 1e-6 * source.config.scale().abs() {
        bail!(
            "{}: llama.cpp would scale the adapter by {}, it was trained with {}",
            path.display(),
            back.config.scale(),
            source.config.scale()
        );
    }
    Ok((back, worst))
}

/// The source tokenizer's ids against the GGUF's rebuilt tokenizer's, on the check text and a
/// rendered chat turn (special tokens included).
fn tokenizer_ids_equal(inputs: &Inputs, gguf: &Path) -> Result<bool> {
    let theirs = GgufFile::open(gguf)?.tokenizer()?;
    let mut texts = vec![CHECK_TEXT.to_string()];
    if let Ok(tmpl) = ChatTemplate::from_config(&inputs.tokenizer_config) {
        texts.push(tmpl.render(&[ChatMessage::new("user", "Hi 123!")], true)?);
    }
    for t in &texts {
        let enc = |tok: &tokenizers::Tokenizer| {
            tok.encode(t.as_str(), true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| anyhow!("{e}"))
        };
        if enc(&inputs.tokenizer)? != enc(&theirs)? {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn verify(args: &Args, inputs: &Inputs, dir: &Path) -> Result<Verification> {
    let seqs = sequences(inputs)?;
    let want = logits(&reference(inputs)?, &seqs)?;
    let dev = Device::Cpu;
    let (candidate, tolerance, adapter_diff, gguf) = match (args.format, args.ollama_adapter) {
        (Format::Safetensors, _) => {
            let files = ftkit_model::resolve(
                &ftkit_model::ModelSource::Dir(dir.to_path_buf()),
                &ftkit_model::HubOptions::from_env(true),
            )?;
            let model = CausalLm::from_files(&files, DType::F32, &dev)?;
            let tol = match args.dtype {
                crate::Dtype::F32 => Quant::F32,
                crate::Dtype::Bf16 => Quant::Bf16,
                crate::Dtype::F16 => Quant::F16,
            }
            .tolerance();
            (model, tol, None, None)
        }
        (Format::Gguf, _) | (Format::Ollama, false) => {
            let path = dir.join("model.gguf");
            let model = CausalLm::from_gguf(&path, DType::F32, &dev)?;
            (model, args.quant.tolerance(), None, Some(path))
        }
        (Format::GgufAdapter, _) | (Format::Ollama, true) => {
            let (back, diff) = adapter_roundtrip(inputs, &dir.join("adapter.gguf"))?;
            // The adapter on the base it sits on: the user's own files, or the base GGUF written
            // beside it for Ollama.
            let written_base = dir.join("base.gguf");
            let (mut model, tol, gguf) = if args.format == Format::Ollama && written_base.is_file()
            {
                let m = CausalLm::from_gguf(&written_base, DType::F32, &dev)?;
                (m, args.quant.tolerance(), Some(written_base))
            } else {
                let m = CausalLm::from_files(&inputs.files, DType::F32, &dev)?;
                (m, Quant::F32.tolerance(), None)
            };
            model.attach_adapter(&back, &candle_nn::VarMap::new())?;
            (model, tol, Some(diff), gguf)
        }
    };
    let got = logits(&candidate, &seqs)?;
    let (diff, max, agree, tokens) = compare(&want, &got)?;
    let relative = diff / max.max(f64::MIN_POSITIVE);
    let tok_equal = gguf
        .as_deref()
        .map(|p| tokenizer_ids_equal(inputs, p))
        .transpose()?;
    let v = Verification {
        against: if inputs.adapter.is_some() {
            "logits vs base + adapter"
        } else {
            "logits vs base"
        }
        .into(),
        sequences: seqs.len(),
        tokens,
        max_abs_diff: diff,
        max_abs_logit: max,
        relative,
        tolerance,
        top1_agreement: agree,
        adapter_max_abs_diff: adapter_diff,
        tokenizer_ids_equal: tok_equal,
    };
    if let Some(d) = adapter_diff
        && d > 0.0
    {
        bail!(
            "verification failed: the adapter read back differs from the source by {d:e} (it is stored as f32)"
        );
    }
    // Written so that NaN logits fail too.
    if !(relative <= tolerance.relative && agree >= tolerance.top1) {
        bail!(
            "verification failed: {} (use --no-verify to write it anyway)",
            v.line().trim_start_matches("verified: ")
        );
    }
    if tok_equal == Some(false) {
        bail!(
            "verification failed: the GGUF's tokenizer gives other ids than the source tokenizer"
        );
    }
    Ok(v)
}
