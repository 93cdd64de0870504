//! `ORG/NAME[@REV]` resolution against a loopback server that speaks the hub's download protocol.

use anyhow::Result;
use ftkit_core::secret::Secret;
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_model::{HubOptions, ModelSource, resolve};
use ftkit_testkit::http::{COMMIT, Server};
use std::path::Path;

/// Serve every file of `dir` as model repo `org/tiny`, revision `main` or COMMIT.
fn serve(dir: &Path) -> Result<Server> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        files.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path())?,
        ));
    }
    let server = Server::start();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    server.put_hub_repo("model", "org/tiny", &refs);
    Ok(server)
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
    let log = server.log();
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
    let after = server.log().len();
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
