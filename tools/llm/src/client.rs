//! A backend wrapped with everything a run needs: cache, rate limits, retries with backoff, budgets,
//! lenient parsing with bounded re-asks, and counters for the closing summary.

use crate::backend::{Backend, CallError, Reply, Request, Usage};
use crate::cache::Cache;
use crate::limits::Limits;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Retry policy for retryable failures (429, 5xx, timeouts, connection errors, broken envelopes).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// First backoff; doubles each retry, capped at `max_backoff`.
    pub base: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry `attempt` (0-based): "equal jitter", half fixed and half random, where the
    /// random part is derived from the request's key so runs are reproducible; never shorter than the
    /// server's Retry-After.
    pub fn backoff(&self, attempt: u32, key: &str, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        let seed = ftkit_core::id::sha256_hex(format!("{key}/{attempt}").as_bytes());
        let frac = u64::from_str_radix(&seed[..8], 16).unwrap_or(0) as f64 / f64::from(u32::MAX);
        let jittered = exp / 2 + exp.mul_f64(0.5 * frac);
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// Token and cost limits for the run.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    /// Fresh (not cached) prompt + completion tokens.
    pub max_tokens: Option<u64>,
    pub max_usd: Option<f64>,
    /// Prices in USD per million tokens.
    pub price_in: Option<f64>,
    pub price_out: Option<f64>,
}

/// Counters of one run.
#[derive(Default, Debug)]
pub struct Stats {
    /// HTTP requests sent (tries, retries included).
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Replies that could not be parsed (each led to a re-ask or a rejected item).
    pub parse_failures: AtomicU64,
    pub fresh_prompt_tokens: AtomicU64,
    pub fresh_completion_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub cached_completion_tokens: AtomicU64,
}

/// A request's outcome as the tools see it.
pub struct Answer<T> {
    pub value: T,
    pub reply: Reply,
    pub request: Request,
}

/// An item that failed for good: why, and the last raw model text if there was one.
#[derive(Debug)]
pub struct Failure {
    pub error: CallError,
    pub raw: Option<String>,
}

pub struct Client {
    backend: Box<dyn Backend>,
    cache: Option<Cache>,
    limits: Limits,
    retry: RetryPolicy,
    budget: Budget,
    parse_retries: u32,
    pub stats: Stats,
    exhausted: AtomicBool,
}

