//! An hf source through the hf-hub crate: the repository's file list at the pinned revision,
//! filtered by the allow/ignore patterns (fnmatch-like: `*` also matches `/`), each file downloaded
//! into the hub cache and copied into the raw folder under a temporary name. A gated repository
//! that refuses us without a token becomes a manual status with the steps to get access.

use crate::dataset::{Ctx, Got, Tally, existing, settle};
use crate::manifest::inside;
use anyhow::{Context, Result, anyhow, bail};
use ftkit_core::secret::{redact_url, redact_urls};
use std::path::Path;

pub struct Spec<'a> {
    pub repo_id: &'a str,
    pub repo_type: &'a str,
    pub revision: &'a str,
    pub allow: &'a [String],
    pub ignore: &'a [String],
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

fn glob_set(patterns: &[String]) -> Result<globset::GlobSet> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        set.add(globset::Glob::new(p).with_context(|| format!("pattern {p:?}"))?);
    }
    Ok(set.build()?)
}

/// The HTTP status of a failed hub request, if the server answered.
fn status_of(e: &hf_hub::api::sync::ApiError) -> Option<u16> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        hf_hub::api::sync::ApiError::TooManyRetries(inner) => status_of(inner),
        _ => None,
    }
}

pub fn fetch(ctx: &Ctx, slug: &str, raw: &Path, spec: &Spec) -> Result<Got> {
    let repo_type = match spec.repo_type {
        "dataset" => hf_hub::RepoType::Dataset,
        "model" => hf_hub::RepoType::Model,
        other => bail!("repo_type {other:?} is not dataset or model"),
    };
    let label = format!("{}@{}", spec.repo_id, spec.revision);
    if ctx.hub.offline {
        return offline(ctx, slug, raw, &label);
    }
    let hub = &ctx.hub;
    // hf-hub's messages carry URLs (never the token): shown redacted, HF_ENDPOINT may hold secrets.
    let shown = |e: hf_hub::api::sync::ApiError| anyhow!(redact_urls(&e.to_string()));
    let api = hub
        .api()
        .map_err(shown)
        .with_context(|| format!("{label}: cannot start the hub client"))?;
    let repo = hf_hub::Repo::with_revision(
        spec.repo_id.to_string(),
        repo_type,
        spec.revision.to_string(),
    );
    let info = match api.repo(repo).info() {
        Ok(info) => info,
        Err(e) if matches!(status_of(&e), Some(401 | 403)) && hub.token.is_none() => {
            return Ok(gated(spec, hub.endpoint.as_deref()));
        }
        Err(e) => {
            return Err(shown(e)).with_context(|| format!("{label}: cannot list the repository"));
        }
    };
    // Files are taken at the commit the revision names now, so a moving branch cannot mix versions.
    let api_repo = api.repo(hf_hub::Repo::with_revision(
        spec.repo_id.to_string(),
        repo_type,
        info.sha.clone(),
    ));
    let allow = glob_set(spec.allow)?;
    let ignore = glob_set(spec.ignore)?;
    let mut names: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|n| spec.allow.is_empty() || allow.is_match(n))
        .filter(|n| !ignore.is_match(n))
        .collect();
    names.sort_unstable();
    if names.is_empty() {
        bail!("{label}: no file of the repository matches the allow/ignore patterns");
    }
    let mut tally = Tally::default();
    for name in names {
        let one = || -> Result<(crate::lock::FileEntry, bool)> {
            let dest = inside(raw, name, "hub file name")?;
            let expected = ctx.lock_sha(slug, name);
            if let Some(e) = existing(&dest, name, expected.as_deref())? {
                return Ok((e, false));
            }
            let cached = api_repo
                .get(name)
                .map_err(shown)
                .with_context(|| format!("{name}: cannot download"))?;
            let dir = dest.parent().unwrap_or(raw);
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
            let file_name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let part = dir.join(format!(".{file_name}.part"));
            std::fs::copy(&cached, &part)
                .with_context(|| format!("{}: cannot copy from the hub cache", part.display()))?;
            Ok((settle(&part, &dest, name, expected.as_deref())?, true))
        };
        tally.add(one().map(|(entry, new)| (vec![entry], new)));
    }
    Ok(tally.finish())
}

/// HF_HUB_OFFLINE or --offline: the files the lock lists, if they are all there and unchanged.
fn offline(ctx: &Ctx, slug: &str, raw: &Path, label: &str) -> Result<Got> {
    let locked = ctx.lock_files(slug);
    if locked.is_empty() {
        bail!("{label}: not fetched yet (offline: nothing to use)");
    }
    let mut files = Vec::new();
    for f in locked {
        let path = inside(raw, &f.path, "lock path")?;
        match existing(&path, &f.path, Some(&f.sha256))? {
            Some(e) => files.push(e),
            None => bail!(
                "{label}: {} is missing or changed (offline: not fetched)",
                f.path
            ),
        }
    }
    Ok(Got::Files {
        files,
        fetched: false,
    })
}

fn gated(spec: &Spec, endpoint: Option<&str>) -> Got {
    let base = endpoint.unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
    let page = match spec.repo_type {
        "dataset" => format!("{base}/datasets/{}", spec.repo_id),
        _ => format!("{base}/{}", spec.repo_id),
    };
    let page = redact_url(&page);
    Got::Manual {
        instructions: format!(
            "{} is gated and refused access without a token: open {page} while logged in and accept \
             its conditions, create a read token at {base}/settings/tokens, then run ft-fetch again \
             with HF_TOKEN set to it",
            spec.repo_id,
            base = redact_url(base)
        ),
        url: Some(page),
    }
}
