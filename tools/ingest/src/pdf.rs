//! `.pdf` sources: the text layer, one document per file, pages kept.
//!
//! Text comes from pdf-extract (on lopdf), page by page, in the order the page draws it, with line and
//! word breaks from the glyphs' positions: the order a human reads a plain single- or multi-column
//! page, since typesetters draw a column at a time. Then, here: a line that ends a page's text at the
//! top or bottom on most pages (a running header, a footer, a page number: digits do not count in the
//! comparison) is dropped; a word hyphenated at a line end is joined (`exam-` / `ple` → `example`,
//! lower-case letters on both sides only); pages are joined by a blank line and `starts` says where
//! each begins.
//!
//! Refused (the file is skipped, with a `--rejects` record): encrypted files that need a password,
//! files with no text layer (scans; OCR is out of scope), files the parser cannot read (it panics on
//! some: the panic is contained). Images: DCT (JPEG) XObjects as they are, 8-bit Flate RGB or gray
//! XObjects re-encoded as PNG; other encodings (JBIG2, JPX, CCITT, indexed colours) are not extracted.

use crate::extract::Skip;
use crate::paged::{Embedded, Paged, Refusal, contained};
use lopdf::Document;
use std::collections::HashMap;

/// Converts a PDF file's bytes; `images`: also collect embedded images.
pub fn convert(bytes: &[u8], images: bool) -> Result<Paged, Refusal> {
    contained(|| convert_inner(bytes, images))
}

fn convert_inner(bytes: &[u8], want_images: bool) -> Result<Paged, Refusal> {
    let corrupt = |e: &dyn std::fmt::Display| (Skip::Corrupt, format!("not a readable PDF: {e}"));
    let mut doc = match Document::load_mem(bytes) {
        Ok(d) => d,
        Err(lopdf::Error::Decryption(e)) => {
            return Err((Skip::Encrypted, format!("encrypted: {e}")));
        }
        Err(e) => return Err(corrupt(&e)),
    };
    // Files encrypted with an empty user password (printing or copying restrictions only) open.
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err((
            Skip::Encrypted,
            "encrypted: a password is needed to read it".into(),
        ));
    }
    let pages = doc.get_pages();
    let mut texts = Vec::with_capacity(pages.len());
    let mut failed = 0u32;
    for &number in pages.keys() {
        let mut text = String::new();
        let mut out = pdf_extract::PlainTextOutput::new(&mut text);
        match pdf_extract::output_doc_page(&doc, &mut out, number) {
            Ok(()) => texts.push(text),
            Err(_) => {
                failed += 1;
                texts.push(String::new());
            }
        }
    }
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(if failed > 0 {
            corrupt(&format!("none of its {failed} pages could be read"))
        } else {
            (
                Skip::NoText,
                format!(
                    "no text layer on its {} pages (a scan? OCR is out of scope)",
                    pages.len()
                ),
            )
        });
    }
    let mut paged = Paged::default();
    for page in clean_pages(&texts) {
        paged.push_page(&page);
    }
    paged.meta.push(("page_count", pages.len().to_string()));
    if failed > 0 {
        paged.meta.push(("pages_unreadable", failed.to_string()));
    }
    if want_images {
        paged.images = images(&doc, &pages);
    }
    Ok(paged)
}

/// Images of the pages' resources, each XObject once, at the first page that lists it: a logo in
/// resources shared by every page is one image record, described once, not one per page.
fn images(
    doc: &Document,
    pages: &std::collections::BTreeMap<u32, lopdf::ObjectId>,
) -> Vec<Embedded> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (&number, &id) in pages {
        let Ok(found) = doc.get_page_images(id) else {
            continue;
        };
        for image in found {
            if !seen.insert(image.id) {
                continue;
            }
            if let Some(bytes) = encode(&image) {
                out.push(Embedded {
                    bytes,
                    at: Some(number),
                });
            }
        }
    }
    out
}

/// The image as a file: JPEG data as stored, plain 8-bit RGB/gray pixels as PNG.
fn encode(image: &lopdf::xobject::PdfImage<'_>) -> Option<Vec<u8>> {
    let filters = image.filters.clone().unwrap_or_default();
    match filters.as_slice() {
        [f] if f == "DCTDecode" => Some(image.content.to_vec()),
        [f] if f == "FlateDecode" => {
            if image.bits_per_component != Some(8) {
                return None;
            }
            let colour = match image.color_space.as_deref() {
                Some("DeviceRGB") => image::ExtendedColorType::Rgb8,
                Some("DeviceGray") => image::ExtendedColorType::L8,
                _ => return None,
            };
            if image.origin_dict.get(b"DecodeParms").is_ok() {
                return None; // PNG predictors: not decoded here.
            }
            let (w, h) = (
                u32::try_from(image.width).ok()?,
                u32::try_from(image.height).ok()?,
            );
            let channels = if colour == image::ExtendedColorType::Rgb8 {
                3
            } else {
                1
            };
            let pixels = decompress(image.content, (w as usize) * (h as usize) * channels)?;
            let mut png = Vec::new();
            let encoder = image::codecs::png::PngEncoder::new(&mut png);
            image::ImageEncoder::write_image(encoder, &pixels, w, h, colour).ok()?;
            Some(png)
        }
        _ => None,
    }
}

