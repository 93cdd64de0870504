//! One source file → document records (JSONL bytes), plus what was skipped or rejected on the way.
//!
//! A document record is `{"id","text","source",["source_line","record_index",]"meta":{...}}`:
//! - `id`: `ftkit_core::stable_id(&[text])`, a hash of the text alone (equal texts share an id);
//! - `source`: the file's path as given on the command line or found by the walk;
//! - `source_line` (1-based line where the record starts) and `record_index` (0-based position among
//!   the file's records, counting skipped ones): only for records of JSON, JSONL and CSV sources;
//!   a Parquet row ([`crate::parquet`]) has `record_index` alone, its row number;
//! - `meta`: every field of the record not consumed by the text, raw and in input order (CSV values are
//!   strings); `{}` for text and HTML documents.

use crate::format::{BINARY_SNIFF, Kind, looks_binary};
use crate::html;
use crate::images::ImageOpts;
use crate::linecap::LineCap;
use crate::template::TextSpec;
use anyhow::{Result, anyhow};
use ftkit_core::OnError;
use ftkit_core::engine::{Failure, map_part};
use ftkit_core::jsonl::{Loc, RawRecord, write_json_str};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::BufRead;

/// Settings shared by every source.
#[derive(Debug)]
pub struct Opts {
    pub text: TextSpec,
    pub max_records: Option<u64>,
    pub on_error: OnError,
    /// Forces a kind for every source (`--format`); else the extension decides (stdin: text).
    pub kind: Option<Kind>,
    /// Bytes one source read whole may hold, on disk and decompressed (`--max-file-size`).
    pub max_file_size: u64,
    /// `--extract-images DIR` [`--images-only`].
    pub images: Option<ImageOpts>,
}

/// Why a whole file was skipped (a warning, not an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    Binary,
    InvalidUtf8,
    UnknownType,
    Unreadable,
    /// A JSON file that does not parse, with `--on-error skip`.
    Malformed,
    /// A FIFO, socket or device.
    NotRegular,
    /// A symbolic link out of the walked folder (without `--follow-links`).
    OutsideLink,
    /// Over `--max-file-size`.
    TooBig,
    /// A PDF that needs a password.
    Encrypted,
    /// A PDF without a text layer (a scan).
    NoText,
    /// A PDF, DOCX, PPTX or image file that does not parse (or a zip bomb).
    Corrupt,
    /// A standalone image without `--extract-images`.
    Image,
}

impl Skip {
    pub const ALL: [Skip; 12] = [
        Skip::Binary,
        Skip::InvalidUtf8,
        Skip::UnknownType,
        Skip::Unreadable,
        Skip::Malformed,
        Skip::NotRegular,
        Skip::OutsideLink,
        Skip::TooBig,
        Skip::Encrypted,
        Skip::NoText,
        Skip::Corrupt,
        Skip::Image,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Skip::Binary => "binary",
            Skip::InvalidUtf8 => "invalid UTF-8",
            Skip::UnknownType => "unknown type",
            Skip::Unreadable => "unreadable",
            Skip::Malformed => "malformed JSON",
            Skip::NotRegular => "not regular",
            Skip::OutsideLink => "outside the folder",
            Skip::TooBig => "too big",
            Skip::Encrypted => "encrypted",
            Skip::NoText => "no text layer",
            Skip::Corrupt => "corrupt",
            Skip::Image => "image (see --extract-images)",
        }
    }

    /// Skips of a document the user meant to read (not a stray file of the walk): each also gets a
    /// `--rejects` record, `{"source","skipped","error"}`.
    pub fn is_reject(self) -> bool {
        matches!(self, Skip::Encrypted | Skip::NoText | Skip::Corrupt)
    }
}

/// Everything one source produced.
#[derive(Debug, Default)]
pub struct FileOut {
    pub bytes: Vec<u8>,
    pub docs: u64,
    /// Image records written.
    pub images: u64,
    /// Embedded images in formats not extracted (EMF, JBIG2, ...), or whose header does not read.
    pub images_skipped: u64,
    pub empty: u64,
    pub skipped: Option<(Skip, String)>,
    /// Records rejected, in order: `at` is the offset in `bytes` where the output stood when the
    /// record was met, `raw` its input text verbatim. With `--on-error fail` the last one ends the run.
    pub rejects: Vec<Failure>,
    /// An error that ends the run after `bytes[..at]` is written (a file that cannot be read).
    pub fatal: Option<(usize, anyhow::Error)>,
}

