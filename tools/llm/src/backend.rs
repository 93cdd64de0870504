//! The one trait every text-generation backend implements, and the request it receives.
//!
//! A [`Request`] carries both the structured [`Task`] (what is wanted: QA pairs from a text, a summary,
//! a judgement) and the chat [`Message`]s rendered from it. Prompt-driven backends (`openai`, and the
//! coming `local` candle backend) send the messages; the offline `extractive` backend reads the task and
//! ignores the prompt. Every backend answers with the model's text, which the caller parses as JSON,
//! so the same lenient parser, cache and retry logic serve all of them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One chat message (the type ft-train-lora and ft-generate read records into).
pub use ftkit_core::chat::Message;

/// What a request asks for, in structured form (the extractive backend works from this alone).
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// `n` question-answer pairs about `text`, questions and answers in `lang` (the text is in `doc_lang`).
    /// Expected reply: `{"pairs":[{"question":..,"answer":..}]}`.
    Qa {
        text: String,
        n: usize,
        lang: String,
        doc_lang: String,
    },
    /// A dense summary of `text` in `lang`. Expected reply: `{"summary":..}`.
    Summary { text: String, lang: String },
    /// A 1-10 judgement of a QA pair. Expected reply:
    /// `{"relevance":..,"accuracy":..,"clarity":..,"grounding":..,"overall":..,"rationale":..}`.
    Judge {
        context: Option<String>,
        question: String,
        answer: String,
    },
    /// Free text: the reply to `messages` as is (ft-generate), not parsed as JSON; no
    /// `response_format` is sent for it.
    Generate { messages: Vec<Message> },
    /// Free text: a description of an image, sent as a data URL (`data:image/jpeg;base64,...`) after
    /// `prompt` in one user turn (ft-describe). Only backends that take images answer it.
    Describe { prompt: String, data_url: String },
}

/// Requested output structure, sent as `response_format` by backends that support it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFormat {
    /// No response_format field.
    None,
    /// `{"type":"json_object"}` (OpenAI, vLLM, llama.cpp, Ollama, DashScope).
    #[default]
    JsonObject,
    /// `{"type":"json_schema",...}` with the task's schema (OpenAI, vLLM, recent llama.cpp).
    JsonSchema,
}

/// Sampling parameters; they are part of the request body and so of the cache key.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub temperature: f32,
    pub max_tokens: u32,
    pub seed: u64,
    pub response_format: ResponseFormat,
    /// Nucleus sampling; `None`: the server's default (and nothing sent, so cache keys of runs
    /// without it do not change).
    pub top_p: Option<f32>,
    /// Top-k sampling (vLLM, llama.cpp and Ollama read it; OpenAI ignores it); `None`: not sent.
    pub top_k: Option<u32>,
    /// Stop strings; empty: not sent.
    pub stop: Vec<String>,
    /// Penalty on tokens already generated (sent as `repetition_penalty`: vLLM and DashScope read
    /// it); `None`: not sent.
    pub repetition_penalty: Option<f32>,
}

impl Params {
    /// Adds the optional parameters that are set to a request body. Only those: the body of a run
    /// without them (its cache key) stays what it was before they existed.
    pub fn insert_optional(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        if let Some(top_p) = self.top_p {
            obj.insert("top_p".into(), json!(top_p));
        }
        if let Some(top_k) = self.top_k {
            obj.insert("top_k".into(), json!(top_k));
        }
        if !self.stop.is_empty() {
            obj.insert("stop".into(), json!(self.stop));
        }
        if let Some(penalty) = self.repetition_penalty {
            obj.insert("repetition_penalty".into(), json!(penalty));
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            max_tokens: 1024,
            seed: 0,
            response_format: ResponseFormat::JsonObject,
            top_p: None,
            top_k: None,
            stop: Vec::new(),
            repetition_penalty: None,
        }
    }
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    pub task: Task,
    pub messages: Vec<Message>,
    /// JSON schema of the expected reply (used with `ResponseFormat::JsonSchema`).
    pub schema: Option<serde_json::Value>,
    /// Name of the schema (`qa_pairs`, `summary`, `judgement`).
    pub schema_name: &'static str,
    /// 0 for the first try; a retry after unparseable output uses the next value, which changes the
    /// seed sent (`seed + attempt`) and so the cache key, while keeping reruns deterministic.
    pub attempt: u32,
}

/// Token counts reported by the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A backend's answer: the model's text, its token usage and why it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub usage: Usage,
    /// `stop` (EOS or a stop string), `length` (the token limit), ... as the backend says; absent in
    /// cache entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum CallError {
    /// Worth retrying (429, 5xx, timeouts, connection errors, a broken response envelope);
    /// `retry_after` is the server's `Retry-After`.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// This item cannot be done (retries exhausted, unparseable output); others may still work.
    Item(String),
    /// Nothing will work (bad key, unknown model or endpoint): the run stops.
    Fatal(String),
    /// The token or cost budget is spent; the item was not attempted.
    Budget,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Retryable { reason, .. }
            | CallError::Item(reason)
            | CallError::Fatal(reason) => f.write_str(reason),
            CallError::Budget => f.write_str("budget reached"),
        }
    }
}

/// A text-generation backend.
///
/// To add one (the `local` candle backend will): return its name and model, render the request into
/// the bytes that define it (`body`, used for the cache key; `None` for backends too cheap to cache),
/// and answer `send` with the model's text. Backends are shared by all worker threads.
pub trait Backend: Send + Sync {
    /// `openai`, `extractive`, `local`.
    fn name(&self) -> &'static str;
    /// The model identifier recorded in output (`gpt-4o-mini`, `extractive-v1`).
    fn model(&self) -> &str;
    /// The full request body; the cache key is derived from it. `None`: do not cache.
    fn body(&self, req: &Request) -> Option<Vec<u8>>;
    /// The parameters to record in output (`gen.params`).
    fn params(&self, req: &Request) -> serde_json::Value;
    /// Performs the request.
    fn send(&self, req: &Request, body: Option<&[u8]>) -> Result<Reply, CallError>;
}
