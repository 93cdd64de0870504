//! Where a text may be cut, and how good each place is.
//!
//! A break is a byte position where a new unit starts; the whitespace that separates two units
//! (newlines, blank lines, spaces) stays with the unit before it, so chunks start on content.
//! Levels, from best to worst:
//!
//! | level | where |
//! |-------|-------|
//! | heading (6..=11) | before a markdown ATX heading (`# ..` is 11, `###### ..` is 6), a setext or reStructuredText title (`===` underline 11, `---` 10, other adornments 9) |
//! | paragraph (5) | before the first line after a blank line, before and after a fenced code block |
//! | line (4) | before any other line (and blank lines inside fenced code) |
//! | sentence (3) | after `.`, `!`, `?` (plus closing quotes or brackets) and whitespace, before a character that is not a lowercase ASCII letter; after `。！？` |
//! | word (2) | before a non-whitespace character that follows ASCII whitespace |
//! | grapheme (1) | Unicode extended grapheme cluster boundary |
//! | char (0) | any char boundary |
//!
//! Heading, paragraph and line breaks come from one scan of the text ([`structure`]); the lower
//! levels are found on demand inside the window being cut, so prose costs no more than a newline scan.

use unicode_segmentation::GraphemeCursor;

pub const CHAR: u8 = 0;
pub const GRAPHEME: u8 = 1;
pub const WORD: u8 = 2;
pub const SENTENCE: u8 = 3;
pub const LINE: u8 = 4;
pub const PARAGRAPH: u8 = 5;
/// The lowest heading level (`######`).
pub const HEADING: u8 = 6;
/// Level of an ATX heading of depth `d` (1..=6): `#` is 11, `######` is 6.
pub const fn heading(depth: u8) -> u8 {
    12 - depth
}

/// A place where a chunk may end and the next unit start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Break {
    pub pos: usize,
    pub level: u8,
}

fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|&b| b == b' ' || b == b'\t' || b == b'\r' || b == 0x0b || b == 0x0c)
}

/// The line without up to three leading spaces, or `None` when it is indented further (code).
fn unindent(line: &[u8]) -> Option<&[u8]> {
    let spaces = line.iter().take(4).take_while(|&&b| b == b' ').count();
    (spaces < 4).then(|| &line[spaces..])
}

/// Depth of an ATX heading line (`## Title`), if it is one.
fn atx_depth(line: &[u8]) -> Option<u8> {
    let line = unindent(line)?;
    let hashes = line.iter().take(7).take_while(|&&b| b == b'#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    match line.get(hashes) {
        None | Some(b' ' | b'\t' | b'\r') => Some(hashes as u8),
        _ => None,
    }
}

/// A code fence opener or closer: its character and length.
fn fence(line: &[u8]) -> Option<(u8, usize)> {
    let line = unindent(line)?;
    let c = *line.first()?;
    if c != b'`' && c != b'~' {
        return None;
    }
    let n = line.iter().take_while(|&&b| b == c).count();
    (n >= 3).then_some((c, n))
}

/// A title adornment (`=====`, `-----`, `~~~~~`, ...): the character, when the line is one.
fn adornment(line: &[u8]) -> Option<u8> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    let line = &line[..end];
    let c = *line.first()?;
    if line.len() < 3 || !b"=-~^*+#\"'`:._".contains(&c) || line.iter().any(|&b| b != c) {
        return None;
    }
    Some(c)
}

fn adornment_level(c: u8) -> u8 {
    match c {
        b'=' => heading(1),
        b'-' => heading(2),
        _ => heading(3),
    }
}

/// What [`structure`] remembers about a content line.
#[derive(Clone, Copy)]
struct LineInfo {
    /// Index in the break list of the break before this line (None: first line, or no break kept).
    brk: Option<usize>,
    /// The line starts a block (first line of the text, or after a blank line).
    starts_block: bool,
    /// The line is a title adornment made of this character.
    adornment: Option<u8>,
}

/// Heading, paragraph and line breaks of `text`, in ascending position, below `text.len()`.
/// The first line gets one at 0 too when it starts the text (it tells whether the text opens with a
/// heading; no chunk ends at 0).
pub fn structure(text: &str, out: &mut Vec<Break>) {
    structure_lines(text, memchr::memchr_iter(b'\n', text.as_bytes()), out);
}

