//! `--eval FILE`: the loss and perplexity of `--model` (with `--adapter`'s LoRA, if any) on a data
//! file, encoded exactly as training encodes its splits (chat template, assistant-only targets
//! unless `--train-on-prompt`, `--max-seq-len`) and averaged the way training's validation is
//! (token-weighted over every target). It lives here rather than in ft-generate because it must
//! share training's data path, not resemble it.

use crate::Args;
use crate::data::Dataset;
use crate::job::encode_split;
use crate::lm::Lm;
use crate::shard::Parallel;
use crate::train::{TrainModel, evaluate};
use anyhow::{Result, bail};
use ftkit_core::io::Output;
use serde_json::json;
use std::io::Write;

/// Evaluates and prints one JSON line (on stdout, or `-o`).
pub fn run(args: &Args, data: &Dataset) -> Result<()> {
    let lm = Lm::load(args)?;
    let (rows, rep) = encode_split(&lm, data, args, false)?;
    if rows.is_empty() {
        bail!(
            "{}: no example has a target token left after --max-seq-len {}",
            data.path,
            args.max_seq_len
        );
    }
    let parallel = Parallel::for_device(lm.device(), args.batch_size)?;
    let result = evaluate(
        &lm,
        &rows,
        args.batch_size,
        lm.pad_id(),
        args.loss_chunk,
        &parallel,
    )?;
    let record = json!({
        "eval": data.path,
        "model": args.model,
        "model_sha256": lm.model_sha256(),
        "adapter": args.adapter.as_ref().map(|p| p.display().to_string()),
        "examples": rep.examples - rep.dropped,
        "dropped": rep.dropped,
        "truncated": rep.truncated,
        "tokens": rep.tokens,
        "targets": result.targets,
        "loss": result.loss,
        "perplexity": result.perplexity,
    });
    let mut out = Output::create(args.run.output.as_deref())?;
    writeln!(out, "{record}")?;
    out.finish()
}
