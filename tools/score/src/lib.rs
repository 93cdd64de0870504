//! ft-score: adds `score` and `verdict` to QA records (heuristics always, an LLM judge optionally) and
//! reports the score distribution. It never drops a record: filtering is ft-filter's job.

pub mod heuristics;

use anyhow::{Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use ftkit_core::chunks::load_chunks;
use ftkit_core::cli::{CommonArgs, OnError, warn};
use ftkit_core::io::Output;
use ftkit_core::{ObjectWriter, RawRecord, usage};
use ftkit_llm::driver::{Driver, End, Outcome};
use ftkit_llm::parse::Judgement;
use ftkit_llm::{BackendKind, CallError, Client, LlmArgs, Task, parse, prompts};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JudgeKind {
    /// Heuristics only.
    None,
    /// An OpenAI-compatible endpoint grades each pair with a 1-10 rubric.
    Openai,
    /// A model on this machine (--model FILE.gguf|DIR|ORG/NAME), its scores constrained to JSON.
    Local,
}

impl JudgeKind {
    fn name(self) -> &'static str {
        match self {
            JudgeKind::None => "none",
            JudgeKind::Openai => "openai",
            JudgeKind::Local => "local",
        }
    }
}

const AFTER_HELP: &str = "\
Examples:
  ft-qa-synth --keep-context chunks.jsonl | ft-score --report score.json | ft-filter --min-score 7

  # with an LLM judge (its overall score decides the verdict; --judge-weight blends it with the heuristic)
  ft-score --judge openai --model gpt-4o-mini --chunks chunks.jsonl qa.jsonl -o scored.jsonl

Heuristic score = 1 + 9 x the weighted mean of these checks (each 0 to 1), rounded to 0.1:
  grounding 0.25       share of the answer's tokens found in the context
  question_topic 0.05  share of the question's content tokens (no question/template words) in the context
  question_form 0.10   ends with ?, or starts with a question word or \"Fill in the blank\"
  specificity 0.15     content tokens of the question: 0 -> 0, 1 -> 0.5, 2 -> 0.75, 3+ -> 1; a generic
                       template (\"What does the text say about X?\") at most 0.25
  lengths 0.10         question >= 3 words and answer 1-100 words (101-250: half)
  novelty 0.15         share of the answer's tokens not in the question
  complete_answer 0.10 an answer over 3 words starts like a sentence and ends with . or ! (half each)
  lang_match 0.10      question and answer are in the record's lang (whatlang; script for short text)
Then caps: empty answer 1; an answer that restates the question (80% of its tokens, however few, or
all of it) 3; a language mismatch or grounding under 1/3: 5; no context: 7 (never a pass at the
defaults); a generic template question: 7.5. Summaries: grounding 0.6, length 0.4.

Adds to each record:
  \"score\": {\"overall\", \"heuristic\", \"checks\": {\"grounding\", \"question_topic\", \"question_form\",
             \"question_words\", \"specificity\", \"answer_words\", \"novelty\", \"complete_answer\",
             \"restates_question\", \"lang_match\"}, \"judge\": {\"relevance\", \"accuracy\", \"clarity\",
             \"grounding\", \"overall\", \"rationale\", \"backend\", \"model\"}}   (judge only with --judge)
  \"verdict\": \"pass\" | \"review\" | \"fail\"   (overall >= --pass, >= --review, below)

The context of a pair is its \"context\" field (ft-qa-synth --keep-context), else the text of its
chunk_id in --chunks; without either, grounding is null and the score is at most 7.
The distribution (verdicts and overall scores in buckets 0-1 .. 9-10) goes to stderr and to --report.";

/// Score QA pairs with heuristics and an optional LLM judge; report the distribution.
#[derive(Parser, Debug)]
#[command(
    name = "ft-score",
    version,
    about = "Score QA pairs (heuristics, optional LLM judge) and report the score distribution",
    long_about = "Reads QA records (as ft-qa-synth writes them) and adds a score object and a verdict to \
each, in input order. Heuristics always run: the answer's grounding in the chunk by token overlap, the question's \
topic and specificity, question form, lengths, what the answer adds to the question (restating caps the \
score at 3), whole-sentence answers, language match (rules below). With --judge openai a model grades \
relevance, accuracy, clarity, grounding and overall on a 1-10 rubric with a one-line rationale, through the \
same cache, limits and retries as ft-qa-synth. Records are never dropped: filter with ft-filter.",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// LLM judge.
    #[arg(long, value_enum, default_value_t = JudgeKind::None, value_name = "NAME")]
    pub judge: JudgeKind,

    /// Share of the judge's overall score in the record's overall score, the heuristic score
    /// taking the rest (1: the judge decides; a small local judge that barely tells pairs apart
    /// deserves less).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub judge_weight: f64,

    /// Overall score at or above which the verdict is `pass`.
    #[arg(long = "pass", value_name = "SCORE", default_value_t = 8.0)]
    pub pass_at: f64,

    /// Overall score at or above which the verdict is `review` (below: `fail`).
    #[arg(long = "review", value_name = "SCORE", default_value_t = 6.0)]
    pub review_at: f64,

    /// Write the distribution as JSON here (atomically).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Chunk records (id, text) giving the context of pairs without a `context` field (held in memory).
    #[arg(long, value_name = "FILE")]
    pub chunks: Option<String>,

    #[command(flatten)]
    pub llm: LlmArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Review,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Review => "review",
            Verdict::Fail => "fail",
        }
    }
}

