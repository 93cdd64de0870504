//! `.docx` and `.pptx` sources (Office Open XML: a zip of XML parts), one document per file.
//!
//! Both formats share WordprocessingML's and DrawingML's element names for what matters here
//! (`p` paragraph, `t` text, `br` break, `tab`, `tbl`/`tr`/`tc` table), so one streaming pass over a
//! part ([`blocks`]) turns it into markdown-ish blocks: headings as `#` (DOCX `Heading N`/`Title`
//! styles, PPTX title placeholders), list items as `- ` (DOCX numbering), tables as markdown tables,
//! paragraphs separated by a blank line.
//!
//! - DOCX: `word/document.xml` in body order; embedded images are `word/media/*` (no page).
//! - PPTX: slides in presentation order (`ppt/presentation.xml` and its relationships), each slide's
//!   text then its speaker notes (`Notes:`); `starts` gives each slide's offset; a slide's images are
//!   the media its relationships name.
//!
//! The zip is untrusted: each part read is capped (`max` bytes decompressed, and `max` in all), so
//! a zip bomb disguised as a document is refused (`Skip::Corrupt`), never inflated.

use crate::extract::Skip;
use crate::paged::{Embedded, Paged, Refusal};
use quick_xml::events::{BytesStart, Event};
use std::io::{Cursor, Read};

/// An open Office file with a decompression allowance.
struct Package<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    /// Bytes that may still be decompressed.
    left: u64,
    max: u64,
}

fn corrupt(e: impl std::fmt::Display) -> Refusal {
    (Skip::Corrupt, format!("not a readable Office file: {e}"))
}

impl<'a> Package<'a> {
    fn open(bytes: &'a [u8], max: u64) -> Result<Self, Refusal> {
        let zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
        Ok(Self {
            zip,
            left: max,
            max,
        })
    }

    fn names(&self) -> Vec<String> {
        self.zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .collect()
    }

    /// A part's bytes, `None` when it is absent.
    fn part(&mut self, name: &str) -> Result<Option<Vec<u8>>, Refusal> {
        let mut entry = match self.zip.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(corrupt(e)),
        };
        let bomb = || {
            (
                Skip::Corrupt,
                format!(
                    "{name} decompresses to more than --max-file-size ({} bytes) allows: a zip bomb?",
                    self.max
                ),
            )
        };
        if entry.size() > self.left {
            return Err(bomb());
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        // The declared size may lie: the read itself is capped too.
        (&mut entry)
            .take(self.left + 1)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        if out.len() as u64 > self.left {
            return Err(bomb());
        }
        self.left -= out.len() as u64;
        Ok(Some(out))
    }

    fn required(&mut self, name: &str) -> Result<Vec<u8>, Refusal> {
        self.part(name)?
            .ok_or_else(|| corrupt(format!("no {name} in the package")))
    }
}

/// Converts a DOCX file's bytes.
pub fn docx(bytes: &[u8], max: u64, want_images: bool) -> Result<Paged, Refusal> {
    let mut pkg = Package::open(bytes, max)?;
    let xml = pkg.required("word/document.xml")?;
    let mut paged = Paged {
        text: blocks(&xml, Mode::Body).map_err(corrupt)?,
        ..Paged::default()
    };
    if want_images {
        let mut media: Vec<String> = pkg
            .names()
            .into_iter()
            .filter(|n| n.starts_with("word/media/"))
            .collect();
        media.sort();
        for name in media {
            if let Some(bytes) = pkg.part(&name)? {
                paged.images.push(Embedded { bytes, at: None });
            }
        }
    }
    Ok(paged)
}

/// Converts a PPTX file's bytes.
pub fn pptx(bytes: &[u8], max: u64, want_images: bool) -> Result<Paged, Refusal> {
    let mut pkg = Package::open(bytes, max)?;
    let slides = slide_order(&mut pkg)?;
    let mut paged = Paged::default();
    for (i, slide) in slides.iter().enumerate() {
        let xml = pkg.required(slide)?;
        let mut text = blocks(&xml, Mode::Body).map_err(corrupt)?;
        let rels = relationships(&mut pkg, slide)?;
        if let Some(notes) = rels.iter().find(|r| r.kind.ends_with("/notesSlide"))
            && let Some(xml) = pkg.part(&notes.target)?
        {
            let notes = blocks(&xml, Mode::Notes).map_err(corrupt)?;
            if !notes.is_empty() {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str("Notes: ");
                text.push_str(&notes);
            }
        }
        paged.push_page(&text);
        if want_images {
            for rel in rels.iter().filter(|r| r.kind.ends_with("/image")) {
                if let Some(bytes) = pkg.part(&rel.target)? {
                    paged.images.push(Embedded {
                        bytes,
                        at: Some(i as u32 + 1),
                    });
                }
            }
        }
    }
    paged.meta.push(("slide_count", slides.len().to_string()));
    Ok(paged)
}

