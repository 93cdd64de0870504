#![allow(clippy::unwrap_used, clippy::print_stdout)]

use clap::CommandFactory;
use ftkit_llm::testing::{Fault, FaultRule, ServerConfig, TestServer};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use serde_json::Value;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ft-score");

fn qa() -> Vec<u8> {
    std::fs::read(testdata("score", "qa.jsonl")).unwrap()
}

#[test]
fn golden_heuristics_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Run::new(BIN)
        .arg("--report")
        .arg(&report)
        .stdin(qa())
        .run()
        .expect_code(0);
    golden::check(&testdata("score", "scored.golden.jsonl"), &out.stdout);
    golden::check(
        &testdata("score", "report.golden.json"),
        &std::fs::read(&report).unwrap(),
    );
    // The distribution is on stderr, as the users' validate step prints it.
    assert!(
        out.stderr.contains("7 records scored (judge: none)"),
        "{}",
        out.stderr
    );
    // One line per bucket (a message's newlines are escaped, a report's are not).
    assert!(out.stderr.contains("\n    9-10"), "{}", out.stderr);
    assert!(
        out.stderr.contains("1 records had no context"),
        "{}",
        out.stderr
    );

    let recs = out.records();
    let by_id = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap().clone();
    // Grounded beats invented; restating the question in the wrong language fails.
    assert_eq!(by_id("q1")["verdict"], "pass");
    assert!(
        by_id("q2")["score"]["overall"].as_f64().unwrap()
            < by_id("q1")["score"]["overall"].as_f64().unwrap()
    );
    assert_eq!(by_id("q3")["verdict"], "fail");
    assert_eq!(by_id("q3")["score"]["checks"]["restates_question"], true);
    assert_eq!(by_id("q3")["score"]["checks"]["lang_match"], false);
    assert_eq!(by_id("q4")["score"]["checks"]["lang_match"], true);
    // No context: grounding unknown, other fields pass through.
    assert!(by_id("q5")["score"]["checks"]["grounding"].is_null());
    assert_eq!(by_id("q5")["extra"]["keep"], true);
    // An old score and verdict are replaced, not duplicated.
    let line = out
        .stdout_str()
        .lines()
        .find(|l| l.contains("\"q6\""))
        .unwrap();
    assert_eq!(line.matches("\"verdict\"").count(), 1);
    assert!(!line.contains("\"old\""));
    // Order and count are kept: scoring never filters.
    let ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["q1", "q2", "q3", "q4", "q5", "s1", "q6"]);
}

#[test]
fn thresholds_move_verdicts() {
    let strict = Run::new(BIN)
        .args(["--pass", "10", "--review", "9.9"])
        .stdin(qa())
        .run()
        .expect_code(0);
    let lax = Run::new(BIN)
        .args(["--pass", "1", "--review", "1"])
        .stdin(qa())
        .run()
        .expect_code(0);
    assert!(lax.records().iter().all(|r| r["verdict"] == "pass"));
    assert!(strict.records().iter().any(|r| r["verdict"] == "fail"));
    let bad = Run::new(BIN)
        .args(["--pass", "5", "--review", "7"])
        .stdin(qa())
        .run();
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn chunks_file_supplies_context() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = dir.path().join("chunks.jsonl");
    std::fs::write(
        &chunks,
        "{\"id\":\"c9\",\"text\":\"Frequent words become single tokens in BPE.\"}\n",
    )
    .unwrap();
    let out = Run::new(BIN)
        .arg("--chunks")
        .arg(&chunks)
        .stdin(qa())
        .run()
        .expect_code(0);
    let q5 = out.records().into_iter().find(|r| r["id"] == "q5").unwrap();
    assert_eq!(q5["score"]["checks"]["grounding"], 1.0);
    assert!(!out.stderr.contains("had no context"), "{}", out.stderr);
}

#[test]
fn contract() {
    Contract {
        bin: BIN,
        args: &[],
        input: &qa(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_score::Args::command());
}

#[test]
fn llm_judge_scores_and_decides() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::from_millis(2),
        faults: vec![FaultRule {
            modulo: 3,
            remainder: 0,
            first_hits: 1,
            fault: Fault::ProseContent,
        }],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let args = [
        "--judge",
        "openai",
        "--base-url",
        server.url(),
        "--model",
        "judge",
        "--cache",
    ];
    let run = |c: &str| {
        Run::new(BIN)
            .args(args)
            .arg(dir.path().join("cache"))
            .args(["--concurrency", c, "--report"])
            .arg(&report)
            .stdin(qa())
            .run()
            .expect_code(0)
    };
    let out = run("4");
    let recs = out.records();
    assert_eq!(recs.len(), 7);
    for r in &recs {
        let s = &r["score"];
        if r["kind"] == "summary" {
            assert!(
                s.get("judge").is_none(),
                "summaries get heuristics only: {r}"
            );
            continue;
        }
        let j = &s["judge"];
        assert_eq!(j["backend"], "openai");
        assert!(
            j["rationale"]
                .as_str()
                .unwrap()
                .starts_with("deterministic test judgement")
        );
        for k in ["relevance", "accuracy", "clarity", "grounding", "overall"] {
            assert!((1.0..=10.0).contains(&j[k].as_f64().unwrap()), "{k}: {r}");
        }
        // With a judge its overall decides.
        assert_eq!(s["overall"], j["overall"]);
        let o = j["overall"].as_f64().unwrap();
        let want = if o >= 8.0 {
            "pass"
        } else if o >= 6.0 {
            "review"
        } else {
            "fail"
        };
        assert_eq!(r["verdict"], want);
    }
    assert!(out.stderr.contains("judge: openai"), "{}", out.stderr);
    let rep: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rep["records"], 7);
    assert_eq!(rep["judge"], "openai");
    // A rerun replays the judgements from the cache, whatever the concurrency.
    let hits = server.hits();
    let again = run("1");
    assert_eq!(server.hits(), hits);
    assert_eq!(again.stdout, out.stdout);
}

