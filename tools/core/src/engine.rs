//! The per-line driver shared by the JSONL filters.
//!
//! Lines are read in batches; each batch is processed by a rayon pool and its results are written in
//! input order, so the output bytes do not depend on `--threads`. A line that fails goes through the
//! `--on-error` policy: `fail` stops with `path:line: reason` (exit 1) after writing the output of the
//! lines before it; `skip` reports it on stderr, copies it verbatim to `--rejects`, and goes on.

use crate::cli::{CommonArgs, OnError, warn};
use crate::io::{BOM, Input, ZSTD_MAGIC, open_input};
use crate::jsonl::{LineReader, Loc};
use crate::progress::Progress;
use crate::rejects::Rejects;
use anyhow::{Context, Result, anyhow};
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

/// One line of a batch: byte range in the batch's data and 1-based line number.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    line: u64,
}

/// Reads the inputs of a [`CommonArgs`] and drives a per-line function over them.
pub struct Engine {
    inputs: Vec<String>,
    pool: rayon::ThreadPool,
    progress: Progress,
    policy: Policy,
}

/// The `--on-error` policy, the rejects file and the counts.
struct Policy {
    on_error: OnError,
    rejects: Option<Rejects>,
    summary: Summary,
}

impl Policy {
    fn reject(&mut self, loc: Loc, line: &[u8], err: anyhow::Error) -> Result<()> {
        self.summary.rejected += 1;
        if let Some(file) = &self.rejects {
            file.write_line(line)?;
        }
        match self.on_error {
            OnError::Fail => Err(err.context(loc.to_string())),
            OnError::Skip => {
                warn(format!("{loc}: {err:#} (skipped)"));
                Ok(())
            }
        }
    }
}

/// Where lines come from: a memory-mapped plain file (no copy: lines are slices of the map), or a
/// stream (stdin, zstd) read into double-buffered batches while the previous batch is processed.
enum Feed {
    Map(memmap2::Mmap),
    Stream(LineReader<Box<dyn std::io::BufRead + Send>>),
}

fn open_feed(path: &str) -> Result<(String, Feed)> {
    if path != "-" {
        let file = std::fs::File::open(path).with_context(|| format!("{path}: cannot open"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("{path}: cannot read"))?;
        if meta.is_file() && meta.len() >= 4 {
            let map = map_file(&file).with_context(|| format!("{path}: cannot read"))?;
            if map[..4] != ZSTD_MAGIC {
                let _ = map.advise(memmap2::Advice::Sequential);
                return Ok((path.to_string(), Feed::Map(map)));
            }
        }
    }
    let Input { name, reader } = open_input(path)?;
    Ok((name, Feed::Stream(LineReader::new(reader))))
}

#[allow(unsafe_code)]
fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and lives only while this run reads the file; like ripgrep, we
    // accept that a file truncated by another process while we read it can fault.
    unsafe { memmap2::Mmap::map(file) }
}

/// Drops the pages of `map[from..to]`, which are never read again, so that resident memory stays
/// bounded by a batch instead of growing with the file.
#[allow(unsafe_code)]
fn release(map: &memmap2::Mmap, from: usize, to: usize) {
    const PAGE: usize = 4096;
    let start = from.div_ceil(PAGE) * PAGE;
    let end = to / PAGE * PAGE;
    if end > start {
        // SAFETY: the map is a read-only file mapping; MADV_DONTNEED only drops clean page-cache
        // pages from this process, and no slice of this range is used after this call.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// Finds the non-blank lines of `data[pos..]` up to about BATCH_BYTES; returns where the next batch starts.
fn split_lines(data: &[u8], mut pos: usize, line: &mut u64, spans: &mut Vec<Span>) -> usize {
    spans.clear();
    let limit = pos + BATCH_BYTES;
    while pos < data.len() && pos < limit {
        let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i);
        *line += 1;
        let mut stop = end;
        if stop > pos && data[stop - 1] == b'\r' {
            stop -= 1;
        }
        if !data[pos..stop].iter().all(u8::is_ascii_whitespace) {
            spans.push(Span {
                start: pos,
                end: stop,
                line: *line,
            });
        }
        pos = end + 1;
    }
    pos
}

/// A batch of lines and, once processed, its result. For a mapped file `data` stays empty and the
/// spans index the map; `bytes` is the input the batch covers (for progress and page release).
struct Batch<R> {
    data: Vec<u8>,
    spans: Vec<Span>,
    from: usize,
    bytes: usize,
    result: Option<R>,
}

impl<R> Batch<R> {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            spans: Vec::new(),
            from: 0,
            bytes: 0,
            result: None,
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
        self.bytes = 0;
        self.result = None;
    }
}

