//! The Ollama Modelfile: FROM, ADAPTER, TEMPLATE, PARAMETER stop, SYSTEM.
//!
//! Ollama does not run Jinja: the chat template must be restated as a Go template. Each family we
//! translate has its Go template and a Rust twin that renders what that Go template renders
//! (after Ollama puts the SYSTEM prompt first when a conversation has none). A model's Jinja
//! template is of a family when it renders fixed probe conversations exactly as the twin does —
//! behaviour, not a guess from the source text; a template no family reproduces is an error that
//! names it, never a silently wrong TEMPLATE. A BOS the Jinja template writes itself is left out:
//! llama.cpp adds it (`tokenizer.ggml.add_bos_token`).

use crate::inputs::Inputs;
use anyhow::{Result, bail};
use ftkit_model::{ChatMessage, ChatTemplate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Hermes, …).
    ChatMl,
    /// ChatML with Qwen's tool-calling sections (Qwen2 / Qwen2.5): tools are not translated.
    Qwen,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3 / 3.x without dated
    /// system prompts).
    Llama3,
    /// `[INST] … [/INST]…</s>` (Mistral 7B Instruct v0.1–v0.3): user and assistant turns only.
    Mistral,
}

const FAMILIES: [Family; 4] = [
    Family::Qwen,
    Family::ChatMl,
    Family::Llama3,
    Family::Mistral,
];

const CHATML: &str = r#"{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"#;

const LLAMA3: &str = r#"{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"#;

const MISTRAL: &str = r#"{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]
{{- else if eq .Role "assistant" }}{{ .Content }}</s>
{{- end }}
{{- end }}"#;

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMl => "chatml",
            Self::Qwen => "qwen",
            Self::Llama3 => "llama3",
            Self::Mistral => "mistral",
        }
    }

    pub fn go_template(self) -> &'static str {
        match self {
            Self::ChatMl | Self::Qwen => CHATML,
            Self::Llama3 => LLAMA3,
            Self::Mistral => MISTRAL,
        }
    }

    pub fn stops(self) -> &'static [&'static str] {
        match self {
            Self::ChatMl | Self::Qwen => &["<|im_start|>", "<|im_end|>"],
            Self::Llama3 => &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            Self::Mistral => &["[INST]", "[/INST]", "</s>"],
        }
    }

    pub fn has_system(self) -> bool {
        self != Self::Mistral
    }

    /// What [`Family::go_template`] renders for `messages` (a reply to follow).
    pub fn render(self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        match self {
            Self::ChatMl | Self::Qwen => {
                for m in messages {
                    out += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
                }
                out += "<|im_start|>assistant\n";
            }
            Self::Llama3 => {
                for m in messages {
                    out += &format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role, m.content
                    );
                }
                out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
            Self::Mistral => {
                for m in messages {
                    match m.role.as_str() {
                        "user" => out += &format!("[INST] {} [/INST]", m.content),
                        "assistant" => out += &format!("{}</s>", m.content),
                        _ => {}
                    }
                }
            }
        }
        out
    }

    /// The system prompt a template writes when the conversation has none, read from its
    /// rendering of a lone user turn.
    fn default_system(self, rendered: &str) -> Option<String> {
        let (open, close) = match self {
            Self::ChatMl | Self::Qwen => ("<|im_start|>system\n", "<|im_end|>"),
            Self::Llama3 => (
                "<|start_header_id|>system<|end_header_id|>\n\n",
                "<|eot_id|>",
            ),
            Self::Mistral => return None,
        };
        let rest = rendered.strip_prefix(open)?;
        rest.find(close).map(|end| rest[..end].to_string())
    }
}

/// Probe conversations: a lone user turn; a system prompt and a finished exchange.
fn probes() -> Vec<Vec<ChatMessage>> {
    let m = ChatMessage::new;
    vec![
        vec![m("user", "Hello, who are you?")],
        vec![
            m("system", "You answer in French."),
            m("user", "What is 2+2?"),
            m("assistant", "4."),
            m("user", "And 3+3?"),
        ],
        vec![
            m("user", "What is 2+2?"),
            m("assistant", "4."),
            m("user", "And 3+3?"),
        ],
    ]
}

