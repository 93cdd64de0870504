//! The real binary on testdata/chunk/: golden outputs, record checks, the shared contract, usage errors.
#![allow(clippy::unwrap_used)]

mod common;

use clap::CommandFactory;
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ft-chunk");

fn docs() -> Vec<Value> {
    std::fs::read_to_string(testdata("chunk", "docs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every chunk record is exact, complete and traceable to its document; returns chunks per document.
fn check_records(
    stdout: &str,
    size: usize,
    overlap: usize,
    units: &dyn Fn(&str) -> usize,
) -> Vec<usize> {
    for line in stdout.lines() {
        let raw = ftkit_core::RawRecord::parse(line).unwrap();
        let keys: Vec<&str> = raw.fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            &keys[..6],
            ["id", "doc_id", "chunk_index", "text", "start", "end"]
        );
    }
    let out: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out = &out[..];
    let docs = docs();
    let mut counts = Vec::new();
    let mut rest = out;
    for doc in &docs {
        let text = doc["text"].as_str().unwrap();
        let doc_id = match &doc["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => ftkit_testkit::independent_id(&[text]),
        };
        let n = rest
            .iter()
            .take_while(|c| c["doc_id"] == doc_id.as_str())
            .count();
        let (mine, tail) = rest.split_at(n);
        rest = tail;
        counts.push(n);
        let mut ranges = Vec::new();
        for (i, c) in mine.iter().enumerate() {
            let (start, end) = (
                c["start"].as_u64().unwrap() as usize,
                c["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(c["chunk_index"], i as u64);
            assert_eq!(
                c["text"].as_str().unwrap().as_bytes(),
                &text.as_bytes()[start..end],
                "{c}"
            );
            let id = ftkit_testkit::independent_id(&[
                doc_id.clone(),
                start.to_string(),
                end.to_string(),
            ]);
            assert_eq!(c["id"], id.as_str());
            for (k, v) in doc.as_object().unwrap() {
                if k != "text" && k != "id" {
                    assert_eq!(&c[k], v, "field {k} passes through");
                }
            }
            ranges.push((start, end));
        }
        let size_of = |a: usize, b: usize| units(&text[a..b]);
        common::check_chunks(text, &ranges, size, overlap, &size_of).unwrap();
    }
    assert!(rest.is_empty(), "chunks of no document: {rest:?}");
    counts
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

#[test]
fn golden_chars_small_chunks() {
    let out = Run::new(BIN)
        .args(["--size", "400", "--overlap", "80"])
        .arg(testdata("chunk", "docs.jsonl"))
        .run();
    let out = out.expect_code(0);
    golden::check(&testdata("chunk", "chars-400-80.jsonl"), &out.stdout);
    let counts = check_records(out.stdout_str(), 400, 80, &chars);
    assert!(
        counts[0] >= 5 && counts[1] >= 4,
        "markdown and prose are cut: {counts:?}"
    );
    assert_eq!(
        &counts[3..],
        [1, 0],
        "a short doc is one chunk, a blank one none"
    );
    // The markdown sections start chunks: every "## " heading begins a chunk or lies inside one after text.
    let recs = out.records();
    let starts: Vec<&str> = recs.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(
        starts.iter().any(|t| t.starts_with("## Chunking")),
        "{starts:#?}"
    );
}

#[test]
fn golden_chars_defaults() {
    let out = Run::new(BIN)
        .arg(testdata("chunk", "docs.jsonl"))
        .run()
        .expect_code(0);
    golden::check(&testdata("chunk", "chars-default.jsonl"), &out.stdout);
    check_records(out.stdout_str(), 1000, 200, &chars);
}

#[test]
fn golden_tokens() {
    let tok_path = common::tokenizer_path();
    let out = Run::new(BIN)
        .args([
            "--by",
            "tokens",
            "--size",
            "64",
            "--overlap",
            "16",
            "--tokenizer",
        ])
        .arg(&tok_path)
        .arg(testdata("chunk", "docs.jsonl"))
        .run()
        .expect_code(0);
    golden::check(&testdata("chunk", "tokens-64-16.jsonl"), &out.stdout);
    let tok = ft_chunk::measure::load_tokenizer(&tok_path).unwrap();
    let units = |s: &str| tok.encode_fast(s, false).unwrap().len();
    let counts = check_records(out.stdout_str(), 64, 16, &units);
    assert!(counts[0] > 10, "{counts:?}");
}

#[test]
fn min_size_and_fields() {
    let input = "{\"doc\":\"d1\",\"body\":\"# A\\n\\nOne sentence here. Another sentence there.\",\"id\":\"x\",\"start\":9}\n";
    let out = Run::new(BIN)
        .args([
            "--size",
            "30",
            "--overlap",
            "0",
            "--text-field",
            "body",
            "--id-field",
            "doc",
        ])
        .stdin(input)
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs[0]["text"], "# A\n\n");
    assert_eq!(recs[0]["doc_id"], "d1");
    assert_eq!(
        recs[0]["start"], 0,
        "a document field named like a chunk field is not copied"
    );
    assert!(recs[0].get("body").is_none() && recs[0].get("doc").is_none());
    let out = Run::new(BIN)
        .args([
            "--size",
            "30",
            "--overlap",
            "0",
            "--min-size",
            "10",
            "--text-field",
            "body",
            "--id-field",
            "doc",
        ])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(out.records()[0]["text"], "# A\n\nOne sentence here. ");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--size", "100", "--overlap", "100"][..],
        &["--size", "100", "--overlap", "150"],
        &["--size", "0"],
        &["--size", "10", "--min-size", "11"],
        &["--by", "tokens"],
        &["--tokenizer", "x.json"],
        &["--size", "100"], // default overlap is a fifth of the size: fine, exit 0
    ] {
        let out = Run::new(BIN).args(args).stdin("{\"text\":\"hi\"}\n").run();
        let want = if args == ["--size", "100"] { 0 } else { 2 };
        assert_eq!(out.code, want, "{args:?}: {}", out.stderr);
        if want == 2 {
            assert!(out.stderr.starts_with("ft-chunk: "), "{}", out.stderr);
            assert!(out.stdout.is_empty());
        }
    }
}

#[test]
fn bad_records_name_the_line() {
    let input =
        "{\"text\":\"fine\"}\n{\"body\":\"no text\"}\n{\"text\":3}\n{\"text\":\"x\",\"id\":[1]}\n";
    let out = Run::new(BIN).stdin(input).run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("<stdin>:2: missing field \"text\""),
        "{}",
        out.stderr
    );
    let out = Run::new(BIN)
        .args(["--on-error", "skip"])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(out.records().len(), 1);
    assert!(
        out.stderr
            .contains("<stdin>:3: field \"text\" is not a string"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("<stdin>:4: field \"id\" is not a string or a number"),
        "{}",
        out.stderr
    );
}

#[test]
fn contract() {
    let input = std::fs::read(testdata("chunk", "docs.jsonl")).unwrap();
    Contract {
        bin: BIN,
        args: &["--size", "300"],
        input: &input,
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_chunk::Args::command());
}

#[test]
fn escaped_input_gives_exact_chunks() {
    // \u escapes (as Python's json.dumps writes by default), surrogate pairs, quotes and backslashes.
    let line =
        r#"{"text":"caf\u00e9 \ud83d\ude00 \"q\" a\\b.\tNext sentence here.\n\nPara two \/ end."}"#;
    let text: String = serde_json::from_str::<Value>(line).unwrap()["text"]
        .as_str()
        .unwrap()
        .into();
    for size in [5, 12, 30] {
        let out = Run::new(BIN)
            .args(["--size", &size.to_string()])
            .stdin(line)
            .run()
            .expect_code(0);
        let mut covered = 0;
        for c in out.records() {
            let (s, e) = (
                c["start"].as_u64().unwrap() as usize,
                c["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(c["text"].as_str().unwrap(), &text[s..e]);
            assert!(s <= covered && e > covered);
            covered = e;
        }
        assert_eq!(covered, text.len());
    }
}

/// Issue 10 (one ordered batch reader): a read error in the middle of an input (here a truncated
/// zstd stream) stops the run naming the file, after the output of every line read before it is
/// written, as for a bad line. It used to drop the whole batch being read (all of a small input).
#[test]
fn a_read_error_writes_the_lines_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    for i in 0..3000 {
        let words: Vec<String> = (0..80).map(|j| (i * j).to_string()).collect();
        input.push_str(&format!(
            "{{\"id\":\"d{i}\",\"text\":\"document {i} {}\"}}\n",
            words.join(" ")
        ));
    }
    let packed = ftkit_testkit::zstd(input.as_bytes());
    let full = dir.path().join("full.jsonl.zst");
    std::fs::write(&full, &packed).unwrap();
    let whole = Run::new(BIN).arg(&full).run().expect_code(0).stdout;
    // Cut inside the last compressed block: the blocks before it still decode.
    let cut = dir.path().join("cut.jsonl.zst");
    std::fs::write(&cut, &packed[..packed.len() - 100]).unwrap();
    let out = Run::new(BIN).arg(&cut).run().expect_code(1);
    let prefix = format!("ft-chunk: {}: cannot read: ", cut.display());
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let docs: std::collections::BTreeSet<String> = out
        .records()
        .iter()
        .map(|c| c["doc_id"].as_str().unwrap().to_string())
        .collect();
    assert!(docs.len() > 1000, "{} documents written", docs.len());
    assert!(docs.len() < 3000, "{} documents written", docs.len());
    assert!(
        whole.starts_with(&out.stdout),
        "a prefix of the full output"
    );
    assert!(out.stdout.ends_with(b"\n"));
}
