#![allow(clippy::unwrap_used)]

use ftkit_llm::backend::ResponseFormat;
use ftkit_llm::cache::Cache;
use ftkit_llm::client::RetryPolicy;
use ftkit_llm::limits::{Limits, TokenBucket};
use ftkit_llm::openai::{OpenAi, OpenAiConfig, Secret};
use ftkit_llm::testing::{Fault, FaultRule, ServerConfig, TestServer};
use ftkit_llm::{Backend, CallError, Client, Params, Task, parse, prompts};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

fn backend(server: &TestServer, format: ResponseFormat, timeout: Duration) -> OpenAi {
    OpenAi::new(OpenAiConfig {
        base_url: server.url().to_string(),
        model: "m".into(),
        key: Some(Secret::new("sk-unit-test-key".into())),
        key_env: "OPENAI_API_KEY".into(),
        params: Params {
            response_format: format,
            ..Params::default()
        },
        timeout,
        connections: 4,
    })
}

fn qa(text: &str) -> Task {
    Task::Qa {
        text: text.into(),
        n: 2,
        lang: "en".into(),
        doc_lang: "en".into(),
    }
}

#[test]
fn retry_after_is_honoured() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::ZERO,
        faults: vec![FaultRule {
            modulo: 1,
            remainder: 0,
            first_hits: 1,
            fault: Fault::TooManyRequests { retry_after: 1 },
        }],
    })
    .unwrap();
    let client = Client::new(Box::new(backend(
        &server,
        ResponseFormat::JsonObject,
        Duration::from_secs(5),
    )))
    .with_retry(RetryPolicy {
        max_retries: 3,
        base: Duration::from_millis(1),
        ..RetryPolicy::default()
    });
    let t0 = Instant::now();
    let reply = client
        .call(&prompts::request(qa("Some passage text."), None, 0))
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not waited for"
    );
    assert!(parse::qa_pairs(&reply.text).is_ok());
    assert_eq!(client.stats.requests.load(Relaxed), 2);
    assert_eq!(client.stats.retries.load(Relaxed), 1);
    assert_eq!(server.hits(), 2);
}

#[test]
fn timeouts_are_retried_then_reported() {
    let server = TestServer::start(ServerConfig {
        latency: Duration::ZERO,
        faults: vec![FaultRule {
            modulo: 1,
            remainder: 0,
            first_hits: u32::MAX,
            fault: Fault::Stall(Duration::from_millis(800)),
        }],
    })
    .unwrap();
    let client = Client::new(Box::new(backend(
        &server,
        ResponseFormat::JsonObject,
        Duration::from_millis(200),
    )))
    .with_retry(RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(1),
        ..RetryPolicy::default()
    });
    let err = client
        .call(&prompts::request(qa("x y z"), None, 0))
        .unwrap_err();
    match err {
        CallError::Item(msg) => assert!(
            msg.contains("gave up after 3 tries") && msg.contains("timed out"),
            "{msg}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 3);
}

#[test]
fn rpm_limit_paces_requests() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    // 600/min = 10/s with a bucket of 10: 20 requests need at least ~1 s.
    let client = Client::new(Box::new(backend(
        &server,
        ResponseFormat::JsonObject,
        Duration::from_secs(5),
    )))
    .with_limits(Limits {
        rpm: Some(TokenBucket::per_minute(600.0)),
        tpm: None,
    });
    let t0 = Instant::now();
    for i in 0..20 {
        client
            .call(&prompts::request(qa(&format!("passage {i}")), None, 0))
            .unwrap();
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(server.hits(), 20);
}

#[test]
fn cache_answers_without_requests_and_seed_changes_key() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        Client::new(Box::new(backend(
            &server,
            ResponseFormat::JsonObject,
            Duration::from_secs(5),
        )))
        .with_cache(Some(Cache::new(dir.path().to_path_buf())))
    };
    let req = prompts::request(qa("cached passage"), None, 0);
    let first = make().call(&req).unwrap();
    let client = make();
    assert_eq!(client.call(&req).unwrap(), first);
    assert_eq!(server.hits(), 1);
    assert_eq!(client.stats.cache_hits.load(Relaxed), 1);
    // A re-ask (attempt 1) sends seed + 1: a different body, so a different cache entry.
    client
        .call(&prompts::request(qa("cached passage"), None, 1))
        .unwrap();
    assert_eq!(server.hits(), 2);
}

#[test]
fn request_body_carries_params_and_response_format() {
    let server = TestServer::start(ServerConfig::default()).unwrap();
    let req = prompts::request(qa("body"), None, 2);
    let body = |f| -> serde_json::Value {
        serde_json::from_slice(
            &backend(&server, f, Duration::from_secs(1))
                .body(&req)
                .unwrap(),
        )
        .unwrap()
    };
    let schema = body(ResponseFormat::JsonSchema);
    assert_eq!(schema["response_format"]["type"], "json_schema");
    assert_eq!(schema["response_format"]["json_schema"]["name"], "qa_pairs");
    assert_eq!(schema["seed"], 2);
    assert_eq!(schema["model"], "m");
    assert_eq!(schema["messages"][1]["role"], "user");
    assert_eq!(
        body(ResponseFormat::JsonObject)["response_format"]["type"],
        "json_object"
    );
    assert!(body(ResponseFormat::None).get("response_format").is_none());
    // The key travels in a header only.
    assert!(
        !serde_json::to_string(&schema)
            .unwrap()
            .contains("sk-unit-test-key")
    );
}
