//! ft-qa-synth: chunks in, question-answer records out.
//!
//! Each chunk becomes one request per question language (and one more with `--summary`); requests run
//! `--concurrency` at a time through [`ftkit_llm::Client`] (cache, limits, retries, budget) and records
//! come out in input order. Record format: see [`Args`]'s long help and the README.

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use ftkit_core::cli::{CommonArgs, warn};
use ftkit_core::io::Output;
use ftkit_core::{ObjectWriter, RawRecord, stable_id, usage};
use ftkit_llm::client::Answer;
use ftkit_llm::driver::{Driver, Outcome};
use ftkit_llm::{Backend, CallError, Client, Failure, LlmArgs, Task, lang, parse, prompts};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use ftkit_llm::BackendKind;

const AFTER_HELP: &str = "\
Examples:
  ft-ingest docs/ | ft-chunk | ft-qa-synth | ft-score | ft-filter --min-score 7

  # DashScope (Qwen), bilingual: Chinese chunks also get English questions
  export OPENAI_API_KEY=sk-... BASE_URL=https://dashscope.aliyuncs.com/compatible-mode/v1
  ft-qa-synth --model qwen-turbo --pairs 4 --cross-lingual en:zh --summary chunks.jsonl -o qa.jsonl

  # a local llama.cpp or Ollama server, 64 requests in flight, at most 600 requests a minute
  ft-qa-synth --base-url http://127.0.0.1:8080/v1 --model qwen2.5 --concurrency 64 --rpm 600 chunks.jsonl

Output: one record per QA pair,
  {\"id\",\"chunk_id\",\"doc_id\",\"kind\":\"qa\",\"question\",\"answer\",\"lang\",\"doc_lang\",
   \"gen\":{\"backend\",\"model\",\"prompt_sha256\",\"params\",\"usage\"}, <chunk fields but text>}
and with --summary one {\"kind\":\"summary\",\"summary\",...} record per chunk.
id = stable_id(chunk_id, lang, question, answer).
With --keep-context the chunk's text is kept as \"context\".

A rerun replays answered requests from the cache (no request is sent twice), so after a crash or a
kill, run the same command again. Failed chunks go to --rejects with the reason and the raw model
output; the run exits 1 when any failed, unless --on-error skip.";

/// Generate question-answer pairs from text chunks with an LLM or the offline extractive backend.
#[derive(Parser, Debug)]
#[command(
    name = "ft-qa-synth",
    version,
    about = "Generate question-answer pairs from text chunks (LLM or offline extractive)",
    long_about = "Reads chunk records ({\"id\",\"doc_id\",\"text\",...}, as ft-chunk writes them) and writes \
question-answer records in input order. Backends: any OpenAI-compatible endpoint (OpenAI, DashScope, vLLM, \
Ollama, llama.cpp) with concurrency, rate limits, retries, a response cache and budgets; or the offline, \
deterministic extractive backend, which builds definition, cloze and fact questions from the chunk's own \
sentences (the default when no endpoint or model is named).",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where the pairs come from.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto, value_name = "NAME")]
    pub backend: BackendKind,

    /// QA pairs per chunk (per question language).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub pairs: usize,

    /// QA pairs per 1000 tokens of chunk (about 4 characters, or 1 CJK character, a token), at least 1;
    /// replaces --pairs.
    #[arg(long, value_name = "X", conflicts_with = "pairs")]
    pub pairs_per_1k_tokens: Option<f64>,

    /// Question language: a code (en, zh, ...) or `auto` (the chunk's `lang` field, else detected from its text).
    #[arg(long, value_name = "CODE", default_value = "auto")]
    pub lang: String,

    /// Also ask questions in language Q about chunks in language D (`en:zh`: English questions on Chinese text).
    #[arg(long, value_name = "Q:D")]
    pub cross_lingual: Option<String>,

    /// Add a dense summary record per chunk.
    #[arg(long)]
    pub summary: bool,

    /// Replace the built-in QA prompt (its user message). Placeholders: {text} (the chunk), {lang}
    /// (the language name) and the pair count as the letter n in braces.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,

    /// Keep the chunk's text in each record as `context`.
    #[arg(long)]
    pub keep_context: bool,

    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Fields of the chunk that the tool writes itself (not passed through).
const OWN: &[&str] = &[
    "id", "chunk_id", "doc_id", "text", "lang", "doc_lang", "kind", "question", "answer",
    "summary", "gen", "context", "reject", "score", "verdict",
];

struct Chunk {
    line: String,
    id: String,
    text: String,
    doc_lang: String,
}

struct Settings {
    pairs: usize,
    per_1k: Option<f64>,
    lang: Option<String>,
    cross: Option<(String, String)>,
    summary: bool,
    template: Option<String>,
    keep_context: bool,
}

