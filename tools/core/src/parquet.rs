//! Parquet footers, for the tools that read Parquet (the `parquet` feature): ft-ingest reads the rows,
//! ft-fetch counts them in its download statistics.

use anyhow::{Context, Result, anyhow};
use parquet::file::metadata::ParquetMetaDataReader;
use std::fs::File;
use std::path::Path;

/// Rows in a Parquet file, read from its footer alone (the column data is not touched). A plain file
/// only, not stdin or `.zst`.
pub fn row_count(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .with_context(|| format!("{}: not a Parquet file", path.display()))?;
    u64::try_from(meta.file_metadata().num_rows())
        .map_err(|_| anyhow!("{}: negative row count in the footer", path.display()))
}
