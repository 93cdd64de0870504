//! Speed of language detection (`ftkit_llm::lang`, whatlang underneath) on chunk-sized and
//! question-sized pieces of text files, in MB/s and detections/s.
//!
//!     cargo run --release -p ftkit-llm --example lang_speed -- testdata/docs/*
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use std::time::Instant;

/// Pieces of about `size` bytes, cut at whitespace.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(size);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let end = rest[end..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |i| end + i);
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

fn main() -> Result<()> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        bail!("usage: lang_speed FILE...");
    }
    let mut text = String::new();
    for f in &files {
        text.push_str(&std::fs::read_to_string(f).with_context(|| format!("{f}: cannot read"))?);
        text.push('\n');
    }
    for size in [1000, 80] {
        let parts = pieces(&text, size);
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        // Enough rounds for about 20 MB, so the timing is not noise.
        let rounds = (20_000_000 / bytes.max(1)).max(1);
        let start = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for p in &parts {
                found += usize::from(!ftkit_llm::lang::detect(p).is_empty());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{size:>5}-byte pieces: {:.1} MB/s, {:.0} detections/s ({found} detections, {:.2} s)",
            (bytes * rounds) as f64 / secs / 1e6,
            (parts.len() * rounds) as f64 / secs,
            secs
        );
    }
    Ok(())
}
