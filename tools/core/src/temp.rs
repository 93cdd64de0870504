//! Temporary files and folders of unfinished outputs, and their cleanup.
//!
//! A temporary is named `.NAME.<pid>.<random>.tmp` beside its destination `NAME`. While it lives its
//! path is registered here: SIGINT, SIGTERM and SIGHUP remove every registered temporary before the
//! process dies of the signal (exit status 130, 143, 129 in a shell). A writer killed outright
//! (`kill -9`, power loss) cannot clean up; the next run writing the same destination removes the
//! temporaries of that exact naming pattern whose writer process is gone, and leaves those of a
//! writer still running.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// The random part tempfile puts between prefix and suffix.
const RANDOM_LEN: usize = 6;

/// The prefix of this process's temporaries for destination file name `name`.
pub(crate) fn prefix(name: &str) -> String {
    format!(".{name}.{}.", std::process::id())
}

pub(crate) const SUFFIX: &str = ".tmp";

/// A registered temporary: unregistered when dropped (committed or removed by its owner).
pub(crate) struct Live(PathBuf);

impl Live {
    /// Creates a temporary with `make` and registers its path (`path_of`). The handler is installed
    /// first and the registry is locked during the creation, so a signal that comes meanwhile waits for
    /// the path to be registered and removes it.
    pub(crate) fn create<T>(
        make: impl FnOnce() -> std::io::Result<T>,
        path_of: impl Fn(&T) -> &Path,
    ) -> std::io::Result<(T, Self)> {
        HANDLER.call_once(install_handler);
        let mut live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let temp = make()?;
        let path = path_of(&temp).to_path_buf();
        live.push(path.clone());
        Ok((temp, Self(path)))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock()
            && let Some(i) = live.iter().rposition(|p| *p == self.0)
        {
            live.swap_remove(i);
        }
    }
}

fn install_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Without a handler the signal still kills the process: only the cleanup is lost.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("ftkit-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Holding the lock to the end keeps other threads from registering new temporaries.
                let live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for path in live.iter() {
                    remove(path);
                }
                // Die of the signal itself, as without a handler, so that shells and callers see it.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes the temporaries of destination `name` in `dir` left by writers that no longer run.
pub(crate) fn remove_stale(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let head = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if let Some(pid) = stale_pid(file, &head)
            && !process_runs(pid)
        {
            remove(&entry.path());
        }
    }
}

/// The writer's pid when `file` is exactly `HEAD<pid>.<random>.tmp`.
fn stale_pid(file: &str, head: &str) -> Option<u32> {
    let rest = file.strip_prefix(head)?.strip_suffix(SUFFIX)?;
    let (pid, random) = rest.split_once('.')?;
    let pid_ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let random_ok = random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !(pid_ok && random_ok) {
        return None;
    }
    pid.parse().ok()
}

/// True unless the process is known to be gone. Without /proc nothing is known, and nothing is
/// removed: deleting a running writer's file would be worse than leaving a stale one.
fn process_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_pattern_is_stale() {
        let head = ".out.jsonl.";
        assert_eq!(stale_pid(".out.jsonl.123.aB3xYz.tmp", head), Some(123));
        // Another destination whose name extends ours, a user's file, wrong random part.
        assert_eq!(stale_pid(".out.jsonl.1.123.aB3xYz.tmp", head), None);
        assert_eq!(stale_pid(".out.jsonl.keep.tmp", head), None);
        assert_eq!(stale_pid(".out.jsonl.123.abc.tmp", head), None);
        assert_eq!(stale_pid(".out.jsonl.x1.aB3xYz.tmp", head), None);
        assert_eq!(stale_pid("out.jsonl.123.aB3xYz.tmp", head), None);
    }

    #[test]
    fn a_dead_writers_temporary_goes_and_a_live_ones_stays() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        // A child that has exited and been reaped: its pid names no process (until reused).
        let mut child = std::process::Command::new("true").spawn()?;
        let dead = child.id();
        child.wait()?;
        let stale = dir.path().join(format!(".o.jsonl.{dead}.abcdef.tmp"));
        let mine = dir
            .path()
            .join(format!(".o.jsonl.{}.abcdef.tmp", std::process::id()));
        let other = dir.path().join(format!(".p.jsonl.{dead}.abcdef.tmp"));
        for p in [&stale, &mine, &other] {
            std::fs::write(p, "x")?;
        }
        remove_stale(dir.path(), "o.jsonl");
        assert!(!stale.exists() || process_runs(dead));
        assert!(mine.exists(), "a running writer's temporary was removed");
        assert!(
            other.exists(),
            "another destination's temporary was removed"
        );
        Ok(())
    }
}
