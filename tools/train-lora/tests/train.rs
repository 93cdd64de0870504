//! End-to-end training runs of the real binary on tiny random models made by ftkit-model's fixtures.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use clap::Parser;
use ft_train_lora::shard::Parallel;
use ft_train_lora::train::evaluate;
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_testkit::{Outcome, Run, testdata};
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_ft-train-lora");

fn tiny(dir: &Path, spec: TinySpec) -> PathBuf {
    let model = dir.join("model");
    write_tiny_model(&model, &spec).unwrap();
    model
}

fn train(model: &Path, out: &Path, extra: &[&str]) -> Outcome {
    train_cmd(model, out, extra).run().expect_code(0)
}

fn train_cmd(model: &Path, out: &Path, extra: &[&str]) -> Run {
    train_cmd_on("cpu", model, out, extra)
}

fn train_cmd_on(device: &str, model: &Path, out: &Path, extra: &[&str]) -> Run {
    Run::new(BIN)
        .arg("--model")
        .arg(model)
        .arg("--train")
        .arg(testdata("train-lora", "train.jsonl"))
        .arg("--out-dir")
        .arg(out)
        .args([
            "--device",
            device,
            "--rank",
            "4",
            "--alpha",
            "8",
            "--batch-size",
            "4",
            "--max-seq-len",
            "256",
        ])
        .args(extra)
}

fn losses(out: &Outcome) -> Vec<(u64, f64)> {
    out.records()
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn loss_decreases_and_everything_is_written() {
    for spec in [TinySpec::qwen2(1), TinySpec::llama(2)] {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny(dir.path(), spec);
        let out = dir.path().join("out");
        let run = Run::new(BIN)
            .arg("--model")
            .arg(&model)
            .arg("--train")
            .arg(testdata("train-lora", "train.jsonl"))
            .arg("--val")
            .arg(testdata("train-lora", "val.jsonl"))
            .arg("--test")
            .arg(testdata("train-lora", "val.jsonl"))
            .arg("--out-dir")
            .arg(&out)
            .args([
                "--device",
                "cpu",
                "--rank",
                "8",
                "--alpha",
                "16",
                "--lr",
                "1e-2",
                "--max-steps",
                "40",
            ])
            .args([
                "--eval-every",
                "20",
                "--warmup-steps",
                "2",
                "--target",
                "all-linear",
            ])
            .run()
            .expect_code(0);
        let l = losses(&run);
        assert_eq!(l.len(), 40);
        let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
        let last: f64 = l[35..].iter().map(|x| x.1).sum::<f64>() / 5.0;
        assert!(last < first * 0.5, "loss {first} -> {last}");
        let evals: Vec<_> = run
            .records()
            .into_iter()
            .filter(|r| r.get("val_loss").is_some())
            .collect();
        assert_eq!(evals.len(), 2);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("training_report.json")).unwrap())
                .unwrap();
        assert_eq!(report["steps"], 40);
        assert_eq!(report["data"]["train"]["examples"], 18);
        assert!(
            report["val"]["loss"].as_f64().unwrap() < evals[0]["val_loss"].as_f64().unwrap() + 1e-9
        );
        assert!(report["test"]["perplexity"].as_f64().unwrap() > 1.0);
        assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
        // sha256sum testdata/train-lora/train.jsonl
        assert_eq!(
            report["data"]["train"]["sha256"],
            "6354908d65320a318a456e93663e8750bd97608ff400a711a9885454d521e4e3"
        );
        assert!(
            out.join("adapter_model.safetensors").exists()
                && out.join("adapter_config.json").exists()
        );
    }
}

/// Keys, shapes, dtype and config of the adapter, as PEFT writes them.
#[test]
fn adapter_layout_is_pefts() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(3));
    let out = dir.path().join("out");
    train(
        &model,
        &out,
        &["--max-steps", "1", "--target", "q_proj,v_proj,down_proj"],
    );
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut lines: Vec<String> = st
        .tensors()
        .iter()
        .map(|(k, v)| format!("{k} {:?} {:?}", v.dtype(), v.shape()))
        .collect();
    lines.sort();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    config["base_model_name_or_path"] = "<model>".into();
    let text = format!(
        "{}\n{}\n",
        lines.join("\n"),
        serde_json::to_string_pretty(&config).unwrap()
    );
    ftkit_testkit::golden::check(
        &testdata("train-lora", "adapter_layout.golden"),
        text.as_bytes(),
    );
}

