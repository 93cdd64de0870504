#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::Run;
use ftkit_testkit::http::{Fault, Server};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ft-fetch");

/// sha256 by coreutils' `sha256sum`: a source independent of the tool's hashing.
fn sha256sum(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn http_manifest(slug: &str, files: &[(String, &str, Option<String>)]) -> Value {
    let files: Vec<Value> = files
        .iter()
        .map(|(url, name, sha)| json!({"url": url, "filename": name, "sha256": sha}))
        .collect();
    json!({"slug": slug, "name": slug, "track": "t", "source": {"kind": "http", "files": files},
           "ingest_strategy": "http_download", "raw_root": format!("raw/{slug}"),
           "processed_root": format!("processed/{slug}"), "manifest": format!("manifests/{slug}.json")})
}

fn jsonl(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn fetch(root: &Path, manifests: &[Value], extra: &[&str]) -> ftkit_testkit::Outcome {
    Run::new(BIN)
        .arg("--root")
        .arg(root)
        .args(extra)
        .stdin(jsonl(manifests))
        .run()
}

fn by_slug<'a>(records: &'a [Value], slug: &str) -> &'a Value {
    records.iter().find(|r| r["slug"] == slug).unwrap()
}

const DATA: &[u8] = b"{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n";
const CSV: &[u8] = b"x,y\n1,2\n3,4\n";

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_fetch::Args::command());
}

#[test]
fn http_fetches_records_lock_and_stats_then_is_cached() {
    let server = Server::start();
    server.put("/d/data.jsonl", DATA);
    server.put("/d/t.csv", CSV);
    let root = tempfile::tempdir().unwrap();
    let manual = json!({"slug": "m6doc", "source": {"kind": "manual", "instructions": "ask the authors", "url": "https://example.org/m6doc"}});
    let m = http_manifest(
        "ds",
        &[
            (
                format!("{}/d/data.jsonl", server.url),
                "data.jsonl",
                Some(sha256sum(DATA)),
            ),
            (format!("{}/d/t.csv", server.url), "t.csv", None),
        ],
    );
    let out = fetch(root.path(), &[m.clone(), manual.clone()], &["--allow-http"]);
    // --allow-http is not a flag of ours: usage error.
    assert_eq!(out.code, 2, "{}", out.stderr);

    let out = fetch(root.path(), &[m.clone(), manual.clone()], &[]).expect_code(0);
    // stderr is a pipe here: no progress bar drawing, just the summary line.
    assert_eq!(out.stderr, "ft-fetch: 2 datasets: 1 fetched, 1 manual\n");
    let recs = out.records();
    assert_eq!(recs.len(), 2);
    let ds = by_slug(&recs, "ds");
    assert_eq!(ds["status"], "fetched");
    assert_eq!(
        ds["files"],
        json!([
            {"path": "data.jsonl", "bytes": DATA.len(), "sha256": sha256sum(DATA)},
            {"path": "t.csv", "bytes": CSV.len(), "sha256": sha256sum(CSV)},
        ])
    );
    // 3 JSONL records (a blank line is none), 2 CSV rows under a header.
    assert_eq!(ds["stats"]["records"], 5);
    assert_eq!(ds["stats"]["files"], 2);
    let stats: Value = serde_json::from_slice(
        &std::fs::read(root.path().join("processed/ds/stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats, ds["stats"]);
    let manual_rec = by_slug(&recs, "m6doc");
    assert_eq!(manual_rec["status"], "manual");
    assert_eq!(manual_rec["instructions"], "ask the authors");
    assert_eq!(
        std::fs::read(root.path().join("raw/ds/data.jsonl")).unwrap(),
        DATA
    );
    let lock = std::fs::read_to_string(root.path().join("fetch.lock")).unwrap();
    assert_eq!(
        lock,
        format!(
            "{{\"slug\":\"ds\",\"path\":\"data.jsonl\",\"bytes\":{},\"sha256\":\"{}\"}}\n{{\"slug\":\"ds\",\"path\":\"t.csv\",\"bytes\":{},\"sha256\":\"{}\"}}\n",
            DATA.len(),
            sha256sum(DATA),
            CSV.len(),
            sha256sum(CSV)
        )
    );

    let hits = server.log().len();
    let out = fetch(root.path(), &[m, manual], &[]).expect_code(0);
    assert_eq!(by_slug(&out.records(), "ds")["status"], "cached");
    assert_eq!(
        server.log().len(),
        hits,
        "a cached dataset is not downloaded again"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("fetch.lock")).unwrap(),
        lock
    );
}

/// Parquet rows are counted from the footer: the fixture is pyarrow's, and pyarrow's own reading of
/// it (hf.rows.json beside it) says how many rows it has.
#[test]
fn parquet_rows_are_counted_in_the_stats() {
    let fixture = ftkit_testkit::workspace_root().join("testdata/ingest/parquet");
    let bytes = std::fs::read(fixture.join("hf.parquet")).unwrap();
    let rows: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture.join("hf.rows.json")).unwrap()).unwrap();
    let server = Server::start();
    server.put("/d/train.parquet", bytes);
    server.put("/d/junk.parquet", b"not parquet at all");
    let root = tempfile::tempdir().unwrap();
    let m = http_manifest(
        "pq",
        &[
            (
                format!("{}/d/train.parquet", server.url),
                "train.parquet",
                None,
            ),
            (
                format!("{}/d/junk.parquet", server.url),
                "junk.parquet",
                None,
            ),
        ],
    );
    let out = fetch(root.path(), &[m], &[]).expect_code(0);
    let stats = &out.records()[0]["stats"];
    assert_eq!(stats["records"], rows.len(), "{stats}");
    // A file that does not parse is not counted (and does not fail the download).
    assert_eq!(
        stats["records_by_file"],
        json!({"train.parquet": rows.len()})
    );
}

