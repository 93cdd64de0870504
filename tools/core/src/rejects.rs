//! The `--rejects` file, shared by the engine (which copies unreadable lines into it) and a tool that
//! rejects records of its own (ft-filter's dropped records): both kinds land in one file, in input
//! order, and nothing a run rejects ends up nowhere.

use crate::io::AtomicFile;
use anyhow::{Result, anyhow};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle on the rejects file; clones write to the same file.
#[derive(Clone)]
pub struct Rejects(Arc<Mutex<AtomicFile>>);

impl Rejects {
    pub fn new(file: AtomicFile) -> Self {
        Self(Arc::new(Mutex::new(file)))
    }

    fn file(&self) -> MutexGuard<'_, AtomicFile> {
        // A writer that panicked leaves at worst a partial line; the run fails anyway.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `line` and a newline.
    pub fn write_line(&self, line: &[u8]) -> Result<()> {
        let mut file = self.file();
        file.write_all(line)?;
        file.write_all(b"\n")?;
        Ok(())
    }

    /// Appends bytes that already end with a newline.
    pub fn write_all(&self, bytes: &[u8]) -> Result<()> {
        self.file().write_all(bytes)?;
        Ok(())
    }

    /// Moves the file into place; every other handle must have been dropped.
    pub fn commit(self) -> Result<()> {
        let file = Arc::try_unwrap(self.0)
            .map_err(|_| anyhow!("--rejects: still in use when the run ended"))?
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        file.commit()
    }
}
