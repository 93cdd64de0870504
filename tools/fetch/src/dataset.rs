//! One dataset: its source fetched (or verified) into its raw folder, its files checked against the
//! lock, its stats written, and the status record that says what happened.

use crate::lock::{FileEntry, Lock};
use crate::manifest::{Manifest, Source};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Ctx {
    pub root: PathBuf,
    pub client: crate::http::Client,
    pub offline: bool,
    pub verify: bool,
    pub hub: ftkit_core::hub::HubOptions,
    pub limits: crate::archive::Limits,
    pub lock: Mutex<Lock>,
}

impl Ctx {
    pub fn lock_files(&self, slug: &str) -> Vec<FileEntry> {
        self.lock.lock().map(|l| l.files(slug)).unwrap_or_default()
    }

    pub fn lock_sha(&self, slug: &str, path: &str) -> Option<String> {
        let lock = self.lock.lock().ok()?;
        lock.get(slug, path).map(|e| e.sha256.clone())
    }

    /// Records `files` of `slug` and writes the lock at once, so a later kill loses nothing.
    fn record(&self, slug: &str, files: &[FileEntry], complete: bool) -> Result<()> {
        let mut lock = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("fetch.lock: a worker panicked"))?;
        lock.record(slug, files, complete);
        lock.save()
    }
}

/// The record printed for each dataset.
#[derive(Serialize)]
pub struct Status {
    pub slug: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub files: Vec<FileEntry>,
    pub stats: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What a source's fetch gives back.
pub enum Got {
    /// Files in place: `fetched` when anything was downloaded, else all were already there.
    Files {
        files: Vec<FileEntry>,
        fetched: bool,
    },
    /// Nothing can be fetched by us: someone has to follow `instructions`.
    Manual {
        instructions: String,
        url: Option<String>,
    },
    /// Some files are in place, others failed: the good ones are still recorded.
    Partial {
        files: Vec<FileEntry>,
        error: anyhow::Error,
    },
}

pub fn fetch(ctx: &Ctx, loc: &str, m: &Manifest) -> Status {
    let mut status = Status {
        slug: m.slug.clone(),
        kind: m.kind(),
        status: "failed",
        files: Vec::new(),
        stats: None,
        error: None,
        instructions: None,
        url: None,
    };
    let label = format!("{loc}: {}", m.slug);
    match fetch_inner(ctx, m) {
        Ok(Got::Files { files, fetched }) => {
            status.status = if fetched { "fetched" } else { "cached" };
            status.files = files;
            match write_stats(ctx, m, &status.files) {
                Ok(stats) => status.stats = Some(stats),
                Err(e) => fail(&mut status, &label, e),
            }
        }
        Ok(Got::Manual { instructions, url }) => {
            status.status = "manual";
            status.instructions = Some(instructions);
            status.url = url.map(|u| ftkit_core::secret::redact_url(&u));
        }
        Ok(Got::Partial { files, error }) => {
            status.files = files;
            fail(&mut status, &label, error);
        }
        Err(e) => fail(&mut status, &label, e),
    }
    status
}

fn fail(status: &mut Status, label: &str, e: anyhow::Error) {
    let text = ftkit_core::secret::redact_urls(&format!("{e:#}"));
    ftkit_core::cli::warn(format!("{label}: {text}"));
    status.status = "failed";
    status.error = Some(text);
}

fn fetch_inner(ctx: &Ctx, m: &Manifest) -> Result<Got> {
    let (raw, _) = m.folders(&ctx.root)?;
    if let Source::Manual { instructions, url } = &m.source {
        return Ok(Got::Manual {
            instructions: instructions.clone(),
            url: url.clone(),
        });
    }
    no_symlink_on_path(&ctx.root, &raw)?;
    if ctx.verify {
        return verify(ctx, &m.slug, &raw);
    }
    let got = match &m.source {
        Source::Http { files } => crate::dataset::http(ctx, &m.slug, &raw, files)?,
        Source::Git { url, commit, tag } => {
            crate::git::fetch(ctx, &m.slug, &raw, url, commit.as_deref(), tag.as_deref())?
        }
        Source::Hf {
            repo_id,
            repo_type,
            revision,
            allow_patterns,
            ignore_patterns,
        } => crate::hf::fetch(
            ctx,
            &m.slug,
            &raw,
            &crate::hf::Spec {
                repo_id,
                repo_type,
                revision,
                allow: allow_patterns,
                ignore: ignore_patterns,
            },
        )?,
        Source::Manual { .. } => unreachable_manual()?,
    };
    match &got {
        Got::Files { files, .. } => ctx.record(&m.slug, files, true)?,
        Got::Partial { files, .. } => ctx.record(&m.slug, files, false)?,
        Got::Manual { .. } => {}
    }
    Ok(got)
}

fn unreachable_manual() -> Result<Got> {
    bail!("manual source reached the fetchers")
}

/// A symbolic link between the root and `dir` could send writes anywhere: refused.
fn no_symlink_on_path(root: &Path, dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        if let Ok(meta) = std::fs::symlink_metadata(&at)
            && meta.file_type().is_symlink()
        {
            bail!("{}: is a symbolic link (refused)", at.display());
        }
    }
    Ok(())
}

