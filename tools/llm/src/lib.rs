//! Text generation for ftkit: one [`Backend`] trait and what every model-calling tool needs around it.
//!
//! - [`backend`]: the trait, [`Request`] (a structured [`Task`] plus rendered chat messages), [`Reply`].
//! - [`openai`]: any OpenAI-compatible chat-completions endpoint, over ureq.
//! - [`extractive`]: offline, deterministic QA and summaries from the text's own sentences (its module
//!   docs say exactly how).
//! - [`local`]: a model on this machine through ftkit-model (GGUF, safetensors, ± a PEFT adapter),
//!   batched, JSON replies constrained to their shape; chosen at [`LlmArgs::backend`], which every
//!   tool's backend choice goes through.
//! - [`client`]: cache, rate limits, retries with backoff and jitter, budgets, lenient parsing, counters.
//! - [`driver`]: the ordered worker pool the tools stream their records through.
//! - [`cache`], [`limits`], [`parse`], [`prompts`], [`lang`], [`cli`] (shared clap options).
//! - `testing` (feature `test-server`): a loopback chat-completions server with injectable faults.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod client;
pub mod driver;
pub mod extractive;
mod judge_scores;
pub mod lang;
pub mod limits;
pub mod local;
pub mod openai;
pub mod parse;
pub mod prompts;
#[cfg(feature = "test-server")]
pub mod testing;

pub use backend::{
    Backend, CallError, Message, Params, Reply, Request, ResponseFormat, Task, Usage,
};
pub use cli::{BackendKind, LlmArgs};
pub use client::{Client, Failure};
pub use driver::{Driver, End, Outcome, RunSummary};