/// [`structure`] given the positions of the text's `\n` bytes, in order (all of them).
pub fn structure_lines(
    text: &str,
    mut newlines: impl Iterator<Item = usize>,
    out: &mut Vec<Break>,
) {
    out.clear();
    let b = text.as_bytes();
    let mut line_start = 0;
    let mut blank_before = false;
    let mut in_fence: Option<(u8, usize)> = None;
    let mut after_fence = false;
    // The previous two content lines, when no blank line separates them from this one.
    let mut prev: Option<LineInfo> = None;
    let mut prev2: Option<LineInfo> = None;
    while line_start < b.len() {
        let line_end = newlines.next().unwrap_or(b.len());
        let line = &b[line_start..line_end];
        let next = line_end + 1;
        if is_blank(line) {
            blank_before = true;
            prev = None;
            prev2 = None;
            line_start = next;
            continue;
        }
        let mut level = if blank_before || line_start == 0 {
            PARAGRAPH
        } else {
            LINE
        };
        let mut keep = true;
        let mut adorned = None;
        // Fences, headings and adornments start with punctuation: most lines need no closer look.
        let plain = line
            .iter()
            .find(|&&b| b != b' ')
            .is_some_and(u8::is_ascii_alphanumeric);
        if plain && in_fence.is_none() {
            if after_fence {
                level = PARAGRAPH;
                after_fence = false;
            }
        } else if let Some((c, n)) = in_fence {
            if fence(line).is_some_and(|(c2, n2)| c2 == c && n2 >= n) {
                in_fence = None;
                after_fence = true;
            }
            level = LINE;
        } else if let Some(f) = fence(line) {
            in_fence = Some(f);
            level = PARAGRAPH;
        } else {
            if after_fence {
                level = PARAGRAPH;
                after_fence = false;
            }
            if let Some(d) = atx_depth(line) {
                level = heading(d);
            } else if let Some(c) = adornment(line) {
                adorned = Some(c);
                if let Some(title) = prev.filter(|p| p.adornment.is_none()) {
                    // An underline: the title and its underline stay together, and the section
                    // starts before the title (or before its overline in reStructuredText).
                    let over = prev2.filter(|o| o.adornment == Some(c) && o.starts_block);
                    let target = match over {
                        Some(o) => Some(o.brk),
                        None if title.starts_block => Some(title.brk),
                        None => None,
                    };
                    if let Some(target) = target {
                        keep = false;
                        if let Some(i) = target {
                            out[i].level = out[i].level.max(adornment_level(c));
                        }
                    }
                }
            }
        }
        let brk = if keep {
            out.push(Break {
                pos: line_start,
                level,
            });
            Some(out.len() - 1)
        } else {
            None
        };
        prev2 = prev;
        prev = Some(LineInfo {
            brk,
            starts_block: blank_before || line_start == 0,
            adornment: adorned,
        });
        blank_before = false;
        line_start = next;
    }
}

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Closing punctuation allowed between a terminator and the space after it.
fn closer_len(b: &[u8], i: usize) -> usize {
    match b.get(i..) {
        Some([b'"' | b'\'' | b')' | b']' | b'*' | b'_' | b'`', ..]) => 1,
        // ” ’ (E2 80 9D / E2 80 99) and » (C2 BB)
        Some([0xe2, 0x80, 0x9d | 0x99, ..]) => 3,
        Some([0xc2, 0xbb, ..]) => 2,
        _ => 0,
    }
}

/// If a sentence terminator ends at byte `after` (exclusive), the position where the next sentence starts.
fn sentence_start_after(b: &[u8], after: usize, cjk: bool) -> Option<usize> {
    let mut i = after;
    loop {
        let n = closer_len(b, i);
        if n == 0 {
            break;
        }
        i += n;
    }
    let spaces_from = i;
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    if i >= b.len() || (i == spaces_from && !cjk) || b[i].is_ascii_lowercase() {
        return None;
    }
    Some(i)
}

/// Terminators: `.` `!` `?` (ASCII) and `。` `！` `？` (E3 80 82, EF BC 81, EF BC 9F).
/// Returns the end of the terminator that starts at `i`, and whether it is a CJK one.
fn terminator_at(b: &[u8], i: usize) -> Option<(usize, bool)> {
    match &b[i..] {
        [b'.' | b'!' | b'?', ..] => Some((i + 1, false)),
        [0xe3, 0x80, 0x82, ..] | [0xef, 0xbc, 0x81 | 0x9f, ..] => Some((i + 3, true)),
        _ => None,
    }
}

/// The last sentence start in `(lo, hi]`.
pub fn last_sentence(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    let window = &b[lo..hi];
    if window.is_ascii() {
        for q in memchr::memrchr3_iter(b'.', b'!', b'?', window) {
            let q = lo + q;
            if let Some(p) = sentence_start_after(b, q + 1, false)
                && p > lo
                && p <= hi
            {
                return Some(p);
            }
        }
        return None;
    }
    (lo..hi).rev().find_map(|q| {
        let (after, cjk) = terminator_at(b, q)?;
        sentence_start_after(b, after, cjk).filter(|&p| p > lo && p <= hi)
    })
}