#[test]
fn same_seed_same_adapter_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(4));
    let args = ["--max-steps", "3", "--dropout", "0.1", "--lr", "1e-2"];
    // RAYON_NUM_THREADS: the rows run as shards on worker pools sized from it (6 threads over 4
    // rows: pools of 2, 2, 1 and 1 threads) and the fused CPU kernels split work over each pool's
    // threads; the bytes must not depend on it.
    let bytes = |name: &str, seed: &str, threads: &str| {
        let out = dir.path().join(name);
        let mut a = args.to_vec();
        a.extend(["--seed", seed]);
        train_cmd(&model, &out, &a)
            .env("RAYON_NUM_THREADS", threads)
            .run()
            .expect_code(0);
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    };
    let a = bytes("a", "1", "2");
    assert_eq!(a, bytes("b", "1", "2"));
    assert_ne!(a, bytes("c", "2", "2"));
    for threads in ["1", "3", "6"] {
        let got = bytes(&format!("threads-{threads}"), "1", threads);
        assert_eq!(got, a, "RAYON_NUM_THREADS={threads}");
    }
}

const RESUME_ARGS: [&str; 10] = [
    "--max-steps",
    "6",
    "--save-every",
    "3",
    "--lr",
    "1e-2",
    "--grad-accum",
    "2",
    "--batch-size",
    "2",
];

/// Trains 6 steps on `device`, and again from the step-3 checkpoint: the resumed run's losses and
/// adapter bytes equal the uninterrupted run's. Returns the checkpoint.
fn resume_follows_the_uninterrupted_run(device: &str, model: &Path, dir: &Path) -> PathBuf {
    let full_dir = dir.join("full");
    let full = train_cmd_on(device, model, &full_dir, &RESUME_ARGS)
        .run()
        .expect_code(0);
    let resumed_dir = dir.join("resumed");
    let ck = full_dir.join("checkpoint-3");
    let mut args = RESUME_ARGS.to_vec();
    args.extend(["--resume", ck.to_str().unwrap()]);
    let resumed = train_cmd_on(device, model, &resumed_dir, &args)
        .run()
        .expect_code(0);
    assert_eq!(losses(&full)[3..].to_vec(), losses(&resumed));
    assert_eq!(losses(&resumed).first().map(|l| l.0), Some(4));
    assert_eq!(
        std::fs::read(full_dir.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed_dir.join("adapter_model.safetensors")).unwrap()
    );
    ck
}

#[test]
fn resumed_run_follows_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(5));
    let ck = resume_follows_the_uninterrupted_run("cpu", &model, dir.path());
    let ck_str = ck.to_str().unwrap();
    let mut args = RESUME_ARGS.to_vec();
    args.extend(["--resume", ck_str]);
    // Another configuration cannot resume from it.
    let out = Run::new(BIN)
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(testdata("train-lora", "train.jsonl"))
        .arg("--out-dir")
        .arg(dir.path().join("x"))
        .args([
            "--device",
            "cpu",
            "--max-steps",
            "6",
            "--lr",
            "5e-3",
            "--resume",
            ck_str,
        ])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("another configuration"),
        "{}",
        out.stderr
    );
    // Nor can the same flags once the folder holds another model (same shapes, other weights).
    write_tiny_model(&model, &TinySpec::qwen2(6)).unwrap();
    let out = train_cmd(&model, &dir.path().join("y"), &args).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("another configuration"),
        "{}",
        out.stderr
    );
}

/// The metrics lines (training steps and evaluations) after `step`, without their timings.
fn metrics_after(out: &Outcome, step: u64) -> Vec<serde_json::Value> {
    out.records()
        .into_iter()
        .filter(|r| r["step"].as_u64().unwrap() > step)
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("elapsed_s");
            r
        })
        .collect()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("training_report.json")).unwrap()).unwrap()
}