impl FileOut {
    pub(crate) fn skip(reason: Skip, message: impl Into<String>) -> Self {
        Self {
            skipped: Some((reason, message.into())),
            ..Self::default()
        }
    }

    /// Records a bad record; true when the source must stop here (`--on-error fail`).
    pub(crate) fn reject(
        &mut self,
        opts: &Opts,
        line: u64,
        raw: &[u8],
        error: anyhow::Error,
    ) -> bool {
        self.rejects.push(Failure {
            at: self.bytes.len(),
            line,
            raw: raw.to_vec(),
            error,
        });
        opts.on_error == OnError::Fail
    }

    pub(crate) fn full(&self, opts: &Opts) -> bool {
        opts.max_records.is_some_and(|max| self.docs >= max)
    }
}

/// Lineage of a record inside its source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    /// 1-based; 0 for a Parquet row, which has no line (no `source_line` is written).
    pub(crate) line: u64,
    pub(crate) index: u64,
}

/// Output bytes a streaming conversion holds before handing them to its flush callback.
const FLUSH_BYTES: usize = 4 << 20;

/// Called with the output so far; it writes and clears `bytes` and `rejects`. An error ends the source.
pub type Flush<'f> = &'f mut dyn FnMut(&mut FileOut) -> Result<()>;

/// The kind `source` is read as (`None`: unknown extension, the file is skipped).
pub fn kind_of(source: &str, opts: &Opts) -> Option<Kind> {
    match opts.kind {
        Some(k) => Some(k),
        None if source == "-" => Some(Kind::Text),
        None => Kind::from_path(std::path::Path::new(source)),
    }
}

/// Reads and converts one source (a path or `-`), keeping all its output in memory.
pub fn process(source: &str, opts: &Opts) -> FileOut {
    let mut keep = |_: &mut FileOut| Ok(());
    process_streaming(source, opts, &mut keep)
}

/// Reads and converts one source; `flush` receives the output every few MiB (JSONL is read as a
/// stream, so a `--max-records` cap stops reading early). Whatever is left is returned.
pub fn process_streaming(source: &str, opts: &Opts, flush: Flush<'_>) -> FileOut {
    let shown = if source == "-" { "<stdin>" } else { source };
    let Some(kind) = kind_of(source, opts) else {
        return FileOut::skip(Skip::UnknownType, "unknown file type; see --format");
    };
    // A file that cannot be opened or decompressed, before anything of it was written: skipped.
    let unreadable = |e: anyhow::Error| FileOut::skip(Skip::Unreadable, e.root_cause().to_string());
    if kind == Kind::Parquet {
        return crate::parquet::process(source, shown, opts, flush);
    }
    if kind == Kind::Jsonl {
        let reader = match open_jsonl(source, opts) {
            Ok(r) => r,
            Err(skipped) => return *skipped,
        };
        let (part, error) = map_part(
            shown,
            reader,
            opts.on_error,
            opts.max_records,
            jsonl_line(shown, opts),
        );
        let ok = part.lines - part.failures.len() as u64;
        return FileOut {
            fatal: error.map(|e| (part.bytes.len(), e)),
            bytes: part.bytes,
            docs: part.written,
            empty: ok - part.written,
            rejects: part.failures,
            ..FileOut::default()
        };
    }
    let bytes = match read_whole(source, opts.max_file_size, !kind.is_binary()) {
        Ok(Ok(b)) => b,
        Ok(Err(skipped)) => return skipped,
        Err(e) => return unreadable(e),
    };
    let mut out = FileOut::default();
    match kind {
        Kind::Pdf | Kind::Docx | Kind::Pptx | Kind::Image => {
            if let Err(e) = crate::paged::convert(&mut out, shown, kind, &bytes, opts) {
                out.fatal = Some((0, e));
            }
        }
        Kind::Csv { delimiter } => csv(&mut out, shown, &bytes, delimiter, opts, flush),
        _ => {
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
                Err(e) => {
                    let msg = format!("invalid UTF-8 at byte {}", e.valid_up_to());
                    return FileOut::skip(Skip::InvalidUtf8, msg);
                }
            };
            match kind {
                Kind::Html => match html::to_text(text) {
                    Ok(t) => emit(&mut out, shown, &t, None, &[]),
                    Err(e) => out.fatal = Some((0, e.context(shown.to_string()))),
                },
                Kind::Json => json(&mut out, shown, text, opts),
                _ => emit(&mut out, shown, text, None, &[]),
            }
        }
    }
    out
}

