#![allow(clippy::unwrap_used, clippy::print_stdout)]

use clap::CommandFactory;
use ftkit_llm::testing::{Fault, FaultRule, ServerConfig, TestServer};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ft-qa-synth");
const KEY: &str = "sk-test-SECRET-0123456789abcdef";

fn chunks() -> Vec<u8> {
    std::fs::read(testdata("qa-synth", "chunks.jsonl")).unwrap()
}

/// `n` English chunks with distinct texts.
fn many_chunks(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let text = format!(
            "Item {i} is a numbered record used for testing. The value of item {i} is {}. Records like item {i} \
             arrive in order and leave in order.",
            i * 7
        );
        out.push_str(&serde_json::json!({"id": format!("c{i}"), "doc_id": "d", "chunk_index": i, "text": text,
            "start": 0, "end": text.len()}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn openai_args<'a>(server: &'a TestServer, cache: &'a str) -> Vec<&'a str> {
    vec![
        "--backend",
        "openai",
        "--base-url",
        server.url(),
        "--model",
        "test-model",
        "--cache",
        cache,
    ]
}

/// A server that answers every request with `fault`.
fn always_failing(fault: Fault) -> TestServer {
    TestServer::start(ServerConfig {
        latency: Duration::ZERO,
        faults: vec![FaultRule {
            modulo: 1,
            remainder: 0,
            first_hits: u32::MAX,
            fault,
        }],
    })
    .unwrap()
}

/// A summary counter from stderr: the number before `label`.
fn stat(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no {label:?} in {stderr}"));
    let before = &line[..line.find(label).unwrap()];
    before
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

fn cache_entries(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            std::fs::read_dir(e.path())
                .unwrap()
                .flatten()
                .filter(|f| f.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .sum()
}

fn chunk_ids(bytes: &[u8], field: &str) -> BTreeSet<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()[field]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn golden_extractive() {
    let out = Run::new(BIN)
        .args(["--backend", "extractive"])
        .arg(testdata("qa-synth", "chunks.jsonl"))
        .run();
    let out = out.expect_code(0);
    golden::check(&testdata("qa-synth", "qa.golden.jsonl"), &out.stdout);
    // c5 is too short for any question: counted, not hidden.
    assert!(
        out.stderr.contains("1 chunks without pairs"),
        "{}",
        out.stderr
    );

    let out = Run::new(BIN)
        .args([
            "--backend",
            "extractive",
            "--summary",
            "--cross-lingual",
            "en:zh",
            "--keep-context",
            "--pairs",
            "2",
        ])
        .stdin(chunks())
        .run()
        .expect_code(0);
    golden::check(
        &testdata("qa-synth", "qa-summary-cross.golden.jsonl"),
        &out.stdout,
    );
    let recs = out.records();
    assert!(recs.iter().any(|r| r["kind"] == "summary"));
    assert!(
        recs.iter()
            .any(|r| r["lang"] == "en" && r["doc_lang"] == "zh")
    );
    assert!(
        recs.iter()
            .all(|r| r["context"].is_string() && r.get("text").is_none())
    );
}

#[test]
fn records_carry_lineage_and_stable_ids() {
    let out = Run::new(BIN)
        .args(["--backend", "extractive"])
        .stdin(chunks())
        .run()
        .expect_code(0);
    for r in out.records() {
        assert!(r["chunk_id"].is_string() && r["doc_id"].is_string(), "{r}");
        assert!(
            r["start"].is_u64() && r["end"].is_u64() && r["chunk_index"].is_u64(),
            "{r}"
        );
        assert!(
            r.get("text").is_none(),
            "chunk text must not pass through: {r}"
        );
        let id = ftkit_testkit::independent_id(&[
            r["chunk_id"].as_str().unwrap(),
            r["lang"].as_str().unwrap(),
            r["question"].as_str().unwrap(),
            r["answer"].as_str().unwrap(),
        ]);
        assert_eq!(r["id"], id.as_str());
        assert_eq!(r["gen"]["backend"], "extractive");
    }
}

#[test]
fn contract() {
    Contract {
        bin: BIN,
        args: &["--backend", "extractive", "--no-cache"],
        input: &chunks(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_qa_synth::Args::command());
}

#[test]
fn usage_errors_and_local_backend() {
    let out = Run::new(BIN)
        .args(["--backend", "extractive", "--pairs", "0"])
        .stdin(chunks())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = Run::new(BIN)
        .args(["--backend", "extractive", "--cross-lingual", "en"])
        .stdin(chunks())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = Run::new(BIN)
        .args(["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"])
        .stdin(chunks());
    let out = out.env("MODEL", "").run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--model"), "{}", out.stderr);
    let out = Run::new(BIN)
        .args(["--backend", "local"])
        .stdin(chunks())
        .run();
    // A usage error: the local backend needs a model, nothing was read.
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("needs --model"), "{}", out.stderr);
}

/// The local backend on a tiny random model: its replies are constrained to the pairs object, so
/// every chunk gets pairs however poor the model; usage is counted with the model's tokenizer; a
/// rerun replays the cache whatever the concurrency, and a fresh run one request at a time writes
/// the same bytes as the batched one.
#[test]
fn local_backend_always_answers_with_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("qa-model");
    // A long context: the tiny tokenizer spends a token on every few bytes of the prompt.
    let spec = TinySpec {
        max_position_embeddings: 4096,
        ..TinySpec::qwen2(5)
    };
    write_tiny_model(&model, &spec).unwrap();
    let run = |concurrency: &str, cache: bool| {
        let mut r = Run::new(BIN)
            .args(["--backend", "local", "--pairs", "2", "--max-tokens", "120"])
            .args(["--concurrency", concurrency, "--model"])
            .arg(&model);
        r = if cache {
            r.arg("--cache").arg(dir.path().join("cache"))
        } else {
            r.arg("--no-cache")
        };
        r.stdin(chunks()).run().expect_code(0)
    };
    let first = run("4", true);
    let recs = first.records();
    let chunk_ids: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["chunk_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        chunk_ids.len(),
        5,
        "every chunk answered: {}",
        first.stdout_str()
    );
    for r in &recs {
        for k in ["question", "answer"] {
            assert!(!r[k].as_str().unwrap().trim().is_empty(), "{k}: {r}");
        }
        let g = &r["gen"];
        assert_eq!(g["backend"], "local");
        assert_eq!(g["model"], "qa-model");
        assert_eq!(g["params"]["response_format"], "constrained_json");
        let out = g["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=120).contains(&out), "{r}");
        assert!(g["usage"]["prompt_tokens"].as_u64().unwrap() > 50, "{r}");
    }
    assert!(
        first.stderr.contains("local 5 requests"),
        "{}",
        first.stderr
    );
    let replay = run("1", true);
    assert_eq!(replay.stdout, first.stdout);
    assert!(replay.stderr.contains("5 cache hits"), "{}", replay.stderr);
    let alone = run("1", false);
    assert_eq!(
        alone.stdout, first.stdout,
        "batched and one at a time differ"
    );
}

/// 429 (with Retry-After), 500, timeouts, garbage bodies, prose instead of JSON, and prompts that
/// always fail: every chunk ends in the output or in --rejects, and the counters add up.
#[test]
fn no_chunk_lost_under_faults() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::from_millis(5),
        faults: vec![
            FaultRule {
                modulo: 19,
                remainder: 5,
                first_hits: u32::MAX,
                fault: Fault::ServerError,
            },
            FaultRule {
                modulo: 6,
                remainder: 3,
                first_hits: 1,
                fault: Fault::ProseContent,
            },
            FaultRule {
                modulo: 23,
                remainder: 0,
                first_hits: 1,
                fault: Fault::TooManyRequests { retry_after: 1 },
            },
            FaultRule {
                modulo: 5,
                remainder: 0,
                first_hits: 2,
                fault: Fault::TooManyRequests { retry_after: 0 },
            },
            FaultRule {
                modulo: 7,
                remainder: 1,
                first_hits: 1,
                fault: Fault::ServerError,
            },
            FaultRule {
                modulo: 11,
                remainder: 2,
                first_hits: 1,
                fault: Fault::GarbageBody,
            },
            FaultRule {
                modulo: 17,
                remainder: 4,
                first_hits: 1,
                fault: Fault::Stall(Duration::from_secs(3)),
            },
        ],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rejects = dir.path().join("rejects.jsonl");
    let input = many_chunks(80);
    let out = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .args([
            "--concurrency",
            "8",
            "--max-retries",
            "3",
            "--backoff-ms",
            "10",
            "--timeout",
            "1",
            "--on-error",
            "skip",
        ])
        .arg("--rejects")
        .arg(&rejects)
        .stdin(input.clone())
        .run()
        .expect_code(0);
    let all: BTreeSet<String> = (0..80).map(|i| format!("c{i}")).collect();
    let done = chunk_ids(&out.stdout, "chunk_id");
    let rejected = chunk_ids(&std::fs::read(&rejects).unwrap(), "id");
    assert!(
        !rejected.is_empty(),
        "the always-failing rule matched no prompt"
    );
    assert!(done.is_disjoint(&rejected));
    assert_eq!(
        done.union(&rejected).cloned().collect::<BTreeSet<_>>(),
        all,
        "chunks lost"
    );
    for line in String::from_utf8_lossy(&std::fs::read(&rejects).unwrap()).lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert!(
            r["reject"]["reason"]
                .as_str()
                .unwrap()
                .contains("gave up after 4 tries: HTTP 500"),
            "{r}"
        );
        assert!(r["text"].is_string(), "rejects keep the input record: {r}");
    }
    let requests = stat(&out.stderr, " requests (");
    let retries = stat(&out.stderr, " retries");
    let unparseable = stat(&out.stderr, " unparseable");
    assert_eq!(requests, server.hits(), "{}", out.stderr);
    assert!(retries > 0 && unparseable > 0, "{}", out.stderr);
    // Every logical call (one per chunk, one more per re-ask) ends after its retries.
    assert_eq!(retries, requests - 80 - unparseable, "{}", out.stderr);
    assert_eq!(stat(&out.stderr, " rejected;"), rejected.len() as u64);

    // Without --on-error skip the same run exits 1 but still writes all the good records.
    let again = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .args([
            "--concurrency",
            "8",
            "--max-retries",
            "1",
            "--backoff-ms",
            "1",
        ])
        .stdin(input)
        .run();
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn same_output_for_concurrency_1_and_64() {
    let input = many_chunks(120);
    let run = |c: &str| {
        // A fresh server each time: faults depend on how often a prompt was seen.
        let server = TestServer::start(ServerConfig {
            latency: Duration::from_millis(2),
            faults: vec![
                FaultRule {
                    modulo: 4,
                    remainder: 1,
                    first_hits: 1,
                    fault: Fault::TooManyRequests { retry_after: 0 },
                },
                FaultRule {
                    modulo: 6,
                    remainder: 2,
                    first_hits: 1,
                    fault: Fault::ProseContent,
                },
                FaultRule {
                    modulo: 9,
                    remainder: 3,
                    first_hits: u32::MAX,
                    fault: Fault::ServerError,
                },
            ],
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().to_str().unwrap().to_string();
        Run::new(BIN)
            .args(openai_args(&server, &cache))
            .args([
                "--concurrency",
                c,
                "--max-retries",
                "2",
                "--backoff-ms",
                "1",
                "--on-error",
                "skip",
                "--summary",
            ])
            .stdin(input.clone())
            .run()
            .expect_code(0)
    };
    let one = run("1");
    let many = run("64");
    assert!(!one.stdout.is_empty());
    assert!(
        one.stdout == many.stdout,
        "output differs between --concurrency 1 and 64"
    );
    let ids: Vec<String> = one
        .records()
        .iter()
        .map(|r| r["chunk_id"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(ids, sorted, "records must come in input order");
}

#[test]
fn resume_after_kill_replays_from_cache() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::from_millis(40),
        faults: vec![],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let input_path = dir.path().join("chunks.jsonl");
    std::fs::write(&input_path, many_chunks(60)).unwrap();
    let args = openai_args(&server, cache.to_str().unwrap());

    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .args(["--concurrency", "4"])
        .arg(&input_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while cache_entries(&cache) < 12 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let answered = cache_entries(&cache);
    assert!(
        (12..60).contains(&answered),
        "killed too late or too early: {answered} answers cached"
    );

    // Requests the killed run had already sent can still reach the server's count after the kill
    // (a busy machine delays the server thread reading them): wait for the count to settle.
    let mut before = server.hits();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.hits();
        if now == before {
            break;
        }
        before = now;
    }
    let resumed = Run::new(BIN)
        .args(&args)
        .arg(&input_path)
        .run()
        .expect_code(0);
    assert_eq!(
        server.hits() - before,
        (60 - answered) as u64,
        "answered work was requested again"
    );
    assert_eq!(stat(&resumed.stderr, " cache hits"), answered as u64);

    let before = server.hits();
    let replay = Run::new(BIN)
        .args(&args)
        .arg(&input_path)
        .run()
        .expect_code(0);
    assert_eq!(
        server.hits(),
        before,
        "a complete rerun must send no request"
    );
    assert_eq!(replay.stdout, resumed.stdout);

    // An uninterrupted run with a fresh cache gives the same bytes.
    let fresh = dir.path().join("fresh");
    let clean = Run::new(BIN)
        .args(openai_args(&server, fresh.to_str().unwrap()))
        .arg(&input_path)
        .run()
        .expect_code(0);
    assert_eq!(clean.stdout, resumed.stdout);
}

fn assert_no_key(what: &str, bytes: &[u8]) {
    assert!(
        !String::from_utf8_lossy(bytes).contains(KEY),
        "the API key leaked into {what}"
    );
}

#[test]
fn api_key_never_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rejects = dir.path().join("rejects.jsonl");
    let cache_s = cache.to_str().unwrap().to_string();
    // A server that echoes the Authorization header in its 500 errors, then in its 401s.
    for (fault, code) in [(Fault::EchoAuthorization, 0), (Fault::Unauthorized, 1)] {
        let server = always_failing(fault);
        let out = Run::new(BIN)
            .args(openai_args(&server, &cache_s))
            .args([
                "--max-retries",
                "1",
                "--backoff-ms",
                "1",
                "--on-error",
                "skip",
                "--rejects",
            ])
            .arg(&rejects)
            .env("OPENAI_API_KEY", KEY)
            .stdin(chunks())
            .run();
        assert_eq!(out.code, code, "{}", out.stderr);
        assert!(server.hits() > 0);
        assert!(
            out.stderr.contains("HTTP"),
            "the error should be reported: {}",
            out.stderr
        );
        assert_no_key("stderr", out.stderr.as_bytes());
        assert_no_key("stdout", &out.stdout);
        assert_no_key("rejects", &std::fs::read(&rejects).unwrap_or_default());
    }
    // A working server with a key: the cache holds no trace of it.
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let out = Run::new(BIN)
        .args(openai_args(&server, &cache_s))
        .env("OPENAI_API_KEY", KEY)
        .stdin(chunks())
        .run();
    let out = out.expect_code(0);
    assert!(cache_entries(&cache) > 0);
    for sub in std::fs::read_dir(&cache).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            assert_no_key("the cache", &std::fs::read(f.path()).unwrap());
        }
    }
    assert_no_key("stdout", &out.stdout);
}

#[test]
fn budget_stops_cleanly_and_dedup_holds() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let input = many_chunks(50);
    let out = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .args([
            "--concurrency",
            "1",
            "--max-tokens-total",
            "300",
            "--price-in",
            "1",
            "--price-out",
            "2",
        ])
        .stdin(input.clone())
        .run()
        .expect_code(0);
    assert!(out.stderr.contains("budget reached"), "{}", out.stderr);
    assert!(out.stderr.contains("cost $"), "{}", out.stderr);
    let done = chunk_ids(&out.stdout, "chunk_id");
    assert!(
        !done.is_empty() && done.len() < 50,
        "{} chunks done",
        done.len()
    );
    // Rerun without a budget: the spent part replays from the cache.
    let before = server.hits();
    let full = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(chunk_ids(&full.stdout, "chunk_id").len(), 50);
    assert_eq!(server.hits() - before, 50 - done.len() as u64);
}

#[test]
fn duplicate_questions_within_a_chunk_are_dropped() {
    // The test server's fourth pair repeats its first question in capitals without a question mark.
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new(BIN)
        .args(openai_args(&server, dir.path().to_str().unwrap()))
        .args(["--pairs", "4"])
        .stdin(many_chunks(5))
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 5 * 3, "{}", out.stdout_str());
    let mut seen = HashSet::new();
    for r in &recs {
        let q = r["question"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .replace('?', "");
        assert!(
            seen.insert((r["chunk_id"].to_string(), q)),
            "duplicate question: {r}"
        );
        assert_eq!(r["gen"]["backend"], "openai");
        assert_eq!(r["gen"]["model"], "test-model");
        assert_eq!(r["gen"]["prompt_sha256"].as_str().unwrap().len(), 64);
        assert!(r["gen"]["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn unparseable_output_is_rejected_with_the_raw_text() {
    let server = always_failing(Fault::ProseContent);
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .args(openai_args(&server, dir.path().join("c").to_str().unwrap()))
        .args(["--parse-retries", "1", "--rejects"])
        .arg(&rejects)
        .stdin(many_chunks(3))
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("3 chunks failed"), "{}", out.stderr);
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["reject"]["raw"], "Sure! I'd be glad to help.");
        assert_eq!(r["reject"]["tool"], "ft-qa-synth");
        assert!(
            r["reject"]["reason"]
                .as_str()
                .unwrap()
                .contains("after 2 tries"),
            "{r}"
        );
    }
    // Two tries (one re-ask) per chunk.
    assert_eq!(server.hits(), 6);
}

#[test]
fn pairs_per_1k_tokens_scales_with_length() {
    let long: String = (0..40)
        .map(|i| format!("Sentence number {i} mentions item {}. ", i * 3))
        .collect();
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"id": "short", "text": "Alpha is the first letter of the Greek alphabet. Beta comes next in 1990."}),
        serde_json::json!({"id": "long", "text": long})
    );
    let out = Run::new(BIN)
        .args(["--backend", "extractive", "--pairs-per-1k-tokens", "40"])
        .stdin(input)
        .run()
        .expect_code(0);
    let recs = out.records();
    let count = |id: &str| recs.iter().filter(|r| r["chunk_id"] == id).count();
    // short: ~20 tokens → round(0.8) = 1 pair; long: ~300 tokens → 12 pairs.
    assert_eq!(count("short"), 1);
    assert!(count("long") >= 10, "{}", count("long"));
}

