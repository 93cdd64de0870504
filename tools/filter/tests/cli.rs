#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_ft-filter");

fn qa() -> Vec<u8> {
    std::fs::read(testdata("filter", "qa.jsonl")).unwrap()
}

fn ids(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn contract() {
    Contract {
        bin: BIN,
        args: &["--min-score", "7"],
        input: &qa(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_filter::Args::command());
}

#[test]
fn min_score_and_exact_dedup_with_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .args(["--min-score", "7", "--dedup", "exact", "--rejects"])
        .arg(&rejects)
        .arg(testdata("filter", "qa.jsonl"))
        .run()
        .expect_code(0);
    golden::check(&testdata("filter", "curate.out.jsonl"), &out.stdout);
    golden::check(
        &testdata("filter", "curate.rejects.jsonl"),
        &std::fs::read(&rejects).unwrap(),
    );
    assert_eq!(
        ids(&out.stdout),
        ["q1", "q4", "q5", "q6", "q7", "q9", "q10"]
    );
    assert!(
        out.stderr
            .contains("kept 7 of 10 records; dropped 3: min_score 2, duplicate_exact 1"),
        "{}",
        out.stderr
    );
    // Kept records are passed through byte for byte.
    let input = String::from_utf8(qa()).unwrap();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        assert!(input.lines().any(|l| l == line));
    }
}

#[test]
fn minhash_drops_near_duplicates_and_prints_bands() {
    let out = Run::new(BIN)
        .args(["--dedup", "minhash", "--threshold", "0.8"])
        .stdin(qa())
        .run()
        .expect_code(0);
    golden::check(&testdata("filter", "minhash.out.jsonl"), &out.stdout);
    assert_eq!(
        ids(&out.stdout),
        ["q1", "q3", "q4", "q5", "q7", "q8", "q9", "q10"]
    );
    assert!(out.stderr.contains("9 bands x 13 rows"), "{}", out.stderr);
    assert!(out.stderr.contains("duplicate_minhash 2"), "{}", out.stderr);
    let quiet = Run::new(BIN)
        .args(["--dedup", "minhash", "-q"])
        .stdin(qa())
        .run()
        .expect_code(0);
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
    assert_eq!(quiet.stdout, out.stdout);
}

#[test]
fn where_chars_and_lang() {
    let out = Run::new(BIN)
        .args([
            "--where",
            "verdict == pass",
            "--where",
            "gen.model == offline",
            "--lang",
            "en",
        ])
        .args(["--min-chars", "20", "--chars-field", "answer"])
        .stdin(qa())
        .run()
        .expect_code(0);
    golden::check(&testdata("filter", "where.out.jsonl"), &out.stdout);
    assert_eq!(ids(&out.stdout), ["q1", "q2", "q5", "q6", "q8", "q10"]);
    assert!(
        out.stderr.contains("where: verdict == pass 2"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("lang 1"), "{}", out.stderr);
    assert!(out.stderr.contains("min_chars 1"), "{}", out.stderr);

    let out = Run::new(BIN)
        .args([
            "--where",
            "question matches ^Wh(at|ich)",
            "--max-chars",
            "60",
        ])
        .stdin(qa())
        .run();
    assert_eq!(
        ids(&out.expect_code(0).stdout),
        ["q1", "q2", "q8", "q10"],
        "q3 answers in 71 characters"
    );
}

#[test]
fn bad_lines_and_dropped_records_share_the_rejects_file_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let rejects = dir.path().join("rejects.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"score\":{\"overall\":9}}\n{\"id\":\"b\",\"score\":{\"overall\":3}}\nnot json\n{\"id\":\"c\",\"score\":{\"overall\":8}}\n",
    )
    .unwrap();
    let out = Run::new(BIN)
        .args(["--min-score", "5", "--on-error", "skip", "--rejects"])
        .arg(&rejects)
        .arg(&input)
        .run()
        .expect_code(0);
    assert_eq!(ids(&out.stdout), ["a", "c"]);
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "{\"id\":\"b\",\"score\":{\"overall\":3},\"reject_reason\":\"min_score\"}\nnot json\n"
    );
    assert!(
        out.stderr.contains("in.jsonl:3: invalid JSON"),
        "{}",
        out.stderr
    );

    // Without skip, the bad line stops the run and no rejects file appears.
    std::fs::remove_file(&rejects).unwrap();
    let out = Run::new(BIN)
        .args(["--min-score", "5", "--rejects"])
        .arg(&rejects)
        .arg(&input)
        .run()
        .expect_code(1);
    assert!(
        out.stderr.contains("in.jsonl:3: invalid JSON"),
        "{}",
        out.stderr
    );
    assert!(!rejects.exists());
}

