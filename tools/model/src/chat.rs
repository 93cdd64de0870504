//! `tokenizer_config.json` and chat templates rendered with minijinja, the way transformers'
//! `apply_chat_template` does (trim_blocks, lstrip_blocks, `raise_exception`, `tojson`, Python
//! string methods via minijinja-contrib's pycompat), plus the token-level assistant mask.
//!
//! `strftime_now` is deliberately not defined: templates that use it (Llama 3.1+) fall back to
//! their built-in date, so the rendered text, and hence training, is deterministic.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The parts of `tokenizer_config.json` we use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The default Jinja chat template (`chat_template`, a string or the entry named "default").
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
}

fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TokenizerConfig {
    /// Parse `tokenizer_config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{origin}: invalid JSON"))?;
        let chat_template = match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(_) => bail!("{origin}: chat_template must be a string or a list"),
        };
        Ok(Self {
            chat_template,
            bos_token: token_str(v.get("bos_token")),
            eos_token: token_str(v.get("eos_token")),
            pad_token: token_str(v.get("pad_token")),
        })
    }

    /// Read `tokenizer_config.json` (or the template and special tokens of a `.gguf` file),
    /// taking the template from `chat_template.jinja` when given and the JSON has none.
    pub fn load(path: Option<&Path>, chat_template_file: Option<&Path>) -> Result<Self> {
        let mut cfg = match path {
            Some(p) if crate::gguf::is_gguf(p) => {
                crate::gguf::GgufFile::open(p)?.tokenizer_config()?
            }
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Self::from_json(&text, &p.display().to_string())?
            }
            None => Self::default(),
        };
        if cfg.chat_template.is_none()
            && let Some(p) = chat_template_file
        {
            cfg.chat_template = Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            );
        }
        Ok(cfg)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("chat template raised: {msg}"),
    ))
}

