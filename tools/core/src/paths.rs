//! One check for every tool: no output may be an input or another output.
//!
//! `ft-split in.jsonl -o o.jsonl --rejects in.jsonl` would otherwise replace the input with the
//! rejects. Two paths are the same file when both exist with the same device and inode (hard links,
//! symlinks, `./a` and `a`), or when their canonical paths are equal (a destination not yet created).
//! Only regular files and destinations still to be created are compared: `-o /dev/null --rejects
//! /dev/null` writes nothing anywhere.

use crate::cli::Usage;
use anyhow::Result;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The paths a tool reads and writes, each with the flag that names it.
#[derive(Default)]
pub struct Paths {
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
}

impl Paths {
    pub fn new() -> Self {
        Self::default()
    }

    /// An input file; `-` stands for stdin (compared when stdin is a regular file, as in `< in.jsonl`).
    pub fn input(mut self, flag: impl Into<String>, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let path = if path.as_os_str() == "-" {
            Path::new("/dev/stdin")
        } else {
            path
        };
        self.inputs.push((flag.into(), path.to_path_buf()));
        self
    }

    /// An output file; `-` (stdout) is not a file of ours.
    pub fn output(mut self, flag: impl Into<String>, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        if path.as_os_str() != "-" {
            self.outputs.push((flag.into(), path.to_path_buf()));
        }
        self
    }

    /// A usage error (exit 2) naming both flags when an output is an input or another output.
    pub fn check(&self) -> Result<()> {
        let ids = |list: &[(String, PathBuf)]| -> Vec<(String, PathBuf, Option<Id>)> {
            list.iter()
                .map(|(f, p)| (f.clone(), p.clone(), Id::of(p)))
                .collect()
        };
        let inputs = ids(&self.inputs);
        let outputs = ids(&self.outputs);
        for (i, (flag, path, id)) in outputs.iter().enumerate() {
            let Some(id) = id else { continue };
            for (in_flag, in_path, in_id) in &inputs {
                if in_id.as_ref().is_some_and(|other| other.same(id)) {
                    return Err(clash(flag, path, in_flag, in_path, "input"));
                }
            }
            for (other_flag, other_path, other_id) in &outputs[..i] {
                if other_id.as_ref().is_some_and(|other| other.same(id)) {
                    return Err(clash(flag, path, other_flag, other_path, "output"));
                }
            }
        }
        Ok(())
    }
}

fn clash(
    flag: &str,
    path: &Path,
    other_flag: &str,
    other_path: &Path,
    kind: &str,
) -> anyhow::Error {
    let (path, other_path) = (path.display(), other_path.display());
    // Positional inputs have no flag: "the input in.jsonl", else "the input --train t.jsonl".
    let other = match other_flag == kind {
        true => format!("{kind} {other_path}"),
        false => format!("{kind} {other_flag} {other_path}"),
    };
    anyhow::Error::new(Usage(format!(
        "{flag} {path} is the same file as the {other}: refusing to overwrite it"
    )))
}

/// What makes two paths the same file.
struct Id {
    inode: Option<(u64, u64)>,
    canonical: Option<PathBuf>,
}

impl Id {
    /// `None` for what is not a regular file nor a destination still to be created.
    fn of(path: &Path) -> Option<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Some(Self {
                inode: Some((meta.dev(), meta.ino())),
                canonical: path.canonicalize().ok(),
            }),
            Ok(_) => None,
            Err(_) => Some(Self {
                inode: None,
                canonical: planned(path),
            }),
        }
    }

    fn same(&self, other: &Self) -> bool {
        match (self.inode, other.inode) {
            (Some(a), Some(b)) => a == b,
            _ => self.canonical.is_some() && self.canonical == other.canonical,
        }
    }
}

/// The canonical path a file not yet created will have: its folder canonicalized, or, when the folder
/// does not exist yet either, the path made absolute.
fn planned(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match dir.canonicalize() {
        Ok(dir) => Some(dir.join(name)),
        Err(_) => std::path::absolute(path).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<()>) -> String {
        match r {
            Ok(()) => String::new(),
            Err(e) => {
                assert!(
                    e.downcast_ref::<Usage>().is_some(),
                    "not a usage error: {e}"
                );
                e.to_string()
            }
        }
    }

    #[test]
    fn outputs_that_are_inputs_or_each_other_are_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n")?;
        let link = dir.path().join("link.jsonl");
        std::fs::hard_link(&input, &link)?;
        let out = dir.path().join("out.jsonl");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub)?;
        let out_again = sub.join("../out.jsonl");

        let m = message(
            Paths::new()
                .input("input", &input)
                .output("--rejects", &link)
                .check(),
        );
        assert!(m.contains("--rejects") && m.contains("input"), "{m}");
        let m = message(
            Paths::new()
                .input("input", &input)
                .output("-o", &out)
                .output("--report", &out_again)
                .check(),
        );
        assert!(m.contains("--report") && m.contains("-o"), "{m}");
        // Distinct files, stdout twice, /dev/null twice, an input read twice: all fine.
        assert_eq!(
            message(
                Paths::new()
                    .input("input", &input)
                    .input("input", &input)
                    .output("-o", &out)
                    .output("--rejects", dir.path().join("r.jsonl"))
                    .output("-o", "-")
                    .output("--report", "/dev/null")
                    .output("--rejects", "/dev/null")
                    .check()
            ),
            ""
        );
        Ok(())
    }
}