#[test]
fn prompt_file_replaces_the_prompt() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(
        &prompt,
        "Ask {n} questions in {lang}, JSON {\"pairs\":[...]}, about:\n{text}",
    )
    .unwrap();
    let cache = dir.path().join("c");
    let base = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .stdin(many_chunks(2))
        .run();
    let custom = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .arg("--prompt-file")
        .arg(&prompt)
        .stdin(many_chunks(2))
        .run()
        .expect_code(0);
    let sha = |o: &ftkit_testkit::Outcome| o.records()[0]["gen"]["prompt_sha256"].clone();
    assert_ne!(sha(&base.expect_code(0)), sha(&custom));
    assert_eq!(server.hits(), 4, "a new prompt is a new request");
    std::fs::write(&prompt, "no placeholder").unwrap();
    let bad = Run::new(BIN)
        .args(["--backend", "extractive", "--prompt-file"])
        .arg(&prompt)
        .stdin(chunks())
        .run();
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn url_user_info_and_query_secrets_never_leak() {
    const URL_SECRETS: [&str; 2] = ["sk-URL-PASSWORD-0123", "sk-QUERY-KEY-4567"];
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rejects = dir.path().join("rejects.jsonl");
    let servers: Vec<TestServer> = [Fault::ServerError, Fault::Unauthorized]
        .into_iter()
        .map(always_failing)
        .collect();
    // Two failing servers (500 then 401, whose message names the endpoint) and a closed port (the
    // client's own connection error).
    // The 500's message shows no URL; the other two name the endpoint, redacted.
    let mut bases: Vec<(String, bool)> = servers
        .iter()
        .zip([false, true])
        .map(|(s, shown)| (s.url().to_string(), shown))
        .collect();
    bases.push(("http://127.0.0.1:9/v1".into(), true));
    for (base, shown) in bases {
        let with_secrets = base.replacen("http://", &format!("http://user:{}@", URL_SECRETS[0]), 1)
            + &format!("?api_key={}", URL_SECRETS[1]);
        for env in [false, true] {
            let mut run = Run::new(BIN)
                .args(["--backend", "openai", "--model", "m", "--cache"])
                .arg(&cache)
                .args(["--max-retries", "0", "--on-error", "skip", "--rejects"])
                .arg(&rejects)
                .env("OPENAI_API_KEY", KEY)
                .stdin(chunks());
            run = if env {
                run.env("OPENAI_BASE_URL", &with_secrets)
            } else {
                run.args(["--base-url", &with_secrets])
            };
            let out = run.run();
            assert!(out.code == 0 || out.code == 1, "{}", out.stderr);
            let rejected = std::fs::read_to_string(&rejects).unwrap_or_default();
            assert!(
                !rejected.is_empty() || out.code == 1,
                "{base}: the failure should be recorded: {}",
                out.stderr
            );
            for secret in URL_SECRETS.iter().chain([&KEY]) {
                for (what, text) in [("stderr", &out.stderr), ("rejects", &rejected)] {
                    assert!(
                        !text.contains(secret),
                        "{base}: {secret} leaked into {what}: {text}"
                    );
                }
            }
            if shown {
                assert!(
                    out.stderr.contains("http://***@127.0.0.1:")
                        && out.stderr.contains("/v1/chat/completions?api_key=***"),
                    "{base}: the URL should be shown redacted: {}",
                    out.stderr
                );
            }
        }
    }
}

