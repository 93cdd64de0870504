//! ft-catalog-to-manifest: a dataset catalog → one manifest per dataset, and the folder layout.
//!
//! The whole catalog is read and checked before anything is written: a bad entry (duplicate slug,
//! unknown source kind, a slug or file name that would leave the root, a non-https URL, a
//! credential) stops the run with its `path:line` and nothing on stdout or under `--root`.

pub mod catalog;
pub mod checks;
pub mod entry;
pub mod manifest;
pub mod root;

use anyhow::{Context, Result};
use clap::Parser;
use entry::Dataset;
use ftkit_core::io::{Output, read_all};
use ftkit_core::paths::Paths;
use manifest::{Manifest, Route};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

const LONG_ABOUT: &str = "\
Reads a catalog of datasets and writes one manifest per dataset as JSONL: its slug, name, track, \
source, ingest strategy, raw and processed folders, the command that pulls it, preprocessing hints, \
license and gated flags. Nothing is downloaded.

A catalog is a JSON object with a \"datasets\" array, a bare JSON array, or JSONL, one entry per \
dataset; several catalogs are read in order as one. An entry needs a name and a source: hf (repo \
id, repo type, revision, allow/ignore patterns), git (url and commit or tag), http (urls, each with \
an optional sha256) or manual (instructions). hf_id, repo, url and urls are accepted in place of a \
source object. Fields the tool does not know are kept under \"extra\". ftkit(7) has the schema.

The slug is given or derived from the name ([a-z0-9._-], lowercase, other runs become -). A \
duplicate slug, an unknown source kind, a slug or file name that would leave the root, a URL that \
is not https (unless --allow-http), a URL with user info or a credential in its query, or a field \
named like a credential (token, password, ...) is an error naming the entry: nothing is written.

With --root DIR, also creates DIR/raw/SLUG/, DIR/processed/SLUG/, DIR/manifests/SLUG.json and \
DIR/route.json (datasets grouped by track, with counts). A file whose content is already right is \
not rewritten: a second run with the same catalog changes no byte and no modification time. Files \
of datasets no longer in the catalog are left alone.";

const EXAMPLE: &str = "\
Examples:
  ft-catalog-to-manifest catalog.json > manifests.jsonl
  ft-catalog-to-manifest --root training_data catalog.json
  cd training_data && jq -r 'select(.pull_command) | .pull_command' manifests/*.json | sh";

#[derive(Parser, Debug)]
#[command(name = "ft-catalog-to-manifest", version,
    about = "Turn a dataset catalog into one manifest per dataset, and optionally the folder layout",
    long_about = LONG_ABOUT, after_long_help = EXAMPLE)]
pub struct Args {
    /// Catalogs (JSON or JSONL); none or `-` reads stdin. zstd input is detected automatically.
    #[arg(value_name = "CATALOG")]
    pub files: Vec<String>,

    /// Write the manifests here instead of stdout (written atomically; `.zst` compresses).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also create raw/SLUG/, processed/SLUG/, manifests/SLUG.json and route.json under DIR.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Accept http:// URLs (downloads then cannot be trusted without a sha256).
    #[arg(long)]
    pub allow_http: bool,

    /// No summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let inputs = if args.files.is_empty() {
        vec!["-".to_string()]
    } else {
        args.files.clone()
    };
    // No output may be an input: checked before anything is read, and again with --root's files.
    let mut paths = inputs.iter().fold(Paths::new(), |p, f| p.input("input", f));
    if let Some(o) = &args.output {
        paths = paths.output("-o", o);
    }
    paths.check()?;
    let mut datasets: Vec<Dataset> = Vec::new();
    for input in &inputs {
        let bytes = read_all(input)?;
        let name = if input == "-" {
            "<stdin>"
        } else {
            input.as_str()
        };
        for entry in catalog::parse(name, &bytes)? {
            let index = datasets.len() + 1;
            datasets.push(entry::parse(entry, index, args.allow_http)?);
        }
    }
    check_unique(&datasets)?;

    let mut lines = Vec::new();
    let mut layout = root::Layout {
        dirs: Vec::new(),
        files: Vec::new(),
    };
    for d in &datasets {
        let m = Manifest::new(d);
        serde_json::to_writer(&mut lines, &m)?;
        lines.push(b'\n');
        if let Some(root) = &args.root {
            layout.dirs.push(root.join(&m.raw_root));
            layout.dirs.push(root.join(&m.processed_root));
            let mut pretty = serde_json::to_vec_pretty(&m)?;
            pretty.push(b'\n');
            layout.files.push((root.join(&m.manifest), pretty));
        }
    }
    if let Some(root) = &args.root {
        let mut route = serde_json::to_vec_pretty(&Route::new(&datasets))?;
        route.push(b'\n');
        layout.files.push((root.join("route.json"), route));
        layout
            .files
            .iter()
            .fold(paths, |p, (file, _)| p.output("--root", file))
            .check()?;
        layout.check(root)?;
        layout.write()?;
    }

    let mut out = Output::create(args.output.as_deref())?;
    out.write_all(&lines)?;
    out.finish()?;
    if !args.quiet {
        let mut tracks: Vec<&str> = datasets.iter().map(|d| d.track.as_str()).collect();
        tracks.sort_unstable();
        tracks.dedup();
        ftkit_core::cli::warn(format_args!(
            "{} datasets in {} tracks",
            datasets.len(),
            tracks.len()
        ));
    }
    Ok(())
}

/// Two entries with one slug would share their folders: an error naming both.
fn check_unique(datasets: &[Dataset]) -> Result<()> {
    let mut seen: HashMap<&str, &Dataset> = HashMap::new();
    for d in datasets {
        if let Some(first) = seen.insert(&d.slug, d) {
            let label = entry::label(&d.loc, d.index, Some(&d.name));
            return Err(anyhow::anyhow!(
                "slug {:?} is already used by entry {} ({:?}) at {}",
                d.slug,
                first.index,
                first.name,
                first.loc
            ))
            .context(label);
        }
    }
    Ok(())
}
