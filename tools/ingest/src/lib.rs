//! ft-ingest: files and folders → JSONL document records.
//!
//! Sources are listed first (in the order given, folders walked in sorted order), then read and
//! converted in parallel batches, and written in list order: the output does not depend on
//! `--threads`. See [`extract`] for the record format and [`walk`] for the traversal rules.

pub mod extract;
pub mod format;
pub mod html;
pub mod images;
pub mod linecap;
pub mod office;
pub mod paged;
pub mod parquet;
pub mod pdf;
pub mod template;
pub mod walk;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use extract::{FileOut, Opts, Skip};
use format::Kind;
use ftkit_core::cli::warn;
use ftkit_core::io::Output;
use ftkit_core::progress::Progress;
use ftkit_core::{Engine, Paths, RunArgs, usage};
use rayon::prelude::*;
use template::TextSpec;
use walk::{Filter, Found, Patterns};

const LONG_ABOUT: &str = "\
Turns files and folders into JSONL document records, one per line on stdout:

  {\"id\":\"<32 hex>\",\"text\":\"...\",\"source\":\"docs/intro.md\",\"meta\":{}}

Folders are walked recursively in sorted order. By extension (a trailing .zst is decompressed):
  .txt .text .md .markdown .rst .tex   the whole file is one document
  .html .htm .xhtml                    the visible text is one document (no head, script, style)
  .json                                an array of objects (or one object): a document per object
  .jsonl .ndjson                       a document per line (one JSON object each)
  .csv .tsv                            a document per row; the header row names the fields
  .parquet                             a document per row (pages uncompressed, snappy or zstd)

For records (JSON, JSONL, CSV, Parquet) the text is --text-field (default: text) or --template;
every other field is kept, raw and in order, under \"meta\" (CSV values as strings), and
\"source_line\" (1-based line where the record starts) and \"record_index\" (0-based among the
file's records) are added. A Parquet row is a JSON object (columns in schema order; structs,
lists and maps nested; nulls as null) and has no line: its record_index is its row number, and
messages name path:ROW (1-based). \"id\" is the stable hash of the text alone (sha256 of the
text and a 0x1F byte, first 16 bytes in hex), so equal texts share an id.

Binary files (a NUL byte in the first 8 KiB, looked at before the rest is read), files of
unknown type, text that is not UTF-8, files over --max-file-size (default 256M; for JSONL, a
line over it stops the run), FIFOs, sockets and devices are skipped with a warning. A walk
stays inside the folder given: a symbolic link whose target is outside it is skipped with a
warning unless --follow-links. A Parquet file that does not parse, or whose pages use a codec
other than snappy or zstd, is skipped with a warning (unreadable). Empty texts are skipped and
counted. A bad record (malformed JSON line, missing text field) stops the run with path:line
(exit 1) unless --on-error skip.";

const AFTER_LONG_HELP: &str = "\
Examples:
  ft-ingest docs/ -o docs.jsonl
  ft-ingest notes/ --glob '*.md' --exclude drafts | ft-chunk --size 1000 --overlap 200
  ft-ingest qa.csv --template '{question}\\n{answer}' --max-records 3000
  ft-ingest train-00000-of-00001.parquet --template '{instruction}\\n{output}'
  ft-ingest dump.jsonl.zst --text-field body --on-error skip --rejects bad.jsonl
  cat page.html | ft-ingest - --format html";

/// Forces how every source is read (`auto`: by extension; stdin reads as `text`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    #[default]
    Auto,
    /// The whole input is one document (txt, md, rst, tex).
    Text,
    /// Visible text of an HTML page.
    Html,
    /// A JSON array of objects, or one object.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// Apache Parquet, a document per row.
    Parquet,
    /// PDF: the text layer, a document per file.
    Pdf,
    /// Word .docx, a document per file.
    Docx,
    /// PowerPoint .pptx, a document per file.
    Pptx,
}

