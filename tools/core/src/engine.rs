//! The per-line driver shared by the JSONL filters.
//!
//! Lines are read in batches; each batch is processed by a rayon pool and its results are written in
//! input order, so the output bytes do not depend on `--threads`. A line that fails goes through the
//! `--on-error` policy: `fail` stops with `path:line: reason` (exit 1) after writing the output of the
//! lines before it; `skip` reports it on stderr, copies it verbatim to `--rejects`, and goes on.

use crate::cli::{CommonArgs, OnError, warn};
use crate::io::{AtomicFile, Input, open_input};
use crate::jsonl::{LineReader, Loc};
use crate::progress::Progress;
use anyhow::{Result, anyhow};
use rayon::prelude::*;
use std::io::Write;

/// Bytes of input per batch: big enough to keep every core busy, small enough to bound memory.
const BATCH_BYTES: usize = 8 << 20;
/// Bytes of input per parallel task inside a batch.
const TASK_BYTES: usize = 256 << 10;

/// Counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub rejected: u64,
}

/// Reads the inputs of a [`CommonArgs`] and drives a per-line function over them.
pub struct Engine {
    inputs: Vec<String>,
    on_error: OnError,
    rejects: Option<AtomicFile>,
    pool: rayon::ThreadPool,
    progress: Progress,
    summary: Summary,
}

struct Batch {
    data: Vec<u8>,
    /// (start, end, line number) of each line in `data`.
    spans: Vec<(usize, usize, u64)>,
}

impl Batch {
    fn new() -> Self {
        Self {
            data: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
            spans: Vec::new(),
        }
    }

    /// Refills from `reader`; false when the input is exhausted and nothing was read.
    fn fill(
        &mut self,
        reader: &mut LineReader<Box<dyn std::io::BufRead + Send>>,
    ) -> std::io::Result<bool> {
        self.data.clear();
        self.spans.clear();
        while self.data.len() < BATCH_BYTES {
            let start = self.data.len();
            match reader.append_line(&mut self.data)? {
                Some(line) => self.spans.push((start, self.data.len(), line)),
                None => break,
            }
        }
        Ok(!self.spans.is_empty())
    }

    /// Contiguous groups of lines of about TASK_BYTES each.
    fn tasks(&self) -> Vec<std::ops::Range<usize>> {
        let mut tasks = Vec::new();
        let mut begin = 0;
        let mut bytes = 0;
        for (i, &(s, e, _)) in self.spans.iter().enumerate() {
            bytes += e - s;
            if bytes >= TASK_BYTES {
                tasks.push(begin..i + 1);
                begin = i + 1;
                bytes = 0;
            }
        }
        if begin < self.spans.len() {
            tasks.push(begin..self.spans.len());
        }
        tasks
    }

    fn line(&self, i: usize) -> &[u8] {
        let (s, e, _) = self.spans[i];
        &self.data[s..e]
    }
}

/// Output of one task: its bytes, and the lines that failed with where the output stood at that moment.
struct TaskOut {
    bytes: Vec<u8>,
    failures: Vec<(usize, usize, anyhow::Error)>,
}

fn as_utf8(line: &[u8]) -> Result<&str> {
    std::str::from_utf8(line).map_err(|e| anyhow!("invalid UTF-8 at byte {}", e.valid_up_to()))
}

impl Engine {
    pub fn new(args: &CommonArgs) -> Result<Self> {
        let rejects = args
            .rejects
            .as_deref()
            .map(AtomicFile::create)
            .transpose()?;
        Ok(Self {
            inputs: args.inputs(),
            on_error: args.on_error,
            rejects,
            pool: args.pool()?,
            progress: Progress::bytes(args.quiet, "reading"),
            summary: Summary::default(),
        })
    }

    /// The rayon pool sized by `--threads`, for tools that parallelise work of their own.
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    /// Applies the error policy to one bad line.
    pub fn reject(&mut self, loc: Loc, line: &[u8], err: anyhow::Error) -> Result<()> {
        self.summary.rejected += 1;
        if let Some(file) = &mut self.rejects {
            file.write_all(line)?;
            file.write_all(b"\n")?;
        }
        match self.on_error {
            OnError::Fail => Err(err.context(loc.to_string())),
            OnError::Skip => {
                warn(format!("{loc}: {err:#} (skipped)"));
                Ok(())
            }
        }
    }

