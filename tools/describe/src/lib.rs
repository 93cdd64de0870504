//! ft-describe: image records in, description documents out.
//!
//! Each image ([`picture::prepare`]: read, validated, bounded, downsized, re-encoded as JPEG) goes as
//! a [`Task::Describe`] through the same [`Client`] (cache, limits, retries, budget) and [`Driver`]
//! (order, `--rejects`, resume by rerun) as ft-qa-synth and ft-generate. Document records pass
//! through untouched, so `ft-ingest --extract-images DIR docs/ | ft-describe | ft-chunk` is one stream.

pub mod picture;

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use ftkit_core::cli::CommonArgs;
use ftkit_core::io::Output;
use ftkit_core::{ObjectWriter, RawRecord, stable_id, usage};
use ftkit_llm::driver::{Driver, Outcome};
use ftkit_llm::{BackendKind, CallError, Client, LlmArgs, Task, prompts};
use picture::Bounds;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The built-in prompt (the user turn sent with each image).
pub const PROMPT: &str = "Describe this image for a knowledge base from which questions and answers \
will be written. If it is a chart, give its type, axes, units, series, the main values and the trend. \
If it is a flowchart or a diagram, list its steps or parts and how they connect. If it shows text or a \
table, transcribe the important parts. If it is a photo, say what it shows. Be factual and complete; \
describe only what is visible.";

const AFTER_HELP: &str = "\
Examples:
  # documents and their images, described by Qwen-VL through DashScope's compatible mode
  export OPENAI_API_KEY=sk-... BASE_URL=https://dashscope.aliyuncs.com/compatible-mode/v1
  ft-ingest --extract-images assets docs/ | ft-describe --model qwen-vl-max > knowledge.jsonl

  # a local vision model served by Ollama
  ft-ingest --images-only --extract-images assets photos/ |
    ft-describe --base-url http://127.0.0.1:11434/v1 --model llava --concurrency 2

Input: image records, as ft-ingest --extract-images writes them
  {\"kind\":\"image\",\"path\",\"sha256\",\"source\",\"page\"|\"slide\",\"format\",\"width\",\"height\"}
or any record with a \"path\" and no \"text\". Paths are read as given (relative to the current
folder). Records with a \"text\" (documents) are written back unchanged, in place.

