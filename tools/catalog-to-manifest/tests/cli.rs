#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_ft-catalog-to-manifest");

fn catalog_path() -> std::path::PathBuf {
    testdata("catalog-to-manifest", "catalog.json")
}

fn catalog() -> Value {
    serde_json::from_slice(&std::fs::read(catalog_path()).unwrap()).unwrap()
}

/// The example catalog's entries.
fn entries() -> Vec<Value> {
    catalog()["datasets"].as_array().unwrap().clone()
}

/// Entries as JSONL, one per line.
fn jsonl(entries: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(serde_json::to_string(e).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Every path under `root` (relative, folders ending in `/`) with its bytes and modification time.
fn snapshot(root: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if meta.file_type().is_symlink() {
                out.insert(format!("{rel}@"), (Vec::new(), meta.modified().unwrap()));
            } else if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), meta.modified().unwrap()));
                stack.push(path);
            } else {
                out.insert(
                    rel,
                    (std::fs::read(&path).unwrap(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

/// Sets every path under `root` (and `root`) to an old modification time, so that any rewrite shows.
fn age(root: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for rel in snapshot(root).keys() {
        let f = std::fs::File::open(root.join(rel)).unwrap();
        f.set_modified(old).unwrap();
    }
    std::fs::File::open(root)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_catalog_to_manifest::Args::command());
}

#[test]
fn manifests_golden() {
    let out = Run::new(BIN).arg(catalog_path()).run().expect_code(0);
    golden::check(
        &testdata("catalog-to-manifest", "catalog.out.jsonl"),
        &out.stdout,
    );
    assert!(
        out.stderr.contains("9 datasets in 5 tracks"),
        "{}",
        out.stderr
    );
    // Facts of the example catalog, checked here by hand rather than only through the golden file.
    let records = out.records();
    let by_name = |name: &str| records.iter().find(|r| r["name"] == name).unwrap().clone();
    let hf = by_name("Kyudan/MathBridge");
    assert_eq!(hf["slug"], "kyudan-mathbridge");
    assert_eq!(hf["raw_root"], "raw/kyudan-mathbridge");
    assert_eq!(hf["processed_root"], "processed/kyudan-mathbridge");
    assert_eq!(hf["ingest_strategy"], "hf_snapshot");
    assert_eq!(
        hf["pull_command"],
        "hf download Kyudan/MathBridge --repo-type dataset --revision main --include '*.json' --include 'data/*.parquet' --exclude '*.md' --local-dir raw/kyudan-mathbridge"
    );
    // `repo` (not a URL) and `hf_id` are hf repo ids; a given slug is kept.
    assert_eq!(
        by_name("Qwen2.5 0.5B Instruct")["source"]["repo_id"],
        "Qwen/Qwen2.5-0.5B-Instruct"
    );
    assert_eq!(
        by_name("Qwen2.5 0.5B Instruct")["slug"],
        "qwen2.5-0.5b-instruct"
    );
    assert_eq!(
        by_name("im2latex 100k")["source"]["repo_id"],
        "yuntian-deng/im2latex-100k"
    );
    // `repo` as a URL with a tag is git; unknown fields pass through under extra.
    let git = by_name("TableBank");
    assert_eq!(git["ingest_strategy"], "git_clone");
    assert_eq!(git["extra"]["maintainer"]["team"], "doc-analysis");
    // `url` + `sha256` and `urls` are http; digests are lowercased; a file name comes from the URL.
    let news = by_name("Newspaper Navigator");
    assert_eq!(news["ingest_strategy"], "http_download");
    assert_eq!(
        news["source"]["files"][0]["sha256"],
        "5e8a3b7c7f4c9a0b1d2e3f405162738495a6b7c8d9e0f1021324354657687980"
    );
    assert_eq!(news["source"]["files"][1]["filename"], "part-2.zip");
    let manual = by_name("M6Doc");
    assert_eq!(manual["ingest_strategy"], "manual");
    assert_eq!(manual["source"]["url"], "https://github.com/HCIILAB/M6Doc");
    assert_eq!(manual["pull_command"], Value::Null);
    assert_eq!(hf["caps"]["max_tokens"], 2048);
    assert_eq!(manual["gated"], true);
    assert_eq!(
        by_name("arXiv LaTeX sample")["extra"]["notes"],
        "one tarball of 1000 papers"
    );
}

#[test]
fn object_array_and_jsonl_catalogs_agree() {
    let reference = Run::new(BIN)
        .arg(catalog_path())
        .run()
        .expect_code(0)
        .stdout;
    let e = entries();
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        ("array.json", serde_json::to_vec_pretty(&e).unwrap()),
        ("compact-array.json", serde_json::to_vec(&e).unwrap()),
        (
            "one-line-object.json",
            serde_json::to_vec(&json!({"datasets": e})).unwrap(),
        ),
        ("catalog.jsonl", jsonl(&e)),
    ];
    for (name, bytes) in inputs {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out = Run::new(BIN).arg(&path).run().expect_code(0);
        assert_eq!(
            out.stdout_str(),
            String::from_utf8(reference.clone()).unwrap(),
            "{name}"
        );
    }
    // Two catalogs read as one: the same as one catalog holding both halves.
    let (first, second) = e.split_at(4);
    std::fs::write(dir.path().join("a.jsonl"), jsonl(first)).unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        serde_json::to_vec(second).unwrap(),
    )
    .unwrap();
    let out = Run::new(BIN)
        .arg(dir.path().join("a.jsonl"))
        .arg(dir.path().join("b.json"))
        .run()
        .expect_code(0);
    assert_eq!(out.stdout, reference);
}

#[test]
fn contract() {
    let input = jsonl(&entries());
    let c = Contract {
        bin: BIN,
        args: &[],
        input: &input,
    };
    let reference = c.stdin_file_dash_and_zstd();
    c.output_file(&reference);
    c.unknown_flag_exits_2();
    c.malformed_line_exits_1_naming_path_line();
    // The pretty JSON catalog on stdin and zstd-compressed gives the same bytes too.
    let pretty = std::fs::read(catalog_path()).unwrap();
    let out = Run::new(BIN)
        .stdin(ftkit_testkit::zstd(&pretty))
        .run()
        .expect_code(0);
    assert_eq!(out.stdout, reference);
}

#[test]
fn closed_pipe_exits_0() {
    // Far more output than a pipe holds; unique names, so no duplicate slug.
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": format!("set {i}"), "hf_id": format!("org/set-{i}")}))
        .collect();
    let out = Run::new(BIN).stdin(jsonl(&many)).run_head1();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(b"{\"slug\":\"set-0\""));
}

