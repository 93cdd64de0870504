//! ft-fetch: the datasets of manifests (ft-catalog-to-manifest's records) into `ROOT/raw/SLUG`, each
//! file's sha256 in `ROOT/fetch.lock`, `ROOT/processed/SLUG/stats.json`, one status record per dataset
//! on stdout. One failing dataset does not stop the others; the run exits 1 at the end if any failed.

pub mod archive;
pub mod dataset;
pub mod git;
pub mod hf;
pub mod http;
pub mod lock;
pub mod manifest;
mod progress;
pub mod stats;

use anyhow::{Context, Result};
use clap::Parser;
use ftkit_core::io::Output;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

const LONG_ABOUT: &str = "\
Reads manifests (JSONL, as ft-catalog-to-manifest writes them) and fetches each dataset into \
ROOT/raw/SLUG: hf sources through the hub API (revision pinned, allow/ignore patterns; HF_TOKEN, \
HF_HOME, HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE honoured), git sources through the git \
binary (shallow fetch of the pinned commit or tag), http sources with ureq (a partial download is \
kept as .NAME.part and resumed with a Range request, If-Range the ETag it began from, so a file that \
changed on the server meanwhile is fetched whole; retries with backoff on 429, 5xx, timeouts and \
dropped connections, Retry-After honoured). A manual source gives a status record with its \
instructions; a gated hf repository that refuses access gives one too. Nothing is ever made up.

Every file's sha256 is recorded in ROOT/fetch.lock (JSONL {slug, path, bytes, sha256}, sorted) and \
checked on later runs: a file that matches is not fetched again (status cached). A download whose \
sha256 differs from the manifest's or the lock's is an error, and the previous copy is kept. \
Downloads are renamed into place only when complete, so a killed run followed by a rerun ends with \
the right bytes and fetches only what is missing.

For each dataset, ROOT/processed/SLUG/stats.json holds {files, bytes, records, records_by_file} \
(records counted for .jsonl, .json, .csv/.tsv and .parquet files, Parquet rows from the footer; others are not counted) and \
stdout gets {slug, kind, status: fetched|cached|manual|failed, files: [{path, bytes, sha256}], stats}, \
with error or instructions when there are.

An http file named .zip, .tar, .tar.gz (.tgz) or .tar.zst is also extracted into the folder of its \
name without the extension (raw/SLUG/data/ for data.tar.gz), whose files join the lock: an entry \
that would leave that folder (absolute path, ..), a symbolic or hard link, a special file, more than \
--max-entries entries or more than --max-extract-bytes bytes fails the dataset, and the folder is \
replaced only by a complete extraction.";

const EXAMPLE: &str = "\
Examples:
  ft-catalog-to-manifest catalog.json | ft-fetch --root training_data
  ft-fetch --root training_data --only kyudan-mathbridge manifests.jsonl
  ft-fetch --root training_data --verify manifests.jsonl";

#[derive(Parser, Debug)]
#[command(name = "ft-fetch", version,
    about = "Fetch the datasets of manifests (hf, git, http, manual), checksums in fetch.lock",
    long_about = LONG_ABOUT, after_long_help = EXAMPLE)]
pub struct Args {
    /// Manifests (JSONL); none or `-` reads stdin. zstd input is detected automatically.
    #[arg(value_name = "MANIFEST")]
    pub files: Vec<String>,

    /// The folder that holds raw/, processed/ and fetch.lock.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,

    /// Fetch only these slugs (comma-separated; default from FTKIT_FETCH_ONLY).
    #[arg(long, value_name = "SLUGS", value_delimiter = ',')]
    pub only: Vec<String>,

    /// Leave these slugs out (comma-separated; default from FTKIT_FETCH_SKIP).
    #[arg(long, value_name = "SLUGS", value_delimiter = ',')]
    pub skip: Vec<String>,

    /// Use what is already there; a missing or changed file is an error. No network.
    #[arg(long)]
    pub offline: bool,

    /// Re-hash every file of the selected datasets against fetch.lock; fetch nothing.
    #[arg(long, conflicts_with = "offline")]
    pub verify: bool,

    /// Datasets fetched in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    pub jobs: usize,

    /// Retries of a download after a 429, a 5xx, a timeout or a dropped connection.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,

