//! The per-line driver shared by the JSONL filters.
//!
//! Lines are read in batches; each batch is processed by a rayon pool and its results are written in
//! input order, so the output bytes do not depend on `--threads`. A line that fails goes through the
//! `--on-error` policy: `fail` stops with `path:line: reason` (exit 1) after writing the output of the
//! lines before it; `skip` reports it on stderr, copies it verbatim to `--rejects`, and goes on.
//! A read error (a corrupt zstd stream, a line over a cap) also ends the run after the output of the
//! lines read before it is written.
//!
//! The same pieces serve a tool that opens its inputs itself (ft-ingest): [`Engine::map_reader`]
//! drives an opened stream, [`map_part`] converts a small input in memory inside the tool's own
//! parallel batch, and [`Policy::write`] is the one "write up to the failure, then reject" path.

use crate::cli::{CommonArgs, OnError, RunArgs, warn};
use crate::io::{BOM, Input, ZSTD_MAGIC, open_input};
use crate::jsonl::{LineReader, Loc};
use crate::progress::Progress;
use crate::rejects::Rejects;
use anyhow::{Context, Result, anyhow};
use rayon::prelude::*;
use std::io::{BufRead, Write};

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

/// What a run of lines came to: lines handled, lines rejected, records written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub rejected: u64,
    pub written: u64,
}

/// A line that failed: where the output stood when it was met, its number and bytes, and why.
#[derive(Debug)]
pub struct Failure {
    pub at: usize,
    pub line: u64,
    /// The line verbatim, for `--rejects` (empty: nothing to copy, as for a whole file that fails).
    pub raw: Vec<u8>,
    pub error: anyhow::Error,
}

/// Output of a per-line function over some lines, not yet written: the bytes, the failures in input
/// order (each knows where the output stood), lines handled and records written.
#[derive(Debug, Default)]
pub struct Part {
    pub bytes: Vec<u8>,
    pub failures: Vec<Failure>,
    pub lines: u64,
    pub written: u64,
}

impl Part {
    /// Appends `other`, which follows this part in input order.
    fn append(&mut self, other: Part) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.failures
            .extend(other.failures.into_iter().map(|f| Failure {
                at: f.at + base,
                ..f
            }));
        self.lines += other.lines;
        self.written += other.written;
    }
}

/// One line of a batch: byte range in the batch's data, 1-based line number, and 0-based position
/// among the input's non-blank lines.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    line: u64,
    index: u64,
}

/// Reads the inputs of a [`CommonArgs`] and drives a per-line function over them.
pub struct Engine {
    inputs: Vec<String>,
    pool: rayon::ThreadPool,
    progress: Progress,
    policy: Policy,
}

/// The `--on-error` policy, the rejects file and the counts: the engine's, and that of a tool that
/// reads its input its own way (the LLM driver).
pub struct Policy {
    on_error: OnError,
    rejects: Option<Rejects>,
    summary: Summary,
}

impl Policy {
    /// The policy of `run`; its `--rejects` file is created now, as a temporary.
    pub fn new(run: &RunArgs) -> Result<Self> {
        Ok(Self {
            on_error: run.on_error,
            rejects: run.rejects_file()?.map(Rejects::new),
            summary: Summary::default(),
        })
    }

    /// A handle on the `--rejects` file, for rejects of a tool's own format (drop it before
    /// [`Policy::close`]).
    pub fn rejects(&self) -> Option<Rejects> {
        self.rejects.clone()
    }