#[test]
fn root_layout_and_route_golden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("training_data");
    let out = Run::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg(catalog_path())
        .run()
        .expect_code(0);
    let tree: String = snapshot(&root).keys().map(|k| format!("{k}\n")).collect();
    golden::check(
        &testdata("catalog-to-manifest", "root.tree"),
        tree.as_bytes(),
    );
    golden::check(
        &testdata("catalog-to-manifest", "route.json"),
        &std::fs::read(root.join("route.json")).unwrap(),
    );
    // Each manifest file holds the dataset's stdout record.
    let records = out.records();
    assert_eq!(records.len(), 9);
    for r in &records {
        let slug = r["slug"].as_str().unwrap();
        let file: Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("manifests/{slug}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(&file, r, "{slug}");
        assert!(root.join("raw").join(slug).is_dir());
        assert!(root.join("processed").join(slug).is_dir());
    }
    // route.json: the counts are the catalog's tracks, counted here from the catalog itself.
    let route: Value =
        serde_json::from_slice(&std::fs::read(root.join("route.json")).unwrap()).unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in entries() {
        *counts
            .entry(e["track"].as_str().unwrap_or("untracked").to_string())
            .or_default() += 1;
    }
    assert_eq!(route["datasets"], 9);
    for (track, n) in &counts {
        assert_eq!(route["tracks"][track]["count"], *n, "{track}");
    }
    assert_eq!(route["tracks"].as_object().unwrap().len(), counts.len());
}

#[test]
fn second_run_changes_no_byte_and_no_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("td");
    let run = |catalog: &Path| {
        Run::new(BIN)
            .arg("-q")
            .arg("--root")
            .arg(&root)
            .arg(catalog)
            .run()
            .expect_code(0)
    };
    run(&catalog_path());
    age(&root);
    let before = snapshot(&root);
    let root_mtime = std::fs::metadata(&root).unwrap().modified().unwrap();
    run(&catalog_path());
    assert_eq!(snapshot(&root), before, "a second run changed the root");
    assert_eq!(
        std::fs::metadata(&root).unwrap().modified().unwrap(),
        root_mtime
    );

    // A change to one entry rewrites its manifest and route.json, nothing else.
    let mut e = entries();
    e[2]["track"] = json!("T9");
    let changed = dir.path().join("changed.jsonl");
    std::fs::write(&changed, jsonl(&e)).unwrap();
    run(&changed);
    let after = snapshot(&root);
    let differ: Vec<&String> = after
        .keys()
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    assert_eq!(
        differ,
        ["manifests/", "manifests/im2latex-100k.json", "route.json"]
    );
}

