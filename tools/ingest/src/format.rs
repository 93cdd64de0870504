//! What kind of source a file is, decided by its name (a trailing `.zst` is looked through).

use std::path::Path;

/// How a source is turned into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The whole file is one document (`.txt .text .md .markdown .rst .tex`).
    Text,
    /// The visible text of an HTML page is one document (`.html .htm .xhtml`).
    Html,
    /// A JSON array of objects, or one object (`.json`): one document per object.
    Json,
    /// One JSON object per line (`.jsonl .ndjson`): one document per line.
    Jsonl,
    /// Comma- or tab-separated values with a header row (`.csv`, `.tsv`): one document per row.
    Csv { delimiter: u8 },
    /// Apache Parquet (`.parquet`): one document per row.
    Parquet,
    /// PDF (`.pdf`): the text layer, one document per file.
    Pdf,
    /// Word (`.docx`): one document per file.
    Docx,
    /// PowerPoint (`.pptx`): one document per file, slide by slide.
    Pptx,
    /// An image (`.jpg .jpeg .png .webp .gif`): an image record with `--extract-images`.
    Image,
}

impl Kind {
    /// The kind named by a file's extension; `None` for an unknown one.
    pub fn from_path(path: &Path) -> Option<Kind> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".zst").unwrap_or(&name);
        let ext = Path::new(name).extension()?.to_str()?;
        Some(match ext {
            "txt" | "text" | "md" | "markdown" | "rst" | "tex" => Kind::Text,
            "html" | "htm" | "xhtml" => Kind::Html,
            "json" => Kind::Json,
            "jsonl" | "ndjson" => Kind::Jsonl,
            "csv" => Kind::Csv { delimiter: b',' },
            "tsv" => Kind::Csv { delimiter: b'\t' },
            "parquet" => Kind::Parquet,
            "pdf" => Kind::Pdf,
            "docx" => Kind::Docx,
            "pptx" => Kind::Pptx,
            e if crate::images::is_image_name(e) => Kind::Image,
            _ => return None,
        })
    }

    /// Binary formats: read whole without the NUL-byte check.
    pub fn is_binary(self) -> bool {
        matches!(self, Kind::Pdf | Kind::Docx | Kind::Pptx | Kind::Image)
    }

    /// Record sources yield one document per record and need `--text-field` or `--template`.
    pub fn has_records(self) -> bool {
        matches!(
            self,
            Kind::Json | Kind::Jsonl | Kind::Csv { .. } | Kind::Parquet
        )
    }
}

/// How many leading bytes are searched for a NUL byte to call a file binary.
pub const BINARY_SNIFF: usize = 8 << 10;

/// True when the first 8 KiB (after decompression) hold a NUL byte.
pub fn looks_binary(bytes: &[u8]) -> bool {
    memchr::memchr(0, &bytes[..bytes.len().min(BINARY_SNIFF)]).is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_extension_through_zst() {
        let k = |p: &str| Kind::from_path(Path::new(p));
        assert_eq!(k("a/b.md"), Some(Kind::Text));
        assert_eq!(k("b.TeX"), Some(Kind::Text));
        assert_eq!(k("b.md.zst"), Some(Kind::Text));
        assert_eq!(k("page.HTM"), Some(Kind::Html));
        assert_eq!(k("x.jsonl.zst"), Some(Kind::Jsonl));
        assert_eq!(k("x.ndjson"), Some(Kind::Jsonl));
        assert_eq!(k("x.json"), Some(Kind::Json));
        assert_eq!(k("x.tsv"), Some(Kind::Csv { delimiter: b'\t' }));
        assert_eq!(k("x.PARQUET"), Some(Kind::Parquet));
        assert_eq!(k("x.parquet.zst"), Some(Kind::Parquet));
        assert_eq!(k("x.zst"), None);
        assert_eq!(k("x.png"), Some(Kind::Image));
        assert_eq!(k("scan.JPEG"), Some(Kind::Image));
        assert_eq!(k("a.pdf"), Some(Kind::Pdf));
        assert_eq!(k("a.docx"), Some(Kind::Docx));
        assert_eq!(k("a.pptx"), Some(Kind::Pptx));
        assert_eq!(k("a.doc"), None);
        assert_eq!(k("x.bmp"), None);
        assert_eq!(k("Makefile"), None);
        assert!(Kind::Csv { delimiter: b',' }.has_records());
        assert!(Kind::Parquet.has_records());
        assert!(!Kind::Html.has_records());
    }

    #[test]
    fn nul_in_the_first_8k_is_binary() {
        assert!(looks_binary(b"ab\0cd"));
        assert!(!looks_binary("plain é text".as_bytes()));
        let mut late = vec![b'a'; BINARY_SNIFF];
        late.push(0);
        assert!(!looks_binary(&late));
    }
}