/// One `<Relationship Id Type Target>` with its target resolved to a part name.
struct Rel {
    id: String,
    kind: String,
    target: String,
}

/// The relationships of `part` (`a/b.xml` → `a/_rels/b.xml.rels`), targets resolved against `a/`.
fn relationships(pkg: &mut Package<'_>, part: &str) -> Result<Vec<Rel>, Refusal> {
    let (dir, file) = part.rsplit_once('/').unwrap_or(("", part));
    let Some(xml) = pkg.part(&format!("{dir}/_rels/{file}.rels"))? else {
        return Ok(Vec::new());
    };
    let mut rels = Vec::new();
    let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "Relationship" => {
                let (id, kind, target) = (attr(&e, "Id"), attr(&e, "Type"), attr(&e, "Target"));
                if let (Some(id), Some(kind), Some(target)) = (id, kind, target)
                    && attr(&e, "TargetMode").as_deref() != Some("External")
                {
                    rels.push(Rel {
                        id,
                        kind,
                        target: resolve(dir, &target),
                    });
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(rels)
}

/// `dir` + a relative target with `..` segments, as a part name (a leading `/` is the package root).
fn resolve(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|s| !s.is_empty()).collect()
    };
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// Slide part names in presentation order (`sldIdLst`); slides the list does not name are left out,
/// as PowerPoint does.
fn slide_order(pkg: &mut Package<'_>) -> Result<Vec<String>, Refusal> {
    let xml = pkg.required("ppt/presentation.xml")?;
    let rels = relationships(pkg, "ppt/presentation.xml")?;
    let mut order = Vec::new();
    let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "sldId" => {
                let id = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.local_name().as_ref() == "id" && a.key.prefix().is_some());
                if let Some(id) =
                    id.and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
                    && let Some(rel) = rels.iter().find(|r| r.id == id)
                {
                    order.push(rel.target.clone());
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(order)
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
        .map(|v| v.into_owned())
}

/// What part of a part is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything (a DOCX body, a slide).
    Body,
    /// A notes slide: only the notes placeholder (not the slide image or the slide number).
    Notes,
}

/// The paragraph being built.
#[derive(Default)]
struct Para {
    text: String,
    heading: Option<usize>,
    list: bool,
}

/// A table being built: rows of cells.
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
}