/// Opens a JSONL source as a stream of lines capped at `--max-file-size` each, after looking at
/// its first bytes; a source that cannot be opened or is binary comes back as a skipped [`FileOut`].
pub fn open_jsonl(
    source: &str,
    opts: &Opts,
) -> std::result::Result<Box<dyn BufRead + Send>, Box<FileOut>> {
    let unreadable =
        |e: anyhow::Error| Box::new(FileOut::skip(Skip::Unreadable, e.root_cause().to_string()));
    let mut input = ftkit_core::io::open_input(source).map_err(unreadable)?;
    match input.reader.fill_buf() {
        Ok(head) if looks_binary(head) => Err(Box::new(FileOut::skip(
            Skip::Binary,
            "binary: a NUL byte in the first 8 KiB",
        ))),
        Ok(_) => Ok(Box::new(LineCap::new(input.reader, opts.max_file_size))),
        Err(e) => Err(unreadable(anyhow::Error::new(e))),
    }
}

/// Reads a source that is converted whole, after looking at its first bytes: a binary file is
/// skipped having read 8 KiB, one over `max` bytes (on disk, or once decompressed) having read at
/// most `max` bytes. A FIFO or device never gets here (the walk skips them).
fn read_whole(
    source: &str,
    max: u64,
    sniff: bool,
) -> Result<std::result::Result<Vec<u8>, FileOut>> {
    use std::io::Read;
    let mut input = ftkit_core::io::open_input(source)?;
    let mut bytes = Vec::new();
    (&mut input.reader)
        .take(BINARY_SNIFF as u64)
        .read_to_end(&mut bytes)?;
    if sniff && looks_binary(&bytes) {
        return Ok(Err(FileOut::skip(
            Skip::Binary,
            "binary: a NUL byte in the first 8 KiB",
        )));
    }
    let too_big = |size: String| {
        Ok(Err(FileOut::skip(
            Skip::TooBig,
            format!("too big: {size} over --max-file-size ({max} bytes)"),
        )))
    };
    if source != "-" {
        let on_disk = std::fs::metadata(source)?.len();
        if on_disk > max {
            return too_big(format!("{on_disk} bytes"));
        }
    }
    // One byte more than allowed tells a file of exactly `max` bytes from a bigger one.
    input
        .reader
        .take(max.saturating_add(1).saturating_sub(bytes.len() as u64))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return too_big("the decompressed text".to_string());
    }
    Ok(Ok(bytes))
}

/// Hands the output to `flush` once it is big; false when the source must stop.
pub(crate) fn maybe_flush(out: &mut FileOut, flush: Flush<'_>) -> bool {
    if out.bytes.len() < FLUSH_BYTES {
        return true;
    }
    match flush(out) {
        Ok(()) => true,
        Err(e) => {
            out.fatal = Some((out.bytes.len(), e));
            false
        }
    }
}

/// Appends one document record (or counts an empty text).
fn emit(out: &mut FileOut, source: &str, text: &str, at: Option<At>, meta: &[(&str, &str)]) {
    if write_doc(&mut out.bytes, source, text, at, meta) {
        out.docs += 1;
    } else {
        out.empty += 1;
    }
}

/// Appends one document record to `buf`; false (nothing written) for an empty text.
fn write_doc(
    buf: &mut Vec<u8>,
    source: &str,
    text: &str,
    at: Option<At>,
    meta: &[(&str, &str)],
) -> bool {
    if text.trim().is_empty() {
        return false;
    }
    let id = ftkit_core::stable_id(&[text]);
    buf.extend_from_slice(b"{\"id\":\"");
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(b"\",\"text\":");
    write_json_str(buf, text);
    buf.extend_from_slice(b",\"source\":");
    write_json_str(buf, source);
    if let Some(at) = at {
        use std::io::Write;
        if at.line > 0 {
            let _ = write!(buf, ",\"source_line\":{}", at.line);
        }
        let _ = write!(buf, ",\"record_index\":{}", at.index);
    }
    // Meta values are raw JSON texts already validated by the parser (or written by write_json_str).
    buf.extend_from_slice(b",\"meta\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_json_str(buf, k);
        buf.push(b':');
        push_compact(buf, v.as_bytes());
    }
    buf.extend_from_slice(b"}}\n");
    true
}

