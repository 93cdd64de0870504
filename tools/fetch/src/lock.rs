//! `DIR/fetch.lock`: one JSONL record per fetched file, `{"slug","path","bytes","sha256"}`, sorted by
//! slug then path, so the file is stable and diffs well. `path` is relative to the dataset's raw folder.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Deserialize, Serialize)]
struct Line {
    slug: String,
    path: String,
    bytes: u64,
    sha256: String,
}

pub struct Lock {
    path: PathBuf,
    /// slug → path → entry.
    entries: BTreeMap<String, BTreeMap<String, FileEntry>>,
}

impl Lock {
    /// Reads `path`; a missing file is an empty lock, a malformed line an error naming `path:line`.
    pub fn load(path: &Path) -> Result<Self> {
        let mut entries: BTreeMap<String, BTreeMap<String, FileEntry>> = BTreeMap::new();
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let l: Line =
                        serde_json::from_str(line).with_context(|| format!("{shown}:{}", i + 1))?;
                    entries.entry(l.slug).or_default().insert(
                        l.path.clone(),
                        FileEntry {
                            path: l.path,
                            bytes: l.bytes,
                            sha256: l.sha256,
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{shown}: cannot read")),
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn get(&self, slug: &str, path: &str) -> Option<&FileEntry> {
        self.entries.get(slug)?.get(path)
    }

    pub fn files(&self, slug: &str) -> Vec<FileEntry> {
        self.entries
            .get(slug)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records `files` for `slug`: with `complete`, they replace every entry of the slug (a dataset
    /// fetched whole); otherwise they are added to the slug's previous entries.
    pub fn record(&mut self, slug: &str, files: &[FileEntry], complete: bool) {
        let map = self.entries.entry(slug.to_string()).or_default();
        if complete {
            map.clear();
        }
        for f in files {
            map.insert(f.path.clone(), f.clone());
        }
        if map.is_empty() {
            self.entries.remove(slug);
        }
    }

    /// Writes the lock atomically (temp + rename), unless its bytes are already right.
    pub fn save(&self) -> Result<()> {
        let mut out = Vec::new();
        for (slug, files) in &self.entries {
            for f in files.values() {
                let line = Line {
                    slug: slug.clone(),
                    path: f.path.clone(),
                    bytes: f.bytes,
                    sha256: f.sha256.clone(),
                };
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
        }
        if std::fs::read(&self.path).ok().as_deref() == Some(&out[..]) {
            return Ok(());
        }
        ftkit_core::io::write_atomic(&self.path, &out)
    }
}