/// The first sentence start in `[lo, hi)` (the terminator may lie a little before `lo`).
pub fn first_sentence(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = lo.saturating_sub(24);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let window = &b[from..hi];
    if window.is_ascii() {
        for q in memchr::memchr3_iter(b'.', b'!', b'?', window) {
            let q = from + q;
            if let Some(p) = sentence_start_after(b, q + 1, false) {
                if p >= hi {
                    return None;
                }
                if p >= lo {
                    return Some(p);
                }
            }
        }
        return None;
    }
    (from..hi).find_map(|q| {
        let (after, cjk) = terminator_at(b, q)?;
        sentence_start_after(b, after, cjk).filter(|&p| p >= lo && p < hi)
    })
}

/// The last word start (non-space after an ASCII space) in `(lo, hi]`.
pub fn last_word(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    let top = hi.min(b.len().saturating_sub(1));
    (lo + 1..=top)
        .rev()
        .find(|&p| is_space(b[p - 1]) && !is_space(b[p]))
}

/// The first word start in `[lo, hi)`.
pub fn first_word(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    (lo.max(1)..hi).find(|&p| is_space(b[p - 1]) && !is_space(b[p]))
}

/// The last grapheme boundary in `(lo, hi]` (`hi` a char boundary).
pub fn last_grapheme(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let mut cursor = GraphemeCursor::new(hi, text.len(), true);
    if cursor.is_boundary(text, 0).unwrap_or(true) {
        return (hi > lo).then_some(hi);
    }
    match cursor.prev_boundary(text, 0) {
        Ok(Some(p)) if p > lo => Some(p),
        _ => None,
    }
}

/// The first grapheme boundary in `[lo, hi)` (`lo` a char boundary).
pub fn first_grapheme(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let mut cursor = GraphemeCursor::new(lo, text.len(), true);
    if cursor.is_boundary(text, 0).unwrap_or(true) {
        return (lo < hi).then_some(lo);
    }
    match cursor.next_boundary(text, 0) {
        Ok(Some(p)) if p < hi => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(text: &str) -> Vec<(&str, u8)> {
        let mut out = Vec::new();
        structure(text, &mut out);
        out.iter()
            .map(|b| (text[b.pos..].lines().next().unwrap_or(""), b.level))
            .collect()
    }

    #[test]
    fn given_newlines_match_the_scan() {
        let text = "# A\n\nb\r\nc\n```\nd\n\n```\n";
        let mut scanned = Vec::new();
        structure(text, &mut scanned);
        let mut given = Vec::new();
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i);
        structure_lines(text, newlines, &mut given);
        assert_eq!(scanned, given);
    }

    #[test]
    fn markdown_structure() {
        let text = "# Title\n\nIntro line\nsecond line\n\n## Part\n\n```sh\n# not a heading\n\nls\n```\nafter\n";
        assert_eq!(
            levels(text),
            vec![
                ("# Title", heading(1)),
                ("Intro line", PARAGRAPH),
                ("second line", LINE),
                ("## Part", heading(2)),
                ("```sh", PARAGRAPH),
                ("# not a heading", LINE),
                ("ls", LINE),
                ("```", LINE),
                ("after", PARAGRAPH),
            ]
        );
    }

    #[test]
    fn setext_and_rst_titles() {
        let text = "Intro\n\nTitle\n=====\n\nBody\n\n-----\nOver\n-----\n\nText\nmore\n---\n";
        assert_eq!(
            levels(text),
            vec![
                ("Intro", PARAGRAPH),
                ("Title", heading(1)),
                ("Body", PARAGRAPH),
                ("-----", heading(2)),
                ("Over", LINE),
                ("Text", PARAGRAPH),
                ("more", LINE),
                ("---", LINE),
            ]
        );
    }

    #[test]
    fn sentences() {
        let t = "One. Two! \"Three?\" four. e.g. x. Five\u{3002}Six";
        assert_eq!(first_sentence(t, 0, t.len()), Some(5));
        assert_eq!(first_sentence(t, 6, t.len()), Some(10));
        let six = t.find("Six").unwrap_or_default();
        assert_eq!(last_sentence(t, 0, t.len()), Some(six));
        let five = t.find("Five").unwrap_or_default();
        assert_eq!(last_sentence(t, 0, six - 1), Some(five));
        assert_eq!(last_sentence("3.14 is pi", 0, 10), None);
    }

    #[test]
    fn words_and_graphemes() {
        let t = "ab cd  ef";
        assert_eq!(last_word(t, 0, 9), Some(7));
        assert_eq!(last_word(t, 0, 6), Some(3));
        assert_eq!(first_word(t, 4, 9), Some(7));
        let g = "e\u{301}e\u{301}";
        assert_eq!(last_grapheme(g, 0, 4), Some(3));
        assert_eq!(last_grapheme(g, 0, 1), None);
        assert_eq!(first_grapheme(g, 1, 6), Some(3));
    }
}
