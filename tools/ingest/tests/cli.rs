//! ft-ingest end to end: the real binary on testdata/ingest/ and on generated trees.
//!
//! ft-ingest reads paths, not JSONL on stdin, so the shared contract (ftkit_testkit::contract) does not
//! fit as it is; the same checks are written out here for paths.
#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Outcome, Run, golden, workspace_root, zstd};
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_ft-ingest");
const TREE: &str = "testdata/ingest/tree";

/// Runs from the workspace root so that `source` paths in goldens are relative and stable.
fn ingest() -> Run {
    Run::new(BIN).current_dir(workspace_root())
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn texts(out: &Outcome) -> Vec<String> {
    out.records()
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect()
}

/// A folder of `n` markdown files and one JSONL file, large enough to overflow a pipe buffer.
fn big_tree(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("big");
    for i in 0..n {
        let body = format!(
            "# Document {i}\n\n{}\n",
            "Some words about fine-tuning data. ".repeat(60 + i % 7)
        );
        write(
            &root.join(format!("part-{:02}/doc-{i:04}.md", i % 13)),
            body,
        );
    }
    let lines: String = (0..2000)
        .map(|i| format!("{{\"text\":\"record {i}\",\"i\":{i}}}\n"))
        .collect();
    write(&root.join("records.jsonl"), lines);
    root
}

#[test]
fn golden_tree() {
    let out = ingest()
        .args([TREE, "--exclude", "qa"])
        .run()
        .expect_code(0);
    golden::check(
        &workspace_root().join("testdata/ingest/tree.golden.jsonl"),
        &out.stdout,
    );
    let warnings = [
        format!("ft-ingest: {TREE}/corrupt.txt: skipped (binary: a NUL byte in the first 8 KiB)"),
        format!("ft-ingest: {TREE}/data.bin: skipped (unknown file type; see --format)"),
        format!("ft-ingest: {TREE}/latin1.txt: skipped (invalid UTF-8 at byte 3)"),
        "ft-ingest: 11 files read, 3 skipped (1 binary, 1 invalid UTF-8, 1 unknown type), \
         16 documents written, 3 empty texts skipped"
            .to_string(),
    ];
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), warnings);

    let records = out.records();
    for r in &records {
        let text = r["text"].as_str().unwrap();
        assert_eq!(
            r["id"].as_str().unwrap(),
            ftkit_testkit::independent_id(&[text]),
            "id is the hash of the text"
        );
        assert!(r["meta"].is_object());
        assert!(!text.trim().is_empty());
    }
    let sources: Vec<&str> = records
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    let mut sorted = sources.clone();
    sorted.sort();
    assert_eq!(sources, sorted, "sources come in sorted order");
    assert!(
        !sources.iter().any(|s| s.contains(".hidden")),
        "hidden files are not walked"
    );
    // The HTML page: visible text only.
    let page = records
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with("page.html"))
        .unwrap();
    let page = page["text"].as_str().unwrap();
    assert!(
        page.starts_with("# Tokenization\n\nA tokenizer splits text into subword units."),
        "{page}"
    );
    assert!(
        !page.contains("console") && !page.contains("hidden") && !page.contains("font-family"),
        "{page}"
    );
    // The .zst markdown file reads like the plain one would.
    assert!(records.iter().any(
        |r| r["source"] == format!("{TREE}/nested/compressed.md.zst")
            && r["text"] == "# Compressed\n\nThis markdown file is stored with zstd.\n"
    ));
    // Lineage of record sources; the input's own "id" is kept in meta.
    let first = &records[1];
    assert_eq!(first["source"], format!("{TREE}/lines.jsonl"));
    assert_eq!(
        (
            first["source_line"].as_u64(),
            first["record_index"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(first["meta"], serde_json::json!({"id": "ext-1", "n": 1}));
}

#[test]
fn templates_and_dotted_paths() {
    let out = ingest()
        .args([
            &format!("{TREE}/qa/faq.csv"),
            "--template",
            r"Q: {question}\nA: {answer}",
        ])
        .run();
    let out = out.expect_code(0);
    golden::check(
        &workspace_root().join("testdata/ingest/faq.golden.jsonl"),
        &out.stdout,
    );
    assert_eq!(
        texts(&out)[0],
        "Q: What does LoRA train?\nA: Two low-rank matrices per adapted layer."
    );
    assert_eq!(
        out.records()[0]["meta"],
        serde_json::json!({"topic": "lora"})
    );

    let out = ingest()
        .args([
            &format!("{TREE}/qa/faq.jsonl"),
            "--template",
            r"{q.title}\n{answers.0}",
        ])
        .run();
    let rec = &out.expect_code(0).records()[0];
    assert_eq!(rec["text"], "Why JSONL?\nOne record per line streams well.");
    assert_eq!(rec["meta"]["src"], "faq");
    assert_eq!(
        rec["meta"]["answers"][1], "unused",
        "dotted paths keep their parent in meta"
    );

    let out = ingest()
        .args([&format!("{TREE}/qa/faq.jsonl"), "--text-field", "q.title"])
        .run();
    assert_eq!(texts(&out.expect_code(0)), ["Why JSONL?"]);
}

#[test]
fn max_records_caps_each_source_in_file_order() {
    let out = ingest().args([
        &format!("{TREE}/lines.jsonl"),
        &format!("{TREE}/table.csv"),
        "--max-records",
        "2",
    ]);
    let out = out.run().expect_code(0);
    assert_eq!(
        texts(&out),
        [
            "First line record.",
            "Second line record with unicode: é中.",
            "A CSV row, with a comma.",
            "A quoted\nmulti-line row."
        ]
    );
    // The cap counts documents written: an empty record does not use it up.
    let out = ingest()
        .args([&format!("{TREE}/lines.jsonl"), "--max-records", "3", "-q"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out).last().unwrap(), "Fourth, after an empty one.");
    assert!(out.stderr.is_empty(), "-q: {}", out.stderr);
}

#[test]
fn globs_and_excludes() {
    let out = ingest()
        .args([TREE, "--glob", "*.md", "--glob", "*.md.zst", "-q"])
        .run()
        .expect_code(0);
    let sources: Vec<String> = out
        .records()
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sources,
        [
            format!("{TREE}/guide.md"),
            format!("{TREE}/nested/compressed.md.zst"),
            format!("{TREE}/nested/deeper/more.md")
        ]
    );
    let out = ingest()
        .args([TREE, "--glob", "nested/*/*.md", "-q"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["Deeper document in a nested folder.\n"]);
    let out = ingest()
        .args([
            TREE,
            "--exclude",
            "nested",
            "--exclude",
            "qa",
            "--exclude",
            "*.json*",
            "-q",
        ])
        .run();
    let out = out.expect_code(0);
    assert!(out.records().iter().all(|r| {
        let s = r["source"].as_str().unwrap();
        !s.contains("nested") && !s.contains(".json")
    }));
    assert_eq!(out.records().len(), 7);
    let out = ingest()
        .args([TREE, "--hidden", "--glob", ".hidden.md"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["visible?\n"]);
    let out = ingest().args([TREE, "--glob", "a["]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--glob \"a[\""), "{}", out.stderr);
}

#[test]
fn stdin_dash_and_zst_sources() {
    let dir = tempfile::tempdir().unwrap();
    let lines = std::fs::read(workspace_root().join(TREE).join("lines.jsonl")).unwrap();
    let plain = dir.path().join("lines.jsonl");
    let packed = dir.path().join("lines.jsonl.zst");
    write(&plain, &lines);
    write(&packed, zstd(&lines));
    let a = Run::new(BIN).arg(&plain).run().expect_code(0);
    let b = Run::new(BIN).arg(&packed).run().expect_code(0);
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(texts(&a).len(), 3);
    let c = Run::new(BIN)
        .args(["-", "--format", "jsonl"])
        .stdin(zstd(&lines))
        .run()
        .expect_code(0);
    assert_eq!(texts(&c), texts(&a));
    assert_eq!(c.records()[0]["source"], "<stdin>");
    let d = Run::new(BIN)
        .arg("-")
        .stdin("piped text\n")
        .run()
        .expect_code(0);
    assert_eq!(texts(&d), ["piped text\n"]);
    let e = Run::new(BIN)
        .args(["-", "--format", "html"])
        .stdin("<p>a <b>b</b></p><script>x</script>")
        .run();
    assert_eq!(texts(&e.expect_code(0)), ["a b"]);
    let twice = Run::new(BIN).args(["-", "-"]).run();
    assert_eq!(twice.code, 2, "{}", twice.stderr);
}

#[test]
fn corrupt_zst_is_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = zstd(b"# title\n\nsome text that compresses\n");
    let n = bad.len();
    bad.truncate(n - 6);
    write(&dir.path().join("a.md.zst"), &bad);
    write(&dir.path().join("b.md"), "fine\n");
    let out = Run::new(BIN).arg(dir.path()).run().expect_code(0);
    assert_eq!(texts(&out), ["fine\n"]);
    let warning = format!(
        "ft-ingest: {}: skipped (",
        dir.path().join("a.md.zst").display()
    );
    assert!(out.stderr.starts_with(&warning), "{}", out.stderr);
    assert!(
        out.stderr.contains("1 file read, 1 skipped (1 unreadable)"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Run::new(BIN).args([TREE, "--no-such-flag"]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    for args in [
        vec![],
        vec![TREE, "--template", "{unclosed"],
        vec![TREE, "--template", "no fields"],
        vec![TREE, "--threads", "0"],
        vec![TREE, "--max-records", "0"],
        vec![TREE, "--text-field", "a", "--template", "{b}"],
        vec![TREE, "--format", "odt"],
    ] {
        let out = ingest().args(&args).run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let out = ingest().arg("testdata/ingest/no-such-file.md").run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("ft-ingest: testdata/ingest/no-such-file.md: cannot read"),
        "{}",
        out.stderr
    );
}

#[test]
fn malformed_jsonl_line_exits_1_naming_path_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("in/bad.jsonl");
    write(
        &bad,
        "{\"text\":\"one\"}\n{\"text\":\"two\"}\n{\"broken\": \n{\"text\":\"four\"}\n",
    );
    let out = Run::new(BIN).arg(&bad).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let needle = format!("ft-ingest: {}:3: invalid JSON object", bad.display());
    assert!(
        out.stderr.contains(&needle),
        "stderr lacks {needle:?}: {}",
        out.stderr
    );
    assert_eq!(
        texts(&out),
        ["one", "two"],
        "records before the bad line are written"
    );

    // Through a folder walk, and with -o: no output file, no temporary file, old file untouched.
    let target = dir.path().join("out.jsonl");
    let folder = dir.path().join("in");
    Run::new(BIN)
        .arg(&folder)
        .arg("-o")
        .arg(&target)
        .run()
        .expect_code(1);
    assert!(!target.exists());
    write(&target, "old\n");
    Run::new(BIN)
        .arg(&folder)
        .arg("-o")
        .arg(&target)
        .run()
        .expect_code(1);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "temporary files left behind"
    );

    // --on-error skip: warned with path:line, kept verbatim in --rejects, exit 0.
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .arg(&bad)
        .args(["--on-error", "skip", "--rejects"])
        .arg(&rejects)
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["one", "two", "four"]);
    assert!(
        out.stderr
            .contains(&format!("{}:3: invalid JSON object", bad.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("1 record rejected"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "{\"broken\": \n"
    );

    // Invalid UTF-8 inside a JSONL line is a bad line too.
    write(&bad, b"{\"text\":\"ok\"}\n{\"text\":\"\xff\"}\n");
    let out = Run::new(BIN).arg(&bad).run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("{}:2: invalid UTF-8", bad.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn records_without_the_text_field_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("recs.json");
    write(
        &json,
        "[\n  {\"text\": \"a\"},\n  {\n    \"body\": \"no text\"\n  },\n  {\"text\": \"c\"}\n]\n",
    );
    let out = Run::new(BIN).arg(&json).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}:3: missing field \"text\"", json.display())),
        "{}",
        out.stderr
    );

    let csv = dir.path().join("rows.csv");
    write(&csv, "text,n\nfirst,1\nsecond,2,extra\n,4\n");
    let out = Run::new(BIN).arg(&csv).run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "{}:3: row has 3 fields, the header 2",
            csv.display()
        )),
        "{}",
        out.stderr
    );

    let rejects = dir.path().join("rejects.txt");
    let out = Run::new(BIN)
        .args([&json, &csv])
        .args(["--on-error", "skip", "--rejects"])
        .arg(&rejects)
        .run();
    let out = out.expect_code(0);
    assert_eq!(texts(&out), ["a", "c", "first"]);
    assert!(
        out.stderr.contains("2 records rejected") && out.stderr.contains("1 empty text skipped"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "{\n    \"body\": \"no text\"\n  }\nsecond,2,extra\n"
    );

    // A .json file that does not parse at all: path:line, or skipped with a warning.
    write(&json, "[{\"text\": \"a\"},\n {\"text\": }]\n");
    let out = Run::new(BIN).arg(&json).run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("{}:2: invalid JSON", json.display())),
        "{}",
        out.stderr
    );
    let out = Run::new(BIN)
        .arg(&json)
        .args(["--on-error", "skip"])
        .run()
        .expect_code(0);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("skipped (line 2: invalid JSON"),
        "{}",
        out.stderr
    );
}

