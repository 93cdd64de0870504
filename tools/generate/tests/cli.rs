#![allow(clippy::unwrap_used, clippy::print_stdout)]

use clap::CommandFactory;
use ftkit_llm::testing::{ServerConfig, TestServer};
use ftkit_model::fixtures::{TinySpec, random_normal, write_tiny_model};
use ftkit_model::lora::LoraConfig;
use ftkit_model::peft::{AdapterConfig, save_adapter};
use ftkit_testkit::{Run, contract::Contract, independent_id, testdata};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ft-generate");

fn prompts() -> Vec<u8> {
    std::fs::read(testdata("generate", "prompts.jsonl")).unwrap()
}

fn server() -> TestServer {
    TestServer::start(ServerConfig::default()).unwrap()
}

fn openai_args(server: &TestServer) -> Vec<String> {
    [
        "--backend",
        "openai",
        "--base-url",
        server.url(),
        "--model",
        "test-model",
        "--no-cache",
    ]
    .map(String::from)
    .to_vec()
}

/// SHA-256 by coreutils, not by the crate under test.
fn sha256sum(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The messages JSON as the request carries it, written by hand (role before content).
fn messages_json(turns: &[(&str, &str)]) -> String {
    let parts: Vec<String> = turns
        .iter()
        .map(|(r, c)| format!("{{\"role\":{},\"content\":{}}}", json!(r), json!(c)))
        .collect();
    format!("[{}]", parts.join(","))
}

#[test]
fn every_input_shape_is_answered_without_its_answer() {
    let server = server();
    let out = Run::new(BIN)
        .args(openai_args(&server))
        .stdin(prompts())
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 4, "{}", out.stderr);
    // The test server answers "Reply <hash> to: <last user message>. The end."
    let expect = [
        ("prompt", "Name the capital of France."),
        ("messages", "What is 2 + 2?"),
        ("alpaca", "Translate to German\n\ngood morning"),
        ("sharegpt", "Tell me a fact about owls"),
    ];
    for (r, (format, last_user)) in recs.iter().zip(expect) {
        let c = r["completion"].as_str().unwrap();
        assert!(
            c.starts_with("Reply ") && c.ends_with(&format!(" to: {last_user}. The end.")),
            "{r}"
        );
        assert_eq!(r["gen"]["format"], format, "{r}");
        assert_eq!(r["gen"]["backend"], "openai");
        assert_eq!(r["gen"]["model"], "test-model");
        assert_eq!(r["gen"]["finish_reason"], "stop");
        assert_eq!(
            r["gen"]["params"]["response_format"], "none",
            "free text: no JSON mode"
        );
        assert!(
            r["gen"]["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{r}"
        );
    }
    // The answers were not sent: the prompts the server saw are exactly these conversations.
    let sent = [
        messages_json(&[("user", "Name the capital of France.")]),
        messages_json(&[("system", "Answer briefly."), ("user", "What is 2 + 2?")]),
        messages_json(&[("user", "Translate to German\n\ngood morning")]),
        messages_json(&[
            ("user", "Hi there"),
            ("assistant", "Hello!"),
            ("user", "Tell me a fact about owls"),
        ]),
    ];
    for (r, messages) in recs.iter().zip(&sent) {
        assert_eq!(
            r["gen"]["prompt_sha256"],
            sha256sum(messages.as_bytes()).as_str(),
            "{r}"
        );
    }
}

#[test]
fn lineage_and_unknown_fields_pass_through_with_a_content_id() {
    let server = server();
    let out = Run::new(BIN)
        .args(openai_args(&server))
        .stdin(prompts())
        .run()
        .expect_code(0);
    let input: Vec<Value> = String::from_utf8(prompts())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (r, i) in out.records().iter().zip(&input) {
        for (k, v) in i.as_object().unwrap() {
            assert_eq!(&r[k], v, "field {k} must pass through unchanged: {r}");
        }
        let id = independent_id(&[
            r["gen"]["prompt_sha256"].as_str().unwrap(),
            "test-model",
            r["completion"].as_str().unwrap(),
        ]);
        assert_eq!(r["gen_id"], id.as_str(), "{r}");
    }
    // The reference answer stays for comparison.
    assert_eq!(out.records()[2]["output"], "guten Morgen");
}

#[test]
fn stop_strings_and_the_token_limit_are_sent() {
    let server = server();
    let out = Run::new(BIN)
        .args(openai_args(&server))
        .args([
            "--stop",
            " to:",
            "--stop",
            "never-there",
            "--top-p",
            "0.9",
            "--top-k",
            "40",
        ])
        .stdin(r#"{"prompt":"hello"}"#)
        .run()
        .expect_code(0);
    let r = &out.records()[0];
    // The server cut its reply before the stop string: it received it.
    let c = r["completion"].as_str().unwrap();
    assert!(
        c.starts_with("Reply ") && !c.contains("to:") && c.len() == "Reply 0000".len(),
        "{r}"
    );
    assert_eq!(r["gen"]["finish_reason"], "stop");
    assert_eq!(r["gen"]["params"]["stop"], json!([" to:", "never-there"]));
    assert_eq!(r["gen"]["params"]["top_k"], 40);
    let out = Run::new(BIN)
        .args(openai_args(&server))
        .args(["--max-new-tokens", "2"])
        .stdin(r#"{"prompt":"hello"}"#)
        .run()
        .expect_code(0);
    let r = &out.records()[0];
    assert_eq!(r["completion"].as_str().unwrap().chars().count(), 8, "{r}");
    assert_eq!(r["gen"]["finish_reason"], "length");
    assert!(
        out.stderr.contains("(1 cut at --max-tokens)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_bad_record_is_reported_with_path_and_line() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\":\"one\"}\n{\"text\":\"no prompt here\"}\n{\"prompt\":\"three\"}\n",
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let out = Run::new(BIN).args(openai_args(&server)).arg(input).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("{input}:2")), "{}", out.stderr);
    assert!(out.stderr.contains("unrecognised record"), "{}", out.stderr);
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .args(openai_args(&server))
        .args([
            "--on-error",
            "skip",
            "--rejects",
            rejects.to_str().unwrap(),
            input,
        ])
        .run()
        .expect_code(0);
    let done: Vec<_> = out.records().iter().map(|r| r["prompt"].clone()).collect();
    assert_eq!(done, [json!("one"), json!("three")]);
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert!(rejected.contains("no prompt here"), "{rejected}");
}

#[test]
fn same_input_same_bytes_and_a_rerun_replays_from_the_cache() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = || {
        Run::new(BIN)
            .args([
                "--base-url",
                server.url(),
                "--model",
                "test-model",
                "--concurrency",
                "3",
            ])
            .args(["--cache", cache.to_str().unwrap()])
            .stdin(prompts())
            .run()
            .expect_code(0)
    };
    let first = run();
    let hits = server.hits();
    assert_eq!(hits, 4);
    let second = run();
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(
        server.hits(),
        hits,
        "a rerun sends nothing: {}",
        second.stderr
    );
    let fresh = Run::new(BIN)
        .args(openai_args(&server))
        .stdin(prompts())
        .run()
        .expect_code(0);
    assert_eq!(first.stdout, fresh.stdout, "the cache changes nothing");
}

#[test]
fn local_backend_and_no_model_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("m.gguf");
    let out = Run::new(BIN)
        .args(["--backend", "local", "--model"])
        .arg(&missing)
        .stdin(prompts())
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("m.gguf"), "{}", out.stderr);
    // An adapter means the local backend: an empty folder is no adapter.
    let model = tiny_model(dir.path());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = Run::new(BIN)
        .arg("--adapter")
        .arg(&empty)
        .arg("--model")
        .arg(&model)
        .stdin(prompts())
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("adapter_config.json"), "{}", out.stderr);
    let out = Run::new(BIN)
        .env("MODEL", "")
        .env("BASE_URL", "")
        .env("OPENAI_BASE_URL", "")
        .stdin(prompts())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no model named"), "{}", out.stderr);
    let out = Run::new(BIN)
        .args([
            "--backend",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ])
        .arg("--adapter")
        .arg(&empty)
        .stdin(prompts())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--adapter needs the local backend"),
        "{}",
        out.stderr
    );
}

