//! ft-merge-export: a base model (± a LoRA adapter) out as an HF safetensors folder, a GGUF, a
//! llama.cpp adapter GGUF or an Ollama model folder — then read back and checked against the
//! base + adapter it came from.
//!
//! - [`inputs`]: the base and adapter as loaded once; merged tensors one at a time.
//! - [`hf`]: the safetensors folder; [`gguf`]: the model and adapter GGUFs; [`modelfile`]: the
//!   Ollama Modelfile, the chat template translated by family and checked by rendering.
//! - [`verify`]: logits of the written model against base + adapter, tokenizer ids.

pub mod gguf;
pub mod hf;
pub mod inputs;
pub mod modelfile;
pub mod verify;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ftkit_core::io::AtomicDir;
use ftkit_core::usage;
use inputs::Inputs;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An HF model folder: config.json, tokenizer files, generation_config.json, safetensors.
    Safetensors,
    /// The model as one GGUF v3 file (llama.cpp, LM Studio, Ollama).
    Gguf,
    /// The LoRA adapter alone, as llama.cpp's adapter GGUF (llama-cli --lora, Ollama ADAPTER).
    GgufAdapter,
    /// A GGUF and a Modelfile for `ollama create`.
    Ollama,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
            Self::GgufAdapter => "gguf-adapter",
            Self::Ollama => "ollama",
        }
    }
}

/// Weight type of the safetensors folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn candle(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}

/// Tensor type of the GGUF's matrices (norms and biases stay f32, as llama.cpp keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Quant {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
        }
    }

    /// What verification accepts for this type: the largest `max |logit difference| / max
    /// |logit|` against base + adapter, and the smallest share of positions whose greedy token is
    /// unchanged. Each type's rounding stays well inside (SmolLM2-135M, from its Q4_1 GGUF: f16
    /// 1.6e-3 and 100 %, q8_0 4.4e-2 and 95 %, q4_k 0.32 and 81 %, q4_0 0.66 and 69 %: 4-bit blocks
    /// of weights already in 4-bit blocks); a wrong layout or a lost adapter is far outside.
    pub fn tolerance(self) -> Tolerance {
        let (relative, top1) = match self {
            Self::F32 => (1e-4, 0.99),
            Self::F16 => (2e-2, 0.9),
            Self::Bf16 | Self::Q8_0 => (0.15, 0.85),
            Self::Q4_0 | Self::Q4K => (1.0, 0.5),
        };
        Tolerance { relative, top1 }
    }
}

/// Verification limits (see [`Quant::tolerance`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub relative: f64,
    pub top1: f64,
}

const AFTER_HELP: &str = "\
Examples:
  # the adapter merged into its base, as an Ollama model (Q8_0), then `ollama create`
  ft-merge-export --base Qwen/Qwen2.5-0.5B-Instruct --adapter adapters/qa --format ollama \\
    --quant q8_0 --out-dir export/qa

  # the adapter alone, on top of the GGUF you already serve (trained on that same GGUF)
  ft-merge-export --base smollm2.Q8_0.gguf --adapter adapters/qa --format gguf-adapter --out-dir export/qa

  # an HF folder for transformers / vLLM, bf16, shards of at most 2 GB
  ft-merge-export --base ./base --adapter adapters/qa --format safetensors --shard-size 2GB --out-dir merged

Every run reads its output back and compares logits with base + adapter on fixed token sequences
(max |difference| relative to max |logit|, tolerance per type), and checks that a GGUF's tokenizer
gives the source tokenizer's ids on a fixed text; above tolerance it fails and writes nothing
(--no-verify skips the check). Files appear in --out-dir only when complete. export_report.json records
the inputs' digests, the tensors and their types, and the figures; one JSON status line goes to stdout.

An adapter trained on a quantized GGUF (ft-train-lora --quantize keep) is exported faithfully with
--format gguf-adapter on that same GGUF: the served weights are then exactly the trained ones.";