#[test]
fn auto_language_is_detected_for_latin_script_text() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let texts = [
        (
            "en",
            "The printing press spread quickly across Europe because printers could make many copies of a book at a low cost.",
        ),
        (
            "fr",
            "La presse à imprimer s'est répandue rapidement en Europe, car les imprimeurs pouvaient faire de nombreuses copies d'un livre à bas prix.",
        ),
        (
            "de",
            "Die Druckerpresse verbreitete sich schnell in Europa, weil die Drucker viele Kopien eines Buches zu geringen Kosten herstellen konnten.",
        ),
        (
            "es",
            "La imprenta se extendió rápidamente por Europa porque los impresores podían hacer muchas copias de un libro a bajo costo.",
        ),
        (
            "zh",
            "印刷机在欧洲迅速传播，因为印刷工人可以用很低的成本制作一本书的许多副本。",
        ),
    ];
    let mut input = String::new();
    for (lang, text) in texts {
        input.push_str(&serde_json::json!({"id": lang, "doc_id": lang, "text": text, "start": 0, "end": text.len()}).to_string());
        input.push('\n');
    }
    let out = Run::new(BIN)
        .args(openai_args(&server, cache.to_str().unwrap()))
        .args(["--pairs", "1"])
        .stdin(input)
        .run()
        .expect_code(0);
    for (lang, _) in texts {
        let rec = out
            .records()
            .into_iter()
            .find(|r| r["chunk_id"] == lang)
            .unwrap_or_else(|| panic!("no record for {lang}: {}", out.stderr));
        // Before, every Latin-script chunk was `en` (and the model was asked for English questions).
        assert_eq!(rec["doc_lang"], lang, "{rec}");
        assert_eq!(rec["lang"], lang, "{rec}");
    }
}