#[test]
fn contract() {
    let server = server();
    let args = openai_args(&server);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Contract {
        bin: BIN,
        args: &args,
        input: &prompts(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_generate::Args::command());
}

/// A tiny random chat model (ChatML) in `dir/tiny`.
fn tiny_model(dir: &std::path::Path) -> std::path::PathBuf {
    let model = dir.join("tiny");
    write_tiny_model(&model, &TinySpec::qwen2(9)).unwrap();
    model
}

/// A PEFT adapter on the tiny model's q_proj layers, with random (non-zero) B so it changes the
/// model's output.
fn tiny_adapter(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("adapter");
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: vec!["q_proj".into()],
        seed: 0,
    };
    let mut tensors = Vec::new();
    for layer in 0..2 {
        let p = format!("base_model.model.model.layers.{layer}.self_attn.q_proj");
        let a = random_normal(&format!("{p}/a"), &[4, 64], 1, 0.5).unwrap();
        let b = random_normal(&format!("{p}/b"), &[64, 4], 1, 0.5).unwrap();
        tensors.push((format!("{p}.lora_A.weight"), a));
        tensors.push((format!("{p}.lora_B.weight"), b));
    }
    save_adapter(&out, &AdapterConfig::from_lora(&lora, None), &tensors).unwrap();
    out
}

