//! ft-chunk: documents in, chunks out, cut at the best semantic boundaries that fit.

pub mod breaks;
pub mod measure;
pub mod split;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use ftkit_core::jsonl::{ObjectWriter, RawRecord};
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

start and end are byte offsets into the document text: text == doc.text[start..end] (Python:
doc.text.encode()[start:end].decode()). The chunk id is the hash of doc_id, start and end.
A document without an id gets the hash of its text as doc_id (as ft-ingest's id).

Chunks end at the best boundary that fits: markdown and reStructuredText headings, then blank-line
paragraphs (fenced code blocks kept whole where they fit), then lines, then sentences, then words,
then grapheme clusters. Within the chosen level, a chunk takes as many whole units as fit.
Each chunk after the first starts inside the previous one so that they share up to --overlap units,
starting at a sentence (or better) boundary where possible, else at a word. Nothing is trimmed:
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

    /// Largest chunk, in units. A single grapheme or token larger than this is still emitted alone.
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

/// Per-thread buffers reused across documents: structural breaks and chunk ranges.
type Scratch = (Vec<breaks::Break>, Vec<(usize, usize)>);

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl Chunker {
    /// Chunks of `text` as byte ranges.
    pub fn ranges(
        &self,
        text: &str,
        spans: &mut Vec<(usize, usize)>,
        st: &mut Vec<breaks::Break>,
    ) -> Result<()> {
        spans.clear();
        if text.trim().is_empty() {
            return Ok(());
        }
        breaks::structure(text, st);
        match &self.tokenizer {
            None => split::split(text, st, &measure::Chars, &self.config, spans),
            Some(tok) => split::split(
                text,
                st,
                &measure::Tokens::new(tok, text)?,
                &self.config,
                spans,
            ),
        }
    }

    /// Appends the chunk records of one document line to `out`.
    pub fn process(&self, line: &str, out: &mut Vec<u8>) -> Result<()> {
        let rec = RawRecord::parse(line)?;
        let text = rec.require_str(&self.text_field)?;
        let doc_id: Cow<str> = match rec.get(&self.id_field) {
            None => Cow::Owned(stable_id(&[text.as_bytes()])),
            Some(raw) if raw.get() == "null" => Cow::Owned(stable_id(&[text.as_bytes()])),
            Some(raw) if raw.get().starts_with('"') => rec.require_str(&self.id_field)?,
            Some(raw)
                if raw
                    .get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit()) =>
            {
                Cow::Borrowed(raw.get())
            }
            Some(_) => bail!("field \"{}\" is not a string or a number", self.id_field),
        };
        SCRATCH.with_borrow_mut(|(st, spans)| {
            self.ranges(&text, spans, st)?;
            let skip = [self.text_field.as_str(), self.id_field.as_str()];
            let mut start_s = itoa_buf();
            let mut end_s = itoa_buf();
            for (i, &(start, end)) in spans.iter().enumerate() {
                let s = fmt_u64(&mut start_s, start as u64);
                let e = fmt_u64(&mut end_s, end as u64);
                let id = stable_id(&[doc_id.as_bytes(), s, e]);
                let mut w = ObjectWriter::new(out);
                w.str("id", &id)
                    .str("doc_id", &doc_id)
                    .u64("chunk_index", i as u64)
                    .str("text", &text[start..end])
                    .u64("start", start as u64)
                    .u64("end", end as u64);
                for (k, v) in rec.others(&skip) {
                    if !OWN_KEYS.contains(&k) {
                        w.raw(k, v);
                    }
                }
                w.end();
            }
            Ok(())
        })
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
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
    let mut out = Output::create(args.common.output.as_deref())?;
    let mut engine = Engine::new(&args.common)?;
    engine.map(&mut out, |_, line, buf| chunker.process(line, buf))?;
    engine.finish()?;
    out.finish()
}