/// Early stopping keeps the adapter of the best evaluation; a run interrupted after that evaluation
/// and resumed must still end with it (the checkpoint carries it), exactly like the uninterrupted run.
#[test]
fn resumed_run_keeps_the_best_adapter_of_early_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(12));
    let val = testdata("train-lora", "val.jsonl");
    // A learning rate of 4 makes validation loss climb within a few steps whatever the kernels'
    // summation order (at 0.2, and later at 1, the stop depended on it; 2, 4 and 8 all stop).
    // Dropout and accumulation over a mid-epoch checkpoint make the resume exercise the data
    // position and the dropout masks.
    let common = [
        "--val",
        val.to_str().unwrap(),
        "--eval-every",
        "1",
        "--early-stop-patience",
        "3",
        "--max-steps",
        "16",
        "--save-every",
        "1",
        "--lr",
        "4",
        "--schedule",
        "constant",
        "--dropout",
        "0.1",
        "--grad-accum",
        "2",
        "--batch-size",
        "2",
    ];
    let full_dir = dir.path().join("full");
    let full = train(&model, &full_dir, &common);
    let rep = report(&full_dir);
    assert_eq!(rep["stopped_early"], true, "{rep}");
    let best = rep["best_step"].as_u64().unwrap();
    let stop = rep["steps"].as_u64().unwrap();
    assert_eq!(stop, best + 3, "{rep}");
    assert_eq!(rep["val"]["loss"], rep["best_val_loss"]);
    let adapter = |d: &Path| {
        (
            std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
            std::fs::read(d.join("adapter_config.json")).unwrap(),
        )
    };
    // The kept adapter is the best step's, not the last one's.
    assert_eq!(
        std::fs::read(full_dir.join(format!("checkpoint-{best}/adapter_model.safetensors")))
            .unwrap(),
        adapter(&full_dir).0
    );
    assert_ne!(
        std::fs::read(full_dir.join(format!("checkpoint-{stop}/adapter_model.safetensors")))
            .unwrap(),
        adapter(&full_dir).0
    );
    // Interrupted just after the best evaluation (the weights then move away from the best ones),
    // or at the update that triggered the stop.
    for at in [best + 1, stop] {
        let resumed_dir = dir.path().join(format!("resumed-{at}"));
        let ck = full_dir.join(format!("checkpoint-{at}"));
        let mut args = common.to_vec();
        args.extend(["--resume", ck.to_str().unwrap()]);
        let resumed = train(&model, &resumed_dir, &args);
        assert_eq!(
            metrics_after(&full, at),
            metrics_after(&resumed, 0),
            "from {at}"
        );
        assert_eq!(metrics_after(&resumed, 0).is_empty(), at == stop);
        assert!(adapter(&full_dir) == adapter(&resumed_dir), "from {at}");
        let again = report(&resumed_dir);
        for key in [
            "best_step",
            "best_val_loss",
            "stopped_early",
            "steps",
            "train",
            "val",
            "tokens_seen",
            "config_digest",
        ] {
            assert_eq!(rep[key], again[key], "{key} from {at}");
        }
    }
    // Early stopping is part of the configuration a resume must match.
    let ck = full_dir.join(format!("checkpoint-{}", best + 1));
    let mut args = common.to_vec();
    args.extend([
        "--resume",
        ck.to_str().unwrap(),
        "--early-stop-patience",
        "4",
    ]);
    let out = Run::new(BIN)
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(testdata("train-lora", "train.jsonl"))
        .arg("--out-dir")
        .arg(dir.path().join("x"))
        .args(["--device", "cpu", "--rank", "4", "--alpha", "8"])
        .args(["--max-seq-len", "256"])
        .args(args)
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("another configuration"),
        "{}",
        out.stderr
    );
}

#[test]
fn packing_trains() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(6));
    let out = dir.path().join("out");
    let run = train(
        &model,
        &out,
        &["--max-steps", "2", "--pack", "--max-seq-len", "128"],
    );
    assert_eq!(losses(&run).len(), 2);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("training_report.json")).unwrap()).unwrap();
    let rows = report["data"]["train"]["rows"].as_u64().unwrap();
    assert!(rows < 18, "{rows} rows: nothing was packed");
}

#[test]
fn truncation_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(7));
    let out = dir.path().join("out");
    let report = |run: &Outcome| -> serde_json::Value {
        assert!(run.stderr.contains("truncated"), "{}", run.stderr);
        serde_json::from_slice(&std::fs::read(out.join("training_report.json")).unwrap()).unwrap()
    };
    let full = report(&train(
        &model,
        &out,
        &["--max-steps", "1", "--max-seq-len", "4096"],
    ));
    assert_eq!(full["data"]["train"]["truncated"], 0);
    let longest = 100; // the toy examples are 88 to 105 tokens with the fixture tokenizer
    let cut = report(&train(
        &model,
        &out,
        &["--max-steps", "1", "--max-seq-len", &longest.to_string()],
    ));
    let t = &cut["data"]["train"];
    let truncated = t["truncated"].as_u64().unwrap();
    assert!(truncated > 0 && truncated < 18, "{t}");
    assert!(t["targets"].as_u64().unwrap() < full["data"]["train"]["targets"].as_u64().unwrap());
    // Cut inside the prompt: nothing left to learn from, a clear error.
    let run = Run::new(BIN)
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(testdata("train-lora", "train.jsonl"))
        .arg("--out-dir")
        .arg(dir.path().join("none"))
        .args(["--max-seq-len", "8", "--device", "cpu"])
        .run();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no example has a target token left"),
        "{}",
        run.stderr
    );
}

/// The tokens that carry loss are exactly the assistant's reply (and the template's end-of-turn mark).
#[test]
fn only_assistant_tokens_are_targets() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(8));
    let args = ft_train_lora::Args::try_parse_from([
        "ft-train-lora",
        "--model",
        model.to_str().unwrap(),
        "--train",
        "x",
        "--out-dir",
        "y",
        "--device",
        "cpu",
    ])
    .unwrap();
    let lm = ft_train_lora::lm::Lm::load(&args).unwrap();
    let msgs = vec![
        ft_train_lora::data::Message::new("user", "Count up from two."),
        ft_train_lora::data::Message::new("assistant", "two three four five"),
    ];
    let (ids, mask) = lm.encode(&msgs).unwrap();
    let e = ft_train_lora::batch::Encoded::new(ids.clone(), mask.clone(), false);
    let picked: Vec<u32> = ids
        .iter()
        .zip(&e.target)
        .filter(|(_, t)| **t)
        .map(|(i, _)| *i)
        .collect();
    let text = lm.tokenizer().decode(&picked, false).unwrap();
    assert!(text.starts_with("two three four five"), "{text:?}");
    assert!(
        text.len() < "two three four five".len() + 16,
        "prompt tokens among targets: {text:?}"
    );
    assert!(
        e.target.iter().filter(|t| !**t).count() > 5,
        "prompt tokens must carry no loss"
    );
    let all = ft_train_lora::batch::Encoded::new(ids, mask, true);
    assert_eq!(all.targets(), all.ids.len() - 1);
}

