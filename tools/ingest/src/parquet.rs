//! Parquet sources: one document per row, through the same record path as JSONL.
//!
//! Rows are read with the `parquet` crate's record API one row group at a time, page by page, so
//! memory holds one row group's pages and the output not yet flushed, never the whole file. Each
//! row becomes a JSON object (columns in schema order, nested structs, lists and maps as JSON, nulls
//! as `null`) and then a document exactly as a JSONL line would (`--text-field`, `--template`,
//! `meta`, `--max-records`). Its lineage is `record_index`, the 0-based row number in the file;
//! a Parquet row has no line, so there is no `source_line`, and messages name `path:ROW` with the
//! 1-based row number.
//!
//! A plain file is read in place (Parquet needs random access to its footer and column chunks);
//! stdin and `.zst` sources are first read whole into memory, within `--max-file-size`. For a plain
//! file `--max-file-size` caps each row group's uncompressed size as given in the footer (the unit
//! that is streamed, as a line is for JSONL): a bigger row group skips the file before anything is
//! written. Files that are not Parquet, or whose pages use a codec other than snappy or zstd, are
//! skipped with a warning, as unreadable.

use crate::extract::{At, FileOut, Flush, Opts, Skip, maybe_flush, record};
use anyhow::{Context, Result, anyhow};
use ftkit_core::jsonl::{RawRecord, write_json_str};
use parquet::basic::Compression;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use std::fs::File;
use std::io::Read;

/// The codecs this build decompresses, as shown in messages and `--help`.
pub const CODECS: &str = "uncompressed, snappy, zstd";

/// Rows in a Parquet file from its footer alone (core's, shared with ft-fetch's statistics).
pub use ftkit_core::parquet::row_count;

/// Reads and converts one Parquet source; `shown` is its name in records and messages.
pub(crate) fn process(source: &str, shown: &str, opts: &Opts, flush: Flush<'_>) -> FileOut {
    let unreadable = |e: anyhow::Error| FileOut::skip(Skip::Unreadable, format!("{e:#}"));
    match open(source, opts.max_file_size) {
        Ok(Opened::File(file)) => match SerializedFileReader::new(file) {
            Ok(reader) => rows(&reader, shown, opts, flush),
            Err(e) => unreadable(anyhow!("not a Parquet file: {e}")),
        },
        Ok(Opened::Memory(bytes)) => match SerializedFileReader::new(bytes) {
            Ok(reader) => rows(&reader, shown, opts, flush),
            Err(e) => unreadable(anyhow!("not a Parquet file: {e}")),
        },
        Ok(Opened::TooBig(message)) => FileOut::skip(Skip::TooBig, message),
        Err(e) => unreadable(e),
    }
}

enum Opened {
    File(File),
    Memory(bytes::Bytes),
    TooBig(String),
}

/// A plain file stays on disk; stdin and zstd-compressed files are read into memory (at most `max`
/// bytes, decompressed).
fn open(source: &str, max: u64) -> Result<Opened> {
    if source != "-" {
        let mut file = File::open(source).context("cannot open")?;
        let mut head = [0u8; 4];
        let zstd = file.read_exact(&mut head).is_ok() && head == [0x28, 0xb5, 0x2f, 0xfd];
        if !zstd {
            return Ok(Opened::File(file));
        }
    }
    let mut input = ftkit_core::io::open_input(source)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file of exactly `max` bytes from a bigger one.
    (&mut input.reader)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read")?;
    if bytes.len() as u64 > max {
        return Ok(Opened::TooBig(format!(
            "too big: a Parquet file read into memory (stdin or .zst) over --max-file-size ({max} bytes)"
        )));
    }
    Ok(Opened::Memory(bytes.into()))
}

/// Why the footer rules the file out before any row is read: a codec this build lacks, or a row
/// group over `--max-file-size`.
fn check_footer(meta: &ParquetMetaData, max: u64) -> Option<FileOut> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        for column in group.columns() {
            let codec = match column.compression() {
                Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_) => continue,
                Compression::GZIP(_) => "gzip",
                Compression::LZO => "lzo",
                Compression::BROTLI(_) => "brotli",
                Compression::LZ4 | Compression::LZ4_RAW => "lz4",
            };
            return Some(FileOut::skip(
                Skip::Unreadable,
                format!(
                    "column {:?} is compressed with {codec}; ft-ingest reads Parquet pages that are {CODECS}",
                    column.column_path().string()
                ),
            ));
        }
        let size = u64::try_from(group.total_byte_size()).unwrap_or(0);
        if size > max {
            return Some(FileOut::skip(
                Skip::TooBig,
                format!(
                    "too big: row group {g} holds {size} bytes uncompressed, over --max-file-size ({max} bytes)"
                ),
            ));
        }
    }
    None
}

