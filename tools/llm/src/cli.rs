//! Options shared by the tools that call a model (flatten [`LlmArgs`] into a tool's Args), the one
//! backend selection of every tool ([`LlmArgs::backend`]), and the code that turns them into a [`Client`].

use crate::backend::{Params, ResponseFormat};
use crate::cache::Cache;
use crate::client::{Budget, Client, RetryPolicy};
use crate::limits::{Limits, TokenBucket};
use crate::openai::{OpenAi, OpenAiConfig, Secret};
use anyhow::Result;
use clap::{Args, ValueEnum};
use ftkit_core::secret::redact_url;
use ftkit_core::usage;
use ftkit_model::device::{DTypeSpec, DeviceSpec, open_device, resolve_dtype};
use ftkit_model::source::HubOptions;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct LlmArgs {
    // Help as an attribute: rustdoc wants the URL as a link.
    #[arg(
        long,
        value_name = "URL",
        help_heading = "Model",
        help = "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, then $BASE_URL, then https://api.openai.com/v1)"
    )]
    pub base_url: Option<String>,

    /// Model name sent to the endpoint (default: $MODEL); for the local backend a model FILE.gguf, a
    /// folder (safetensors) or a Hugging Face id ORG/NAME.
    #[arg(long, value_name = "NAME", help_heading = "Model")]
    pub model: Option<String>,

    /// Where the local model runs: auto (CUDA when built with it and present, else CPU), cpu, cuda or
    /// cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "DEVICE",
        help_heading = "Model"
    )]
    pub device: String,

    /// Precision of the local model's weights: auto (bf16 on CUDA, f32 on CPU), f32, bf16, f16.
    #[arg(
        long,
        default_value = "auto",
        value_name = "DTYPE",
        help_heading = "Model"
    )]
    pub dtype: String,

    /// A PEFT LoRA adapter folder (as ft-train-lora writes) applied to the local model.
    #[arg(long, value_name = "DIR", help_heading = "Model")]
    pub adapter: Option<PathBuf>,

    /// Environment variable holding the API key (never printed, never cached).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "OPENAI_API_KEY",
        help_heading = "Model"
    )]
    pub api_key_env: String,

    /// Sampling temperature.
    #[arg(long, value_name = "T", default_value_t = 0.2, help_heading = "Model")]
    pub temperature: f32,

    /// Most tokens per reply.
    #[arg(
        long,
        visible_alias = "max-new-tokens",
        value_name = "N",
        default_value_t = 1024,
        help_heading = "Model"
    )]
    pub max_tokens: u32,

    /// Nucleus sampling: sample from the most likely tokens whose probabilities add up to P (0 < P <= 1;
    /// default: the backend's).
    #[arg(long, value_name = "P", help_heading = "Model")]
    pub top_p: Option<f32>,

    /// Sample from the K most likely tokens (sent as `top_k`: vLLM, llama.cpp and Ollama read it,
    /// OpenAI ignores it).
    #[arg(long, value_name = "K", help_heading = "Model")]
    pub top_k: Option<u32>,

    /// Penalise tokens the reply already holds: their logits are divided by X (> 1 discourages
    /// loops, which small local models fall into; 1 = off). Sent as `repetition_penalty` (vLLM,
    /// DashScope); the local backend counts the reply's tokens only, not the prompt's.
    #[arg(
        long,
        visible_alias = "repeat-penalty",
        value_name = "X",
        help_heading = "Model"
    )]
    pub repetition_penalty: Option<f32>,

    /// Stop the reply before this string (repeatable; OpenAI takes at most 4).
    #[arg(long, value_name = "TEXT", help_heading = "Model")]
    pub stop: Vec<String>,

    /// Sampling seed sent with every request (a re-ask after unparseable output sends seed+1, ...).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Model")]
    pub seed: u64,

    /// Structured output requested from the server.
    #[arg(long, value_enum, default_value_t = ResponseFormat::JsonObject, value_name = "KIND", help_heading = "Model")]
    pub response_format: ResponseFormat,

    /// Requests in flight at once (the local backend decodes up to this many together).
    #[arg(long, value_name = "N", default_value_t = 16, help_heading = "Limits")]
    pub concurrency: usize,

    /// Most requests per minute (at least 1).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub rpm: Option<f64>,

    /// Most tokens (prompt + reply) per minute (at least 1).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub tpm: Option<f64>,

    /// Seconds before a request is abandoned (and retried); at most 604800 (a week).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120.0,
        help_heading = "Limits"
    )]
    pub timeout: f64,

    /// Retries of a request after 429, 5xx, timeouts and connection errors.
    #[arg(long, value_name = "N", default_value_t = 5, help_heading = "Limits")]
    pub max_retries: u32,

    /// First backoff in milliseconds; doubles each retry (with jitter, at least the server's Retry-After).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 500,
        help_heading = "Limits"
    )]
    pub backoff_ms: u64,

    /// Re-asks (with the next seed) when the model's output cannot be parsed.
    #[arg(long, value_name = "N", default_value_t = 2, help_heading = "Limits")]
    pub parse_retries: u32,

    // Help as an attribute: rustdoc would read `<user cache dir>` as an HTML tag.
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Cache and budget",
        help = "Response cache folder (default: <user cache dir>/ftkit/llm)"
    )]
    pub cache: Option<PathBuf>,

    /// Neither read nor write the response cache.
    #[arg(long, conflicts_with = "cache", help_heading = "Cache and budget")]
    pub no_cache: bool,

    /// Price in USD per million prompt tokens (for the cost line and --budget-usd).
    #[arg(long, value_name = "USD", help_heading = "Cache and budget")]
    pub price_in: Option<f64>,

    /// Price in USD per million completion tokens (default: --price-in).
    #[arg(long, value_name = "USD", help_heading = "Cache and budget")]
    pub price_out: Option<f64>,

    /// Stop starting new items once this many fresh tokens (prompt + reply) were used.
    #[arg(long, value_name = "N", help_heading = "Cache and budget")]
    pub max_tokens_total: Option<u64>,

    /// Stop starting new items once this much was spent (needs --price-in).
    #[arg(long, value_name = "USD", help_heading = "Cache and budget")]
    pub budget_usd: Option<f64>,
}

