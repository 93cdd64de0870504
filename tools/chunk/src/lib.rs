//! ft-chunk: documents in, chunks out, cut at the best semantic boundaries that fit.

pub mod breaks;
pub mod jsonstr;
pub mod measure;
pub mod split;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use ftkit_core::jsonl::{RawRecord, write_json_str};
use ftkit_core::{CommonArgs, Engine, id::stable_id, io::Output, usage};
use std::borrow::Cow;
use std::path::PathBuf;

/// The unit of `--size`, `--overlap` and `--min-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// Unicode characters (scalar values, as Python's len()).
    Chars,
    /// Tokens of the --tokenizer (no special tokens).
    Tokens,
}

const LONG_ABOUT: &str = "\
Reads document records ({\"id\",\"text\",...}, as ft-ingest writes them) and writes one record per chunk:
{\"id\",\"doc_id\",\"chunk_index\",\"text\",\"start\",\"end\", ...the document's other fields}.
A paged document (ft-ingest's PDF and PPTX records, with a \"pages\" or \"slides\" list of the
byte offsets where each starts) gives chunks \"page\" and \"page_end\" (\"slide\", \"slide_end\"): the
1-based pages holding the chunk's first and last byte, in place of the list.

start and end are byte offsets into the document text: text == doc.text[start..end] (Python:
doc.text.encode()[start:end].decode()). chunk_index counts from 0 within a document. The chunk id
is the stable id of (doc_id, start, end) in decimal: hex of the first 16 bytes of
sha256(doc_id 0x1F start 0x1F end 0x1F). A document without an id gets the stable id of its text
as doc_id (as ft-ingest's id). The document's text and id fields are not copied; its other fields
follow in their order, verbatim, except those named like a chunk field. The chunk text keeps the
escapes of the input (\\u00e9 stays \\u00e9).

Chunks end at the best boundary that fits: markdown and reStructuredText headings, then blank-line
paragraphs (fenced code blocks kept whole where they fit), then lines, then sentences, then words,
then grapheme clusters. Within the chosen level, a chunk takes as many whole units as fit.
Each chunk after the first starts inside the previous one so that they share up to --overlap units,
starting at a sentence (or better) boundary where possible, else at a word; the overlap never
reaches back over a heading, so a chunk that starts a section repeats nothing. Nothing is trimmed:
every byte of a document lies in some chunk; separating whitespace stays at the end of a chunk.
Documents whose text is empty or only whitespace give no chunks.";

const EXAMPLES: &str = "\
Examples:
  ft-ingest docs/ | ft-chunk > chunks.jsonl
  ft-chunk --size 2000 --overlap 300 --min-size 200 docs.jsonl -o chunks.jsonl.zst
  ft-chunk --by tokens --tokenizer tokenizer.json --size 512 --overlap 64 docs.jsonl";

#[derive(Parser, Debug)]
#[command(
    name = "ft-chunk",
    version,
    about = "Split documents into overlapping chunks at semantic boundaries"
)]
#[command(long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Unit of --size, --overlap and --min-size.
    #[arg(long, value_enum, default_value_t = By::Chars)]
    pub by: By,

    /// tokenizer.json (Hugging Face format) for --by tokens.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Largest chunk, in units. (--by tokens: a character that alone takes more tokens is still
    /// emitted, alone.)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub size: usize,

    /// Units a chunk repeats from the end of the previous one, at most [default: a fifth of --size].
    #[arg(long, value_name = "N")]
    pub overlap: Option<usize>,

    /// Avoid short chunks: pass over a break that would give a chunk fewer than N units of new text
    /// (beyond the previous chunk) or leave fewer than N units after it, while a sentence-or-better
    /// break exists elsewhere in the window. Short documents and sections with no such alternative
    /// still give short chunks: nothing is dropped. 0 turns it off [default: a tenth of --size].
    #[arg(long, value_name = "N")]
    pub min_size: Option<usize>,

    /// Field holding the document text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,

    /// Field holding the document id (string or number); without one, doc_id is the hash of the text.
    #[arg(long, default_value = "id", value_name = "NAME")]
    pub id_field: String,
}

/// Keys of the chunk record; document fields with these names are not passed through.
const OWN_KEYS: [&str; 6] = ["id", "doc_id", "chunk_index", "text", "start", "end"];

/// Everything needed to turn one document line into chunk lines.
pub struct Chunker {
    pub config: split::Config,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub text_field: String,
    pub id_field: String,
}

