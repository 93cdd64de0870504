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

/// Runs a script with the workspace's tools first on PATH, no model endpoint in the environment but
/// those of `envs`.
fn script(name: &str, args: &[&Path], envs: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts").join(name))
        .args(args)
        .env("FTKIT_BIN", bin_dir())
        .env_remove("BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("VISION_BASE_URL")
        .env_remove("MODEL")
        .env_remove("OPENAI_API_KEY")
        .envs(envs.iter().copied())
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

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Seeds 001 and 003: a PDF, a DOCX, a PPTX, a standalone PNG and a Chinese note become the three
/// CLaRa files, images described by a vision endpoint (the loopback test server) and pairs written
/// by the extractive backend; a rerun asks the endpoint nothing and rewrites the same bytes.
#[test]
fn clara_data_turns_documents_and_images_into_the_three_clara_files() {
    use ftkit_llm::testing::{ServerConfig, TestServer};
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let docs = workspace_root().join("testdata/clara-data");
    let env = [
        ("BACKEND", "extractive"),
        ("VISION_BASE_URL", server.url()),
        ("VISION_MODEL", "vision-test"),
    ];
    let (code, stderr) = script("clara-data", &[&docs, &out], &env);
    assert_eq!(code, 0, "{stderr}");

    // Four images (one per document, one standalone), each described once; the embedded ones
    // written under their content hash.
    let raw = read_jsonl(&out.join("raw_knowledge.jsonl"));
    let described: Vec<_> = raw.iter().filter(|r| r.get("image").is_some()).collect();
    assert_eq!(described.len(), 4, "{raw:?}");
    assert_eq!(raw.len(), 8, "four documents and four descriptions");
    assert!(
        described
            .iter()
            .all(|r| r["text"].as_str().unwrap().contains("[image "))
    );
    let chart = described
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with("season-report.pdf"))
        .unwrap();
    assert_eq!(chart["image"]["page"], 2, "{chart}");
    let urls = server.image_urls();
    assert_eq!(urls.len(), 4);
    assert!(
        urls.iter()
            .all(|u| u.starts_with("data:image/jpeg;base64,"))
    );
    let mut assets: Vec<_> = std::fs::read_dir(out.join("assets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assets.sort();
    assert_eq!(assets.len(), 3, "{assets:?}");
    assert!(
        assets
            .iter()
            .all(|a| a.len() == 64 + 4 && a.ends_with(".png"))
    );

    // The PDF's text chunks say which page they come from; headers and footers are gone.
    let chunks = read_jsonl(&out.join("chunks.jsonl"));
    let pdf: Vec<_> = chunks
        .iter()
        .filter(|c| c["source"].as_str().unwrap().ends_with(".pdf") && c.get("image").is_none())
        .collect();
    assert!(!pdf.is_empty() && pdf.iter().all(|c| c["page"].as_u64().is_some()));
    assert!(
        pdf.iter()
            .all(|c| !c["text"].as_str().unwrap().contains("Page 1 of 3"))
    );

    // Pretraining: pairs and a summary per chunk; questions in English and Chinese.
    let pretrain = read_jsonl(&out.join("pretrain_data.jsonl"));
    let instruction = read_jsonl(&out.join("instruction_data.jsonl"));
    let e2e = read_jsonl(&out.join("end_to_end_data.jsonl"));
    assert!(
        pretrain
            .iter()
            .all(|r| r["data_type"] == "qa" && r["docs"].as_array().is_some_and(|d| !d.is_empty()))
    );
    let summaries = pretrain
        .iter()
        .filter(|r| r["question"][0] == "Summarise the document densely.")
        .count();
    assert_eq!(summaries, chunks.len());
    assert_eq!(pretrain.len(), instruction.len() + summaries);
    let cjk = |r: &serde_json::Value| {
        r["question"][0]
            .as_str()
            .unwrap()
            .chars()
            .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
    };
    assert!(pretrain.iter().any(cjk) && !pretrain.iter().all(cjk));
    assert!(
        instruction.iter().all(|r| r["data_type"] == "instruction"
            && r["output"].as_str().is_some_and(|o| !o.is_empty()))
    );
    assert!(e2e.iter().all(|r| r["data_type"] == "end_to_end"
        && r["context"].as_array().is_some_and(|c| !c.is_empty())));
    assert_eq!(e2e.len(), instruction.len());

    let files = [
        "pretrain_data.jsonl",
        "instruction_data.jsonl",
        "end_to_end_data.jsonl",
    ];
    let before = files.map(|f| std::fs::read(out.join(f)).unwrap());
    let hits = server.hits();
    let (code, stderr) = script("clara-data", &[&docs, &out], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(server.hits(), hits, "a rerun is served by the cache");
    let after = files.map(|f| std::fs::read(out.join(f)).unwrap());
    assert!(before == after, "a rerun writes the same bytes");
}

/// Seed 002's pipeline end to end, documents to an Ollama model folder: the extractive backend (no
/// model writes the pairs) and a tiny generated model to fine-tune and export, so CI needs no
/// download; with the default local backend and SmolLM2 the same script is the real job.
#[test]
fn docs_to_ollama_ends_with_a_verified_model_and_modelfile() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    ftkit_model::fixtures::write_tiny_model(&model, &ftkit_model::fixtures::TinySpec::qwen2(1))
        .unwrap();
    let out = tmp.path().join("out");
    let docs = workspace_root().join("testdata/docs");
    let o = Command::new("bash")
        .arg(workspace_root().join("scripts/docs-to-ollama"))
        .arg(&docs)
        .arg(&out)
        .env("FTKIT_BIN", bin_dir())
        .env("MODEL", &model)
        .env("BACKEND", "extractive")
        .env("STEPS", "2")
        .env("QUANT", "f16")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let export = read_json(&out.join("export.json"));
    assert_eq!(export["status"], "ok");
    assert_eq!(
        export["files"],
        serde_json::json!(["model.gguf", "Modelfile"])
    );
    assert!(
        export["verify"]["relative"].as_f64().unwrap() <= 2e-2,
        "{export}"
    );
    let modelfile = std::fs::read_to_string(out.join("ollama/Modelfile")).unwrap();
    assert!(modelfile.starts_with("FROM ./model.gguf\n"), "{modelfile}");
    assert!(
        std::fs::metadata(out.join("ollama/model.gguf"))
            .unwrap()
            .len()
            > 100_000
    );
    assert!(stderr.contains("next: ollama create docs -f"), "{stderr}");
    let train = std::fs::read_to_string(out.join("train.alpaca.jsonl")).unwrap();
    assert!(train.lines().count() > 20, "{train}");
}

/// Seed 004: per-source and per-domain caps, a hash split with seed 42, one adapter per domain with
/// train/val/test losses; the same corpora give the same adapters byte for byte.
#[test]
fn domain_adapters_caps_splits_and_trains_one_adapter_per_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    ftkit_model::fixtures::write_tiny_model(&model, &ftkit_model::fixtures::TinySpec::llama(2))
        .unwrap();
    let corpora = workspace_root().join("testdata/domain-adapters");
    let run = |out: &Path| {
        let o = Command::new("bash")
            .arg(workspace_root().join("scripts/domain-adapters"))
            .arg(&corpora)
            .arg(out)
            .env("FTKIT_BIN", bin_dir())
            .env("MODEL", &model)
            .env("STEPS", "2")
            .env("MAX_PER_SOURCE", "15")
            .env("MAX_PER_DOMAIN", "25")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        read_json(&out.join("report.json"))
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let report = run(&a);
    // Sources capped at 15 (counting 18, sums 20, capitals 16, rivers 12), then domains at 25:
    // arithmetic 30 → 25, geography 27 → 25.
    for (domain, total) in [("arithmetic", 25), ("geography", 25)] {
        let r = &report[domain];
        assert_eq!(r["status"], "ok", "{report}");
        let n = |s: &str| r["records"][s].as_u64().unwrap();
        assert_eq!(n("train") + n("val") + n("test"), total, "{domain}: {r}");
        for s in ["train", "val", "test"] {
            if n(s) > 0 {
                assert!(r[s]["loss"].as_f64().unwrap() > 0.0, "{domain} {s}: {r}");
            }
        }
    }
    for (domain, source, kept) in [
        ("arithmetic", "counting", 15),
        ("arithmetic", "sums", 15),
        ("geography", "capitals", 15),
        ("geography", "rivers", 12),
    ] {
        let path = a
            .join(domain)
            .join("sources")
            .join(source)
            .join("kept.jsonl");
        let lines = std::fs::read_to_string(path).unwrap().lines().count();
        assert_eq!(lines, kept, "{domain}/{source}");
    }
    run(&b);
    for domain in ["arithmetic", "geography"] {
        let adapter = |root: &Path| {
            std::fs::read(root.join(domain).join("adapter/adapter_model.safetensors")).unwrap()
        };
        assert_eq!(adapter(&a), adapter(&b), "{domain}");
    }
}

#[test]
fn cron_example_reruns_to_the_same_bytes_and_never_overlaps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let docs = workspace_root().join("testdata/docs");

    let (code, stderr) = script("cron-example", &[&docs, &out], &[]);
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
    let (code, stderr) = script("cron-example", &[&docs, &out], &[]);
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
    let (code, stderr) = script("cron-example", &[&docs, &out], &[]);
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
    let (code, _) = script(
        "cron-example",
        &[&tmp.path().join("no-such-folder"), &out],
        &[],
    );
    assert_eq!(code, 1);
    assert_ne!(read_json(&out.join("last-run.json"))["status"], 0);
}

/// `sha256sum FILE`, the coreutils tool: an independent check of the hashes ft-fetch records.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Every file under `dir` with its bytes, sorted: a snapshot to compare runs by.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn catalog_route_fetches_http_git_and_hf_then_ingests_and_reruns_cached() {
    use ftkit_testkit::http::Server;
    let data = workspace_root().join("testdata/catalog-route");
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();

    // http: two bundled files and a .tar.gz of the bundled documents (extracted by ft-fetch).
    let tgz = tmp.path().join("docs.tar.gz");
    let docs = workspace_root().join("testdata/docs");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&docs)
        .args(["lighthouses.txt", "honeybees.md"])
        .status()
        .unwrap();
    assert!(st.success());
    for (name, path) in [
        ("notes.jsonl", data.join("http/notes.jsonl")),
        ("table.csv", data.join("http/table.csv")),
        ("docs.tar.gz", tgz.clone()),
    ] {
        server.put(&format!("/files/{name}"), std::fs::read(path).unwrap());
    }
    // hf: the hub's endpoints on the same server, through HF_ENDPOINT; README.md is not allowed.
    let train = std::fs::read(data.join("hf/train.jsonl")).unwrap();
    server.put_hub_repo(
        "dataset",
        "ftkit/route-qa",
        &[("train.jsonl", &train), ("README.md", b"# route-qa\n")],
    );
    // git: a local repository tagged v1, which git reaches through url.<file>.insteadOf <catalog URL>.
    let repo = tmp.path().join("route-guides");
    std::fs::create_dir(&repo).unwrap();
    for name in ["guide.md", "faq.txt"] {
        std::fs::copy(data.join("git").join(name), repo.join(name)).unwrap();
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "guides"]);
    git(&repo, &["tag", "v1"]);

    let catalog = tmp.path().join("catalog.json");
    let text = std::fs::read_to_string(data.join("catalog.json")).unwrap();
    std::fs::write(&catalog, text.replace("@BASE@", &server.url)).unwrap();
    let root = tmp.path().join("root");
    let home = tmp.path().join("hf-home");
    let run = || {
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/catalog-route"))
            .arg("--allow-http")
            .arg(&catalog)
            .arg(&root)
            .env("FTKIT_BIN", bin_dir())
            .env_remove("BASE_URL")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("MODEL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("INGEST_ARGS")
            .env("HF_ENDPOINT", &server.url)
            .env("HF_HOME", &home)
            .env("HF_TOKEN", "")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env("GIT_CONFIG_COUNT", "1")
            .env(
                "GIT_CONFIG_KEY_0",
                format!("url.file://{}.insteadOf", repo.display()),
            )
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("{}/git/route-guides.git", server.url),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };

    let stderr = run();
    let route = read_json(&root.join("route.json"));
    assert!(route.to_string().contains("route-notes"), "{route}");
    let status = |slug: &str| -> String {
        std::fs::read_to_string(root.join("fetch.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["slug"] == slug)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for slug in ["route-notes", "route-qa", "route-guides"] {
        assert_eq!(status(slug), "fetched", "{slug}: {stderr}");
    }
    assert_eq!(status("m6doc"), "manual");
    assert_eq!(
        tree(&root.join("raw/m6doc")),
        vec![],
        "a manual dataset has no data"
    );
    assert!(!root.join("processed/m6doc/docs.jsonl").exists());

    // fetch.lock: every fetched file with the sha256 that sha256sum computes from the bytes served.
    let lock: Vec<serde_json::Value> = std::fs::read_to_string(root.join("fetch.lock"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let locked = |slug: &str, path: &str| -> String {
        lock.iter()
            .find(|e| e["slug"] == slug && e["path"] == path)
            .unwrap_or_else(|| panic!("{slug}/{path} not in fetch.lock: {lock:?}"))["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (slug, path, source) in [
        ("route-notes", "notes.jsonl", data.join("http/notes.jsonl")),
        ("route-notes", "table.csv", data.join("http/table.csv")),
        ("route-notes", "docs.tar.gz", tgz.clone()),
        (
            "route-notes",
            "docs/honeybees.md",
            docs.join("honeybees.md"),
        ),
        ("route-qa", "train.jsonl", data.join("hf/train.jsonl")),
        ("route-guides", "guide.md", data.join("git/guide.md")),
    ] {
        assert_eq!(locked(slug, path), sha256sum(&source), "{slug}/{path}");
    }
    assert!(!lock.iter().any(|e| e["path"] == "README.md"), "{lock:?}");

    // stats.json and records: 3 JSONL + 2 CSV records counted; every dataset ingested to documents.
    let stats = read_json(&root.join("processed/route-notes/stats.json"));
    assert_eq!(stats["records"], 5, "{stats}");
    let docs_of = |slug: &str| {
        std::fs::read_to_string(root.join("processed").join(slug).join("docs.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    // 3 + 2 records and the 2 documents of the archive; 2 records; 2 files of the repository.
    assert_eq!(docs_of("route-notes"), 7);
    assert_eq!(docs_of("route-qa"), 2);
    assert_eq!(docs_of("route-guides"), 2);
    assert!(stderr.contains("route-notes"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/fetch.lock", root.display())),
        "{stderr}"
    );

    // The rerun: everything cached, nothing asked of the http files again, and no byte changed.
    let watched = ["raw", "processed", "manifests"];
    let before: Vec<_> = watched.iter().map(|d| tree(&root.join(d))).collect();
    let lock_before = std::fs::read(root.join("fetch.lock")).unwrap();
    let route_before = std::fs::read(root.join("route.json")).unwrap();
    let hits = server.hits("/files/notes.jsonl").len();
    run();
    for slug in ["route-notes", "route-qa", "route-guides"] {
        assert_eq!(status(slug), "cached", "{slug}");
    }
    assert_eq!(server.hits("/files/notes.jsonl").len(), hits);
    let after: Vec<_> = watched.iter().map(|d| tree(&root.join(d))).collect();
    assert!(
        before == after,
        "a rerun changed raw/, processed/ or manifests/"
    );
    assert_eq!(std::fs::read(root.join("fetch.lock")).unwrap(), lock_before);
    assert_eq!(
        std::fs::read(root.join("route.json")).unwrap(),
        route_before
    );
}
