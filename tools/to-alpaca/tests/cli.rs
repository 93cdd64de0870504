#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Run, contract::Contract, golden, testdata};

const BIN: &str = env!("CARGO_BIN_EXE_ft-to-alpaca");
const FORMATS: [&str; 6] = [
    "alpaca",
    "messages",
    "sharegpt",
    "clara-pretrain",
    "clara-instruction",
    "clara-e2e",
];

fn data(name: &str) -> std::path::PathBuf {
    testdata("to-alpaca", name)
}

#[test]
fn contract() {
    Contract {
        bin: BIN,
        args: &["--format", "messages"],
        input: &std::fs::read(data("qa.jsonl")).unwrap(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_to_alpaca::Args::command());
}

/// Every format on QA records (documents from --chunks; a system prompt where the format has one).
#[test]
fn every_format_on_qa_records() {
    for format in FORMATS {
        let mut run = Run::new(BIN)
            .args(["--format", format, "--chunks"])
            .arg(data("chunks.jsonl"));
        if !format.starts_with("clara") {
            run = run.args(["--system", "You answer questions about ftkit."]);
        }
        let out = run.arg(data("qa.jsonl")).run().expect_code(0);
        golden::check(&data(&format!("{format}.jsonl")), &out.stdout);
        let records = out.records();
        assert_eq!(records.len(), 3, "{format}");
        for r in &records {
            assert_eq!(
                r["meta"]["doc_id"].as_str().unwrap().chars().next(),
                Some('d'),
                "{format}: lineage kept"
            );
            assert!(r["meta"].get("question").is_none() && r["meta"].get("answer").is_none());
        }
    }
}

/// The CLaRa formats on records that carry their documents (a list, a string, an empty list).
#[test]
fn clara_formats_on_records_with_docs() {
    for format in ["clara-pretrain", "clara-instruction", "clara-e2e"] {
        let out = Run::new(BIN)
            .args(["--format", format])
            .arg(data("docs.jsonl"))
            .run()
            .expect_code(0);
        golden::check(&data(&format!("{format}.docs.jsonl")), &out.stdout);
    }
    let out = Run::new(BIN)
        .args(["--format", "clara-pretrain", "--strip-meta"])
        .arg(data("docs.jsonl"))
        .run();
    let first = &out.expect_code(0).records()[0];
    assert_eq!(
        first,
        &serde_json::json!({
            "data_type": "qa",
            "question": ["Qu'est-ce que \"ftkit\" ?"],
            "answers": ["Une boîte à outils\nen Rust."],
            "docs": ["ftkit est une boîte à outils.", "Elle est écrite en Rust."],
        })
    );
}

#[test]
fn alpaca_fields_in_order_and_context_as_input() {
    let out = Run::new(BIN).arg(data("qa.jsonl")).run().expect_code(0);
    let lines: Vec<&str> = out.stdout_str().lines().collect();
    assert!(lines[0].starts_with(
        "{\"instruction\":\"How large are the chunks of ft-chunk?\",\"input\":\"\",\"output\":"
    ));
    let third = &out.records()[2];
    assert_eq!(
        third["input"],
        "Outputs are written to a temporary file and renamed into place."
    );
    assert!(third.get("system").is_none());
    assert_eq!(
        third["meta"],
        serde_json::json!({"id":"qa3","chunk_id":"c3","doc_id":"d2","lang":"en","gen":{"model":"offline","seed":1}})
    );
}

#[test]
fn templates_and_field_mapping() {
    let input = "{\"title\":\"ftkit\",\"body\":\"A toolkit.\",\"summary\":\"Rust tools.\",\"n\":{\"k\":2}}\n";
    let out = Run::new(BIN)
        .args([
            "--template",
            "Summarise {{{title}}} (part {n.k})",
            "--input-field",
            "body",
            "--output-field",
            "summary",
        ])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"instruction\":\"Summarise {ftkit} (part 2)\",\"input\":\"A toolkit.\",\"output\":\"Rust tools.\",\"meta\":{\"title\":\"ftkit\",\"n\":{\"k\":2}}}\n"
    );
    let out = Run::new(BIN)
        .args([
            "--template",
            "T",
            "--input-template",
            "{title}: {body}",
            "--output-field",
            "summary",
            "--format",
            "messages",
            "--strip-meta",
        ])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"messages\":[{\"role\":\"user\",\"content\":\"T\\n\\nftkit: A toolkit.\"},{\"role\":\"assistant\",\"content\":\"Rust tools.\"}]}\n"
    );
}

