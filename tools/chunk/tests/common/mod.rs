//! Shared by the integration tests: the tiny tokenizer and an invariant checker.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{TokenizerBuilder, TokenizerImpl};

/// `testdata/chunk/tokenizer.json`: a byte-level BPE (400 tokens) trained on `testdata/chunk/docs.jsonl`.
/// Created when missing and rewritten with `FTKIT_BLESS=1`; committed so golden files stay put.
pub fn tokenizer_path() -> PathBuf {
    let path = ftkit_testkit::testdata("chunk", "tokenizer.json");
    if path.exists() && std::env::var_os("FTKIT_BLESS").is_none() {
        return path;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let docs = std::fs::read_to_string(ftkit_testkit::testdata("chunk", "docs.jsonl")).unwrap();
    let text: String = docs
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&corpus, text).unwrap();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(400)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        ByteLevel,
        PostProcessorWrapper,
        ByteLevel,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .unwrap();
    tokenizer
        .train_from_files(&mut trainer, vec![corpus.display().to_string()])
        .unwrap();
    tokenizer.save(&path, false).unwrap();
    path
}

/// Checks the chunk invariants for one text; `size_of(a, b)` measures `text[a..b]` in units.
/// Returns a description of the first violation.
pub fn check_chunks(
    text: &str,
    ranges: &[(usize, usize)],
    size: usize,
    overlap: usize,
    size_of: &dyn Fn(usize, usize) -> usize,
) -> Result<(), String> {
    if text.trim().is_empty() {
        return if ranges.is_empty() {
            Ok(())
        } else {
            Err("chunks for a blank text".into())
        };
    }
    let first = ranges.first().ok_or("no chunk")?;
    let last = ranges.last().ok_or("no chunk")?;
    if first.0 != 0 || last.1 != text.len() {
        return Err(format!(
            "chunks span {}..{}, text is 0..{}",
            first.0,
            last.1,
            text.len()
        ));
    }
    for (i, &(a, b)) in ranges.iter().enumerate() {
        if a >= b || !text.is_char_boundary(a) || !text.is_char_boundary(b) {
            return Err(format!("chunk {i} has bad offsets {a}..{b}"));
        }
        let units = size_of(a, b);
        // A chunk over the size is allowed only when it is one grapheme (or char) that alone is over.
        if units > size && text[a..b].chars().count() > 1 {
            return Err(format!(
                "chunk {i} ({a}..{b}, {:?}) has {units} units > {size}",
                &text[a..b]
            ));
        }
        if i > 0 {
            let (pa, pb) = ranges[i - 1];
            if a <= pa || b <= pb {
                return Err(format!(
                    "chunk {i} ({a}..{b}) does not move past chunk {} ({pa}..{pb})",
                    i - 1
                ));
            }
            if a > pb {
                return Err(format!(
                    "gap between chunk {} ({pa}..{pb}) and chunk {i} ({a}..{b})",
                    i - 1
                ));
            }
            let shared = size_of(a, pb);
            if a < pb && shared > overlap {
                return Err(format!(
                    "chunks {} and {i} share {shared} units > overlap {overlap}",
                    i - 1
                ));
            }
            if overlap == 0 && a != pb {
                return Err(format!("chunks {} and {i} overlap with --overlap 0", i - 1));
            }
        }
    }
    Ok(())
}
