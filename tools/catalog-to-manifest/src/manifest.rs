//! The manifest of a dataset, its pull command, and the route that groups them by track.

use crate::entry::{Dataset, Source};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One manifest: the stdout record and, pretty-printed, `manifests/<slug>.json`.
#[derive(Serialize)]
pub struct Manifest<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub track: &'a str,
    pub source: &'a Source,
    pub ingest_strategy: &'static str,
    pub raw_root: String,
    pub processed_root: String,
    pub manifest: String,
    pub pull_command: Option<String>,
    pub preprocessing: &'a [String],
    pub license: Option<&'a str>,
    pub gated: bool,
    pub modality: &'a [String],
    pub expected: Option<&'a Value>,
    pub caps: Option<&'a Map<String, Value>>,
    pub extra: &'a Map<String, Value>,
}

impl<'a> Manifest<'a> {
    pub fn new(d: &'a Dataset) -> Self {
        let raw_root = format!("raw/{}", d.slug);
        Self {
            slug: &d.slug,
            name: &d.name,
            track: &d.track,
            source: &d.source,
            ingest_strategy: strategy(&d.source),
            pull_command: pull_command(&d.source, &raw_root),
            raw_root,
            processed_root: format!("processed/{}", d.slug),
            manifest: manifest_path(&d.slug),
            preprocessing: &d.preprocessing,
            license: d.license.as_deref(),
            gated: d.gated,
            modality: &d.modality,
            expected: d.expected.as_ref(),
            caps: d.caps.as_ref(),
            extra: &d.extra,
        }
    }
}

/// `manifests/<slug>.json`, relative to the root.
pub fn manifest_path(slug: &str) -> String {
    format!("manifests/{slug}.json")
}

pub fn strategy(source: &Source) -> &'static str {
    match source {
        Source::Hf { .. } => "hf_snapshot",
        Source::Git { .. } => "git_clone",
        Source::Http { .. } => "http_download",
        Source::Manual { .. } => "manual",
    }
}

/// The shell command that pulls the source into `dir`, run from the root; none for manual sources.
pub fn pull_command(source: &Source, dir: &str) -> Option<String> {
    let q = shell_quote;
    Some(match source {
        Source::Hf {
            repo_id,
            repo_type,
            revision,
            allow_patterns,
            ignore_patterns,
        } => {
            let mut cmd = format!(
                "hf download {} --repo-type {repo_type} --revision {}",
                q(repo_id),
                q(revision)
            );
            // `hf download` (typer) takes one pattern per flag; a second word would be a file name.
            for (flag, patterns) in [
                ("--include", allow_patterns),
                ("--exclude", ignore_patterns),
            ] {
                for p in patterns {
                    cmd.push_str(&format!(" {flag} {}", q(p)));
                }
            }
            cmd.push_str(&format!(" --local-dir {}", q(dir)));
            cmd
        }
        Source::Git { url, commit, tag } => match (commit, tag) {
            (Some(commit), _) => format!(
                "git clone --no-checkout {} {} && git -C {} checkout --detach {commit}",
                q(url),
                q(dir),
                q(dir)
            ),
            (None, Some(tag)) => format!(
                "git clone --depth 1 --branch {} {} {}",
                q(tag),
                q(url),
                q(dir)
            ),
            (None, None) => return None,
        },
        Source::Http { files } => files
            .iter()
            .map(|f| {
                let path = format!("{dir}/{}", f.filename);
                let get = format!("curl -fL --create-dirs -o {} {}", q(&path), q(&f.url));
                match &f.sha256 {
                    // Slug, file name and digest are of [A-Za-z0-9._-]: safe inside single quotes.
                    Some(sha) => format!("{get} && echo '{sha}  {path}' | sha256sum -c -"),
                    None => get,
                }
            })
            .collect::<Vec<_>>()
            .join(" && "),
        Source::Manual { .. } => return None,
    })
}

/// `s` as one shell word: as is when it holds only safe characters, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `route.json`: the datasets grouped by track (tracks sorted, datasets in catalog order).
#[derive(Serialize)]
pub struct Route<'a> {
    pub datasets: usize,
    pub tracks: BTreeMap<&'a str, Track<'a>>,
}

#[derive(Serialize)]
pub struct Track<'a> {
    pub count: usize,
    pub datasets: Vec<RouteEntry<'a>>,
}

#[derive(Serialize)]
pub struct RouteEntry<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub ingest_strategy: &'static str,
    pub gated: bool,
    pub manifest: String,
}

impl<'a> Route<'a> {
    pub fn new(datasets: &'a [Dataset]) -> Self {
        let mut tracks: BTreeMap<&str, Track> = BTreeMap::new();
        for d in datasets {
            let track = tracks.entry(&d.track).or_insert_with(|| Track {
                count: 0,
                datasets: Vec::new(),
            });
            track.count += 1;
            track.datasets.push(RouteEntry {
                slug: &d.slug,
                name: &d.name,
                ingest_strategy: strategy(&d.source),
                gated: d.gated,
                manifest: manifest_path(&d.slug),
            });
        }
        Self {
            datasets: datasets.len(),
            tracks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("org/name"), "org/name");
        assert_eq!(shell_quote("*.json"), "'*.json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