#[test]
fn retries_and_resumes_through_dropped_connections_500_429_and_slow_bodies() {
    let server = Server::start();
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    server.put("/big.bin", big.clone());
    server.put("/slow.txt", b"a slow but live body".to_vec());
    server.fault("/big.bin", Fault::Status(500, None));
    server.fault("/big.bin", Fault::Status(429, Some(1)));
    server.fault("/big.bin", Fault::Drop(20_000));
    server.fault("/slow.txt", Fault::Slow);
    let root = tempfile::tempdir().unwrap();
    let m = http_manifest(
        "faults",
        &[
            (
                format!("{}/big.bin", server.url),
                "big.bin",
                Some(sha256sum(&big)),
            ),
            (format!("{}/slow.txt", server.url), "slow.txt", None),
        ],
    );
    let out = fetch(root.path(), &[m], &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "fetched");
    assert_eq!(
        std::fs::read(root.path().join("raw/faults/big.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(root.path().join("raw/faults/slow.txt")).unwrap(),
        b"a slow but live body"
    );
    // 500, 429, then a body cut at 20000 bytes, and the rest asked for with a Range request.
    assert_eq!(
        server.hits("/big.bin"),
        [
            "/big.bin -",
            "/big.bin -",
            "/big.bin -",
            "/big.bin bytes=20000- if-range"
        ]
    );
    assert!(
        out.stderr.contains("HTTP 429; retrying in 1.0s"),
        "{}",
        out.stderr
    );
    assert!(
        !ftkit_testkit::entries(&root.path().join("raw/faults"))
            .iter()
            .any(|n| n.ends_with(".part"))
    );
}

/// Runs ft-fetch on manifest `m` and kills it with SIGKILL once `part` holds `bytes` bytes (what the
/// server sends before it stalls).
fn kill_9_when_part_has(root: &Path, m: &Value, part: &Path, bytes: u64) {
    let manifest = root.join("m.jsonl");
    std::fs::write(&manifest, jsonl(std::slice::from_ref(m))).unwrap();
    let mut child = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg(&manifest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::fs::metadata(part).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ft-fetch ended before the stall"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ftkit_testkit::kill(child.id(), "KILL");
    child.wait().unwrap();
}

#[test]
fn kill_9_mid_download_then_rerun_resumes_with_range() {
    let server = Server::start();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    server.put("/big.bin", big.clone());
    server.fault("/big.bin", Fault::Hang(30_000));
    let root = tempfile::tempdir().unwrap();
    let m = http_manifest(
        "k",
        &[(
            format!("{}/big.bin", server.url),
            "big.bin",
            Some(sha256sum(&big)),
        )],
    );
    kill_9_when_part_has(
        root.path(),
        &m,
        &root.path().join("raw/k/.big.bin.part"),
        30_000,
    );
    assert!(
        !root.path().join("raw/k/big.bin").exists(),
        "no partial file under the real name"
    );

    let out = fetch(root.path(), &[m], &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "fetched");
    assert_eq!(
        std::fs::read(root.path().join("raw/k/big.bin")).unwrap(),
        big
    );
    assert_eq!(
        server.hits("/big.bin"),
        ["/big.bin -", "/big.bin bytes=30000- if-range"]
    );
    assert_eq!(
        ftkit_testkit::entries(&root.path().join("raw/k")),
        ["big.bin"]
    );
}

#[test]
fn a_part_whose_file_changed_on_the_server_is_fetched_whole() {
    let server = Server::start();
    let v1: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let v2: Vec<u8> = (0..100_001u32).map(|i| (i % 241) as u8).collect();
    server.put("/f.bin", v1);
    server.fault("/f.bin", Fault::Hang(30_000));
    let root = tempfile::tempdir().unwrap();
    // No sha256 in the manifest: only the ETag can tell the part is of another version.
    let m = http_manifest("c", &[(format!("{}/f.bin", server.url), "f.bin", None)]);
    kill_9_when_part_has(
        root.path(),
        &m,
        &root.path().join("raw/c/.f.bin.part"),
        30_000,
    );
    server.put("/f.bin", v2.clone());
    let out = fetch(root.path(), &[m], &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "fetched");
    assert_eq!(std::fs::read(root.path().join("raw/c/f.bin")).unwrap(), v2);
    assert_eq!(
        server.hits("/f.bin"),
        ["/f.bin -", "/f.bin bytes=30000- if-range"]
    );
}

#[test]
fn checksum_mismatch_fails_keeps_previous_copy_and_others_go_on() {
    let server = Server::start();
    server.put("/a.jsonl", DATA);
    server.put("/b.jsonl", b"{\"b\":1}\n".to_vec());
    let root = tempfile::tempdir().unwrap();
    let a = |sha: String| {
        http_manifest(
            "a",
            &[(format!("{}/a.jsonl", server.url), "a.jsonl", Some(sha))],
        )
    };
    let b = http_manifest("b", &[(format!("{}/b.jsonl", server.url), "b.jsonl", None)]);
    fetch(root.path(), &[a(sha256sum(DATA))], &[]).expect_code(0);

    // The manifest now pins other bytes than the server has: the download is refused.
    let out = fetch(root.path(), &[a(sha256sum(b"other")), b.clone()], &[]).expect_code(1);
    let recs = out.records();
    assert_eq!(by_slug(&recs, "a")["status"], "failed");
    let err = by_slug(&recs, "a")["error"].as_str().unwrap();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert_eq!(by_slug(&recs, "b")["status"], "fetched");
    assert_eq!(
        std::fs::read(root.path().join("raw/a/a.jsonl")).unwrap(),
        DATA
    );
    assert_eq!(
        ftkit_testkit::entries(&root.path().join("raw/a")),
        ["a.jsonl"]
    );
    let lock = std::fs::read_to_string(root.path().join("fetch.lock")).unwrap();
    assert!(lock.contains(&sha256sum(DATA)), "{lock}");
}

#[test]
fn offline_and_verify_touch_no_network() {
    let server = Server::start();
    server.put("/a.jsonl", DATA);
    let root = tempfile::tempdir().unwrap();
    let m = http_manifest("a", &[(format!("{}/a.jsonl", server.url), "a.jsonl", None)]);
    let out = fetch(root.path(), std::slice::from_ref(&m), &["--offline"]).expect_code(1);
    assert_eq!(out.records()[0]["status"], "failed");
    assert!(
        out.records()[0]["error"]
            .as_str()
            .unwrap()
            .contains("offline")
    );
    let out = fetch(root.path(), std::slice::from_ref(&m), &["--verify"]).expect_code(1);
    assert!(
        out.records()[0]["error"]
            .as_str()
            .unwrap()
            .contains("fetch.lock lists no file")
    );
    assert!(server.log().is_empty());

    fetch(root.path(), std::slice::from_ref(&m), &[]).expect_code(0);
    let hits = server.log().len();
    let out = fetch(root.path(), std::slice::from_ref(&m), &["--offline"]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "cached");
    let out = fetch(root.path(), std::slice::from_ref(&m), &["--verify"]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "cached");

    // One changed byte: --verify fails and fetches nothing; a normal run fetches it again.
    let mut changed = DATA.to_vec();
    changed[2] = b'b';
    std::fs::write(root.path().join("raw/a/a.jsonl"), &changed).unwrap();
    let out = fetch(root.path(), std::slice::from_ref(&m), &["--verify"]).expect_code(1);
    assert!(
        out.records()[0]["error"]
            .as_str()
            .unwrap()
            .contains("verification failed")
    );
    assert_eq!(server.log().len(), hits);
    let out = fetch(root.path(), std::slice::from_ref(&m), &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "fetched");
    assert_eq!(
        std::fs::read(root.path().join("raw/a/a.jsonl")).unwrap(),
        DATA
    );
}

#[test]
fn only_and_skip_from_flags_and_environment() {
    let server = Server::start();
    server.put("/a", DATA);
    let root = tempfile::tempdir().unwrap();
    let ms: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|s| http_manifest(s, &[(format!("{}/a", server.url), "f.jsonl", None)]))
        .collect();
    let slugs = |out: ftkit_testkit::Outcome| -> Vec<String> {
        out.records()
            .iter()
            .map(|r| r["slug"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        slugs(fetch(root.path(), &ms, &["--only", "c,a"]).expect_code(0)),
        ["a", "c"]
    );
    assert_eq!(
        slugs(fetch(root.path(), &ms, &["--skip", "b"]).expect_code(0)),
        ["a", "c"]
    );
    let env = |k: &str, v: &str| {
        Run::new(BIN)
            .arg("--root")
            .arg(root.path())
            .env(k, v)
            .stdin(jsonl(&ms))
            .run()
    };
    assert_eq!(slugs(env("FTKIT_FETCH_ONLY", "b").expect_code(0)), ["b"]);
    assert_eq!(slugs(env("FTKIT_FETCH_SKIP", "a,b").expect_code(0)), ["c"]);
    let out = fetch(root.path(), &ms, &["--only", "zz"]).expect_code(2);
    assert!(out.stderr.contains("\"zz\""), "{}", out.stderr);
    // --jobs 3: same records, same order.
    let out = fetch(root.path(), &ms, &["--jobs", "3"]).expect_code(0);
    assert_eq!(slugs(out), ["a", "b", "c"]);
}

#[test]
fn traversal_slugs_and_file_names_fail_alone_and_write_nothing_outside() {
    let server = Server::start();
    server.put("/a", DATA);
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let url = format!("{}/a", server.url);
    let mut bad_slug = http_manifest("x", &[(url.clone(), "f.jsonl", None)]);
    bad_slug["slug"] = json!("../evil");
    bad_slug["raw_root"] = json!("raw/../../evil");
    let mut bad_root = http_manifest("y", &[(url.clone(), "f.jsonl", None)]);
    bad_root["raw_root"] = json!("../escape");
    let bad_name = http_manifest("z", &[(url.clone(), "../../f.jsonl", None)]);
    let good = http_manifest("ok", &[(url, "f.jsonl", None)]);
    let out = fetch(&root, &[bad_slug, bad_root, bad_name, good], &[]).expect_code(1);
    let recs = out.records();
    let status: Vec<&str> = recs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["failed", "failed", "failed", "fetched"]);
    assert_eq!(ftkit_testkit::entries(outer.path()), ["root"]);
    assert_eq!(ftkit_testkit::entries(&root.join("raw")), ["ok", "z"]);
    assert!(ftkit_testkit::entries(&root.join("raw/z")).is_empty());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn git_fetches_the_pinned_commit_with_the_git_binary() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::create_dir(repo.path().join("sub")).unwrap();
    std::fs::write(repo.path().join("sub/x.jsonl"), DATA).unwrap();
    std::fs::write(repo.path().join("README"), b"v1\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["tag", "v1"]);
    std::fs::write(repo.path().join("README"), b"v2\n").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "two"]);

    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}", repo.path().display());
    let pinned =
        json!({"slug": "g", "source": {"kind": "git", "url": url, "commit": first, "tag": null}});
    let tagged =
        json!({"slug": "t", "source": {"kind": "git", "url": url, "commit": null, "tag": "v1"}});
    let out = fetch(root.path(), &[pinned.clone(), tagged], &[]).expect_code(0);
    for r in out.records() {
        assert_eq!(r["status"], "fetched", "{r}");
        assert_eq!(
            r["files"],
            json!([
                {"path": "README", "bytes": 3, "sha256": sha256sum(b"v1\n")},
                {"path": "sub/x.jsonl", "bytes": DATA.len(), "sha256": sha256sum(DATA)},
            ])
        );
        assert_eq!(r["stats"]["records"], 3);
    }
    let g = root.path().join("raw/g");
    assert_eq!(git(&g, &["rev-parse", "HEAD"]), first);
    // Shallow: the later commit was not fetched.
    assert_eq!(git(&g, &["rev-list", "--count", "HEAD"]), "1");
    let out = fetch(root.path(), &[pinned], &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "cached");
}

#[test]
fn hf_dataset_and_model_through_hf_endpoint_and_gated_is_manual() {
    let server = Server::start();
    server.put_hub_repo(
        "dataset",
        "org/ds",
        &[
            ("data/train.jsonl", DATA),
            ("README.md", b"# ds\n"),
            ("t.csv", CSV),
        ],
    );
    server.put_hub_repo("model", "org/m", &[("config.json", b"{\"a\":1}")]);
    server.fault(
        "/api/datasets/org/gated/revision/main",
        Fault::Status(401, None),
    );
    let hf = |slug: &str, repo: &str, kind: &str, allow: &[&str], ignore: &[&str]| {
        json!({"slug": slug, "source": {"kind": "hf", "repo_id": repo, "repo_type": kind,
            "revision": "main", "allow_patterns": allow, "ignore_patterns": ignore}})
    };
    let ms = [
        hf("ds", "org/ds", "dataset", &["*.jsonl", "*.csv"], &["t.*"]),
        hf("m", "org/m", "model", &[], &[]),
        hf("gated", "org/gated", "dataset", &[], &[]),
    ];
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut r = Run::new(BIN)
            .arg("--root")
            .arg(root.path())
            .env("HF_ENDPOINT", &server.url)
            .env("HF_HOME", home.path())
            .env("HF_TOKEN", "");
        for (k, v) in extra {
            r = r.env(k, v);
        }
        r.stdin(jsonl(&ms)).run()
    };
    let out = run(&[]).expect_code(0);
    let recs = out.records();
    let ds = by_slug(&recs, "ds");
    assert_eq!(ds["status"], "fetched", "{}", out.stderr);
    assert_eq!(
        ds["files"],
        json!([{"path": "data/train.jsonl", "bytes": DATA.len(), "sha256": sha256sum(DATA)}])
    );
    assert_eq!(
        std::fs::read(root.path().join("raw/ds/data/train.jsonl")).unwrap(),
        DATA
    );
    assert_eq!(by_slug(&recs, "m")["status"], "fetched");
    assert_eq!(
        std::fs::read(root.path().join("raw/m/config.json")).unwrap(),
        b"{\"a\":1}"
    );
    let gated = by_slug(&recs, "gated");
    assert_eq!(gated["status"], "manual");
    let steps = gated["instructions"].as_str().unwrap();
    assert!(
        steps.contains(&format!("{}/datasets/org/gated", server.url)),
        "{steps}"
    );
    assert!(steps.contains("HF_TOKEN"), "{steps}");

    // HF_HUB_OFFLINE: what is there is used, nothing is asked of the server.
    let hits = server.log().len();
    let out = run(&[("HF_HUB_OFFLINE", "1")]).expect_code(1);
    let recs = out.records();
    assert_eq!(by_slug(&recs, "ds")["status"], "cached");
    assert_eq!(by_slug(&recs, "m")["status"], "cached");
    assert_eq!(by_slug(&recs, "gated")["status"], "failed");
    assert_eq!(server.log().len(), hits);
}