/// Appends valid JSON text without the whitespace between tokens (a pretty-printed value in a
/// `.json` file must not carry its newlines into a JSONL line); order and spelling are kept.
pub fn push_compact(buf: &mut Vec<u8>, json: &[u8]) {
    if !json
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        buf.extend_from_slice(json);
        return;
    }
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            buf.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            buf.push(b);
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            buf.push(b);
        }
    }
}

/// A record → a document, or the reason it cannot be one.
pub(crate) fn record(
    out: &mut FileOut,
    source: &str,
    rec: &RawRecord<'_>,
    at: At,
    opts: &Opts,
) -> Result<()> {
    if record_doc(&mut out.bytes, source, rec, at, opts)? == 1 {
        out.docs += 1;
    } else {
        out.empty += 1;
    }
    Ok(())
}

/// A record → a document appended to `buf` (1 written, 0 for an empty text), or the reason it
/// cannot be one.
fn record_doc(
    buf: &mut Vec<u8>,
    source: &str,
    rec: &RawRecord<'_>,
    at: At,
    opts: &Opts,
) -> Result<u64> {
    let text = opts.text.render(rec)?;
    let consumed = opts.text.consumed(rec);
    let meta: Vec<(&str, &str)> = rec
        .fields
        .iter()
        .filter(|(k, _)| !consumed.contains(&k.as_ref()))
        .map(|(k, v)| (k.as_ref(), v.get()))
        .collect();
    Ok(u64::from(write_doc(buf, source, &text, Some(at), &meta)))
}

/// The per-line function of a JSONL source for the engine: one line → a document in `buf`
/// (`index`: the line's position among the source's non-blank lines, its `record_index`).
pub fn jsonl_line<'a>(
    source: &'a str,
    opts: &'a Opts,
) -> impl Fn(Loc, u64, &str, &mut Vec<u8>) -> Result<u64> + Sync + 'a {
    move |loc, index, line, buf| {
        let at = At {
            line: loc.line,
            index,
        };
        record_doc(buf, source, &RawRecord::parse(line)?, at, opts)
    }
}

fn json(out: &mut FileOut, source: &str, text: &str, opts: &Opts) {
    let first = text.trim_start().as_bytes().first().copied();
    let items: Vec<&RawValue> = if first == Some(b'[') {
        match serde_json::from_str(text) {
            Ok(items) => items,
            Err(e) => return malformed(out, opts, e),
        }
    } else {
        match serde_json::from_str::<&RawValue>(text) {
            Ok(one) => vec![one],
            Err(e) => return malformed(out, opts, e),
        }
    };
    let base = text.as_ptr() as usize;
    // Line numbers by counting newlines up to each record's first byte, each byte counted once.
    let (mut seen, mut line) = (0usize, 1u64);
    for (index, item) in items.into_iter().enumerate() {
        if out.full(opts) {
            break;
        }
        let offset = (item.get().as_ptr() as usize)
            .saturating_sub(base)
            .clamp(seen, text.len());
        line += memchr::memchr_iter(b'\n', &text.as_bytes()[seen..offset]).count() as u64;
        seen = offset;
        let at = At {
            line,
            index: index as u64,
        };
        let outcome = RawRecord::parse(item.get())
            .map_err(|_| anyhow!("record {index} is not a JSON object"))
            .and_then(|rec| record(out, source, &rec, at, opts));
        if let Err(e) = outcome
            && out.reject(opts, line, item.get().as_bytes(), e)
        {
            return;
        }
    }
}

/// A `.json` file that does not parse: an error at its line (`--on-error skip`: the file is skipped).
fn malformed(out: &mut FileOut, opts: &Opts, e: serde_json::Error) {
    let msg = format!("invalid JSON: {e}");
    match opts.on_error {
        OnError::Fail => out.rejects.push(Failure {
            at: 0,
            line: e.line() as u64,
            raw: Vec::new(),
            error: anyhow!(msg),
        }),
        OnError::Skip => out.skipped = Some((Skip::Malformed, format!("line {}: {msg}", e.line()))),
    }
}