/// A hard-wrapped licence excerpt (GPL v3 wording) as a chunk cut mid-sentence, and its whole
/// sentences, listed by hand.
const LICENCE: &str = "\
of the Program, in the form of source code under the terms of section 4.

This License gives no
permission to license the work in any other way, but it does not
invalidate such permission if you have separately received it.

  b) The work must carry prominent notices stating that it is
  released under this License and any conditions added under section
  7.  This requirement modifies the requirement in section 4 to
  \"keep intact all notices\".

  You may charge any price or no price for each copy that you convey,
and you may offer support or warranty protection for a fee.

  A \"covered work\" means either the unmodified Program or a work based
on the Program.

  To \"propagate\" a work means to do anything with it that, without
permission, would make you directly or secondarily liable for
infringement under applicable copyright law, except executing it on a
computer or modifying a private copy.  Propagation includes copying,
distribution (with or without modification), making available to the
public, and in some countries other activities as well.  You may
convey a work based on the Program, or the modifications to
produce it from the Program, provided that you also meet all of these conditions:
";

const LICENCE_SENTENCES: [&str; 7] = [
    "This License gives no permission to license the work in any other way, but it does not invalidate such permission if you have separately received it.",
    "The work must carry prominent notices stating that it is released under this License and any conditions added under section 7.",
    "This requirement modifies the requirement in section 4 to \"keep intact all notices\".",
    "You may charge any price or no price for each copy that you convey, and you may offer support or warranty protection for a fee.",
    "A \"covered work\" means either the unmodified Program or a work based on the Program.",
    "To \"propagate\" a work means to do anything with it that, without permission, would make you directly or secondarily liable for infringement under applicable copyright law, except executing it on a computer or modifying a private copy.",
    "Propagation includes copying, distribution (with or without modification), making available to the public, and in some countries other activities as well.",
];

