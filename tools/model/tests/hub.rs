//! `ORG/NAME[@REV]` resolution against a loopback server that speaks the hub's download protocol.

use anyhow::Result;
use ftkit_core::secret::Secret;
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_model::{HubOptions, ModelSource, resolve};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Server {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Serve every file of `dir` as repo `org/tiny`, revision `main` or COMMIT.
fn serve(dir: &Path) -> Result<Server> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path())?,
        );
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // One thread per connection: the client may hold an idle connection open.
            let files = files.clone();
            let log2 = log2.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut range: Option<(usize, Option<usize>)> = None;
                let mut auth = String::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("range: bytes=") {
                        let v = v.trim();
                        let (a, b) = v.split_once('-').unwrap_or((v, ""));
                        range = Some((a.parse().unwrap_or(0), b.parse().ok()));
                    }
                    if lower.starts_with("authorization:") {
                        auth = h.trim().to_string();
                    }
                }
                if let Ok(mut l) = log2.lock() {
                    l.push(format!("{path} {auth}"));
                }
                let info_main = "/api/models/org/tiny/revision/main".to_string();
                let info_commit = format!("/api/models/org/tiny/revision/{COMMIT}");
                let response: Vec<u8> = if path == info_main || path == info_commit {
                    let mut names: Vec<&String> = files.keys().collect();
                    names.sort();
                    let siblings: Vec<_> = names
                        .iter()
                        .map(|n| serde_json::json!({"rfilename": n}))
                        .collect();
                    let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                    format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
                } else if let Some(name) = path
                    .strip_prefix("/org/tiny/resolve/main/")
                    .or_else(|| path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/")))
                    .and_then(|n| files.get(n))
                {
                    let (start, end) = match range {
                        Some((a, b)) => (a, b.unwrap_or(name.len() - 1).min(name.len() - 1)),
                        None => (0, name.len() - 1),
                    };
                    let body = &name[start..=end];
                    let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{end}/{}\r\netag: \"e{}\"\r\nx-repo-commit: {COMMIT}\r\nconnection: close\r\n\r\n",
                    body.len(),
                    name.len(),
                    ftkit_model_test_hash(name)
                )
                .into_bytes();
                    head.extend_from_slice(body);
                    head
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = stream.write_all(&response);
                let _ = stream.flush();
            });
        }
    });
    Ok(Server { url, log })
}

fn ftkit_model_test_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn downloads_then_resolves_offline_from_cache() -> Result<()> {
    let model = tempfile::tempdir()?;
    let mut spec = TinySpec::qwen2(3);
    spec.shards = 2;
    write_tiny_model(model.path(), &spec)?;
    let server = serve(model.path())?;
    let cache = tempfile::tempdir()?;
    let opts = HubOptions {
        endpoint: Some(server.url.clone()),
        cache_dir: Some(cache.path().to_path_buf()),
        token: Some(Secret::new("hf_secret_test_token".into())),
        offline: false,
    };
    let src = ModelSource::parse("org/tiny")?;
    let files = resolve(&src, &opts)?;
    assert_eq!(files.commit.as_deref(), Some(COMMIT));
    assert_eq!(files.weights.len(), 2);
    assert_eq!(
        std::fs::read(&files.config)?,
        std::fs::read(model.path().join("config.json"))?
    );
    assert_eq!(
        std::fs::read(&files.weights[1])?,
        std::fs::read(model.path().join("model-00002-of-00002.safetensors"))?
    );
    assert!(files.tokenizer_config.is_some());
    assert!(files.weights[0].starts_with(cache.path()));
    // The token went out as a bearer header.
    let log = server.log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        log.iter()
            .any(|l| l.contains("Bearer hf_secret_test_token")),
        "{log:?}"
    );

    // Offline: same files from the cache, no request made.
    let before = log.len();
    let offline = HubOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        offline: true,
        ..opts.clone()
    };
    let again = resolve(&src, &offline)?;
    assert_eq!(again.weights, files.weights);
    assert_eq!(again.config, files.config);
    let after = server.log.lock().map(|l| l.len()).unwrap_or_default();
    assert_eq!(before, after);

    // A revision pinned to the commit also works.
    let pinned = resolve(&ModelSource::parse(&format!("org/tiny@{COMMIT}"))?, &opts)?;
    assert_eq!(
        std::fs::read(&pinned.tokenizer)?,
        std::fs::read(model.path().join("tokenizer.json"))?
    );
    Ok(())
}

#[test]
fn offline_without_cache_names_the_missing_file() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
        ..HubOptions::default()
    };
    let err = resolve(&ModelSource::parse("org/absent")?, &opts)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("org/absent") && err.contains("offline"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_repo_is_an_error_without_the_token() -> Result<()> {
    let model = tempfile::tempdir()?;
    write_tiny_model(model.path(), &TinySpec::llama(1))?;
    let server = serve(model.path())?;
    let cache = tempfile::tempdir()?;
    let opts = HubOptions {
        endpoint: Some(server.url),
        cache_dir: Some(cache.path().to_path_buf()),
        token: Some(Secret::new("hf_secret_test_token".into())),
        offline: false,
    };
    let err = resolve(&ModelSource::parse("org/other")?, &opts)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("org/other"), "{err}");
    assert!(!err.contains("hf_secret_test_token"), "{err}");
    Ok(())
}

#[test]
fn local_dir_single_and_sharded() -> Result<()> {
    let d = tempfile::tempdir()?;
    write_tiny_model(d.path(), &TinySpec::llama(2))?;
    let f = resolve(
        &ModelSource::parse(&d.path().display().to_string())?,
        &HubOptions::default(),
    )?;
    assert_eq!(f.weights, vec![d.path().join("model.safetensors")]);
    let mut spec = TinySpec::llama(2);
    spec.shards = 3;
    let s = tempfile::tempdir()?;
    write_tiny_model(s.path(), &spec)?;
    let f = resolve(
        &ModelSource::Dir(s.path().to_path_buf()),
        &HubOptions::default(),
    )?;
    assert_eq!(f.weights.len(), 3);
    let missing = resolve(
        &ModelSource::Dir(s.path().join("nope")),
        &HubOptions::default(),
    );
    assert!(missing.is_err());
    Ok(())
}

#[test]
fn fixtures_are_byte_identical_for_a_seed() -> Result<()> {
    let (a, b, c) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    write_tiny_model(a.path(), &TinySpec::qwen2(9))?;
    write_tiny_model(b.path(), &TinySpec::qwen2(9))?;
    write_tiny_model(c.path(), &TinySpec::qwen2(10))?;
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f))?,
            std::fs::read(b.path().join(f))?,
            "{f}"
        );
    }
    assert_ne!(
        std::fs::read(a.path().join("model.safetensors"))?,
        std::fs::read(c.path().join("model.safetensors"))?
    );
    Ok(())
}

#[test]
fn hub_options_debug_shows_no_secret() {
    let opts = HubOptions {
        endpoint: Some(
            "https://user:hf_endpoint_password@hub.example/?token=hf_query_token".into(),
        ),
        token: Some(Secret::new("hf_secret_test_token".into())),
        ..HubOptions::default()
    };
    let shown = format!("{opts:?}");
    for secret in [
        "hf_secret_test_token",
        "hf_endpoint_password",
        "hf_query_token",
        "user",
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(
        shown.contains("https://***@hub.example/?token=***"),
        "{shown}"
    );
}
