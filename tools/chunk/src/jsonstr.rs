//! JSON string literals decoded with a map back to their escaped form.
//!
//! ft-chunk writes each chunk's text by copying the matching slice of the input literal instead
//! of escaping the decoded text again: a chunk boundary is a char boundary, so it never falls inside
//! an escape sequence, and the slice is a valid JSON string body with the same value. (Escapes are
//! kept as the input wrote them: `\u00e9` stays `\u00e9`.)

use anyhow::{Result, bail};
use std::borrow::Cow;

/// Decoded text of a JSON string body (the literal without its quotes), with, after each escape
/// sequence, the pair (decoded length, literal length) so far.
pub fn decode<'a>(body: &'a str, map: &mut Vec<(usize, usize)>) -> Result<Cow<'a, str>> {
    let mut buf = String::new();
    Ok(match decode_into(body, &mut buf, map)? {
        true => Cow::Owned(buf),
        false => Cow::Borrowed(body),
    })
}

/// As [`decode`], into a reused buffer: returns false, leaving `out` empty, when `body` has no
/// escapes and is its own text.
pub fn decode_into(body: &str, out: &mut String, map: &mut Vec<(usize, usize)>) -> Result<bool> {
    map.clear();
    out.clear();
    let b = body.as_bytes();
    let Some(first) = memchr::memchr(b'\\', b) else {
        return Ok(false);
    };
    out.reserve(body.len());
    let (mut i, mut k) = (0, first);
    loop {
        out.push_str(&body[i..k]);
        let (c, len) = match b.get(k + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => unicode_escape(b, k)?,
            _ => bail!("invalid escape in JSON string"),
        };
        out.push(c);
        i = k + len;
        map.push((out.len(), i));
        match memchr::memchr(b'\\', &b[i..]) {
            Some(next) => k = i + next,
            None => break,
        }
    }
    out.push_str(&body[i..]);
    Ok(true)
}

fn hex4(b: &[u8], at: usize) -> Result<u32> {
    let digits = b.get(at..at + 4).and_then(|d| std::str::from_utf8(d).ok());
    match digits.and_then(|d| u32::from_str_radix(d, 16).ok()) {
        Some(v) => Ok(v),
        None => bail!("invalid \\u escape in JSON string"),
    }
}

/// The char of the `\u` escape at `k` (a surrogate pair takes two escapes) and its length.
fn unicode_escape(b: &[u8], k: usize) -> Result<(char, usize)> {
    let hi = hex4(b, k + 2)?;
    if (0xd800..0xdc00).contains(&hi) {
        if b.get(k + 6..k + 8) == Some(b"\\u") {
            let lo = hex4(b, k + 8)?;
            if (0xdc00..0xe000).contains(&lo) {
                let c = char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
                if let Some(c) = c {
                    return Ok((c, 12));
                }
            }
        }
        bail!("lone surrogate \\u{hi:04x} in JSON string");
    }
    match char::from_u32(hi) {
        Some(c) => Ok((c, 6)),
        None => bail!("lone surrogate \\u{hi:04x} in JSON string"),
    }
}

/// Offset in the literal body of decoded offset `d` (a char boundary).
pub fn body_offset(map: &[(usize, usize)], d: usize) -> usize {
    match map.partition_point(|&(dec, _)| dec <= d) {
        0 => d,
        i => {
            let (dec, raw) = map[i - 1];
            raw + (d - dec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_maps_back() -> Result<()> {
        let body = r#"a\"b\\c\n\u00e9\ud83d\ude00 z\/"#;
        let mut map = Vec::new();
        let text = decode(body, &mut map)?;
        let expected: String = serde_json::from_str(&format!("\"{body}\""))?;
        assert_eq!(text, expected);
        // Every char boundary maps to a place in the body where the same suffix begins.
        for (d, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let r = body_offset(&map, d);
            let rest: String = serde_json::from_str(&format!("\"{}\"", &body[r..]))?;
            assert_eq!(rest, &text[d..], "at {d}");
        }
        assert!(matches!(decode("plain", &mut map)?, Cow::Borrowed("plain")));
        assert!(map.is_empty());
        assert!(decode(r"\ud800x", &mut map).is_err());
        assert!(decode(r"\q", &mut map).is_err());
        Ok(())
    }
}