#[test]
fn extractive_answers_are_whole_sentences_of_the_source() {
    let input = serde_json::json!({"id": "gpl", "doc_id": "gpl", "text": LICENCE, "start": 0,
        "end": LICENCE.len()})
    .to_string();
    let out = Run::new(BIN)
        .args(["--backend", "extractive", "--pairs", "20"])
        .stdin(input)
        .run()
        .expect_code(0);
    let recs = out.records();
    assert!(recs.len() >= 5, "{}", out.stdout_str());
    let mut used = BTreeSet::new();
    for r in &recs {
        let (q, a) = (
            r["question"].as_str().unwrap(),
            r["answer"].as_str().unwrap(),
        );
        // A cloze question quotes the sentence with one token blanked; other answers are the sentence.
        let sentence = match q.strip_prefix("Fill in the blank: \"") {
            Some(rest) => rest.strip_suffix('"').unwrap().replacen("_____", a, 1),
            None => a.to_string(),
        };
        assert!(
            LICENCE_SENTENCES.contains(&sentence.as_str()),
            "not a whole sentence of the source: {sentence:?} (question {q:?})"
        );
        used.insert(sentence);
    }
    assert!(
        used.contains(LICENCE_SENTENCES[0]),
        "the sentence wrapped after its short first line keeps its start: {used:?}"
    );
}

