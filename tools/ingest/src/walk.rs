//! Finding the sources: paths in the order given; folders walked recursively in byte order of names.
//!
//! `--glob` (include) and `--exclude` patterns without a `/` match a file's name (`*.md`); patterns
//! with a `/` match its path relative to the folder given (`guides/**/*.md`, where `*` stays within
//! one folder level). Excludes also prune folders (`--exclude drafts`). Include patterns apply to
//! files found by walking, not to files named on the command line. Hidden entries (names starting
//! with `.`) are skipped in walks unless `--hidden`.
//!
//! A walk does not leave the folder given: a symbolic link is followed only when its target
//! (resolved) lies inside that folder; a link out of it (`x -> /etc/hostname`, `x -> ../outside`) is
//! reported and skipped unless `--follow-links`. A link that loops back to one of its own parent
//! folders is reported and skipped. Only regular files are read: a FIFO, socket or device (found in
//! a walk or named on the command line) is reported and skipped, so nothing blocks on a pipe with no
//! writer or reads `/dev/zero` forever; `-` is the way to read a pipe.

use crate::extract::Skip;
use anyhow::{Context, Result};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// A pattern list split by what it matches: file names, or paths relative to the walked folder.
#[derive(Debug)]
pub struct Patterns {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl Patterns {
    /// Compiles patterns; the error names the bad one (a usage error for the caller).
    pub fn new(patterns: &[String], flag: &str) -> std::result::Result<Self, String> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let bad = |e: globset::Error| format!("{flag} {p:?}: {e}");
            if p.contains('/') {
                let p = p.trim_start_matches("./");
                paths.add(
                    GlobBuilder::new(p)
                        .literal_separator(true)
                        .build()
                        .map_err(bad)?,
                );
            } else {
                names.add(Glob::new(p).map_err(bad)?);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| format!("{flag}: {e}"));
        Ok(Self {
            names: build(names)?,
            paths: build(paths)?,
            empty: patterns.is_empty(),
        })
    }

    fn is_match(&self, name: &str, rel: &str) -> bool {
        self.names.is_match(name) || self.paths.is_match(rel)
    }
}

/// What to walk and what to keep.
#[derive(Debug)]
pub struct Filter {
    pub include: Patterns,
    pub exclude: Patterns,
    pub hidden: bool,
    /// Follow symbolic links out of the folder given (`--follow-links`).
    pub follow_links: bool,
}

/// One file to read, or one entry that is not read.
#[derive(Debug)]
pub enum Found {
    /// `source` is the path as shown in records: the path given, or the walked folder joined with the
    /// file's relative path. `size` is the size on disk (0 for stdin).
    File { source: String, size: u64 },
    /// An entry skipped with a warning: a walk error (a symbolic-link loop, a folder that cannot be
    /// read), a link out of the folder, a file that is not a regular file. `message` is worded.
    Skipped {
        source: String,
        reason: Skip,
        message: String,
    },
}

const NOT_REGULAR: &str = "not a regular file; pipe it into - to read it";

/// Lists the sources under `paths`, in order. A path that does not exist is an error.
pub fn collect(paths: &[String], filter: &Filter) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for path in paths {
        if path == "-" {
            found.push(Found::File {
                source: path.clone(),
                size: 0,
            });
            continue;
        }
        let meta = std::fs::metadata(path).with_context(|| format!("{path}: cannot read"))?;
        if !meta.is_dir() && !meta.is_file() {
            found.push(Found::Skipped {
                source: path.clone(),
                reason: Skip::NotRegular,
                message: NOT_REGULAR.into(),
            });
            continue;
        }
        if !meta.is_dir() {
            found.push(Found::File {
                source: path.clone(),
                size: meta.len(),
            });
            continue;
        }
        walk(Path::new(path), filter, &mut found);
    }
    Ok(found)
}

/// Where the symbolic link `path` leads when that is outside `root` (already resolved); `None` when
/// it stays inside, or is broken (the walk reports that itself).
fn outside(root: &Path, path: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(path).ok()?;
    (!target.starts_with(root)).then_some(target)
}