/// `--verify`: every file the lock lists for `slug` is re-hashed; nothing is fetched.
fn verify(ctx: &Ctx, slug: &str, raw: &Path) -> Result<Got> {
    let files = ctx.lock_files(slug);
    if files.is_empty() {
        bail!("fetch.lock lists no file of this dataset (fetch it first)");
    }
    let mut bad = Vec::new();
    for f in &files {
        let path = crate::manifest::inside(raw, &f.path, "lock path")?;
        match hash(&path) {
            Ok(entry) if entry.sha256 == f.sha256 && entry.bytes == f.bytes => {}
            Ok(entry) => bad.push(format!(
                "{}: sha256 {} (fetch.lock: {})",
                f.path, entry.sha256, f.sha256
            )),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    if !bad.is_empty() {
        bail!("verification failed: {}", bad.join("; "));
    }
    Ok(Got::Files {
        files,
        fetched: false,
    })
}

/// Size and sha256 of the regular file at `path` (a symbolic link is refused: it could point anywhere).
pub fn hash(path: &Path) -> Result<FileEntry> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("{}: missing", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{}: not a regular file", path.display());
    }
    Ok(FileEntry {
        path: String::new(),
        bytes: meta.len(),
        sha256: ftkit_core::id::sha256_file(path)?,
    })
}

/// The file at `path` when it exists and matches `expected` (any content when there is none).
/// A file that differs is reported and treated as missing.
pub fn existing(path: &Path, rel: &str, expected: Option<&str>) -> Result<Option<FileEntry>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let mut entry = hash(path)?;
    entry.path = rel.to_string();
    match expected {
        Some(want) if want != entry.sha256 => {
            ftkit_core::cli::warn(format!(
                "{}: sha256 {} differs from the expected {want}: fetching it again",
                path.display(),
                entry.sha256
            ));
            Ok(None)
        }
        _ => Ok(Some(entry)),
    }
}

/// Checks the complete download `part` against `expected` and renames it onto `dest`; on a
/// mismatch `part` is removed and `dest` (the previous copy, if any) is left as it was.
pub fn settle(part: &Path, dest: &Path, rel: &str, expected: Option<&str>) -> Result<FileEntry> {
    let mut entry = hash(part)?;
    entry.path = rel.to_string();
    if let Some(want) = expected
        && want != entry.sha256
    {
        crate::http::discard(part);
        bail!(
            "{rel}: checksum mismatch: got sha256 {}, expected {want} (download discarded, previous copy kept)",
            entry.sha256
        );
    }
    crate::http::commit(part, dest)?;
    Ok(entry)
}

/// Every regular file under `dir` (but a top-level `.git` when `skip_git`), sorted by path, with size
/// and sha256; links are not followed and not listed.
pub fn walk(dir: &Path, skip_git: bool) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    let entries = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !(skip_git && e.depth() == 1 && e.file_name() == ".git"));
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .into_owned();
        let mut e = hash(entry.path())?;
        e.path = rel;
        out.push(e);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The files of archive `name` extracted into `raw/STEM/`, as `STEM/...` entries: those the lock
