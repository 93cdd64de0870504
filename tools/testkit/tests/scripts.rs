//! The pipelines in scripts/ that people copy, run on the bundled documents with this workspace's
//! binaries (`cargo test --workspace` builds them before any test runs).
#![allow(clippy::unwrap_used)]

use ftkit_testkit::workspace_root;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `target/<profile>/`, where the tools' binaries sit beside this test's `deps/` folder.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    assert!(
        dir.join("ft-chunk").exists(),
        "no ft-chunk in {}: run `cargo test --workspace` so the tools are built",
        dir.display()
    );
    dir
}

/// Runs a script with the workspace's tools first on PATH and no model endpoint in the environment.
fn script(name: &str, args: &[&Path]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts").join(name))
        .args(args)
        .env("FTKIT_BIN", bin_dir())
        .env_remove("BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("MODEL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn cron_example_reruns_to_the_same_bytes_and_never_overlaps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let docs = workspace_root().join("testdata/docs");

    let (code, stderr) = script("cron-example", &[&docs, &out]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.is_empty(),
        "cron runs log to a file, not stderr: {stderr}"
    );
    let last = read_json(&out.join("last-run.json"));
    assert_eq!(last["status"], 0);
    assert_eq!(last["docs"], 8, "one document per bundled file");
    assert!(last["curated"].as_u64().unwrap() > 10, "{last}");
    let splits = ["train", "val", "test"].map(|s| out.join("splits").join(format!("{s}.jsonl")));
    let first: Vec<Vec<u8>> = splits.iter().map(|p| std::fs::read(p).unwrap()).collect();

    // The nightly rerun: same inputs, same bytes, and the day's log gains a second run.
    let (code, stderr) = script("cron-example", &[&docs, &out]);
    assert_eq!(code, 0, "{stderr}");
    let again: Vec<Vec<u8>> = splits.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(first == again, "a rerun changed the splits");
    let logs: Vec<_> = std::fs::read_dir(out.join("logs")).unwrap().collect();
    assert_eq!(logs.len(), 1, "one log per day");
    let log = std::fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(
        log.matches("\n== finished with status 0").count(),
        2,
        "{log}"
    );
    let modified = || {
        std::fs::metadata(out.join("last-run.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = modified();

    // While another process holds the lock, a run exits 75 at once and touches nothing.
    // --no-fork: the process we kill is the one holding the lock.
    let mut holder = Command::new("flock")
        .arg("--no-fork")
        .arg(out.join(".lock"))
        .args(["sh", "-c", "echo locked; exec sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    let (code, stderr) = script("cron-example", &[&docs, &out]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("another run holds"), "{stderr}");
    assert_eq!(modified(), before, "a refused run rewrote last-run.json");
    assert_eq!(
        std::fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap(),
        log
    );

    // A stage that fails makes the run exit 1 and says so in last-run.json.
    let (code, _) = script("cron-example", &[&tmp.path().join("no-such-folder"), &out]);
    assert_eq!(code, 1);
    assert_ne!(read_json(&out.join("last-run.json"))["status"], 0);
}