/// The next batch's lines from a mapped file (`map`, at `pos`) or a stream.
fn fill<R>(
    batch: &mut Batch<R>,
    map: Option<&memmap2::Mmap>,
    reader: &mut Option<LineReader<Box<dyn std::io::BufRead + Send>>>,
    pos: &mut usize,
    line: &mut u64,
) -> std::io::Result<()> {
    batch.clear();
    if let Some(map) = map {
        batch.from = (*pos).min(map.len());
        *pos = split_lines(map, *pos, line, &mut batch.spans);
        batch.bytes = (*pos).min(map.len()) - batch.from;
    } else if let Some(reader) = reader {
        if batch.data.capacity() == 0 {
            batch.data.reserve(BATCH_BYTES + (64 << 10));
        }
        while batch.data.len() < BATCH_BYTES {
            let start = batch.data.len();
            match reader.append_line(&mut batch.data)? {
                Some(line) => batch.spans.push(Span {
                    start,
                    end: batch.data.len(),
                    line,
                }),
                None => break,
            }
        }
        batch.bytes = batch.data.len();
    }
    Ok(())
}

/// Contiguous groups of lines of about TASK_BYTES each.
fn tasks(spans: &[Span]) -> Vec<std::ops::Range<usize>> {
    let mut tasks = Vec::new();
    let mut begin = 0;
    let mut bytes = 0;
    for (i, span) in spans.iter().enumerate() {
        bytes += span.end - span.start;
        if bytes >= TASK_BYTES {
            tasks.push(begin..i + 1);
            begin = i + 1;
            bytes = 0;
        }
    }
    if begin < spans.len() {
        tasks.push(begin..spans.len());
    }
    tasks
}

/// Output of one task: its bytes, and the lines that failed with where the output stood then.
struct TaskOut {
    bytes: Vec<u8>,
    failures: Vec<(usize, usize, anyhow::Error)>,
}

fn as_utf8(line: &[u8]) -> Result<&str> {
    std::str::from_utf8(line).map_err(|e| anyhow!("invalid UTF-8 at byte {}", e.valid_up_to()))
}

impl Engine {
    pub fn new(args: &CommonArgs) -> Result<Self> {
        // Tools with outputs of their own check them with these first; this covers the rest.
        args.paths().check()?;
        let rejects = args.run.rejects_file()?.map(Rejects::new);
        Ok(Self {
            inputs: args.inputs(),
            pool: args.run.pool()?,
            progress: Progress::bytes(args.run.quiet, "reading"),
            policy: Policy {
                on_error: args.run.on_error,
                rejects,
                summary: Summary::default(),
            },
        })
    }

    /// The rayon pool sized by `--threads`, for tools that parallelise work of their own.
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    /// The `--rejects` file, for a tool that rejects records of its own into it (drop the handle
    /// before [`Engine::finish`]).
    pub fn rejects(&self) -> Option<Rejects> {
        self.policy.rejects.clone()
    }

    /// Applies the error policy to one bad line.
    pub fn reject(&mut self, loc: Loc, line: &[u8], err: anyhow::Error) -> Result<()> {
        self.policy.reject(loc, line, err)
    }