#[test]
fn closed_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let root = big_tree(dir.path(), 1500); // about 3.5 MB of output
    let out = Run::new(BIN).arg(&root).run_head1();
    assert_eq!(out.code, 0, "closed pipe: {}", out.stderr);
    assert!(
        out.stderr.is_empty(),
        "closed pipe must be quiet: {}",
        out.stderr
    );
    assert!(out.stdout.ends_with(b"\n"));
}

#[test]
fn threads_do_not_change_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = big_tree(dir.path(), 300);
    for path in [
        root.display().to_string(),
        workspace_root().join(TREE).display().to_string(),
    ] {
        let one = Run::new(BIN)
            .args([&path, "--exclude", "qa", "--threads", "1", "-q"])
            .run()
            .expect_code(0);
        let four = Run::new(BIN)
            .args([&path, "--exclude", "qa", "--threads", "4", "-q"])
            .run()
            .expect_code(0);
        assert!(!one.stdout.is_empty());
        assert!(
            one.stdout == four.stdout,
            "output differs between --threads 1 and 4 for {path}"
        );
    }
}

#[test]
fn output_file_is_atomic_and_may_be_zst() {
    let dir = tempfile::tempdir().unwrap();
    let reference = ingest()
        .args([TREE, "-q"])
        .arg("--exclude=qa")
        .run()
        .expect_code(0)
        .stdout;
    let out = dir.path().join("docs.jsonl");
    let zst = dir.path().join("docs.jsonl.zst");
    let r = ingest()
        .args([TREE, "-q", "--exclude=qa", "-o"])
        .arg(&out)
        .run()
        .expect_code(0);
    assert!(r.stdout.is_empty(), "stdout must stay empty with -o");
    assert_eq!(std::fs::read(&out).unwrap(), reference);
    ingest()
        .args([TREE, "-q", "--exclude=qa", "-o"])
        .arg(&zst)
        .run()
        .expect_code(0);
    assert_eq!(
        zstd::decode_all(&std::fs::read(&zst).unwrap()[..]).unwrap(),
        reference
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn man_page_is_current() {
    ftkit_testkit::man::check(ft_ingest::Args::command());
}

#[test]
fn stdin_jsonl_streams_like_a_file() {
    // stdin is converted as a stream, flushed every few MiB; a small file in memory: same records.
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    for i in 0..60_000 {
        input.push_str(&format!(
            "{{\"text\":\"record {i} {}\",\"i\":{i}}}\n",
            "x".repeat(i % 90)
        ));
        if i == 40_000 {
            input.push_str("{\"no_text\":true}\n");
        }
    }
    let file = dir.path().join("big.jsonl");
    write(&file, &input);
    let skip = ["--on-error", "skip", "-q"];
    let from_file = Run::new(BIN).arg(&file).args(skip).run().expect_code(0);
    let from_stdin = Run::new(BIN)
        .args(["-", "--format", "jsonl"])
        .args(skip)
        .stdin(input.clone())
        .run();
    let from_stdin = from_stdin.expect_code(0);
    assert!(
        from_stdin.stdout.len() > 8 << 20,
        "output spans several flushes"
    );
    let strip = |out: &Outcome| {
        out.records()
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("source");
                r
            })
            .collect::<Vec<_>>()
    };
    for threads in ["1", "3"] {
        let again = Run::new(BIN)
            .args(["-", "--format", "jsonl", "--threads", threads])
            .args(skip);
        let again = again.stdin(input.clone()).run().expect_code(0);
        assert!(
            again.stdout == from_stdin.stdout,
            "--threads {threads} differs"
        );
    }
    let (a, b) = (strip(&from_file), strip(&from_stdin));
    assert_eq!(a.len(), 60_000);
    assert!(a == b, "stdin stream and file differ");
    assert_eq!(b[40_001]["source_line"], 40_003);
    assert_eq!(b[40_001]["record_index"], 40_002);

    // Fail policy in a stream: the documents before the bad line are written, then path:line.
    let out = Run::new(BIN)
        .args(["-", "--format", "jsonl"])
        .stdin(input.clone())
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ft-ingest: <stdin>:40002: missing field \"text\""),
        "{}",
        out.stderr
    );
    assert_eq!(out.records().len(), 40_001);

    let out = Run::new(BIN)
        .args(["-", "--format", "jsonl", "--max-records", "3"])
        .stdin(input)
        .run();
    assert_eq!(
        texts(&out.expect_code(0)),
        ["record 0 ", "record 1 x", "record 2 xx"]
    );
}