/// After a few updates every LoRA tensor (A and B of every targeted layer) has moved.
#[test]
fn every_lora_tensor_gets_a_gradient() {
    use ft_train_lora::train::{TrainModel, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(9));
    let train_path = testdata("train-lora", "train.jsonl");
    let args = ft_train_lora::Args::try_parse_from([
        "ft-train-lora",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train_path.to_str().unwrap(),
        "--out-dir",
        "unused",
        "--device",
        "cpu",
        "--target",
        "all-linear",
        "--dropout",
        "0.1",
    ])
    .unwrap();
    let lm = ft_train_lora::lm::Lm::load(&args).unwrap();
    let data = ft_train_lora::data::load(
        args.train.as_deref().unwrap(),
        ftkit_core::OnError::Fail,
        None,
    )
    .unwrap();
    let (rows, _) = ft_train_lora::job::encode_split(&lm, &data, &args, false).unwrap();
    let params = lm.trainable();
    assert_eq!(params.len(), 2 * 7 * 2, "A and B of 7 linears in 2 layers");
    let before: Vec<Vec<f32>> = params
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let cfg = ft_train_lora::train::LoopConfig {
        lr: 1e-2,
        schedule: ft_train_lora::optim::Schedule::Constant,
        warmup_steps: 0,
        epochs: 1,
        max_steps: Some(3),
        batch_size: 4,
        grad_accum: 1,
        max_grad_norm: 1.0,
        adamw: Default::default(),
        seed: 1,
        eval_every: 0,
        save_every: 0,
        log_every: 1,
        early_stop_patience: None,
        pad_id: lm.pad_id(),
        // Logits a few targets at a time: gradients reach every tensor through the chunked path too.
        loss_chunk: 5,
    };
    let mut t = Trainer::new(&lm, cfg, &rows, &[], "d".into()).unwrap();
    for _ in 0..3 {
        t.train_step().unwrap();
    }
    for ((name, v), old) in params.iter().zip(&before) {
        let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            now.iter().zip(old).any(|(a, b)| a != b),
            "{name} did not change"
        );
    }
}

/// Packed rows give the same loss as one example per row: no attention crosses an example boundary
/// and positions restart for every packed example.
#[test]
fn packing_does_not_leak_across_examples() {
    let dir = tempfile::tempdir().unwrap();
    for (i, spec) in [TinySpec::qwen2(10), TinySpec::llama(11)]
        .into_iter()
        .enumerate()
    {
        let model = dir.path().join(format!("m{i}"));
        write_tiny_model(&model, &spec).unwrap();
        let train_path = testdata("train-lora", "train.jsonl");
        let args = ft_train_lora::Args::try_parse_from([
            "ft-train-lora",
            "--model",
            model.to_str().unwrap(),
            "--train",
            train_path.to_str().unwrap(),
            "--out-dir",
            "unused",
            "--device",
            "cpu",
            "--max-seq-len",
            "512",
        ])
        .unwrap();
        let lm = ft_train_lora::lm::Lm::load(&args).unwrap();
        let data = ft_train_lora::data::load(
            args.train.as_deref().unwrap(),
            ftkit_core::OnError::Fail,
            None,
        )
        .unwrap();
        let (single, _) = ft_train_lora::job::encode_split(&lm, &data, &args, false).unwrap();
        let (packed, _) = ft_train_lora::job::encode_split(&lm, &data, &args, true).unwrap();
        assert!(
            packed.len() < single.len() / 2,
            "{} packed rows",
            packed.len()
        );
        // Padded 4-row batches on the calling thread (as on a GPU), one-row shards on workers.
        let batched = Parallel::Inline;
        let sharded = Parallel::for_device(&Device::Cpu, 4).unwrap();
        let a = evaluate(&lm, &single, 4, lm.pad_id(), 0, &batched).unwrap();
        for (rows, parallel) in [
            (&single, &sharded),
            (&packed, &batched),
            (&packed, &sharded),
        ] {
            let b = evaluate(&lm, rows, 2, lm.pad_id(), 7, parallel).unwrap();
            assert_eq!(a.targets, b.targets);
            assert!(
                (a.loss - b.loss).abs() < 1e-5,
                "unpacked batches {} vs {}",
                a.loss,
                b.loss
            );
        }
    }
}

