//! Runs the real ft-train-lora binary.
#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Run, testdata};

const BIN: &str = env!("CARGO_BIN_EXE_ft-train-lora");

#[test]
fn man_page_is_current() {
    ftkit_testkit::man::check(ft_train_lora::Args::command());
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = Run::new(BIN)
        .args([
            "--model",
            "m",
            "--train",
            "t",
            "--out-dir",
            "o",
            "--no-such-flag",
        ])
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flag_combinations_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = testdata("train-lora", "train.jsonl");
    for extra in [
        &["--rank", "0"][..],
        &["--early-stop-patience", "2"],
        &["--dropout", "1.5"],
        &["--max-steps", "0"],
    ] {
        let out = Run::new(BIN)
            .args(["--model", "m", "--out-dir"])
            .arg(dir.path())
            .arg("--train")
            .arg(&train)
            .args(extra)
            .run();
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("ft-train-lora: "), "{}", out.stderr);
    }
}

#[test]
fn bad_line_names_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"a\",\"output\":\"b\"}\n{\"oops\n").unwrap();
    let out = Run::new(BIN)
        .args(["--model", "m", "--out-dir"])
        .arg(dir.path().join("out"))
        .arg("--train")
        .arg(&path)
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("ft-train-lora: {}:3:", path.display())),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    assert!(
        !dir.path().join("out").exists(),
        "output folder created before the data was read"
    );
}
