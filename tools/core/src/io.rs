//! Inputs and outputs.
//!
//! An input is a path or `-` (stdin); zstd is detected by its magic bytes, so `.zst` files and
//! compressed pipes read the same way. An output is stdout or a file written to a temporary name
//! beside its destination and renamed into place by [`Output::finish`]: a failed run never leaves a
//! half-written file, and never clobbers the previous one.

use crate::temp::{self, Live};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
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
    let reader = sniff_zstd(raw)
        .and_then(skip_bom)
        .with_context(|| format!("{name}: cannot read"))?;
    Ok(Input { name, reader })
}

/// The UTF-8 byte order mark some editors put at the start of a text file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Drops a UTF-8 byte order mark at the start of `reader` (JSON text must not start with one, but
/// editors on Windows write it; ignoring it is what RFC 8259 allows a parser to do).
pub fn skip_bom(mut reader: Box<dyn BufRead + Send>) -> io::Result<Box<dyn BufRead + Send>> {
    let head = read_head(&mut reader, BOM.len())?;
    if head == BOM {
        return Ok(reader);
    }
    Ok(Box::new(Cursor::new(head).chain(reader)))
}

/// Reads until `n` bytes or EOF (a pipe may deliver fewer per read).
fn read_head(raw: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match raw.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok(head)
}

/// Wraps `raw` in a zstd decoder when it starts with the zstd magic number.
pub fn sniff_zstd(mut raw: Box<dyn Read + Send>) -> io::Result<Box<dyn BufRead + Send>> {
    // Read the magic number's length, then put it back in front.
    let head = read_head(&mut raw, ZSTD_MAGIC.len())?;
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
            Sink::Stdout(mut w) => w
                .flush()
                .inspect_err(note_stdout_error)
                .context("cannot write to stdout"),
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
            Sink::Stdout(w) => w.write(buf).inspect_err(note_stdout_error),
            Sink::File(_, Some(enc)) => enc.write(buf),
            Sink::File(f, None) => f.writer.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.write_all(buf).inspect_err(note_stdout_error),
            Sink::File(_, Some(enc)) => enc.write_all(buf),
            Sink::File(f, None) => f.writer.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.flush().inspect_err(note_stdout_error),
            Sink::File(_, Some(enc)) => enc.flush(),
            Sink::File(f, None) => f.writer.flush(),
        }
    }
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Remembers that a write to stdout found the pipe closed by its reader.
fn note_stdout_error(e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// True once a write to stdout through [`Output`] found the pipe closed (`| head`): only then is a
/// broken pipe the reader's choice to stop, and not a lost socket or a closed `--rejects` FIFO.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A file written under a temporary name in the destination's folder, renamed on [`AtomicFile::commit`].
/// Dropped without a commit, the temporary file is removed and the destination is untouched; on
/// SIGINT/SIGTERM it is removed too, and a later run of the same destination removes one left by a
/// killed writer ([`crate::temp`]). The file gets the mode a shell's `> file` gives (0666 less the
/// umask), and its data reach the disk before the rename: a failed fsync is an error.
///
/// A destination that exists and is neither a regular file nor a folder (`/dev/null`, a FIFO,
/// `/dev/stderr`, a shell's `>(...)`) is written in place: renaming over it would replace the
/// device with a file (as root, `/dev/null` itself), and a stream has no half-written state.
pub struct AtomicFile {
    path: PathBuf,
    /// `None`: a device or pipe written in place.
    temp: Option<(tempfile::NamedTempFile, Live)>,
    pub writer: io::BufWriter<File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("{}: cannot open for writing", path.display()))?;
            return Ok(Self {
                path: path.to_path_buf(),
                temp: None,
                writer: io::BufWriter::with_capacity(READ_BUF, file),
            });
        }
        // The kernel applies the umask to this mode, as for `> file`.
        let (temp, live) = temporary(path, 0o666, |b, dir| b.tempfile_in(dir), |t| t.path())?;
        let writer = io::BufWriter::with_capacity(READ_BUF, temp.reopen()?);
        Ok(Self {
            path: path.to_path_buf(),
            temp: Some((temp, live)),
            writer,
        })
    }

    /// A second handle on the file being written (for writers that wrap it, like zstd).
    fn file(&self) -> io::Result<File> {
        match &self.temp {
            Some((temp, _)) => temp.reopen(),
            None => self.writer.get_ref().try_clone(),
        }
    }

    pub fn commit(mut self) -> Result<()> {
        let shown = self.path.display().to_string();
        self.writer
            .flush()
            .with_context(|| format!("{shown}: cannot write"))?;
        let Some((temp, _live)) = self.temp.take() else {
            return Ok(());
        };
        temp.as_file()
            .sync_all()
            .with_context(|| format!("{shown}: cannot write (fsync)"))?;
        temp.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(|| format!("{shown}: cannot rename into place"))?;
        sync_folder(dir_and_name(&self.path)?.0)
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

/// A folder built under a temporary name beside its destination and moved into place by
/// [`AtomicDir::commit`] (or its entries by [`AtomicDir::commit_into`]); removed when dropped
/// uncommitted, and on SIGINT/SIGTERM like an [`AtomicFile`]. Files written into it should be
/// written with [`write_atomic`] or [`AtomicFile`], which fsync them.
pub struct AtomicDir {
    dest: PathBuf,
    temp: Option<tempfile::TempDir>,
    _live: Live,
}

impl AtomicDir {
    pub fn create(dest: &Path) -> Result<Self> {
        let (temp, live) = temporary(dest, 0o777, |b, dir| b.tempdir_in(dir), |t| t.path())?;
        Ok(Self {
            dest: dest.to_path_buf(),
            temp: Some(temp),
            _live: live,
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.temp.as_ref().map_or(Path::new(""), |t| t.path())
    }

    /// Replaces the destination folder (removed first when it exists) with this one.
    pub fn commit(mut self) -> Result<()> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        let shown = self.dest.display().to_string();
        if self.dest.exists() {
            std::fs::remove_dir_all(&self.dest)
                .with_context(|| format!("{shown}: cannot replace"))?;
        }
        let path = temp.keep();
        std::fs::rename(&path, &self.dest)
            .with_context(|| format!("{shown}: cannot rename into place"))?;
        sync_folder(dir_and_name(&self.dest)?.0)
    }

    /// Moves every entry into folder `dir` (created), replacing files of the same names, and
    /// removes the temporary folder: for files that join others in an existing folder.
    pub fn commit_into(mut self, dir: &Path) -> Result<()> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        for entry in std::fs::read_dir(temp.path())? {
            let entry = entry?;
            let to = dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("{}: cannot rename into place", to.display()))?;
        }
        sync_folder(dir)?;
        drop(temp);
        Ok(())
    }
}

