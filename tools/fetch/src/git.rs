//! A git source through the git binary: a shallow fetch of the pinned commit (or tag) into a fresh
//! repository built beside the raw folder, which replaces it only once checked out. A short commit
//! cannot be fetched by itself: then the whole history is fetched and the commit checked out.

use crate::dataset::{Ctx, Got, walk};
use crate::lock::FileEntry;
use anyhow::{Context, Result, bail};
use ftkit_core::secret::{redact_url, redact_urls};
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // Never wait for a password on the terminal; never use a user's hooks or templates.
        .env("GIT_TERMINAL_PROMPT", "0")
        // Only transports that move data: `ext::` and the like run commands.
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .env("GIT_TEMPLATE_DIR", "")
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "git {}: {}",
            redact_urls(&args.join(" ")),
            redact_urls(err.trim())
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit checked out in `dir`, if it is a git work tree.
fn head(dir: &Path) -> Option<String> {
    dir.join(".git")
        .is_dir()
        .then(|| git(dir, &["rev-parse", "HEAD"]).ok())?
}

/// Whether `head` is the pinned commit or tag.
fn is_pinned(dir: &Path, head: &str, commit: Option<&str>, tag: Option<&str>) -> bool {
    match (commit, tag) {
        (Some(c), _) => head.starts_with(&c.to_lowercase()),
        (None, Some(t)) => {
            git(dir, &["rev-parse", &format!("refs/tags/{t}^{{commit}}")])
                .ok()
                .as_deref()
                == Some(head)
        }
        (None, None) => false,
    }
}

/// The files match the lock's entries for `slug` (when it has any).
fn matches_lock(ctx: &Ctx, slug: &str, files: &[FileEntry]) -> bool {
    let locked = ctx.lock_files(slug);
    locked.is_empty() || locked == files
}

/// The URL, commit and tag become git arguments: none may read as an option, the commit is hex
/// (7 to 64 digits) and the tag a plain ref name.
fn check_pins(url: &str, commit: Option<&str>, tag: Option<&str>) -> Result<()> {
    let shown = redact_url(url);
    if url.starts_with('-') || url.chars().any(char::is_control) {
        bail!("{shown}: not a repository URL");
    }
    if let Some(c) = commit
        && !(c.len() >= 7 && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("commit {c:?} is not 7 to 64 hex digits");
    }
    if let Some(t) = tag {
        let plain = !t.is_empty()
            && !t.starts_with(['-', '.', '/'])
            && !t.contains("..")
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/+".contains(&b));
        if !plain {
            bail!("tag {t:?} is not a plain tag name");
        }
    }
    if commit.is_none() && tag.is_none() {
        bail!("{shown}: no commit or tag: an unpinned clone is refused");
    }
    Ok(())
}

pub fn fetch(
    ctx: &Ctx,
    slug: &str,
    raw: &Path,
    url: &str,
    commit: Option<&str>,
    tag: Option<&str>,
) -> Result<Got> {
    check_pins(url, commit, tag)?;
    if let Some(h) = head(raw)
        && is_pinned(raw, &h, commit, tag)
    {
        let have = walk(raw, true)?;
        if matches_lock(ctx, slug, &have) {
            return Ok(Got::Files {
                files: have,
                fetched: false,
            });
        }
        ftkit_core::cli::warn(format!(
            "{}: files differ from fetch.lock: fetching again",
            raw.display()
        ));
    }
    if ctx.offline {
        bail!(
            "{}: not there at the pinned commit (offline: not fetched)",
            raw.display()
        );
    }
    let tmp = ftkit_core::io::AtomicDir::create(raw)?;
    let dir = tmp.path();
    git(dir, &["init", "-q"])?;
    git(dir, &["remote", "add", "--", "origin", url])?;
    let target = match (commit, tag) {
        (Some(c), _) if c.len() == 40 || c.len() == 64 => {
            git(dir, &["fetch", "-q", "--depth", "1", "origin", c])?;
            c.to_string()
        }
        (Some(c), _) => {
            git(dir, &["fetch", "-q", "origin"])?;
            c.to_string()
        }
        (None, Some(t)) => {
            let spec = format!("refs/tags/{t}:refs/tags/{t}");
            git(dir, &["fetch", "-q", "--depth", "1", "origin", &spec])?;
            format!("refs/tags/{t}^{{commit}}")
        }
        (None, None) => unreachable!("checked above"),
    };
    git(
        dir,
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            &target,
        ],
    )?;
    let h = git(dir, &["rev-parse", "HEAD"])?;
    if !is_pinned(dir, &h, commit, tag) {
        bail!("git checked out {h}, not the pinned commit");
    }
    let have = walk(dir, true)?;
    tmp.commit()?;
    Ok(Got::Files {
        files: have,
        fetched: true,
    })
}