/// Buffers reused across the documents a thread handles.
#[derive(Default)]
struct Scratch {
    /// Structural breaks of the text.
    breaks: Vec<breaks::Break>,
    /// Chunk byte ranges.
    spans: Vec<(usize, usize)>,
    /// Escapes of the text literal ([`jsonstr::decode`]).
    escapes: Vec<(usize, usize)>,
    /// `,"doc_id":"..","chunk_index":` of the current document.
    head: Vec<u8>,
    /// The pass-through fields and `}\n`.
    tail: Vec<u8>,
    /// The decoded text, when its literal has escapes.
    text: String,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Chunker {
    /// Chunks of `text` as byte ranges (none for a blank text).
    pub fn ranges(
        &self,
        text: &str,
        spans: &mut Vec<(usize, usize)>,
        st: &mut Vec<breaks::Break>,
    ) -> Result<()> {
        let newlines = memchr::memchr_iter(b'\n', text.as_bytes());
        self.ranges_with(text, newlines, spans, st)
    }

    /// [`Chunker::ranges`] given the positions of the text's `\n` bytes.
    fn ranges_with(
        &self,
        text: &str,
        newlines: impl Iterator<Item = usize>,
        spans: &mut Vec<(usize, usize)>,
        st: &mut Vec<breaks::Break>,
    ) -> Result<()> {
        spans.clear();
        if text.trim().is_empty() {
            return Ok(());
        }
        breaks::structure_lines(text, newlines, st);
        let cfg = &self.config;
        match &self.tokenizer {
            None if text.is_ascii() => split::split(text, st, &measure::AsciiChars, cfg, spans),
            None => split::split(text, st, &measure::Chars, cfg, spans),
            Some(tok) => split::split(text, st, &measure::Tokens::new(tok, text)?, cfg, spans),
        }
    }

    /// Appends the chunk records of one document line to `out`.
    pub fn process(&self, line: &str, out: &mut Vec<u8>) -> Result<()> {
        let rec = RawRecord::parse(line)?;
        let literal = match rec.get(&self.text_field).map(|v| v.get()) {
            None | Some("null") => bail!("missing field \"{}\"", self.text_field),
            Some(v) if v.starts_with('"') => v,
            Some(_) => bail!("field \"{}\" is not a string", self.text_field),
        };
        let body = &literal[1..literal.len() - 1];
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch {
                breaks,
                spans,
                escapes,
                head,
                tail,
                text: decoded,
            } = scratch;
            let text: &str = match jsonstr::decode_into(body, decoded, escapes)? {
                true => decoded,
                false => body,
            };
            let doc_id: Cow<str> = match rec.get(&self.id_field).map(|v| v.get()) {
                None | Some("null") => Cow::Owned(stable_id(&[text.as_bytes()])),
                Some(v) if v.starts_with('"') => rec.require_str(&self.id_field)?,
                Some(v) if v.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                    Cow::Borrowed(v)
                }
                Some(_) => bail!("field \"{}\" is not a string or a number", self.id_field),
            };
            // A JSON literal holds no raw newline: the text's newlines are its `\n` escapes.
            let newlines = escapes
                .iter()
                .map(|&(decoded_end, _)| decoded_end - 1)
                .filter(|&i| text.as_bytes()[i] == b'\n');
            self.ranges_with(text, newlines, spans, breaks)?;
            if spans.is_empty() {
                return Ok(());
            }
            head.clear();
            head.extend_from_slice(b",\"doc_id\":");
            write_json_str(head, &doc_id);
            head.extend_from_slice(b",\"chunk_index\":");
            tail.clear();
            let places = places(&rec);
            let placed = |k: &str| {
                places
                    .iter()
                    .any(|p| [p.list, p.first, p.last].contains(&k))
            };
            let skip = [self.text_field.as_str(), self.id_field.as_str()];
            let others = rec
                .others(&skip)
                .filter(|(k, _)| !OWN_KEYS.contains(k) && !placed(k));
            for (k, v) in others {
                tail.push(b',');
                write_json_str(tail, k);
                tail.push(b':');
                tail.extend_from_slice(v.get().as_bytes());
            }
            tail.extend_from_slice(b"}\n");
            let mut num = [0u8; 20];
            for (i, &(start, end)) in spans.iter().enumerate() {
                out.extend_from_slice(b"{\"id\":\"");
                chunk_id(out, doc_id.as_bytes(), start, end);
                out.push(b'"');
                out.extend_from_slice(head);
                out.extend_from_slice(fmt_u64(&mut num, i as u64));
                out.extend_from_slice(b",\"text\":\"");
                let (a, b) = (
                    jsonstr::body_offset(escapes, start),
                    jsonstr::body_offset(escapes, end),
                );
                out.extend_from_slice(&body.as_bytes()[a..b]);
                out.extend_from_slice(b"\",\"start\":");
                out.extend_from_slice(fmt_u64(&mut num, start as u64));
                out.extend_from_slice(b",\"end\":");
                out.extend_from_slice(fmt_u64(&mut num, end as u64));
                for place in &places {
                    place.write(out, start, end);
                }
                out.extend_from_slice(tail);
            }
            Ok(())
        })
    }
}

