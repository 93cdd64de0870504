//! One catalog entry → a checked [`Dataset`], accepting the spellings people use.

use crate::catalog::{Located, kind};
use crate::checks::{derive_slug, file_name_problem, is_secret_name, slug_problem, url_problem};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// A dataset as the manifest describes it.
#[derive(Debug)]
pub struct Dataset {
    /// `path:line` of the entry.
    pub loc: String,
    /// 1-based position in the catalog.
    pub index: usize,
    pub slug: String,
    pub name: String,
    pub track: String,
    pub source: Source,
    pub preprocessing: Vec<String>,
    pub license: Option<String>,
    pub gated: bool,
    pub modality: Vec<String>,
    pub expected: Option<Value>,
    pub caps: Option<Map<String, Value>>,
    /// Fields this tool does not know, as they were.
    pub extra: Map<String, Value>,
}

pub use ftkit_core::source::{HttpFile, Source};

/// The track of an entry that names none.
pub const NO_TRACK: &str = "untracked";

/// An entry's label in messages: `path:line: entry N ("name")`.
pub fn label(loc: &str, index: usize, name: Option<&str>) -> String {
    match name {
        // A name holding a URL with a credential is refused, and not repeated in the message.
        Some(name) if crate::checks::text_has_url_secret(name).is_none() => {
            format!("{loc}: entry {index} ({name:?})")
        }
        _ => format!("{loc}: entry {index}"),
    }
}

/// Checks entry number `index` (1-based).
pub fn parse(entry: Located, index: usize, allow_http: bool) -> Result<Dataset> {
    let name = entry.fields.get("name").and_then(Value::as_str);
    let label = label(&entry.loc, index, name);
    parse_fields(entry.loc, entry.fields, index, allow_http).context(label)
}

fn parse_fields(
    loc: String,
    map: Map<String, Value>,
    index: usize,
    allow_http: bool,
) -> Result<Dataset> {
    refuse_secrets(&map, "")?;
    let mut f = Fields(map);
    let name = f.string(&["name"])?.unwrap_or_default();
    if name.trim().is_empty() {
        bail!("no \"name\"");
    }
    let slug = match f.string(&["slug"])? {
        Some(slug) => {
            if let Some(why) = slug_problem(&slug) {
                bail!("slug {slug:?} {why}: a slug must stay one folder inside the root");
            }
            slug
        }
        None => {
            let slug = derive_slug(&name);
            if let Some(why) = slug_problem(&slug) {
                bail!("the slug derived from the name ({slug:?}) {why}: give a \"slug\"");
            }
            slug
        }
    };
    let source = source(&mut f, allow_http)?;
    let track = f.string(&["track"])?.unwrap_or_else(|| NO_TRACK.into());
    let license = f.string(&["license"])?;
    let gated = match f.take(&["gated"])? {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => bail!("\"gated\" must be true or false, not {}", kind(&other)),
    };
    let modality = f.strings(&["modality", "modalities"])?;
    let expected = f.take(&["expected", "expected_fields"])?;
    let preprocessing = f.strings(&[
        "preprocessing",
        "preprocess",
        "preprocessing_hints",
        "hints",
    ])?;
    let caps = match f.take(&["caps", "limits"])? {
        None => None,
        Some(Value::Object(caps)) => {
            for (key, value) in &caps {
                if value.as_u64().is_none() {
                    bail!("cap {key:?} must be a whole number of at least 0");
                }
            }
            Some(caps)
        }
        Some(other) => bail!("\"caps\" must be an object, not {}", kind(&other)),
    };
    Ok(Dataset {
        loc,
        index,
        slug,
        name,
        track,
        source,
        preprocessing,
        license,
        gated,
        modality,
        expected,
        caps,
        extra: f.0,
    })
}

/// A field named like a credential (`hf_token`, `password`, ...) or a string holding a URL with a
/// credential is refused, at any depth, without showing the value: manifests are meant to be
/// committed and shared. (Source URLs get their own, more precise message later.)
fn refuse_secrets(map: &Map<String, Value>, prefix: &str) -> Result<()> {
    for (key, value) in map {
        let path = format!("{prefix}{key}");
        if is_secret_name(key) {
            bail!(
                "field {path:?} looks like a credential: catalogs must not hold credentials (log in with the pull tool instead)"
            );
        }
        refuse_secret_values(value, &path)?;
    }
    Ok(())
}