    /// Applies the policy to one bad line: counts it, copies it to `--rejects`, then returns its
    /// error with `path:line` (`fail`) or reports it on stderr (`skip`).
    pub fn reject(&mut self, loc: Loc, line: &[u8], err: anyhow::Error) -> Result<()> {
        self.summary.rejected += 1;
        if let Some(file) = &self.rejects
            && !line.is_empty()
        {
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

    /// Writes output made ahead to `out` in order: the bytes up to each failure, then the failure
    /// through the policy (`fail` returns its error with `path:line`, `skip` reports it and goes
    /// on). The one "write up to the failure, then reject" path.
    pub fn write(
        &mut self,
        out: &mut impl Write,
        path: &str,
        bytes: &[u8],
        failures: Vec<Failure>,
    ) -> Result<()> {
        let mut written = 0;
        for Failure {
            at,
            line,
            raw,
            error,
        } in failures
        {
            let at = at.clamp(written, bytes.len());
            out.write_all(&bytes[written..at])?;
            written = at;
            self.reject(Loc { path, line }, &raw, error)?;
        }
        out.write_all(&bytes[written..])?;
        Ok(())
    }

    /// Commits the `--rejects` file; returns the counts.
    pub fn close(self) -> Result<Summary> {
        if let Some(file) = self.rejects {
            file.commit()?;
        }
        Ok(self.summary)
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

/// Where a feed stands: the next byte of a map, lines seen, non-blank lines seen, and whether a read
/// failed (nothing more is read then).
#[derive(Default)]
struct Cursor {
    pos: usize,
    line: u64,
    index: u64,
    failed: bool,
}

/// Finds the non-blank lines of `data[at.pos..]`, up to about BATCH_BYTES or `max_lines` lines.
fn split_lines(data: &[u8], at: &mut Cursor, spans: &mut Vec<Span>, max_lines: usize) {
    spans.clear();
    let mut pos = at.pos;
    let limit = pos + BATCH_BYTES;
    while pos < data.len() && pos < limit && spans.len() < max_lines {
        let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i);
        at.line += 1;
        let mut stop = end;
        if stop > pos && data[stop - 1] == b'\r' {
            stop -= 1;
        }
        if !data[pos..stop].iter().all(u8::is_ascii_whitespace) {
            spans.push(Span {
                start: pos,
                end: stop,
                line: at.line,
                index: at.index,
            });
            at.index += 1;
        }
        pos = end + 1;
    }
    at.pos = pos;
}

/// A batch of lines and, once processed, its result. For a mapped file `data` stays empty and the
/// spans index the map; `bytes` is the input the batch covers (for progress and page release);
/// `error` is the read error that ended the batch, raised once the lines before it are written.
struct Batch<R> {
    data: Vec<u8>,
    spans: Vec<Span>,
    from: usize,
    bytes: usize,
    result: Option<R>,
    error: Option<std::io::Error>,
}

impl<R> Batch<R> {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            spans: Vec::new(),
            from: 0,
            bytes: 0,
            result: None,
            error: None,
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
        self.bytes = 0;
        self.result = None;
        self.error = None;
    }
}

/// The next batch's lines (at most `max_lines`) from a mapped file (`map`) or a stream.
fn fill<R, B: BufRead>(
    batch: &mut Batch<R>,
    map: Option<&memmap2::Mmap>,
    reader: &mut Option<LineReader<B>>,
    at: &mut Cursor,
    max_lines: usize,
) {
    batch.clear();
    if at.failed {
        return;
    }
    if let Some(map) = map {
        batch.from = at.pos.min(map.len());
        split_lines(map, at, &mut batch.spans, max_lines);
        batch.bytes = at.pos.min(map.len()) - batch.from;
    } else if let Some(reader) = reader {
        while batch.data.len() < BATCH_BYTES && batch.spans.len() < max_lines {
            let start = batch.data.len();
            match reader.append_line(&mut batch.data) {
                Ok(Some(line)) => {
                    batch.spans.push(Span {
                        start,
                        end: batch.data.len(),
                        line,
                        index: at.index,
                    });
                    at.index += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    batch.data.truncate(start);
                    batch.error = Some(e);
                    at.failed = true;
                    break;
                }
            }
        }
        batch.bytes = batch.data.len();
    }
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

fn as_utf8(line: &[u8]) -> Result<&str> {
    std::str::from_utf8(line).map_err(|e| anyhow!("invalid UTF-8 at byte {}", e.valid_up_to()))
}

fn read_error(name: &str, e: std::io::Error) -> anyhow::Error {
    anyhow!(e).context(format!("{name}: cannot read"))
}

fn max_lines(left: Option<u64>) -> usize {
    left.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX))
}

/// An input of [`Engine::drive`]: a path to open, or a stream a tool opened.
enum Source {
    Path(String),
    Open(String, Box<dyn BufRead + Send>),
}

/// Runs a per-line function `f(loc, index, line, out) -> records written` on `spans` of `data`,
/// appending to `bytes` (a reused buffer). A failed line's output is dropped and the failure kept
/// with where the output stood. Stops after the first failure when `fail_fast` (the rest would be
/// discarded), and once `limit` records are written.
fn run_lines<F>(
    name: &str,
    data: &[u8],
    spans: &[Span],
    mut bytes: Vec<u8>,
    f: &F,
    fail_fast: bool,
    limit: Option<u64>,
) -> Part
where
    F: Fn(Loc, u64, &str, &mut Vec<u8>) -> Result<u64>,
{
    let input: usize = spans.iter().map(|s| s.end - s.start).sum();
    bytes.clear();
    bytes.reserve(input + input / 2);
    let mut part = Part {
        bytes,
        ..Part::default()
    };
    for s in spans {
        if limit.is_some_and(|limit| part.written >= limit) {
            break;
        }
        let before = part.bytes.len();
        let loc = Loc {
            path: name,
            line: s.line,
        };
        let line = &data[s.start..s.end];
        part.lines += 1;
        match as_utf8(line).and_then(|text| f(loc, s.index, text, &mut part.bytes)) {
            Ok(n) => part.written += n,
            Err(error) => {
                part.bytes.truncate(before);
                part.failures.push(Failure {
                    at: before,
                    line: s.line,
                    raw: line.to_vec(),
                    error,
                });
                if fail_fast {
                    break;
                }
            }
        }
    }
    part
}

/// Runs `f` over the lines of `reader` into one [`Part`] held in memory, for a tool that converts
/// many small inputs at once in its own parallel batch and writes each with [`Policy::write`] in
/// its own order. The lines of a batch run in parallel on the current rayon pool, except with a
/// `limit`: then they run in order, a batch reads no more lines than records are still wanted, and
/// conversion stops once `limit` records are written. Stops after the first failure with
/// `OnError::Fail`. A read error ends the part: it is returned with the output of the lines before it.
pub fn map_part<F>(
    name: &str,
    reader: impl BufRead,
    on_error: OnError,
    limit: Option<u64>,
    f: F,
) -> (Part, Option<anyhow::Error>)
where
    F: Fn(Loc, u64, &str, &mut Vec<u8>) -> Result<u64> + Sync,
{
    let fail_fast = on_error == OnError::Fail;
    let mut reader = Some(LineReader::new(reader));
    let (mut at, mut batch, mut part) = (Cursor::default(), Batch::<()>::new(), Part::default());
    loop {
        let left = limit.map(|limit| limit.saturating_sub(part.written));
        if left == Some(0) || (fail_fast && !part.failures.is_empty()) {
            return (part, None);
        }
        fill(&mut batch, None, &mut reader, &mut at, max_lines(left));
        let (data, spans) = (&batch.data, &batch.spans);
        if left.is_some() || spans.len() < 2 {
            part.append(run_lines(
                name,
                data,
                spans,
                Vec::new(),
                &f,
                fail_fast,
                left,
            ));
        } else {
            let parts: Vec<Part> = tasks(spans)
                .into_par_iter()
                .map(|r| run_lines(name, data, &spans[r], Vec::new(), &f, fail_fast, None))
                .collect();
            for p in parts {
                let stop = fail_fast && !p.failures.is_empty();
                part.append(p);
                if stop {
                    break;
                }
            }
        }
        if let Some(e) = batch.error.take() {
            return (part, Some(read_error(name, e)));
        }
        if batch.spans.is_empty() {
            return (part, None);
        }
    }
}

impl Engine {
    pub fn new(args: &CommonArgs) -> Result<Self> {
        // Tools with outputs of their own check them with these first; this covers the rest.
        args.paths().check()?;
        let mut engine = Self::for_streams(&args.run)?;
        engine.inputs = args.inputs();
        engine.progress = Progress::bytes(args.run.quiet, "reading");
        Ok(engine)
    }

