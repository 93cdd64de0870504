//! Materialising the layout under `--root`: `raw/<slug>/`, `processed/<slug>/`,
//! `manifests/<slug>.json`, `route.json`.
//!
//! Everything is checked before anything is created. A file whose content is already right is not
//! rewritten, so a second run changes no byte and no modification time.

use anyhow::{Context, Result, bail};
use ftkit_core::io::write_atomic;
use std::path::{Path, PathBuf};

/// What a run writes under the root: folders, then files with their content.
pub struct Layout {
    pub dirs: Vec<PathBuf>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl Layout {
    /// Refuses a symbolic link on any path the layout uses (it could lead out of the root), a
    /// folder that is a file, and a file that is a folder.
    pub fn check(&self, root: &Path) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        let parents = self
            .dirs
            .iter()
            .chain(self.files.iter().map(|(p, _)| p))
            .flat_map(|p| {
                p.strip_prefix(root)
                    .ok()
                    .into_iter()
                    .flat_map(|rel| rel.ancestors())
            });
        for rel in parents {
            if rel.as_os_str().is_empty() || !seen.insert(rel.to_path_buf()) {
                continue;
            }
            let path = root.join(rel);
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && meta.file_type().is_symlink()
            {
                bail!(
                    "{}: is a symbolic link, which could lead out of the root",
                    path.display()
                );
            }
        }
        for dir in &self.dirs {
            if dir.exists() && !dir.is_dir() {
                bail!("{}: exists and is not a folder", dir.display());
            }
        }
        for (file, _) in &self.files {
            if file.is_dir() {
                bail!("{}: exists and is a folder", file.display());
            }
        }
        Ok(())
    }

    pub fn write(&self) -> Result<()> {
        for dir in &self.dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        for (path, bytes) in &self.files {
            if std::fs::read(path).is_ok_and(|old| old == *bytes) {
                continue;
            }
            write_atomic(path, bytes)?;
        }
        Ok(())
    }
}
