//! One training run: tokenise the splits, train, evaluate, write the adapter and the report.

use crate::Args;
use crate::batch::{Encoded, Row, make_rows};
use crate::data::Dataset;
use crate::lm::Lm;
use crate::optim::AdamWConfig;
use crate::report::{DataReport, Report, Split, StdoutSink, peak_memory_bytes};
use crate::train::{LoopConfig, TrainModel, Trainer, evaluate};
use anyhow::{Context, Result};
use ftkit_core::io::{AtomicDir, Output};
use std::collections::BTreeMap;
use std::path::Path;

const REPORT_FILE: &str = "training_report.json";

/// The files a run writes into `--out-dir` (besides checkpoint folders).
pub const OUTPUT_FILES: [&str; 3] = [
    ftkit_model::peft::CONFIG_FILE,
    ftkit_model::peft::WEIGHTS_FILE,
    REPORT_FILE,
];

/// Tokenises a split with the model's chat template, cuts to `--max-seq-len`, drops examples left
/// without a target, and makes rows.
pub fn encode_split(
    lm: &Lm,
    data: &Dataset,
    args: &Args,
    pack: bool,
) -> Result<(Vec<Row>, DataReport)> {
    let mut rep = DataReport {
        path: data.path.clone(),
        sha256: data.sha256.clone(),
        examples: data.examples.len(),
        rejected: data.rejected,
        ..Default::default()
    };
    let mut kept = Vec::with_capacity(data.examples.len());
    for (i, messages) in data.examples.iter().enumerate() {
        let (ids, assistant) = lm.encode(messages).with_context(|| {
            format!(
                "{}: example {}: cannot apply the chat template",
                data.path,
                i + 1
            )
        })?;
        let mut e = Encoded::new(ids, assistant, args.train_on_prompt);
        if e.truncate(args.max_seq_len) {
            rep.truncated += 1;
        }
        if e.targets() == 0 {
            rep.dropped += 1;
            continue;
        }
        rep.tokens += e.ids.len() as u64;
        rep.targets += e.targets() as u64;
        kept.push(e);
    }
    let rows = make_rows(&kept, args.max_seq_len, pack);
    rep.rows = rows.len();
    Ok((rows, rep))
}

/// The settings that shape the trajectory, hashed into the config digest (a resume must match it).
fn config_json(
    args: &Args,
    lm: &Lm,
    loop_cfg: &LoopConfig,
    data: &BTreeMap<String, DataReport>,
) -> serde_json::Value {
    let digests: BTreeMap<&String, &String> = data.iter().map(|(k, d)| (k, &d.sha256)).collect();
    let mut json = serde_json::json!({
        "model": args.model,
        "model_sha256": lm.model_sha256(),
        "dtype": lm.dtype_name(),
        "target": args.target,
        "rank": args.rank,
        "alpha": args.alpha,
        "dropout": args.dropout,
        "rslora": args.rslora,
        "max_seq_len": args.max_seq_len,
        "pack": args.pack,
        "train_on_prompt": args.train_on_prompt,
        "loop": loop_cfg,
        "data_sha256": digests,
    });
    // Added only when set: runs without it keep their digest.
    if let Some(q) = args.base_quant() {
        json["quantize"] = q.name().into();
    }
    // Early stopping decides where the run ends and which adapter it keeps, and the evaluation cadence
    // decides when it looks: a resume must use the same. (Only added when on, so that runs without
    // early stopping keep their digest whatever --eval-every says.)
    if let Some(patience) = args.early_stop_patience {
        json["early_stop"] = serde_json::json!({
            "patience": patience,
            "eval_every": args.eval_every,
        });
    }
    json
}

