//! A real chat-completions server on 127.0.0.1 for tests and the bench (feature `test-server`).
//!
//! Built on tiny_http (a small maintained HTTP/1.1 server with keep-alive) rather than a hand-written
//! parser: the tests exercise our client, not our HTTP parsing. Each request is answered on its own
//! thread after the configured latency, so hundreds can be in flight.
//!
//! Answers are derived from the prompt alone: the passage (after `Passage:` or `Context:` in the last
//! user message) gives three QA pairs quoting its words, a summary (its first 20 words) and a judgement
//! (scores from a hash of the prompt), all in one JSON object, so any task parses. Usage is reported as
//! characters / 4.
//!
//! Faults are injected deterministically: a rule applies to prompts whose hash (of the last user
//! message, seed excluded) falls in `hash % modulo == remainder`, on their first `first_hits` requests.
//! Because every request of one prompt is sent by one worker in sequence, the faults a prompt meets do
//! not depend on concurrency.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with `Retry-After: N` seconds.
    TooManyRequests { retry_after: u32 },
    /// 500 with a JSON error body.
    ServerError,
    /// 500 whose body echoes the request's Authorization header (a careless server): the client
    /// must not let it reach any output.
    EchoAuthorization,
    /// Answer only after this long (longer than the client's timeout: a timeout).
    Stall(Duration),
    /// 200 with a body that is not JSON.
    GarbageBody,
    /// 200 with a valid envelope whose content is prose, not JSON.
    ProseContent,
    /// 401.
    Unauthorized,
}

#[derive(Clone, Debug)]
pub struct FaultRule {
    pub modulo: u64,
    pub remainder: u64,
    /// Applies to the first this-many requests of a matching prompt (`u32::MAX`: always).
    pub first_hits: u32,
    pub fault: Fault,
}

#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    pub latency: Duration,
    pub faults: Vec<FaultRule>,
}

#[derive(Default)]
struct State {
    /// Requests per prompt hash.
    per_prompt: Mutex<HashMap<u64, u32>>,
    hits: AtomicU64,
    faults: AtomicU64,
    ok: AtomicU64,
}

pub struct TestServer {
    server: Arc<tiny_http::Server>,
    state: Arc<State>,
    url: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(cfg: ServerConfig) -> std::io::Result<Self> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(std::io::Error::other)?;
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
        let server = Arc::new(server);
        let state = Arc::new(State::default());
        let (srv, st) = (Arc::clone(&server), Arc::clone(&state));
        let cfg = Arc::new(cfg);
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let (st, cfg) = (Arc::clone(&st), Arc::clone(&cfg));
                std::thread::spawn(move || handle(request, &st, &cfg));
            }
        });
        Ok(Self {
            server,
            state,
            url: format!("http://127.0.0.1:{port}/v1"),
            thread: Some(thread),
        })
    }

    /// Base URL to pass as `--base-url`.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Requests received.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Relaxed)
    }
    /// Requests answered with a fault.
    pub fn faults(&self) -> u64 {
        self.state.faults.load(Relaxed)
    }
    /// Requests answered normally.
    pub fn ok(&self) -> u64 {
        self.state.ok.load(Relaxed)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hash64(s: &str) -> u64 {
    let hex = ftkit_core::id::sha256_hex(s.as_bytes());
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
}

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(
    request: tiny_http::Request,
    status: u16,
    body: String,
    extra: Option<tiny_http::Header>,
) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    for h in [header("content-type", "application/json"), extra]
        .into_iter()
        .flatten()
    {
        resp.add_header(h);
    }
    let _ = request.respond(resp);
}

fn handle(mut request: tiny_http::Request, st: &State, cfg: &ServerConfig) {
    st.hits.fetch_add(1, Relaxed);
    let mut body = String::new();
    let _ = request.as_reader().read_to_string(&mut body);
    let auth = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("authorization"))
        .map(|h| h.value.as_str().to_string())
        .unwrap_or_default();
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let prompt = parsed
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let h = hash64(&prompt);
    let hit = {
        let mut map = match st.per_prompt.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = map.entry(h).or_insert(0);
        *n += 1;
        *n - 1
    };
    let fault = cfg
        .faults
        .iter()
        .find(|r| r.modulo > 0 && h % r.modulo == r.remainder && hit < r.first_hits)
        .map(|r| r.fault.clone());
    std::thread::sleep(cfg.latency);
    if fault.is_some() {
        st.faults.fetch_add(1, Relaxed);
    }
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("test")
        .to_string();
    match fault {
        Some(Fault::TooManyRequests { retry_after }) => respond(
            request,
            429,
            json!({"error": {"message": "rate limited"}}).to_string(),
            header("retry-after", &retry_after.to_string()),
        ),
        Some(Fault::ServerError) => respond(
            request,
            500,
            json!({"error": {"message": "boom"}}).to_string(),
            None,
        ),
        Some(Fault::EchoAuthorization) => respond(
            request,
            500,
            json!({"error": {"message": format!("bad header {auth}")}}).to_string(),
            None,
        ),
        Some(Fault::Unauthorized) => respond(
            request,
            401,
            json!({"error": {"message": format!("invalid key {auth}")}}).to_string(),
            None,
        ),
        Some(Fault::GarbageBody) => {
            respond(request, 200, "<html>upstream hiccup".to_string(), None)
        }
        Some(Fault::ProseContent) => respond(
            request,
            200,
            envelope(&model, &prompt, "Sure! I'd be glad to help."),
            None,
        ),
        Some(Fault::Stall(d)) => {
            std::thread::sleep(d);
            respond(
                request,
                200,
                envelope(&model, &prompt, &content(&prompt, h)),
                None,
            )
        }
        None => {
            st.ok.fetch_add(1, Relaxed);
            respond(
                request,
                200,
                envelope(&model, &prompt, &content(&prompt, h)),
                None,
            )
        }
    }
}

fn envelope(model: &str, prompt: &str, content: &str) -> String {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt.chars().count() / 4,
            "completion_tokens": content.chars().count() / 4,
            "total_tokens": prompt.chars().count() / 4 + content.chars().count() / 4,
        }
    })
    .to_string()
}

/// The deterministic reply to a prompt (see the module docs).
pub fn content(prompt: &str, h: u64) -> String {
    let passage = ["Passage:\n", "Context:\n"]
        .iter()
        .find_map(|m| prompt.find(m).map(|i| &prompt[i + m.len()..]))
        .unwrap_or(prompt);
    let passage = passage.split("\n\nQuestion:").next().unwrap_or(passage);
    let words: Vec<&str> = passage.split_whitespace().collect();
    let third = words.len().div_ceil(3).max(1);
    let pairs: Vec<Value> = (0..3)
        .map(|i| {
            let part: Vec<&str> = words.iter().skip(i * third).take(third.min(12)).copied().collect();
            let answer = if part.is_empty() { "Nothing.".to_string() } else { part.join(" ") };
            json!({"question": format!("What does part {} of passage {:04x} say?", i + 1, h % 0x10000), "answer": answer})
        })
        .collect();
    let score = |salt: u64| 4 + (h >> salt) % 7;
    json!({
        "pairs": pairs,
        "summary": words.iter().take(20).copied().collect::<Vec<_>>().join(" "),
        "relevance": score(3), "accuracy": score(7), "clarity": score(11), "grounding": score(13),
        "overall": score(17),
        "rationale": format!("deterministic test judgement {:04x}", h % 0x10000),
    })
    .to_string()
}