fn refuse_secret_values(value: &Value, path: &str) -> Result<()> {
    match value {
        Value::Object(inner) => refuse_secrets(inner, &format!("{path}.")),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| refuse_secret_values(item, &format!("{path}.{i}"))),
        Value::String(text) => match crate::checks::text_has_url_secret(text) {
            Some(why) => bail!("field {path:?} holds a URL that {why}"),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn source(f: &mut Fields, allow_http: bool) -> Result<Source> {
    match f.take(&["source"])? {
        Some(Value::Object(obj)) => {
            let mut inner = Fields(obj);
            let kind = inner.string(&["kind", "type"])?;
            let source = source_of(kind, &mut inner, allow_http)?;
            if let Some(key) = inner.0.keys().next() {
                // A misspelt "revison" would silently pull another revision.
                bail!("unknown source field {key:?}");
            }
            Ok(source)
        }
        Some(Value::String(kind)) => source_of(Some(kind), f, allow_http),
        Some(other) => bail!(
            "\"source\" must be an object or a kind name, not {}",
            kind(&other)
        ),
        None => source_of(None, f, allow_http),
    }
}

/// The source of kind `kind` (inferred from the fields present when `None`), its fields taken from `f`.
fn source_of(kind: Option<String>, f: &mut Fields, allow_http: bool) -> Result<Source> {
    let kind = match kind {
        Some(k) => match k.to_ascii_lowercase().as_str() {
            "hf" | "huggingface" | "hugging_face" | "hub" => "hf",
            "git" | "github" => "git",
            "http" | "https" | "url" | "direct" => "http",
            "manual" => "manual",
            _ => bail!("unknown source kind {k:?} (expected hf, git, http or manual)"),
        },
        None => infer_kind(f)?,
    };
    let check_url = |what: &str, url: &str| -> Result<()> {
        match url_problem(url, allow_http) {
            Some(why) => bail!("{what} {why}"),
            None => Ok(()),
        }
    };
    Ok(match kind {
        "hf" => {
            let repo_id = f
                .string(&["repo_id", "hf_id", "repo", "hf", "hf_repo"])?
                .context("hf source without a repo id (repo_id, hf_id or repo)")?;
            if !is_repo_id(&repo_id) {
                bail!("hf repo id {repo_id:?} is not NAME or OWNER/NAME of [A-Za-z0-9._-]");
            }
            let repo_type = match f.string(&["repo_type"])?.as_deref() {
                None | Some("dataset" | "datasets") => "dataset",
                Some("model" | "models") => "model",
                Some(other) => bail!("repo_type {other:?} is not dataset or model"),
            };
            let revision = f
                .string(&["revision", "rev", "ref", "branch"])?
                .unwrap_or_else(|| "main".into());
            check_ref("revision", &revision)?;
            Source::Hf {
                repo_id,
                repo_type: repo_type.into(),
                revision,
                allow_patterns: f.strings(&["allow_patterns", "allow", "include"])?,
                ignore_patterns: f.strings(&["ignore_patterns", "ignore", "exclude"])?,
            }
        }
        "git" => {
            let url = f
                .string(&["url", "git_url", "repo", "git"])?
                .context("git source without a url")?;
            check_url("git url", &url)?;
            let commit = f.string(&["commit", "sha"])?;
            if let Some(c) = &commit
                && (!(7..=64).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                bail!("commit {c:?} is not 7 to 64 hex digits");
            }
            let tag = f.string(&["tag"])?;
            if let Some(t) = &tag {
                check_ref("tag", t)?;
            }
            if commit.is_none() && tag.is_none() {
                bail!(
                    "git source without a commit or tag: pin one so that every pull gets the same files"
                );
            }
            Source::Git {
                url,
                commit: commit.map(|c| c.to_ascii_lowercase()),
                tag,
            }
        }
        "http" => Source::Http {
            files: http_files(f, &check_url)?,
        },
        _ => {
            let instructions = f
                .string(&["instructions"])?
                .filter(|s| !s.trim().is_empty())
                .context("manual source without \"instructions\"")?;
            let url = f.string(&["url", "homepage"])?;
            if let Some(u) = &url {
                check_url("url", u)?;
            }
            Source::Manual { instructions, url }
        }
    })
}

fn infer_kind(f: &Fields) -> Result<&'static str> {
    let has = |k: &str| f.0.get(k).is_some_and(|v| !v.is_null());
    let repo_is_url =
        f.0.get("repo")
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("://"));
    Ok(
        if ["hf_id", "repo_id", "hf", "hf_repo"].iter().any(|k| has(k))
            || has("repo") && !repo_is_url
        {
            "hf"
        } else if has("git_url")
            || has("git")
            || repo_is_url
            || has("url") && (has("commit") || has("tag"))
        {
            "git"
        } else if has("instructions") {
            // A manual entry's url is its homepage, not a download.
            "manual"
        } else if has("url") || has("urls") {
            "http"
        } else {
            bail!(
                "no source: give \"source\" (hf, git, http or manual) or one of hf_id, repo, url, urls"
            )
        },
    )
}

