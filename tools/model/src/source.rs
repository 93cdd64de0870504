//! Where a model comes from: a local directory or a Hugging Face hub repository.
//!
//! `--model DIR | FILE.gguf | ORG/NAME[@REV]`; a DIR holds safetensors + `config.json`, or
//! exactly one `.gguf` file and no `config.json`. Hub downloads go through hf-hub (ureq backend) into the usual
//! cache (`HF_HOME`/hub or `HF_HUB_CACHE`); `HF_ENDPOINT` changes the server, `HF_TOKEN` authorises,
//! `HF_HUB_OFFLINE=1` (or `offline: true`) resolves from the cache only, with no network.

use anyhow::{Context, Result, anyhow, bail};
use ftkit_core::secret::redact_urls;
use std::path::{Path, PathBuf};

/// A parsed `--model` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory holding `config.json`, `tokenizer.json` and safetensors, or one `.gguf`;
    /// or a `.gguf` file.
    Dir(PathBuf),
    /// A hub repository id and revision (`main` when not given).
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// `DIR` when the path exists or looks like a path (`./x`, `/x`, `~`, more than one `/`, a
    /// `.gguf` file name), otherwise `ORG/NAME[@REV]`.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            bail!("empty model name");
        }
        let p = Path::new(s);
        if p.exists()
            || s.starts_with('.')
            || s.starts_with('/')
            || s.starts_with('~')
            || s.matches('/').count() != 1
            || crate::gguf::is_gguf(p)
        {
            return Ok(Self::Dir(p.to_path_buf()));
        }
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => bail!("{s}: empty revision after '@'"),
            None => (s, "main"),
        };
        let (org, name) = repo.split_once('/').unwrap_or(("", ""));
        if org.is_empty() || name.is_empty() {
            bail!("{s}: expected a directory or ORG/NAME[@REV]");
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::Hub { repo, revision } if revision == "main" => write!(f, "{repo}"),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
        }
    }
}

pub use ftkit_core::hub::HubOptions;

/// The files of a resolved model. For a GGUF model every path (`config`, `tokenizer`,
/// `tokenizer_config`, `weights`) is the `.gguf` file, which the loaders recognise by its extension.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json`, when the model has one.
    pub tokenizer_config: Option<PathBuf>,
    /// `chat_template.jinja`, when the model ships its template as a separate file.
    pub chat_template: Option<PathBuf>,
    /// One or more `.safetensors` files (shards in index order).
    pub weights: Vec<PathBuf>,
    /// Hub commit sha, when resolved from the hub online.
    pub commit: Option<String>,
    /// The `.gguf` file, when the model is one.
    pub gguf: Option<PathBuf>,
}

impl ModelFiles {
    /// SHA-256 over every file the model is made of, by file name and content: the model's identity
    /// whatever folder or cache holds it (a resume checks it, the report records it). Files are
    /// hashed in parallel, each at about 1.6 GB/s (sha2 with the CPU's SHA extensions, measured here).
    pub fn digest(&self) -> Result<String> {
        use rayon::prelude::*;
        let files: Vec<&PathBuf> = [&self.config, &self.tokenizer]
            .into_iter()
            .chain(&self.tokenizer_config)
            .chain(&self.chat_template)
            .chain(&self.weights)
            .collect();
        // A GGUF model names its one file several times: hash it once.
        let mut files = files;
        files.sort();
        files.dedup();
        let lines = files
            .par_iter()
            .map(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                Ok(format!("{name}\t{}\n", ftkit_core::id::sha256_file(path)?))
            })
            .collect::<Result<Vec<String>>>()?;
        Ok(ftkit_core::id::sha256_hex(lines.concat().as_bytes()))
    }
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// Shard file names listed in a `model.safetensors.index.json` (sorted, deduplicated).
pub fn shards_from_index(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: missing weight_map", path.display()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains("..") || f.starts_with('/') {
            bail!("{}: invalid shard name {f:?}", path.display());
        }
    }
    Ok(files)
}

/// Resolve a source to local files, downloading from the hub when needed.
pub fn resolve(source: &ModelSource, hub: &HubOptions) -> Result<ModelFiles> {
    match source {
        ModelSource::Dir(dir) => resolve_dir(dir),
        ModelSource::Hub { repo, revision } => resolve_hub(repo, revision, hub),
    }
}

/// The files of a GGUF model: every role is played by the one file.
pub fn gguf_files(path: &Path) -> ModelFiles {
    ModelFiles {
        config: path.to_path_buf(),
        tokenizer: path.to_path_buf(),
        tokenizer_config: Some(path.to_path_buf()),
        chat_template: None,
        weights: vec![path.to_path_buf()],
        commit: None,
        gguf: Some(path.to_path_buf()),
    }
}

/// The one `.gguf` file of a directory without `config.json`; `None` when it has a config or
/// no GGUF, an error when it holds several (the user must pick one).
fn gguf_in_dir(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join("config.json").is_file() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| crate::gguf::is_gguf(p) && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!(
            "{}: holds {} .gguf files ({}); name one with --model {}/FILE.gguf",
            dir.display(),
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
            dir.display()
        ),
    }
}

