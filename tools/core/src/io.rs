//! Inputs and outputs.
//!
//! An input is a path or `-` (stdin); zstd is detected by its magic bytes, so `.zst` files and
//! compressed pipes read the same way. An output is stdout or a file written to a temporary name
//! beside its destination and renamed into place by [`Output::finish`]: a failed run never leaves a
//! half-written file, and never clobbers the previous one.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read, Write};
use std::path::{Path, PathBuf};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const READ_BUF: usize = 1 << 20;

/// One opened input stream with the name used in messages (`-` is shown as `<stdin>`).
pub struct Input {
    pub name: String,
    pub reader: Box<dyn BufRead + Send>,
}

/// Opens `path` (`-` = stdin), transparently decompressing zstd.
pub fn open_input(path: &str) -> Result<Input> {
    let (name, raw): (String, Box<dyn Read + Send>) = if path == "-" {
        ("<stdin>".into(), Box::new(io::stdin()))
    } else {
        let file = File::open(path).with_context(|| format!("{path}: cannot open"))?;
        (path.to_string(), Box::new(file))
    };
    let reader = sniff_zstd(raw).with_context(|| format!("{name}: cannot read"))?;
    Ok(Input { name, reader })
}

/// Wraps `raw` in a zstd decoder when it starts with the zstd magic number.
pub fn sniff_zstd(mut raw: Box<dyn Read + Send>) -> io::Result<Box<dyn BufRead + Send>> {
    // Read until 4 bytes or EOF (a pipe may deliver fewer per read), then put them back in front.
    let mut head = Vec::with_capacity(4);
    while head.len() < 4 {
        let mut byte = [0u8; 4];
        let want = 4 - head.len();
        match raw.read(&mut byte[..want]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&byte[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let is_zstd = head == ZSTD_MAGIC;
    let chained: Chain<Cursor<Vec<u8>>, Box<dyn Read + Send>> = Cursor::new(head).chain(raw);
    if is_zstd {
        let decoder = zstd::stream::read::Decoder::new(chained)?;
        Ok(Box::new(BufReader::with_capacity(READ_BUF, decoder)))
    } else {
        Ok(Box::new(BufReader::with_capacity(READ_BUF, chained)))
    }
}

/// Reads a whole input (file, `-`, zstd or not) into memory.
pub fn read_all(path: &str) -> Result<Vec<u8>> {
    let mut input = open_input(path)?;
    let mut bytes = Vec::new();
    input
        .reader
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", input.name))?;
    Ok(bytes)
}

/// A destination: stdout, or a file that appears only when [`Output::finish`] succeeds.
pub struct Output {
    sink: Sink,
}

enum Sink {
    Stdout(io::BufWriter<io::Stdout>),
    File(
        AtomicFile,
        Option<zstd::stream::write::Encoder<'static, io::BufWriter<File>>>,
    ),
}

impl Output {
    /// `None` or `-` = stdout; a path ending in `.zst` is zstd-compressed.
    pub fn create(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Self::stdout()),
            Some(p) if p.as_os_str() == "-" => Ok(Self::stdout()),
            Some(p) => {
                let file = AtomicFile::create(p)?;
                let encoder = if p.extension().is_some_and(|e| e == "zst") {
                    let w = io::BufWriter::with_capacity(READ_BUF, file.file()?);
                    Some(zstd::stream::write::Encoder::new(w, 3)?)
                } else {
                    None
                };
                Ok(Self {
                    sink: Sink::File(file, encoder),
                })
            }
        }
    }

    pub fn stdout() -> Self {
        Self {
            sink: Sink::Stdout(io::BufWriter::with_capacity(1 << 16, io::stdout())),
        }
    }

    /// Flushes and, for a file, moves it into place.
    pub fn finish(self) -> Result<()> {
        match self.sink {
            Sink::Stdout(mut w) => w.flush().context("cannot write to stdout"),
            Sink::File(mut file, encoder) => {
                match encoder {
                    Some(enc) => {
                        let mut inner = enc.finish()?;
                        inner.flush()?;
                    }
                    None => file.writer.flush()?,
                }
                file.commit()
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Stdout(w) => w.write(buf),
            Sink::File(_, Some(enc)) => enc.write(buf),
            Sink::File(f, None) => f.writer.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.write_all(buf),
            Sink::File(_, Some(enc)) => enc.write_all(buf),
            Sink::File(f, None) => f.writer.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.flush(),
            Sink::File(_, Some(enc)) => enc.flush(),
            Sink::File(f, None) => f.writer.flush(),
        }
    }
}

/// A file written under a temporary name in the destination's folder, renamed on [`AtomicFile::commit`].
/// Dropped without a commit, the temporary file is removed and the destination is untouched.
pub struct AtomicFile {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
    pub writer: io::BufWriter<File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let writer = io::BufWriter::with_capacity(READ_BUF, temp.reopen()?);
        Ok(Self {
            path: path.to_path_buf(),
            temp,
            writer,
        })
    }

    /// A second handle on the temporary file (for writers that wrap it, like zstd).
    fn file(&self) -> io::Result<File> {
        self.temp.reopen()
    }

    pub fn commit(mut self) -> Result<()> {
        self.writer.flush()?;
        self.temp.as_file().sync_data().ok();
        self.temp
            .persist(&self.path)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot rename into place", self.path.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Writes `bytes` to `path` atomically (temp + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_is_sniffed_and_plain_passes() -> Result<()> {
        let plain = b"{\"a\":1}\n".to_vec();
        let packed = zstd::encode_all(&plain[..], 3)?;
        for bytes in [plain.clone(), packed] {
            let mut r = sniff_zstd(Box::new(Cursor::new(bytes)))?;
            let mut out = Vec::new();
            r.read_to_end(&mut out)?;
            assert_eq!(out, plain);
        }
        // Shorter than the magic number: still returned whole.
        let mut r = sniff_zstd(Box::new(Cursor::new(b"ab".to_vec())))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        assert_eq!(out, b"ab");
        Ok(())
    }

    #[test]
    fn atomic_file_appears_only_on_commit() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "old\n")?;
        {
            let mut f = AtomicFile::create(&path)?;
            f.write_all(b"new\n")?;
            // dropped without commit
        }
        assert_eq!(std::fs::read_to_string(&path)?, "old\n");
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            1,
            "temp file left behind"
        );
        let mut f = AtomicFile::create(&path)?;
        f.write_all(b"new\n")?;
        f.commit()?;
        assert_eq!(std::fs::read_to_string(&path)?, "new\n");
        Ok(())
    }

    #[test]
    fn zst_output_round_trips() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out.jsonl.zst");
        let mut out = Output::create(Some(&path))?;
        out.write_all(b"{\"x\":1}\n")?;
        out.finish()?;
        assert_eq!(read_all(path.to_str().unwrap_or_default())?, b"{\"x\":1}\n");
        Ok(())
    }
}
