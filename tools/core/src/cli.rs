//! The `main` of every tool: argument parsing, exit codes, error printing, closed pipes.
//!
//! Exit status: 0 success (also when stdout was closed early, as by `| head`; only stdout: any other
//! broken pipe is a failure), 1 failure,
//! 2 usage error (from clap, or a [`Usage`] error returned by the tool after parsing).

use crate::paths::Paths;
use clap::{Args, Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

static TOOL: OnceLock<&'static str> = OnceLock::new();

/// The running tool's name (`ft-chunk`), for messages.
pub fn tool_name() -> &'static str {
    TOOL.get().copied().unwrap_or("ftkit")
}

/// Prints `ft-<tool>: {message}` on stderr, control characters escaped.
pub fn warn(message: impl std::fmt::Display) {
    eprintln!("{}: {}", tool_name(), escape_controls(&message.to_string()));
}

/// [`warn`] for a message of several lines (a report): the first after the tool's name, the
/// others as they are, each with its control characters escaped.
pub fn warn_lines(message: impl std::fmt::Display) {
    let text = message.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut out = format!("{}: {}\n", tool_name(), escape_controls(first));
    for line in lines {
        out.push_str(&escape_controls(line));
        out.push('\n');
    }
    eprint!("{out}");
}

/// `text` with its control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`), so that a file name or
/// a field value cannot break a message into forged lines or send terminal escape sequences.
/// Backslashes stay as they are: escaping twice changes nothing.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A usage error found after parsing (conflicting values and the like): exit status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

impl Usage {
    /// An error about an option's value (a parse failure) as a usage error: `.map_err(Usage::of)`.
    pub fn of(e: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(Usage(format!("{e:#}")))
    }
}

/// Returns a [`Usage`] error from the enclosing function.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::cli::Usage(format!($($arg)*)))) };
}

/// What to do with a line that cannot be processed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop at the first bad line with exit status 1.
    #[default]
    Fail,
    /// Report the line on stderr (and in --rejects), go on, exit 0.
    Skip,
}

/// Options shared by every JSONL filter: input files and [`RunArgs`]; flatten them into a tool's Args.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// Input JSONL files; none or `-` reads stdin. zstd input is detected automatically.
    #[arg(value_name = "FILE")]
    pub files: Vec<String>,

    #[command(flatten)]
    pub run: RunArgs,
}

impl CommonArgs {
    /// The input list, with stdin standing in for an empty one.
    pub fn inputs(&self) -> Vec<String> {
        if self.files.is_empty() {
            vec!["-".to_string()]
        } else {
            self.files.clone()
        }
    }

    /// The inputs, `-o` and `--rejects`, for the same-file check; a tool adds its other outputs.
    pub fn paths(&self) -> Paths {
        let paths = self
            .inputs()
            .into_iter()
            .fold(Paths::new(), |p, f| p.input("input", f));
        self.run.outputs(paths)
    }
}

/// Where output goes, what a bad input does, threads, quietness: every tool's, including those
/// that take paths rather than JSONL files (ft-ingest).
#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// Write output here instead of stdout (written atomically; `.zst` compresses).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// What to do with a bad input line.
    #[arg(long, value_enum, default_value_t = OnError::Fail, value_name = "POLICY")]
    pub on_error: OnError,

    /// Write every rejected input line here, verbatim (written atomically when the run completes).
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Worker threads (default: all cores). Output is identical for any value.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// No progress or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl RunArgs {
    /// The `--rejects` file, opened (as a temporary: it appears when committed), when one was named.
    pub fn rejects_file(&self) -> anyhow::Result<Option<crate::io::AtomicFile>> {
        self.rejects
            .as_deref()
            .map(crate::io::AtomicFile::create)
            .transpose()
    }

    /// Adds `-o` and `--rejects` to `paths`.
    pub fn outputs(&self, mut paths: Paths) -> Paths {
        if let Some(o) = &self.output {
            paths = paths.output("-o", o);
        }
        if let Some(r) = &self.rejects {
            paths = paths.output("--rejects", r);
        }
        paths
    }

    /// A rayon pool of `--threads` workers.
    pub fn pool(&self) -> anyhow::Result<rayon::ThreadPool> {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = self.threads {
            if n == 0 {
                usage!("--threads must be at least 1");
            }
            b = b.num_threads(n);
        }
        Ok(b.build()?)
    }
}

/// Parses `A`, runs `run`, and maps the outcome to an exit status (see the module docs).
pub fn run_main<A: Parser>(name: &'static str, run: fn(A) -> anyhow::Result<()>) -> ExitCode {
    let _ = TOOL.set(name);
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if reader_left(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            warn(format!("{e:#}"));
            eprintln!("Try '{name} --help' for more information.");
            ExitCode::from(2)
        }
        Err(e) => {
            warn(format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// True when the run stopped because the reader of stdout went away (`| head`): a quiet success. Any
/// other broken pipe (a socket, a FIFO) is a failure like any other: work would be lost silently.
pub fn reader_left(e: &anyhow::Error) -> bool {
    is_broken_pipe(e) && crate::io::stdout_closed()
}

/// True when the error comes from writing to a closed pipe, even when serde_json wraps the io::Error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        if let Some(js) = cause.downcast_ref::<serde_json::Error>() {
            return js.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe);
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn broken_pipe_is_found_through_context_and_serde() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::new(io).context("writing");
        assert!(is_broken_pipe(&e));
        let js = serde_json::Error::io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let e: anyhow::Error = Err::<(), _>(js).context("x").unwrap_err();
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn only_a_closed_stdout_is_a_quiet_success() {
        // Nothing in this test process wrote to a closed stdout: a broken pipe is someone else's.
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e) && !reader_left(&e));
    }

    #[test]
    fn control_characters_are_escaped_once() {
        let name = "a\nft-x: forged\u{1b}[31m\tb\\n é";
        let once = escape_controls(name);
        assert_eq!(once, "a\\nft-x: forged\\u{1b}[31m\\tb\\n é");
        assert_eq!(
            escape_controls(&once),
            once,
            "escaping twice changes nothing"
        );
    }
}