impl FormatArg {
    fn kind(self) -> Option<Kind> {
        match self {
            FormatArg::Auto => None,
            FormatArg::Text => Some(Kind::Text),
            FormatArg::Html => Some(Kind::Html),
            FormatArg::Json => Some(Kind::Json),
            FormatArg::Jsonl => Some(Kind::Jsonl),
            FormatArg::Csv => Some(Kind::Csv { delimiter: b',' }),
            FormatArg::Tsv => Some(Kind::Csv { delimiter: b'\t' }),
            FormatArg::Parquet => Some(Kind::Parquet),
            FormatArg::Pdf => Some(Kind::Pdf),
            FormatArg::Docx => Some(Kind::Docx),
            FormatArg::Pptx => Some(Kind::Pptx),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "ft-ingest",
    version,
    about = "Files and folders (text, markdown, HTML, JSON, JSONL, CSV, Parquet, .zst) to JSONL document records",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Files and folders to read; `-` reads stdin (as text unless --format says otherwise).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,

    /// In folders, read only files matching this pattern (repeatable). Without a `/` it matches the
    /// file name (`*.md`), with one the path below the folder (`guides/**/*.md`).
    #[arg(long = "glob", value_name = "PATTERN")]
    pub globs: Vec<String>,

    /// In folders, skip files and folders matching this pattern (repeatable; same rules as --glob).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,

    /// Also walk hidden files and folders (names starting with `.`).
    #[arg(long)]
    pub hidden: bool,

    /// Follow symbolic links that lead out of the folder given (by default they are skipped with a
    /// warning; links that stay inside it are always followed).
    #[arg(long)]
    pub follow_links: bool,

    /// Skip (with a warning) any source read whole (text, HTML, JSON, CSV) bigger than this, on disk
    /// or decompressed; suffixes K, M, G, T (powers of 1024; KB, MB... powers of 1000). JSONL streams: the cap is per line, and a
    /// longer line stops the run. Parquet streams too: the cap is per row group (its uncompressed size in
    /// the footer; a bigger one skips the file), and on the whole file for stdin or .zst (read into memory).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = ftkit_core::size::parse)]
    pub max_file_size: u64,

    /// Read every source as this format instead of going by its extension.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto, value_name = "FORMAT")]
    pub format: FormatArg,

    /// Field holding a record's text (JSON, JSONL, CSV, Parquet); dotted paths reach nested values (`a.b.0`).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "text",
        conflicts_with = "template"
    )]
    pub text_field: String,

    /// Build a record's text from fields: `{question}\n{answer}` (`\n`, `\t`, `\\` escapes; `{{` `}}`
    /// braces; the same syntax as ft-to-alpaca --template).
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,

    /// Write the images that PDF, DOCX and PPTX files embed into this folder (created if needed), once
    /// each as <sha256>.<ext>, and an image record per image on stdout after its document; standalone
    /// images (.jpg .jpeg .png .webp .gif) in the walked folders get image records too (not copied).
    #[arg(long, value_name = "DIR")]
    pub extract_images: Option<std::path::PathBuf>,

    /// With --extract-images: write the image records only, no document records.
    #[arg(long, requires = "extract_images")]
    pub images_only: bool,