/// A judge on this machine (a tiny random model): its replies are constrained to the scores
/// object, so every pair gets five scores from 1 to 10 however poor the model; a rerun replays
/// the cache and changes no byte.
#[test]
fn local_judge_always_answers_with_scores() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("judge-model");
    // A long context: the tiny tokenizer spends a token on every few bytes of the judge's prompt.
    let spec = TinySpec {
        max_position_embeddings: 4096,
        ..TinySpec::qwen2(21)
    };
    write_tiny_model(&model, &spec).unwrap();
    let run = |extra: &[&str]| {
        Run::new(BIN)
            .args(["--judge", "local", "--max-tokens", "96"])
            .args(extra)
            .arg("--model")
            .arg(&model)
            .arg("--cache")
            .arg(dir.path().join("cache"))
            .stdin(qa())
            .run()
            .expect_code(0)
    };
    let out = run(&["--concurrency", "4"]);
    let recs = out.records();
    assert_eq!(recs.len(), 7);
    let (mut judged, mut fractional) = (0, 0);
    for r in recs.iter().filter(|r| r["kind"] != "summary") {
        let j = &r["score"]["judge"];
        assert_eq!(j["backend"], "local", "{r}");
        assert_eq!(j["model"], "judge-model", "{r}");
        for k in ["relevance", "accuracy", "clarity", "grounding", "overall"] {
            let v = j[k].as_f64().unwrap_or(-1.0);
            assert!((1.0..=10.0).contains(&v), "{k}: {r}");
            fractional += usize::from(v.fract() != 0.0);
        }
        assert_eq!(r["score"]["overall"], j["overall"]);
        judged += 1;
    }
    assert!(judged >= 5, "{}", out.stdout_str());
    // Probability-weighted scores: a random model's spread over 1..9 never means a whole number
    // for all of them (greedy digits would be whole unless it chose a decimal).
    assert!(fractional > judged, "{}", out.stdout_str());
    assert!(out.stderr.contains("judge: local"), "{}", out.stderr);
    let again = run(&["--concurrency", "1"]);
    assert_eq!(again.stdout, out.stdout);
    assert!(
        again.stderr.contains(&format!("{judged} cache hits")),
        "{}",
        again.stderr
    );
    // --judge-weight blends the judge's overall score with the heuristic one.
    let blended = run(&["--judge-weight", "0.25"]);
    for r in blended.records().iter().filter(|r| r["kind"] != "summary") {
        let s = &r["score"];
        let (h, j) = (
            s["heuristic"].as_f64().unwrap(),
            s["judge"]["overall"].as_f64().unwrap(),
        );
        let want = ((0.25 * j + 0.75 * h) * 100.0).round() / 100.0;
        assert_eq!(s["overall"].as_f64(), Some(want), "{r}");
    }
    let bad = Run::new(BIN)
        .args(["--judge-weight", "1.5"])
        .stdin(qa())
        .run();
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    // No model named: a usage error before anything is read.
    let none = Run::new(BIN).args(["--judge", "local"]).stdin(qa()).run();
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("--model"), "{}", none.stderr);
}

#[test]
fn a_french_answer_to_an_english_question_is_a_language_mismatch() {
    let context = "The lighthouse at Cordouan stands on a rock at the mouth of the Gironde. \
                   Le phare de Cordouan se dresse sur un rocher à l'embouchure de la Gironde.";
    let rec = |id: &str, answer: &str| {
        serde_json::json!({"id": id, "kind": "qa", "lang": "en", "context": context,
            "question": "Where does the lighthouse at Cordouan stand?", "answer": answer})
        .to_string()
    };
    let input = format!(
        "{}\n{}\n",
        rec(
            "en",
            "The lighthouse at Cordouan stands on a rock at the mouth of the Gironde."
        ),
        rec(
            "fr",
            "Le phare de Cordouan se dresse sur un rocher à l'embouchure de la Gironde."
        )
    );
    let out = Run::new(BIN).stdin(input).run().expect_code(0);
    let recs = out.records();
    assert_eq!(recs[0]["score"]["checks"]["lang_match"], true);
    // The script guess called every Latin-script text English, so this was a match.
    assert_eq!(recs[1]["score"]["checks"]["lang_match"], false);
}