/// One streaming pass over a DOCX body or a slide: markdown-ish blocks separated by blank lines.
fn blocks(xml: &[u8], mode: Mode) -> Result<String, quick_xml::Error> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut para: Option<Para> = None;
    let mut tables: Vec<Table> = Vec::new();
    let mut in_text = false;
    // A PPTX shape: its placeholder type decides title (heading) or, for notes, whether it counts.
    let mut shape_kind: Option<String> = None;
    let mut in_shape = false;
    let keep = |in_shape: bool, kind: &Option<String>| {
        mode == Mode::Body || (in_shape && kind.as_deref() == Some("body"))
    };
    loop {
        let event = reader.read_event_into(&mut buf)?;
        let empty = matches!(event, Event::Empty(_));
        match event {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "sp" => {
                    in_shape = !empty;
                    shape_kind = None;
                }
                "ph" => shape_kind = Some(attr(&e, "type").unwrap_or_else(|| "body".into())),
                "p" if !empty => para = Some(Para::default()),
                "pStyle" => {
                    if let (Some(p), Some(style)) = (para.as_mut(), attr_local(&e, "val")) {
                        p.heading = heading_level(&style);
                    }
                }
                "numPr" => {
                    if let Some(p) = para.as_mut() {
                        p.list = true;
                    }
                }
                "t" => in_text = !empty,
                "tab" => push_text(&mut para, "\t"),
                "br" | "cr" => push_text(&mut para, "\n"),
                "tbl" if !empty => tables.push(Table::default()),
                "tr" if !empty => {
                    if let Some(t) = tables.last_mut() {
                        t.rows.push(Vec::new());
                    }
                }
                "tc" if !empty => {
                    if let Some(row) = tables.last_mut().and_then(|t| t.rows.last_mut()) {
                        row.push(String::new());
                    }
                }
                _ => {}
            },
            // Entity references come as their own events, between the text pieces.
            Event::Text(t) if in_text => push_text(&mut para, &t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                if let Some(c) = r.resolve_char_ref()? {
                    push_text(&mut para, c.encode_utf8(&mut [0; 4]));
                } else if let Some(s) =
                    quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                {
                    push_text(&mut para, s);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "sp" => {
                    in_shape = false;
                    shape_kind = None;
                }
                "p" => {
                    let Some(p) = para.take() else { continue };
                    if !keep(in_shape, &shape_kind) {
                        continue;
                    }
                    let text = p.text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    let title = matches!(shape_kind.as_deref(), Some("title" | "ctrTitle"));
                    let block = match (p.heading, p.list, title && mode == Mode::Body) {
                        (Some(n), _, _) => format!("{} {text}", "#".repeat(n)),
                        (None, _, true) => format!("# {text}"),
                        (None, true, _) => format!("- {text}"),
                        _ => text.to_string(),
                    };
                    match tables
                        .last_mut()
                        .and_then(|t| t.rows.last_mut())
                        .and_then(|r| r.last_mut())
                    {
                        Some(cell) => {
                            if !cell.is_empty() {
                                cell.push(' ');
                            }
                            cell.push_str(&block.replace('\n', " "));
                        }
                        None => out.push(block),
                    }
                }
                "tbl" => {
                    if let Some(t) = tables.pop() {
                        let md = markdown_table(&t.rows);
                        // A table inside a table cell: flattened into the cell.
                        match tables
                            .last_mut()
                            .and_then(|t| t.rows.last_mut())
                            .and_then(|r| r.last_mut())
                        {
                            Some(cell) => cell.push_str(&md.replace('\n', " ")),
                            None if !md.is_empty() => out.push(md),
                            None => {}
                        }
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    // Consecutive list items stay on consecutive lines.
    let mut text = String::new();
    for (i, block) in out.iter().enumerate() {
        if i > 0 {
            let list = block.starts_with("- ") && out[i - 1].starts_with("- ");
            text.push_str(if list { "\n" } else { "\n\n" });
        }
        text.push_str(block);
    }
    Ok(text)
}

fn push_text(para: &mut Option<Para>, text: &str) {
    if let Some(p) = para.as_mut() {
        p.text.push_str(text);
    }
}

/// An attribute by local name (`w:val` → `val`).
fn attr_local(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
        .map(|v| v.into_owned())
}

/// `Heading2` → 2, `Title` → 1 (Word's built-in style ids).
fn heading_level(style: &str) -> Option<usize> {
    let lower = style.to_ascii_lowercase();
    if lower == "title" {
        return Some(1);
    }
    let n = lower
        .strip_prefix("heading")?
        .trim()
        .parse::<usize>()
        .ok()?;
    (1..=6).contains(&n).then_some(n)
}

/// Rows as a markdown table, the first row as its header; `|` in cells escaped.
fn markdown_table(rows: &[Vec<String>]) -> String {
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| !r.is_empty()).collect();
    let Some(width) = rows.iter().map(|r| r.len()).max() else {
        return String::new();
    };
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for i in 0..width {
            let cell = cells.get(i).map_or("", |c| c.trim());
            s.push(' ');
            s.push_str(&cell.replace('|', "\\|"));
            s.push_str(" |");
        }
        s
    };
    let mut out = vec![line(rows[0]), format!("|{}", " --- |".repeat(width))];
    out.extend(rows[1..].iter().map(|r| line(r)));
    out.join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets_resolve_against_the_part_folder() {
        assert_eq!(
            resolve("ppt/slides", "../media/image1.png"),
            "ppt/media/image1.png"
        );
        assert_eq!(resolve("ppt", "slides/slide1.xml"), "ppt/slides/slide1.xml");
        assert_eq!(resolve("ppt/slides", "/ppt/x.xml"), "ppt/x.xml");
    }

    #[test]
    fn headings_lists_and_tables_become_markdown() {
        let xml = br#"<w:document xmlns:w="w"><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>Results</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Plain &amp; simple </w:t></w:r><w:r><w:t>text.</w:t></w:r></w:p>
<w:p><w:pPr><w:numPr/></w:pPr><w:r><w:t>one</w:t></w:r></w:p>
<w:p><w:pPr><w:numPr/></w:pPr><w:r><w:t>two</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>a|b</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>c</w:t></w:r></w:p></w:tc></w:tr>
<w:tr><w:tc><w:p><w:r><w:t>1</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
</w:body></w:document>"#;
        assert_eq!(
            blocks(xml, Mode::Body).unwrap(),
            "## Results\n\nPlain & simple text.\n\n- one\n- two\n\n| a\\|b | c |\n| --- | --- |\n| 1 |  |"
        );
        assert_eq!(heading_level("Title"), Some(1));
        assert_eq!(heading_level("Heading7"), None);
        assert_eq!(heading_level("Normal"), None);
    }
}