fn csv(
    out: &mut FileOut,
    source: &str,
    bytes: &[u8],
    delimiter: u8,
    opts: &Opts,
    flush: Flush<'_>,
) {
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let headers = match reader.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            out.rejects.push(Failure {
                at: 0,
                line: 1,
                raw: Vec::new(),
                error: anyhow!("invalid CSV header: {e}"),
            });
            if opts.on_error == OnError::Skip {
                out.rejects.clear();
                out.skipped = Some((Skip::Malformed, format!("invalid CSV header: {e}")));
            }
            return;
        }
    };
    let mut names = Vec::with_capacity(headers.len());
    for h in &headers {
        match std::str::from_utf8(h) {
            Ok(n) => names.push(n.strip_prefix('\u{feff}').unwrap_or(n).to_string()),
            Err(e) => {
                *out = FileOut::skip(
                    Skip::InvalidUtf8,
                    format!(
                        "invalid UTF-8 in the CSV header at byte {}",
                        e.valid_up_to()
                    ),
                );
                return;
            }
        }
    }
    let mut row = ::csv::ByteRecord::new();
    let mut index = 0;
    // Line numbers by counting newlines up to each row's first byte, each byte counted once: the
    // csv crate's own line count is one short after a CRLF line end.
    let (mut seen, mut line) = (0usize, 1u64);
    while !out.full(opts) && maybe_flush(out, flush) {
        let start = reader.position().byte();
        let more = reader.read_byte_record(&mut row);
        let end = (reader.position().byte() as usize).min(bytes.len());
        let begin = (row.position().map_or(start, |p| p.byte()) as usize).min(end);
        // A row's position may sit on the line end before it (the `\n` of a `\r\n`).
        let begin = begin
            + bytes[begin..end]
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
        let begin = begin.clamp(seen, end.max(seen));
        line += memchr::memchr_iter(b'\n', &bytes[seen..begin]).count() as u64;
        seen = begin;
        let raw = trim_eol(&bytes[begin.min(end)..end]);
        let fields = match more {
            Ok(false) => break,
            Ok(true) => csv_fields(&names, &row),
            Err(e) => Err(anyhow!("invalid CSV row: {}", csv_error(&e))),
        };
        let at = At { line, index };
        index += 1;
        let outcome = fields.and_then(|values| {
            let fields = names
                .iter()
                .zip(&values)
                .map(|(k, v)| Ok((Cow::Borrowed(k.as_str()), serde_json::from_str(v)?)))
                .collect::<Result<_>>()?;
            record(out, source, &RawRecord { fields }, at, opts)
        });
        if let Err(e) = outcome
            && out.reject(opts, line, raw, e)
        {
            return;
        }
    }
}

/// A row's values as JSON string literals, in header order.
fn csv_fields(names: &[String], row: &::csv::ByteRecord) -> Result<Vec<String>> {
    if row.len() != names.len() {
        return Err(anyhow!(
            "row has {} fields, the header {}",
            row.len(),
            names.len()
        ));
    }
    let mut fields = Vec::with_capacity(names.len());
    for (name, value) in names.iter().zip(row) {
        let value = std::str::from_utf8(value).map_err(|e| {
            anyhow!(
                "field \"{name}\": invalid UTF-8 at byte {}",
                e.valid_up_to()
            )
        })?;
        let mut json = Vec::with_capacity(value.len() + 2);
        write_json_str(&mut json, value);
        fields.push(String::from_utf8(json)?);
    }
    Ok(fields)
}