#[test]
fn missing_fields_are_errors_or_rejects() {
    let input = "{\"question\":\"q\",\"answer\":\"a\"}\n{\"question\":\"q2\"}\n";
    let out = Run::new(BIN).stdin(input).run().expect_code(1);
    assert!(
        out.stderr.contains("<stdin>:2: missing field \"answer\""),
        "{}",
        out.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .args(["--on-error", "skip", "--rejects"])
        .arg(&rejects)
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(out.records().len(), 1);
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "{\"question\":\"q2\"}\n"
    );

    let out = Run::new(BIN)
        .args(["--format", "clara-pretrain"])
        .stdin("{\"question\":\"q\",\"answer\":\"a\"}\n")
        .run();
    assert!(
        out.expect_code(1)
            .stderr
            .contains("<stdin>:1: missing field \"docs\"")
    );
    let out = Run::new(BIN)
        .args(["--format", "clara-e2e", "--chunks"])
        .arg(data("chunks.jsonl"))
        .stdin("{\"question\":\"q\",\"answer\":\"a\",\"chunk_id\":\"zz\"}\n")
        .run();
    assert!(
        out.expect_code(1)
            .stderr
            .contains("<stdin>:1: chunk \"zz\" is not in --chunks")
    );
    let out = Run::new(BIN)
        .args(["--template", "{nope}"])
        .stdin("{\"answer\":\"a\"}\n")
        .run();
    assert!(
        out.expect_code(1)
            .stderr
            .contains("missing field \"nope\" (used by the template)")
    );
    let out = Run::new(BIN)
        .stdin("{\"question\":3,\"answer\":\"a\"}\n")
        .run();
    assert!(
        out.expect_code(1)
            .stderr
            .contains("<stdin>:1: field \"question\" is not a string")
    );
}

#[test]
fn a_bad_chunks_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = dir.path().join("chunks.jsonl");
    std::fs::write(&chunks, "{\"id\":\"c1\",\"text\":\"t\"}\n{\"id\":\"c2\"}\n").unwrap();
    let out = Run::new(BIN)
        .args(["--format", "clara-e2e", "--chunks"])
        .arg(&chunks)
        .arg(data("qa.jsonl"))
        .run();
    let out = out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "--chunks {}:2: missing field \"text\"",
            chunks.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--format", "clara-e2e", "--system", "x"][..],
        &["--format", "nope"],
        &["--template", "{unclosed"],
        &["--input-template", "a } b"],
    ] {
        let out = Run::new(BIN).args(args).arg(data("qa.jsonl")).run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

/// Issue 10: fields and template placeholders take the core's dotted paths, array indexes included.
#[test]
fn fields_and_templates_reach_array_items() {
    let input = "{\"q\":{\"alts\":[\"First?\",\"Second?\"]},\"answers\":[{\"text\":\"A1\"}],\"ctx\":[\"c0\",\"c1\"]}\n";
    let out = Run::new(BIN)
        .args([
            "--instruction-field",
            "q.alts.1",
            "--output-field",
            "answers.0.text",
            "--input-template",
            "{ctx.1}",
            "--strip-meta",
        ])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"instruction\":\"Second?\",\"input\":\"c1\",\"output\":\"A1\"}\n"
    );
}

/// The one template rule, shared with ft-ingest: `\n`, `\t`, `\\` and `{{` `}}` are read in the
/// template as typed on a command line (ft-to-alpaca used to keep `\n` as two characters).
#[test]
fn templates_read_escapes_like_ingest() {
    let out = Run::new(BIN)
        .args([
            "--template",
            r"Q: {q}\nTopic:\t{{{t}}} \\n \x",
            "--output-field",
            "a",
            "--strip-meta",
        ])
        .stdin("{\"q\":\"Why?\",\"t\":\"lora\",\"a\":\"Because.\"}\n")
        .run()
        .expect_code(0);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["instruction"], "Q: Why?\nTopic:\t{lora} \\n \\x");
}
