//! Chat records: alpaca, messages or sharegpt JSONL, detected per record, turned into chat messages.
//! Shared by ft-train-lora (whole conversations to learn from) and ft-generate (the prompt part).
//!
//! - alpaca: `{"instruction", "input"?, "output", "system"?}` → system?, user (`instruction` and, when not
//!   empty, a blank line and `input`), assistant (`output`).
//! - messages: `{"messages": [{"role", "content"}, ...]}` (OpenAI style).
//! - sharegpt: `{"conversations": [{"from", "value"}, ...]}`; `human`/`user` → user, `gpt`/`assistant`/
//!   `chatgpt`/`model` → assistant, `system` → system.
//! - prompt (generation only): `{"prompt": "..."}` → one user turn.

use crate::jsonl::RawRecord;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

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
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// The layout a record was recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Alpaca,
    Messages,
    ShareGpt,
    /// `{"prompt": text}` (generation input only).
    Prompt,
}

impl Format {
    /// The name records and messages use (`alpaca`, `messages`, `sharegpt`, `prompt`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::Messages => "messages",
            Format::ShareGpt => "sharegpt",
            Format::Prompt => "prompt",
        }
    }
}

/// Parses one JSONL training record into messages; the error says what is wrong (the caller adds
/// `path:line`). The conversation must hold an assistant turn to learn from.
pub fn parse_record(line: &[u8]) -> Result<(Format, Vec<Message>)> {
    let text = std::str::from_utf8(line).context("not UTF-8")?;
    let rec = RawRecord::parse(text)?;
    let (format, messages) = conversation(&rec, true)?;
    if !messages.iter().any(|m| m.role == "assistant") {
        bail!("no assistant turn to learn from");
    }
    Ok((format, messages))
}

/// The prompt of a record for generation: `prompt` (text) as one user turn, or the conversation of a
/// messages / sharegpt / alpaca record without its answer (the last turn when it is the assistant's;
/// alpaca's `output`, which may be absent). The prompt must end with a user turn.
pub fn prompt_messages(rec: &RawRecord<'_>) -> Result<(Format, Vec<Message>)> {
    let (format, mut messages) = if rec.get("prompt").is_some() {
        let Some(prompt) = opt_str(rec, "prompt")? else {
            bail!("field \"prompt\" is null")
        };
        (Format::Prompt, vec![Message::user(prompt)])
    } else {
        conversation(rec, false)?
    };
    if messages.last().is_some_and(|m| m.role == "assistant") {
        messages.pop();
    }
    match messages.last() {
        Some(m) if m.role == "user" => Ok((format, messages)),
        Some(m) => bail!("the prompt ends with a {:?} turn, not a user turn", m.role),
        None => bail!("empty conversation"),
    }
}

/// The whole conversation of a messages / sharegpt / alpaca record; alpaca's `output` is required
/// only when `need_output`.
fn conversation(rec: &RawRecord<'_>, need_output: bool) -> Result<(Format, Vec<Message>)> {
    if let Some(raw) = rec.get("messages") {
        let turns: Vec<Message> = serde_json::from_str(raw.get())
            .context("field \"messages\" must be a list of {\"role\", \"content\"} strings")?;
        Ok((Format::Messages, turns))
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
        Ok((Format::ShareGpt, messages))
    } else if rec.get("instruction").is_some() || rec.get("output").is_some() {
        let instruction = opt_str(rec, "instruction")?.unwrap_or_default();
        let input = opt_str(rec, "input")?.unwrap_or_default();
        let output = opt_str(rec, "output")?;
        if need_output && output.is_none() {
            bail!("missing field \"output\"")
        }
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = opt_str(rec, "system")?.filter(|s| !s.is_empty()) {
            messages.push(Message::system(system));
        }
        let user = if input.is_empty() {
            instruction
        } else {
            format!("{instruction}\n\n{input}")
        };
        if user.is_empty() {
            bail!("empty \"instruction\" and \"input\"");
        }
        messages.push(Message::user(user));
        if let Some(output) = output {
            messages.push(Message::new("assistant", &output));
        }
        Ok((Format::Alpaca, messages))
    } else if need_output {
        bail!(
            "unrecognised record: expected alpaca (\"instruction\", \"output\"), \"messages\" or \"conversations\""
        )
    } else {
        bail!(
            "unrecognised record: expected \"prompt\", \"messages\", \"conversations\" or alpaca (\"instruction\")"
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(line: &str) -> Result<(Format, Vec<Message>)> {
        prompt_messages(&RawRecord::parse(line)?)
    }

    #[test]
    fn prompts_drop_the_answer() -> Result<()> {
        let (f, m) = prompt(r#"{"prompt":"Hi"}"#)?;
        assert_eq!((f, m), (Format::Prompt, vec![Message::user("Hi")]));
        let (f, m) =
            prompt(r#"{"instruction":"Add","input":"1 2","output":"3","system":"Be brief"}"#)?;
        assert_eq!(f, Format::Alpaca);
        assert_eq!(
            m,
            vec![Message::system("Be brief"), Message::user("Add\n\n1 2")]
        );
        // Alpaca without output is a prompt, not an error.
        assert_eq!(
            prompt(r#"{"instruction":"Hi"}"#)?.1,
            vec![Message::user("Hi")]
        );
        let (f, m) = prompt(
            r#"{"conversations":[{"from":"human","value":"a"},{"from":"gpt","value":"b"},{"from":"human","value":"c"},{"from":"gpt","value":"d"}]}"#,
        )?;
        assert_eq!(f, Format::ShareGpt);
        assert_eq!(
            m,
            vec![
                Message::user("a"),
                Message::new("assistant", "b"),
                Message::user("c")
            ]
        );
        let (f, m) = prompt(r#"{"messages":[{"role":"user","content":"q"}]}"#)?;
        assert_eq!((f, m), (Format::Messages, vec![Message::user("q")]));
        Ok(())
    }

    #[test]
    fn bad_prompts_say_why() {
        let cases = [
            (r#"{"text":"x"}"#, "unrecognised record"),
            (r#"{"prompt":3}"#, "\"prompt\" must be a string"),
            (r#"{"messages":[]}"#, "empty conversation"),
            (
                r#"{"messages":[{"role":"system","content":"s"}]}"#,
                "not a user turn",
            ),
        ];
        for (line, want) in cases {
            let e = prompt(line).expect_err(line);
            assert!(format!("{e:#}").contains(want), "{line}: {e:#}");
        }
    }
}
