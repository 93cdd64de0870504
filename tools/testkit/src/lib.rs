//! Test helpers for the ftkit tools.
//!
//! - [`Run`]: runs a tool binary with arguments and stdin, capturing status, stdout and stderr.
//! - [`contract`]: the behaviour every JSONL filter shares (stdin, `-`, `.zst`, exit codes, `path:line`
//!   errors, closed pipes, thread-count independence, atomic `-o`).
//! - [`golden`]: compare with a file under `testdata/`, rewritten when `FTKIT_BLESS=1`.
//! - [`man`]: the man page generated from a tool's clap definition must match `man/<tool>.1`.
//! - [`http`]: a loopback HTTP server with Range, fault injection and the hub's endpoints.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod contract;
pub mod http;

/// The workspace root (tests run with the crate folder `tools/<tool>` as CARGO_MANIFEST_DIR).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `testdata/<tool>/<name>`.
pub fn testdata(tool: &str, name: &str) -> PathBuf {
    workspace_root().join("testdata").join(tool).join(name)
}

/// The real SmolLM2-135M-Instruct GGUF of the tests that need a real model: `$FTKIT_SMOLLM2`, or
/// where scripts/fetch-smollm2 caches it (`${FTKIT_MODELS:-${XDG_CACHE_HOME:-~/.cache}/ftkit/models}`).
/// Panics with the fix when it is missing: such a test fails, it never passes silently.
pub fn smollm2() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let path = env("FTKIT_SMOLLM2").unwrap_or_else(|| {
        env("FTKIT_MODELS")
            .unwrap_or_else(|| {
                env("XDG_CACHE_HOME")
                    .unwrap_or_else(|| env("HOME").unwrap_or_default().join(".cache"))
                    .join("ftkit/models")
            })
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(
        path.is_file(),
        "{}: missing; run scripts/fetch-smollm2 (or set FTKIT_SMOLLM2)",
        path.display()
    );
    path
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).unwrap()
    }

    /// Every stdout line parsed as JSON.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.stdout_str()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Panics with stderr unless the exit status is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit status; stderr:\n{}", self.stderr);
        self
    }
}

/// A tool invocation being built.
pub struct Run {
    cmd: Command,
    stdin: Vec<u8>,
}

impl Run {
    pub fn new(bin: impl AsRef<std::ffi::OsStr>) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env_remove("RAYON_NUM_THREADS");
        Self {
            cmd,
            stdin: Vec::new(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Starts the tool with piped stdio and a thread feeding it the stdin bytes.
    fn spawn(self) -> (std::process::Child, std::thread::JoinHandle<()>) {
        self.spawn_with_stdout(Stdio::piped())
    }

    /// [`Run::spawn`] with stdout going to `stdout`.
    fn spawn_with_stdout(
        mut self,
        stdout: impl Into<Stdio>,
    ) -> (std::process::Child, std::thread::JoinHandle<()>) {
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = std::mem::take(&mut self.stdin);
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        (child, feeder)
    }

    pub fn run(self) -> Outcome {
        let (child, feeder) = self.spawn();
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs with stdout a pipe whose reader is already gone (as after `| head -1` has exited), so
    /// that the very first write to stdout fails; stdout comes back empty.
    pub fn run_closed_stdout(self) -> Outcome {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        // The parent's copy of the write end goes with the Command, dropped inside.
        let (child, feeder) = self.spawn_with_stdout(writer);
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: Vec::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the tool with `input` on stdin and the pipe left open (the tool waits for more), stdout
    /// and stderr discarded: for tests that signal a tool in the middle of a run.
    pub fn start_waiting(
        mut self,
        input: &[u8],
    ) -> (std::process::Child, std::process::ChildStdin) {
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        stdin.flush().unwrap();
        (child, stdin)
    }

    /// Reads only the first stdout line, then closes the pipe, like `| head -1`.
    pub fn run_head1(self) -> Outcome {
        let (mut child, feeder) = self.spawn();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 {
            first.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        drop(stdout);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        feeder.join().unwrap();
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: first,
            stderr,
        }
    }
}

pub mod golden {
    use super::*;

    /// Asserts that `actual` equals the file at `path`; with `FTKIT_BLESS=1` rewrites the file instead.
    pub fn check(path: &Path, actual: &[u8]) {
        if std::env::var_os("FTKIT_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, actual).unwrap();
            return;
        }
        let expected = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with FTKIT_BLESS=1 to create it)",
                path.display()
            )
        });
        if expected != actual {
            panic!(
                "{} differs from the output (run with FTKIT_BLESS=1 to accept)\n--- expected\n{}\n--- actual\n{}",
                path.display(),
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(actual)
            );
        }
    }
}

pub mod man {
    use super::*;

    /// The page rendered from `cmd` must equal `man/<name>.1`; `FTKIT_BLESS=1` rewrites it.
    pub fn check(cmd: clap::Command) {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).unwrap();
        golden::check(
            &workspace_root().join("man").join(format!("{name}.1")),
            &page,
        );
    }
}

/// Waits until `dir` holds an entry whose name satisfies `wanted` and returns that name; panics if
/// `child` exits first (it would never create it).
pub fn wait_for_entry(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
    child: &mut std::process::Child,
) -> String {
    loop {
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if wanted(&name) {
                return name;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the tool ended ({status}) before creating its file in {}",
                dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The names in folder `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sends `signal` (a `kill` name: TERM, INT, KILL) to a process.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The documented stable id (man/ftkit.7: the first 32 hex digits of SHA-256 over each part followed
/// by 0x1F), computed by coreutils' `sha256sum`: a source independent of `ftkit_core::stable_id`.
pub fn independent_id<S: AsRef<str>>(parts: &[S]) -> String {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p.as_ref().as_bytes());
        bytes.push(0x1f);
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) must be on PATH");
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

/// zstd-compresses bytes (for `.zst` inputs in tests).
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}