    /// Feeds every batch of every input to `work` (in the pool) and then `emit` (in order).
    fn drive<R, W, E>(&mut self, work: W, mut emit: E) -> Result<Summary>
    where
        R: Send,
        W: Fn(&str, &[u8], &[Span]) -> R + Sync,
        E: FnMut(&mut Policy, &str, &[u8], &[Span], R) -> Result<()>,
    {
        // Three batches in flight: while the pool works on one, the previous one's results are
        // written and the next one is read, so output and input overlap the work.
        for path in self.inputs.clone() {
            let (name, feed) = open_feed(&path)?;
            let (map, mut reader) = match feed {
                Feed::Map(map) => (Some(map), None),
                Feed::Stream(reader) => (None, Some(reader)),
            };
            let read_err = |e: std::io::Error| anyhow!(e).context(name.clone());
            // A byte order mark is skipped (the stream feed's reader does the same).
            let bom = map.as_ref().is_some_and(|m| m.starts_with(BOM));
            let (mut pos, mut line) = (if bom { BOM.len() } else { 0 }, 0u64);
            let (mut emitting, mut working, mut filling) =
                (Batch::new(), Batch::new(), Batch::new());
            fill(&mut working, map.as_ref(), &mut reader, &mut pos, &mut line).map_err(read_err)?;
            while !working.spans.is_empty() || emitting.result.is_some() {
                let (pool, policy) = (&self.pool, &mut self.policy);
                let (result, emitted, filled) = std::thread::scope(|scope| {
                    // The work runs in the pool, driven from a scoped thread, so that `emit` stays on
                    // this thread and needs not be Send.
                    let worker = scope.spawn(|| {
                        (!working.spans.is_empty()).then(|| {
                            pool.install(|| {
                                work(
                                    &name,
                                    map.as_deref().unwrap_or(&working.data),
                                    &working.spans,
                                )
                            })
                        })
                    });
                    let emitted = match emitting.result.take() {
                        Some(r) => {
                            let data = map.as_deref().unwrap_or(&emitting.data);
                            emit(policy, &name, data, &emitting.spans, r)
                        }
                        None => Ok(()),
                    };
                    let filled = if emitted.is_ok() && !working.spans.is_empty() {
                        fill(&mut filling, map.as_ref(), &mut reader, &mut pos, &mut line)
                    } else {
                        filling.clear();
                        Ok(())
                    };
                    let result = worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (result, emitted, filled)
                });
                emitted?;
                filled.map_err(read_err)?;
                self.policy.summary.records += emitting.spans.len() as u64;
                self.progress.inc(emitting.bytes as u64);
                if let Some(map) = &map {
                    release(map, emitting.from, emitting.from + emitting.bytes);
                }
                working.result = result;
                std::mem::swap(&mut emitting, &mut working);
                std::mem::swap(&mut working, &mut filling);
                filling.clear();
            }
        }
        Ok(self.policy.summary)
    }