#[test]
fn bad_option_values_are_usage_errors_not_item_failures_or_panics() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    for args in [
        &["--cross-lingual", "en:zh:fr"][..],
        &["--cross-lingual", "english:zh"],
        &["--price-in", "-1"],
        &["--price-in", "1", "--price-out", "-0.5"],
        &["--price-in", "1", "--budget-usd", "-2"],
        &["--base-url", "not a url"],
        &["--base-url", "ftp://127.0.0.1/v1"],
        &["--base-url", "http://"],
        // Before: a panic (exit 101) converting the seconds or a bucket's wait into a Duration.
        &["--timeout", "1e20"],
        &["--tpm", "1e-300"],
        &["--rpm", "0.000001"],
    ] {
        let out = Run::new(BIN)
            .args(openai_args(&server, cache))
            .args(args)
            .stdin(chunks())
            .run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(
        server.hits(),
        0,
        "no request is sent before the options are checked"
    );
    // A malformed URL is shown redacted in the usage error.
    let out = Run::new(BIN)
        .args([
            "--backend",
            "openai",
            "--model",
            "m",
            "--base-url",
            "htp:/u:sk-SECRET-1234@x?key=kk99",
        ])
        .stdin(chunks())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stderr.contains("sk-SECRET-1234"), "{}", out.stderr);
}
