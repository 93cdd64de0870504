//! The streaming core every ftkit tool is built on.
//!
//! - [`io`]: inputs (`FILE`, `-`, zstd sniffed by magic bytes) and atomic outputs.
//! - [`jsonl`]: a line reader that knows `path:line`, order-preserving raw records, JSON writing helpers.
//! - [`engine`]: the per-line driver (ordered parallel map, `--on-error`, `--rejects`, progress).
//! - [`cli`]: `run_main`, exit codes, the options every tool shares.
//! - [`id`]: stable content ids.
//! - [`template`]: the `{field}` template syntax every tool shares.
//! - [`paths`]: the check that no output is an input or another output.
//! - [`chat`]: alpaca / messages / sharegpt / prompt records as chat messages (training and generation).
//! - [`chunks`], [`rejects`], [`secret`]: the chunk loader, the shared `--rejects` file, secrets and URL
//!   redaction; [`size`]: byte sizes on the command line.
//! - [`hub`], [`source`]: Hugging Face hub settings (and, with the `hub` feature, the hf-hub client);
//!   a dataset's source as manifests carry it.
//!
//! Temporaries of atomic outputs are removed on SIGINT/SIGTERM/SIGHUP and after a killed run (`temp`).

pub mod chat;
pub mod chunks;
pub mod cli;
pub mod engine;
pub mod hub;
pub mod id;
pub mod io;
pub mod jsonl;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod paths;
pub mod progress;
pub mod rejects;
pub mod secret;
pub mod size;
pub mod source;
mod temp;
pub mod template;

pub use cli::{CommonArgs, OnError, RunArgs, Usage, run_main};
pub use engine::{Engine, Summary};
pub use id::stable_id;
pub use jsonl::{Loc, ObjectWriter, RawRecord};
pub use paths::Paths;
