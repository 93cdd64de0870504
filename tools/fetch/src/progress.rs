//! Download bars (bytes, rate, ETA) on stderr, only when it is a terminal and --quiet is not given.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::OnceLock;

/// One set of bars for the whole run, so that --jobs N downloads draw one bar each, not over each other.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

pub fn bar(enabled: bool, path: &Path, total: Option<u64>) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bars =
        BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
    let bar = bars.add(ProgressBar::with_draw_target(
        total,
        ProgressDrawTarget::hidden(),
    ));
    let template = if total.is_some() {
        "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bar.set_message(format!(
        "ft-fetch: {}",
        name.trim_start_matches('.').trim_end_matches(".part")
    ));
    bar
}
