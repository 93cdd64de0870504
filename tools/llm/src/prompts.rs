//! Built-in prompts and reply schemas. A user template (`--prompt-file`) replaces the user message of
//! the QA prompt; it may use `{text}`, `{n}` and `{lang}` (the language's English name).

use crate::backend::{Message, Request, Task};
use serde_json::{Value, json};

pub const QA_SYSTEM: &str = "You write question-answer pairs for fine-tuning a language model. \
Every answer must be supported by the passage alone. Reply with JSON only.";

pub const QA_USER: &str = "Write {n} diverse question-answer pairs about the passage below. \
Questions must make sense without seeing the passage (name the subject instead of saying \"the passage\"). \
Answers are complete sentences taken from or directly supported by the passage. \
Write both questions and answers in {lang}.\n\
Reply as {\"pairs\":[{\"question\":\"...\",\"answer\":\"...\"}]}.\n\nPassage:\n{text}";

pub const SUMMARY_USER: &str = "Write a dense summary of the passage below in {lang}: every key fact, name \
and number, no filler, at most a third of its length.\nReply as {\"summary\":\"...\"}.\n\nPassage:\n{text}";

pub const JUDGE_SYSTEM: &str = "You grade question-answer pairs used to fine-tune a language model. \
Be strict and consistent. Reply with JSON only.";

pub const JUDGE_USER: &str = "Grade this question-answer pair on a 1-10 scale for each criterion:\n\
- relevance: the question asks something worth knowing about the context\n\
- accuracy: the answer is correct\n\
- clarity: the question and answer are clear and self-contained\n\
- grounding: the answer is supported by the context\n\
- overall: your overall judgement of its value as training data\n\
Add a one-line rationale.\n\
Reply as {\"relevance\":N,\"accuracy\":N,\"clarity\":N,\"grounding\":N,\"overall\":N,\"rationale\":\"...\"}.\n\n\
Context:\n{context}\n\nQuestion: {question}\nAnswer: {answer}";

/// English name of a language code, for prompts (the code itself when unknown).
pub fn language_name(code: &str) -> &str {
    match code {
        "en" => "English",
        "zh" => "Chinese (Simplified)",
        "zh-TW" | "zh-Hant" => "Chinese (Traditional)",
        "ja" => "Japanese",
        "ko" => "Korean",
        "fr" => "French",
        "de" => "German",
        "es" => "Spanish",
        "it" => "Italian",
        "pt" => "Portuguese",
        "ru" => "Russian",
        "ar" => "Arabic",
        "hi" => "Hindi",
        other => other,
    }
}

/// Replaces `{key}` placeholders in one pass (text inserted is not scanned again).
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + vars.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match vars
            .iter()
            .find(|(k, _)| after.starts_with(k) && after[k.len()..].starts_with('}'))
        {
            Some((k, v)) => {
                out.push_str(v);
                rest = &after[k.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn qa_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"pairs": {"type": "array", "items": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"]}}},
        "required": ["pairs"]
    })
}

pub fn judge_schema() -> Value {
    let n = json!({"type": "number"});
    json!({
        "type": "object",
        "properties": {"relevance": n, "accuracy": n, "clarity": n, "grounding": n, "overall": n,
                       "rationale": {"type": "string"}},
        "required": ["relevance", "accuracy", "clarity", "grounding", "overall", "rationale"]
    })
}

/// The request for a task; `qa_template` replaces the built-in QA user message.
pub fn request(task: Task, qa_template: Option<&str>, attempt: u32) -> Request {
    let (messages, schema, schema_name) = match &task {
        Task::Qa { text, n, lang, .. } => {
            let user = render(
                qa_template.unwrap_or(QA_USER),
                &[
                    ("text", text),
                    ("n", &n.to_string()),
                    ("lang", language_name(lang)),
                ],
            );
            (
                vec![Message::system(QA_SYSTEM), Message::user(user)],
                Some(qa_schema()),
                "qa_pairs",
            )
        }
        Task::Summary { text, lang } => {
            let user = render(
                SUMMARY_USER,
                &[("text", text), ("lang", language_name(lang))],
            );
            let schema = json!({"type":"object","properties":{"summary":{"type":"string"}},"required":["summary"]});
            (
                vec![Message::system(QA_SYSTEM), Message::user(user)],
                Some(schema),
                "summary",
            )
        }
        Task::Judge {
            context,
            question,
            answer,
        } => {
            let user = render(
                JUDGE_USER,
                &[
                    ("context", context.as_deref().unwrap_or("(not available)")),
                    ("question", question),
                    ("answer", answer),
                ],
            );
            (
                vec![Message::system(JUDGE_SYSTEM), Message::user(user)],
                Some(judge_schema()),
                "judgement",
            )
        }
        Task::Generate { messages } => (messages.clone(), None, "completion"),
        Task::Describe { prompt, .. } => (vec![Message::user(prompt.clone())], None, "description"),
    };
    Request {
        task,
        messages,
        schema,
        schema_name,
        attempt,
    }
}

/// SHA-256 of the messages as JSON: identifies the prompt a record came from.
pub fn prompt_sha256(req: &Request) -> String {
    ftkit_core::id::sha256_hex(&serde_json::to_vec(&req.messages).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_single_pass() {
        assert_eq!(
            render("a {text} b {n} {x} {", &[("text", "{n}"), ("n", "3")]),
            "a {n} b 3 {x} {"
        );
    }
}
