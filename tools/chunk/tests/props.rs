//! Property tests of the chunk invariants (library level, chars and tokens).
#![allow(clippy::unwrap_used)]

mod common;

use ft_chunk::breaks::{HEADING, structure};
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

/// Whether some grapheme boundary lies in `(a, b)` within `overlap` chars of `b`.
fn overlap_possible(text: &str, a: usize, b: usize, overlap: usize) -> bool {
    text.grapheme_indices(true)
        .map(|(i, _)| i)
        .any(|g| g > a && g < b && text[g..b].chars().count() <= overlap)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

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
            let section_starts = st.iter().any(|b| b.pos == pb && b.level >= HEADING);
            if overlap > 0 && a == pb && !section_starts {
                prop_assert!(!overlap_possible(&text, pa, pb, overlap),
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