#[test]
fn bundled_docs_are_ingested() {
    let out = ingest().arg("testdata/docs").run().expect_code(0);
    let records = out.records();
    assert!(
        (6..=10).contains(&records.len()),
        "{} documents",
        records.len()
    );
    for r in &records {
        let text = r["text"].as_str().unwrap();
        assert!(text.len() > 1500, "{}: {} bytes", r["source"], text.len());
        assert!(r["source"].as_str().unwrap().starts_with("testdata/docs/"));
    }
    assert!(
        out.stderr.ends_with(&format!(
            "{0} files read, {0} documents written\n",
            records.len()
        )),
        "{}",
        out.stderr
    );
}

/// The one template rule, shared with ft-to-alpaca (the same template and expected text are in its
/// `templates_read_escapes_like_ingest`): `\n`, `\t`, `\\`, `{{` `}}` are read in the template.
#[test]
fn templates_read_escapes_like_to_alpaca() {
    let out = ingest()
        .args([
            "-",
            "--format",
            "jsonl",
            "--template",
            r"Q: {q}\nTopic:\t{{{t}}} \\n \x",
        ])
        .stdin("{\"q\":\"Why?\",\"t\":\"lora\",\"a\":\"Because.\"}\n")
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["Q: Why?\nTopic:\t{lora} \\n \\x"]);
}

