//! Hugging Face hub settings read from the environment, shared by the tools that reach the hub
//! (ftkit-model's `--model ORG/NAME`, ft-fetch's hf sources). The hf-hub crate reads only `HF_HOME`
//! and `HF_ENDPOINT` itself; `HF_TOKEN`, `HF_HUB_OFFLINE` and `HF_HUB_CACHE` are read here.

use crate::secret::{Secret, redact_url};
use std::path::PathBuf;

/// Hub settings. Build with [`HubOptions::from_env`] in tools; tests set fields directly.
#[derive(Clone, Default)]
pub struct HubOptions {
    /// Server base URL (default `https://huggingface.co`, or `HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Cache directory (the `hub` folder). Default: `HF_HUB_CACHE`, else `HF_HOME/hub`,
    /// else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Bearer token (`HF_TOKEN`). Never printed.
    pub token: Option<Secret>,
    /// Resolve from the cache only.
    pub offline: bool,
}

// By hand, not derived: the endpoint may hold user info or a token in its query.
impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token)
            .field("offline", &self.offline)
            .finish()
    }
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl HubOptions {
    /// Read `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`;
    /// `offline` (a `--offline` flag) forces offline mode.
    pub fn from_env(offline: bool) -> Self {
        let env_offline = env_nonempty("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let cache_dir = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env_nonempty("HF_HOME").map(|h| PathBuf::from(h).join("hub")));
        Self {
            endpoint: env_nonempty("HF_ENDPOINT"),
            cache_dir,
            token: env_nonempty("HF_TOKEN").map(Secret::new),
            offline: offline || env_offline,
        }
    }
}

#[cfg(feature = "hub")]
impl HubOptions {
    /// The hf-hub client for these settings: no progress bars, the token, the endpoint and the cache
    /// folder. hf-hub's errors carry URLs (never the token): show them through
    /// [`crate::secret::redact_urls`], HF_ENDPOINT may hold secrets.
    pub fn api(&self) -> Result<hf_hub::api::sync::Api, hf_hub::api::sync::ApiError> {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(false)
            .with_token(self.token.as_ref().map(|t| t.expose().to_string()));
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.trim_end_matches('/').to_string());
        }
        if let Some(d) = &self.cache_dir {
            builder = builder.with_cache_dir(d.clone());
        }
        builder.build()
    }

    /// The hub cache (its folder, or hf-hub's default from the environment).
    pub fn cache(&self) -> hf_hub::Cache {
        match &self.cache_dir {
            Some(d) => hf_hub::Cache::new(d.clone()),
            None => hf_hub::Cache::from_env(),
        }
    }
}
