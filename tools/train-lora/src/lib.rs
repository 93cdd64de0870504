//! `ft-train-lora`: LoRA fine-tuning of a causal LM (qwen2, llama) on alpaca, messages or sharegpt JSONL.
//!
//! - [`data`]: records → chat messages, with `path:line` errors.
//! - [`batch`]: tokenised examples → rows (optionally packed with segment ids) → padded micro-batches.
//! - [`optim`]: AdamW with savable moments, schedules, clipping.
//! - [`train`]: the loop (accumulation normalised by target tokens, eval, early stop, checkpoints).
//! - [`shard`]: where the pieces of an update run (one-row shards on CPU workers, folded in order).
//! - [`checkpoint`]: checkpoint folders and `--resume`.
//! - [`lm`]: the bridge to `ftkit-model` (loading, chat template, LoRA, adapter files).
//! - [`job`]: one run from loaded data to the output folder.
//! - [`eval`]: `--eval`, the loss of a model (± adapter) on a file, with training's encoding.
//! - [`report`]: `training_report.json`, metrics lines, peak memory.

pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod job;
pub mod lm;
pub mod optim;
pub mod report;
pub mod shard;
pub mod train;

use anyhow::{Context, Result};
use clap::Parser;
use ftkit_core::{Paths, RunArgs, usage};
use ftkit_model::quant::BaseQuant;
use optim::Schedule;
use std::path::PathBuf;

fn parse_quantize(s: &str) -> Result<BaseQuant, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

const EXAMPLE: &str = "\
Examples:
  ft-train-lora --model Qwen/Qwen2.5-0.5B-Instruct --train splits/train.jsonl --val splits/val.jsonl \\
      --test splits/test.jsonl --out-dir adapters/qa --epochs 3 --eval-every 50 | jq -c 'select(.loss)'
  ft-train-lora --model ./models/smollm --train train.jsonl --out-dir out --max-steps 200 \\
      --save-every 50 --resume out/checkpoint-100
  ft-train-lora --model base.gguf --eval splits/test.alpaca.jsonl                       # loss before
  ft-train-lora --model base.gguf --adapter out --eval splits/test.alpaca.jsonl        # and after

