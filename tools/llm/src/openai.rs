//! The `openai` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, DashScope compatible
//! mode, vLLM, Ollama's `/v1`, llama.cpp server), over ureq with a pool of kept-alive connections.
//!
//! The API key is held in a [`Secret`] that never prints; messages show the URL redacted (no user info,
//! no credential query values), and every message that could echo server or client text is scrubbed of
//! the key and of the URL's secrets.

use crate::backend::{Backend, CallError, Params, Reply, Request, ResponseFormat, Task, Usage};
use serde_json::{Value, json};
use std::time::Duration;

pub use ftkit_core::secret::Secret;
use ftkit_core::secret::{redact_url, redact_urls, url_secrets};

/// Settings of the `openai` backend.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Base URL (`https://api.openai.com/v1`); `/chat/completions` is appended unless present.
    pub base_url: String,
    pub model: String,
    pub key: Option<Secret>,
    /// Name of the variable the key came from, for messages.
    pub key_env: String,
    pub params: Params,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connections kept alive (the concurrency).
    pub connections: usize,
}

pub struct OpenAi {
    agent: ureq::Agent,
    url: String,
    /// `url` as messages show it.
    shown_url: String,
    /// The key and the URL's secrets, scrubbed from every message.
    secrets: Vec<Secret>,
    cfg: OpenAiConfig,
}

impl OpenAi {
    pub fn new(cfg: OpenAiConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_idle_connections(cfg.connections.max(1))
            .max_idle_connections_per_host(cfg.connections.max(1))
            .user_agent(concat!("ftkit-llm/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        // The path goes before a query (`...?api-version=...`, as Azure-style endpoints take).
        let (base, query) = match cfg.base_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (cfg.base_url.as_str(), String::new()),
        };
        let base = base.trim_end_matches('/');
        let url = if base.ends_with("/chat/completions") {
            format!("{base}{query}")
        } else {
            format!("{base}/chat/completions{query}")
        };
        let shown_url = redact_url(&url);
        let secrets = cfg.key.iter().cloned().chain(url_secrets(&url)).collect();
        Self {
            agent,
            url,
            shown_url,
            secrets,
            cfg,
        }
    }

    /// The endpoint as messages show it (redacted).
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(redact_urls(text), |text, secret| secret.scrub(&text))
    }

    /// A failed send or read: retryable, scrubbed (ureq's message may hold the URL).
    fn transport_error(&self, e: ureq::Error, what: &str) -> CallError {
        let reason = match e {
            ureq::Error::Timeout(_) => format!("timed out after {:?}", self.cfg.timeout),
            e => self.scrub(&format!("{what}: {e}")),
        };
        CallError::Retryable {
            reason,
            retry_after: None,
        }
    }

    fn request_json(&self, req: &Request) -> Value {
        let p = &self.cfg.params;
        let mut body = json!({
            "model": self.cfg.model,
            "messages": req.messages,
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
            "seed": p.seed.wrapping_add(u64::from(req.attempt)),
        });
        if let Some(obj) = body.as_object_mut() {
            p.insert_optional(obj);
        }
        if let Task::Describe { data_url, .. } = &req.task {
            attach_image(&mut body, data_url);
        }
        let format = match (effective_format(p, req), &req.schema) {
            (ResponseFormat::None, _) => None,
            (ResponseFormat::JsonObject, _) | (ResponseFormat::JsonSchema, None) => {
                Some(json!({"type": "json_object"}))
            }
            (ResponseFormat::JsonSchema, Some(schema)) => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": req.schema_name, "schema": schema, "strict": false},
            })),
        };
        if let (Some(f), Some(obj)) = (format, body.as_object_mut()) {
            obj.insert("response_format".into(), f);
        }
        body
    }
}

/// Turns the last user turn into the content parts vision endpoints take: its text, then the image.
fn attach_image(body: &mut Value, data_url: &str) {
    let last_user = body
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .and_then(|m| m.iter_mut().rev().find(|m| m["role"] == "user"));
    if let Some(message) = last_user {
        let text = message["content"].take();
        message["content"] = json!([
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]);
    }
}

/// The response format sent: none for free text (a JSON mode would force the reply into JSON).
fn effective_format(p: &Params, req: &Request) -> ResponseFormat {
    match req.task {
        Task::Generate { .. } | Task::Describe { .. } => ResponseFormat::None,
        _ => p.response_format,
    }
}

/// Reads `Retry-After` given in seconds (the form API servers use); HTTP dates are ignored.
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let v = resp
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(3600.0)))
}

/// The first 300 characters of a server's error body, on one line.
fn snippet(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_string()
}

/// Extracts content and usage from a chat-completions response body.
pub fn parse_envelope(text: &str) -> Result<Reply, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("response is not JSON ({e})"))?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| "response has no choices[0].message.content".to_string())?;
    let usage = Usage {
        prompt_tokens: v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        completion_tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let finish_reason = v
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Reply {
        text: content.to_string(),
        usage,
        finish_reason,
    })
}

impl Backend for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.cfg.model
    }

    fn body(&self, req: &Request) -> Option<Vec<u8>> {
        serde_json::to_vec(&self.request_json(req)).ok()
    }

    fn params(&self, req: &Request) -> Value {
        let p = &self.cfg.params;
        let format = match effective_format(p, req) {
            ResponseFormat::None => "none",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema => "json_schema",
        };
        let mut params = json!({
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
            "seed": p.seed.wrapping_add(u64::from(req.attempt)),
            "response_format": format,
        });
        if let Some(obj) = params.as_object_mut() {
            p.insert_optional(obj);
        }
        params
    }

    fn send(&self, req: &Request, body: Option<&[u8]>) -> Result<Reply, CallError> {
        let owned;
        let body = match body {
            Some(b) => b,
            None => {
                owned = serde_json::to_vec(&self.request_json(req))
                    .map_err(|e| CallError::Item(e.to_string()))?;
                &owned
            }
        };
        let mut call = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json");
        if let Some(key) = &self.cfg.key {
            call = call.header("authorization", format!("Bearer {}", key.expose()));
        }
        let mut resp = call.send(body).map_err(|e| {
            self.transport_error(e, &format!("request to {} failed", self.shown_url))
        })?;
        let status = resp.status().as_u16();
        let wait = retry_after(&resp);
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.transport_error(e, "reading the response failed"))?;
        match status {
            200..=299 => parse_envelope(&text)
                .map_err(|reason| CallError::Retryable { reason: self.scrub(&reason), retry_after: None }),
            408 | 409 | 429 | 500..=599 => Err(CallError::Retryable {
                reason: self.scrub(&format!("HTTP {status}: {}", snippet(&text))),
                retry_after: wait,
            }),
            401 | 403 => Err(CallError::Fatal(self.scrub(&format!(
                "HTTP {status} from {}: check the API key in ${} ({})",
                self.shown_url,
                self.cfg.key_env,
                snippet(&text)
            )))),
            404 => Err(CallError::Fatal(self.scrub(&format!(
                "HTTP 404 from {}: check --base-url and --model ({})",
                self.shown_url,
                snippet(&text)
            )))),
            _ => Err(CallError::Fatal(self.scrub(&format!(
                "HTTP {status} from {}: {} (if the server rejects response_format, try --response-format none)",
                self.shown_url,
                snippet(&text)
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope() {
        let r = parse_envelope(
            r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        );
        assert_eq!(
            r,
            Ok(Reply {
                text: "hi".into(),
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 1
                },
                finish_reason: None,
            })
        );
        assert!(parse_envelope("{\"choices\":[]}").is_err());
        assert!(parse_envelope("<html>").is_err());
    }
}