Output, one document per image, ready for ft-chunk and ft-qa-synth:
  {\"id\": stable id of the text, \"text\": the description, \"source\": the record's source (else the path),
   \"image\": {\"path\",\"sha256\",\"format\",\"width\",\"height\",\"page\"|\"slide\"}, \"meta\": {other fields},
   \"gen\": {\"backend\",\"model\",\"prompt_sha256\",\"params\",\"usage\",\"finish_reason\"}}

Each image is decoded whole before it is sent: an empty, corrupt or truncated file, a format other
than JPEG/PNG/GIF/WebP, a file over --max-image-bytes or dimensions over --max-pixels (a
decompression bomb) is rejected with its reason (in --rejects) and the run goes on; such rejects do
not change the exit status. Images go out downsized to --max-side and re-encoded as JPEG, in a data
URL (OpenAI, DashScope compatible mode, vLLM, Ollama, llama.cpp take it). The cache key is the whole
request, the image included: a rerun after a kill or a crash replays every answered image from the
cache and sends only the rest. Requests that fail after their retries go to --rejects and make the
run exit 1 unless --on-error skip. The local backend has no vision model: an endpoint is needed.";

/// Describe images with a vision model.
#[derive(Parser, Debug)]
#[command(
    name = "ft-describe",
    version,
    about = "Describe images (ft-ingest's image records) with an OpenAI-compatible vision model",
    long_about = "Reads image records (ft-ingest --extract-images) and writes, in input order, one \
document record per image whose text is the model's description of it; document records pass \
through unchanged. Same client as ft-qa-synth: concurrency, --rpm/--tpm, retries, a response cache \
(rerun to resume), budgets, usage on stderr, --rejects.",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Replace the built-in prompt (the text sent with each image) by this file's text.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,

    /// Longest side, in pixels, of the image sent (bigger images are downsized, keeping their shape).
    #[arg(long, value_name = "PX", default_value_t = 1024)]
    pub max_side: u32,

    /// JPEG quality of the image sent (1-100).
    #[arg(long, value_name = "Q", default_value_t = 85)]
    pub jpeg_quality: u8,

    /// Reject images with more pixels than this (width x height), before decoding them.
    #[arg(long, value_name = "N", default_value_t = 100_000_000)]
    pub max_pixels: u64,

    /// Reject image files bigger than this; suffixes K, M, G (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = ftkit_core::size::parse)]
    pub max_image_bytes: u64,

    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Fields of an image record that go under `image`; the others go under `meta`.
const IMAGE_FIELDS: &[&str] = &[
    "kind", "path", "sha256", "format", "width", "height", "page", "slide",
];

enum Item {
    /// A record written back as it is.
    Pass(String),
    Image {
        line: String,
        path: PathBuf,
    },
}

#[derive(Default)]
struct Counts {
    described: AtomicU64,
    invalid: AtomicU64,
    passed: AtomicU64,
}

pub fn run(mut args: Args) -> Result<()> {
    args.llm.validate()?;
    args.common.run.pool()?; // validates --threads; the workers are --concurrency
    if args.max_side == 0 {
        usage!("--max-side must be at least 1");
    }
    if !(1..=100).contains(&args.jpeg_quality) {
        usage!("--jpeg-quality must be between 1 and 100");
    }
    if args.max_pixels == 0 || args.max_image_bytes == 0 {
        usage!("--max-pixels and --max-image-bytes must be at least 1");
    }
    // The seed's variable for the vision model, when --model is not given.
    if args.llm.model.is_none() {
        args.llm.model = std::env::var("VISION_MODEL").ok().filter(|m| !m.is_empty());
    }
    if !args.llm.names_an_endpoint() {
        usage!(
            "no vision model named: give --model (or $VISION_MODEL, $MODEL) and --base-url \
             ($OPENAI_BASE_URL, $BASE_URL) of an OpenAI-compatible endpoint"
        );
    }
    let prompt = match &args.prompt_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow!("{}: cannot read the prompt: {e}", p.display()))?,
        None => PROMPT.to_string(),
    };
    let bounds = Bounds {
        max_bytes: args.max_image_bytes,
        max_pixels: args.max_pixels,
        max_side: args.max_side,
        quality: args.jpeg_quality,
    };
    let client = args.llm.client(args.llm.backend(BackendKind::Openai)?)?;
    args.common.paths().check()?;
    let mut out = Output::create(args.common.run.output.as_deref())?;
    let counts = Counts::default();
    let driver = Driver {
        common: &args.common,
        workers: args.llm.concurrency,
        tool: "ft-describe",
    };
    let run = driver.run(
        &mut out,
        prepare,
        |item: Item| work(&client, &counts, &prompt, bounds, item),
        |()| {},
        || client.budget_exhausted(),
    )?;
    let summary = run.0;
    // Invalid images are rejects by their own fault: they never fail the run.
    let invalid = counts.invalid.load(Relaxed);
    let failed = summary.failed - invalid;
    driver.close(out, run, "records", failed, || {
        format!(
            "{} records: {} images described, {} invalid images rejected, {failed} failed, {} documents \
             passed through; {}",
            summary.records - summary.bad_lines,
            counts.described.load(Relaxed),
            invalid,
            counts.passed.load(Relaxed),
            client.summary()
        )
    })
}

fn prepare(line: &str) -> Result<Item> {
    let rec = RawRecord::parse(line)?;
    let image = rec.get_str("kind")?.as_deref() == Some("image");
    if !image && rec.get("text").is_some() {
        return Ok(Item::Pass(line.to_string()));
    }
    match rec.get_str("path")? {
        Some(path) if !path.is_empty() => Ok(Item::Image {
            line: line.to_string(),
            path: PathBuf::from(path.as_ref()),
        }),
        _ => bail!("neither an image record (no \"path\") nor a document (no \"text\")"),
    }
}