#[derive(Default)]
struct Counts {
    qa: AtomicU64,
    summaries: AtomicU64,
    empty: AtomicU64,
}

/// Rough token count: ASCII characters / 4, plus one per other character.
fn estimate_tokens(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    ascii.div_ceil(4) + text.chars().filter(|c| !c.is_ascii()).count()
}

fn normalize_question(q: &str) -> String {
    let lower = q.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    words
        .join(" ")
        .trim_end_matches(['?', '？', '.', '。', '!', ' '])
        .to_string()
}

/// A language code as the tools write them: 2 or 3 letters, then optional `-`/`_` subtags (`zh-Hant`).
fn is_lang_code(code: &str) -> bool {
    let mut parts = code.split(['-', '_']);
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

pub fn run(args: Args) -> Result<()> {
    args.llm.validate()?;
    args.common.run.pool()?; // validates --threads; the workers are --concurrency
    if args.pairs == 0 {
        usage!("--pairs must be at least 1");
    }
    if let Some(x) = args.pairs_per_1k_tokens
        && !(x.is_finite() && x > 0.0)
    {
        usage!("--pairs-per-1k-tokens must be positive");
    }
    let cross = match &args.cross_lingual {
        None => None,
        Some(spec) => match spec.split(':').map(str::trim).collect::<Vec<_>>()[..] {
            [q, d] if is_lang_code(q) && is_lang_code(d) => Some((q.to_string(), d.to_string())),
            _ => usage!("--cross-lingual wants QUESTION_LANG:DOC_LANG, like en:zh (got {spec:?})"),
        },
    };
    let template = match &args.prompt_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            if !t.contains("{text}") {
                usage!("{}: the prompt has no {{text}} placeholder", p.display());
            }
            Some(t)
        }
    };
    let backend = args.llm.backend(args.backend)?;
    if backend.name() == "extractive" {
        if template.is_some() {
            warn("the extractive backend uses no prompt: --prompt-file is ignored");
        }
        if args.lang != "auto" && args.lang != "en" && args.lang != "zh" {
            usage!(
                "the extractive backend writes questions in en or zh only (--lang {})",
                args.lang
            );
        }
    }
    let client = args.llm.client(backend)?;
    let settings = Settings {
        pairs: args.pairs,
        per_1k: args.pairs_per_1k_tokens,
        lang: (args.lang != "auto").then(|| args.lang.clone()),
        cross,
        summary: args.summary,
        template,
        keep_context: args.keep_context,
    };

    let mut paths = args.common.paths();
    if let Some(p) = &args.prompt_file {
        paths = paths.input("--prompt-file", p);
    }
    paths.check()?;
    let mut out = Output::create(args.common.run.output.as_deref())?;
    let counts = Counts::default();
    let driver = Driver {
        common: &args.common,
        workers: args.llm.concurrency,
        tool: "ft-qa-synth",
    };
    let run = driver.run(
        &mut out,
        prepare,
        |chunk: Chunk| work(&client, &settings, &counts, chunk),
        |()| {},
        || client.budget_exhausted(),
    )?;
    let (summary, failed) = (run.0, run.0.failed);
    driver.close(out, run, "chunks", failed, || {
        format!(
            "{} chunks: {} QA records, {} summaries, {} chunks without pairs, {} rejected; {}",
            summary.records - summary.bad_lines,
            counts.qa.load(Relaxed),
            counts.summaries.load(Relaxed),
            counts.empty.load(Relaxed),
            summary.failed,
            client.summary()
        )
    })
}

fn prepare(line: &str) -> Result<Chunk> {
    let rec = RawRecord::parse(line)?;
    let text = rec.require_str("text")?.into_owned();
    let id = match rec.get_str("id")? {
        Some(id) => id.into_owned(),
        None => rec
            .require_str("chunk_id")
            .map_err(|_| anyhow!("missing field \"id\""))?
            .into_owned(),
    };
    let doc_lang = match rec.get_str("lang")? {
        Some(l) if !l.is_empty() => l.into_owned(),
        _ => lang::detect(&text).to_string(),
    };
    Ok(Chunk {
        line: line.to_string(),
        id,
        text,
        doc_lang,
    })
}

fn failure_outcome(f: Failure) -> Outcome<()> {
    match f.error {
        CallError::Fatal(msg) => Outcome::Fatal(msg),
        CallError::Budget => Outcome::NotStarted,
        other => Outcome::Failed {
            reason: other.to_string(),
            raw: f.raw,
        },
    }
}

