#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use clap::CommandFactory;
use ftkit_llm::testing::{ServerConfig, TestServer};
use ftkit_testkit::{Run, contract::Contract, testdata};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ft-describe");

fn args(server: &TestServer) -> Vec<String> {
    ["--base-url", server.url(), "--model", "vision-test"]
        .map(String::from)
        .to_vec()
}

fn dir() -> std::path::PathBuf {
    testdata("describe", "images.jsonl")
        .parent()
        .unwrap()
        .to_path_buf()
}

fn input() -> Vec<u8> {
    std::fs::read(testdata("describe", "images.jsonl")).unwrap()
}

#[test]
fn images_are_described_documents_pass_and_bad_images_are_rejected() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rejects = tmp.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .args(args(&server))
        .args(["--no-cache", "--max-side", "16", "--rejects"])
        .arg(&rejects)
        .current_dir(dir())
        .stdin(input())
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 3, "{}", out.stderr);
    // Input order: image, document (unchanged), image.
    let chart = &recs[0];
    assert!(
        chart["text"].as_str().unwrap().contains("[image "),
        "{chart}"
    );
    assert_eq!(chart["source"], "report.pdf");
    assert_eq!(chart["image"]["page"], 2);
    assert_eq!(
        (
            chart["image"]["width"].clone(),
            chart["image"]["height"].clone()
        ),
        (40.into(), 30.into())
    );
    let sha = ftkit_core::id::sha256_hex(&std::fs::read(dir().join("chart.png")).unwrap());
    assert_eq!(
        chart["image"]["sha256"],
        Value::from(sha),
        "the file's hash, not the record's"
    );
    assert_eq!(chart["gen"]["sent"]["width"], 16);
    assert_eq!(
        chart["id"],
        Value::from(ftkit_core::stable_id(&[chart["text"].as_str().unwrap()]))
    );
    assert_eq!(recs[1]["text"], "A document passes through.");
    assert_eq!(recs[1]["id"], "d1");
    assert_eq!(recs[2]["image"]["slide"], 3);
    assert_eq!(recs[2]["meta"]["lang"], "en");
    // Two requests, each a JPEG data URL of the downsized image.
    let urls = server.image_urls();
    assert_eq!(urls.len(), 2);
    for url in &urls {
        let b64 = url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let img = image::load_from_memory(&jpeg).unwrap();
        assert!(img.width().max(img.height()) <= 16);
    }
    let rejected: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    let reasons = format!("{rejected:?}");
    assert!(reasons.contains("corrupt or truncated png"), "{reasons}");
    assert!(reasons.contains("empty file"), "{reasons}");
    assert!(
        out.stderr
            .contains("2 images described, 2 invalid images rejected"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_rerun_replays_from_the_cache_without_a_request() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = || {
        Run::new(BIN)
            .args(args(&server))
            .arg("--cache")
            .arg(&cache)
            .current_dir(dir())
            .stdin(input())
            .run()
            .expect_code(0)
    };
    let first = run();
    let hits = server.hits();
    assert_eq!(hits, 2);
    let second = run();
    assert_eq!(server.hits(), hits, "no request repeated");
    assert_eq!(first.stdout, second.stdout);
}

#[test]
fn without_an_endpoint_it_is_a_usage_error() {
    let out = Run::new(BIN)
        .env("MODEL", "")
        .env("BASE_URL", "")
        .env("OPENAI_BASE_URL", "")
        .env("VISION_MODEL", "")
        .stdin(input())
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no vision model named"),
        "{}",
        out.stderr
    );
}

#[test]
fn contract() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    // Absolute paths: the contract runs from other folders.
    let d = dir();
    let input: String = ["chart.png", "diagram.png", "chart.png"]
        .iter()
        .map(|f| {
            format!(
                "{{\"kind\":\"image\",\"path\":{}}}\n",
                serde_json::json!(d.join(f))
            )
        })
        .collect();
    let mut a = args(&server);
    a.push("--no-cache".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    Contract {
        bin: BIN,
        args: &a,
        input: input.as_bytes(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_describe::Args::command());
}