    /// Runs `f` on every line, in parallel, writing what it appends to `out` in input order.
    /// `f` appends zero or more complete JSONL lines; if it fails, whatever it appended is dropped.
    pub fn map<F>(&mut self, out: &mut impl Write, f: F) -> Result<Summary>
    where
        F: Fn(Loc, &str, &mut Vec<u8>) -> Result<()> + Sync,
    {
        // Task buffers are reused from batch to batch: fresh multi-megabyte allocations cost page faults.
        let spare: std::sync::Mutex<Vec<Vec<u8>>> = Default::default();
        let take = || {
            spare
                .lock()
                .map(|mut s| s.pop())
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        self.drive(
            |name, data, spans| {
                tasks(spans)
                    .into_par_iter()
                    .map(|range| {
                        run_task(name, data, &spans[range.clone()], range.start, take(), &f)
                    })
                    .collect::<Vec<_>>()
            },
            |policy, name, data, spans, results| {
                for task in results {
                    let mut written = 0;
                    for (i, at, err) in task.failures {
                        out.write_all(&task.bytes[written..at])?;
                        written = at;
                        let Span { start, end, line } = spans[i];
                        policy.reject(Loc { path: name, line }, &data[start..end], err)?;
                    }
                    out.write_all(&task.bytes[written..])?;
                    if let Ok(mut s) = spare.lock() {
                        s.push(task.bytes);
                    }
                }
                Ok(())
            },
        )
    }

    /// Runs `parse` on every line in parallel, then `consume` on each result sequentially in input
    /// order (for tools with state: dedup, caps, splits). Errors from either go through the policy.
    /// `consume` gets the line's bytes, which `parse` saw as valid UTF-8: tools write them verbatim,
    /// and checking them again on this sequential path would cost throughput.
    pub fn scan<T, P, C>(&mut self, parse: P, mut consume: C) -> Result<Summary>
    where
        T: Send,
        P: Fn(Loc, &str) -> Result<T> + Sync,
        C: FnMut(Loc, &[u8], T) -> Result<()>,
    {
        self.drive(
            |name, data, spans| {
                spans
                    .par_iter()
                    .with_min_len(64)
                    .map(|s| {
                        let loc = Loc {
                            path: name,
                            line: s.line,
                        };
                        as_utf8(&data[s.start..s.end]).and_then(|line| parse(loc, line))
                    })
                    .collect::<Vec<_>>()
            },
            |policy, name, data, spans, parsed| {
                for (span, result) in spans.iter().zip(parsed) {
                    let loc = Loc {
                        path: name,
                        line: span.line,
                    };
                    let raw = &data[span.start..span.end];
                    let outcome = result.and_then(|value| consume(loc, raw, value));
                    if let Err(err) = outcome {
                        policy.reject(loc, raw, err)?;
                    }
                }
                Ok(())
            },
        )
    }

    /// Commits the rejects file and reports how many lines were rejected.
    pub fn finish(self) -> Result<Summary> {
        self.progress.finish();
        let policy = self.policy;
        if let Some(file) = policy.rejects {
            file.commit()?;
        }
        let Summary { records, rejected } = policy.summary;
        if rejected > 0 {
            warn(format!("{rejected} of {records} lines rejected"));
        }
        Ok(policy.summary)
    }
}

fn run_task<F>(
    name: &str,
    data: &[u8],
    spans: &[Span],
    first: usize,
    mut bytes: Vec<u8>,
    f: &F,
) -> TaskOut
where
    F: Fn(Loc, &str, &mut Vec<u8>) -> Result<()> + Sync,
{
    let input: usize = spans.iter().map(|s| s.end - s.start).sum();
    bytes.clear();
    bytes.reserve(input + input / 2);
    let mut out = TaskOut {
        bytes,
        failures: Vec::new(),
    };
    for (k, s) in spans.iter().enumerate() {
        let before = out.bytes.len();
        let loc = Loc {
            path: name,
            line: s.line,
        };
        let line = &data[s.start..s.end];
        if let Err(err) = as_utf8(line).and_then(|line| f(loc, line, &mut out.bytes)) {
            out.bytes.truncate(before);
            out.failures.push((first + k, before, err));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;
    use crate::jsonl::RawRecord;

    fn args(file: &std::path::Path, on_error: OnError, threads: usize) -> CommonArgs {
        CommonArgs {
            files: vec![file.display().to_string()],
            run: RunArgs {
                on_error,
                threads: Some(threads),
                quiet: true,
                ..Default::default()
            },
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
        skip.run.rejects = Some(rejects.clone());
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
    fn mapped_files_and_streams_agree() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let plain = dir.path().join("in.jsonl");
        let packed = dir.path().join("in.jsonl.zst");
        // CRLF, blank lines, whitespace-only lines, no final newline, batches of several MB.
        let mut input = String::new();
        for i in 0..300_000 {
            input.push_str(&format!("{{\"text\":\"l{i}\"}}\r\n"));
            if i % 1000 == 0 {
                input.push_str("\n \t\n");
            }
        }
        input.push_str("{\"text\":\"end\"}");
        std::fs::write(&plain, &input)?;
        std::fs::write(&packed, zstd::encode_all(input.as_bytes(), 1)?)?;
        let mut mapped = Vec::new();
        let a = Engine::new(&args(&plain, OnError::Fail, 2))?.map(&mut mapped, upper)?;
        let mut streamed = Vec::new();
        let b = Engine::new(&args(&packed, OnError::Fail, 2))?.map(&mut streamed, upper)?;
        assert_eq!(a, b);
        assert_eq!(a.records, 300_001);
        assert!(mapped == streamed, "mapped and streamed outputs differ");
        assert!(mapped.ends_with(b"{\"t\":\"END\"}\n"));
        // Line numbers count blank lines in both feeds.
        for path in [&plain, &packed] {
            let mut lines = Vec::new();
            Engine::new(&args(path, OnError::Fail, 2))?.scan(
                |loc, _| Ok(loc.line),
                |_, _, n| {
                    lines.push(n);
                    Ok(())
                },
            )?;
            assert_eq!(lines[..3], [1, 4, 5]);
            assert_eq!(lines.len(), 300_001);
        }
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