/// Trains and writes everything into `--out-dir`.
pub fn train(
    args: &Args,
    out_dir: &Path,
    train: Dataset,
    val: Option<Dataset>,
    test: Option<Dataset>,
) -> Result<()> {
    let note = |m: &str| {
        if !args.run.quiet {
            ftkit_core::cli::warn(m);
        }
    };
    let lm = Lm::load(args)?;
    note(&format!(
        "{} ({}) on {} in {}: {} trainable parameters",
        args.model,
        lm.architecture(),
        lm.device_name(),
        lm.dtype_name(),
        lm.trainable_parameters()
    ));
    let base_weights = lm.base_weights(args.base_quant());
    if let Some(q) = args.base_quant() {
        let m = &base_weights.matrices;
        note(&format!(
            "base weights quantized ({}): {:.1} MiB, {:.2}x their f32 size, as {}",
            q.name(),
            m.bytes as f64 / (1 << 20) as f64,
            m.bytes as f64 / m.f32_bytes.max(1) as f64,
            m.formats.join(", ")
        ));
    }

    let mut data = BTreeMap::new();
    let (train_rows, rep) = encode_split(&lm, &train, args, args.pack)?;
    {
        let r = &rep;
        note(&format!(
            "train: {} examples, {} rows, {} tokens, {} targets, {} truncated to {}, {} dropped",
            r.examples, r.rows, r.tokens, r.targets, r.truncated, args.max_seq_len, r.dropped
        ));
    }
    data.insert("train".to_string(), rep);
    if train_rows.is_empty() {
        anyhow::bail!(
            "{}: no example has a target token left after --max-seq-len {}",
            train.path,
            args.max_seq_len
        );
    }
    let mut val_rows = Vec::new();
    if let Some(v) = &val {
        let (rows, rep) = encode_split(&lm, v, args, false)?;
        val_rows = rows;
        data.insert("val".to_string(), rep);
    }
    let mut test_rows = Vec::new();
    if let Some(t) = &test {
        let (rows, rep) = encode_split(&lm, t, args, false)?;
        test_rows = rows;
        data.insert("test".to_string(), rep);
    }

    let mut loop_cfg = LoopConfig {
        lr: args.lr,
        schedule: args.schedule,
        warmup_steps: 0,
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..Default::default()
        },
        seed: args.seed,
        eval_every: args.eval_every,
        save_every: args.save_every,
        log_every: args.log_every,
        early_stop_patience: args.early_stop_patience,
        pad_id: lm.pad_id(),
        loss_chunk: args.loss_chunk,
    };
    let digest_of = |cfg: &LoopConfig| -> (serde_json::Value, String) {
        let json = config_json(args, &lm, cfg, &data);
        let digest = ftkit_core::id::sha256_hex(json.to_string().as_bytes());
        (json, digest)
    };
    let (_, provisional) = digest_of(&loop_cfg);
    let mut trainer = Trainer::new(&lm, loop_cfg.clone(), &train_rows, &val_rows, provisional)?;
    let total = trainer.total_steps();
    loop_cfg.warmup_steps = match (args.warmup_steps, args.warmup_ratio) {
        (Some(n), _) => n,
        (None, Some(r)) => (r * total as f64).ceil() as u64,
        (None, None) => 0,
    };
    let (config, digest) = digest_of(&loop_cfg);
    trainer.config = loop_cfg;
    trainer.state.config_digest = digest.clone();
    trainer.out_dir = Some(out_dir.to_path_buf());
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create", out_dir.display()))?;
    if let Some(dir) = &args.resume {
        trainer.resume(dir)?;
        note(&format!(
            "resumed from {} at step {}",
            dir.display(),
            trainer.state.step
        ));
    }
    note(&format!(
        "training {} updates ({} per epoch)",
        total,
        trainer.steps_per_epoch()
    ));

    let metrics = Output::create(args.run.output.as_deref())?;
    let mut sink = StdoutSink::new(metrics, args.run.quiet);
    let start_tokens = trainer.state.tokens;
    let outcome = trainer.run(&mut sink)?;
    if let Some(best) = trainer.best.take() {
        trainer.restore(&best)?;
        note(&format!(
            "kept the adapter of step {} (best validation loss)",
            outcome.state.best_step.unwrap_or(0)
        ));
    }

    let loss_on = |rows: &[Row]| -> Result<f64> {
        Ok(evaluate(
            &lm,
            rows,
            args.batch_size,
            lm.pad_id(),
            args.loss_chunk,
            &trainer.parallel,
        )?
        .loss)
    };
    let val_result = if val_rows.is_empty() {
        None
    } else if outcome.state.best_step.is_some() && args.early_stop_patience.is_some() {
        outcome.state.best_val
    } else {
        Some(loss_on(&val_rows)?)
    };
    let test_result = if test_rows.is_empty() {
        None
    } else {
        Some(loss_on(&test_rows)?)
    };

    save_adapter_atomically(&lm, out_dir)?;
    let s = &outcome.state;
    let report = Report {
        tool: "ft-train-lora".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: args.model.clone(),
        architecture: lm.architecture(),
        device: lm.device_name(),
        dtype: lm.dtype_name(),
        base_weights,
        seed: args.seed,
        config_digest: digest,
        config,
        data,
        trainable_parameters: lm.trainable_parameters(),
        steps: s.step,
        total_steps: total,
        epochs: s.epoch as f64 + s.micro as f64 / trainer.micro_per_epoch().max(1) as f64,
        stopped_early: outcome.stopped_early,
        best_step: s.best_step,
        best_val_loss: s.best_val,
        resumed_from: args.resume.as_ref().map(|p| p.display().to_string()),
        train: Split::of((s.targets > 0).then(|| s.loss_sum / s.targets as f64)),
        val: Split::of(val_result),
        test: Split::of(test_result),
        tokens_seen: s.tokens,
        targets_seen: s.targets,
        wall_time_s: s.elapsed_s,
        tokens_per_s: if outcome.wall_s > 0.0 {
            (s.tokens - start_tokens) as f64 / outcome.wall_s
        } else {
            0.0
        },
        peak_memory_bytes: peak_memory_bytes(),
        threads: rayon::current_num_threads(),
    };
    let mut bytes = serde_json::to_vec_pretty(&report)?;
    bytes.push(b'\n');
    ftkit_core::io::write_atomic(&out_dir.join(REPORT_FILE), &bytes)?;
    sink.finish()?;
    note(&format!(
        "wrote {} (train loss {}, val loss {}, test loss {})",
        out_dir.display(),
        fmt_loss(report.train.loss),
        fmt_loss(report.val.loss),
        fmt_loss(report.test.loss)
    ));
    Ok(())
}

fn fmt_loss(l: Option<f64>) -> String {
    l.map_or("-".into(), |l| format!("{l:.4}"))
}

/// Writes the adapter files into a temporary folder inside `out`, then renames each into place.
fn save_adapter_atomically(lm: &Lm, out: &Path) -> Result<()> {
    let tmp = AtomicDir::create(&out.join("adapter"))?;
    lm.save_adapter(tmp.path())?;
    tmp.commit_into(out)
}