fn http_files(
    f: &mut Fields,
    check_url: &dyn Fn(&str, &str) -> Result<()>,
) -> Result<Vec<HttpFile>> {
    let shared_sha = f.string(&["sha256", "checksum"])?;
    let items = match f.take(&["urls", "url"])? {
        Some(Value::Array(items)) => {
            if shared_sha.is_some() && items.len() != 1 {
                bail!(
                    "one sha256 beside several urls: give each url its own ({{\"url\": .., \"sha256\": ..}})"
                );
            }
            items
        }
        Some(one @ (Value::String(_) | Value::Object(_))) => vec![one],
        Some(other) => bail!("\"urls\" must be a list, not {}", kind(&other)),
        None => bail!("http source without urls"),
    };
    if items.is_empty() {
        bail!("http source with an empty url list");
    }
    let mut files: Vec<HttpFile> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let what = format!("url {}", i + 1);
        let (url, sha, filename) = match item {
            Value::String(url) => (url, shared_sha.clone(), None),
            Value::Object(obj) => {
                let mut o = Fields(obj);
                let url = o
                    .string(&["url"])?
                    .with_context(|| format!("{what} has no \"url\""))?;
                let sha = o
                    .string(&["sha256", "checksum"])?
                    .or_else(|| shared_sha.clone());
                let filename = o.string(&["filename", "file", "name"])?;
                if let Some(key) = o.0.keys().next() {
                    bail!("unknown field {key:?} of {what}");
                }
                (url, sha, filename)
            }
            other => bail!("{what} must be a string or an object, not {}", kind(&other)),
        };
        check_url(&what, &url)?;
        let sha256 = match sha {
            Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => bail!("sha256 of {what} is not 64 hex digits"),
            None => None,
        };
        let filename = match filename {
            Some(name) => name,
            None => crate::checks::url_file_name(&url).to_string(),
        };
        if let Some(why) = file_name_problem(&filename) {
            bail!("file name {filename:?} of {what} {why}: give {{\"url\": .., \"filename\": ..}}");
        }
        if files.iter().any(|other| other.filename == filename) {
            bail!("{what} downloads to {filename:?} like an earlier url: give a \"filename\"");
        }
        files.push(HttpFile {
            url,
            sha256,
            filename,
        });
    }
    Ok(files)
}

/// `OWNER/NAME` or `NAME`, each part of `[A-Za-z0-9._-]` not starting with `.` or `-`.
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| file_name_problem(p).is_none())
}

/// A branch, tag or revision: no spaces or control characters, not starting with `-`.
fn check_ref(what: &str, r: &str) -> Result<()> {
    if r.is_empty()
        || r.starts_with('-')
        || r.chars().any(|c| c.is_whitespace() || c.is_control())
        || r.contains("..")
    {
        bail!("{what} {r:?} is not a valid name");
    }
    Ok(())
}

/// The entry's fields, taken one by one; what is left over passes through.
struct Fields(Map<String, Value>);

impl Fields {
    /// The value under the first of `names` present (null counts as absent), removing all of them;
    /// two spellings with different values are an error.
    fn take(&mut self, names: &[&str]) -> Result<Option<Value>> {
        let mut found: Option<(&str, Value)> = None;
        for &name in names {
            let Some(value) = self.0.remove(name) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            match &found {
                Some((first, v)) if *v != value => {
                    bail!("{first:?} and {name:?} disagree: give one")
                }
                Some(_) => {}
                None => found = Some((name, value)),
            }
        }
        Ok(found.map(|(_, v)| v))
    }

