//! The manifest records ft-fetch reads: those ft-catalog-to-manifest writes (ftkit(7), MANIFEST).
//! Only the fields a fetch needs are read; the others are ignored. Every name that becomes a path is
//! checked here, so that no slug, folder or file name can leave the root.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub slug: String,
    pub source: Source,
    pub raw_root: Option<String>,
    pub processed_root: Option<String>,
}

pub use ftkit_core::source::{HttpFile, Source};

/// A slug as ft-catalog-to-manifest makes them: `[a-z0-9._-]`, not starting with `.` or `-`, at
/// most 200 bytes; so always one folder name.
pub fn check_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 200
        && !slug.starts_with(['.', '-'])
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        bail!("slug {slug:?} is not a plain folder name ([a-z0-9._-], not starting with . or -)");
    }
    Ok(())
}

/// A file name of an http source: `[A-Za-z0-9._-]`, not starting with `.` or `-` (the `.NAME.part`
/// temporaries cannot collide with a file).
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!(
            "file name {name:?} is not a plain file name ([A-Za-z0-9._-], not starting with . or -)"
        );
    }
    Ok(())
}

/// `root/rel` for a relative path made only of plain names (no `..`, no absolute path).
pub fn inside(root: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    let path = Path::new(rel);
    let plain = !rel.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        bail!("{what} {rel:?} is not a relative path inside the root");
    }
    Ok(root.join(path))
}

impl Manifest {
    /// The raw and processed folders under `root` (the manifest's, or `raw/SLUG`, `processed/SLUG`).
    pub fn folders(&self, root: &Path) -> Result<(PathBuf, PathBuf)> {
        check_slug(&self.slug)?;
        let raw = self
            .raw_root
            .clone()
            .unwrap_or(format!("raw/{}", self.slug));
        let processed = self
            .processed_root
            .clone()
            .unwrap_or(format!("processed/{}", self.slug));
        Ok((
            inside(root, &raw, "raw_root")?,
            inside(root, &processed, "processed_root")?,
        ))
    }

    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Hf { .. } => "hf",
            Source::Git { .. } => "git",
            Source::Http { .. } => "http",
            Source::Manual { .. } => "manual",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_root_are_refused() {
        for bad in ["..", "../x", "a/b", ".hidden", "-x", "", "A"] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
        assert!(check_slug("kyudan-mathbridge").is_ok());
        for bad in ["../x", "a/b", ".part", ""] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
        let root = Path::new("/r");
        assert!(inside(root, "raw/../../etc", "raw_root").is_err());
        assert!(inside(root, "/etc", "raw_root").is_err());
        assert_eq!(
            inside(root, "raw/x", "raw_root").ok(),
            Some(PathBuf::from("/r/raw/x"))
        );
    }
}
