//! A real chat-completions server on 127.0.0.1 for tests and the bench (feature `test-server`).
//!
//! Built on std's TcpListener, one thread per connection, keep-alive, Content-Length bodies only (all
//! our client sends). tiny_http was tried first and dropped: it leaves Nagle on and writes a response
//! through a 1 KiB buffer in several pieces, so every reply over ~1 KB waited ~40 ms for a delayed ACK
//! (measured: 45 ms per request instead of 3 ms), which would have made the bench measure the server.
//! Each connection answers after the configured latency, so hundreds of requests can be in flight.
//!
//! Answers are derived from the prompt alone: the passage (after `Passage:` or `Context:` in the last
//! user message) gives three QA pairs quoting its words (and a fourth repeating the first question), a summary (its first 20 words) and a judgement
//! (scores from a hash of the prompt), all in one JSON object, so any task parses. Usage is reported as
//! characters / 4. A request without `response_format` (free text, as ft-generate sends) is answered
//! with prose instead ([`free_text`]), cut like a real server: before the first `stop` string
//! (finish reason `stop`) or at `max_tokens` * 4 characters (finish reason `length`).
//!
//! Faults are injected deterministically: a rule applies to prompts whose hash (of the last user
//! message, seed excluded) falls in `hash % modulo == remainder`, on their first `first_hits` requests.
//! Because every request of one prompt is sent by one worker in sequence, the faults a prompt meets do
//! not depend on concurrency.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
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
    /// Image URLs received, in arrival order.
    images: Mutex<Vec<String>>,
    ok: AtomicU64,
}

pub struct TestServer {
    state: Arc<State>,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    url: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(cfg: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stp) = (Arc::clone(&state), Arc::clone(&stop));
        let cfg = Arc::new(cfg);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stp.load(Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (st, cfg) = (Arc::clone(&st), Arc::clone(&cfg));
                std::thread::spawn(move || serve_connection(stream, &st, &cfg));
            }
        });
        Ok(Self {
            state,
            addr,
            stop,
            url: format!("http://{addr}/v1"),
            thread: Some(thread),
        })
    }

    /// Base URL to pass as `--base-url`.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Requests received.
    /// The image URLs (data URLs) of the vision requests received so far.
    pub fn image_urls(&self) -> Vec<String> {
        match self.state.images.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

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
        self.stop.store(true, Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hash64(s: &str) -> u64 {
    let hex = ftkit_core::id::sha256_hex(s.as_bytes());
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
}

struct HttpRequest {
    body: String,
    authorization: String,
    close: bool,
}

/// Reads one HTTP/1.1 request (request line, headers, Content-Length body); `None` at end of stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut length = 0usize;
    let mut authorization = String::new();
    let mut close = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok()?,
                "authorization" => authorization = value.to_string(),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest {
        body: String::from_utf8_lossy(&body).into_owned(),
        authorization,
        close,
    })
}

fn serve_connection(stream: TcpStream, st: &State, cfg: &ServerConfig) {
    // Answers go out in one write with Nagle off, as production servers do: the client's timing is
    // what a bench should see, not delayed-ACK stalls.
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        let (status, body, extra) = answer(&req, st, cfg);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            429 => "Too Many Requests",
            _ => "Internal Server Error",
        };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some((k, v)) = extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        if writer.write_all(&bytes).is_err() || req.close {
            return;
        }
    }
}

type Answer = (u16, String, Option<(&'static str, String)>);

fn answer(req: &HttpRequest, st: &State, cfg: &ServerConfig) -> Answer {
    st.hits.fetch_add(1, Relaxed);
    let auth = &req.authorization;
    let parsed: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
    let user_turn = parsed
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"));
    let prompt = match user_turn {
        // Content parts (a vision request): the text, then a hash of each image, recorded.
        Some(Value::Array(parts)) => {
            let mut prompt = String::new();
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    prompt.push_str(text);
                }
                if let Some(url) = part.pointer("/image_url/url").and_then(Value::as_str) {
                    prompt.push_str(&format!(" [image {:016x}]", hash64(url)));
                    match st.images.lock() {
                        Ok(mut g) => g.push(url.to_string()),
                        Err(p) => p.into_inner().push(url.to_string()),
                    }
                }
            }
            prompt
        }
        other => other
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
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
    let error = |msg: String| json!({"error": {"message": msg}}).to_string();
    match fault {
        Some(Fault::TooManyRequests { retry_after }) => (
            429,
            error("rate limited".into()),
            Some(("retry-after", retry_after.to_string())),
        ),
        Some(Fault::ServerError) => (500, error("boom".into()), None),
        Some(Fault::EchoAuthorization) => (500, error(format!("bad header {auth}")), None),
        Some(Fault::Unauthorized) => (401, error(format!("invalid key {auth}")), None),
        Some(Fault::GarbageBody) => (200, "<html>upstream hiccup".to_string(), None),
        Some(Fault::ProseContent) => (
            200,
            envelope(&model, &prompt, "Sure! I'd be glad to help."),
            None,
        ),
        Some(Fault::Stall(d)) => {
            std::thread::sleep(d);
            (200, envelope(&model, &prompt, &content(&prompt, h)), None)
        }
        None if parsed.get("response_format").is_none() => {
            st.ok.fetch_add(1, Relaxed);
            let (text, finish) = free_text(&prompt, h, &parsed);
            (200, envelope_with(&model, &prompt, &text, finish), None)
        }
        None => {
            st.ok.fetch_add(1, Relaxed);
            (200, envelope(&model, &prompt, &content(&prompt, h)), None)
        }
    }
}

/// The free-text reply: `Reply <hash> to: <prompt>. The end.`, cut at the first `stop` string or at
/// `max_tokens` * 4 characters, with the finish reason a server would give.
pub fn free_text(prompt: &str, h: u64, req: &Value) -> (String, &'static str) {
    let mut text = format!("Reply {:04x} to: {prompt}. The end.", h % 0x10000);
    let stops = req.get("stop").and_then(Value::as_array);
    let cut = stops
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| text.find(s))
        .min();
    let mut finish = "stop";
    if let Some(i) = cut {
        text.truncate(i);
    }
    let limit = req
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map_or(usize::MAX, |n| n as usize * 4);
    if text.chars().count() > limit {
        text = text.chars().take(limit).collect();
        finish = "length";
    }
    (text, finish)
}

fn envelope(model: &str, prompt: &str, content: &str) -> String {
    envelope_with(model, prompt, content, "stop")
}

fn envelope_with(model: &str, prompt: &str, content: &str, finish: &str) -> String {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
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
    let mut pairs: Vec<Value> = (0..3)
        .map(|i| {
            let part: Vec<&str> = words.iter().skip(i * third).take(third.min(12)).copied().collect();
            let answer = if part.is_empty() { "Nothing.".to_string() } else { part.join(" ") };
            json!({"question": format!("What does part {} of passage {:04x} say?", i + 1, h % 0x10000), "answer": answer})
        })
        .collect();
    // A fourth pair repeats the first question in other case and punctuation (clients must dedup).
    let dup = format!("WHAT DOES PART 1 OF PASSAGE {:04x} SAY", h % 0x10000);
    pairs.push(json!({"question": dup, "answer": "A repeated question."}));
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
