//! Times the stages of ft-chunk on one thread: `cargo run --release --example stages -- FILE`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use ft_chunk::breaks::structure;
use ft_chunk::measure::Chars;
use ft_chunk::split::{Config, split};
use ftkit_core::RawRecord;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let data = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = data.lines().collect();
    let mb = data.len() as f64 / 1e6;
    let report = |name: &str, t: Instant| {
        let s = t.elapsed().as_secs_f64();
        println!("{name:<28} {s:6.3} s {:8.0} MB/s", mb / s);
    };

    let t = Instant::now();
    let n = lines
        .iter()
        .map(|l| std::str::from_utf8(l.as_bytes()).unwrap().len())
        .sum::<usize>();
    report("utf8 check", t);
    let t = Instant::now();
    let recs: Vec<RawRecord> = lines.iter().map(|l| RawRecord::parse(l).unwrap()).collect();
    report("RawRecord::parse", t);
    let t = Instant::now();
    let texts: Vec<_> = recs
        .iter()
        .map(|r| r.require_str("text").unwrap())
        .collect();
    report("require_str(text)", t);
    let t = Instant::now();
    let mut st = Vec::new();
    let mut nb = 0;
    for text in &texts {
        structure(text, &mut st);
        nb += st.len();
    }
    report("structure", t);
    let cfg = Config {
        size: 1000,
        overlap: 200,
        min_size: 100,
    };
    let t = Instant::now();
    let mut spans = Vec::new();
    let mut nc = 0;
    let mut all = Vec::new();
    for text in &texts {
        structure(text, &mut st);
        split(text, &st, &Chars, &cfg, &mut spans).unwrap();
        nc += spans.len();
        all.push(spans.clone());
    }
    report("structure + split", t);
    let t = Instant::now();
    let mut out = Vec::with_capacity(200 << 20);
    for (text, spans) in texts.iter().zip(&all) {
        for &(a, b) in spans {
            ftkit_core::jsonl::write_json_str(&mut out, &text[a..b]);
        }
    }
    report("escape chunk texts", t);
    let t = Instant::now();
    let mut ids = 0;
    for spans in &all {
        for &(a, b) in spans {
            ids += ftkit_core::stable_id(&[
                "0123456789abcdef0123456789abcdef",
                &a.to_string(),
                &b.to_string(),
            ])
            .len();
        }
    }
    report("chunk ids", t);
    let t = Instant::now();
    let chunker = ft_chunk::Chunker {
        config: cfg,
        tokenizer: None,
        text_field: "text".into(),
        id_field: "id".into(),
    };
    out.clear();
    for l in &lines {
        chunker.process(l, &mut out).unwrap();
    }
    report("Chunker::process (all)", t);
    println!(
        "{n} bytes, {nb} breaks, {nc} chunks, {ids} id chars, {} output bytes",
        out.len()
    );
}
