//! The streaming driver of the LLM tools: reads JSONL inputs line by line, hands each record to a pool
//! of worker threads (`--concurrency` of them, blocking HTTP calls), and writes results in input order.
//!
//! Memory is bounded: at most `window` records are in flight or waiting to be written. A line that
//! cannot be parsed follows `--on-error` like every ftkit tool (fail: stop after writing everything
//! before it, exit 1). An item that fails after its retries never vanishes: it goes to `--rejects`
//! (the input object plus `"reject":{"tool","reason","raw"}`), is counted, and the run goes on; at
//! the end the tool exits 1 unless `--on-error skip` was given. A fatal error (bad key, unknown
//! model) stops the run. When the budget is spent, no new item starts; items not done are counted.

use anyhow::{Result, anyhow};
use ftkit_core::cli::{CommonArgs, warn};
use ftkit_core::engine::Policy;
use ftkit_core::io::{Input, open_input};
use ftkit_core::jsonl::{LineReader, Loc};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// What a worker made of one item.
pub enum Outcome<M> {
    /// JSONL lines to write, and data for the tool's summary.
    Done { lines: Vec<u8>, meta: M },
    /// The item failed for good: a reason, the raw model text if any, and lines already made (none
    /// are written for a failed item, they are dropped with it).
    Failed { reason: String, raw: Option<String> },
    /// Not attempted: the budget was spent.
    NotStarted,
    /// Nothing else will work: stop the run.
    Fatal(String),
}

/// Counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Input records read.
    pub records: u64,
    /// Bad input lines (skipped with --on-error skip).
    pub bad_lines: u64,
    /// Items that failed and went to --rejects.
    pub failed: u64,
    /// Items not started because the budget was spent.
    pub not_started: u64,
}

/// Where the run ended.
pub enum End {
    /// Every input line was handled.
    Complete,
    /// A bad input line stopped the run (--on-error fail).
    BadLine(anyhow::Error),
    /// A fatal backend error stopped the run.
    Fatal(String),
    /// The budget was spent.
    Budget,
}

pub struct Driver<'a> {
    pub common: &'a CommonArgs,
    pub workers: usize,
    pub tool: &'static str,
}

struct Job<J> {
    seq: u64,
    job: J,
    /// `path:line` and the line itself, for --rejects and messages.
    at: (String, String),
}