/// Inflates exactly `len` bytes of zlib data (no more: a stream may not claim more pixels than it holds).
fn decompress(data: &[u8], len: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(data)
        .take(len as u64)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() == len).then_some(out)
}

/// Trims each page, drops repeated headers and footers, joins hyphenated line ends.
pub fn clean_pages(raw: &[String]) -> Vec<String> {
    let mut pages: Vec<Vec<&str>> = raw
        .iter()
        .map(|p| {
            let lines: Vec<&str> = p.lines().map(str::trim_end).collect();
            let start = lines.iter().position(|l| !l.trim().is_empty());
            let end = lines.iter().rposition(|l| !l.trim().is_empty());
            match (start, end) {
                (Some(s), Some(e)) => lines[s..=e].to_vec(),
                _ => Vec::new(),
            }
        })
        .collect();
    // Two lines at each end at most: a header and a rule or date, a footer and a page number.
    for _ in 0..2 {
        drop_repeated(&mut pages, true);
        drop_repeated(&mut pages, false);
    }
    pages.iter().map(|lines| join_lines(lines)).collect()
}

/// Removes the first (`top`) or last line of the pages where it is a line most pages share there.
fn drop_repeated(pages: &mut [Vec<&str>], top: bool) {
    let with_text = pages.iter().filter(|p| !p.is_empty()).count();
    if with_text < 3 {
        return;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for page in pages.iter() {
        if let Some(line) = edge(page, top) {
            *counts.entry(shape(line)).or_default() += 1;
        }
    }
    // Most pages: a title page or a last page without the header still lets it go elsewhere.
    let needed = (with_text * 3).div_ceil(5).max(3);
    for page in pages.iter_mut() {
        let Some(line) = edge(page, top) else {
            continue;
        };
        if counts.get(&shape(line)).is_some_and(|&n| n >= needed) {
            if top {
                page.remove(0);
            } else {
                page.pop();
            }
        }
    }
}

fn edge<'a>(page: &[&'a str], top: bool) -> Option<&'a str> {
    if top {
        page.first().copied()
    } else {
        page.last().copied()
    }
}

/// A line as compared across pages: digits (page numbers, dates) and spacing do not count.
fn shape(line: &str) -> String {
    let mut s = String::with_capacity(line.len());
    for word in line.split_whitespace() {
        if !s.is_empty() {
            s.push(' ');
        }
        s.extend(
            word.chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c }),
        );
    }
    s
}

/// Joins a page's lines with newlines, except a word split by a hyphen at a line end, which is joined.
fn join_lines(lines: &[&str]) -> String {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            let hyphenated = out
                .strip_suffix('-')
                .is_some_and(|before| before.chars().next_back().is_some_and(char::is_lowercase))
                && line.chars().next().is_some_and(char::is_lowercase);
            if hyphenated {
                out.pop();
                out.push_str(line);
                continue;
            }
            out.push('\n');
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_footers_and_page_numbers_repeated_on_most_pages_go() {
        let raw: Vec<String> = (1..=5)
            .map(|n| format!("ACME Report 2024\n\nBody of page {n}.\nMore.\n\n  Page {n} of 5  \n"))
            .collect();
        let pages = clean_pages(&raw);
        assert_eq!(pages[0], "Body of page 1.\nMore.");
        assert_eq!(pages[4], "Body of page 5.\nMore.");
    }

    #[test]
    fn lines_on_few_pages_stay() {
        let raw: Vec<String> = ["Intro\nA", "Intro\nB", "Other\nC", "Else\nD", "More\nE"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(clean_pages(&raw)[0], "Intro\nA");
        // Fewer than three pages: nothing counts as repeated.
        let two = vec!["H\nx\nF".to_string(), "H\ny\nF".to_string()];
        assert_eq!(clean_pages(&two), vec!["H\nx\nF", "H\ny\nF"]);
    }

    #[test]
    fn hyphenated_line_ends_join_only_between_lower_case_letters() {
        assert_eq!(
            join_lines(&[
                "an exam-",
                "ple of hyphen-",
                "Ation",
                "x -",
                "y",
                "well-",
                "known"
            ]),
            "an example of hyphen-\nAtion\nx -\ny\nwellknown"
        );
    }
}