/// Merge a LoRA adapter into its base and export it; verify what was written.
#[derive(Parser, Debug)]
#[command(
    name = "ft-merge-export",
    version,
    about = "Merge a LoRA adapter into its base; export safetensors, GGUF, adapter GGUF or Ollama",
    long_about = "Merges W + scale * B @ A per adapted layer in f32, then writes the model as an HF \
safetensors folder, a GGUF v3 file (llama, qwen2) with its tokenizer and chat template, a llama.cpp \
LoRA adapter GGUF, or a GGUF plus an Ollama Modelfile whose TEMPLATE is the model's chat template \
translated into Ollama's. Without --adapter, converts the base. The output is read back and checked \
against base + adapter before it is put in place.",
    after_long_help = AFTER_HELP,
    args_override_self = true
)]
pub struct Args {
    #[arg(
        long,
        value_name = "DIR|FILE.gguf|ORG/NAME[@REV]",
        help = "Base model: a local folder (safetensors, or one .gguf), a .gguf file (llama, qwen2) or a Hugging Face id ORG/NAME[@REVISION] (HF_HOME, HF_ENDPOINT, HF_TOKEN honoured)"
    )]
    pub base: String,

    /// LoRA adapter folder (adapter_config.json + adapter_model.safetensors; ours or PEFT's).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// What to write.
    #[arg(long, value_enum, default_value_t = Format::Gguf, value_name = "FORMAT")]
    pub format: Format,

    /// Output folder (created; files of the same names are replaced, others left alone).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Weight type of --format safetensors.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16, value_name = "TYPE")]
    pub dtype: Dtype,

    /// Largest safetensors shard (e.g. 5GB, 500MB, bytes); a model above it gets shards and
    /// model.safetensors.index.json.
    #[arg(long, default_value = "5GB", value_name = "SIZE", value_parser = parse_size)]
    pub shard_size: u64,

    /// Type of the GGUF's matrices: f32, f16, bf16, q8_0, q4_0, q4_k (llama.cpp's rules: norms
    /// and biases f32; for 4-bit types the output matrix, or the tied embedding, q6_k / q8_0; a
    /// matrix whose rows do not fit the type's block falls back as llama-quantize does).
    #[arg(long, value_enum, default_value_t = Quant::F16, value_name = "TYPE")]
    pub quant: Quant,

    /// Model name (general.name; the Ollama model name). Default: --out-dir's last component.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// With --format ollama and --adapter: keep the adapter separate (FROM the base GGUF, ADAPTER
    /// adapter.gguf) instead of merging it. A .gguf base is referenced where it is, not copied.
    #[arg(long)]
    pub ollama_adapter: bool,

    /// With --format ollama: a SYSTEM prompt (default: the chat template's own default, if any).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Skip reading the output back and comparing it with base + adapter.
    #[arg(long)]
    pub no_verify: bool,

    /// Use only files already in the Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// A shard size ([`ftkit_core::size::parse`]), at least one byte.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    match ftkit_core::size::parse(s)? {
        0 => Err(format!("{s:?}: a shard must hold at least one byte")),
        n => Ok(n),
    }
}

/// What one format wrote: its files (relative to the output folder) and tensors.
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<String>,
    /// `(name as written, type)`.
    pub tensors: Vec<(String, String)>,
    pub modelfile: Option<modelfile::Translation>,
}

fn default_name(out_dir: &Path) -> String {
    let raw = out_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            out_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".into());
    let name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.trim_matches(['-', '.']).is_empty() {
        "model".into()
    } else {
        name
    }
}

impl Args {
    fn validate(&self) -> Result<()> {
        if self.format == Format::GgufAdapter && self.adapter.is_none() {
            usage!("--format gguf-adapter needs --adapter DIR");
        }
        if self.ollama_adapter && (self.format != Format::Ollama || self.adapter.is_none()) {
            usage!("--ollama-adapter goes with --format ollama and --adapter DIR");
        }
        if self.system.is_some() && self.format != Format::Ollama {
            usage!("--system goes with --format ollama");
        }
        Ok(())
    }

    fn paths(&self) -> ftkit_core::Paths {
        let mut p = ftkit_core::Paths::new().output("--out-dir", &self.out_dir);
        if let Some(a) = &self.adapter {
            p = p.input("--adapter", a);
        }
        if Path::new(&self.base).exists() {
            p = p.input("--base", &self.base);
        }
        p
    }
}