/// A paged document's `pages` (PDF) or `slides` (PPTX): byte offsets where each starts. Its chunks
/// carry `page`/`page_end` (`slide`/`slide_end`), 1-based, instead of the list.
struct Place<'a> {
    list: &'a str,
    first: &'a str,
    last: &'a str,
    starts: Vec<usize>,
}

fn places<'a>(rec: &RawRecord<'_>) -> Vec<Place<'a>> {
    [
        ("pages", "page", "page_end"),
        ("slides", "slide", "slide_end"),
    ]
    .into_iter()
    .filter_map(|(list, first, last)| {
        let starts: Vec<usize> = serde_json::from_str(rec.get(list)?.get()).ok()?;
        (!starts.is_empty()).then_some(Place {
            list,
            first,
            last,
            starts,
        })
    })
    .collect()
}

impl Place<'_> {
    /// The pages holding the chunk's first and last byte.
    fn write(&self, out: &mut Vec<u8>, start: usize, end: usize) {
        let page = |at: usize| self.starts.partition_point(|&s| s <= at).max(1) as u64;
        let mut num = [0u8; 20];
        for (key, at) in [
            (self.first, start),
            (self.last, end.saturating_sub(1).max(start)),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(fmt_u64(&mut num, page(at)));
        }
    }
}

/// Appends the chunk id: `ftkit_core::stable_id(&[doc_id, start, end])` with the offsets in
/// decimal, computed without allocating.
pub fn chunk_id(out: &mut Vec<u8>, doc_id: &[u8], start: usize, end: usize) {
    use sha2::{Digest, Sha256};
    let mut num = [0u8; 20];
    let mut h = Sha256::new();
    h.update(doc_id);
    h.update([0x1f]);
    h.update(fmt_u64(&mut num, start as u64));
    h.update([0x1f]);
    h.update(fmt_u64(&mut num, end as u64));
    h.update([0x1f]);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in &h.finalize()[..16] {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Decimal digits of `v` in `buf`.
fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

pub fn run(args: Args) -> Result<()> {
    if args.size == 0 {
        usage!("--size must be at least 1");
    }
    let overlap = args.overlap.unwrap_or(args.size / 5);
    if overlap >= args.size {
        usage!(
            "--overlap ({overlap}) must be smaller than --size ({})",
            args.size
        );
    }
    let min_size = args.min_size.unwrap_or(args.size / 10);
    if min_size > args.size {
        usage!(
            "--min-size ({min_size}) must not exceed --size ({})",
            args.size
        );
    }
    let tokenizer = match (args.by, &args.tokenizer) {
        (By::Tokens, Some(path)) => Some(measure::load_tokenizer(path)?),
        (By::Tokens, None) => usage!("--by tokens needs --tokenizer FILE"),
        (By::Chars, Some(_)) => usage!("--tokenizer is only used with --by tokens"),
        (By::Chars, None) => None,
    };
    let chunker = Chunker {
        config: split::Config {
            size: args.size,
            overlap,
            min_size,
        },
        tokenizer,
        text_field: args.text_field,
        id_field: args.id_field,
    };
    let mut out = Output::create(args.common.run.output.as_deref())?;
    let mut engine = Engine::new(&args.common)?;
    engine.map(&mut out, |_, line, buf| chunker.process(line, buf))?;
    engine.finish()?;
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_is_the_stable_id_of_doc_id_start_end() {
        for (doc, s, e) in [
            ("d", 0, 1),
            ("0123456789abcdef0123456789abcdef", 12345, 67890),
            ("", 0, 0),
        ] {
            let mut out = Vec::new();
            chunk_id(&mut out, doc.as_bytes(), s, e);
            let expected = stable_id(&[doc.to_string(), s.to_string(), e.to_string()]);
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
    }
}