#[test]
fn heuristics_tell_good_pairs_from_bad_ones() {
    let ctx = "A LoRA adapter adds a pair of small matrices to a frozen layer. The adapter trains \
               quickly on one GPU, because only the small matrices receive gradients.";
    let lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                 incididunt ut labore et dolore magna aliqua.";
    let pairs: [(&str, &str, &str, Option<&str>); 8] = [
        (
            "good",
            "What does a LoRA adapter add to a frozen layer?",
            "A LoRA adapter adds a pair of small matrices to a frozen layer.",
            Some(ctx),
        ),
        (
            "short",
            "Why does the adapter train quickly?",
            "Only the small matrices receive gradients.",
            Some(ctx),
        ),
        (
            "generic",
            "What does the text say about gradients?",
            "The adapter trains quickly on one GPU, because only the small matrices receive gradients.",
            Some(ctx),
        ),
        (
            "fragment",
            "Why does the adapter train quickly?",
            "quickly on one GPU, because only the small matrices receive",
            Some(ctx),
        ),
        (
            "echo",
            "What is a LoRA adapter?",
            "What is a LoRA adapter?",
            Some(ctx),
        ),
        (
            "lorem-context",
            "What does a LoRA adapter add to a frozen layer?",
            lorem,
            Some(ctx),
        ),
        (
            "lorem-alone",
            "What does a LoRA adapter add to a frozen layer?",
            lorem,
            None,
        ),
        (
            "good-alone",
            "What does a LoRA adapter add to a frozen layer?",
            "A LoRA adapter adds a pair of small matrices to a frozen layer.",
            None,
        ),
    ];
    let mut input = String::new();
    for (id, q, a, c) in pairs {
        let mut rec =
            serde_json::json!({"id": id, "kind": "qa", "question": q, "answer": a, "lang": "en"});
        if let Some(c) = c {
            rec["context"] = c.into();
        }
        input.push_str(&rec.to_string());
        input.push('\n');
    }
    let out = Run::new(BIN).stdin(input).run().expect_code(0);
    let recs = out.records();
    let get = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap().clone();
    let score = |id: &str| get(id)["score"]["overall"].as_f64().unwrap();
    let verdict = |id: &str| get(id)["verdict"].as_str().unwrap().to_string();
    // Before: "echo" (3 tokens short of the restating rule), both lorem answers and every other pair
    // here passed, most with 10.0.
    assert_eq!(verdict("good"), "pass");
    assert_eq!(verdict("short"), "pass");
    assert_eq!(verdict("generic"), "review", "a generic template question");
    assert!(
        score("fragment") < score("short"),
        "a fragment below a sentence"
    );
    assert_eq!(verdict("echo"), "fail");
    assert_eq!(get("echo")["score"]["checks"]["restates_question"], true);
    assert_eq!(
        verdict("lorem-context"),
        "fail",
        "ungrounded and not English"
    );
    assert_ne!(verdict("lorem-alone"), "pass", "nothing shows it is true");
    assert_ne!(
        verdict("good-alone"),
        "pass",
        "without context a pair is at most review"
    );
    let distinct: std::collections::BTreeSet<String> = recs
        .iter()
        .map(|r| r["score"]["overall"].to_string())
        .collect();
    assert!(distinct.len() >= 5, "a spread, not one score: {distinct:?}");
}

#[test]
fn a_bad_chunks_line_is_named_like_in_every_tool() {
    // ft-score and ft-to-alpaca share core's chunk loader: same message, flag, file and line.
    let dir = tempfile::tempdir().unwrap();
    let chunks = dir.path().join("chunks.jsonl");
    std::fs::write(
        &chunks,
        "{\"id\":\"c1\",\"text\":\"One.\"}\n{\"id\":\"c2\"}\n",
    )
    .unwrap();
    let input = "{\"id\":\"q\",\"chunk_id\":\"c1\",\"question\":\"What?\",\"answer\":\"One.\"}\n";
    let out = Run::new(BIN)
        .arg("--chunks")
        .arg(&chunks)
        .stdin(input)
        .run()
        .expect_code(1);
    let expected = format!("--chunks {}:2: missing field \"text\"", chunks.display());
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
}

/// `--report` naming the input (or `-o`) is a usage error naming both; the input is untouched.
#[test]
fn report_naming_an_input_or_the_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("qa.jsonl");
    std::fs::write(&input, qa()).unwrap();
    let out = dir.path().join("out.jsonl");
    for (extra, other) in [
        (vec![input.clone()], "input"),
        (vec![out.clone(), "-o".into(), out.clone()], "-o"),
    ] {
        let r = Run::new(BIN).arg(&input).arg("--report").args(&extra).run();
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains("--report") && r.stderr.contains(other),
            "{}",
            r.stderr
        );
        assert_eq!(std::fs::read(&input).unwrap(), qa());
        assert!(!out.exists());
    }
}