    /// Runs `f` on every line, in parallel, writing what it appends to `out` in input order.
    /// `f` appends zero or more complete JSONL lines; if it fails, whatever it appended is dropped.
    pub fn map<F>(&mut self, out: &mut impl Write, f: F) -> Result<Summary>
    where
        F: Fn(Loc, &str, &mut Vec<u8>) -> Result<()> + Sync,
    {
        for path in self.inputs.clone() {
            let Input { name, reader } = open_input(&path)?;
            let mut reader = LineReader::new(reader);
            let mut current = Batch::new();
            let mut next = Batch::new();
            let mut more = current
                .fill(&mut reader)
                .map_err(|e| anyhow!(e).context(name.clone()))?;
            while more {
                let (results, refill) = self.pool.install(|| {
                    rayon::join(
                        || {
                            current
                                .tasks()
                                .into_par_iter()
                                .map(|range| run_task(&current, &name, range, &f))
                                .collect::<Vec<_>>()
                        },
                        || next.fill(&mut reader),
                    )
                });
                more = refill.map_err(|e| anyhow!(e).context(name.clone()))?;
                for task in results {
                    let mut written = 0;
                    for (line_idx, at, err) in task.failures {
                        out.write_all(&task.bytes[written..at])?;
                        written = at;
                        let line_no = current.spans[line_idx].2;
                        self.reject(
                            Loc {
                                path: &name,
                                line: line_no,
                            },
                            current.line(line_idx),
                            err,
                        )?;
                    }
                    out.write_all(&task.bytes[written..])?;
                }
                self.summary.records += current.spans.len() as u64;
                self.progress.inc(current.data.len() as u64);
                std::mem::swap(&mut current, &mut next);
            }
        }
        Ok(self.summary)
    }

    /// Runs `parse` on every line in parallel, then `consume` on each result sequentially in input
    /// order (for tools with state: dedup, caps, splits). Errors from either go through the policy.
    pub fn scan<T, P, C>(&mut self, parse: P, mut consume: C) -> Result<Summary>
    where
        T: Send,
        P: Fn(Loc, &str) -> Result<T> + Sync,
        C: FnMut(Loc, &str, T) -> Result<()>,
    {
        for path in self.inputs.clone() {
            let Input { name, reader } = open_input(&path)?;
            let mut reader = LineReader::new(reader);
            let mut current = Batch::new();
            let mut next = Batch::new();
            let mut more = current
                .fill(&mut reader)
                .map_err(|e| anyhow!(e).context(name.clone()))?;
            while more {
                let (parsed, refill) = self.pool.install(|| {
                    rayon::join(
                        || {
                            (0..current.spans.len())
                                .into_par_iter()
                                .with_min_len(64)
                                .map(|i| {
                                    let loc = Loc {
                                        path: &name,
                                        line: current.spans[i].2,
                                    };
                                    as_utf8(current.line(i)).and_then(|line| parse(loc, line))
                                })
                                .collect::<Vec<_>>()
                        },
                        || next.fill(&mut reader),
                    )
                });
                more = refill.map_err(|e| anyhow!(e).context(name.clone()))?;
                for (i, result) in parsed.into_iter().enumerate() {
                    let loc = Loc {
                        path: &name,
                        line: current.spans[i].2,
                    };
                    let raw = current.line(i);
                    let outcome = result.and_then(|value| {
                        // Valid UTF-8 was checked by the parse step.
                        let line = std::str::from_utf8(raw).unwrap_or_default();
                        consume(loc, line, value)
                    });
                    if let Err(err) = outcome {
                        self.reject(loc, raw, err)?;
                    }
                }
                self.summary.records += current.spans.len() as u64;
                self.progress.inc(current.data.len() as u64);
                std::mem::swap(&mut current, &mut next);
            }
        }
        Ok(self.summary)
    }

    /// Commits the rejects file and reports how many lines were rejected.
    pub fn finish(self) -> Result<Summary> {
        self.progress.finish();
        if let Some(file) = self.rejects {
            file.commit()?;
        }
        if self.summary.rejected > 0 {
            warn(format!(
                "{} of {} lines rejected",
                self.summary.rejected, self.summary.records
            ));
        }
        Ok(self.summary)
    }
}

