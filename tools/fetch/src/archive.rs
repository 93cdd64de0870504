//! Safe extraction of downloaded archives (`.zip`, `.tar`, `.tar.gz`/`.tgz`, `.tar.zst`) into a
//! folder beside them. Every entry must stay inside that folder: an absolute path or a `..` is
//! refused, and so is any symbolic or hard link (a link could point anywhere, and a later entry
//! written through it would land outside) and any special file. Entry count and total bytes written
//! are capped (archive bombs); the bytes are counted as they are written, not taken from headers.
//! The folder is built under a temporary name and replaces the old one only when complete.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zip,
    Tar,
    TarGz,
    TarZst,
}

/// The archive kind of a file name and the name without its archive extension.
pub fn kind(name: &str) -> Option<(Kind, &str)> {
    let lower = name.to_ascii_lowercase();
    for (ext, kind) in [
        (".tar.gz", Kind::TarGz),
        (".tgz", Kind::TarGz),
        (".tar.zst", Kind::TarZst),
        (".tar", Kind::Tar),
        (".zip", Kind::Zip),
    ] {
        if lower.ends_with(ext) && name.len() > ext.len() {
            return Some((kind, &name[..name.len() - ext.len()]));
        }
    }
    None
}

/// An entry's path as a relative path of plain names, or an error naming it.
fn entry_path(name: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => bail!("entry {name:?} leaves the archive's folder (refused)"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("entry {name:?} has no name (refused)");
    }
    Ok(out)
}

struct Writer<'a> {
    dir: &'a Path,
    limits: Limits,
    entries: u64,
    bytes: u64,
}

impl Writer<'_> {
    fn count(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            bail!(
                "more than {} entries (--max-entries): refused as an archive bomb",
                self.limits.max_entries
            );
        }
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.count()?;
        let path = self.dir.join(entry_path(name)?);
        std::fs::create_dir_all(&path).with_context(|| format!("{}: cannot create", path.display()))
    }

    fn file(&mut self, name: &str, body: &mut dyn Read) -> Result<()> {
        self.count()?;
        let rel = entry_path(name)?;
        let path = self.dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        // create_new: a second entry of the same name is an error, not a silent overwrite.
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("entry {name:?}: cannot create"))?;
        let room = self.limits.max_bytes - self.bytes;
        let copied = std::io::copy(&mut body.take(room + 1), &mut out)
            .with_context(|| format!("entry {name:?}: cannot extract"))?;
        if copied > room {
            bail!(
                "more than {} bytes once extracted (--max-extract-bytes): refused as an archive bomb",
                self.limits.max_bytes
            );
        }
        self.bytes += copied;
        out.sync_all()
            .with_context(|| format!("{}: cannot write (fsync)", path.display()))
    }
}

/// Extracts `archive` (of `kind`) into folder `dest`, replacing it.
pub fn extract(archive: &Path, kind: Kind, dest: &Path, limits: Limits) -> Result<()> {
    let tmp = ftkit_core::io::AtomicDir::create(dest)?;
    let mut w = Writer {
        dir: tmp.path(),
        limits,
        entries: 0,
        bytes: 0,
    };
    let shown = archive.display();
    let file =
        BufReader::new(File::open(archive).with_context(|| format!("{shown}: cannot open"))?);
    match kind {
        Kind::Zip => zip(file, &mut w),
        Kind::Tar => tar(file, &mut w),
        Kind::TarGz => tar(flate2::read::GzDecoder::new(file), &mut w),
        Kind::TarZst => tar(zstd::Decoder::with_buffer(file)?, &mut w),
    }
    .with_context(|| format!("{shown}: cannot extract"))?;
    tmp.commit()
}

fn tar(reader: impl Read, w: &mut Writer) -> Result<()> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => w.file(&name, &mut entry)?,
            EntryType::Directory => w.dir(&name)?,
            EntryType::XGlobalHeader | EntryType::XHeader => {}
            EntryType::Symlink | EntryType::Link => {
                bail!("entry {name:?} is a link (refused: links could point outside the folder)")
            }
            other => bail!("entry {name:?} is a special file ({other:?}): refused"),
        }
    }
    Ok(())
}

fn zip(reader: impl Read + std::io::Seek, w: &mut Writer) -> Result<()> {
    let mut archive = zip::ZipArchive::new(reader)?;
    if archive.len() as u64 > w.limits.max_entries {
        bail!(
            "{} entries, more than {} (--max-entries): refused as an archive bomb",
            archive.len(),
            w.limits.max_entries
        );
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.name()?.into_owned();
        if entry.is_symlink() {
            bail!("entry {name:?} is a link (refused: links could point outside the folder)");
        }
        if entry.is_dir() {
            w.dir(&name)?;
        } else {
            w.file(&name, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_paths() {
        assert_eq!(kind("a.tar.gz"), Some((Kind::TarGz, "a")));
        assert_eq!(kind("a.TGZ"), Some((Kind::TarGz, "a")));
        assert_eq!(kind("a.tar.zst"), Some((Kind::TarZst, "a")));
        assert_eq!(kind("a.zip"), Some((Kind::Zip, "a")));
        assert_eq!(kind("a.jsonl.gz"), None);
        assert_eq!(kind(".zip"), None);
        assert!(entry_path("../x").is_err());
        assert!(entry_path("/etc/passwd").is_err());
        assert!(entry_path("a/../../x").is_err());
        assert_eq!(entry_path("./a/b").ok(), Some(PathBuf::from("a/b")));
    }
}