fn csv_error(e: &::csv::Error) -> String {
    match e.kind() {
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("row has {len} fields, the header {expected_len}")
        }
        _ => e.to_string(),
    }
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(on_error: OnError) -> Opts {
        Opts {
            text: TextSpec::Field("text".into()),
            max_records: None,
            on_error,
            kind: None,
            max_file_size: u64::MAX,
            images: None,
        }
    }

    fn docs(out: &FileOut) -> Vec<serde_json::Value> {
        out.bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap_or(serde_json::Value::Null))
            .collect()
    }

    proptest! {
        #[test]
        fn a_text_file_is_one_document_with_its_exact_text(text in "\\PC*[a-z]\\PC*") {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("doc.md");
            std::fs::write(&path, &text)?;
            let source = path.display().to_string();
            let out = process(&source, &opts(OnError::Fail));
            let d = docs(&out);
            prop_assert_eq!(d.len(), 1);
            prop_assert_eq!(d[0]["text"].as_str(), Some(text.as_str()));
            let id = ftkit_core::stable_id(&[&text]);
            prop_assert_eq!(d[0]["id"].as_str(), Some(id.as_str()));
            prop_assert_eq!(d[0]["source"].as_str(), Some(source.as_str()));
            prop_assert_eq!(out.bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one JSONL line");
        }

        #[test]
        fn jsonl_records_keep_every_other_field_in_meta(
            rows in proptest::collection::vec(("\\PC*[a-z]\\PC*", proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..4)), 1..20)
        ) {
            let mut input = String::new();
            for (text, extra) in &rows {
                let mut obj = serde_json::Map::new();
                for (k, v) in extra {
                    obj.insert(format!("m_{k}"), (*v).into());
                }
                obj.insert("text".into(), text.clone().into());
                input.push_str(&serde_json::to_string_pretty(&serde_json::Value::Object(obj.clone()))?.replace('\n', " "));
                input.push('\n');
            }
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &input)?;
            let out = process(&path.display().to_string(), &opts(OnError::Fail));
            prop_assert!(out.rejects.is_empty());
            let d = docs(&out);
            prop_assert_eq!(d.len(), rows.len());
            for (i, (doc, (text, extra))) in d.iter().zip(&rows).enumerate() {
                prop_assert_eq!(doc["text"].as_str(), Some(text.as_str()));
                prop_assert_eq!(doc["record_index"].as_u64(), Some(i as u64));
                prop_assert_eq!(doc["source_line"].as_u64(), Some(i as u64 + 1));
                let meta = doc["meta"].as_object().cloned().unwrap_or_default();
                prop_assert_eq!(meta.len(), extra.len());
                for (k, v) in extra {
                    prop_assert_eq!(meta.get(&format!("m_{k}")).and_then(|x| x.as_i64()), Some(*v as i64));
                }
            }
        }

        #[test]
        fn compacting_keeps_the_value_and_drops_newlines(v in arb_json()) {
            let pretty = serde_json::to_string_pretty(&v)?;
            let mut buf = Vec::new();
            push_compact(&mut buf, pretty.as_bytes());
            prop_assert!(!buf.contains(&b'\n'));
            let back: serde_json::Value = serde_json::from_slice(&buf)?;
            prop_assert_eq!(back, v);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(Into::into),
            any::<i64>().prop_map(Into::into),
            "[ \\n\\t\"\\\\a-z]*".prop_map(Into::into),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Into::into),
                proptest::collection::btree_map("[ a-z\"]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_record() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for (name, body) in [
            ("a.jsonl", "\u{feff}{\"text\":\"x\"}\n"),
            ("a.json", "\u{feff}[{\"text\":\"x\"}]"),
            ("a.csv", "\u{feff}text\nx\n"),
            ("a.md", "\u{feff}x"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, body)?;
            let out = process(&path.display().to_string(), &opts(OnError::Fail));
            assert!(out.rejects.is_empty(), "{name}: {:?}", out.rejects);
            assert_eq!(docs(&out)[0]["text"], "x", "{name}");
        }
        Ok(())
    }

    #[test]
    fn fail_stops_at_the_first_bad_record_and_skip_goes_on() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"text\":\"a\"}\n{\"x\":1}\nnot json\n{\"text\":\"d\"}\n",
        )?;
        let source = path.display().to_string();
        let out = process(&source, &opts(OnError::Fail));
        assert_eq!((out.docs, out.rejects.len()), (1, 1));
        assert_eq!(
            (out.rejects[0].line, out.rejects[0].at),
            (2, out.bytes.len())
        );
        let out = process(&source, &opts(OnError::Skip));
        assert_eq!((out.docs, out.rejects.len()), (2, 2));
        assert_eq!(out.rejects[1].raw, b"not json");
        assert_eq!(
            out.rejects[1].error.to_string().split(':').next(),
            Some("invalid JSON object")
        );
        Ok(())
    }
}