/// Issue 10, item 12: CSV/TSV with CRLF line ends give the same `source_line` as with LF (the first
/// line of the row), a quoted field holding a line break included; `--rejects` gets the row alone.
#[test]
fn crlf_csv_rows_report_their_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    // Lines: 1 header, 2 a, 3 b, 4-5 the quoted c, 6 blank, 7 a bad row, 8 d.
    let rows = [
        "text,n", "a,1", "b,2", "\"c", "more\",3", "", "bad", "d,4", "",
    ];
    let expected = [(2, "a"), (3, "b"), (4, "c\nmore"), (8, "d")];
    for (name, eol) in [("lf.csv", "\n"), ("crlf.csv", "\r\n"), ("crlf.tsv", "\r\n")] {
        let mut body = rows.join(eol);
        if name.ends_with(".tsv") {
            body = body.replace(',', "\t");
        }
        let path = dir.path().join(name);
        write(&path, &body);
        let rejects = dir.path().join(format!("{name}.rejects"));
        let out = ingest()
            .arg(&path)
            .args(["--on-error", "skip", "--rejects"])
            .arg(&rejects)
            .run()
            .expect_code(0);
        let got: Vec<(u64, String)> = out
            .records()
            .iter()
            .map(|r| {
                let text = r["text"].as_str().unwrap().replace("\r\n", "\n");
                (r["source_line"].as_u64().unwrap(), text)
            })
            .collect();
        let want: Vec<(u64, String)> = expected.iter().map(|(l, t)| (*l, t.to_string())).collect();
        assert_eq!(got, want, "{name}");
        let shown = path.display();
        assert!(
            out.stderr
                .contains(&format!("{shown}:7: row has 1 fields, the header 2")),
            "{name}: {}",
            out.stderr
        );
        assert_eq!(
            std::fs::read_to_string(&rejects).unwrap(),
            "bad\n",
            "{name}"
        );
    }
}

