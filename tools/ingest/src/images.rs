//! Image records: `{"kind":"image","path","sha256","source","page"|"slide","format","width","height"}`.
//!
//! Embedded images (PDF, DOCX, PPTX) are written once under `--extract-images DIR` as
//! `<sha256>.<ext>` (atomically; an image already there is not rewritten), so the same picture in
//! two documents, or on two pages, is one file and reruns write nothing new. A standalone image in a
//! walked folder (`.jpg .jpeg .png .webp .gif`) is not copied: its record's `path` is the file itself.
//! Only the header is read here (format, dimensions); ft-describe decodes and validates the pixels.

use crate::paged::Unit;
use ftkit_core::jsonl::write_json_str;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `--extract-images DIR` and `--images-only`.
#[derive(Clone, Debug)]
pub struct ImageOpts {
    pub dir: PathBuf,
    /// Write image records only, no document records.
    pub only: bool,
}

/// An image's format and size from its header.
struct Header {
    ext: &'static str,
    name: &'static str,
    width: u32,
    height: u32,
}

fn header(bytes: &[u8]) -> Option<Header> {
    let format = image::guess_format(bytes).ok()?;
    let (ext, name) = match format {
        image::ImageFormat::Jpeg => ("jpg", "jpeg"),
        image::ImageFormat::Png => ("png", "png"),
        image::ImageFormat::Gif => ("gif", "gif"),
        image::ImageFormat::WebP => ("webp", "webp"),
        _ => return None,
    };
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader.into_dimensions().ok()?;
    Some(Header {
        ext,
        name,
        width,
        height,
    })
}

/// True for the extensions read as standalone images.
pub fn is_image_name(ext: &str) -> bool {
    matches!(ext, "jpg" | "jpeg" | "png" | "webp" | "gif")
}

/// Appends an image record for `bytes`, found at `path` (written there first when `write`).
/// Returns false (nothing written) when the bytes are not a JPEG, PNG, GIF or WebP image whose
/// header reads.
fn record(
    buf: &mut Vec<u8>,
    bytes: &[u8],
    path: Option<&Path>,
    dir: &Path,
    source: &str,
    unit: Unit,
    at: Option<u32>,
) -> anyhow::Result<bool> {
    let Some(h) = header(bytes) else {
        return Ok(false);
    };
    let sha = hex::encode(Sha256::digest(bytes));
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dir.join(format!("{sha}.{}", h.ext));
            if !p.exists() {
                ftkit_core::io::write_atomic(&p, bytes)?;
            }
            p
        }
    };
    buf.extend_from_slice(b"{\"kind\":\"image\",\"path\":");
    write_json_str(buf, &path.to_string_lossy());
    let _ = write!(buf, ",\"sha256\":\"{sha}\",\"source\":");
    write_json_str(buf, source);
    if let (Some(field), Some(n)) = (unit.field(), at) {
        let _ = write!(buf, ",\"{field}\":{n}");
    }
    let _ = writeln!(
        buf,
        ",\"format\":\"{}\",\"width\":{},\"height\":{}}}",
        h.name, h.width, h.height
    );
    Ok(true)
}

/// Writes an embedded image under the folder and appends its record; false when it is not an
/// image of a kept format.
pub fn embedded(
    buf: &mut Vec<u8>,
    opts: &ImageOpts,
    bytes: &[u8],
    source: &str,
    unit: Unit,
    at: Option<u32>,
) -> anyhow::Result<bool> {
    record(buf, bytes, None, &opts.dir, source, unit, at)
}

/// Appends the record of a standalone image file (not copied); false when its header does not read.
pub fn standalone(
    buf: &mut Vec<u8>,
    opts: &ImageOpts,
    bytes: &[u8],
    source: &str,
) -> anyhow::Result<bool> {
    record(
        buf,
        bytes,
        Some(Path::new(source)),
        &opts.dir,
        source,
        Unit::None,
        None,
    )
}