#[test]
fn traversal_in_hub_file_names_is_refused() {
    let server = Server::start();
    server.put_hub_repo(
        "dataset",
        "org/ev",
        &[("../../evil.txt", b"x"), ("ok.txt", b"y")],
    );
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let m = json!({"slug": "ev", "source": {"kind": "hf", "repo_id": "org/ev", "repo_type": "dataset", "revision": "main"}});
    let home = tempfile::tempdir().unwrap();
    let out = Run::new(BIN)
        .arg("--root")
        .arg(&root)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home.path())
        .stdin(jsonl(&[m]))
        .run()
        .expect_code(1);
    let rec = &out.records()[0];
    assert_eq!(rec["status"], "failed");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("not a relative path inside the root"),
        "{rec}"
    );
    assert_eq!(
        rec["files"],
        json!([{"path": "ok.txt", "bytes": 1, "sha256": sha256sum(b"y")}])
    );
    assert_eq!(ftkit_testkit::entries(outer.path()), ["root"]);
}

/// A tar of `(name, bytes)` regular files; names are written raw, so `../x` can be made too.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *bytes).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])], link: Option<(&str, &str)>) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    if let Some((name, target)) = link {
        z.add_symlink(name, target, opts).unwrap();
    }
    z.finish().unwrap().into_inner()
}