/// Runs ft-ingest with a deadline: a run that blocks (on a FIFO with no writer) fails the test
/// instead of hanging it. Output goes to files so that nothing blocks on a full pipe.
fn run_within(args: &[&std::ffi::OsStr], secs: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .current_dir(workspace_root())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ft-ingest {args:?} still running after {secs} s; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Issue 10, item 7: a walk does not leave the folder given through symbolic links (relative and
/// absolute, to a file or a folder) unless --follow-links; links that stay inside are followed.
#[cfg(unix)]
#[test]
fn links_out_of_the_folder_are_skipped_unless_follow_links() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    write(&root.join("doc.md"), "inside");
    write(&root.join("sub/x.md"), "below");
    write(&outside.join("secret.md"), "secret");
    symlink("../outside/secret.md", root.join("rel.md")).unwrap();
    symlink(outside.join("secret.md"), root.join("abs.md")).unwrap();
    symlink("../outside", root.join("outdir")).unwrap();
    symlink("sub/x.md", root.join("in.md")).unwrap();
    let r = root.display().to_string();
    let real_outside = outside.canonicalize().unwrap();

    let out = ingest().arg(&root).run().expect_code(0);
    let sources: Vec<String> = out
        .records()
        .iter()
        .map(|rec| rec["source"].as_str().unwrap()[r.len() + 1..].to_string())
        .collect();
    assert_eq!(sources, ["doc.md", "in.md", "sub/x.md"], "{}", out.stderr);
    assert!(!texts(&out).contains(&"secret".to_string()));
    for (link, target) in [
        ("abs.md", real_outside.join("secret.md")),
        ("outdir", real_outside.clone()),
        ("rel.md", real_outside.join("secret.md")),
    ] {
        let line = format!(
            "ft-ingest: {r}/{link}: skipped (symbolic link to {} is outside {r}; \
             --follow-links follows it)",
            target.display()
        );
        assert!(
            out.stderr.lines().any(|l| l == line),
            "{line}\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .ends_with("3 files read, 3 skipped (3 outside the folder), 3 documents written\n"),
        "{}",
        out.stderr
    );

    let out = ingest()
        .arg(&root)
        .arg("--follow-links")
        .run()
        .expect_code(0);
    assert_eq!(
        texts(&out),
        ["secret", "inside", "below", "secret", "secret", "below"],
        "abs.md, doc.md, in.md, outdir/secret.md, rel.md, sub/x.md"
    );
    assert!(!out.stderr.contains("skipped"), "{}", out.stderr);

    // A link that --glob leaves out is not reported; a folder link still is (it could hold matches).
    symlink(outside.join("secret.md"), root.join("other.txt")).unwrap();
    let out = ingest()
        .arg(&root)
        .args(["--glob", "*.txt", "-q"])
        .run()
        .expect_code(0);
    assert!(out.stdout.is_empty());
    let out = ingest()
        .arg(&root)
        .args(["--glob", "*.txt"])
        .run()
        .expect_code(0);
    assert!(
        out.stderr
            .ends_with(", 2 skipped (2 outside the folder), 0 documents written\n")
            && out.stderr.contains("/other.txt: skipped")
            && out.stderr.contains("/outdir: skipped"),
        "{}",
        out.stderr
    );
}

/// Issue 10, item 8: FIFOs and devices are not opened (a FIFO with no writer used to block
/// forever, a link to /dev/zero to read until out of memory), in a walk or named directly.
#[cfg(unix)]
#[test]
fn fifos_and_devices_are_skipped_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(&root.join("doc.md"), "text");
    let fifo = root.join("pipe.txt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.txt")).unwrap();
    let r = root.display().to_string();
    let skipped = |name: &str| {
        format!("ft-ingest: {r}/{name}: skipped (not a regular file; pipe it into - to read it)")
    };

    let out = run_within(&[root.as_os_str(), os("--follow-links")], 60).expect_code(0);
    assert_eq!(texts(&out), ["text"]);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            skipped("pipe.txt").as_str(),
            &skipped("zero.txt"),
            "ft-ingest: 1 file read, 2 skipped (2 not regular), 1 document written"
        ]
    );

    let out = run_within(&[fifo.as_os_str(), root.join("zero.txt").as_os_str()], 60);
    let out = out.expect_code(0);
    assert!(out.stdout.is_empty());
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            skipped("pipe.txt").as_str(),
            &skipped("zero.txt"),
            "ft-ingest: 0 files read, 2 skipped (2 not regular), 0 documents written"
        ]
    );
}

/// Issue 10, item 8: --max-file-size skips a bigger source (on disk, or once decompressed) with a
/// message; a source of exactly the limit is read; a JSONL file is capped per line, not as a whole.
#[test]
fn files_over_max_file_size_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let text = "0123456789abcdef".repeat(256); // 4 KiB
    write(&dir.path().join("big.md"), &text);
    write(&dir.path().join("exact.md"), &text[..1024]);
    write(&dir.path().join("packed.md.zst"), zstd(text.as_bytes()));
    // 64 short lines, 1.8 KB in all: the cap is per line for JSONL.
    let jsonl = "{\"text\":\"0123456789abcdef\"}\n".repeat(64);
    write(&dir.path().join("rows.jsonl"), &jsonl);
    let out = ingest()
        .arg(dir.path())
        .args(["--max-file-size", "1K"])
        .run()
        .expect_code(0);
    let mut want = vec![&text[..1024]];
    want.extend(["0123456789abcdef"; 64]);
    assert_eq!(texts(&out), want);
    let d = dir.path().display();
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "ft-ingest: {d}/big.md: skipped (too big: 4096 bytes over --max-file-size (1024 bytes))"
            ),
            format!(
                "ft-ingest: {d}/packed.md.zst: skipped (too big: the decompressed text over \
                 --max-file-size (1024 bytes))"
            ),
            "ft-ingest: 2 files read, 2 skipped (2 too big), 65 documents written".to_string(),
        ]
    );
    // The default (256M) reads them all.
    let out = ingest().arg(dir.path()).run().expect_code(0);
    assert_eq!(out.records().len(), 67);
    for bad in ["1X", "1..5M", "K", ""] {
        let out = ingest()
            .arg(dir.path())
            .args(["--max-file-size", bad])
            .run();
        assert_eq!(out.code, 2, "{bad:?}: {}", out.stderr);
    }
}