fn resolve_dir(dir: &Path) -> Result<ModelFiles> {
    if dir.is_file() && crate::gguf::is_gguf(dir) {
        return Ok(gguf_files(dir));
    }
    if !dir.is_dir() {
        bail!("{}: no such model directory or .gguf file", dir.display());
    }
    if let Some(file) = gguf_in_dir(dir)? {
        return Ok(gguf_files(&file));
    }
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("{}: missing {name}", dir.display())
        }
    };
    let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let weights = if let Some(index) = opt(INDEX) {
        shards_from_index(&index)?
            .iter()
            .map(|f| need(f))
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![need(SINGLE)?]
    };
    Ok(ModelFiles {
        config: need("config.json")?,
        tokenizer: need("tokenizer.json")?,
        tokenizer_config: opt("tokenizer_config.json"),
        chat_template: opt("chat_template.jinja"),
        weights,
        commit: None,
        gguf: None,
    })
}

fn resolve_hub(repo: &str, revision: &str, hub: &HubOptions) -> Result<ModelFiles> {
    use hf_hub::{Repo, RepoType};
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let label = if revision == "main" {
        repo.to_string()
    } else {
        format!("{repo}@{revision}")
    };
    if hub.offline {
        let cached = hub.cache().repo(hub_repo);
        let need = |name: &str| {
            cached.get(name).with_context(|| {
                format!("{label}: {name} is not in the hub cache (offline mode; run once online)")
            })
        };
        let weights = if let Some(index) = cached.get(INDEX) {
            shards_from_index(&index)?
                .iter()
                .map(|f| need(f))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![need(SINGLE)?]
        };
        return Ok(ModelFiles {
            config: need("config.json")?,
            tokenizer: need("tokenizer.json")?,
            tokenizer_config: cached.get("tokenizer_config.json"),
            chat_template: cached.get("chat_template.jinja"),
            weights,
            commit: None,
            gguf: None,
        });
    }
    // Errors from hf-hub carry URLs (never the token), shown redacted: HF_ENDPOINT may hold secrets.
    let shown = |e: hf_hub::api::sync::ApiError| anyhow!(redact_urls(&e.to_string()));
    let api = hub
        .api()
        .map_err(shown)
        .with_context(|| format!("{label}: cannot start the hub client"))?;
    let api_repo = api.repo(hub_repo);
    let info = api_repo
        .info()
        .map_err(shown)
        .with_context(|| format!("{label}: cannot list the repository"))?;
    let has = |name: &str| info.siblings.iter().any(|s| s.rfilename == name);
    let get = |name: &str| {
        api_repo
            .get(name)
            .map_err(shown)
            .with_context(|| format!("{label}: cannot download {name}"))
    };
    let weights = if has(INDEX) {
        let index = get(INDEX)?;
        shards_from_index(&index)?
            .iter()
            .map(|f| get(f))
            .collect::<Result<Vec<_>>>()?
    } else if has(SINGLE) {
        vec![get(SINGLE)?]
    } else {
        bail!("{label}: no {SINGLE} or {INDEX} in the repository (only safetensors are supported)")
    };
    let opt = |name: &str| -> Result<Option<PathBuf>> {
        if has(name) {
            get(name).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(ModelFiles {
        config: get("config.json")?,
        tokenizer: get("tokenizer.json")?,
        tokenizer_config: opt("tokenizer_config.json")?,
        chat_template: opt("chat_template.jinja")?,
        weights,
        commit: Some(info.sha),
        gguf: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() -> Result<()> {
        assert_eq!(
            ModelSource::parse("Qwen/Qwen2.5-0.5B")?,
            ModelSource::Hub {
                repo: "Qwen/Qwen2.5-0.5B".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelSource::parse("Qwen/Qwen2.5-0.5B@abc123")?,
            ModelSource::Hub {
                repo: "Qwen/Qwen2.5-0.5B".into(),
                revision: "abc123".into()
            }
        );
        assert_eq!(
            ModelSource::parse("./models/x")?,
            ModelSource::Dir("./models/x".into())
        );
        assert_eq!(
            ModelSource::parse("/abs/a/b")?,
            ModelSource::Dir("/abs/a/b".into())
        );
        assert_eq!(
            ModelSource::parse("mydir")?,
            ModelSource::Dir("mydir".into())
        );
        // A missing models/x.gguf is a missing file, not a hub repository.
        assert_eq!(
            ModelSource::parse("models/x.gguf")?,
            ModelSource::Dir("models/x.gguf".into())
        );
        assert!(ModelSource::parse("a/b@").is_err());
        assert!(ModelSource::parse("").is_err());
        assert_eq!(ModelSource::parse("a/b@v1")?.to_string(), "a/b@v1");
        Ok(())
    }

    #[test]
    fn digest_follows_content_not_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let spec = crate::fixtures::TinySpec::qwen2(3);
        crate::fixtures::write_tiny_model(&a, &spec)?;
        crate::fixtures::write_tiny_model(&b, &spec)?;
        let digest = |d: &Path| resolve_dir(d)?.digest();
        assert_eq!(digest(&a)?, digest(&b)?);
        let weights = b.join(SINGLE);
        let mut bytes = std::fs::read(&weights)?;
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&weights, bytes)?;
        assert_ne!(digest(&a)?, digest(&b)?);
        Ok(())
    }
}