fn run_task<F>(batch: &Batch, name: &str, range: std::ops::Range<usize>, f: &F) -> TaskOut
where
    F: Fn(Loc, &str, &mut Vec<u8>) -> Result<()> + Sync,
{
    let input: usize = range
        .clone()
        .map(|i| batch.spans[i].1 - batch.spans[i].0)
        .sum();
    let mut out = TaskOut {
        bytes: Vec::with_capacity(input + input / 2),
        failures: Vec::new(),
    };
    for i in range {
        let before = out.bytes.len();
        let loc = Loc {
            path: name,
            line: batch.spans[i].2,
        };
        if let Err(err) = as_utf8(batch.line(i)).and_then(|line| f(loc, line, &mut out.bytes)) {
            out.bytes.truncate(before);
            out.failures.push((i, before, err));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::RawRecord;

    fn args(file: &std::path::Path, on_error: OnError, threads: usize) -> CommonArgs {
        CommonArgs {
            files: vec![file.display().to_string()],
            on_error,
            threads: Some(threads),
            quiet: true,
            ..Default::default()
        }
    }

    fn upper(_: Loc, line: &str, out: &mut Vec<u8>) -> Result<()> {
        let rec = RawRecord::parse(line)?;
        let text = rec.require_str("text")?;
        crate::jsonl::write_line(out, &serde_json::json!({ "t": text.to_uppercase() }))
    }

    #[test]
    fn map_keeps_order_for_any_thread_count_and_reports_path_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        let mut input = String::new();
        for i in 0..50_000 {
            input.push_str(&format!("{{\"text\":\"line {i}\"}}\n"));
        }
        std::fs::write(&path, &input)?;
        let mut one = Vec::new();
        Engine::new(&args(&path, OnError::Fail, 1))?.map(&mut one, upper)?;
        let mut four = Vec::new();
        let summary = Engine::new(&args(&path, OnError::Fail, 4))?.map(&mut four, upper)?;
        assert_eq!(one, four);
        assert_eq!(summary.records, 50_000);
        assert!(one.starts_with(b"{\"t\":\"LINE 0\"}\n{\"t\":\"LINE 1\"}\n"));

        std::fs::write(
            &path,
            "{\"text\":\"a\"}\n\n{\"text\":\"b\"}\n{\"nope\":1}\n{\"text\":\"c\"}\n",
        )?;
        let mut out = Vec::new();
        let err = Engine::new(&args(&path, OnError::Fail, 2))?
            .map(&mut out, upper)
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("{}:4: missing field \"text\"", path.display())
        );
        assert_eq!(
            out, b"{\"t\":\"A\"}\n{\"t\":\"B\"}\n",
            "lines before the failure are written"
        );

        let rejects = dir.path().join("rejects.jsonl");
        let mut skip = args(&path, OnError::Skip, 2);
        skip.rejects = Some(rejects.clone());
        let mut out = Vec::new();
        let mut engine = Engine::new(&skip)?;
        engine.map(&mut out, upper)?;
        let summary = engine.finish()?;
        assert_eq!(
            summary,
            Summary {
                records: 4,
                rejected: 1
            }
        );
        assert_eq!(out, b"{\"t\":\"A\"}\n{\"t\":\"B\"}\n{\"t\":\"C\"}\n");
        assert_eq!(std::fs::read_to_string(&rejects)?, "{\"nope\":1}\n");
        Ok(())
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"text\":\"a\"}\n{\"text\":\"\xff\"}\n")?;
        let err = Engine::new(&args(&path, OnError::Fail, 1))?
            .map(&mut Vec::new(), upper)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("in.jsonl:2: invalid UTF-8"),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn scan_consumes_in_order() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        let input: String = (0..10_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        std::fs::write(&path, input)?;
        let mut seen = Vec::new();
        Engine::new(&args(&path, OnError::Fail, 3))?.scan(
            |_, line| Ok(RawRecord::parse(line)?.decode::<u64>("n")?.unwrap_or(0)),
            |_, _, n| {
                seen.push(n);
                Ok(())
            },
        )?;
        assert_eq!(seen, (0..10_000).collect::<Vec<u64>>());
        Ok(())
    }
}