/// Issue 10, item 8: a big file of zeros is called binary from its first bytes, not read whole. The
/// run gets 1 GiB of address space for a 4 GiB sparse file: reading it whole cannot fit.
#[cfg(target_os = "linux")]
#[test]
fn a_sparse_zero_file_is_binary_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.txt");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let out = Run::new("sh")
        .args(["-c", "ulimit -v 1048576 && exec \"$0\" \"$@\"", BIN])
        .arg(&path)
        .args(["--threads", "1", "--max-file-size", "8G"])
        .run()
        .expect_code(0);
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "ft-ingest: {}: skipped (binary: a NUL byte in the first 8 KiB)",
                path.display()
            ),
            "ft-ingest: 0 files read, 1 skipped (1 binary), 0 documents written".to_string(),
        ]
    );
}

/// Issue 10, item 8: JSONL streams, so --max-file-size caps each line: a longer one stops the run
/// (it is not read whole into memory), lines within the cap are read.
#[test]
fn a_jsonl_line_over_max_file_size_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(4096);
    let path = dir.path().join("rows.jsonl");
    write(
        &path,
        format!("{{\"text\":\"short\"}}\n{{\"text\":\"{long}\"}}\n{{\"text\":\"after\"}}\n"),
    );
    let out = ingest()
        .arg(&path)
        .args(["--max-file-size", "1K"])
        .run()
        .expect_code(1);
    assert_eq!(texts(&out), ["short"]);
    assert_eq!(
        out.stderr,
        format!(
            "ft-ingest: {}: cannot read: line 2 is longer than --max-file-size (1024 bytes)\n",
            path.display()
        )
    );
    let out = ingest().arg(&path).run().expect_code(0);
    assert_eq!(texts(&out), ["short", &long, "after"]);
}

/// `-o` or `--rejects` naming an input file is a usage error naming both; the input is untouched.
#[test]
fn outputs_naming_an_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("notes.jsonl");
    let data = b"{\"text\":\"a note\"}\n";
    std::fs::write(&input, data).unwrap();
    for flag in ["-o", "--rejects"] {
        let r = Run::new(BIN).arg(&input).arg(flag).arg(&input).run();
        assert_eq!(r.code, 2, "{flag}: {}", r.stderr);
        assert!(
            r.stderr.contains(flag) && r.stderr.contains("input"),
            "{}",
            r.stderr
        );
        assert_eq!(std::fs::read(&input).unwrap(), data, "{flag}");
    }
}

// ---- Parquet ------------------------------------------------------------------------------------