#[test]
fn archives_are_extracted_into_their_folder_and_locked() {
    let server = Server::start();
    let tar = tar_of(&[("inner/x.jsonl", DATA), ("r.txt", b"r")]);
    server.put("/data.tar.gz", gz(&tar));
    server.put("/z.zip", zip_of(&[("t.csv", CSV)], None));
    server.put(
        "/p.tar.zst",
        zstd::encode_all(&tar_of(&[("q.txt", b"q")])[..], 3).unwrap(),
    );
    server.put("/plain.tar", tar_of(&[("w.txt", b"w")]));
    let root = tempfile::tempdir().unwrap();
    let u = |p: &str| format!("{}{p}", server.url);
    let m = http_manifest(
        "arc",
        &[
            (u("/data.tar.gz"), "data.tar.gz", None),
            (u("/z.zip"), "z.zip", None),
            (u("/p.tar.zst"), "p.tar.zst", None),
            (u("/plain.tar"), "plain.tar", None),
        ],
    );
    let out = fetch(root.path(), std::slice::from_ref(&m), &[]).expect_code(0);
    let rec = &out.records()[0];
    let paths: Vec<&str> = rec["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "data.tar.gz",
            "data/inner/x.jsonl",
            "data/r.txt",
            "p.tar.zst",
            "p/q.txt",
            "plain.tar",
            "plain/w.txt",
            "z.zip",
            "z/t.csv"
        ]
    );
    let raw = root.path().join("raw/arc");
    assert_eq!(std::fs::read(raw.join("data/inner/x.jsonl")).unwrap(), DATA);
    assert_eq!(std::fs::read(raw.join("z/t.csv")).unwrap(), CSV);
    assert_eq!(std::fs::read(raw.join("p/q.txt")).unwrap(), b"q");
    assert_eq!(rec["stats"]["records"], 5);
    let lock = std::fs::read_to_string(root.path().join("fetch.lock")).unwrap();
    assert!(
        lock.contains(&format!(
            "\"path\":\"data/inner/x.jsonl\",\"bytes\":{},\"sha256\":\"{}\"",
            DATA.len(),
            sha256sum(DATA)
        )),
        "{lock}"
    );

    // A removed extracted file comes back from the archive already there, with no download.
    let hits = server.log().len();
    std::fs::remove_file(raw.join("z/t.csv")).unwrap();
    let out = fetch(root.path(), std::slice::from_ref(&m), &[]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "cached");
    assert_eq!(std::fs::read(raw.join("z/t.csv")).unwrap(), CSV);
    assert_eq!(server.log().len(), hits);
}