/// lists when the archive was not downloaded now and they are all there unchanged, else extracted
/// again.
fn extracted(ctx: &Ctx, slug: &str, raw: &Path, name: &str, new: bool) -> Result<Vec<FileEntry>> {
    let Some((kind, stem)) = crate::archive::kind(name) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{stem}/");
    let locked: Vec<FileEntry> = ctx
        .lock_files(slug)
        .into_iter()
        .filter(|f| f.path.starts_with(&prefix))
        .collect();
    if !new && !locked.is_empty() {
        let mut ok = true;
        for f in &locked {
            let path = crate::manifest::inside(raw, &f.path, "lock path")?;
            ok &= existing(&path, &f.path, Some(&f.sha256))?.is_some();
        }
        if ok {
            return Ok(locked);
        }
    }
    let folder = raw.join(stem);
    crate::archive::extract(&raw.join(name), kind, &folder, ctx.limits)?;
    let mut files = walk(&folder, false)?;
    for f in &mut files {
        f.path = format!("{prefix}{}", f.path);
    }
    Ok(files)
}

/// An http source: each file downloaded unless a good copy is there.
fn http(ctx: &Ctx, slug: &str, raw: &Path, files: &[crate::manifest::HttpFile]) -> Result<Got> {
    std::fs::create_dir_all(raw).with_context(|| format!("{}: cannot create", raw.display()))?;
    let mut tally = Tally::default();
    for f in files {
        let one = || -> Result<(FileEntry, bool)> {
            crate::manifest::check_file_name(&f.filename)?;
            let dest = raw.join(&f.filename);
            let lock_sha = ctx.lock_sha(slug, &f.filename);
            let expected = f.sha256.as_deref().or(lock_sha.as_deref());
            if let Some(e) = existing(&dest, &f.filename, expected)? {
                return Ok((e, false));
            }
            if ctx.offline {
                bail!(
                    "{}: not there, or changed (offline: not fetched)",
                    f.filename
                );
            }
            let part = raw.join(format!(".{}.part", f.filename));
            ctx.client.download(&f.url, &part)?;
            Ok((settle(&part, &dest, &f.filename, expected)?, true))
        };
        tally.add(one().and_then(|(entry, new)| {
            let mut got = extracted(ctx, slug, raw, &f.filename, new)?;
            got.push(entry);
            Ok((got, new))
        }));
    }
    Ok(tally.finish())
}

/// The per-file outcomes of a source, gathered into one [`Got`].
#[derive(Default)]
pub struct Tally {
    files: Vec<FileEntry>,
    fetched: bool,
    errors: Vec<String>,
}

impl Tally {
    /// One file's outcome: its entries (an archive brings its extracted files) and whether it was
    /// downloaded now, or why it failed.
    pub fn add(&mut self, got: Result<(Vec<FileEntry>, bool)>) {
        match got {
            Ok((files, new)) => {
                self.fetched |= new;
                self.files.extend(files);
            }
            Err(e) => self.errors.push(format!("{e:#}")),
        }
    }

    /// Files sorted by path; [`Got::Partial`] when any file failed.
    pub fn finish(mut self) -> Got {
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        if self.errors.is_empty() {
            Got::Files {
                files: self.files,
                fetched: self.fetched,
            }
        } else {
            Got::Partial {
                files: self.files,
                error: anyhow::anyhow!(self.errors.join("; ")),
            }
        }
    }
}

/// `processed/SLUG/stats.json`, written only when its bytes change.
fn write_stats(ctx: &Ctx, m: &Manifest, files: &[FileEntry]) -> Result<serde_json::Value> {
    let (raw, processed) = m.folders(&ctx.root)?;
    let stats = crate::stats::compute(&raw, files);
    let mut bytes = serde_json::to_vec_pretty(&stats)?;
    bytes.push(b'\n');
    let path = processed.join("stats.json");
    no_symlink_on_path(&ctx.root, &path)?;
    if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        ftkit_core::io::write_atomic(&path, &bytes)?;
    }
    Ok(stats)
}