/// A metrics reader that has gone away (`| head -1`, a `jq` that died) does not stop the run: the
/// adapter and the report are written, exit 0, one note on stderr.
#[test]
fn closed_metrics_pipe_keeps_training() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(11));
    let out = dir.path().join("out");
    let run = train_cmd(&model, &out, &["--max-steps", "2", "-q"]).run_closed_stdout();
    assert_eq!(run.code, 0, "{}", run.stderr);
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "training_report.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing; stderr: {}", run.stderr);
    }
    assert_eq!(report(&out)["steps"], 2);
    assert_eq!(
        run.stderr.matches("metrics reader closed its pipe").count(),
        1,
        "{}",
        run.stderr
    );
}

/// `--rejects` or a file of `--out-dir` naming a data file is refused before anything is written.
#[test]
fn outputs_naming_the_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(testdata("train-lora", "train.jsonl")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let plain = dir.path().join("train.jsonl");
    let inside = out.join("training_report.json");
    let model = dir.path().join("no-model");
    for (train, rejects, flag) in [
        (&plain, Some(&plain), "--rejects"),
        (&inside, None, "--out-dir"),
    ] {
        std::fs::write(train, &data).unwrap();
        let mut run = Run::new(BIN)
            .arg("--model")
            .arg(&model)
            .arg("--train")
            .arg(train)
            .arg("--out-dir")
            .arg(&out);
        if let Some(r) = rejects {
            run = run.arg("--rejects").arg(r);
        }
        let run = run.run();
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr.contains(flag) && run.stderr.contains("--train"),
            "{}",
            run.stderr
        );
        assert_eq!(std::fs::read(train).unwrap(), data);
    }
}

/// Numbers that cannot train are usage errors (exit 2) naming the flag.
#[test]
fn numbers_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(12));
    let hidden = TinySpec::qwen2(12).hidden_size;
    let above = (hidden + 1).to_string();
    for (flag, value) in [
        ("--alpha", "0"),
        ("--alpha", "-1"),
        ("--max-grad-norm", "-1"),
        ("--weight-decay", "-0.1"),
        ("--threads", "0"),
        ("--rank", above.as_str()),
    ] {
        // `--flag=-1`: clap would read a separate `-1` as a flag.
        let arg = format!("{flag}={value}");
        let run = train_cmd(&model, &dir.path().join("out"), &[&arg]).run();
        assert_eq!(run.code, 2, "{flag} {value}: {}", run.stderr);
        assert!(run.stderr.contains(flag), "{flag} {value}: {}", run.stderr);
    }
}

/// `--rejects` is replaced, atomically, like every tool's (it used to be appended to); `--threads`
/// sizes the pool; `-o` takes the metrics lines.
#[test]
fn rejects_threads_and_output_are_the_shared_flags() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(13));
    let mut data = std::fs::read(testdata("train-lora", "train.jsonl")).unwrap();
    data.extend_from_slice(b"not json\n");
    let train = dir.path().join("train.jsonl");
    std::fs::write(&train, &data).unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    std::fs::write(&rejects, "old\n").unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    for threads in ["1", "3"] {
        let out = dir.path().join(format!("out-{threads}"));
        let run = Run::new(BIN)
            .arg("--model")
            .arg(&model)
            .arg("--train")
            .arg(&train)
            .arg("--out-dir")
            .arg(&out)
            .args(["--device", "cpu", "--rank", "4", "--max-steps", "2"])
            .args([
                "--max-seq-len",
                "256",
                "--on-error",
                "skip",
                "--threads",
                threads,
            ])
            .arg("--rejects")
            .arg(&rejects)
            .arg("-o")
            .arg(&metrics)
            .run()
            .expect_code(0);
        assert!(run.stdout.is_empty(), "metrics went to stdout with -o");
        assert_eq!(std::fs::read_to_string(&rejects).unwrap(), "not json\n");
        let lines = std::fs::read_to_string(&metrics).unwrap();
        assert_eq!(lines.lines().filter(|l| l.contains("\"loss\"")).count(), 2);
        assert_eq!(report(&out)["threads"], threads.parse::<u64>().unwrap());
    }
}

/// scripts/check-peft-parity fails (exit 2, saying why) when its Python lacks torch/transformers/peft,
/// unless SKIP_MISSING=1; it used to exit 0, so a machine without them passed the check.
#[test]
fn peft_parity_script_fails_without_its_python() {
    let script = ftkit_testkit::workspace_root().join("scripts/check-peft-parity");
    let missing = Run::new(&script).env("PYTHON", "false").run();
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("SKIP_MISSING=1"),
        "{}",
        missing.stderr
    );
    let skipped = Run::new(&script)
        .env("PYTHON", "false")
        .env("SKIP_MISSING", "1")
        .run();
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    assert!(skipped.stderr.contains("skipped"), "{}", skipped.stderr);
}