impl Driver<'_> {
    /// Ends a run of [`Self::run`] the same way in every tool. A bad input line returns its
    /// error; a fatal backend error prints the tool's `report` (the counts so far) and returns.
    /// Otherwise the output is committed, `report` printed unless `--quiet`, a spent budget
    /// said, `failed` items make the run fail under `--on-error fail` (a tool may count fewer
    /// than the rejects, e.g. inputs refused by their own fault), and skipped bad lines counted.
    /// `items` names the inputs, plural ("prompts", "chunks").
    pub fn close(
        &self,
        out: ftkit_core::io::Output,
        (summary, end): (RunSummary, End),
        items: &str,
        failed: u64,
        report: impl Fn() -> String,
    ) -> Result<()> {
        let budget_hit = matches!(end, End::Budget);
        match end {
            End::BadLine(e) => return Err(e),
            End::Fatal(msg) => {
                warn(report());
                return Err(anyhow!(msg));
            }
            End::Budget | End::Complete => {}
        }
        out.finish()?;
        if !self.common.run.quiet {
            warn(report());
        }
        if budget_hit || summary.not_started > 0 {
            warn(format!(
                "budget reached: stopped after reading {} {items}, {} of them not processed; the output \
                 holds everything done (rerun with a larger budget: answered requests replay from the cache)",
                summary.records - summary.bad_lines,
                summary.not_started
            ));
        }
        if failed > 0 && self.common.run.on_error == ftkit_core::cli::OnError::Fail {
            anyhow::bail!(
                "{failed} {items} failed (kept in --rejects when given; use --on-error skip to exit 0)"
            );
        }
        if summary.bad_lines > 0 {
            warn(format!("{} bad input lines skipped", summary.bad_lines));
        }
        Ok(())
    }

    /// Runs the pool. `prepare` parses a line into a job (its error goes through --on-error);
    /// `work` runs on a worker thread; `done` sees each finished item's meta in input order;
    /// `stop` is polled before each new item (budget). The `--rejects` file of `common` is created
    /// here and committed when the run succeeds.
    pub fn run<J, M, P, W, D, S>(
        &self,
        out: &mut dyn Write,
        mut prepare: P,
        work: W,
        mut done: D,
        stop: S,
    ) -> Result<(RunSummary, End)>
    where
        J: Send,
        M: Send,
        P: FnMut(&str) -> Result<J>,
        W: Fn(J) -> Outcome<M> + Sync,
        D: FnMut(M),
        S: Fn() -> bool,
    {
        // Bad input lines follow the engine's policy; failed items go to the same --rejects file.
        let mut policy = Policy::new(&self.common.run)?;
        let rejects = policy.rejects();
        let workers = self.workers.max(1);
        let window = (workers * 2 + 8) as u64;
        let halt = AtomicBool::new(false);
        let mut summary = RunSummary::default();
        let mut end = End::Complete;
        let progress = ftkit_core::progress::Progress::items(self.common.run.quiet, "items", None);
        let result = std::thread::scope(|scope| -> Result<()> {
            let (job_tx, job_rx) = mpsc::sync_channel::<Job<J>>(workers);
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (res_tx, res_rx) = mpsc::channel::<(u64, (String, String), Outcome<M>)>();
            for _ in 0..workers {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                let (work, halt) = (&work, &halt);
                scope.spawn(move || {
                    loop {
                        let next = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(Job { seq, job, at }) = next else {
                            return;
                        };
                        let outcome = if halt.load(Relaxed) {
                            Outcome::NotStarted
                        } else {
                            work(job)
                        };
                        if res_tx.send((seq, at, outcome)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(res_tx);

            let mut pending: BTreeMap<u64, ((String, String), Outcome<M>)> = BTreeMap::new();
            let mut next_out = 0u64;
            let mut submitted = 0u64;
            // Writes every finished item that is next in order.
            let mut drain = |pending: &mut BTreeMap<u64, ((String, String), Outcome<M>)>,
                             next_out: &mut u64,
                             summary: &mut RunSummary,
                             end: &mut End|
             -> Result<()> {
                while let Some(((loc, line), outcome)) = pending.remove(next_out) {
                    *next_out += 1;
                    progress.inc(1);
                    match outcome {
                        Outcome::Done { lines, meta } => {
                            out.write_all(&lines)?;
                            done(meta);
                        }
                        Outcome::Failed { reason, raw } => {
                            summary.failed += 1;
                            warn(format!("{loc}: rejected: {reason}"));
                            if let Some(file) = &rejects {
                                file.write_all(&reject_line(
                                    &line,
                                    self.tool,
                                    &reason,
                                    raw.as_deref(),
                                ))?;
                            }
                        }
                        Outcome::NotStarted => summary.not_started += 1,
                        Outcome::Fatal(reason) => {
                            summary.not_started += 1;
                            halt.store(true, Relaxed);
                            if !matches!(end, End::Fatal(_)) {
                                *end = End::Fatal(reason);
                            }
                        }
                    }
                }
                Ok(())
            };

            let result = (|| -> Result<()> {
                'inputs: for path in self.common.inputs() {
                    let Input { name, reader } = open_input(&path)?;
                    let mut reader = LineReader::new(reader);
                    let mut buf = Vec::new();
                    while let Some(line_no) = reader
                        .next_line(&mut buf)
                        .map_err(|e| anyhow!(e).context(name.clone()))?
                    {
                        if halt.load(Relaxed) {
                            break 'inputs;
                        }
                        if stop() {
                            end = End::Budget;
                            halt.store(true, Relaxed);
                            break 'inputs;
                        }
                        summary.records += 1;
                        let loc = Loc {
                            path: &name,
                            line: line_no,
                        };
                        let prepared = std::str::from_utf8(&buf)
                            .map_err(|e| anyhow!("invalid UTF-8 at byte {}", e.valid_up_to()))
                            .and_then(|line| {
                                prepare(line).map(|job| (job, (loc.to_string(), line.to_string())))
                            });
                        let (job, at) = match prepared {
                            Ok(x) => x,
                            Err(err) => {
                                summary.bad_lines += 1;
                                // `fail` stops reading here; the items before it are still written.
                                if let Err(err) = policy.reject(loc, &buf, err) {
                                    end = End::BadLine(err);
                                    break 'inputs;
                                }
                                continue;
                            }
                        };
                        while submitted - next_out >= window {
                            let Ok((seq, l, o)) = res_rx.recv() else {
                                break;
                            };
                            pending.insert(seq, (l, o));
                            drain(&mut pending, &mut next_out, &mut summary, &mut end)?;
                        }
                        if job_tx
                            .send(Job {
                                seq: submitted,
                                job,
                                at,
                            })
                            .is_err()
                        {
                            break 'inputs;
                        }
                        submitted += 1;
                    }
                }
                Ok(())
            })();
            drop(job_tx);
            if result.is_err() {
                halt.store(true, Relaxed);
                return result;
            }
            while next_out < submitted {
                let Ok((seq, l, o)) = res_rx.recv() else {
                    break;
                };
                pending.insert(seq, (l, o));
                if let Err(e) = drain(&mut pending, &mut next_out, &mut summary, &mut end) {
                    halt.store(true, Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        });
        progress.finish();
        result?;
        drop(rejects);
        policy.close()?;
        Ok((summary, end))
    }
}

/// A rejected item for --rejects: the input object with `"reject":{"tool","reason","raw"}` added.
fn reject_line(line: &str, tool: &str, reason: &str, raw: Option<&str>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(line.len() + 128);
    let reject = serde_json::json!({"tool": tool, "reason": reason, "raw": raw});
    match ftkit_core::RawRecord::parse(line) {
        Ok(rec) => {
            let mut w = ftkit_core::ObjectWriter::new(&mut buf);
            for (k, v) in rec.others(&["reject"]) {
                w.raw(k, v);
            }
            w.value("reject", &reject);
            w.end();
        }
        Err(_) => {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
    }
    buf
}