/// Verdict and score distribution of a run.
#[derive(Clone, Debug, Default)]
pub struct Distribution {
    pub counts: [u64; 3],
    pub buckets: [u64; 10],
    pub sum: f64,
    pub n: u64,
}

impl Distribution {
    pub fn add(&mut self, overall: f64, v: Verdict) {
        self.counts[v as usize] += 1;
        self.buckets[(overall.floor().max(0.0) as usize).min(9)] += 1;
        self.sum += overall;
        self.n += 1;
    }

    fn pct(&self, k: u64) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (k as f64 * 1000.0 / self.n as f64).round() / 10.0
        }
    }

    pub fn text(&self, judge: &str) -> String {
        let mut s = format!("{} records scored (judge: {judge})\n", self.n);
        for v in [Verdict::Pass, Verdict::Review, Verdict::Fail] {
            let k = self.counts[v as usize];
            s.push_str(&format!(
                "  {:<7}{k:>8} ({:.1}%)\n",
                v.as_str(),
                self.pct(k)
            ));
        }
        s.push_str("  score distribution (overall):\n");
        for (i, &k) in self.buckets.iter().enumerate() {
            s.push_str(&format!(
                "    {}-{:<3}{k:>8} ({:.1}%)\n",
                i,
                i + 1,
                self.pct(k)
            ));
        }
        if self.n > 0 {
            s.push_str(&format!("  mean overall {:.2}", self.sum / self.n as f64));
        }
        s
    }

    pub fn json(&self, judge: &str, pass_at: f64, review_at: f64) -> serde_json::Value {
        let verdicts: serde_json::Map<String, serde_json::Value> =
            [Verdict::Pass, Verdict::Review, Verdict::Fail]
                .iter()
                .map(|v| {
                    let k = self.counts[*v as usize];
                    (
                        v.as_str().to_string(),
                        json!({"count": k, "percent": self.pct(k)}),
                    )
                })
                .collect();
        let buckets: Vec<_> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &k)| json!({"range": format!("{}-{}", i, i + 1), "count": k, "percent": self.pct(k)}))
            .collect();
        let mean = (self.n > 0).then(|| ((self.sum / self.n as f64) * 100.0).round() / 100.0);
        json!({
            "records": self.n,
            "judge": judge,
            "thresholds": {"pass": pass_at, "review": review_at},
            "verdicts": verdicts,
            "overall_buckets": buckets,
            "mean_overall": mean,
        })
    }
}

struct Job {
    line: String,
    context: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    args.common.run.pool()?;
    if !(1.0..=10.0).contains(&args.pass_at) || !(1.0..=10.0).contains(&args.review_at) {
        usage!("--pass and --review are scores from 1 to 10");
    }
    if !(0.0..=1.0).contains(&args.judge_weight) {
        usage!("--judge-weight is a share from 0 to 1");
    }
    if args.review_at > args.pass_at {
        usage!(
            "--review ({}) must not exceed --pass ({})",
            args.review_at,
            args.pass_at
        );
    }
    let client: Option<Client> = match args.judge {
        JudgeKind::None => None,
        JudgeKind::Openai | JudgeKind::Local => {
            args.llm.validate()?;
            let kind = if args.judge == JudgeKind::Local {
                BackendKind::Local
            } else {
                BackendKind::Openai
            };
            Some(args.llm.client(args.llm.backend(kind)?)?)
        }
    };
    let mut paths = args.common.paths();
    if let Some(c) = &args.chunks {
        paths = paths.input("--chunks", c);
    }
    if let Some(r) = &args.report {
        paths = paths.output("--report", r);
    }
    paths.check()?;
    let chunks = args.chunks.as_deref().map(load_chunks).transpose()?;
    let mut out = Output::create(args.common.run.output.as_deref())?;
    let mut dist = Distribution::default();
    let mut no_context = 0u64;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = if client.is_some() {
        args.llm.concurrency
    } else {
        args.common.run.threads.unwrap_or(cores)
    };
    let driver = Driver {
        common: &args.common,
        workers,
        tool: "ft-score",
    };
    let (pass_at, review_at, judge_weight) = (args.pass_at, args.review_at, args.judge_weight);
    let (summary, end) = driver.run(
        &mut out,
        |line: &str| {
            let rec = RawRecord::parse(line)?;
            let has_qa = rec.get("question").is_some() || rec.get("answer").is_some();
            if has_qa {
                rec.require_str("question")?;
                rec.require_str("answer")?;
            } else if rec.get_str("summary")?.is_none() {
                bail!("missing field \"question\"");
            }
            let context = match rec.get_str("context")? {
                Some(c) => Some(c.into_owned()),
                None => match (&chunks, rec.get_str("chunk_id")?) {
                    (Some(map), Some(id)) => map.get(id.as_ref()).cloned(),
                    _ => None,
                },
            };
            if context.is_none() {
                no_context += 1;
            }
            Ok(Job {
                line: line.to_string(),
                context,
            })
        },
        |job: Job| score_one(&job, client.as_ref(), pass_at, review_at, judge_weight),
        |(overall, verdict)| dist.add(overall, verdict),
        || client.as_ref().is_some_and(Client::budget_exhausted),
    )?;
    let budget_hit = matches!(end, End::Budget);
    match end {
        End::BadLine(e) => return Err(e),
        End::Fatal(msg) => return Err(anyhow!(msg)),
        End::Budget | End::Complete => {}
    }
    out.finish()?;
    let judge = args.judge.name();
    if let Some(path) = &args.report {
        let mut report = dist.json(judge, pass_at, review_at);
        if let Some(obj) = report.as_object_mut() {
            obj.insert("rejected".into(), json!(summary.failed));
            obj.insert("without_context".into(), json!(no_context));
        }
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        ftkit_core::io::write_atomic(path, &bytes)?;
    }
    if !args.common.run.quiet {
        ftkit_core::cli::warn_lines(dist.text(judge));
        if no_context > 0 {
            warn(format!(
                "{no_context} records had no context (give --chunks or use ft-qa-synth --keep-context): grounding not checked"
            ));
        }
        if let Some(c) = &client {
            warn(c.summary());
        }
    }
    if budget_hit || summary.not_started > 0 {
        warn(
            "budget reached: stopped early; the output holds every record scored (rerun to continue from the cache)",
        );
    }
    if summary.failed > 0 && args.common.run.on_error == OnError::Fail {
        bail!(
            "{} records could not be judged (kept in --rejects when given; --on-error skip exits 0)",
            summary.failed
        );
    }
    Ok(())
}