/// A GGUF base (dequantized at load) trains like the safetensors model it was converted from: same
/// losses step for step, an adapter whose base_model_name_or_path is the path given.
#[test]
fn trains_on_a_gguf_base() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(12));
    let gguf = dir.path().join("tiny.gguf");
    ftkit_model::gguf::fixtures::write_tiny_gguf(&model, &gguf, GgmlDType::F32, None).unwrap();
    let steps = ["--max-steps", "2", "--target", "all-linear"];
    let from_st = train(&model, &dir.path().join("st"), &steps);
    let out = dir.path().join("gguf");
    let from_gguf = train(&gguf, &out, &steps);
    let (a, b) = (losses(&from_st), losses(&from_gguf));
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!((la - lb).abs() < 1e-4, "step {sa}: {la} vs {lb}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["base_model_name_or_path"],
        gguf.display().to_string().as_str()
    );
    assert!(out.join("adapter_model.safetensors").is_file());
}

fn eval_cmd(model: &Path, file: &Path, extra: &[&str]) -> Run {
    Run::new(BIN)
        .arg("--model")
        .arg(model)
        .arg("--eval")
        .arg(file)
        .args(["--device", "cpu", "--max-seq-len", "256"])
        .args(extra)
}

/// The one record `--eval` prints.
fn evaluated(run: Run) -> serde_json::Value {
    let records = run.run().expect_code(0).records();
    assert_eq!(records.len(), 1, "{records:?}");
    records[0].clone()
}

fn loss_of(r: &serde_json::Value) -> f64 {
    r["loss"].as_f64().unwrap()
}

#[test]
fn eval_of_the_base_is_the_first_updates_loss() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(31));
    let data = testdata("train-lora", "train.jsonl");
    // One update over every example at once: its loss is taken before LoRA (B = 0) changes anything.
    let first = train(
        &model,
        &dir.path().join("out"),
        &["--max-steps", "1", "--batch-size", "64"],
    );
    let (step, trained) = losses(&first)[0];
    assert_eq!(step, 1);
    let r = evaluated(eval_cmd(&model, &data, &[]));
    assert!((loss_of(&r) - trained).abs() < 1e-5, "{r} vs {trained}");
    assert_eq!(r["perplexity"].as_f64().unwrap(), loss_of(&r).exp());
    assert_eq!(r["adapter"], serde_json::Value::Null);
    let lines = std::fs::read_to_string(&data).unwrap().lines().count();
    assert_eq!(r["examples"].as_u64(), Some(lines as u64), "{r}");
    assert_eq!(r["dropped"].as_u64(), Some(0), "{r}");
    // Another thread count, the same bytes.
    let again = evaluated(eval_cmd(&model, &data, &["--threads", "1"]));
    assert_eq!(again, r);
}

#[test]
fn eval_with_the_adapter_is_the_reports_test_loss_and_lower() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(32));
    let data = testdata("train-lora", "val.jsonl");
    let out = dir.path().join("out");
    let test = data.to_str().unwrap();
    train(
        &model,
        &out,
        &["--test", test, "--max-steps", "12", "--lr", "1e-2"],
    );
    let reported = report(&out)["test"]["loss"].as_f64().unwrap();
    let tuned = evaluated(eval_cmd(&model, &data, &[]).arg("--adapter").arg(&out));
    assert!(
        (loss_of(&tuned) - reported).abs() < 1e-5,
        "{tuned} vs {reported}"
    );
    assert_eq!(tuned["adapter"], out.display().to_string().as_str());
    let base = evaluated(eval_cmd(&model, &data, &[]));
    assert!(loss_of(&tuned) < loss_of(&base), "{tuned} vs {base}");
    assert_eq!(tuned["targets"], base["targets"]);
    assert!(base["targets"].as_u64().unwrap() > 0);
}

#[test]
fn eval_of_a_gguf_base_is_its_sources() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(33));
    let gguf = dir.path().join("tiny.gguf");
    ftkit_model::gguf::fixtures::write_tiny_gguf(&model, &gguf, GgmlDType::F32, None).unwrap();
    let data = testdata("train-lora", "val.jsonl");
    let (st, gg) = (
        evaluated(eval_cmd(&model, &data, &[])),
        evaluated(eval_cmd(&gguf, &data, &[])),
    );
    assert!((loss_of(&st) - loss_of(&gg)).abs() < 1e-4, "{st} vs {gg}");
    assert_eq!(st["targets"], gg["targets"]);
}

