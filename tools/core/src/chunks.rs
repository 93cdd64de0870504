//! Chunk records (`id`, `text`, as ft-chunk writes them) held in memory by the tools that look a
//! chunk up by id (ft-score's context, ft-to-alpaca's documents).

use crate::io::open_input;
use crate::jsonl::{LineReader, Loc, RawRecord};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;

/// Reads the chunks of `path` (`-` is stdin, zstd is read transparently) into a map from id to text.
/// Errors name the flag, the file and the line: `--chunks chunks.jsonl:7: missing field "text"`. An
/// id given twice with different texts is an error (which one a record meant is unknown); the same
/// chunk twice is fine.
pub fn load_chunks(path: &str) -> Result<HashMap<String, String>> {
    let input = open_input(path)?;
    let mut reader = LineReader::new(input.reader);
    let mut map: HashMap<String, String> = HashMap::new();
    let mut buf = Vec::new();
    while let Some(line) = reader
        .next_line(&mut buf)
        .with_context(|| format!("--chunks {}: cannot read", input.name))?
    {
        let loc = Loc {
            path: &input.name,
            line,
        };
        let mut parsed = || -> Result<()> {
            let text = std::str::from_utf8(&buf)
                .map_err(|e| anyhow!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
            let rec = RawRecord::parse(text)?;
            let id = rec.require_str("id")?.into_owned();
            let text = rec.require_str("text")?.into_owned();
            match map.get(&id) {
                Some(seen) if *seen != text => {
                    bail!("chunk id {id:?} appears twice with different texts")
                }
                Some(_) => {}
                None => {
                    map.insert(id, text);
                }
            }
            Ok(())
        };
        parsed().with_context(|| format!("--chunks {loc}"))?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_names_bad_lines() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.jsonl");
        let path_s = path.display().to_string();
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"text\":\"A.\"}\n\n{\"id\":\"a\",\"text\":\"A.\"}\n",
        )?;
        let map = load_chunks(&path_s)?;
        assert_eq!(map.len(), 1);
        assert_eq!(map["a"], "A.");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"text\":\"A.\"}\n{\"id\":\"a\",\"text\":\"B.\"}\n",
        )?;
        let err = format!("{:#}", load_chunks(&path_s).unwrap_err());
        assert_eq!(
            err,
            format!("--chunks {path_s}:2: chunk id \"a\" appears twice with different texts")
        );
        Ok(())
    }
}
