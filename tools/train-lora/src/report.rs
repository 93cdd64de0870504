//! `training_report.json`, the metrics lines on stdout, and peak memory.

use crate::train::{EvalLog, Sink, StepLog};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Peak resident memory of this process in bytes (`VmHWM` in /proc/self/status), when the OS tells it.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// One input file as the report describes it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataReport {
    pub path: String,
    pub sha256: String,
    /// Records read.
    pub examples: usize,
    /// Records skipped as malformed (`--on-error skip`).
    pub rejected: u64,
    /// Examples cut to --max-seq-len.
    pub truncated: usize,
    /// Examples left out because no loss target remained (e.g. the answer was cut off).
    pub dropped: usize,
    /// Rows after packing (= examples kept without --pack).
    pub rows: usize,
    pub tokens: u64,
    pub targets: u64,
}

/// Loss and perplexity over one split.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Split {
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
}

impl Split {
    pub fn of(loss: Option<f64>) -> Self {
        Self {
            loss,
            perplexity: loss.map(f64::exp),
        }
    }
}

/// `training_report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub model: String,
    pub architecture: String,
    pub device: String,
    pub dtype: String,
    /// The frozen base matrices: `--quantize`, bytes, f32 bytes, formats.
    pub base_weights: crate::lm::BaseWeights,
    pub seed: u64,
    pub config_digest: String,
    pub config: serde_json::Value,
    pub data: std::collections::BTreeMap<String, DataReport>,
    pub trainable_parameters: u64,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: f64,
    pub stopped_early: bool,
    /// Step and validation loss of the best evaluation (the adapter kept under early stopping).
    pub best_step: Option<u64>,
    pub best_val_loss: Option<f64>,
    pub resumed_from: Option<String>,
    /// Mean training loss per target token over all updates of the run.
    pub train: Split,
    pub val: Split,
    pub test: Split,
    pub tokens_seen: u64,
    pub targets_seen: u64,
    /// Seconds spent training (all processes of a resumed run).
    pub wall_time_s: f64,
    /// Non-padding tokens per second of training in this process.
    pub tokens_per_s: f64,
    pub peak_memory_bytes: Option<u64>,
    /// CPU threads of the run (`--threads`, RAYON_NUM_THREADS, or all cores).
    pub threads: usize,
}

/// Metrics as JSON lines on stdout (flushed per line so `| jq` streams), notes on stderr.
///
/// A reader that goes away (`| head -1`, a `jq` that dies) does not stop the run: the metrics stop,
/// training goes on and writes its adapter, with one note on stderr. Hours of training are worth
/// more than the metrics lines nobody reads.
pub struct StdoutSink<W: Write> {
    pub out: W,
    pub quiet: bool,
    /// The reader of the metrics closed its end.
    pub closed: bool,
    buf: Vec<u8>,
}

impl<W: Write> StdoutSink<W> {
    pub fn new(out: W, quiet: bool) -> Self {
        Self {
            out,
            quiet,
            closed: false,
            buf: Vec::new(),
        }
    }

    fn line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.buf.clear();
        ftkit_core::jsonl::write_line(&mut self.buf, value)?;
        match self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
        {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                // Said even with -q: the run no longer does what was asked.
                ftkit_core::cli::warn(
                    "the metrics reader closed its pipe: training goes on without metrics lines",
                );
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

impl StdoutSink<ftkit_core::io::Output> {
    /// Flushes the metrics (moves a `-o` file into place) unless their reader has gone.
    pub fn finish(self) -> Result<()> {
        match self.closed {
            true => Ok(()),
            false => self.out.finish(),
        }
    }
}

impl<W: Write> Sink for StdoutSink<W> {
    fn step(&mut self, log: &StepLog) -> Result<()> {
        self.line(log)
    }
    fn eval(&mut self, log: &EvalLog) -> Result<()> {
        self.line(log)
    }
    fn note(&mut self, message: &str) {
        if !self.quiet {
            ftkit_core::cli::warn(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let m = peak_memory_bytes().unwrap_or(0);
            assert!(m > 1 << 20, "{m}");
        }
    }
}