fn walk(root: &Path, filter: &Filter, found: &mut Vec<Found>) {
    let rel_of = |p: &Path| -> String {
        let rel = p.strip_prefix(root).unwrap_or(p);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    // Links are judged against the folder's real path (the folder given may itself be a link).
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    // Links out of the folder are pruned inside the walk, and reported in walk order with the rest.
    let found = RefCell::new(found);
    let entries = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 0 {
                return true;
            }
            let name = e.file_name().to_string_lossy();
            if !filter.hidden && name.starts_with('.') {
                return false;
            }
            if filter.exclude.is_match(&name, &rel_of(e.path())) {
                return false;
            }
            if e.path_is_symlink()
                && !filter.follow_links
                && let Some(target) = outside(&real_root, e.path())
            {
                // A file link the include patterns leave out is not worth a warning.
                let wanted = filter.include.empty
                    || target.is_dir()
                    || filter.include.is_match(&name, &rel_of(e.path()));
                if !wanted {
                    return false;
                }
                found.borrow_mut().push(Found::Skipped {
                    source: e.path().to_string_lossy().into_owned(),
                    reason: Skip::OutsideLink,
                    message: format!(
                        "symbolic link to {} is outside {}; --follow-links follows it",
                        target.display(),
                        root.display()
                    ),
                });
                return false;
            }
            true
        });
    for entry in entries {
        let item = match entry {
            Ok(e) if e.file_type().is_dir() => continue,
            Ok(e) => {
                let name = e.file_name().to_string_lossy();
                if !filter.include.empty && !filter.include.is_match(&name, &rel_of(e.path())) {
                    continue;
                }
                let source = e.path().to_string_lossy().into_owned();
                if !e.file_type().is_file() {
                    Found::Skipped {
                        source,
                        reason: Skip::NotRegular,
                        message: NOT_REGULAR.into(),
                    }
                } else {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    Found::File { source, size }
                }
            }
            Err(err) => {
                let source = err.path().unwrap_or(root).to_string_lossy().into_owned();
                let message = if err.loop_ancestor().is_some() {
                    "symbolic link loop".to_string()
                } else {
                    match err.io_error() {
                        Some(io) => io.to_string(),
                        None => err.to_string(),
                    }
                };
                Found::Skipped {
                    source,
                    reason: Skip::Unreadable,
                    message,
                }
            }
        };
        found.borrow_mut().push(item);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(found: &[Found]) -> Vec<String> {
        found
            .iter()
            .map(|f| match f {
                Found::File { source, .. } => source.clone(),
                Found::Skipped {
                    source, message, ..
                } => format!("!{source}: {message}"),
            })
            .collect()
    }

    fn filter(include: &[&str], exclude: &[&str], hidden: bool) -> Filter {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Filter {
            include: Patterns::new(&s(include), "--glob").unwrap_or_else(|e| panic!("{e}")),
            exclude: Patterns::new(&s(exclude), "--exclude").unwrap_or_else(|e| panic!("{e}")),
            hidden,
            follow_links: false,
        }
    }

    #[test]
    fn walks_sorted_with_globs_excludes_and_hidden() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        for f in [
            "b.md",
            "a.txt",
            "sub/z.md",
            "sub/deep/y.md",
            "drafts/d.md",
            ".git/config.md",
            "sub/.h.md",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap_or(root))?;
            std::fs::write(p, "x")?;
        }
        let r = root.display().to_string();
        let all = collect(std::slice::from_ref(&r), &filter(&[], &[], false))?;
        let rel = |v: Vec<String>| {
            v.into_iter()
                .map(|s| s[r.len() + 1..].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rel(names(&all)),
            ["a.txt", "b.md", "drafts/d.md", "sub/deep/y.md", "sub/z.md"]
        );
        let md = collect(
            std::slice::from_ref(&r),
            &filter(&["*.md"], &["drafts"], false),
        )?;
        assert_eq!(rel(names(&md)), ["b.md", "sub/deep/y.md", "sub/z.md"]);
        let path_glob = collect(std::slice::from_ref(&r), &filter(&["sub/*.md"], &[], true))?;
        assert_eq!(rel(names(&path_glob)), ["sub/.h.md", "sub/z.md"]);
        let excl = collect(
            std::slice::from_ref(&r),
            &filter(&[], &["sub/deep", "*.txt"], false),
        )?;
        assert_eq!(rel(names(&excl)), ["b.md", "drafts/d.md", "sub/z.md"]);
        // A file named explicitly is read whatever the include patterns say.
        let named = root.join("a.txt").display().to_string();
        assert_eq!(
            names(&collect(
                std::slice::from_ref(&named),
                &filter(&["*.md"], &[], false)
            )?),
            [named]
        );
        assert!(
            collect(
                &[root.join("missing").display().to_string()],
                &filter(&[], &[], false)
            )
            .is_err()
        );
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_are_reported_not_followed_forever() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("a"))?;
        std::fs::write(root.join("a/doc.md"), "x")?;
        std::os::unix::fs::symlink(root.join("a"), root.join("a/loop"))?;
        let found = names(&collect(
            &[root.display().to_string()],
            &filter(&[], &[], false),
        )?);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].ends_with("a/doc.md"));
        assert!(
            found[1].starts_with('!') && found[1].ends_with("symbolic link loop"),
            "{found:?}"
        );
        Ok(())
    }

    #[test]
    fn bad_patterns_are_reported() {
        assert!(
            Patterns::new(&["a[".to_string()], "--glob")
                .unwrap_err()
                .contains("--glob \"a[\"")
        );
    }
}