/// Which backend answers. Every tool chooses through [`LlmArgs::backend`], the single place where a
/// kind becomes a [`crate::Backend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// `local` when --adapter is given or --model names a file or folder that exists; `openai` when an
    /// endpoint or model is named (--base-url, --model, $OPENAI_BASE_URL, $BASE_URL, $MODEL);
    /// otherwise `extractive` where the tool has it.
    Auto,
    /// Offline and deterministic: questions from the chunk's own sentences, no model.
    Extractive,
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
    /// A model on this machine (--model FILE.gguf|DIR|ORG/NAME, ± --adapter), JSON replies
    /// constrained to their shape.
    Local,
}

/// The longest `--timeout`, in seconds (a week).
const MAX_TIMEOUT_SECS: f64 = 604_800.0;

/// Refuses a base URL that is not `http(s)://HOST...` (shown redacted: it may hold a password).
fn check_base_url(url: &str) -> Result<()> {
    let shown = redact_url(url);
    let parsed = url.parse::<ureq::http::Uri>();
    let ok = parsed.as_ref().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    });
    if !ok {
        usage!("the base URL must look like http(s)://HOST[:PORT]/PATH, got {shown:?}");
    }
    Ok(())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl LlmArgs {
    /// True when an endpoint or model was named (flags, or $OPENAI_BASE_URL / $BASE_URL / $MODEL).
    pub fn names_an_endpoint(&self) -> bool {
        self.base_url.is_some()
            || self.model.is_some()
            || ["OPENAI_BASE_URL", "BASE_URL", "MODEL"]
                .iter()
                .any(|v| env_nonempty(v).is_some())
    }

    /// What `kind` means with these options (`Auto` resolved; never `Auto`).
    pub fn resolve(&self, kind: BackendKind) -> BackendKind {
        match kind {
            BackendKind::Auto
                if self.adapter.is_some()
                    || self
                        .model
                        .as_deref()
                        .is_some_and(|m| std::path::Path::new(m).exists()) =>
            {
                BackendKind::Local
            }
            BackendKind::Auto if self.names_an_endpoint() => BackendKind::Openai,
            BackendKind::Auto => BackendKind::Extractive,
            k => k,
        }
    }

    /// The backend `kind` names (resolved with [`LlmArgs::resolve`]): the one place where the `local`
    /// backend plugs in.
    pub fn backend(&self, kind: BackendKind) -> Result<Box<dyn crate::Backend>> {
        Ok(match self.resolve(kind) {
            BackendKind::Openai => {
                if self.adapter.is_some() {
                    usage!(
                        "--adapter needs the local backend (an endpoint serves its own adapters)"
                    );
                }
                Box::new(self.openai()?)
            }
            BackendKind::Local => Box::new(self.local()?),
            BackendKind::Extractive | BackendKind::Auto => Box::new(crate::extractive::Extractive),
        })
    }

    /// Checks values that clap cannot.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            usage!("--concurrency must be at least 1");
        }
        // A week: Duration::from_secs_f64 panics past u64 seconds, and ureq adds it to Instant::now.
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= MAX_TIMEOUT_SECS) {
            usage!("--timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}");
        }
        // Under one a minute a bucket's wait for one request overflows a Duration (and means nothing).
        for (name, v) in [("--rpm", self.rpm), ("--tpm", self.tpm)] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 1.0)) {
                usage!("{name} must be at least 1");
            }
        }
        for (name, v) in [
            ("--price-in", self.price_in),
            ("--price-out", self.price_out),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                usage!("{name} must be a price of 0 or more (USD per million tokens)");
            }
        }
        if self.budget_usd.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            usage!("--budget-usd must be above 0");
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            usage!("--top-p must be above 0 and at most 1");
        }
        if self.top_k == Some(0) {
            usage!("--top-k must be at least 1");
        }
        if self
            .repetition_penalty
            .is_some_and(|x| !(x.is_finite() && x > 0.0))
        {
            usage!("--repetition-penalty must be above 0");
        }
        if self.stop.iter().any(String::is_empty) {
            usage!("--stop wants a non-empty string");
        }
        if self.max_tokens == 0 {
            usage!("--max-tokens must be at least 1");
        }
        if self.max_tokens_total == Some(0) {
            usage!("--max-tokens-total must be at least 1");
        }
        if let Some(url) = &self.base_url {
            check_base_url(url)?;
        }
        if self.budget_usd.is_some() && self.price_in.is_none() {
            usage!("--budget-usd needs --price-in (and --price-out) to count the cost");
        }
        Ok(())
    }

    /// The `openai` backend from these options and the environment.
    pub fn openai(&self) -> Result<OpenAi> {
        let base_url = self
            .base_url
            .clone()
            .or_else(|| env_nonempty("OPENAI_BASE_URL"))
            .or_else(|| env_nonempty("BASE_URL"))
            .unwrap_or_else(|| "https://api.openai.com/v1".to_string());
        check_base_url(&base_url)?;
        let Some(model) = self.model.clone().or_else(|| env_nonempty("MODEL")) else {
            usage!("the openai backend needs --model (or $MODEL)");
        };
        let key = env_nonempty(&self.api_key_env).map(Secret::new);
        if key.is_none() && base_url.contains("api.openai.com") {
            usage!(
                "no API key: set ${} (or name another variable with --api-key-env)",
                self.api_key_env
            );
        }
        Ok(OpenAi::new(OpenAiConfig {
            base_url,
            model,
            key,
            key_env: self.api_key_env.clone(),
            params: self.params(),
            timeout: Duration::from_secs_f64(self.timeout),
            connections: self.concurrency,
        }))
    }

    /// The `local` backend from these options: loads the model (and adapter) now.
    pub fn local(&self) -> Result<crate::local::Local> {
        let Some(model) = self.model.clone() else {
            usage!(
                "the local backend needs --model FILE.gguf|DIR|ORG/NAME (scripts/fetch-smollm2 fetches \
                 SmolLM2-135M-Instruct and prints its path)"
            );
        };
        let device_spec: DeviceSpec = self.device.parse().map_err(ftkit_core::Usage::of)?;
        let dtype_spec: DTypeSpec = self.dtype.parse().map_err(ftkit_core::Usage::of)?;
        let device = open_device(device_spec, &mut |m: &str| ftkit_core::cli::warn(m))?;
        let dtype = resolve_dtype(dtype_spec, &device);
        crate::local::Local::new(crate::local::LocalConfig {
            model,
            adapter: self.adapter.clone(),
            params: self.params(),
            device,
            dtype,
            max_batch: self.concurrency,
            hub: HubOptions::from_env(false),
        })
    }

    /// The sampling parameters of these options.
    fn params(&self) -> Params {
        Params {
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            seed: self.seed,
            response_format: self.response_format,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop.clone(),
            repetition_penalty: self.repetition_penalty,
        }
    }

    /// Wraps a backend with the cache, limits, retries and budget these options ask for.
    pub fn client(&self, backend: Box<dyn crate::Backend>) -> Result<Client> {
        let cache = if self.no_cache {
            None
        } else {
            match self.cache.clone().or_else(Cache::default_dir) {
                Some(dir) => Some(Cache::new(dir)),
                None => {
                    ftkit_core::cli::warn(
                        "no user cache folder found: running without a cache (use --cache DIR)",
                    );
                    None
                }
            }
        };
        Ok(Client::new(backend)
            .with_cache(cache)
            .with_limits(Limits {
                rpm: self.rpm.map(TokenBucket::per_minute),
                tpm: self.tpm.map(TokenBucket::per_minute),
            })
            .with_retry(RetryPolicy {
                max_retries: self.max_retries,
                base: Duration::from_millis(self.backoff_ms),
                max_backoff: Duration::from_secs(60),
            })
            .with_budget(Budget {
                max_tokens: self.max_tokens_total,
                max_usd: self.budget_usd,
                price_in: self.price_in,
                price_out: self.price_out,
            })
            .with_parse_retries(self.parse_retries))
    }
}