    fn string(&mut self, names: &[&str]) -> Result<Option<String>> {
        match self.take(names)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => bail!("{:?} must be a string, not {}", names[0], kind(&other)),
        }
    }

    /// A string or a list of strings.
    fn strings(&mut self, names: &[&str]) -> Result<Vec<String>> {
        match self.take(names)? {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => bail!("{:?} must hold strings, not {}", names[0], kind(&other)),
                })
                .collect(),
            Some(other) => bail!(
                "{:?} must be a string or a list of strings, not {}",
                names[0],
                kind(&other)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(entry: Value) -> Result<Dataset> {
        let Value::Object(fields) = entry else {
            bail!("not an object")
        };
        parse(
            Located {
                loc: "c:1".into(),
                fields,
            },
            1,
            false,
        )
    }

    fn kind_of(entry: Value) -> String {
        match check(entry) {
            Ok(d) => crate::manifest::strategy(&d.source).to_string(),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_kind_follows_the_fields_present() {
        let k = |v| kind_of(v);
        assert_eq!(
            k(json!({"name": "a", "url": "https://h/r.git", "commit": "abcdef1"})),
            "git_clone"
        );
        assert_eq!(
            k(json!({"name": "a", "git_url": "https://h/r.git", "tag": "v1"})),
            "git_clone"
        );
        assert_eq!(k(json!({"name": "a", "repo": "org/name"})), "hf_snapshot");
        assert_eq!(k(json!({"name": "a", "hf_repo": "name"})), "hf_snapshot");
        assert_eq!(
            k(json!({"name": "a", "source": "github", "url": "https://h/r", "tag": "v2"})),
            "git_clone"
        );
        assert_eq!(
            k(json!({"name": "a", "instructions": "ask", "url": "https://h/"})),
            "manual"
        );
        assert_eq!(
            k(json!({"name": "a", "urls": ["https://h/x.zip"]})),
            "http_download"
        );
        assert_eq!(
            k(json!({"name": "a", "source": {"type": "https", "url": "https://h/x"}})),
            "http_download"
        );
    }

    #[test]
    fn spellings_and_their_checks() -> Result<()> {
        let d = check(
            json!({"name": "A b", "source": {"kind": "hub", "hf_id": "o/n", "repo_type": "models", "rev": "v1"}}),
        )?;
        let Source::Hf {
            repo_type,
            revision,
            ..
        } = &d.source
        else {
            bail!("not hf: {:?}", d.source)
        };
        assert_eq!((repo_type.as_str(), revision.as_str()), ("model", "v1"));
        assert_eq!(d.slug, "a-b");
        assert_eq!(d.track, NO_TRACK);
        for (entry, says) in [
            (
                json!({"name": "a", "urls": ["https://h/x", "https://h/y"], "sha256": "0".repeat(64)}),
                "one sha256 beside several urls",
            ),
            (
                json!({"name": "a", "urls": ["https://h/x.zip", "https://g/x.zip"]}),
                "downloads to \"x.zip\" like an earlier url",
            ),
            (
                json!({"name": "a", "url": "https://h/"}),
                "file name \"\" of url 1 is empty",
            ),
            (
                json!({"name": "a", "url": "https://h/x", "sha256": "abc"}),
                "sha256 of url 1 is not 64 hex digits",
            ),
            (
                json!({"name": "a", "repo": "https://h/r", "commit": "xyz"}),
                "commit \"xyz\" is not 7 to 64 hex digits",
            ),
            (
                json!({"name": "a", "hf_id": "o/n/x"}),
                "is not NAME or OWNER/NAME",
            ),
            (
                json!({"name": "a", "hf_id": "o/n", "revision": "--upload"}),
                "revision \"--upload\" is not a valid name",
            ),
            (
                json!({"name": "a", "hf_id": "o/n", "gated": "yes"}),
                "\"gated\" must be true or false, not a string",
            ),
            (
                json!({"name": "a", "hf_id": "o/n", "caps": {"max_docs": -1}}),
                "cap \"max_docs\" must be a whole number",
            ),
            (json!({"name": "", "hf_id": "o/n"}), "no \"name\""),
            (
                json!({"name": "a", "source": "manual"}),
                "manual source without \"instructions\"",
            ),
        ] {
            let err = check(entry.clone())
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains(says), "{entry}: want {says:?} in {err:?}");
            assert!(err.starts_with("c:1: entry 1"), "{err}");
        }
        Ok(())
    }
}
