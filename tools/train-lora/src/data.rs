//! Training records: alpaca, messages or sharegpt JSONL, detected per record, turned into chat messages
//! (the conversion lives in `ftkit_core::chat`, shared with ft-generate).
//!
//! - alpaca: `{"instruction", "input"?, "output", "system"?}` → system?, user (`instruction` and, when not
//!   empty, a blank line and `input`), assistant (`output`).
//! - messages: `{"messages": [{"role", "content"}, ...]}` (OpenAI style).
//! - sharegpt: `{"conversations": [{"from", "value"}, ...]}`; `human`/`user` → user, `gpt`/`assistant`/
//!   `chatgpt`/`model` → assistant, `system` → system.

use anyhow::{Context, Result, bail};
use ftkit_core::jsonl::LineReader;
use ftkit_core::{OnError, io};
use std::io::Write;
use std::path::Path;

pub use ftkit_core::chat::{Format, Message, parse_record};

/// A loaded JSONL file.
#[derive(Debug)]
pub struct Dataset {
    pub path: String,
    pub examples: Vec<Vec<Message>>,
    /// sha256 of the file's bytes as read (after zstd decompression).
    pub sha256: String,
    /// Lines skipped with `--on-error skip`.
    pub rejected: u64,
}

/// Reads `path` (`.zst` transparently). A bad line fails with `path:line: reason`, or with
/// [`OnError::Skip`] is reported, appended to `rejects` and skipped.
pub fn load(path: &str, on_error: OnError, mut rejects: Option<&mut dyn Write>) -> Result<Dataset> {
    let bytes = io::read_all(path)?;
    let sha256 = ftkit_core::id::sha256_hex(&bytes);
    let name = if path == "-" { "<stdin>" } else { path };
    let mut reader = LineReader::new(&bytes[..]);
    let mut buf = Vec::new();
    let mut examples = Vec::new();
    let mut rejected = 0;
    while let Some(line) = reader
        .next_line(&mut buf)
        .with_context(|| format!("{name}: cannot read"))?
    {
        match parse_record(&buf) {
            Ok((_, messages)) => examples.push(messages),
            Err(e) => {
                let e = e.context(format!("{name}:{line}"));
                if on_error == OnError::Fail {
                    return Err(e);
                }
                ftkit_core::cli::warn(format!("{e:#}"));
                rejected += 1;
                if let Some(w) = rejects.as_deref_mut() {
                    w.write_all(&buf)?;
                    w.write_all(b"\n")?;
                }
            }
        }
    }
    if examples.is_empty() {
        bail!("{name}: no usable examples");
    }
    Ok(Dataset {
        path: path.to_string(),
        examples,
        sha256,
        rejected,
    })
}

/// Convenience for tests and tools: the file name for messages.
pub fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(line: &str) -> Result<Vec<Message>> {
        parse_record(line.as_bytes()).map(|(_, m)| m)
    }

    #[test]
    fn alpaca_with_input_and_system() -> Result<()> {
        let (f, m) = parse_record(
            br#"{"instruction":"Add","input":"1 2","output":"3","system":"Be brief"}"#,
        )?;
        assert_eq!(f, Format::Alpaca);
        assert_eq!(
            m,
            vec![
                Message::new("system", "Be brief"),
                Message::new("user", "Add\n\n1 2"),
                Message::new("assistant", "3")
            ]
        );
        let m = msgs(r#"{"instruction":"Hi","input":"","output":"Hello","qa_id":"x"}"#)?;
        assert_eq!(
            m,
            vec![
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello")
            ]
        );
        Ok(())
    }

    #[test]
    fn messages_and_sharegpt() -> Result<()> {
        let (f, m) = parse_record(
            br#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        )?;
        assert_eq!(f, Format::Messages);
        assert_eq!(
            m,
            vec![Message::new("user", "a"), Message::new("assistant", "b")]
        );
        let (f, m2) = parse_record(
            br#"{"conversations":[{"from":"human","value":"a"},{"from":"gpt","value":"b"}]}"#,
        )?;
        assert_eq!(f, Format::ShareGpt);
        assert_eq!(m, m2);
        Ok(())
    }

    #[test]
    fn bad_records_say_why() {
        let cases = [
            (r#"{"text":"x"}"#, "unrecognised record"),
            (r#"{"instruction":"x"}"#, "missing field \"output\""),
            (
                r#"{"instruction":3,"output":"y"}"#,
                "\"instruction\" must be a string",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}]}"#,
                "no assistant turn",
            ),
            (
                r#"{"conversations":[{"from":"alien","value":"a"}]}"#,
                "alien",
            ),
            ("not json", ""),
        ];
        for (line, want) in cases {
            let e = msgs(line).expect_err(line);
            assert!(format!("{e:#}").contains(want), "{line}: {e:#}");
        }
    }

    #[test]
    fn load_names_path_and_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{\"bad\":1}\n",
        )?;
        let e = load(&display(&p), OnError::Fail, None).expect_err("bad line");
        assert!(
            format!("{e:#}").starts_with(&format!("{}:3: unrecognised", p.display())),
            "{e:#}"
        );
        let mut rejects = Vec::new();
        let d = load(&display(&p), OnError::Skip, Some(&mut rejects))?;
        assert_eq!((d.examples.len(), d.rejected), (1, 1));
        assert_eq!(rejects, b"{\"bad\":1}\n");
        Ok(())
    }
}
