//! Training records: alpaca, messages or sharegpt JSONL, detected per record, turned into chat messages.
//!
//! - alpaca: `{"instruction", "input"?, "output", "system"?}` → system?, user (`instruction` and, when not
//!   empty, a blank line and `input`), assistant (`output`).
//! - messages: `{"messages": [{"role", "content"}, ...]}` (OpenAI style).
//! - sharegpt: `{"conversations": [{"from", "value"}, ...]}`; `human`/`user` → user, `gpt`/`assistant`/
//!   `chatgpt`/`model` → assistant, `system` → system.

use anyhow::{Context, Result, bail};
use ftkit_core::jsonl::{LineReader, RawRecord};
use ftkit_core::{OnError, io};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The layout a record was recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Alpaca,
    Messages,
    ShareGpt,
}

/// Parses one JSONL record into messages; the error says what is wrong (the caller adds `path:line`).
pub fn parse_record(line: &[u8]) -> Result<(Format, Vec<Message>)> {
    let text = std::str::from_utf8(line).context("not UTF-8")?;
    let rec = RawRecord::parse(text)?;
    let (format, messages) = if let Some(raw) = rec.get("messages") {
        #[derive(Deserialize)]
        struct Turn {
            role: String,
            content: String,
        }
        let turns: Vec<Turn> = serde_json::from_str(raw.get())
            .context("field \"messages\" must be a list of {\"role\", \"content\"} strings")?;
        let messages = turns
            .into_iter()
            .map(|t| Message {
                role: t.role,
                content: t.content,
            })
            .collect();
        (Format::Messages, messages)
    } else if let Some(raw) = rec.get("conversations") {
        #[derive(Deserialize)]
        struct Turn {
            from: String,
            value: String,
        }
        let turns: Vec<Turn> = serde_json::from_str(raw.get())
            .context("field \"conversations\" must be a list of {\"from\", \"value\"} strings")?;
        let mut messages = Vec::with_capacity(turns.len());
        for t in turns {
            let role = match t.from.as_str() {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" | "model" | "bot" => "assistant",
                "system" => "system",
                other => bail!("conversation turn from {other:?}: expected human, gpt or system"),
            };
            messages.push(Message {
                role: role.to_string(),
                content: t.value,
            });
        }
        (Format::ShareGpt, messages)
    } else if rec.get("instruction").is_some() || rec.get("output").is_some() {
        let instruction = opt_str(&rec, "instruction")?.unwrap_or_default();
        let input = opt_str(&rec, "input")?.unwrap_or_default();
        let Some(output) = opt_str(&rec, "output")? else {
            bail!("missing field \"output\"")
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = opt_str(&rec, "system")?.filter(|s| !s.is_empty()) {
            messages.push(Message {
                role: "system".into(),
                content: system,
            });
        }
        let user = if input.is_empty() {
            instruction
        } else {
            format!("{instruction}\n\n{input}")
        };
        if user.is_empty() {
            bail!("empty \"instruction\" and \"input\"");
        }
        messages.push(Message {
            role: "user".into(),
            content: user,
        });
        messages.push(Message {
            role: "assistant".into(),
            content: output,
        });
        (Format::Alpaca, messages)
    } else {
        bail!(
            "unrecognised record: expected alpaca (\"instruction\", \"output\"), \"messages\" or \"conversations\""
        );
    };
    if !messages.iter().any(|m| m.role == "assistant") {
        bail!("no assistant turn to learn from");
    }
    Ok((format, messages))
}

fn opt_str(rec: &RawRecord<'_>, key: &str) -> Result<Option<String>> {
    match rec.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .with_context(|| format!("field \"{key}\" must be a string")),
    }
}

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