/// Creates the temporary of `dest` (`.NAME.<pid>.<random>.tmp` in its folder, `mode` less the umask)
/// with `make`, after removing stale ones, registered for removal on a signal.
fn temporary<T>(
    dest: &Path,
    mode: u32,
    make: impl FnOnce(&tempfile::Builder, &Path) -> io::Result<T>,
    path_of: impl Fn(&T) -> &Path,
) -> Result<(T, Live)> {
    let (dir, name) = dir_and_name(dest)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    temp::remove_stale(dir, &name);
    let prefix = temp::prefix(&name);
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(temp::SUFFIX)
        .permissions(std::fs::Permissions::from_mode(mode));
    Live::create(|| make(&builder, dir), path_of)
        .with_context(|| format!("{}: cannot create", dest.display()))
}

/// The folder (`.` for a bare name) and the file name of a destination.
fn dir_and_name(path: &Path) -> Result<(&Path, String)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        anyhow::bail!("{}: not a file name", path.display());
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// Makes a rename in folder `dir` durable. Filesystems that cannot fsync a folder say so with
/// EINVAL; that is not an error of ours.
fn sync_folder(dir: &Path) -> Result<()> {
    let synced = File::open(dir).and_then(|d| d.sync_all());
    match synced {
        Err(e) if e.kind() != io::ErrorKind::InvalidInput => {
            Err(e).with_context(|| format!("{}: cannot write (fsync)", dir.display()))
        }
        _ => Ok(()),
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
    fn a_fifo_is_written_in_place_and_stays_a_fifo() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
        assert!(made.success(), "mkfifo failed");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo))
        };
        write_atomic(&fifo, b"{\"a\":1}\n")?;
        assert_eq!(reader.join().expect("reader")?, b"{\"a\":1}\n");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo)?.file_type().is_fifo());
        // Nothing else was created beside it.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

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