#[test]
fn eval_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(34));
    let data = testdata("train-lora", "val.jsonl");
    let missing = dir.path().join("missing.jsonl");
    let r = eval_cmd(&model, &missing, &[]).run();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("missing.jsonl"), "{}", r.stderr);
    let r = eval_cmd(&model, &data, &[])
        .arg("--adapter")
        .arg(dir.path().join("no-adapter"))
        .run();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no-adapter"), "{}", r.stderr);
    // Training flags with --eval, --adapter without it, and neither --train nor --eval: usage errors.
    let both = eval_cmd(&model, &data, &[]).arg("--train").arg(&data).run();
    assert_eq!(both.code, 2, "{}", both.stderr);
    let adapter_alone = train_cmd(&model, &dir.path().join("o"), &["--adapter", "x"]).run();
    assert_eq!(adapter_alone.code, 2, "{}", adapter_alone.stderr);
    let nothing = Run::new(BIN).arg("--model").arg(&model).run();
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(nothing.stderr.contains("--train"), "{}", nothing.stderr);
}

// GPU-only tests (`gpu_` names, ignored): run on a CUDA machine with
// `cargo test --workspace --features ft-train-lora/cuda -- --ignored gpu_` (scripts/check-gpu).

#[test]
#[ignore = "needs a CUDA device and --features cuda"]
fn gpu_same_seed_same_adapter_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(4));
    let bytes = |name: &str, seed: &str, dtype: &str| {
        let out = dir.path().join(name);
        let args = ["--max-steps", "3", "--dropout", "0.1", "--lr", "1e-2"];
        let mut a = args.to_vec();
        a.extend(["--seed", seed, "--dtype", dtype]);
        let run = train_cmd_on("cuda", &model, &out, &a).run().expect_code(0);
        let report = report(&out);
        assert!(
            report.to_string().contains("cuda"),
            "not on the GPU: {report} {}",
            run.stderr
        );
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    };
    for dtype in ["f32", "bf16"] {
        let a = bytes(&format!("a-{dtype}"), "1", dtype);
        assert_eq!(a, bytes(&format!("b-{dtype}"), "1", dtype), "{dtype}");
        assert_ne!(a, bytes(&format!("c-{dtype}"), "2", dtype), "{dtype}");
    }
}

#[test]
#[ignore = "needs a CUDA device and --features cuda"]
fn gpu_resumed_run_follows_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(5));
    resume_follows_the_uninterrupted_run("cuda", &model, dir.path());
}

#[test]
#[ignore = "needs a CUDA device and --features cuda"]
fn gpu_training_follows_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(7));
    let args = ["--max-steps", "5", "--lr", "1e-2", "--dtype", "f32"];
    let cpu = train_cmd_on("cpu", &model, &dir.path().join("cpu"), &args)
        .run()
        .expect_code(0);
    let gpu = train_cmd_on("cuda", &model, &dir.path().join("gpu"), &args)
        .run()
        .expect_code(0);
    let (cpu, gpu) = (losses(&cpu), losses(&gpu));
    assert_eq!(cpu.len(), 5);
    assert!(cpu.last().unwrap().1 < cpu[0].1, "{cpu:?}");
    for ((step, a), (_, b)) in cpu.iter().zip(&gpu) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "step {step}: cpu {a} vs cuda {b}"
        );
    }
}

/// `training_report.json`'s `base_weights`.
fn base_weights(out: &Path) -> serde_json::Value {
    report(out)["base_weights"].clone()
}

/// QLoRA: the loss falls with every block format, and the frozen matrices take what the format
/// says (Q8_0 8.5 bits a weight, the 4-bit ones 4.5; NF4 with double quantization ~4.13).
#[test]
fn qlora_lowers_the_loss_with_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(21));
    let plain = dir.path().join("f32");
    train(&model, &plain, &["--max-steps", "1"]);
    let f32_bytes = base_weights(&plain)["bytes"].as_u64().unwrap();
    assert_eq!(base_weights(&plain)["quantize"], serde_json::Value::Null);
    for (quant, formats, most) in [
        (&["q8_0"][..], &["q8_0"][..], 0.27),
        (&["q4_0"], &["q4_0", "q8_0"], 0.27),
        // Rows of 64 and 128 weights are no whole 256-blocks: Q5_0, as llama-quantize falls back.
        (&["q4_k"], &["q5_0", "q8_0"], 0.27),
        (&["nf4"], &["nf4", "q8_0"], 0.27),
        (&["nf4", "--double-quant"], &["nf4+dq", "q8_0"], 0.27),
    ] {
        let what = quant.join(" ");
        let out = dir.path().join(what.replace(' ', "_"));
        let mut args = vec!["--quantize"];
        args.extend(quant);
        args.extend([
            "--max-steps",
            "30",
            "--lr",
            "1e-2",
            "--target",
            "all-linear",
        ]);
        let run = train(&model, &out, &args);
        let l = losses(&run);
        let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
        let last: f64 = l[25..].iter().map(|x| x.1).sum::<f64>() / 5.0;
        assert!(last < first * 0.6, "{what}: loss {first} -> {last}");
        let b = base_weights(&out);
        assert_eq!(b["f32_bytes"].as_u64().unwrap(), f32_bytes, "{what}");
        let share = b["bytes"].as_f64().unwrap() / f32_bytes as f64;
        assert!(share < most, "{what}: {share}");
        let got: Vec<&str> = b["formats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(got, formats, "{what}");
        assert!(run.stderr.contains("base weights quantized"), "{what}");
        // The adapter is a plain PEFT adapter whatever the base's format.
        assert!(out.join("adapter_model.safetensors").is_file());
    }
}