fn work(client: &Client, s: &Settings, counts: &Counts, chunk: Chunk) -> Outcome<()> {
    let n = match s.per_1k {
        Some(x) => {
            ((estimate_tokens(&chunk.text) as f64 / 1000.0 * x).round() as usize).clamp(1, 50)
        }
        None => s.pairs,
    };
    let main_lang = s.lang.clone().unwrap_or_else(|| chunk.doc_lang.clone());
    let mut langs = vec![main_lang];
    if let Some((q, d)) = &s.cross
        && *d == chunk.doc_lang
        && !langs.contains(q)
    {
        langs.push(q.clone());
    }
    let Ok(rec) = RawRecord::parse(&chunk.line) else {
        return Outcome::Failed {
            reason: "invalid JSON object".into(),
            raw: None,
        };
    };
    let backend = client.backend();
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let mut made = 0;
    for lang in &langs {
        let task = Task::Qa {
            text: chunk.text.clone(),
            n,
            lang: lang.clone(),
            doc_lang: chunk.doc_lang.clone(),
        };
        // The extractive backend may honestly find nothing to ask; a model that returns no pair is re-asked.
        let parse_pairs = |text: &str| match parse::qa_pairs(text) {
            Err(_) if backend.name() == "extractive" && text == r#"{"pairs":[]}"# => Ok(Vec::new()),
            other => other,
        };
        let answer = client.generate(
            |a| prompts::request(task.clone(), s.template.as_deref(), a),
            parse_pairs,
        );
        let answer = match answer {
            Ok(a) => a,
            Err(f) => return failure_outcome(f),
        };
        for (q, a) in answer.value.iter().take(n) {
            if !seen.insert((lang.clone(), normalize_question(q))) {
                continue;
            }
            made += 1;
            let id = stable_id(&[chunk.id.as_str(), lang, q, a]);
            let mut w = ObjectWriter::new(&mut lines);
            head(&mut w, &id, &chunk, &rec, "qa");
            w.str("question", q).str("answer", a);
            tail(&mut w, backend, &answer, lang, &chunk, &rec, s.keep_context);
            w.end();
        }
    }
    if s.summary {
        let lang = s.lang.clone().unwrap_or_else(|| chunk.doc_lang.clone());
        let task = Task::Summary {
            text: chunk.text.clone(),
            lang: lang.clone(),
        };
        let parse_summary = |text: &str| match parse::summary(text) {
            Err(_) if backend.name() == "extractive" && text == r#"{"summary":""}"# => {
                Ok(String::new())
            }
            other => other,
        };
        match client.generate(|a| prompts::request(task.clone(), None, a), parse_summary) {
            Ok(answer) if !answer.value.is_empty() => {
                let id = stable_id(&[chunk.id.as_str(), "summary", &lang, &answer.value]);
                let mut w = ObjectWriter::new(&mut lines);
                head(&mut w, &id, &chunk, &rec, "summary");
                w.str("summary", &answer.value);
                tail(
                    &mut w,
                    backend,
                    &answer,
                    &lang,
                    &chunk,
                    &rec,
                    s.keep_context,
                );
                w.end();
                counts.summaries.fetch_add(1, Relaxed);
            }
            Ok(_) => {}
            Err(f) => return failure_outcome(f),
        }
    }
    counts.qa.fetch_add(made, Relaxed);
    if made == 0 {
        counts.empty.fetch_add(1, Relaxed);
    }
    Outcome::Done { lines, meta: () }
}

fn head(w: &mut ObjectWriter, id: &str, chunk: &Chunk, rec: &RawRecord, kind: &str) {
    w.str("id", id).str("chunk_id", &chunk.id);
    match rec.get("doc_id") {
        Some(v) => w.raw("doc_id", v),
        None => w.value("doc_id", &serde_json::Value::Null),
    };
    w.str("kind", kind);
}

fn tail<T>(
    w: &mut ObjectWriter,
    backend: &dyn Backend,
    answer: &Answer<T>,
    lang: &str,
    chunk: &Chunk,
    rec: &RawRecord,
    keep_context: bool,
) {
    w.str("lang", lang).str("doc_lang", &chunk.doc_lang);
    let prompt = (backend.name() != "extractive").then(|| prompts::prompt_sha256(&answer.request));
    w.value(
        "gen",
        &serde_json::json!({
            "backend": backend.name(),
            "model": backend.model(),
            "prompt_sha256": prompt,
            "params": backend.params(&answer.request),
            "usage": answer.reply.usage,
        }),
    );
    if keep_context {
        w.str("context", &chunk.text);
    }
    for (k, v) in rec.others(OWN) {
        w.raw(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_normalise_for_dedup() {
        assert_eq!(
            normalize_question("What is  X?"),
            normalize_question("what is x")
        );
        assert_ne!(
            normalize_question("What is X?"),
            normalize_question("What is Y?")
        );
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("机器学习"), 4);
    }
}