/// Streams the rows of every row group, in order, into documents.
fn rows<R: ChunkReader + 'static>(
    reader: &SerializedFileReader<R>,
    shown: &str,
    opts: &Opts,
    flush: Flush<'_>,
) -> FileOut {
    if let Some(skipped) = check_footer(reader.metadata(), opts.max_file_size) {
        return skipped;
    }
    let mut out = FileOut::default();
    let mut index = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = match reader.get_row_group(g) {
            Ok(group) => group,
            Err(e) => {
                out.fatal = Some((out.bytes.len(), read_error(shown, g, index, e)));
                return out;
            }
        };
        let iter = match group.get_row_iter(None) {
            Ok(iter) => iter,
            Err(e) => {
                out.fatal = Some((out.bytes.len(), read_error(shown, g, index, e)));
                return out;
            }
        };
        for row in iter {
            if out.full(opts) || !maybe_flush(&mut out, flush) {
                return out;
            }
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    out.fatal = Some((out.bytes.len(), read_error(shown, g, index, e)));
                    return out;
                }
            };
            let mut object = Vec::new();
            write_row(&mut object, &row);
            let at = At {
                line: 0, // a Parquet row has no line: no `source_line`
                index,
            };
            index += 1;
            let outcome = std::str::from_utf8(&object)
                .map_err(anyhow::Error::new)
                .and_then(|json| record(&mut out, shown, &RawRecord::parse(json)?, at, opts));
            // `index` now counts this row: its 1-based number, shown in place of a line.
            if let Err(e) = outcome
                && out.reject(opts, index, &object, e)
            {
                return out;
            }
        }
    }
    out
}

/// A page that cannot be read or decoded ends the source: the rows after it are out of reach.
fn read_error(
    shown: &str,
    group: usize,
    index: u64,
    e: parquet::errors::ParquetError,
) -> anyhow::Error {
    anyhow!(e).context(format!(
        "{shown}: cannot read row group {group} (after {index} rows)"
    ))
}

/// A row as a JSON object, columns in schema order.
fn write_row(buf: &mut Vec<u8>, row: &Row) {
    buf.push(b'{');
    for (i, (name, field)) in row.get_column_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_json_str(buf, name);
        buf.push(b':');
        write_field(buf, field);
    }
    buf.push(b'}');
}

/// A value as JSON: groups, lists and maps keep their order (the crate's own `to_json_value` would
/// sort a struct's keys); leaves are converted by the crate (bytes as base64, dates and timestamps as
/// text, decimals as strings, NaN and infinities as null).
fn write_field(buf: &mut Vec<u8>, field: &Field) {
    match field {
        Field::Group(row) => write_row(buf, row),
        Field::ListInternal(list) => {
            buf.push(b'[');
            for (i, element) in list.elements().iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_field(buf, element);
            }
            buf.push(b']');
        }
        Field::MapInternal(map) => {
            buf.push(b'{');
            for (i, (key, value)) in map.entries().iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                // JSON keys are strings: a string key as it is, any other key as its JSON text.
                match key.to_json_value() {
                    serde_json::Value::String(s) => write_json_str(buf, &s),
                    other => write_json_str(buf, &other.to_string()),
                }
                buf.push(b':');
                write_field(buf, value);
            }
            buf.push(b'}');
        }
        leaf => buf.extend_from_slice(leaf.to_json_value().to_string().as_bytes()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use parquet::data_type::Int64Type;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    /// `groups` row groups of one INT64 column, with the values given.
    fn numbers(path: &std::path::Path, groups: &[&[i64]]) {
        let schema = "message m { REQUIRED INT64 n; }";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().build());
        let file = File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        for values in groups {
            let mut rg = writer.next_row_group().unwrap();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<Int64Type>()
                .write_batch(values, None, None)
                .unwrap();
            col.close().unwrap();
            rg.close().unwrap();
        }
        writer.close().unwrap();
    }

    #[test]
    fn row_count_reads_the_footer_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.parquet");
        numbers(&path, &[&[1, 2, 3], &[4, 5]]);
        assert_eq!(row_count(&path).unwrap(), 5);
        // Column data wiped out, footer intact: still counted, so the data was not read.
        let mut bytes = std::fs::read(&path).unwrap();
        let footer =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let data_end = bytes.len() - 8 - footer as usize;
        bytes[4..data_end].fill(0xff);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(row_count(&path).unwrap(), 5);

        std::fs::write(&path, b"not parquet").unwrap();
        let err = format!("{:#}", row_count(&path).unwrap_err());
        assert!(
            err.starts_with(&format!("{}: not a Parquet file", path.display())),
            "{err}"
        );
        let missing = dir.path().join("missing.parquet");
        assert!(row_count(&missing).is_err());
    }

    #[test]
    fn leaves_are_json_and_nan_is_null() {
        use parquet::record::Field;
        let mut buf = Vec::new();
        write_field(&mut buf, &Field::Long(-3));
        assert_eq!(buf, b"-3");
        buf.clear();
        write_field(&mut buf, &Field::Double(f64::NAN));
        assert_eq!(buf, b"null", "JSON has no NaN");
    }
}