/// `--quantize keep` trains on a GGUF's own blocks: the same losses as the same file dequantized
/// to f32 (the same weights; only the tile-by-tile order of the sums differs), at a fraction of
/// the memory.
#[test]
fn quantize_keep_trains_on_a_gguf_base_s_own_blocks() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(22));
    for (qtype, name) in [(GgmlDType::Q8_0, "q8_0"), (GgmlDType::Q4_0, "q4_0")] {
        let gguf = dir.path().join(format!("tiny-{name}.gguf"));
        ftkit_model::gguf::fixtures::write_tiny_gguf(&model, &gguf, qtype, None).unwrap();
        let steps = ["--max-steps", "3", "--lr", "1e-2", "--target", "all-linear"];
        let dequantized = train(&gguf, &dir.path().join(format!("f32-{name}")), &steps);
        let out = dir.path().join(format!("keep-{name}"));
        let mut args = steps.to_vec();
        args.extend(["--quantize", "keep"]);
        let kept = train(&gguf, &out, &args);
        let (a, b) = (losses(&dequantized), losses(&kept));
        assert_eq!(a.len(), 3);
        for ((_, la), (_, lb)) in a.iter().zip(&b) {
            assert!((la - lb).abs() < 1e-4, "{name}: {la} vs {lb}");
        }
        let formats = base_weights(&out)["formats"].clone();
        assert!(
            formats.as_array().unwrap().iter().any(|f| f == name),
            "{name}: {formats}"
        );
        assert_eq!(base_weights(&out)["quantize"], "keep");
    }
    // A safetensors base has no blocks to keep.
    let run = train_cmd(&model, &dir.path().join("no"), &["--quantize", "keep"]).run();
    assert!(run.expect_code(1).stderr.contains("not a GGUF"));
}

#[test]
fn qlora_same_seed_same_adapter_bytes_whatever_the_threads() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::qwen2(23));
    let bytes = |name: &str, threads: &str| {
        let out = dir.path().join(name);
        let args = ["--max-steps", "3", "--dropout", "0.1", "--lr", "1e-2"];
        let mut a = args.to_vec();
        a.extend([
            "--quantize",
            "nf4",
            "--double-quant",
            "--target",
            "all-linear",
        ]);
        train_cmd(&model, &out, &a)
            .env("RAYON_NUM_THREADS", threads)
            .run()
            .expect_code(0);
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    };
    let a = bytes("a", "2");
    for threads in ["1", "3"] {
        assert_eq!(
            bytes(&format!("t{threads}"), threads),
            a,
            "{threads} threads"
        );
    }
}

#[test]
fn quantize_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("absent");
    let out = dir.path().join("out");
    for (args, says) in [
        (&["--quantize", "q5_k"][..], "unknown quantization"),
        (
            &["--quantize", "q4_0", "--double-quant"],
            "--double-quant goes with",
        ),
        (&["--double-quant"], "--double-quant goes with"),
    ] {
        let run = train_cmd(&model, &out, args).run().expect_code(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}

/// Gradient checkpointing recomputes each layer in the backward pass: the same gradients, so the
/// same adapter bytes, plain or quantized, packed (block-diagonal mask) or not.
#[test]
fn gradient_checkpointing_gives_the_same_adapter_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), TinySpec::llama(24));
    let bytes = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = vec!["--max-steps", "3", "--dropout", "0.1", "--lr", "1e-2"];
        a.extend(extra);
        let run = train(&model, &out, &a);
        (
            losses(&run),
            std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        )
    };
    for (name, extra) in [
        ("plain", &[][..]),
        ("mlp", &["--target", "all-linear"][..]),
        ("packed", &["--pack"][..]),
        ("nf4", &["--quantize", "nf4"][..]),
    ] {
        let a = bytes(name, extra);
        let mut with = extra.to_vec();
        with.push("--gradient-checkpointing");
        let b = bytes(&format!("{name}-gc"), &with);
        assert_eq!(a.0, b.0, "{name}: losses");
        assert!(a.1 == b.1, "{name}: adapter bytes differ");
    }
    // The flag reaches the forward: its kernels are the CPU f32 ones, and say so.
    let args = [
        "--max-steps",
        "1",
        "--dtype",
        "bf16",
        "--gradient-checkpointing",
    ];
    let run = train_cmd(&model, &dir.path().join("bf16"), &args).run();
    assert!(
        run.expect_code(1)
            .stderr
            .contains("checkpointing runs on the CPU in f32")
    );
}