#[test]
fn archive_traversal_links_and_bombs_are_refused() {
    let server = Server::start();
    let mut link = tar::Header::new_gnu();
    link.set_path("l").unwrap();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_link_name("/etc").unwrap();
    link.set_size(0);
    link.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&link, &[][..]).unwrap();
    let mut hard = link.clone();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_path("h").unwrap();
    hard.set_cksum();
    let mut b2 = tar::Builder::new(Vec::new());
    b2.append(&hard, &[][..]).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "up.tar",
            tar_of(&[("ok.txt", b"1"), ("../../evil.txt", b"x")]),
            "leaves the archive's folder",
        ),
        (
            "abs.tar",
            tar_of(&[("/tmp/evil.txt", b"x")]),
            "leaves the archive's folder",
        ),
        ("sym.tar", b.into_inner().unwrap(), "is a link"),
        ("hard.tar", b2.into_inner().unwrap(), "is a link"),
        (
            "up.zip",
            zip_of(&[("../evil.txt", b"x")], None),
            "leaves the archive's folder",
        ),
        (
            "sym.zip",
            zip_of(&[("a.txt", b"a")], Some(("l", "/etc"))),
            "is a link",
        ),
        (
            "bomb.tar.gz",
            gz(&tar_of(&[("zeros", &vec![0u8; 3_000_000])])),
            "archive bomb",
        ),
        (
            "many.tar",
            tar_of(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]),
            "archive bomb",
        ),
    ];
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let mut ms = Vec::new();
    for (i, (name, bytes, _)) in cases.iter().enumerate() {
        server.put(&format!("/{name}"), bytes.clone());
        ms.push(http_manifest(
            &format!("s{i}"),
            &[(format!("{}/{name}", server.url), name, None)],
        ));
    }
    // The bomb is 3 MB of zeros packed into a few KB; four entries are more than three.
    let out = fetch(
        &root,
        &ms,
        &["--max-extract-bytes", "1000000", "--max-entries", "3"],
    )
    .expect_code(1);
    for (rec, (name, _, why)) in out.records().iter().zip(&cases) {
        assert_eq!(rec["status"], "failed", "{name}");
        let err = rec["error"].as_str().unwrap();
        assert!(err.contains(why), "{name}: {err}");
        // The archive itself is kept (it matched), its folder was never put in place.
        let stem = name.split('.').next().unwrap();
        let dir = root.join(format!("raw/{}", rec["slug"].as_str().unwrap()));
        assert!(!dir.join(stem).exists(), "{name}");
        assert!(
            ftkit_testkit::entries(&dir)
                .iter()
                .all(|e| !e.starts_with('.')),
            "{name}: temporaries left"
        );
    }
    assert_eq!(ftkit_testkit::entries(outer.path()), ["root"]);
    assert!(!Path::new("/tmp/evil.txt").exists());
}