Every logged step is one JSON line on stdout:
  {\"step\":10,\"epoch\":0.4,\"loss\":1.93,\"lr\":0.0002,\"grad_norm\":0.8,\"tokens\":20480,\"tokens_per_s\":812.5,\"elapsed_s\":25.2}
and every evaluation: {\"step\":50,\"val_loss\":1.41,\"val_perplexity\":4.1}.
--eval prints one line and trains nothing (training-only flags are ignored):
  {\"eval\":\"test.jsonl\",\"model\":..,\"model_sha256\":..,\"adapter\":\"out\",\"examples\":40,\"dropped\":0,\"truncated\":0,
   \"tokens\":5120,\"targets\":1830,\"loss\":1.52,\"perplexity\":4.57}
The output folder receives adapter_config.json and adapter_model.safetensors (PEFT's layout, loadable with
PeftModel.from_pretrained), training_report.json, and checkpoint-<step>/ folders with --save-every.

CPU threads: --threads or RAYON_NUM_THREADS (default: all cores). The rows of an update train in parallel, one per
thread, so --batch-size times --grad-accum at least the thread count keeps every core busy; the output
is the same on any thread count.";

/// Fine-tune a LoRA adapter on chat data and write it in PEFT's format.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ft-train-lora",
    version,
    about = "Fine-tune a LoRA adapter on alpaca, messages or sharegpt JSONL (PEFT output)",
    long_about = "Fine-tune a LoRA adapter of a causal LM (qwen2 or llama architectures) on alpaca \
(instruction/input/output), messages or sharegpt JSONL, detected per record. The model's own chat template \
is applied and, by default, only assistant tokens carry loss. Writes a PEFT adapter, training_report.json, \
and metrics as JSON lines on stdout; messages go to stderr.",
    after_long_help = EXAMPLE,
    args_override_self = true
)]
pub struct Args {
    // Help as an attribute: rustdoc would read `[@REVISION]` as a link.
    #[arg(
        long,
        value_name = "DIR|FILE.gguf|ORG/NAME[@REV]",
        help = "Base model: a local folder (safetensors, or one .gguf), a .gguf file (llama, qwen2; dequantized at load) or a Hugging Face id ORG/NAME[@REVISION] (HF_HOME, HF_ENDPOINT, HF_TOKEN honoured)"
    )]
    pub model: String,

    /// Use only files already in the Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Training data (JSONL, `.zst` ok): alpaca, messages or sharegpt records.
    #[arg(long, value_name = "FILE", required_unless_present = "eval")]
    pub train: Option<String>,

    /// Validation data, evaluated every --eval-every updates and at the end.
    #[arg(long, value_name = "FILE")]
    pub val: Option<String>,

    /// Test data, evaluated once at the end.
    #[arg(long, value_name = "FILE")]
    pub test: Option<String>,

    /// Output folder: adapter files, training_report.json, checkpoints.
    #[arg(long, value_name = "DIR", required_unless_present = "eval")]
    pub out_dir: Option<PathBuf>,

    /// Train nothing: print the loss and perplexity of --model (with --adapter's LoRA) on FILE, with
    /// the template, masking and --max-seq-len of training, as one JSON line.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["train", "val", "test", "out_dir", "resume"]
    )]
    pub eval: Option<String>,

    /// With --eval: a PEFT adapter folder (as ft-train-lora writes it) applied to --model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Where to compute: auto (CUDA when built with it and present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,

    /// Weight precision: auto (bf16 on CUDA, f32 on CPU), f32, bf16, f16. LoRA weights stay f32.
    #[arg(long, default_value = "auto", value_name = "DTYPE")]
    pub dtype: String,

    /// QLoRA: keep the frozen base weights quantized (CPU, f32 compute; the adapter stays a plain
    /// PEFT adapter). q8_0, q4_0, q4_k (Q5_0 for rows that are no whole 256-blocks, as
    /// llama-quantize does), nf4 (bitsandbytes' NF4, blocks of 64), or keep: a GGUF base's own
    /// blocks, the very weights llama.cpp and Ollama serve. The linear layers take the type; the
    /// embedding and output matrix take Q8_0 (keep: the file's). To serve an adapter trained with
    /// keep, export it with `ft-merge-export --format gguf-adapter` on top of that same GGUF.
    #[arg(long, value_name = "TYPE", value_parser = parse_quantize)]
    pub quantize: Option<BaseQuant>,

    /// With --quantize nf4: store the block scales in 8 bits too (QLoRA's double quantization).
    #[arg(long)]
    pub double_quant: bool,

    /// Keep only each decoder layer's input during the forward pass and run the layer again in
    /// the backward pass (CPU): activation memory of one layer instead of all, for about a third
    /// more compute. Same gradients, same adapter bytes.
    #[arg(long)]
    pub gradient_checkpointing: bool,

    /// Loss targets whose logits exist at once (0 = all). On large vocabularies the logits
    /// (targets × vocab, f32) dominate a step's memory; chunks of them cost no extra compute.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub loss_chunk: usize,

    /// Modules that get LoRA, comma-separated, or all-linear.
    #[arg(
        long,
        default_value = "q_proj,k_proj,v_proj,o_proj",
        value_name = "LIST"
    )]
    pub target: String,

    /// LoRA rank r.
    #[arg(long, default_value_t = 16, value_name = "R")]
    pub rank: usize,

    /// LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with --rslora).
    #[arg(long, default_value_t = 32.0, value_name = "ALPHA")]
    pub alpha: f64,

    /// Dropout on the LoRA input during training.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub dropout: f64,

    /// Rank-stabilised LoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    pub rslora: bool,

    /// Longest sequence in tokens; longer examples are cut (and counted).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_seq_len: usize,

    /// Pack several examples per row up to --max-seq-len; attention never crosses examples.
    #[arg(long)]
    pub pack: bool,

    /// Learn the prompt tokens too (default: assistant tokens only).
    #[arg(long)]
    pub train_on_prompt: bool,

    /// Rows per micro-batch.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub batch_size: usize,

    /// Micro-batches per optimizer update (loss normalised by all their target tokens).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub grad_accum: usize,

    /// Passes over the training data (ignored when --max-steps is given).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: u64,

    /// Stop after this many optimizer updates.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,

    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4, value_name = "LR")]
    pub lr: f64,

    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,

    /// Linear warm-up updates.
    #[arg(long, value_name = "N", conflicts_with = "warmup_ratio")]
    pub warmup_steps: Option<u64>,

    /// Warm-up as a fraction of all updates.
    #[arg(long, value_name = "F")]
    pub warmup_ratio: Option<f64>,

    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub weight_decay: f64,

    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    pub max_grad_norm: f64,

    /// Seed for LoRA initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42, value_name = "N")]
    pub seed: u64,

    /// Evaluate on --val every N updates (0 = only at the end).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: u64,

    /// Stop when validation loss has not improved for N evaluations; the best adapter is kept.
    #[arg(long, value_name = "N")]
    pub early_stop_patience: Option<u64>,

    // Help as an attribute: rustdoc would read `<step>` as an HTML tag.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        help = "Write checkpoint-<step>/ (adapter, optimizer state, data position) every N updates"
    )]
    pub save_every: u64,

    /// Continue exactly from a checkpoint folder (same flags and data required).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    /// Print a metrics line every N updates.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub log_every: u64,

    /// -o: the metrics lines go to this file instead of stdout; --threads: CPU threads (default: all
    /// cores, or RAYON_NUM_THREADS); --on-error, --rejects and -q as in every ftkit tool.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Args {
    /// Usage errors that clap cannot see.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            usage!("--rank must be at least 1");
        }
        if self.adapter.is_some() && self.eval.is_none() {
            usage!("--adapter goes with --eval (training starts a new adapter)");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            usage!("--dropout must be in [0, 1)");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            usage!("--batch-size and --grad-accum must be at least 1");
        }
        if self.max_seq_len < 2 {
            usage!("--max-seq-len must be at least 2");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            usage!("--epochs must be at least 1");
        }
        if self.max_steps == Some(0) {
            usage!("--max-steps must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            usage!("--lr must be a positive number");
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            usage!("--alpha must be a positive number");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            usage!("--max-grad-norm must be 0 (off) or a positive number");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            usage!("--weight-decay must be 0 or a positive number");
        }
        if self.run.threads == Some(0) {
            usage!("--threads must be at least 1");
        }
        if let Some(r) = self.warmup_ratio
            && !(0.0..=1.0).contains(&r)
        {
            usage!("--warmup-ratio must be in [0, 1]");
        }
        if self.early_stop_patience.is_some() && (self.val.is_none() || self.eval_every == 0) {
            usage!("--early-stop-patience needs --val and --eval-every");
        }
        if self.early_stop_patience == Some(0) {
            usage!("--early-stop-patience must be at least 1");
        }
        if self.double_quant && !matches!(self.quantize, Some(BaseQuant::Nf4 { .. })) {
            usage!("--double-quant goes with --quantize nf4");
        }
        Ok(())
    }

    /// `--quantize` with `--double-quant` folded in.
    pub fn base_quant(&self) -> Option<BaseQuant> {
        match self.quantize {
            Some(BaseQuant::Nf4 { .. }) => Some(BaseQuant::Nf4 {
                double_quant: self.double_quant,
            }),
            q => q,
        }
    }
}