    /// Seconds without data before a connection counts as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,

    /// Most bytes written when extracting one archive (an archive bomb fails the dataset).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 30)]
    pub max_extract_bytes: u64,

    /// Most entries extracted from one archive.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub max_entries: u64,

    /// Write the status records here instead of stdout (written atomically; `.zst` compresses).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// No progress bars or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `flag`'s values, or the environment variable's (comma-separated) when the flag is not given.
fn list_or_env(flag: &[String], var: &str) -> Vec<String> {
    let list: Vec<String> = if flag.is_empty() {
        std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect()
    } else {
        flag.to_vec()
    };
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    if args.jobs == 0 {
        ftkit_core::usage!("--jobs must be at least 1");
    }
    let inputs = if args.files.is_empty() {
        vec!["-".to_string()]
    } else {
        args.files.clone()
    };
    let mut paths = ftkit_core::Paths::new();
    for f in &inputs {
        paths = paths.input("MANIFEST", f);
    }
    if let Some(o) = &args.output {
        paths = paths.output("--output", o);
    }
    paths = paths.output("fetch.lock", args.root.join("fetch.lock"));
    paths.check()?;

    let mut manifests = Vec::new();
    for path in &inputs {
        read_manifests(path, &mut manifests)?;
    }
    let only = list_or_env(&args.only, "FTKIT_FETCH_ONLY");
    let skip = list_or_env(&args.skip, "FTKIT_FETCH_SKIP");
    let known: HashSet<&str> = manifests.iter().map(|m| m.1.slug.as_str()).collect();
    for s in only.iter().chain(&skip) {
        if !known.contains(s.as_str()) {
            ftkit_core::usage!("no manifest has the slug {s:?} (given in --only or --skip)");
        }
    }
    let selected: Vec<_> = manifests
        .into_iter()
        .filter(|(_, m)| only.is_empty() || only.contains(&m.slug))
        .filter(|(_, m)| !skip.contains(&m.slug))
        .collect();

    let hub = ftkit_core::hub::HubOptions::from_env(args.offline);
    let ctx = dataset::Ctx {
        lock: std::sync::Mutex::new(lock::Lock::load(&args.root.join("fetch.lock"))?),
        root: args.root.clone(),
        client: http::Client::new(
            Duration::from_secs(args.timeout.max(1)),
            args.retries,
            Duration::from_secs(1),
            !args.quiet,
        ),
        offline: args.offline,
        verify: args.verify,
        hub,
        limits: archive::Limits {
            max_bytes: args.max_extract_bytes,
            max_entries: args.max_entries,
        },
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs)
        .build()
        .context("cannot start the worker threads")?;
    let statuses: Vec<dataset::Status> = pool.install(|| {
        use rayon::prelude::*;
        selected
            .par_iter()
            .map(|(loc, m)| dataset::fetch(&ctx, loc, m))
            .collect()
    });

    let mut out = Output::create(args.output.as_deref())?;
    let mut failed = 0;
    let mut counts = std::collections::BTreeMap::new();
    for s in &statuses {
        serde_json::to_writer(&mut out, s)?;
        out.write_all(b"\n")?;
        *counts.entry(s.status).or_insert(0) += 1;
        if s.status == "failed" {
            failed += 1;
        }
    }
    out.finish()?;
    if !args.quiet {
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        ftkit_core::cli::warn(format!(
            "{} datasets: {}",
            statuses.len(),
            summary.join(", ")
        ));
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} datasets failed", statuses.len());
    }
    Ok(())
}

/// Reads the manifests of `path` (JSONL, blank lines skipped) with their `path:line`.
fn read_manifests(path: &str, out: &mut Vec<(String, manifest::Manifest)>) -> Result<()> {
    let mut input = ftkit_core::io::open_input(path)?;
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let got = input
            .reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{}: cannot read", input.name))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let loc = format!("{}:{n}", input.name);
        let m: manifest::Manifest =
            serde_json::from_slice(&line).with_context(|| format!("{loc}: not a manifest"))?;
        if out.iter().any(|(_, o)| o.slug == m.slug) {
            anyhow::bail!("{loc}: slug {:?} appears twice", m.slug);
        }
        out.push((loc, m));
    }
}