#[test]
fn a_score_that_is_not_a_number_names_the_line() {
    let input = "{\"score\":{\"overall\":9}}\n{\"score\":{\"overall\":\"high\"}}\n";
    let out = Run::new(BIN)
        .args(["--min-score", "5"])
        .stdin(input)
        .run()
        .expect_code(1);
    assert!(
        out.stderr
            .contains("<stdin>:2: field \"score.overall\" is not a number"),
        "{}",
        out.stderr
    );
    let out = Run::new(BIN)
        .args(["--min-score", "5", "--score-field", "s"])
        .stdin("{\"s\":\"7.5\"}\n")
        .run();
    assert_eq!(
        out.expect_code(0).stdout,
        b"{\"s\":\"7.5\"}\n",
        "numeric strings count as scores"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--threshold", "0.8"][..],
        &["--dedup", "minhash", "--threshold", "1.5"],
        &["--where", "x ~ 1"],
        &["--where", "x matches ("],
        &["--min-chars", "9", "--max-chars", "3"],
        &["--dedup-fields", "text"],
        &["--dedup", "fuzzy"],
    ] {
        let out = Run::new(BIN).args(args).stdin(qa()).run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
}

fn lines_from(words: &[Vec<u8>]) -> String {
    // Small vocabulary so that exact and near duplicates happen often.
    const VOCAB: [&str; 6] = ["alpha", "Beta", "gamma", "delta", "ALPHA", "eps"];
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let text: Vec<&str> = w.iter().map(|&k| VOCAB[k as usize % VOCAB.len()]).collect();
            format!("{{\"id\":\"r{i}\",\"text\":\"{}\"}}\n", text.join(" "))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Dedup is idempotent, keeps a subsequence of the input, and never keeps two equal texts.
    #[test]
    fn dedup_is_idempotent(words in prop::collection::vec(prop::collection::vec(0u8..6, 0..8), 1..40),
                           minhash in any::<bool>()) {
        let input = lines_from(&words);
        let mode = if minhash { "minhash" } else { "exact" };
        let once = Run::new(BIN).args(["--dedup", mode, "-q"]).stdin(input.clone()).run().expect_code(0);
        let twice = Run::new(BIN).args(["--dedup", mode, "-q"]).stdin(once.stdout.clone()).run().expect_code(0);
        prop_assert_eq!(&once.stdout, &twice.stdout);
        let kept = String::from_utf8(once.stdout).unwrap();
        let mut rest = input.lines();
        for line in kept.lines() {
            prop_assert!(rest.any(|l| l == line), "output is not a subsequence of the input");
        }
        let texts: Vec<String> = kept
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_lowercase())
            .collect();
        let unique: std::collections::HashSet<&String> = texts.iter().collect();
        prop_assert_eq!(unique.len(), texts.len());
    }
}

#[test]
fn dedup_output_and_rejects_do_not_depend_on_threads() {
    // 60 variants of every record: near and exact duplicates across batch and task boundaries.
    let base = String::from_utf8(qa()).unwrap();
    let mut input = String::new();
    for copy in 0..60 {
        for line in base.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["id"] = format!("{}-{copy}", v["id"].as_str().unwrap()).into();
            if copy % 3 == 1 {
                v["answer"] = format!("{} (variant {copy})", v["answer"].as_str().unwrap()).into();
            }
            input.push_str(&serde_json::to_string(&v).unwrap());
            input.push('\n');
        }
    }
    for mode in ["exact", "minhash"] {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<(Vec<u8>, String)> = ["1", "7"]
            .iter()
            .map(|threads| {
                let rejects = dir.path().join(format!("rejects-{threads}.jsonl"));
                let out = Run::new(BIN)
                    .args(["--dedup", mode, "--threads", threads, "--rejects"])
                    .arg(&rejects)
                    .stdin(input.clone())
                    .run()
                    .expect_code(0);
                (out.stdout, std::fs::read_to_string(&rejects).unwrap())
            })
            .collect();
        assert_eq!(runs[0], runs[1], "{mode}: --threads 1 and 7 differ");
        let kept = runs[0]
            .0
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let dropped = runs[0].1.lines().count();
        assert_eq!(kept + dropped, 600);
        assert!(
            kept < 600 / 2,
            "{mode}: most copies are duplicates, kept {kept}"
        );
        let reason = format!("\"reject_reason\":\"duplicate_{mode}\"");
        assert!(
            runs[0]
                .1
                .lines()
                .all(|l| l.ends_with(&format!("{reason}}}"))),
            "{mode}"
        );
    }
}