/// Runs the tool.
pub fn run(args: Args) -> Result<()> {
    args.validate()?;
    args.paths().check()?;
    if let Some(n) = args.run.threads {
        // The shards of an update share out rayon's global pool (shard.rs).
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("--threads")?;
    }
    // Like every tool's, the rejects file appears, complete, when the data are loaded.
    let mut rejects = args.run.rejects_file()?;
    let mut load = |path: &String| -> Result<data::Dataset> {
        let w = rejects.as_mut().map(|f| f as &mut dyn std::io::Write);
        data::load(path, args.run.on_error, w)
    };
    if let Some(path) = &args.eval {
        let data = load(path)?;
        if let Some(file) = rejects {
            file.commit().context("--rejects")?;
        }
        return eval::run(&args, &data);
    }
    let (Some(train_path), Some(out_dir)) = (&args.train, &args.out_dir) else {
        usage!("--train and --out-dir are required (or --eval FILE)");
    };
    let train = load(train_path)?;
    let val = args.val.as_ref().map(&mut load).transpose()?;
    let test = args.test.as_ref().map(&mut load).transpose()?;
    if let Some(file) = rejects {
        file.commit().context("--rejects")?;
    }
    job::train(&args, out_dir, train, val, test)
}

impl Args {
    /// The data files, and every file the run writes, for the same-file check.
    pub fn paths(&self) -> Paths {
        let mut paths = Paths::new();
        let inputs = [
            ("--train", &self.train),
            ("--val", &self.val),
            ("--test", &self.test),
            ("--eval", &self.eval),
        ];
        for (flag, file) in inputs {
            if let Some(f) = file {
                paths = paths.input(flag, f);
            }
        }
        if let Some(dir) = &self.out_dir {
            for name in job::OUTPUT_FILES {
                paths = paths.output("--out-dir", dir.join(name));
            }
        }
        self.run.outputs(paths)
    }
}