    /// Take at most N documents from each source file, in file order.
    #[arg(long, value_name = "N")]
    pub max_records: Option<u64>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Input bytes per parallel batch: files in a batch are converted together, then written in order.
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_FILES: usize = 1024;
/// JSONL and CSV sources bigger than this are converted as streams (and stdin always is).
const STREAM_BYTES: u64 = 16 << 20;

/// Counts for the summary line.
#[derive(Debug, Default)]
struct Stats {
    read: u64,
    skipped: std::collections::BTreeMap<Skip, u64>,
    docs: u64,
    empty: u64,
    rejected: u64,
    images: u64,
    images_skipped: u64,
}

pub fn run(args: Args) -> Result<()> {
    let text = match &args.template {
        Some(t) => match TextSpec::template(t) {
            Ok(spec) => spec,
            Err(msg) => usage!("{msg}"),
        },
        None => TextSpec::Field(args.text_field.clone()),
    };
    let filter = match (
        Patterns::new(&args.globs, "--glob"),
        Patterns::new(&args.excludes, "--exclude"),
    ) {
        (Ok(include), Ok(exclude)) => Filter {
            include,
            exclude,
            hidden: args.hidden,
            follow_links: args.follow_links,
        },
        (Err(msg), _) | (_, Err(msg)) => usage!("{msg}"),
    };
    if args.max_records == Some(0) {
        usage!("--max-records must be at least 1");
    }
    if args.paths.iter().filter(|p| *p == "-").count() > 1 {
        usage!("'-' (stdin) can be given only once");
    }
    let inputs = args
        .paths
        .iter()
        .fold(Paths::new(), |p, f| p.input("input", f));
    args.run.outputs(inputs).check()?;
    let images = match &args.extract_images {
        Some(dir) => Some(images::ImageOpts {
            dir: image_dir(dir, &args.paths)?,
            only: args.images_only,
        }),
        None => None,
    };
    // The engine holds the pool, the error policy and --rejects for every source.
    let engine = Engine::for_streams(&args.run)?;
    let opts = Opts {
        text,
        max_records: args.max_records,
        on_error: args.run.on_error,
        kind: args.format.kind(),
        max_file_size: args.max_file_size,
        images,
    };

    let found = walk::collect(&args.paths, &filter)?;
    let mut w = Writer {
        out: Output::create(args.run.output.as_deref())?,
        engine,
        stats: Stats::default(),
        quiet: args.run.quiet,
    };
    let progress = Progress::items(args.run.quiet, "files", Some(found.len() as u64));

    // Big record files (and stdin) are converted as streams on this thread, writing as they go
    // (JSONL through the engine's ordered batch reader); everything else is converted in parallel
    // batches, written in list order.
    let streams = |f: &Found| match f {
        Found::File { source, size } => {
            let records = extract::kind_of(source, &opts).is_some_and(Kind::has_records);
            records && (source == "-" || *size > STREAM_BYTES)
        }
        Found::Skipped { .. } => false,
    };
    let mut start = 0;
    while start < found.len() {
        if streams(&found[start]) {
            if let Found::File { source, .. } = &found[start] {
                if extract::kind_of(source, &opts) == Some(Kind::Jsonl) {
                    w.jsonl(source, &opts)?;
                } else {
                    let shown = shown(source);
                    // A CSV stream is converted row by row on this thread: no pool needed.
                    let mut flush = |part: &mut FileOut| w.drain(shown, part);
                    let file = extract::process_streaming(source, &opts, &mut flush);
                    w.finish_file(shown, file)?;
                }
            }
            progress.inc(1);
            start += 1;
            continue;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < found.len()
            && !streams(&found[end])
            && (end == start || (bytes < BATCH_BYTES && end - start < BATCH_FILES))
        {
            if let Found::File { size, .. } = &found[end] {
                bytes += size;
            }
            end += 1;
        }
        let batch = &found[start..end];
        let results: Vec<Option<FileOut>> = w.engine.pool().install(|| {
            batch
                .par_iter()
                .map(|f| match f {
                    Found::File { source, .. } => Some(extract::process(source, &opts)),
                    Found::Skipped { .. } => None,
                })
                .collect()
        });
        for (found, result) in batch.iter().zip(results) {
            progress.inc(1);
            match (found, result) {
                (
                    Found::Skipped {
                        source,
                        reason,
                        message,
                    },
                    _,
                ) => {
                    *w.stats.skipped.entry(*reason).or_default() += 1;
                    if !args.run.quiet {
                        warn(format!("{source}: skipped ({message})"));
                    }
                }
                (Found::File { source, .. }, Some(file)) => w.finish_file(shown(source), file)?,
                (Found::File { .. }, None) => {}
            }
        }
        start = end;
    }
    progress.finish();
    w.out.finish()?;
    w.stats.rejected = w.engine.close()?.rejected;
    if !args.run.quiet {
        warn(summary(&w.stats));
    }
    Ok(())
}

/// Creates the `--extract-images` folder; a folder inside an input folder is refused (the images
/// would be read back as sources on the next run).
fn image_dir(dir: &std::path::Path, inputs: &[String]) -> Result<std::path::PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "{}: cannot create the --extract-images folder",
            dir.display()
        )
    })?;
    let canonical = dir.canonicalize()?;
    for input in inputs.iter().filter(|p| *p != "-") {
        let Ok(input) = std::path::Path::new(input).canonicalize() else {
            continue;
        };
        if input.is_dir() && canonical.starts_with(&input) {
            usage!(
                "--extract-images {} is inside the input folder {}: its images would be read as sources",
                dir.display(),
                input.display()
            );
        }
    }
    Ok(dir.to_path_buf())
}