fn score_one(
    job: &Job,
    client: Option<&Client>,
    pass_at: f64,
    review_at: f64,
    judge_weight: f64,
) -> Outcome<(f64, Verdict)> {
    let Ok(rec) = RawRecord::parse(&job.line) else {
        return Outcome::Failed {
            reason: "invalid JSON object".into(),
            raw: None,
        };
    };
    let get = |k: &str| rec.get_str(k).ok().flatten().map(|c| c.into_owned());
    let question = get("question");
    let answer = get("answer");
    let lang = get("lang");
    let context = job.context.as_deref();
    let checks = match (&question, &answer) {
        (Some(q), Some(a)) => heuristics::qa(q, a, context, lang.as_deref()),
        _ => heuristics::summary(&get("summary").unwrap_or_default(), context),
    };
    let heuristic = checks.score();
    let mut judged: Option<(Judgement, &'static str, String)> = None;
    if let (Some(client), Some(q), Some(a)) = (client, &question, &answer) {
        let task = Task::Judge {
            context: job.context.clone(),
            question: q.clone(),
            answer: a.clone(),
        };
        match client.generate(
            |at| prompts::request(task.clone(), None, at),
            parse::judgement,
        ) {
            Ok(ans) => {
                let b = client.backend();
                judged = Some((ans.value, b.name(), b.model().to_string()));
            }
            Err(f) => {
                return match f.error {
                    CallError::Fatal(m) => Outcome::Fatal(m),
                    CallError::Budget => Outcome::NotStarted,
                    other => Outcome::Failed {
                        reason: other.to_string(),
                        raw: f.raw,
                    },
                };
            }
        }
    }
    let overall = judged.as_ref().map_or(heuristic, |(j, _, _)| {
        // Two decimals: a blend of one-decimal scores, without float noise in the output.
        let blend = judge_weight * j.overall + (1.0 - judge_weight) * heuristic;
        (blend * 100.0).round() / 100.0
    });
    let verdict = if overall >= pass_at {
        Verdict::Pass
    } else if overall >= review_at {
        Verdict::Review
    } else {
        Verdict::Fail
    };
    let mut score = json!({"overall": overall, "heuristic": heuristic, "checks": checks.json()});
    if let (Some((j, backend, model)), Some(obj)) = (judged, score.as_object_mut()) {
        obj.insert(
            "judge".into(),
            json!({"relevance": j.relevance, "accuracy": j.accuracy, "clarity": j.clarity, "grounding": j.grounding,
                   "overall": j.overall, "rationale": j.rationale, "backend": backend, "model": model}),
        );
    }
    let mut lines = Vec::with_capacity(job.line.len() + 256);
    let mut w = ObjectWriter::new(&mut lines);
    for (k, v) in rec.others(&["score", "verdict"]) {
        w.raw(k, v);
    }
    w.value("score", &score).str("verdict", verdict.as_str());
    w.end();
    Outcome::Done {
        lines,
        meta: (overall, verdict),
    }
}
