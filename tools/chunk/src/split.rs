//! Cutting one text into chunks.
//!
//! Semantics (those of the text-splitter crate, plus real overlap):
//! 1. From the chunk start, the window is the longest piece that fits in `size` units.
//!    If the rest of the text fits, it is the last chunk.
//! 2. Otherwise the chunk ends at the best break inside the window after the previous chunk's end:
//!    the highest level present (heading > paragraph > line > sentence > word > grapheme > char),
//!    and of that level the last one, so a chunk holds as many whole units of that level as fit.
//!    With `min_size`, breaks that would give this chunk fewer than `min_size` units of new text
//!    (beyond the previous chunk's end) or leave fewer than `min_size` units after it are passed
//!    over while a break of sentence level or better exists elsewhere in the window.
//! 3. The next chunk starts inside the previous one so that they share at most `overlap` units:
//!    at the earliest sentence-or-better start in that tail, else the earliest word start, else
//!    the earliest grapheme boundary. It repeats nothing when `overlap` is 0, and never reaches
//!    back over a heading (a chunk that ends where a section begins is followed without overlap).
//!
//! Chunks are never empty, every byte of the text lies in a chunk, each chunk ends after the
//! previous one, and consecutive chunks overlap by at most `overlap` units.

use crate::breaks::{self, Break, CHAR, HEADING, SENTENCE};
use crate::measure::Measure;
use anyhow::Result;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub size: usize,
    pub overlap: usize,
    pub min_size: usize,
}

fn next_char(text: &str, p: usize) -> usize {
    text[p..].chars().next().map_or(p, |c| p + c.len_utf8())
}

fn prev_char(text: &str, p: usize) -> usize {
    text[..p]
        .chars()
        .next_back()
        .map_or(p, |c| p - c.len_utf8())
}

/// The best break in `(lo, hi]` of level `min_level` or higher (see the module docs).
fn find_break(
    text: &str,
    structure: &[Break],
    lo: usize,
    hi: usize,
    min_level: u8,
) -> Option<usize> {
    if hi <= lo {
        return None;
    }
    let a = structure.partition_point(|b| b.pos <= lo);
    let z = a + structure[a..].partition_point(|b| b.pos <= hi);
    if let Some(top) = structure[a..z].iter().map(|b| b.level).max() {
        return structure[a..z]
            .iter()
            .rev()
            .find(|b| b.level == top)
            .map(|b| b.pos);
    }
    if let Some(p) = breaks::last_sentence(text, lo, hi) {
        return Some(p);
    }
    if min_level > CHAR {
        return None;
    }
    breaks::last_word(text, lo, hi)
        .or_else(|| breaks::last_grapheme(text, lo, hi))
        .or(Some(hi))
}

/// The earliest sentence-or-better start in `[from, to)`, else word start, else grapheme boundary.
fn first_start(text: &str, structure: &[Break], from: usize, to: usize) -> Option<usize> {
    let i = structure.partition_point(|b| b.pos < from);
    let structural = structure.get(i).map(|b| b.pos).filter(|&p| p < to);
    let sentence = breaks::first_sentence(text, from, structural.unwrap_or(to));
    sentence
        .or(structural)
        .or_else(|| breaks::first_word(text, from, to))
        .or_else(|| breaks::first_grapheme(text, from, to))
}

/// Cuts `text` into `(start, end)` byte ranges, appended to `out` (cleared first).
/// `structure` holds the text's heading, paragraph and line breaks ([`breaks::structure`]).
pub fn split<M: Measure>(
    text: &str,
    structure: &[Break],
    m: &M,
    cfg: &Config,
    out: &mut Vec<(usize, usize)>,
) -> Result<()> {
    out.clear();
    let n = text.len();
    let (mut start, mut lo) = (0, 0);
    while start < n {
        let mut limit = m.advance(text, start, cfg.size);
        let end = loop {
            let end = if limit >= n {
                n
            } else {
                choose_end(text, structure, m, cfg, start, lo, limit)
            };
            if M::EXACT || m.size(text, start, end)? <= cfg.size {
                break end;
            }
            if end <= next_char(text, lo) {
                // Even one new char does not fit after the overlap: drop the overlap, and past
                // that emit the char alone (a token sequence longer than --size for one char).
                if start < lo {
                    start = lo;
                    limit = m.advance(text, start, cfg.size);
                    continue;
                }
                break end;
            }
            limit = prev_char(text, end);
        };
        out.push((start, end));
        if end >= n {
            break;
        }
        let next = if cfg.overlap == 0 {
            end
        } else {
            overlap_start(text, structure, m, cfg, start, end)?
        };
        lo = end;
        start = next;
    }
    Ok(())
}