/// serde_json formatter with Python's `json.dumps` separators (`", "` and `": "`).
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False)` (key order kept, no HTML
/// escaping); with `indent`, serde's pretty printer.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let err = |e: serde_json::Error| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    };
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let ind = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&ind),
            );
            serde::Serialize::serialize(&value, &mut ser).map_err(err)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
            serde::Serialize::serialize(&value, &mut ser).map_err(err)?;
        }
    }
    Ok(minijinja::Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

impl ChatTemplate {
    /// Compile `source` with the special-token strings the template may reference.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("invalid chat template: {e:#}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// From a model's tokenizer config; errors when the model has no template.
    pub fn from_config(cfg: &TokenizerConfig) -> Result<Self> {
        let src = cfg
            .chat_template
            .as_deref()
            .context("the model has no chat_template (base models need --chat-template)")?;
        Self::new(src, cfg.bos_token.as_deref(), cfg.eos_token.as_deref())
    }

    /// Render a conversation, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow!("chat template: {e:#}"))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| anyhow!("chat template: {e:#}"))
    }

    /// Byte spans `[start, end)` of each assistant reply (including its end-of-turn marker,
    /// excluding trailing whitespace) within `render(messages, false)`, plus that text.
    ///
    /// Found by rendering prefix by prefix: the reply to message `i` starts where the
    /// rendering of `messages[..i]` with a generation prompt ends, and ends where the rendering
    /// of `messages[..=i]` ends. Templates whose renderings are not prefix-stable (e.g. ones
    /// that rewrite earlier turns) are reported as errors.
    pub fn assistant_spans(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !upto.starts_with(&prompt) || !full.starts_with(&upto) {
                bail!(
                    "chat template is not prefix-stable at message {} (cannot locate the assistant reply)",
                    i + 1
                );
            }
            let end = upto.trim_end().len().max(prompt.len());
            if end > prompt.len() {
                spans.push((prompt.len(), end));
            }
        }
        Ok((full, spans))
    }
}

/// Token ids of a rendered conversation and, per token, whether it belongs to an assistant reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChat {
    pub ids: Vec<u32>,
    /// `true` for tokens of assistant replies (the tokens that carry loss by default).
    pub assistant_mask: Vec<bool>,
}

/// Render `messages` with `template`, tokenize without adding special tokens (the template
/// writes them) and mark the tokens that start inside an assistant reply.
pub fn encode_chat(
    messages: &[ChatMessage],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
) -> Result<EncodedChat> {
    let (text, spans) = template.assistant_spans(messages)?;
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    let assistant_mask = enc
        .get_offsets()
        .iter()
        .map(|&(start, _)| spans.iter().any(|&(s, e)| start >= s && start < e))
        .collect();
    Ok(EncodedChat {
        ids: enc.get_ids().to_vec(),
        assistant_mask,
    })
}

/// Tokenize a prompt/response pair without a template (base models): `prompt` is masked,
/// `response` (followed by `eos`, when given) is marked as assistant.
pub fn encode_plain(
    prompt: &str,
    response: &str,
    eos: Option<&str>,
    tokenizer: &Tokenizer,
) -> Result<EncodedChat> {
    let text = format!("{prompt}{response}{}", eos.unwrap_or_default());
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    let assistant_mask = enc
        .get_offsets()
        .iter()
        .map(|&(start, _)| start >= prompt.len())
        .collect();
    Ok(EncodedChat {
        ids: enc.get_ids().to_vec(),
        assistant_mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{CHATML_TEMPLATE, LLAMA3_TEMPLATE, train_tokenizer};

    fn convo() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "What is two plus two?"),
            ChatMessage::new("assistant", "Four."),
            ChatMessage::new("user", "And three plus three?"),
            ChatMessage::new("assistant", "Six."),
        ]
    }

    #[test]
    fn renders_chatml_like_transformers() -> Result<()> {
        let t = ChatTemplate::new(CHATML_TEMPLATE, None, Some("<|im_end|>"))?;
        let m = vec![ChatMessage::new("user", "Hi")];
        assert_eq!(
            t.render(&m, true)?,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&convo()[..3], false)?,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>\n"
        );
        Ok(())
    }

    #[test]
    fn renders_llama3_with_bos_and_trim() -> Result<()> {
        let t = ChatTemplate::new(
            LLAMA3_TEMPLATE,
            Some("<|begin_of_text|>"),
            Some("<|eot_id|>"),
        )?;
        let m = vec![ChatMessage::new("user", "  Hi \n")];
        assert_eq!(
            t.render(&m, true)?,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        Ok(())
    }

    #[test]
    fn template_helpers_raise_tojson_pycompat() -> Result<()> {
        let t = ChatTemplate::new(
            "{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}\
             {{ messages[0].content.strip().split('<')[0].upper() }}|{{ messages[0]|tojson }}|\
             {% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{% endfor %}ok",
            None,
            None,
        )?;
        assert_eq!(
            t.render(&[ChatMessage::new("user", " a <b>")], false)?,
            r#"A |{"role": "user", "content": " a <b>"}|ok"#
        );
        let err = t
            .render(&convo(), false)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("only one message"), "{err}");
        Ok(())
    }

    #[test]
    fn tokenizer_config_variants() -> Result<()> {
        let c = TokenizerConfig::from_json(
            r#"{"bos_token":{"content":"<s>","lstrip":false},"eos_token":"</s>",
               "chat_template":[{"name":"tool_use","template":"x"},{"name":"default","template":"y"}]}"#,
            "t.json",
        )?;
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(c.chat_template.as_deref(), Some("y"));
        assert!(TokenizerConfig::from_json("{", "t.json").is_err());
        Ok(())
    }

    fn check_mask(template: &str, bos: Option<&str>, specials: &[&str], end: &str) -> Result<()> {
        let tok = train_tokenizer(specials, 400)?;
        let t = ChatTemplate::new(template, bos, Some(end))?;
        let enc = encode_chat(&convo(), &t, &tok)?;
        assert_eq!(enc.ids.len(), enc.assistant_mask.len());
        // Decode the marked tokens: exactly the two replies, each with its end-of-turn token.
        let mut spans = Vec::new();
        let mut cur: Vec<u32> = Vec::new();
        for (id, m) in enc.ids.iter().zip(&enc.assistant_mask) {
            if *m {
                cur.push(*id);
            } else if !cur.is_empty() {
                spans.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            spans.push(cur);
        }
        let texts: Vec<String> = spans
            .iter()
            .map(|s| tok.decode(s, false).map_err(|e| anyhow!("{e}")))
            .collect::<Result<_>>()?;
        assert_eq!(texts, vec![format!("Four.{end}"), format!("Six.{end}")]);
        // Whole text round-trips.
        let full = tok.decode(&enc.ids, false).map_err(|e| anyhow!("{e}"))?;
        assert_eq!(full, t.render(&convo(), false)?);
        Ok(())
    }

    #[test]
    fn assistant_mask_chatml() -> Result<()> {
        check_mask(
            CHATML_TEMPLATE,
            None,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            "<|im_end|>",
        )
    }

    #[test]
    fn assistant_mask_llama3() -> Result<()> {
        check_mask(
            LLAMA3_TEMPLATE,
            Some("<|begin_of_text|>"),
            &[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            "<|eot_id|>",
        )
    }

    #[test]
    fn plain_encoding_masks_prompt() -> Result<()> {
        let tok = train_tokenizer(&["<|endoftext|>"], 300)?;
        let enc = encode_plain(
            "Question: two plus two?\nAnswer:",
            " four",
            Some("<|endoftext|>"),
            &tok,
        )?;
        let marked: Vec<u32> = enc
            .ids
            .iter()
            .zip(&enc.assistant_mask)
            .filter(|(_, m)| **m)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            tok.decode(&marked, false).map_err(|e| anyhow!("{e}"))?,
            " four<|endoftext|>"
        );
        Ok(())
    }
}