fn work(client: &Client, counts: &Counts, prompt: &str, bounds: Bounds, item: Item) -> Outcome<()> {
    let (line, path) = match item {
        Item::Pass(line) => {
            counts.passed.fetch_add(1, Relaxed);
            let mut lines = line.into_bytes();
            lines.push(b'\n');
            return Outcome::Done { lines, meta: () };
        }
        Item::Image { line, path } => (line, path),
    };
    let image = match picture::prepare(&path, bounds) {
        Ok(p) => p,
        Err(reason) => {
            counts.invalid.fetch_add(1, Relaxed);
            return Outcome::Failed {
                reason: format!("invalid image {}: {reason}", path.display()),
                raw: None,
            };
        }
    };
    let task = Task::Describe {
        prompt: prompt.to_string(),
        data_url: image.data_url.clone(),
    };
    let answer = client.generate(
        |a| prompts::request(task.clone(), None, a),
        |text| match text.trim() {
            "" => Err("an empty description".to_string()),
            t => Ok(t.to_string()),
        },
    );
    let answer = match answer {
        Ok(a) => a,
        Err(f) => {
            return match f.error {
                CallError::Fatal(msg) => Outcome::Fatal(msg),
                CallError::Budget => Outcome::NotStarted,
                other => Outcome::Failed {
                    reason: other.to_string(),
                    raw: f.raw,
                },
            };
        }
    };
    let Ok(rec) = RawRecord::parse(&line) else {
        return Outcome::Failed {
            reason: "invalid JSON object".into(),
            raw: None,
        };
    };
    let text = answer.value;
    counts.described.fetch_add(1, Relaxed);
    let source = rec
        .get_str("source")
        .ok()
        .flatten()
        .map_or_else(|| path.to_string_lossy().into_owned(), |s| s.into_owned());
    let mut info = serde_json::Map::new();
    info.insert("path".into(), path.to_string_lossy().into());
    info.insert("sha256".into(), image.sha256.into());
    info.insert("format".into(), image.format.into());
    info.insert("width".into(), image.width.into());
    info.insert("height".into(), image.height.into());
    for place in ["page", "slide"] {
        if let Some(v) = rec
            .get(place)
            .and_then(|v| serde_json::from_str(v.get()).ok())
        {
            info.insert(place.into(), v);
        }
    }
    let backend = client.backend();
    let mut lines = Vec::with_capacity(text.len() + line.len() + 256);
    let mut w = ObjectWriter::new(&mut lines);
    w.str("id", &stable_id(&[text.as_str()]));
    w.str("text", &text);
    w.str("source", &source);
    w.value("image", &info);
    let mut meta = Vec::new();
    {
        let mut m = ObjectWriter::new(&mut meta);
        let skip: Vec<&str> = IMAGE_FIELDS
            .iter()
            .copied()
            .chain(["source", "id", "text", "gen"])
            .collect();
        for (k, v) in rec.others(&skip) {
            m.raw(k, v);
        }
        m.end();
    }
    meta.pop(); // the writer's newline
    let meta: Box<serde_json::value::RawValue> = match serde_json::from_slice(&meta) {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Failed {
                reason: format!("meta: {e}"),
                raw: None,
            };
        }
    };
    w.raw("meta", &meta);
    w.value(
        "gen",
        &serde_json::json!({
            "backend": backend.name(),
            "model": backend.model(),
            "prompt_sha256": prompts::prompt_sha256(&answer.request),
            "params": backend.params(&answer.request),
            "usage": answer.reply.usage,
            "finish_reason": answer.reply.finish_reason,
            "sent": {"width": image.sent_width, "height": image.sent_height},
        }),
    );
    w.end();
    Outcome::Done { lines, meta: () }
}