#[test]
fn reads_exactly_what_catalog_to_manifest_writes() {
    // Every record of the catalog tool's golden output parses; --verify fetches nothing, so each
    // dataset is manual or failed (nothing in the lock), in input order.
    let golden = ftkit_testkit::testdata("catalog-to-manifest", "catalog.out.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&golden)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let root = tempfile::tempdir().unwrap();
    let out = Run::new(BIN)
        .arg("--root")
        .arg(root.path())
        .arg("--verify")
        .arg(&golden)
        .run()
        .expect_code(1);
    let recs = out.records();
    assert_eq!(recs.len(), lines.len());
    for (rec, m) in recs.iter().zip(&lines) {
        assert_eq!(rec["slug"], m["slug"]);
        assert_eq!(rec["kind"], m["source"]["kind"]);
        if m["source"]["kind"] == "manual" {
            assert_eq!(rec["status"], "manual");
            assert_eq!(rec["instructions"], m["source"]["instructions"]);
        } else {
            assert_eq!(rec["status"], "failed");
        }
    }
    assert!(!root.path().join("raw").exists());
}

#[test]
fn malformed_manifest_names_path_line_and_unknown_flag_is_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    std::fs::write(
        &path,
        b"{\"slug\":\"a\",\"source\":{\"kind\":\"manual\",\"instructions\":\"x\"}}\n{\"slug\":\n",
    )
    .unwrap();
    let out = Run::new(BIN)
        .arg("--root")
        .arg(dir.path())
        .arg(&path)
        .run()
        .expect_code(1);
    assert!(
        out.stderr.contains(&format!("{}:2", path.display())),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    Run::new(BIN).arg("--no-such-flag").run().expect_code(2);
    let out = Run::new(BIN)
        .arg("--jobs")
        .arg("0")
        .stdin(Vec::new())
        .run()
        .expect_code(2);
    assert!(out.stderr.contains("--jobs"), "{}", out.stderr);
}

#[test]
fn a_stalled_connection_times_out_and_resumes() {
    let server = Server::start();
    let big: Vec<u8> = (0..40_000u32).map(|i| (i % 211) as u8).collect();
    server.put("/s.bin", big.clone());
    server.fault("/s.bin", Fault::Hang(10_000));
    let root = tempfile::tempdir().unwrap();
    let m = http_manifest("s", &[(format!("{}/s.bin", server.url), "s.bin", None)]);
    let out = fetch(root.path(), &[m], &["--timeout", "1"]).expect_code(0);
    assert_eq!(out.records()[0]["status"], "fetched");
    assert_eq!(std::fs::read(root.path().join("raw/s/s.bin")).unwrap(), big);
    assert_eq!(
        server.hits("/s.bin"),
        ["/s.bin -", "/s.bin bytes=10000- if-range"]
    );
    assert!(
        out.stderr.contains("connection lost after 10000 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_symbolic_link_on_the_raw_path_is_refused() {
    let server = Server::start();
    server.put("/a", DATA);
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let elsewhere = outer.path().join("elsewhere");
    std::fs::create_dir_all(root.join("raw")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("raw/l")).unwrap();
    let m = http_manifest("l", &[(format!("{}/a", server.url), "f.jsonl", None)]);
    let out = fetch(&root, &[m], &[]).expect_code(1);
    let err = out.records()[0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(ftkit_testkit::entries(&elsewhere).is_empty());
    assert!(server.log().is_empty());
}

#[test]
fn git_pins_that_read_as_options_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let marker = outer.path().join("ran");
    let evil = format!("--upload-pack=touch {}", marker.display());
    let ms = [
        json!({"slug": "c", "source": {"kind": "git", "url": "file:///nowhere", "commit": evil, "tag": null}}),
        json!({"slug": "t", "source": {"kind": "git", "url": "file:///nowhere", "commit": null, "tag": evil}}),
        json!({"slug": "u", "source": {"kind": "git", "url": evil, "commit": "abcdef0", "tag": null}}),
        json!({"slug": "e", "source": {"kind": "git", "url": format!("ext::sh -c touch% {}", marker.display()), "commit": "abcdef0", "tag": null}}),
    ];
    let out = fetch(&root, &ms, &[]).expect_code(1);
    let errs: Vec<String> = out
        .records()
        .iter()
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    assert!(errs[0].contains("is not 7 to 64 hex digits"), "{errs:?}");
    assert!(errs[1].contains("is not a plain tag name"), "{errs:?}");
    assert!(errs[2].contains("not a repository URL"), "{errs:?}");
    assert!(errs[3].contains("transport 'ext' not allowed"), "{errs:?}");
    assert!(!marker.exists(), "a command ran");
}