/// One bad entry appended to the good ones (JSONL, so it is line 10 and entry 10).
struct Bad {
    entry: Value,
    /// Words the message must hold.
    says: &'static str,
}

#[test]
fn bad_catalogs_name_the_entry_and_write_nothing() {
    let secret = "hunter2";
    let cases = [
        Bad {
            entry: json!({"name": "DocLayNet (core)", "hf_id": "x/y"}),
            says: "slug \"doclaynet-core\" is already used by entry 6 (\"DocLayNet (core)\") at",
        },
        Bad {
            entry: json!({"name": "Bad", "source": {"kind": "ftp", "url": "https://h/x"}}),
            says: "unknown source kind \"ftp\" (expected hf, git, http or manual)",
        },
        Bad {
            entry: json!({"name": "Bad", "source": "s3", "url": "https://h/x"}),
            says: "unknown source kind \"s3\"",
        },
        Bad {
            entry: json!({"name": "Bad", "slug": "../escape", "hf_id": "x/y"}),
            says: "slug \"../escape\" may hold only [a-z0-9._-]",
        },
        Bad {
            entry: json!({"name": "Bad", "slug": "/etc", "hf_id": "x/y"}),
            says: "slug \"/etc\" may hold only",
        },
        Bad {
            entry: json!({"name": "Bad", "slug": "a\u{0}b", "hf_id": "x/y"}),
            says: "slug \"a\\0b\" may hold only",
        },
        Bad {
            entry: json!({"name": "Bad", "slug": ".", "hf_id": "x/y"}),
            says: "slug \".\" may not start with . or -",
        },
        Bad {
            entry: json!({"name": "../..", "hf_id": "x/y"}),
            says: "the slug derived from the name (\"\") is empty: give a \"slug\"",
        },
        Bad {
            entry: json!({"name": "Bad", "urls": [{"url": "https://h/x.zip", "filename": "../x.zip"}]}),
            says: "file name \"../x.zip\" of url 1 may hold only",
        },
        Bad {
            entry: json!({"name": "Bad", "url": "http://example.org/x.zip"}),
            says: "url 1 is http, not https (--allow-http accepts it)",
        },
        Bad {
            entry: json!({"name": "Bad", "repo": "git://example.org/x.git", "tag": "v1"}),
            says: "git url has scheme \"git\", not https",
        },
        Bad {
            entry: json!({"name": "Bad", "url": format!("https://me:{secret}@example.org/x.zip")}),
            says: "field \"url\" holds a URL that carries user info (user:password@)",
        },
        Bad {
            entry: json!({"name": "Bad", "url": format!("https://example.org/x.zip?access_token={secret}")}),
            says: "field \"url\" holds a URL that carries a credential in its query (\"access_token\")",
        },
        Bad {
            entry: json!({"name": "Bad", "hf_id": "x/y", "notes": ["mirror at", format!("https://me:{secret}@example.org/x")]}),
            says: "field \"notes.1\" holds a URL that carries user info",
        },
        Bad {
            entry: json!({"name": format!("mirror https://me:{secret}@example.org"), "hf_id": "x/y"}),
            says: "field \"name\" holds a URL that carries user info",
        },
        Bad {
            entry: json!({"name": "Bad", "hf_id": "x/y", "hf_token": secret}),
            says: "field \"hf_token\" looks like a credential",
        },
        Bad {
            entry: json!({"name": "Bad", "source": {"kind": "hf", "repo_id": "x/y", "revison": "v2"}}),
            says: "unknown source field \"revison\"",
        },
        Bad {
            entry: json!({"name": "Bad", "repo": "https://example.org/x.git"}),
            says: "git source without a commit or tag",
        },
        Bad {
            entry: json!({"name": "Bad", "license": "mit"}),
            says: "no source",
        },
        Bad {
            entry: json!({"name": "Bad", "hf_id": "x/y", "repo_id": "x/z"}),
            says: "\"repo_id\" and \"hf_id\" disagree",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    // A root from an earlier good run, and one that does not exist yet.
    let root = dir.path().join("td");
    Run::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg(catalog_path())
        .run()
        .expect_code(0);
    let fresh = dir.path().join("fresh");
    let before = snapshot(&root);
    let path = dir.path().join("bad.jsonl");
    for case in cases {
        let mut e = entries();
        e.push(case.entry.clone());
        std::fs::write(&path, jsonl(&e)).unwrap();
        let label = match case.entry["name"].as_str().unwrap() {
            name if name.contains(secret) => format!("{}:10: entry 10: ", path.display()),
            name => format!("{}:10: entry 10 ({name:?}): ", path.display()),
        };
        for target in [&root, &fresh] {
            let out = Run::new(BIN).arg("--root").arg(target).arg(&path).run();
            assert_eq!(out.code, 1, "{:?}: {}", case.entry, out.stderr);
            assert!(out.stdout.is_empty(), "{:?}", case.entry);
            assert!(
                out.stderr.contains(&label),
                "want {label:?} in: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(case.says),
                "want {:?} in: {}",
                case.says,
                out.stderr
            );
            assert!(
                !out.stderr.contains(secret),
                "the secret leaked: {}",
                out.stderr
            );
        }
        assert_eq!(snapshot(&root), before, "{:?} changed the root", case.entry);
        assert!(!fresh.exists(), "{:?} created the root", case.entry);
    }
}

#[test]
fn allow_http_accepts_http_urls() {
    let mut e = entries();
    e.push(json!({"name": "Plain", "url": "http://example.org/x.zip"}));
    let out = Run::new(BIN)
        .arg("--allow-http")
        .stdin(jsonl(&e))
        .run()
        .expect_code(0);
    let last = out.records().pop().unwrap();
    assert_eq!(
        last["source"]["files"][0]["url"],
        "http://example.org/x.zip"
    );
}

#[test]
fn errors_in_a_pretty_catalog_name_its_line() {
    // Entry 9 of the example catalog, renamed to clash with entry 1: the line is where its `{` is.
    let text = std::fs::read_to_string(catalog_path()).unwrap();
    let at = text.find("\"name\": \"M6Doc\"").unwrap();
    let name_line = text[..at].matches('\n').count() + 1;
    let changed = text.replace("\"name\": \"M6Doc\"", "\"name\": \"Kyudan MathBridge\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    std::fs::write(&path, changed).unwrap();
    let out = Run::new(BIN).arg(&path).run().expect_code(1);
    let want = format!(
        "{}:{}: entry 9 (\"Kyudan MathBridge\"): slug \"kyudan-mathbridge\" is already used by entry 1 (\"Kyudan/MathBridge\") at {}:4",
        path.display(),
        name_line - 1,
        path.display()
    );
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in: {}",
        out.stderr
    );
    // A syntax error names its line too.
    std::fs::write(
        &path,
        text.replacen("\"track\": \"T1\",", "\"track\": \"T1\"", 1),
    )
    .unwrap();
    let out = Run::new(BIN).arg(&path).run().expect_code(1);
    assert!(
        out.stderr.contains(&format!("{}:7: ", path.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Run::new(BIN).arg("--root").run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn a_symbolic_link_in_the_root_is_refused() {
    // raw/ pointing elsewhere would put the datasets' folders outside the root.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("td");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("raw")).unwrap();
    let out = Run::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg(catalog_path())
        .run()
        .expect_code(1);
    let want = format!("{}: is a symbolic link", root.join("raw").display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(
        snapshot(&root).len(),
        1,
        "only the link: {:?}",
        snapshot(&root).keys()
    );
}

/// `-o` naming the catalog, or a catalog that `--root` would overwrite (its route.json), is a usage
/// error naming both; the catalog is untouched and nothing is written.
#[test]
fn outputs_naming_the_catalog_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(catalog_path()).unwrap();
    let cat = dir.path().join("catalog.json");
    std::fs::write(&cat, &bytes).unwrap();
    let out = Run::new(BIN).arg(&cat).arg("-o").arg(&cat).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("-o") && out.stderr.contains("input"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&cat).unwrap(), bytes);

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let route = root.join("route.json");
    std::fs::write(&route, &bytes).unwrap();
    let out = Run::new(BIN).arg(&route).arg("--root").arg(&root).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--root"), "{}", out.stderr);
    assert_eq!(std::fs::read(&route).unwrap(), bytes);
    assert!(!root.join("raw").exists(), "nothing written");
}
