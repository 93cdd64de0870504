//! `processed/SLUG/stats.json`: how many files and bytes a dataset has, and records where the
//! format says what a record is (a JSONL line, a JSON array item or one JSON value, a CSV row, a
//! Parquet row as its footer counts them).

use crate::lock::FileEntry;
use serde_json::{Value, json};
use std::path::Path;

pub fn compute(raw: &Path, files: &[FileEntry]) -> Value {
    let mut records = 0u64;
    let mut by_file = serde_json::Map::new();
    for f in files {
        if let Some(n) = count(&raw.join(&f.path)) {
            records += n;
            by_file.insert(f.path.clone(), json!(n));
        }
    }
    json!({
        "files": files.len(),
        "bytes": files.iter().map(|f| f.bytes).sum::<u64>(),
        "records": if by_file.is_empty() { Value::Null } else { json!(records) },
        "records_by_file": by_file,
    })
}

/// Records of one file, or none when the format is not counted or the file does not parse.
fn count(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let ext = name.rsplit('.').next()?;
    match ext {
        "jsonl" | "ndjson" => {
            let input = ftkit_core::io::open_input(path.to_str()?).ok()?;
            let mut n = 0;
            for line in std::io::BufRead::split(input.reader, b'\n') {
                if !line.ok()?.iter().all(u8::is_ascii_whitespace) {
                    n += 1;
                }
            }
            Some(n)
        }
        "json" => {
            let file = std::fs::File::open(path).ok()?;
            match serde_json::from_reader(std::io::BufReader::new(file)).ok()? {
                Value::Array(items) => Some(items.len() as u64),
                _ => Some(1),
            }
        }
        "csv" | "tsv" => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if ext == "tsv" { b'\t' } else { b',' })
                .flexible(true)
                .from_path(path)
                .ok()?;
            let mut n = 0;
            for r in reader.byte_records() {
                r.ok()?;
                n += 1;
            }
            Some(n)
        }
        "parquet" => ftkit_core::parquet::row_count(path).ok(),
        _ => None,
    }
}