/// A chat template translated for Ollama.
#[derive(Debug, Clone)]
pub struct Translation {
    pub family: Family,
    /// The template's own system prompt for conversations without one (Ollama's SYSTEM).
    pub default_system: Option<String>,
}

impl Translation {
    pub fn of(inputs: &Inputs) -> Result<Self> {
        let bos = inputs
            .tokenizer_config
            .bos_token
            .as_deref()
            .filter(|_| inputs.adds_bos());
        let tmpl = ChatTemplate::from_config(&inputs.tokenizer_config)?;
        Self::translate(&tmpl, bos, inputs.tokenizer_config.chat_template.as_deref())
    }

    /// The family whose twin renders every probe `tmpl` renders the way `tmpl` does (`bos`, when
    /// the template writes it first, set aside); `source` only labels errors.
    pub fn translate(tmpl: &ChatTemplate, bos: Option<&str>, source: Option<&str>) -> Result<Self> {
        let render = |msgs: &[ChatMessage]| -> Option<String> {
            let text = tmpl.render(msgs, true).ok()?;
            Some(match bos.filter(|b| !b.is_empty()) {
                Some(b) => text.strip_prefix(b).map(str::to_string).unwrap_or(text),
                None => text,
            })
        };
        let probes = probes();
        let mut first_miss = None;
        'family: for family in FAMILIES {
            if family == Family::Qwen && !source.is_some_and(|s| s.contains("<tool_call>")) {
                continue;
            }
            let default_system = render(&probes[0]).and_then(|r| family.default_system(&r));
            let mut rendered_any = false;
            for probe in &probes {
                let has_system = probe.iter().any(|m| m.role == "system");
                // Ollama puts SYSTEM first when a conversation has none.
                let mut msgs = probe.clone();
                if let (false, Some(s)) = (has_system, &default_system) {
                    msgs.insert(0, ChatMessage::new("system", s));
                }
                let Some(theirs) = render(probe) else {
                    // Templates that refuse a system turn (Mistral's raise) are told by the others.
                    if has_system && !family.has_system() {
                        continue;
                    }
                    continue 'family;
                };
                rendered_any = true;
                let ours = family.render(&msgs);
                if ours != theirs {
                    first_miss.get_or_insert((family, theirs, ours));
                    continue 'family;
                }
            }
            if rendered_any {
                return Ok(Self {
                    family,
                    default_system,
                });
            }
        }
        let name = source
            .map(|s| {
                let one_line: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
                format!(" ({one_line}…)")
            })
            .unwrap_or_default();
        let detail = first_miss
            .map(|(f, theirs, ours)| {
                format!(
                    "; closest, {}: the template renders {theirs:?}, Ollama's would render {ours:?}",
                    f.name()
                )
            })
            .unwrap_or_default();
        bail!(
            "the model's chat template{name} is none we can translate into Ollama's \
             (chatml, qwen, llama3, mistral){detail}"
        )
    }

    pub fn stops(&self) -> Vec<&'static str> {
        self.family.stops().to_vec()
    }

    /// The Modelfile text.
    pub fn modelfile(&self, from: &str, adapter: Option<&str>, system: Option<&str>) -> String {
        let mut out = format!("FROM {from}\n");
        if let Some(a) = adapter {
            out += &format!("ADAPTER {a}\n");
        }
        out += &format!("TEMPLATE \"\"\"{}\"\"\"\n", self.family.go_template());
        for s in self.stops() {
            out += &format!("PARAMETER stop \"{s}\"\n");
        }
        if let Some(s) = system.or(self.default_system.as_deref()) {
            out += &format!(
                "SYSTEM \"\"\"{}\"\"\"\n",
                s.replace("\"\"\"", "\\\"\\\"\\\"")
            );
        }
        out
    }
}