/// Where the chunk starting at `start` ends, given its window `(lo, limit]` (`limit < text.len()`).
fn choose_end<M: Measure>(
    text: &str,
    structure: &[Break],
    m: &M,
    cfg: &Config,
    start: usize,
    lo: usize,
    limit: usize,
) -> usize {
    if cfg.min_size > 0 {
        // New text (after the previous chunk's end) of at least min_size units.
        let lo_min = lo.max(m.advance(text, lo.max(start), cfg.min_size - 1));
        let hi_min = limit.min(
            m.retreat(text, text.len(), cfg.min_size - 1)
                .saturating_sub(1),
        );
        if let Some(p) = find_break(text, structure, lo_min, hi_min, SENTENCE) {
            return p;
        }
    }
    find_break(text, structure, lo, limit, CHAR).unwrap_or_else(|| next_char(text, lo))
}

/// Where the chunk after `(start, end)` starts: inside it, sharing at most `overlap` units.
fn overlap_start<M: Measure>(
    text: &str,
    structure: &[Break],
    m: &M,
    cfg: &Config,
    start: usize,
    end: usize,
) -> Result<usize> {
    let mut from = m
        .retreat(text, end, cfg.overlap)
        .max(next_char(text, start));
    // The overlap stays within the section the next chunk starts in: it never reaches back over a
    // heading (and there is none when the chunk ended where a section begins).
    let i = structure.partition_point(|b| b.pos <= end);
    let mut tail = structure[..i].iter().rev().take_while(|b| b.pos >= from);
    if let Some(h) = tail.find(|b| b.level >= HEADING) {
        from = h.pos;
    }
    while from < end {
        let Some(s) = first_start(text, structure, from, end) else {
            break;
        };
        if M::EXACT || m.size(text, s, end)? <= cfg.overlap {
            return Ok(s);
        }
        from = next_char(text, s);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Chars;

    fn chunks(text: &str, size: usize, overlap: usize, min_size: usize) -> Vec<&str> {
        let mut st = Vec::new();
        breaks::structure(text, &mut st);
        let mut out = Vec::new();
        split(
            text,
            &st,
            &Chars,
            &Config {
                size,
                overlap,
                min_size,
            },
            &mut out,
        )
        .unwrap_or_default();
        out.iter().map(|&(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn like_text_splitter_without_trimming() {
        // text-splitter's doc example gives "Some text", "from a", "document" at size 10 because it
        // trims; here separators stay in the chunk before them and count towards its size.
        assert_eq!(
            chunks("Some text\n\nfrom a\ndocument", 11, 0, 0),
            ["Some text\n\n", "from a\n", "document"]
        );
        assert_eq!(
            chunks("Some text\n\nfrom a\ndocument", 10, 0, 0),
            ["Some ", "text\n\n", "from a\n", "document"]
        );
    }

    #[test]
    fn prefers_headings_then_paragraphs() {
        let text = "# A\n\nalpha beta.\n\ngamma delta.\n# B\n\nepsilon.\n";
        assert_eq!(
            chunks(text, 40, 0, 0),
            ["# A\n\nalpha beta.\n\ngamma delta.\n", "# B\n\nepsilon.\n"]
        );
        assert_eq!(
            chunks(text, 20, 0, 0),
            [
                "# A\n\nalpha beta.\n\n",
                "gamma delta.\n",
                "# B\n\nepsilon.\n"
            ]
        );
    }

    #[test]
    fn long_paragraph_cuts_at_sentences_and_overlaps_by_a_sentence() {
        let text = "One two three. Four five six. Seven eight nine. Ten eleven.";
        assert_eq!(
            chunks(text, 32, 0, 0),
            [
                "One two three. Four five six. ",
                "Seven eight nine. Ten eleven."
            ]
        );
        assert_eq!(
            chunks(text, 34, 18, 0),
            [
                "One two three. Four five six. ",
                "Four five six. Seven eight nine. ",
                "Seven eight nine. Ten eleven."
            ]
        );
    }

    #[test]
    fn falls_back_to_words_then_chars() {
        assert_eq!(
            chunks("aaaa bbbb cccc", 7, 0, 0),
            ["aaaa ", "bbbb ", "cccc"]
        );
        assert_eq!(chunks("abcdefgh", 3, 0, 0), ["abc", "def", "gh"]);
        assert_eq!(chunks("abcdefgh", 3, 1, 0), ["abc", "cde", "efg", "gh"]);
    }

    #[test]
    fn min_size_avoids_tiny_chunks() {
        let text = "# T\n\nThe first sentence is here. The second one follows it.";
        assert_eq!(chunks(text, 40, 0, 0)[0], "# T\n\n");
        assert_eq!(
            chunks(text, 40, 0, 10)[0],
            "# T\n\nThe first sentence is here. "
        );
    }
}
