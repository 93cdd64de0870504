//! Chunk sizes: Unicode characters, or tokens of a Hugging Face tokenizer.

use anyhow::{Result, anyhow};
use tokenizers::Tokenizer;

/// How the size of a piece of text is measured.
pub trait Measure {
    /// True when [`Measure::advance`] and [`Measure::retreat`] are exact, so [`Measure::size`] need
    /// not be asked to confirm.
    const EXACT: bool;
    /// The largest char boundary `p >= from` with `size(from..p) <= n` (`text.len()` when the rest fits).
    fn advance(&self, text: &str, from: usize, n: usize) -> usize;
    /// The smallest char boundary `p <= to` with `size(p..to) <= n`.
    fn retreat(&self, text: &str, to: usize, n: usize) -> usize;
    /// The size of `text[a..b]`.
    fn size(&self, text: &str, a: usize, b: usize) -> Result<usize>;
}

/// Number of chars in UTF-8 bytes: the bytes that are not continuation bytes (vectorises well).
#[inline]
pub fn count_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count()
}

#[inline]
fn is_continuation(b: u8) -> bool {
    (b as i8) < -0x40
}

/// Size in Unicode scalar values (Rust `char`s, Python `len(str)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Chars;

impl Measure for Chars {
    const EXACT: bool = true;

    fn advance(&self, text: &str, from: usize, n: usize) -> usize {
        let b = text.as_bytes();
        let (mut pos, mut need) = (from, n);
        // Each round takes `need` bytes, which hold at most `need` chars.
        while need > 0 && pos < b.len() {
            let end = (pos + need).min(b.len());
            need -= count_chars(&b[pos..end]);
            pos = end;
        }
        // A char whose lead byte was counted but which runs past `pos` belongs to the piece.
        while pos < b.len() && is_continuation(b[pos]) {
            pos += 1;
        }
        pos
    }

    fn retreat(&self, text: &str, to: usize, n: usize) -> usize {
        let b = text.as_bytes();
        let (mut pos, mut need) = (to, n);
        while need > 0 && pos > 0 {
            let start = pos.saturating_sub(need);
            need -= count_chars(&b[start..pos]);
            pos = start;
        }
        // Landing inside a char whose lead byte lies before `pos`: that char was not counted.
        while pos < to && is_continuation(b[pos]) {
            pos += 1;
        }
        pos
    }

    fn size(&self, text: &str, a: usize, b: usize) -> Result<usize> {
        Ok(count_chars(&text.as_bytes()[a..b]))
    }
}

/// Loads a `tokenizer.json` for counting, with truncation and padding turned off.
pub fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    tok.with_truncation(None)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    tok.with_padding(None);
    Ok(tok)
}

/// Size in tokens (no special tokens added). Cut points come from one encoding of the whole
/// document; each candidate chunk is then encoded on its own to confirm it fits.
pub struct Tokens<'t> {
    tokenizer: &'t Tokenizer,
    /// Byte offset where each token of the document starts, non-decreasing.
    starts: Vec<usize>,
}

impl<'t> Tokens<'t> {
    pub fn new(tokenizer: &'t Tokenizer, text: &str) -> Result<Self> {
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let mut starts = Vec::with_capacity(enc.len());
        let mut last = 0;
        for &(s, _) in enc.get_offsets() {
            last = last.max(s.min(text.len()));
            starts.push(last);
        }
        Ok(Self { tokenizer, starts })
    }
}

fn floor_boundary(text: &str, mut p: usize) -> usize {
    while !text.is_char_boundary(p) {
        p -= 1;
    }
    p
}

fn ceil_boundary(text: &str, mut p: usize) -> usize {
    while !text.is_char_boundary(p) {
        p += 1;
    }
    p
}

impl Measure for Tokens<'_> {
    const EXACT: bool = false;

    fn advance(&self, text: &str, from: usize, n: usize) -> usize {
        if n == 0 {
            return from;
        }
        let i = self.starts.partition_point(|&s| s < from);
        match self.starts.get(i + n) {
            None => text.len(),
            Some(&p) => floor_boundary(text, p.max(from)),
        }
    }

    fn retreat(&self, text: &str, to: usize, n: usize) -> usize {
        if n == 0 {
            return to;
        }
        let i = self.starts.partition_point(|&s| s < to);
        let p = if i >= n { self.starts[i - n] } else { 0 };
        ceil_boundary(text, p.min(to))
    }

    fn size(&self, text: &str, a: usize, b: usize) -> Result<usize> {
        let enc = self
            .tokenizer
            .encode_fast(&text[a..b], false)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_advance_and_retreat_count_unicode_scalars() -> Result<()> {
        let t = "aé😀b€c";
        let m = Chars;
        assert_eq!(m.advance(t, 0, 0), 0);
        assert_eq!(m.advance(t, 0, 2), "aé".len());
        assert_eq!(m.advance(t, 0, 3), "aé😀".len());
        assert_eq!(m.advance(t, 1, 3), "aé😀b".len());
        assert_eq!(m.advance(t, 0, 99), t.len());
        assert_eq!(m.retreat(t, t.len(), 2), t.len() - "€c".len());
        assert_eq!(m.retreat(t, "aé😀".len(), 1), "aé".len());
        assert_eq!(m.retreat(t, t.len(), 99), 0);
        assert_eq!(m.size(t, 0, t.len())?, 6);
        Ok(())
    }
}