fn shown(source: &str) -> &str {
    if source == "-" { "<stdin>" } else { source }
}

/// The output side: documents, the engine (error policy, rejected records), counts.
struct Writer {
    out: Output,
    engine: Engine,
    stats: Stats,
    quiet: bool,
}

impl Writer {
    /// Writes a source's output so far, in order, applying the error policy to its rejected
    /// records; leaves `file.bytes` and `file.rejects` empty.
    fn drain(&mut self, shown: &str, file: &mut FileOut) -> Result<()> {
        let bytes = std::mem::take(&mut file.bytes);
        let end = file
            .fatal
            .as_ref()
            .map_or(bytes.len(), |(at, _)| *at)
            .min(bytes.len());
        let rejects = std::mem::take(&mut file.rejects);
        self.engine
            .policy()
            .write(&mut self.out, shown, &bytes[..end], rejects)
    }

    /// Converts a JSONL source (a big file, or stdin) through the engine, writing as it goes.
    fn jsonl(&mut self, source: &str, opts: &Opts) -> Result<()> {
        let shown = shown(source);
        let reader = match extract::open_jsonl(source, opts) {
            Ok(r) => r,
            Err(skipped) => return self.finish_file(shown, *skipped),
        };
        self.stats.read += 1;
        let line = extract::jsonl_line(shown, opts);
        let counts =
            (self.engine).map_reader(shown, reader, &mut self.out, opts.max_records, line)?;
        self.stats.docs += counts.written;
        self.stats.empty += counts.lines - counts.rejected - counts.written;
        Ok(())
    }

    /// Writes what is left of a finished source and counts it.
    fn finish_file(&mut self, shown: &str, mut file: FileOut) -> Result<()> {
        if let Some((reason, message)) = &file.skipped {
            *self.stats.skipped.entry(*reason).or_default() += 1;
            if !self.quiet {
                warn(format!("{shown}: skipped ({message})"));
            }
            if reason.is_reject()
                && let Some(rejects) = self.engine.policy().rejects()
            {
                let record = serde_json::json!({
                    "source": shown, "skipped": reason.label(), "error": message,
                });
                rejects.write_line(record.to_string().as_bytes())?;
            }
            return Ok(());
        }
        self.stats.read += 1;
        self.drain(shown, &mut file)?;
        if let Some((_, error)) = file.fatal {
            return Err(error);
        }
        self.stats.docs += file.docs;
        self.stats.empty += file.empty;
        self.stats.images += file.images;
        self.stats.images_skipped += file.images_skipped;
        Ok(())
    }
}

fn summary(stats: &Stats) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut s = plural(stats.read, "file read", "files read");
    let skipped: u64 = stats.skipped.values().sum();
    if skipped > 0 {
        let parts: Vec<String> = Skip::ALL
            .iter()
            .filter_map(|k| stats.skipped.get(k).map(|n| format!("{n} {}", k.label())))
            .collect();
        s.push_str(&format!(", {skipped} skipped ({})", parts.join(", ")));
    }
    s.push_str(&format!(
        ", {}",
        plural(stats.docs, "document written", "documents written")
    ));
    if stats.images > 0 || stats.images_skipped > 0 {
        s.push_str(&format!(
            ", {}",
            plural(stats.images, "image record", "image records")
        ));
    }
    if stats.images_skipped > 0 {
        s.push_str(&format!(
            " ({} embedded in other formats not extracted)",
            stats.images_skipped
        ));
    }
    if stats.empty > 0 {
        s.push_str(&format!(
            ", {}",
            plural(stats.empty, "empty text skipped", "empty texts skipped")
        ));
    }
    if stats.rejected > 0 {
        s.push_str(&format!(
            ", {}",
            plural(stats.rejected, "record rejected", "records rejected")
        ));
    }
    s
}
