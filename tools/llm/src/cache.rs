//! The content-addressed response cache.
//!
//! Key: SHA-256 of `ftkit-llm-cache-v1`, the backend name, the model and the full request body (which
//! holds the messages, sampling parameters and seed), each followed by 0x1F. The API key is never part
//! of the body. An entry is `DIR/<first 2 hex>/<key>.json` holding `{"text":..,"usage":{..}}`, written to
//! a temporary file and renamed into place, so a killed run leaves only whole entries behind.

use crate::backend::Reply;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The default folder: `<user cache dir>/ftkit/llm` (`~/.cache/ftkit/llm` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("ftkit").join("llm"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(backend: &str, model: &str, body: &[u8]) -> String {
        let mut bytes = Vec::with_capacity(body.len() + 64);
        for part in [
            b"ftkit-llm-cache-v1".as_slice(),
            backend.as_bytes(),
            model.as_bytes(),
            body,
        ] {
            bytes.extend_from_slice(part);
            bytes.push(0x1f);
        }
        ftkit_core::id::sha256_hex(&bytes)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// A stored reply; an unreadable or corrupt entry counts as absent.
    pub fn get(&self, key: &str) -> Option<Reply> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, key: &str, reply: &Reply) -> Result<()> {
        let bytes = serde_json::to_vec(reply)?;
        let path = self.path(key);
        ftkit_core::io::write_atomic(&path, &bytes)
            .with_context(|| format!("cache {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Usage;

    #[test]
    fn round_trip_and_key_depends_on_everything() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = Cache::new(dir.path().join("c"));
        let k = Cache::key("openai", "m", b"{}");
        assert_eq!(k.len(), 64);
        assert_ne!(k, Cache::key("openai", "m2", b"{}"));
        assert_ne!(k, Cache::key("openai", "m", b"{ }"));
        assert_ne!(k, Cache::key("local", "m", b"{}"));
        assert!(cache.get(&k).is_none());
        let r = Reply {
            text: "t".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
            finish_reason: Some("stop".into()),
        };
        cache.put(&k, &r)?;
        assert_eq!(cache.get(&k), Some(r));
        std::fs::write(cache.path(&k), "{corrupt")?;
        assert!(cache.get(&k).is_none());
        Ok(())
    }
}