impl Client {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            backend,
            cache: None,
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            budget: Budget::default(),
            parse_retries: 2,
            stats: Stats::default(),
            exhausted: AtomicBool::new(false),
        }
    }
    pub fn with_cache(mut self, cache: Option<Cache>) -> Self {
        self.cache = cache;
        self
    }
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }
    pub fn with_parse_retries(mut self, n: u32) -> Self {
        self.parse_retries = n;
        self
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// True once the token or cost budget is spent.
    pub fn budget_exhausted(&self) -> bool {
        self.exhausted.load(Relaxed)
    }

    /// Fresh usage cost in USD, when prices are known.
    pub fn cost_usd(&self) -> Option<f64> {
        let pin = self.budget.price_in?;
        let pout = self.budget.price_out.unwrap_or(pin);
        let i = self.stats.fresh_prompt_tokens.load(Relaxed) as f64;
        let o = self.stats.fresh_completion_tokens.load(Relaxed) as f64;
        Some((i * pin + o * pout) / 1e6)
    }

    fn charge(&self, usage: Usage) {
        self.stats
            .fresh_prompt_tokens
            .fetch_add(usage.prompt_tokens, Relaxed);
        self.stats
            .fresh_completion_tokens
            .fetch_add(usage.completion_tokens, Relaxed);
        let total = self.stats.fresh_prompt_tokens.load(Relaxed)
            + self.stats.fresh_completion_tokens.load(Relaxed);
        let over_tokens = self.budget.max_tokens.is_some_and(|m| total >= m);
        let over_usd =
            matches!((self.budget.max_usd, self.cost_usd()), (Some(m), Some(c)) if c >= m);
        if over_tokens || over_usd {
            self.exhausted.store(true, Relaxed);
        }
    }

    /// One request: from the cache, or sent with rate limiting and retries (and then cached).
    pub fn call(&self, req: &Request) -> Result<Reply, CallError> {
        let body = self.backend.body(req);
        let key = body
            .as_ref()
            .map(|b| Cache::key(self.backend.name(), self.backend.model(), b));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(reply) = cache.get(key)
        {
            self.stats.cache_hits.fetch_add(1, Relaxed);
            self.stats
                .cached_prompt_tokens
                .fetch_add(reply.usage.prompt_tokens, Relaxed);
            self.stats
                .cached_completion_tokens
                .fetch_add(reply.usage.completion_tokens, Relaxed);
            return Ok(reply);
        }
        if body.is_none() {
            // Uncached backends (extractive) cost nothing: no limits, no retries.
            return self.backend.send(req, None);
        }
        let key = key.unwrap_or_default();
        let estimate = estimate_tokens(req);
        let mut attempt = 0;
        loop {
            if self.budget_exhausted() {
                return Err(CallError::Budget);
            }
            self.limits.acquire(estimate);
            self.stats.requests.fetch_add(1, Relaxed);
            match self.backend.send(req, body.as_deref()) {
                Ok(reply) => {
                    self.limits.settle(
                        estimate,
                        reply.usage.prompt_tokens + reply.usage.completion_tokens,
                    );
                    self.charge(reply.usage);
                    if let Some(cache) = &self.cache
                        && let Err(e) = cache.put(&key, &reply)
                    {
                        return Err(CallError::Fatal(format!("{e:#}")));
                    }
                    return Ok(reply);
                }
                Err(CallError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    if attempt >= self.retry.max_retries {
                        return Err(CallError::Item(format!(
                            "gave up after {} tries: {reason}",
                            attempt + 1
                        )));
                    }
                    self.stats.retries.fetch_add(1, Relaxed);
                    std::thread::sleep(self.retry.backoff(attempt, &key, retry_after));
                    attempt += 1;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Builds the request for each try with `build(attempt)`, calls it and parses the reply; output
    /// that does not parse is asked again (a new seed) up to the parse-retry limit.
    pub fn generate<T>(
        &self,
        build: impl Fn(u32) -> Request,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Answer<T>, Failure> {
        let mut last = None;
        for attempt in 0..=self.parse_retries {
            let request = build(attempt);
            let reply = self
                .call(&request)
                .map_err(|error| Failure { error, raw: None })?;
            match parse(&reply.text) {
                Ok(value) => {
                    return Ok(Answer {
                        value,
                        reply,
                        request,
                    });
                }
                Err(reason) => {
                    self.stats.parse_failures.fetch_add(1, Relaxed);
                    last = Some((reason, reply.text));
                }
            }
        }
        let (reason, raw) = last.unwrap_or_default();
        Err(Failure {
            error: CallError::Item(format!(
                "unusable model output after {} tries: {reason}",
                self.parse_retries + 1
            )),
            raw: Some(raw),
        })
    }

    /// The closing summary line.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut line = format!(
            "{} {} requests ({} retries, {} cache hits, {} unparseable replies); tokens in {} out {}",
            self.backend.name(),
            s.requests.load(Relaxed),
            s.retries.load(Relaxed),
            s.cache_hits.load(Relaxed),
            s.parse_failures.load(Relaxed),
            s.fresh_prompt_tokens.load(Relaxed),
            s.fresh_completion_tokens.load(Relaxed),
        );
        let (ci, co) = (
            s.cached_prompt_tokens.load(Relaxed),
            s.cached_completion_tokens.load(Relaxed),
        );
        if ci + co > 0 {
            line.push_str(&format!(" (replayed from cache: in {ci} out {co})"));
        }
        if let Some(c) = self.cost_usd() {
            line.push_str(&format!("; cost ${c:.4}"));
        }
        line
    }
}

/// A pessimistic token estimate for rate limiting: prompt characters / 4 plus the reply allowance
/// (settled against the real usage afterwards).
fn estimate_tokens(req: &Request) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.content.chars().count()).sum();
    (chars / 4) as u64 + 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_reproducible_and_honours_retry_after() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let a = p.backoff(0, "k", None);
        assert_eq!(a, p.backoff(0, "k", None));
        assert!(a >= Duration::from_millis(50) && a <= Duration::from_millis(100));
        let c = p.backoff(3, "k", None);
        assert!(c >= Duration::from_millis(400) && c <= Duration::from_millis(800));
        assert!(p.backoff(10, "k", None) <= Duration::from_secs(1));
        assert_eq!(
            p.backoff(0, "k", Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }
}