    /// An engine with no inputs of its own, for a tool that opens its sources itself and hands
    /// them to [`Engine::map_reader`] (ft-ingest); it checks its paths first and shows its own
    /// progress, so this engine shows none.
    pub fn for_streams(run: &RunArgs) -> Result<Self> {
        let pool = run.pool()?;
        Ok(Self {
            inputs: Vec::new(),
            pool,
            progress: Progress::bytes(true, "reading"),
            policy: Policy::new(run)?,
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

    /// The error policy, for output a tool made ahead (a [`Part`], or its own) and writes with
    /// [`Policy::write`].
    pub fn policy(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// Feeds every batch of every source to `work` (in the pool) and then `emit` (in order), which
    /// returns the lines it handled and the records it wrote. With a `limit` on the records, batches
    /// run one at a time and hold no more lines than records are still wanted, so that reading
    /// stops at the limit; `work` is told how many are left.
    fn drive<R, W, E>(
        &mut self,
        sources: Vec<Source>,
        limit: Option<u64>,
        work: W,
        mut emit: E,
    ) -> Result<Counts>
    where
        R: Send,
        W: Fn(&str, &[u8], &[Span], Option<u64>) -> R + Sync,
        E: FnMut(&mut Policy, &str, &[u8], &[Span], R) -> Result<(u64, u64)>,
    {
        let mut counts = Counts::default();
        let rejected = self.policy.summary.rejected;
        for source in sources {
            let (name, feed) = match source {
                Source::Path(path) => open_feed(&path)?,
                Source::Open(name, reader) => (name, Feed::Stream(LineReader::new(reader))),
            };
            let (map, mut reader) = match feed {
                Feed::Map(map) => (Some(map), None),
                Feed::Stream(reader) => (None, Some(reader)),
            };
            // A byte order mark is skipped (the stream feed's reader does the same).
            let bom = map.as_ref().is_some_and(|m| m.starts_with(BOM));
            let mut at = Cursor {
                pos: if bom { BOM.len() } else { 0 },
                ..Cursor::default()
            };
            let (mut emitting, mut working, mut filling) =
                (Batch::new(), Batch::new(), Batch::new());
            if map.is_none() {
                for batch in [&mut emitting, &mut working, &mut filling] {
                    batch.data.reserve(BATCH_BYTES + (64 << 10));
                }
            }
            if let Some(limit) = limit {
                while counts.written < limit {
                    let left = limit - counts.written;
                    fill(
                        &mut working,
                        map.as_ref(),
                        &mut reader,
                        &mut at,
                        max_lines(Some(left)),
                    );
                    if !working.spans.is_empty() {
                        let data = map.as_deref().unwrap_or(&working.data);
                        let result = self
                            .pool
                            .install(|| work(&name, data, &working.spans, Some(left)));
                        let (lines, written) =
                            emit(&mut self.policy, &name, data, &working.spans, result)?;
                        counts.lines += lines;
                        counts.written += written;
                        self.policy.summary.records += lines;
                    }
                    if let Some(e) = working.error.take() {
                        return Err(read_error(&name, e));
                    }
                    if working.spans.is_empty() {
                        break;
                    }
                }
                continue;
            }
            // Three batches in flight: while the pool works on one, the previous one's results are
            // written and the next one is read, so output and input overlap the work.
            fill(&mut working, map.as_ref(), &mut reader, &mut at, usize::MAX);
            while !working.spans.is_empty() || emitting.result.is_some() {
                let (pool, policy) = (&self.pool, &mut self.policy);
                let (result, emitted) = std::thread::scope(|scope| {
                    // The work runs in the pool, driven from a scoped thread, so that `emit` stays on
                    // this thread and needs not be Send.
                    let worker = scope.spawn(|| {
                        (!working.spans.is_empty()).then(|| {
                            pool.install(|| {
                                work(
                                    &name,
                                    map.as_deref().unwrap_or(&working.data),
                                    &working.spans,
                                    None,
                                )
                            })
                        })
                    });
                    let emitted = match emitting.result.take() {
                        Some(r) => {
                            let data = map.as_deref().unwrap_or(&emitting.data);
                            emit(policy, &name, data, &emitting.spans, r)
                        }
                        None => Ok((0, 0)),
                    };
                    if emitted.is_ok() && !working.spans.is_empty() {
                        fill(&mut filling, map.as_ref(), &mut reader, &mut at, usize::MAX);
                    } else {
                        filling.clear();
                    }
                    let result = worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (result, emitted)
                });
                let (lines, written) = emitted?;
                counts.lines += lines;
                counts.written += written;
                self.policy.summary.records += lines;
                // A read error is raised once the lines read before it are written.
                if let Some(e) = emitting.error.take() {
                    return Err(read_error(&name, e));
                }
                self.progress.inc(emitting.bytes as u64);
                if let Some(map) = &map {
                    release(map, emitting.from, emitting.from + emitting.bytes);
                }
                working.result = result;
                std::mem::swap(&mut emitting, &mut working);
                std::mem::swap(&mut working, &mut filling);
                filling.clear();
            }
            // A read error before the first line of a batch: nothing of that batch to write.
            for batch in [&mut emitting, &mut working] {
                if let Some(e) = batch.error.take() {
                    return Err(read_error(&name, e));
                }
            }
        }
        counts.rejected = self.policy.summary.rejected - rejected;
        Ok(counts)
    }

    /// Runs `f` on every line, in parallel, writing what it appends to `out` in input order.
    /// `f` appends zero or more complete JSONL lines; if it fails, whatever it appended is dropped.
    pub fn map<F>(&mut self, out: &mut impl Write, f: F) -> Result<Summary>
    where
        F: Fn(Loc, &str, &mut Vec<u8>) -> Result<()> + Sync,
    {
        let sources = self.inputs.iter().cloned().map(Source::Path).collect();
        self.map_sources(sources, out, None, |loc, _, line, buf| {
            f(loc, line, buf).map(|()| 1)
        })?;
        Ok(self.policy.summary)
    }

    /// Like [`Engine::map`] on a stream a tool opened (and checked, capped) itself, named `name` in
    /// messages. `f` also gets the line's 0-based position among the stream's non-blank lines and
    /// returns how many records it wrote; with a `limit`, reading stops once that many are written
    /// (lines then run in order, a batch holding no more lines than records are still wanted). The
    /// counts are this stream's.
    pub fn map_reader<F>(
        &mut self,
        name: &str,
        reader: Box<dyn BufRead + Send>,
        out: &mut impl Write,
        limit: Option<u64>,
        f: F,
    ) -> Result<Counts>
    where
        F: Fn(Loc, u64, &str, &mut Vec<u8>) -> Result<u64> + Sync,
    {
        let sources = vec![Source::Open(name.to_string(), reader)];
        self.map_sources(sources, out, limit, f)
    }

    fn map_sources<F>(
        &mut self,
        sources: Vec<Source>,
        out: &mut impl Write,
        limit: Option<u64>,
        f: F,
    ) -> Result<Counts>
    where
        F: Fn(Loc, u64, &str, &mut Vec<u8>) -> Result<u64> + Sync,
    {
        let fail_fast = self.policy.on_error == OnError::Fail;
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
            sources,
            limit,
            |name, data, spans, left| match left {
                // With a limit the lines run in order, so the one that reaches it is known.
                Some(_) => vec![run_lines(name, data, spans, take(), &f, fail_fast, left)],
                None => tasks(spans)
                    .into_par_iter()
                    .map(|range| run_lines(name, data, &spans[range], take(), &f, fail_fast, None))
                    .collect::<Vec<_>>(),
            },
            |policy, name, _, _, parts| {
                let (mut lines, mut written) = (0, 0);
                for part in parts {
                    lines += part.lines;
                    written += part.written;
                    policy.write(out, name, &part.bytes, part.failures)?;
                    if let Ok(mut s) = spare.lock() {
                        s.push(part.bytes);
                    }
                }
                Ok((lines, written))
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
        let sources = self.inputs.iter().cloned().map(Source::Path).collect();
        self.drive(
            sources,
            None,
            |name, data, spans, _| {
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
                Ok((spans.len() as u64, 0))
            },
        )?;
        Ok(self.policy.summary)
    }

    /// Commits the rejects file and reports how many lines were rejected.
    pub fn finish(self) -> Result<Summary> {
        let summary = self.close()?;
        let Summary { records, rejected } = summary;
        if rejected > 0 {
            warn(format!("{rejected} of {records} lines rejected"));
        }
        Ok(summary)
    }

    /// Commits the rejects file, saying nothing: for a tool with a summary line of its own.
    pub fn close(self) -> Result<Summary> {
        self.progress.finish();
        self.policy.close()
    }
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

    /// A stream that fails if read past its first `ok` bytes, as a capped or corrupt input would.
    struct FailsAfter {
        data: std::io::Cursor<Vec<u8>>,
        ok: u64,
    }

    impl std::io::Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.fill_buf()?.len().min(buf.len());
            buf[..n].copy_from_slice(&self.fill_buf()?[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for FailsAfter {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            if self.data.position() >= self.ok {
                return Err(std::io::Error::other("read past the end"));
            }
            let ok = (self.ok - self.data.position()) as usize;
            let buf = self.data.fill_buf()?;
            Ok(&buf[..buf.len().min(ok)])
        }

        fn consume(&mut self, n: usize) {
            self.data.consume(n);
        }
    }

    /// One document per line, none for an empty text: `f` of [`Engine::map_reader`].
    fn doc(loc: Loc, index: u64, line: &str, out: &mut Vec<u8>) -> Result<u64> {
        let text = RawRecord::parse(line)?.require_str("text")?;
        if text.is_empty() {
            return Ok(0);
        }
        let rec = serde_json::json!({ "t": text, "line": loc.line, "index": index });
        crate::jsonl::write_line(out, &rec)?;
        Ok(1)
    }

    fn stream(text: &str, ok: usize) -> Box<dyn BufRead + Send> {
        Box::new(FailsAfter {
            data: std::io::Cursor::new(text.as_bytes().to_vec()),
            ok: ok as u64,
        })
    }

    #[test]
    fn map_reader_stops_reading_at_the_limit_and_counts() -> Result<()> {
        let run = RunArgs {
            on_error: OnError::Skip,
            threads: Some(2),
            quiet: true,
            ..Default::default()
        };
        // Lines 2 (blank) and 4 (empty text) write nothing, line 3 is bad; the cap is reached on
        // line 6, and reading past line 6 fails.
        let text =
            "{\"text\":\"a\"}\n\n{\"x\":1}\n{\"text\":\"\"}\n{\"text\":\"b\"}\n{\"text\":\"c\"}\n";
        let input = format!("{text}{{\"text\":\"d\"}}\n");
        let mut engine = Engine::for_streams(&run)?;
        let mut out = Vec::new();
        let counts = engine.map_reader("s", stream(&input, text.len()), &mut out, Some(3), doc)?;
        assert_eq!(
            counts,
            Counts {
                lines: 5,
                rejected: 1,
                written: 3
            }
        );
        assert_eq!(
            String::from_utf8(out)?,
            "{\"index\":0,\"line\":1,\"t\":\"a\"}\n\
             {\"index\":3,\"line\":5,\"t\":\"b\"}\n\
             {\"index\":4,\"line\":6,\"t\":\"c\"}\n"
        );
        // Without a limit the same stream fails after line 6, its lines written.
        let mut out = Vec::new();
        let err = Engine::for_streams(&run)?
            .map_reader("s", stream(&input, text.len()), &mut out, None, doc)
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "s: cannot read: read past the end");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3);
        Ok(())
    }

    #[test]
    fn write_stops_at_a_failure_or_reports_it() -> Result<()> {
        let failures = || {
            vec![Failure {
                at: 4,
                line: 7,
                raw: b"bad".to_vec(),
                error: anyhow!("no good"),
            }]
        };
        let mut run = RunArgs {
            quiet: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let err = Engine::for_streams(&run)?
            .policy()
            .write(&mut out, "p", b"one\ntwo\n", failures())
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "p:7: no good");
        assert_eq!(out, b"one\n");
        let dir = tempfile::tempdir()?;
        run.on_error = OnError::Skip;
        run.rejects = Some(dir.path().join("r.jsonl"));
        let mut engine = Engine::for_streams(&run)?;
        let mut out = Vec::new();
        engine
            .policy()
            .write(&mut out, "p", b"one\ntwo\n", failures())?;
        assert_eq!(out, b"one\ntwo\n");
        assert_eq!(engine.close()?.rejected, 1);
        assert_eq!(std::fs::read(dir.path().join("r.jsonl"))?, b"bad\n");
        Ok(())
    }
}
