//! What a PDF, DOCX or PPTX source becomes: one text with the offsets where its pages (or slides)
//! start, the images it embeds, and the record written for it.

use crate::extract::{FileOut, Opts, Skip};
use crate::format::Kind;
use crate::{images, office, pdf};
use ftkit_core::jsonl::write_json_str;
use std::io::Write;

/// Converts a PDF, DOCX, PPTX or image source into `out`: its document record, then its image
/// records with `--extract-images` (or the images alone with `--images-only`). A file that gives
/// nothing is a skip in `out`; an error (an image that cannot be written) ends the run.
pub fn convert(
    out: &mut FileOut,
    source: &str,
    kind: Kind,
    bytes: &[u8],
    opts: &Opts,
) -> anyhow::Result<()> {
    let want = opts.images.is_some();
    let max = opts.max_file_size;
    let (result, format, unit) = match kind {
        Kind::Pdf => (pdf::convert(bytes, want), "pdf", Unit::Page),
        Kind::Docx => (office::docx(bytes, max, want), "docx", Unit::None),
        Kind::Pptx => (office::pptx(bytes, max, want), "pptx", Unit::Slide),
        _ => {
            let Some(img) = &opts.images else {
                *out = FileOut::skip(Skip::Image, "an image: --extract-images DIR lists images");
                return Ok(());
            };
            if images::standalone(&mut out.bytes, img, bytes, source)? {
                out.images += 1;
            } else {
                *out = FileOut::skip(Skip::Corrupt, "not a readable JPEG, PNG, GIF or WebP image");
            }
            return Ok(());
        }
    };
    let paged = match result {
        Ok(p) => p,
        Err((skip, message)) => {
            *out = FileOut::skip(skip, message);
            return Ok(());
        }
    };
    if !opts.images.as_ref().is_some_and(|i| i.only) {
        if paged.text.trim().is_empty() {
            out.empty += 1;
        } else {
            paged.write_record(&mut out.bytes, source, format, unit);
            out.docs += 1;
        }
    }
    if let Some(img) = &opts.images {
        for e in &paged.images {
            if images::embedded(&mut out.bytes, img, &e.bytes, source, unit, e.at)? {
                out.images += 1;
            } else {
                out.images_skipped += 1;
            }
        }
    }
    Ok(())
}

/// An image as the document stores it, before it is written to `--extract-images`.
#[derive(Debug)]
pub struct Embedded {
    pub bytes: Vec<u8>,
    /// 1-based page or slide; `None` where the format has no such place (DOCX).
    pub at: Option<u32>,
}

/// A converted document.
#[derive(Debug, Default)]
pub struct Paged {
    pub text: String,
    /// Byte offset in `text` where each page (slide) starts, one per page, ascending; empty for a
    /// format without pages (DOCX).
    pub starts: Vec<usize>,
    pub images: Vec<Embedded>,
    /// Extra `meta` fields (name, JSON text).
    pub meta: Vec<(&'static str, String)>,
}

/// Why a document gave nothing (the file is skipped, with a `--rejects` record).
pub type Refusal = (Skip, String);

/// What the unit of `starts` is called in the record: `pages` or `slides`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Page,
    Slide,
    None,
}

impl Unit {
    pub fn field(self) -> Option<&'static str> {
        match self {
            Unit::Page => Some("page"),
            Unit::Slide => Some("slide"),
            Unit::None => None,
        }
    }
}

impl Paged {
    /// Appends the page (slide) texts, each after a blank line, recording where each starts.
    pub fn push_page(&mut self, text: &str) {
        if !self.text.is_empty() && !text.is_empty() {
            self.text.push_str("\n\n");
        }
        self.starts.push(self.text.len());
        self.text.push_str(text);
    }

    /// The document record: `{"id","text","source","pages"|"slides":[..],"meta":{"format",..}}`.
    pub fn write_record(&self, buf: &mut Vec<u8>, source: &str, format: &str, unit: Unit) {
        let id = ftkit_core::stable_id(&[self.text.as_str()]);
        buf.extend_from_slice(b"{\"id\":\"");
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(b"\",\"text\":");
        write_json_str(buf, &self.text);
        buf.extend_from_slice(b",\"source\":");
        write_json_str(buf, source);
        if let Some(field) = unit.field() {
            let starts: Vec<String> = self.starts.iter().map(usize::to_string).collect();
            let _ = write!(buf, ",\"{field}s\":[{}]", starts.join(","));
        }
        buf.extend_from_slice(b",\"meta\":{\"format\":");
        write_json_str(buf, format);
        for (k, v) in &self.meta {
            let _ = write!(buf, ",\"{k}\":{v}");
        }
        buf.extend_from_slice(b"}}\n");
    }
}

/// Runs a parser of untrusted bytes, turning a panic (the PDF parser's `unwrap`s on broken files)
/// into a refusal with the panic's message; the message is not printed by the panic hook.
pub fn contained<T>(f: impl FnOnce() -> Result<T, Refusal>) -> Result<T, Refusal> {
    install_quiet_hook();
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err((Skip::Corrupt, format!("the parser failed on it ({what})")))
    })
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic hook that stays silent inside [`contained`] and defers to the previous hook elsewhere.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_where_their_text_does() {
        let mut p = Paged::default();
        p.push_page("one");
        p.push_page("");
        p.push_page("three");
        assert_eq!(p.text, "one\n\nthree");
        assert_eq!(p.starts, vec![0, 3, 5]);
        assert_eq!(&p.text[p.starts[2]..], "three");
    }

    #[test]
    fn a_panic_becomes_a_refusal() {
        let r: Result<(), Refusal> = contained(|| panic!("MediaBox"));
        let (skip, msg) = r.unwrap_err();
        assert_eq!(skip, Skip::Corrupt);
        assert!(msg.contains("MediaBox"), "{msg}");
        assert_eq!(contained(|| Ok(3)).unwrap(), 3);
    }
}