#[test]
fn records_without_the_dedup_fields_are_errors_not_duplicates() {
    // Three distinct records that lack the dedup fields: before, each got the empty key and all but the
    // first were dropped as duplicates of it.
    let input = "{\"id\":\"a\",\"body\":\"one\"}\n{\"id\":\"b\",\"body\":\"two\"}\n{\"id\":\"c\",\"body\":\"three\"}\n";
    for args in [
        &["--dedup", "exact"][..],
        &["--dedup", "minhash"],
        &["--dedup", "exact", "--dedup-fields", "bodyy"],
    ] {
        let out = Run::new(BIN).args(args).stdin(input).run();
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("<stdin>:1: --dedup: field \"")
                && out.stderr.contains("is missing or null"),
            "{args:?}: {}",
            out.stderr
        );
        let dir = tempfile::tempdir().unwrap();
        let rejects = dir.path().join("r.jsonl");
        let out = Run::new(BIN)
            .args(args)
            .args(["--on-error", "skip", "--rejects"])
            .arg(&rejects)
            .stdin(input)
            .run()
            .expect_code(0);
        assert!(out.stdout.is_empty(), "{args:?}: no record has the key");
        assert_eq!(
            std::fs::read_to_string(&rejects).unwrap(),
            input,
            "{args:?}: every record is rejected verbatim, none as a duplicate"
        );
    }
    // The right field name dedups nothing here: the three bodies differ.
    let out = Run::new(BIN)
        .args(["--dedup", "exact", "--dedup-fields", "body"])
        .stdin(input)
        .run();
    assert_eq!(ids(&out.expect_code(0).stdout), ["a", "b", "c"]);
}

#[test]
fn an_invalid_utf8_line_goes_to_the_rejects_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let rejects = dir.path().join("r.jsonl");
    let bad: &[u8] = b"{\"id\":\"x\",\"score\":{\"overall\":9},\"t\":\"\xff\"}";
    let mut bytes =
        b"{\"id\":\"a\",\"score\":{\"overall\":9}}\n{\"id\":\"b\",\"score\":{\"overall\":3}}\n"
            .to_vec();
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(b"\n{\"id\":\"c\",\"score\":{\"overall\":8}}\n");
    std::fs::write(&input, &bytes).unwrap();
    // With and without dedup (the two ways ft-filter reads its input).
    for extra in [&[][..], &["--dedup", "exact", "--dedup-fields", "id"]] {
        let out = Run::new(BIN)
            .args(["--min-score", "5", "--on-error", "skip", "--rejects"])
            .arg(&rejects)
            .args(extra)
            .arg(&input)
            .run()
            .expect_code(0);
        assert!(
            out.stderr.contains("in.jsonl:3: invalid UTF-8"),
            "{}",
            out.stderr
        );
        assert_eq!(ids(&out.stdout), ["a", "c"]);
        // Before: stderr said the line was skipped, and the rejects file held only the dropped record.
        let mut expected =
            b"{\"id\":\"b\",\"score\":{\"overall\":3},\"reject_reason\":\"min_score\"}\n".to_vec();
        expected.extend_from_slice(bad);
        expected.push(b'\n');
        assert_eq!(std::fs::read(&rejects).unwrap(), expected, "{extra:?}");
    }
}

/// Issue 10: the core's one path syntax walks arrays by index (`tags.0` used to match nothing).
#[test]
fn where_reaches_array_items_by_index() {
    let input = "{\"id\":\"a\",\"tags\":[\"x\",\"y\"]}\n{\"id\":\"b\",\"tags\":[\"y\",\"x\"]}\n\
                 {\"id\":\"c\",\"tags\":[]}\n{\"id\":\"d\",\"tags.0\":\"x\",\"tags\":[\"z\"]}\n\
                 {\"id\":\"e\",\"q\":{\"list\":[{\"n\":3}]}}\n";
    let out = Run::new(BIN)
        .args(["--where", "tags.0 == x", "-q"])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(
        ids(&out.stdout),
        ["a", "d"],
        "d: a top-level key named \"tags.0\" wins over the path"
    );
    let out = Run::new(BIN)
        .args(["--where", "q.list.0.n >= 3", "-q"])
        .stdin(input)
        .run()
        .expect_code(0);
    assert_eq!(ids(&out.stdout), ["e"]);
}
