//! Property tests of the chunk invariants (library level, chars and tokens).
#![allow(clippy::unwrap_used)]

mod common;

use ft_chunk::breaks::{Break, HEADING, structure};
use ft_chunk::measure::{Chars, Measure, Tokens, load_tokenizer};
use ft_chunk::split::{Config, split};
use proptest::prelude::*;
use unicode_segmentation::UnicodeSegmentation;

/// Texts built from pieces that exercise every break level and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z]{1,12}",
        2 => Just(" ".to_string()),
        1 => Just(". ".to_string()),
        1 => Just("! ".to_string()),
        1 => Just("? \"".to_string()),
        1 => Just("\n".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\n# Head\n".to_string()),
        1 => Just("\n## Sub\n\n".to_string()),
        1 => Just("\n```\ncode\n\n```\n".to_string()),
        1 => Just("\nTitle\n=====\n".to_string()),
        1 => Just("é".to_string()),
        1 => Just("e\u{301}".to_string()),
        1 => Just("😀".to_string()),
        1 => Just("漢字。".to_string()),
        1 => Just("   ".to_string()),
        1 => Just("\r\n".to_string()),
        1 => "[A-Z][a-z]{0,6}",
    ];
    prop::collection::vec(piece, 0..120).prop_map(|v| v.concat())
}

fn params() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..120).prop_flat_map(|size| (Just(size), 0..size, 0..=size))
}

/// Whether the chunk after `(a, b)` could repeat some of it: a grapheme boundary in `(a, b)` within
/// `overlap` chars of `b`, not inside a heading block (a heading line and its underline) and with no
/// heading between it and `b` (the overlap stays within the section).
fn overlap_possible(text: &str, st: &[Break], a: usize, b: usize, overlap: usize) -> bool {
    let inside_heading = |g: usize| {
        st.iter().enumerate().any(|(i, h)| {
            let block_end = st.get(i + 1).map_or(text.len(), |n| n.pos);
            h.level >= HEADING && h.pos < g && g < block_end
        })
    };
    let heading_after = |g: usize| {
        st.iter()
            .any(|h| h.level >= HEADING && h.pos > g && h.pos <= b)
    };
    text.grapheme_indices(true).map(|(i, _)| i).any(|g| {
        g > a
            && g < b
            && text[g..b].chars().count() <= overlap
            && !inside_heading(g)
            && !heading_after(g)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn chars_invariants(text in text(), (size, overlap, min_size) in params()) {
        let mut st = Vec::new();
        structure(&text, &mut st);
        let mut ranges = Vec::new();
        if !text.trim().is_empty() {
            split(&text, &st, &Chars, &Config { size, overlap, min_size }, &mut ranges).unwrap();
        }
        let size_of = |a: usize, b: usize| text[a..b].chars().count();
        if let Err(e) = common::check_chunks(&text, &ranges, size, overlap, &size_of) {
            prop_assert!(false, "{e}\ntext: {text:?}\nsize {size} overlap {overlap} min {min_size}\n{ranges:?}");
        }
        for w in ranges.windows(2) {
            let ((pa, pb), (a, _)) = (w[0], w[1]);
            if overlap > 0 && a == pb {
                prop_assert!(!overlap_possible(&text, &st, pa, pb, overlap),
                    "no overlap although possible: {:?} | {:?}", &text[pa..pb], &text[a..]);
            }
        }
        // Deterministic.
        let mut again = Vec::new();
        if !text.trim().is_empty() {
            split(&text, &st, &Chars, &Config { size, overlap, min_size }, &mut again).unwrap();
        }
        prop_assert_eq!(ranges, again);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn tokens_invariants(text in text(), size in 4usize..60, ov in 0usize..100, min_size in 0usize..8) {
        let overlap = ov % size;
        let tok = load_tokenizer(&common::tokenizer_path()).unwrap();
        let mut st = Vec::new();
        structure(&text, &mut st);
        let mut ranges = Vec::new();
        if !text.trim().is_empty() {
            let m = Tokens::new(&tok, &text).unwrap();
            split(&text, &st, &m, &Config { size, overlap, min_size }, &mut ranges).unwrap();
        }
        let m = Tokens::new(&tok, "").unwrap();
        let size_of = |a: usize, b: usize| m.size(&text, a, b).unwrap();
        if let Err(e) = common::check_chunks(&text, &ranges, size, overlap, &size_of) {
            prop_assert!(false, "{e}\ntext: {text:?}\nsize {size} overlap {overlap} min {min_size}\n{ranges:?}");
        }
    }
}

/// JSON string body of `s` with every non-ASCII char as `\uXXXX` escapes (Python's json.dumps default).
fn ascii_escaped_body(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii() {
            let lit = serde_json::to_string(&c.to_string()).unwrap();
            out.push_str(&lit[1..lit.len() - 1]);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Chunk text is copied from the input literal: every char boundary of the decoded text maps to
    /// a place in the literal where the same suffix starts, for serde's and Python's escaping.
    #[test]
    fn literal_slices_decode_to_text_slices(s in "\\PC{0,40}|[\"\\\\\n\t\u{0}-\u{1f}a-zé😀]{0,40}") {
        let serde_lit = serde_json::to_string(&s).unwrap();
        for body in [serde_lit[1..serde_lit.len() - 1].to_string(), ascii_escaped_body(&s)] {
            let mut map = Vec::new();
            let text = ft_chunk::jsonstr::decode(&body, &mut map).unwrap();
            prop_assert_eq!(&*text, s.as_str());
            for d in (0..=s.len()).filter(|&d| s.is_char_boundary(d)) {
                let r = ft_chunk::jsonstr::body_offset(&map, d);
                let rest: String = serde_json::from_str(&format!("\"{}\"", &body[r..])).unwrap();
                prop_assert_eq!(rest.as_str(), &s[d..]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A document line gives the chunks of its decoded text, however the text was escaped.
    #[test]
    fn records_carry_the_ranges_of_the_text(text in text(), (size, overlap, min_size) in params()) {
        let chunker = ft_chunk::Chunker {
            config: Config { size, overlap, min_size },
            tokenizer: None,
            text_field: "text".into(),
            id_field: "id".into(),
        };
        let mut expected = Vec::new();
        chunker.ranges(&text, &mut expected, &mut Vec::new()).unwrap();
        let serde_line = serde_json::json!({ "id": "d", "text": text }).to_string();
        let python_line = format!("{{\"id\": \"d\", \"text\": \"{}\"}}", ascii_escaped_body(&text));
        for line in [serde_line, python_line] {
            let mut out = Vec::new();
            chunker.process(&line, &mut out).unwrap();
            let got: Vec<(usize, usize)> = std::str::from_utf8(&out)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let (s, e) = (v["start"].as_u64().unwrap() as usize, v["end"].as_u64().unwrap() as usize);
                    assert_eq!(v["text"].as_str().unwrap(), &text[s..e]);
                    (s, e)
                })
                .collect();
            prop_assert_eq!(&got, &expected);
        }
    }
}
