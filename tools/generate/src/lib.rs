//! ft-generate: prompt records in, completion records out.
//!
//! Each record's prompt (`prompt`, `messages`, or an alpaca / sharegpt record without its answer, see
//! [`ftkit_core::chat::prompt_messages`]) goes as a free-text [`Task::Generate`] through the same
//! [`ftkit_llm::Client`] (cache, limits, retries, budget) and [`Driver`] (order, `--rejects`, resume)
//! as ft-qa-synth. The record comes out whole, plus `completion`, `gen_id` and `gen`.

use anyhow::Result;
use clap::{Parser, ValueEnum};
use ftkit_core::chat::{Format, Message, prompt_messages};
use ftkit_core::cli::CommonArgs;
use ftkit_core::io::Output;
use ftkit_core::{ObjectWriter, RawRecord, stable_id, usage};
use ftkit_llm::driver::{Driver, Outcome};
use ftkit_llm::{BackendKind, CallError, Client, LlmArgs, Task, prompts};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The backends that write free text (the extractive one only makes QA pairs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GenBackend {
    /// `local` when --adapter is given or --model names a file or folder that exists, otherwise
    /// `openai`.
    Auto,
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
    /// A model on this machine: --model FILE.gguf, a folder or ORG/NAME, ± --adapter DIR.
    Local,
}

impl From<GenBackend> for BackendKind {
    fn from(b: GenBackend) -> Self {
        match b {
            GenBackend::Auto => BackendKind::Auto,
            GenBackend::Openai => BackendKind::Openai,
            GenBackend::Local => BackendKind::Local,
        }
    }
}

const AFTER_HELP: &str = "\
Examples:
  # what did the adapter learn? (local model, greedy)
  ft-generate --model base.gguf --adapter adapters/qa --temperature 0 test.alpaca.jsonl | jq .completion

  # any OpenAI-compatible server, stop at the first blank line
  ft-generate --base-url http://127.0.0.1:8080/v1 --model qwen2.5 --stop $'\\n\\n' prompts.jsonl

Input, one prompt per record (detected per record):
  {\"prompt\": TEXT}                                     one user turn
  {\"messages\": [{\"role\",\"content\"},...]}             the last turn, when the assistant's, is dropped
  {\"conversations\": [{\"from\",\"value\"},...]}          sharegpt, likewise
  {\"instruction\", \"input\"?, \"system\"?, \"output\"?}    alpaca; output is not sent
Output: the input record unchanged (lineage such as qa_id, doc_id, chunk_id, and the reference answer
pass through), plus
  \"completion\": TEXT, \"gen_id\": stable_id(prompt_sha256, model, completion),
  \"gen\": {\"backend\",\"model\",\"format\",\"prompt_sha256\",\"params\",\"usage\",\"finish_reason\"}
finish_reason is `stop` (end of turn or a --stop string) or `length` (--max-tokens reached).

A rerun replays answered requests from the cache (no request is sent twice), so after a crash or a
kill, run the same command again. Records that fail go to --rejects with the reason; the run exits 1
when any failed, unless --on-error skip.";

/// Complete prompts with a local model or an OpenAI-compatible endpoint.
#[derive(Parser, Debug)]
#[command(
    name = "ft-generate",
    version,
    about = "Complete prompts (prompt, messages, alpaca, sharegpt records) with a model",
    long_about = "Reads prompt records and writes each one back, in input order, with the model's \
`completion` and the generation's metadata added. The prompt is the record's conversation without its \
answer, so a test split in alpaca or sharegpt form shows what a model (with or without an adapter) \
answers next to the reference answer it keeps. Backends: any OpenAI-compatible endpoint, with the \
cache, concurrency, limits, retries and budgets of ft-qa-synth; or a local model (coming with ftkit-model).",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Who writes the completions.
    #[arg(long, value_enum, default_value_t = GenBackend::Auto, value_name = "NAME")]
    pub backend: GenBackend,

    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Fields the tool writes itself (an input that already has them, a previous run's output, gets new ones).
const OWN: &[&str] = &["completion", "gen_id", "gen", "reject"];

struct Item {
    line: String,
    format: Format,
    messages: Vec<Message>,
}

#[derive(Default)]
struct Counts {
    completions: AtomicU64,
    truncated: AtomicU64,
}

pub fn run(args: Args) -> Result<()> {
    args.llm.validate()?;
    args.common.run.pool()?; // validates --threads; the workers are --concurrency
    if args.llm.resolve(args.backend.into()) == BackendKind::Extractive {
        usage!(
            "no model named: give --model FILE.gguf|DIR (local) or --base-url/--model \
             ($OPENAI_BASE_URL, $MODEL) for an OpenAI-compatible endpoint"
        );
    }
    let client = args.llm.client(args.llm.backend(args.backend.into())?)?;
    args.common.paths().check()?;
    let mut out = Output::create(args.common.run.output.as_deref())?;
    let counts = Counts::default();
    let driver = Driver {
        common: &args.common,
        workers: args.llm.concurrency,
        tool: "ft-generate",
    };
    let run = driver.run(
        &mut out,
        prepare,
        |item: Item| work(&client, &counts, item),
        |()| {},
        || client.budget_exhausted(),
    )?;
    let (summary, failed) = (run.0, run.0.failed);
    driver.close(out, run, "prompts", failed, || {
        format!(
            "{} prompts: {} completions ({} cut at --max-tokens), {} rejected; {}",
            summary.records - summary.bad_lines,
            counts.completions.load(Relaxed),
            counts.truncated.load(Relaxed),
            summary.failed,
            client.summary()
        )
    })
}

fn prepare(line: &str) -> Result<Item> {
    let rec = RawRecord::parse(line)?;
    let (format, messages) = prompt_messages(&rec)?;
    Ok(Item {
        line: line.to_string(),
        format,
        messages,
    })
}

fn work(client: &Client, counts: &Counts, item: Item) -> Outcome<()> {
    let task = Task::Generate {
        messages: item.messages,
    };
    // Free text: any reply is usable, an empty one included.
    let answer = client.generate(
        |a| prompts::request(task.clone(), None, a),
        |text| Ok(text.to_string()),
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
    let Ok(rec) = RawRecord::parse(&item.line) else {
        return Outcome::Failed {
            reason: "invalid JSON object".into(),
            raw: None,
        };
    };
    let backend = client.backend();
    let prompt_sha256 = prompts::prompt_sha256(&answer.request);
    let completion = answer.value;
    let finish = answer.reply.finish_reason.as_deref();
    if finish == Some("length") {
        counts.truncated.fetch_add(1, Relaxed);
    }
    counts.completions.fetch_add(1, Relaxed);
    let mut lines = Vec::with_capacity(item.line.len() + completion.len() + 256);
    let mut w = ObjectWriter::new(&mut lines);
    for (k, v) in rec.others(OWN) {
        w.raw(k, v);
    }
    w.str("completion", &completion);
    w.str(
        "gen_id",
        &stable_id(&[prompt_sha256.as_str(), backend.model(), &completion]),
    );
    w.value(
        "gen",
        &serde_json::json!({
            "backend": backend.name(),
            "model": backend.model(),
            "format": item.format.name(),
            "prompt_sha256": prompt_sha256,
            "params": backend.params(&answer.request),
            "usage": answer.reply.usage,
            "finish_reason": finish,
        }),
    );
    w.end();
    Outcome::Done { lines, meta: () }
}
