//! The visible text of an HTML page, through html2text (html5ever's spec-compliant parser).
//!
//! `<head>`, `<script>` and `<style>` are dropped; paragraphs and blocks are separated by blank
//! lines; headings keep a markdown `#` prefix and list items a `- ` or `1. ` prefix, so that
//! markdown-aware chunking sees the page's structure. Links keep their text only, images their alt
//! text. Lines are not wrapped. Tables are read in raw mode: each cell's text on its own line (html2text's
//! table layout is slow and memory-hungry on big index pages: 4.0 s and 640 MB for Python's 1.7 MB
//! genindex-all.html, against 0.4 s and 79 MB in raw mode).

use anyhow::{Result, anyhow};
use html2text::render::TextDecorator;

/// A width no paragraph reaches: html2text wraps at the render width, and we want no wrapping.
const NO_WRAP: usize = 1 << 20;

/// Converts an HTML page to text; whitespace-only lines are emptied and runs of blank lines kept to one.
pub fn to_text(html: &str) -> Result<String> {
    let raw = html2text::config::with_decorator(Plain)
        .allow_width_overflow()
        .raw_mode(true)
        .link_footnotes(false)
        .string_from_read(html.as_bytes(), NO_WRAP)
        .map_err(|e| anyhow!("cannot convert HTML: {e}"))?;
    let mut out = String::with_capacity(raw.len());
    let mut blank_run = 0;
    let mut prev_item = false;
    for line in raw.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        // html2text puts a list right under the paragraph before it: give it its own block.
        let item = is_list_item(line);
        if !out.is_empty() {
            out.push_str(if blank_run > 0 || (item && !prev_item) {
                "\n\n"
            } else {
                "\n"
            });
        }
        blank_run = 0;
        prev_item = item;
        out.push_str(line);
    }
    Ok(out)
}

fn is_list_item(line: &str) -> bool {
    let line = line.trim_start();
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    line.starts_with("- ") || (digits > 0 && line[digits..].starts_with(". "))
}

/// Plain text with light markdown structure (headings, list items, quotes), no link decoration.
#[derive(Clone, Debug)]
struct Plain;

impl TextDecorator for Plain {
    type Annotation = ();

    fn decorate_link_start(&mut self, _url: &str) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_link_end(&mut self) -> String {
        String::new()
    }
    fn decorate_em_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_em_end(&self) -> String {
        String::new()
    }
    fn decorate_strong_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strong_end(&self) -> String {
        String::new()
    }
    fn decorate_strikeout_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strikeout_end(&self) -> String {
        String::new()
    }
    fn decorate_code_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_code_end(&self) -> String {
        String::new()
    }
    fn decorate_preformat_first(&self) {}
    fn decorate_preformat_cont(&self) {}
    fn decorate_image(&mut self, _src: &str, title: &str) -> (String, ()) {
        (title.to_string(), ())
    }
    fn header_prefix(&self, level: usize) -> String {
        "#".repeat(level) + " "
    }
    fn quote_prefix(&self) -> String {
        "> ".to_string()
    }
    fn unordered_item_prefix(&self) -> String {
        "- ".to_string()
    }
    fn ordered_item_prefix(&self, i: i64) -> String {
        format!("{i}. ")
    }
    fn make_subblock_decorator(&self) -> Self {
        Plain
    }
    fn decorate_superscript_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_superscript_end(&self) -> String {
        String::new()
    }
    fn finalise(&mut self, _urls: Vec<String>) -> Vec<html2text::render::TaggedLine<()>> {
        Vec::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_only_with_block_breaks() -> Result<()> {
        let page = r#"<!doctype html><html><head><title>T</title><style>p{color:red}</style>
            <script>var x = "hidden";</script></head><body>
            <h1>Low-rank adaptation</h1>
            <p>LoRA trains two <a href="https://x">small matrices</a> per layer.</p>
            <script>alert("no")</script>
            <ul><li>rank r</li><li>alpha</li></ul>
            <p>Second   paragraph
            on two lines.</p></body></html>"#;
        let text = to_text(page)?;
        assert_eq!(
            text,
            "# Low-rank adaptation\n\nLoRA trains two small matrices per layer.\n\n- rank r\n- alpha\n\nSecond paragraph on two lines."
        );
        Ok(())
    }

    #[test]
    fn table_cells_are_lines_of_text() -> Result<()> {
        let page = "<table><tr><th>rank</th><th>params</th></tr><tr><td>8</td><td>65,536</td></tr></table>";
        assert_eq!(to_text(page)?, "rank\nparams\n8\n65,536");
        Ok(())
    }

    #[test]
    fn long_paragraphs_are_not_wrapped() -> Result<()> {
        let words = "word ".repeat(5000);
        let text = to_text(&format!("<p>{words}</p>"))?;
        assert_eq!(text, words.trim_end());
        Ok(())
    }
}