/// The local backend on every input shape: one completion per record within the token budget,
/// lineage kept; the same bytes batched or one at a time; an adapter changes the completions and
/// the model recorded.
#[test]
fn local_backend_completes_every_shape_and_applies_an_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let run = |concurrency: &str, adapter: Option<&std::path::Path>| {
        let mut r = Run::new(BIN)
            .args(["--backend", "local", "--max-new-tokens", "8", "--no-cache"])
            .args([
                "--temperature",
                "0.8",
                "--seed",
                "3",
                "--concurrency",
                concurrency,
            ])
            .arg("--model")
            .arg(&model);
        if let Some(a) = adapter {
            r = r.arg("--adapter").arg(a);
        }
        r.stdin(prompts()).run().expect_code(0)
    };
    let base = run("4", None);
    let input: Vec<Value> = String::from_utf8(prompts())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recs = base.records();
    assert_eq!(recs.len(), input.len());
    for (r, i) in recs.iter().zip(&input) {
        for k in ["qa_id", "doc_id", "chunk_id", "extra"] {
            assert_eq!(r.get(k), i.get(k), "{k}: {r}");
        }
        assert!(r["completion"].is_string(), "{r}");
        let g = &r["gen"];
        assert_eq!(
            (&g["backend"], &g["model"]),
            (&json!("local"), &json!("tiny"))
        );
        let n = g["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=8).contains(&n), "{r}");
        assert!(
            ["stop", "length"].contains(&g["finish_reason"].as_str().unwrap()),
            "{r}"
        );
    }
    assert_eq!(
        run("1", None).stdout,
        base.stdout,
        "batched and one at a time differ"
    );
    let adapter = tiny_adapter(dir.path());
    let tuned = run("4", Some(&adapter));
    let tuned_recs = tuned.records();
    assert!(
        tuned_recs
            .iter()
            .all(|r| r["gen"]["model"] == "tiny+adapter")
    );
    let changed = recs
        .iter()
        .zip(&tuned_recs)
        .filter(|(a, b)| a["completion"] != b["completion"])
        .count();
    assert!(changed > 0, "the adapter changed nothing");
}

/// The real SmolLM2 (scripts/fetch-smollm2): greedy, it knows the capital of France; a stop string
/// cuts the completion before it. "Answer in one word" because the bare question is a near tie for
/// the first token ("The" 0.08 logits ahead of "L" on f32 weights), which rounding the activations
/// to 8 bits flips on some kernels; with it "The" leads by ~1.5 on f32, candle's blocks and the
/// VNNI tiles alike.
#[test]
fn smollm2_answers_and_stops_at_a_stop_string() {
    let model = ftkit_testkit::smollm2();
    let prompt =
        br#"{"prompt":"What is the capital of France? Answer in one word.","qa_id":"q"}"#.to_vec();
    let run = |extra: &[&str]| {
        Run::new(BIN)
            .args([
                "--temperature",
                "0",
                "--max-new-tokens",
                "16",
                "--no-cache",
                "--model",
            ])
            .arg(&model)
            .args(extra)
            .stdin(prompt.clone())
            .run()
            .expect_code(0)
            .records()
            .remove(0)
    };
    let plain = run(&[]);
    assert_eq!(plain["gen"]["backend"], "local");
    let text = plain["completion"].as_str().unwrap();
    assert!(text.contains("Paris"), "{plain}");
    let cut = run(&["--stop", "Paris"]);
    assert_eq!(
        cut["completion"].as_str().unwrap(),
        &text[..text.find("Paris").unwrap()]
    );
    assert_eq!(cut["gen"]["finish_reason"], "stop");
}