/// One column chunk to write: values, then definition and repetition levels (None: a required,
/// unrepeated column).
enum Col {
    Str(Vec<&'static str>, Option<Vec<i16>>, Option<Vec<i16>>),
    I32(Vec<i32>, Option<Vec<i16>>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Writes a Parquet file with the `parquet` crate: `groups` row groups of column chunks in leaf order.
fn write_parquet(
    path: &Path,
    schema: &str,
    codec: parquet::basic::Compression,
    groups: Vec<Vec<Col>>,
) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(WriterProperties::builder().set_compression(codec).build());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in groups {
        let mut rg = writer.next_row_group().unwrap();
        for col in group {
            let mut cw = rg.next_column().unwrap().unwrap();
            match col {
                Col::Str(v, def, rep) => {
                    let v: Vec<ByteArray> = v.into_iter().map(ByteArray::from).collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&v, def.as_deref(), rep.as_deref())
                        .unwrap();
                }
                Col::I32(v, def) => {
                    cw.typed::<Int32Type>()
                        .write_batch(&v, def.as_deref(), None)
                        .unwrap();
                }
                Col::I64(v) => {
                    cw.typed::<Int64Type>().write_batch(&v, None, None).unwrap();
                }
                Col::F64(v) => {
                    cw.typed::<DoubleType>()
                        .write_batch(&v, None, None)
                        .unwrap();
                }
            };
            cw.close().unwrap();
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

const FLAT_SCHEMA: &str = "message doc {
    REQUIRED BYTE_ARRAY text (UTF8);
    REQUIRED INT64 n;
    OPTIONAL BYTE_ARRAY lang (UTF8);
    REQUIRED DOUBLE score;
}";

/// Three rows of flat columns in two row groups (snappy, as on the Hugging Face hub).
fn flat_parquet(path: &Path) {
    write_parquet(
        path,
        FLAT_SCHEMA,
        parquet::basic::Compression::SNAPPY,
        vec![
            vec![
                Col::Str(vec!["alpha one", "beta two"], None, None),
                Col::I64(vec![1, 2]),
                Col::Str(vec!["en"], Some(vec![1, 0]), None),
                Col::F64(vec![0.5, 1.25]),
            ],
            vec![
                Col::Str(vec!["gamma three"], None, None),
                Col::I64(vec![3]),
                Col::Str(vec!["fr"], Some(vec![1]), None),
                Col::F64(vec![2.0]),
            ],
        ],
    );
}

#[test]
fn parquet_rows_are_documents_like_jsonl_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.parquet");
    flat_parquet(&path);
    let source = path.display().to_string();
    let out = Run::new(BIN).arg(&path).run().expect_code(0);
    let doc = |text: &str, index: u64, meta: serde_json::Value| {
        serde_json::json!({
            "id": ftkit_testkit::independent_id(&[text]), "text": text, "source": source,
            "record_index": index, "meta": meta,
        })
    };
    assert_eq!(
        out.records(),
        [
            doc(
                "alpha one",
                0,
                serde_json::json!({"n": 1, "lang": "en", "score": 0.5})
            ),
            doc(
                "beta two",
                1,
                serde_json::json!({"n": 2, "lang": null, "score": 1.25})
            ),
            doc(
                "gamma three",
                2,
                serde_json::json!({"n": 3, "lang": "fr", "score": 2.0})
            ),
        ],
        "row numbers run on across row groups; no source_line"
    );
    assert!(
        out.stdout_str()
            .contains(r#""meta":{"n":1,"lang":"en","score":0.5}}"#),
        "meta in column order: {}",
        out.stdout_str()
    );
    assert!(
        out.stderr.contains("1 file read, 3 documents written"),
        "{}",
        out.stderr
    );

    // --template and --max-records as for JSONL.
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--template", "{text} #{n}", "--max-records", "2"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["alpha one #1", "beta two #2"]);
    assert_eq!(
        out.records()[1]["meta"],
        serde_json::json!({"lang": null, "score": 1.25})
    );

    // Stdin and .zst (read into memory first): the same rows.
    let bytes = std::fs::read(&path).unwrap();
    let zst = dir.path().join("train.parquet.zst");
    std::fs::write(&zst, zstd(&bytes)).unwrap();
    let out = Run::new(BIN).arg(&zst).run().expect_code(0);
    assert_eq!(texts(&out), ["alpha one", "beta two", "gamma three"]);
    let out = Run::new(BIN)
        .args(["-", "--format", "parquet"])
        .stdin(bytes.clone())
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["alpha one", "beta two", "gamma three"]);
    assert_eq!(out.records()[2]["source"], "<stdin>");
    // In memory, --max-file-size caps the whole file.
    let out = Run::new(BIN)
        .arg(&zst)
        .args(["--max-file-size", &(bytes.len() - 1).to_string()])
        .run()
        .expect_code(0);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .contains("skipped (too big: a Parquet file read into memory"),
        "{}",
        out.stderr
    );
}

#[test]
fn parquet_nested_and_null_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.parquet");
    write_parquet(
        &path,
        "message doc {
            OPTIONAL BYTE_ARRAY text (UTF8);
            OPTIONAL group info { REQUIRED INT32 year; OPTIONAL BYTE_ARRAY author (UTF8); }
            OPTIONAL group tags (LIST) { REPEATED group list { OPTIONAL BYTE_ARRAY element (UTF8); } }
        }",
        parquet::basic::Compression::ZSTD(Default::default()),
        // Rows: {first, {2020, ann}, [x, y]}, {null, null, null}, {third, {1999, null}, [null, z]},
        // {fourth, {2001, bo}, []}.
        vec![vec![
            Col::Str(vec!["first", "third", "fourth"], Some(vec![1, 0, 1, 1]), None),
            Col::I32(vec![2020, 1999, 2001], Some(vec![1, 0, 1, 1])),
            Col::Str(vec!["ann", "bo"], Some(vec![2, 0, 1, 2]), None),
            Col::Str(
                vec!["x", "y", "z"],
                Some(vec![3, 3, 0, 2, 3, 1]),
                Some(vec![0, 1, 0, 0, 1, 0]),
            ),
        ]],
    );
    let shown = path.display().to_string();

    // A null text is a missing field: the run stops at its row (1-based) after the rows before it.
    let out = Run::new(BIN).arg(&path).run().expect_code(1);
    assert_eq!(texts(&out), ["first"]);
    assert!(
        out.stderr
            .contains(&format!("{shown}:2: missing field \"text\"")),
        "{}",
        out.stderr
    );

    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--on-error", "skip", "--rejects"])
        .arg(&rejects)
        .run()
        .expect_code(0);
    let got: Vec<(String, u64, serde_json::Value)> = out
        .records()
        .iter()
        .map(|r| {
            assert!(r.get("source_line").is_none(), "{r}");
            (
                r["text"].as_str().unwrap().to_string(),
                r["record_index"].as_u64().unwrap(),
                r["meta"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "first".to_string(),
                0,
                serde_json::json!({"info": {"year": 2020, "author": "ann"}, "tags": ["x", "y"]})
            ),
            (
                "third".to_string(),
                2,
                serde_json::json!({"info": {"year": 1999, "author": null}, "tags": [null, "z"]})
            ),
            (
                "fourth".to_string(),
                3,
                serde_json::json!({"info": {"year": 2001, "author": "bo"}, "tags": []})
            ),
        ]
    );
    // Struct fields keep the schema's order (year before author), not sorted.
    assert!(
        out.stdout_str()
            .contains(r#""info":{"year":2020,"author":"ann"}"#),
        "{}",
        out.stdout_str()
    );
    assert!(
        out.stderr
            .contains(&format!("{shown}:2: missing field \"text\" (skipped)")),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "{\"text\":null,\"info\":null,\"tags\":null}\n"
    );

    // Dotted paths reach into structs and lists.
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--text-field", "info.author", "--on-error", "skip"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["ann", "bo"]);
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--template", "{text}: {tags.1}", "--on-error", "skip"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), ["first: y", "third: z"]);
}

/// A file written by pyarrow (testdata/ingest/parquet/make.py), the way Hugging Face datasets are:
/// every row, as pyarrow reads it back (hf.rows.json), is the document's text field plus meta.
#[test]
fn parquet_written_by_pyarrow_reads_as_pyarrow_reads_it() {
    let dir = workspace_root().join("testdata/ingest/parquet");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("hf.rows.json")).unwrap()).unwrap();
    let out = Run::new(BIN)
        .arg(dir.join("hf.parquet"))
        .args(["--on-error", "skip"])
        .run()
        .expect_code(0);
    let mut expected = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let mut meta = row.as_object().unwrap().clone();
        let Some(serde_json::Value::String(text)) = meta.remove("text") else {
            continue;
        };
        expected.push((text, index as u64, serde_json::Value::Object(meta)));
    }
    assert_eq!(expected.len(), 2, "the fixture has one null text");
    let got: Vec<(String, u64, serde_json::Value)> = out
        .records()
        .iter()
        .map(|r| {
            (
                r["text"].as_str().unwrap().to_string(),
                r["record_index"].as_u64().unwrap(),
                r["meta"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn broken_and_unsupported_parquet_files_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    flat_parquet(&root.join("a-good.parquet"));
    let good = std::fs::read(root.join("a-good.parquet")).unwrap();
    write(
        &root.join("b-garbage.parquet"),
        b"PAR1 this is not parquet PAR1",
    );
    write(&root.join("c-truncated.parquet"), &good[..good.len() / 2]);
    std::fs::copy(
        workspace_root().join("testdata/ingest/parquet/gzip.parquet"),
        root.join("d-gzip.parquet"),
    )
    .unwrap();
    let out = Run::new(BIN).arg(&root).run().expect_code(0);
    assert_eq!(texts(&out), ["alpha one", "beta two", "gamma three"]);
    let shown = root.display();
    for (name, why) in [
        ("b-garbage", "skipped (not a Parquet file: "),
        ("c-truncated", "skipped (not a Parquet file: "),
        (
            "d-gzip",
            "skipped (column \"text\" is compressed with gzip; ft-ingest reads Parquet pages that \
             are uncompressed, snappy, zstd)",
        ),
    ] {
        assert!(
            out.stderr
                .contains(&format!("ft-ingest: {shown}/{name}.parquet: {why}")),
            "{name}: {}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains("1 file read, 3 skipped (3 unreadable), 3 documents written"),
        "{}",
        out.stderr
    );

    // A damaged page behind a sound footer: the rows are out of reach, the run stops (exit 1).
    let mut damaged = good.clone();
    damaged[4..40].fill(0xff);
    let path = dir.path().join("damaged.parquet");
    write(&path, &damaged);
    let out = Run::new(BIN).arg(&path).run().expect_code(1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .contains(&format!("{}: cannot read row group 0", path.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn parquet_max_file_size_caps_each_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    // 300 short, alike rows: zstd shrinks them well, and the footer's min/max statistics stay small.
    let rows: Vec<&'static str> = (0..300)
        .map(|i| &*format!("row {i:03}: {}", "many words ".repeat(6)).leak())
        .collect();
    write_parquet(
        &path,
        FLAT_SCHEMA,
        parquet::basic::Compression::ZSTD(Default::default()),
        vec![vec![
            Col::Str(rows.clone(), None, None),
            Col::I64(vec![1; 300]),
            Col::Str(vec![], Some(vec![0; 300]), None),
            Col::F64(vec![0.0; 300]),
        ]],
    );
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert!(on_disk < 4096, "{on_disk} bytes on disk");
    // The file is under 4K on disk, its row group over 20K uncompressed: the row group decides.
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--max-file-size", "4K"])
        .run()
        .expect_code(0);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains(&format!(
            "{}: skipped (too big: row group 0 holds ",
            path.display()
        )) && out.stderr.contains("over --max-file-size (4096 bytes)"),
        "{}",
        out.stderr
    );
    let out = Run::new(BIN)
        .arg(&path)
        .args(["--max-file-size", "64K"])
        .run()
        .expect_code(0);
    assert_eq!(texts(&out), rows);
}

/// Issue 10 (one ordered batch reader): stdin JSONL goes through the core engine's stream reader.
/// A line over the cap stops the run after the documents before it, naming `<stdin>`; with
/// --max-records the reading stops at the cap, so a bad or over-long line after it is never met.
#[test]
fn stdin_jsonl_stops_at_a_long_line_and_reads_no_further_than_max_records() {
    let mut input = String::new();
    for i in 0..5000 {
        input.push_str(&format!("{{\"text\":\"r{i}\"}}\n"));
    }
    input.push_str(&format!(
        "{{\"text\":\"{}\"}}\nnot json\n",
        "x".repeat(2000)
    ));
    let jsonl = ["-", "--format", "jsonl", "--max-file-size", "1K"];
    let out = Run::new(BIN)
        .args(jsonl)
        .stdin(input.clone())
        .run()
        .expect_code(1);
    let expected: Vec<String> = (0..5000).map(|i| format!("r{i}")).collect();
    assert_eq!(texts(&out), expected);
    assert_eq!(
        out.stderr,
        "ft-ingest: <stdin>: cannot read: line 5001 is longer than --max-file-size (1024 bytes)\n"
    );
    for threads in ["1", "3"] {
        let out = Run::new(BIN)
            .args(jsonl)
            .args(["--max-records", "5000", "--threads", threads])
            .stdin(input.clone())
            .run()
            .expect_code(0);
        assert_eq!(texts(&out), expected, "--threads {threads}");
        assert!(
            out.stderr
                .ends_with("1 file read, 5000 documents written\n"),
            "{}",
            out.stderr
        );
    }
}