/// The output folder may not hold an input: the export's files (config.json, model.safetensors,
/// model.gguf, ...) would replace the model they are made from.
fn check_out_dir(out_dir: &Path, inputs: &Inputs) -> Result<()> {
    let Ok(out) = out_dir.canonicalize() else {
        return Ok(()); // not created yet: it holds nothing
    };
    for f in inputs.input_files() {
        if f.parent().and_then(|p| p.canonicalize().ok()).as_deref() == Some(out.as_path()) {
            usage!(
                "--out-dir {} holds the input {}: choose another folder",
                out_dir.display(),
                f.display()
            );
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    args.validate()?;
    args.paths().check()?;
    let started = std::time::Instant::now();
    let inputs = Inputs::load(&args.base, args.adapter.as_deref(), args.offline)?;
    check_out_dir(&args.out_dir, &inputs)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.out_dir));
    // The base's digest (SHA-256 of every file) reads the whole model again: on another core,
    // beside the export.
    let files = inputs.files.clone();
    let digest = std::thread::spawn(move || files.digest());
    let stage = AtomicDir::create(&args.out_dir)?;
    let dir = stage.path().to_path_buf();
    let written = write(&args, &inputs, &dir, &name)?;
    let write_s = started.elapsed().as_secs_f64();
    let verification = if args.no_verify {
        None
    } else {
        Some(verify::verify(&args, &inputs, &dir)?)
    };
    let digest = digest
        .join()
        .map_err(|_| anyhow::anyhow!("the digest thread panicked"))??;
    let report = report(
        &args,
        &inputs,
        &digest,
        &name,
        &written,
        verification.as_ref(),
        write_s,
        started,
    )?;
    ftkit_core::io::write_atomic(
        &dir.join("export_report.json"),
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    stage
        .commit_into(&args.out_dir)
        .with_context(|| format!("{}: cannot put the export in place", args.out_dir.display()))?;
    let mut status = json!({
        "status": "ok",
        "format": args.format.name(),
        "out_dir": args.out_dir,
        "files": written.files,
        "tensors": written.tensors.len(),
        "verify": verification.as_ref().map(|v| v.summary()),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    if written.modelfile.is_some() {
        let cmd = format!(
            "ollama create {name} -f {}",
            args.out_dir.join("Modelfile").display()
        );
        ftkit_core::cli::warn(format!("next: {cmd}"));
        status["next"] = json!(cmd);
    }
    if let Some(v) = &verification {
        ftkit_core::cli::warn(v.line());
    }
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(out, "{status}").context("stdout")?;
    Ok(())
}

fn write(args: &Args, inputs: &Inputs, dir: &Path, name: &str) -> Result<Written> {
    match args.format {
        Format::Safetensors => hf::write(inputs, dir, args.dtype, args.shard_size),
        Format::Gguf => gguf::write_model(inputs, &dir.join("model.gguf"), args.quant, name, true),
        Format::GgufAdapter => gguf::write_adapter(inputs, &dir.join("adapter.gguf"), name),
        Format::Ollama => {
            let translation = modelfile::Translation::of(inputs)?;
            if args.system.is_some() && !translation.family.has_system() {
                bail!(
                    "--system: the {} chat template has no system role",
                    translation.family.name()
                );
            }
            let (mut written, from, adapter) = if args.ollama_adapter {
                let mut w = gguf::write_adapter(inputs, &dir.join("adapter.gguf"), name)?;
                let from = match &inputs.files.gguf {
                    Some(base) => std::path::absolute(base)?.display().to_string(),
                    None => {
                        let b = gguf::write_model(
                            inputs,
                            &dir.join("base.gguf"),
                            args.quant,
                            name,
                            false,
                        )?;
                        w.files.extend(b.files);
                        w.tensors.extend(b.tensors);
                        "./base.gguf".to_string()
                    }
                };
                (w, from, Some("./adapter.gguf"))
            } else {
                let w = gguf::write_model(inputs, &dir.join("model.gguf"), args.quant, name, true)?;
                (w, "./model.gguf".to_string(), None)
            };
            let text = translation.modelfile(&from, adapter, args.system.as_deref());
            ftkit_core::io::write_atomic(&dir.join("Modelfile"), text.as_bytes())?;
            written.files.push("Modelfile".into());
            written.modelfile = Some(translation);
            Ok(written)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    inputs: &Inputs,
    digest: &str,
    name: &str,
    written: &Written,
    verification: Option<&verify::Verification>,
    write_s: f64,
    started: std::time::Instant,
) -> Result<serde_json::Value> {
    let mut types = std::collections::BTreeMap::<&str, usize>::new();
    for (_, t) in &written.tensors {
        *types.entry(t.as_str()).or_default() += 1;
    }
    Ok(json!({
        "tool": "ft-merge-export",
        "version": env!("CARGO_PKG_VERSION"),
        "name": name,
        "format": args.format.name(),
        "base": {"spec": args.base, "sha256": digest, "arch": inputs.cfg.arch.model_type()},
        "adapter": inputs.adapter.as_ref().map(|a| json!({
            "dir": a.dir, "sha256": a.digest, "modules": a.adapter.modules().len(),
            "r": a.adapter.config.r, "alpha": a.adapter.config.lora_alpha,
            "scale": a.adapter.config.scale(), "use_rslora": a.adapter.config.use_rslora,
        })),
        "dtype": (args.format == Format::Safetensors).then(|| args.dtype.name()),
        "quant": matches!(args.format, Format::Gguf | Format::Ollama).then(|| args.quant.name()),
        "files": written.files,
        "tensors": {"count": written.tensors.len(), "types": types,
                    "list": written.tensors.iter().map(|(n, t)| json!([n, t])).collect::<Vec<_>>()},
        "modelfile": written.modelfile.as_ref().map(|t| json!({
            "family": t.family.name(), "stop": t.stops(), "default_system": t.default_system,
        })),
        "verify": verification.map(|v| v.to_json()),
        "seconds": {"write": write_s, "total": started.elapsed().as_secs_f64()},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sizes_are_positive() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn names_default_to_the_folder() {
        assert_eq!(default_name(Path::new("/tmp/x/My Model")), "my-model");
        assert_eq!(default_name(Path::new("/")), "model");
    }
}
