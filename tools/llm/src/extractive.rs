//! The `extractive` backend: offline, deterministic, no model. An honest baseline that lets the
//! pipeline and its tests run without a network.
//!
//! What it does, exactly (model id `extractive-v1`):
//!
//! 1. **Sentences.** The text is split at blank lines and list items and after `.` `!` `?` followed by
//!    whitespace and a word that is not lowercase (or the end), and after `。` `！` `？`; hard-wrapped
//!    lines are joined (a short unpunctuated line is a title unless the next line goes on in
//!    lowercase). Whitespace is collapsed. A sentence is kept when it is whole (starts with a capital,
//!    digit or CJK character, ends with `.` `!` `。` `！`: no fragment of a chunk cut mid-sentence, no
//!    title, no line ending in `:`) and has 4 to 80 words (text without spaces, such as Chinese: 8 to
//!    200 characters).
//! 2. **Candidates**, one per kept sentence, the first rule that applies:
//!    - *definition*: `SUBJECT is|are|was|were|means|refers to REST`, with a subject of 1 to 6 words that
//!      starts with a capital letter, is not a pronoun (`it`, `this`, `they`, ...), holds no comma, colon,
//!      backtick or function word (`the` is allowed only first; `will`, `if`, `note`, ...), and at least
//!      2 words of REST, which does not start with `not`
//!      → "What is SUBJECT?" (`What does SUBJECT mean?`, `What does SUBJECT refer to?`); the answer is the
//!      whole sentence. Chinese: `SUBJECT是REST` with a subject of 1 to 12 characters → "什么是SUBJECT？".
//!    - *cloze*: the sentence holds a number, or (English) a capitalised word after its first word
//!      (leading bullets and symbols skipped; function words such as `The`, `By` never count) → that
//!      token (its first occurrence) is blanked: `Fill in the blank: "... _____ ..."` (`填空：「……」`); the
//!      answer is the token.
//!    - *fact*: English: the longest word of 5+ letters that is not a stop word (first on ties) is the key
//!      → "What does the text say about KEY?"; Chinese: "这段文字的第K句说了什么？" (what does sentence K
//!      say); the answer is the whole sentence.
//! 3. **Choice.** Candidates are ranked definition, cloze, fact, then by position; the first `n` with
//!    distinct questions are kept and returned in text order.
//! 4. **Language.** Questions use English or Chinese templates, following the requested question
//!    language (`en`, `zh`); answers are always the source's own words (so a cross-lingual request gets
//!    an English question quoting Chinese text). Other question languages are refused per item.
//! 5. **Summary.** The first kept sentences in order, up to 3 sentences or 400 characters.
//!
//! It reports zero token usage and is never cached (it is cheaper than a cache lookup).

use crate::backend::{Backend, CallError, Reply, Request, Task, Usage};
use serde_json::json;

pub struct Extractive;

const MODEL: &str = "extractive-v1";

const PRONOUNS: &[&str] = &[
    "it", "this", "that", "these", "those", "they", "he", "she", "there", "here", "we", "i", "you",
    "which", "who", "what", "such", "each", "all", "some", "one", "its", "their", "our", "his",
    "her", "both", "either", "neither",
];

/// Words that do not occur in a definition's subject, nor make a cloze answer.
const NOT_SUBJECT: &[&str] = &[
    "the", "a", "an", "by", "for", "in", "on", "of", "to", "at", "and", "or", "but", "if", "when",
    "while", "be", "been", "will", "would", "can", "could", "should", "may", "might", "must",
    "has", "have", "had", "do", "does", "did", "not", "there", "here", "so", "then", "thus",
    "however", "note", "see", "also", "warning", "example", "because", "since", "as", "with",
    "from", "is", "are", "was", "were",
];

const STOP: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "along",
    "among",
    "another",
    "around",
    "because",
    "before",
    "being",
    "below",
    "between",
    "could",
    "during",
    "every",
    "first",
    "other",
    "their",
    "there",
    "these",
    "those",
    "through",
    "under",
    "until",
    "where",
    "which",
    "while",
    "would",
    "should",
    "might",
    "often",
    "since",
    "still",
    "though",
    "within",
    "without",
    "several",
    "further",
    "however",
    "therefore",
    "thereby",
    "itself",
    "themselves",
];

/// Splits text into cleaned sentences (all of them, before the length filter).
///
/// A single line break inside a paragraph is a space (documents are often hard-wrapped); a blank line
/// ends a sentence, and so does the start of a list item. Markdown headings are titles, not
/// sentences, and are left out.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let push = |cur: &mut String, out: &mut Vec<String>| {
        let s = cur.split_whitespace().collect::<Vec<_>>().join(" ");
        if !s.is_empty() {
            out.push(s);
        }
        cur.clear();
    };
    let mut in_code = false;
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            push(&mut cur, &mut out);
            continue;
        }
        if in_code {
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            push(&mut cur, &mut out);
            continue;
        }
        let body = match list_item_body(trimmed) {
            Some(body) => {
                push(&mut cur, &mut out);
                body
            }
            None => trimmed,
        };
        let starts_sentence = cur.trim().is_empty();
        let chars: Vec<char> = body.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            cur.push(c);
            let end = match c {
                '。' | '！' | '？' => true,
                // Not before a lowercase word: "e.g. the", "approx. three" go on.
                '.' | '!' | '?' => {
                    chars.get(i + 1).is_none_or(|n| n.is_whitespace())
                        && !chars[i + 1..]
                            .iter()
                            .find(|c| !c.is_whitespace())
                            .is_some_and(|c| c.is_lowercase())
                }
                _ => false,
            };
            if end {
                push(&mut cur, &mut out);
            }
        }
        // A short unpunctuated line of its own is a title, not the start of a wrapped sentence, unless
        // the next line goes on in lowercase ("This License gives no" / "permission to ..."): taking
        // that line for a title cut the sentence and turned its meaning around.
        let continued = lines
            .get(n + 1)
            .and_then(|next| next.trim().chars().next())
            .is_some_and(char::is_lowercase);
        let title = starts_sentence
            && !continued
            && body.split_whitespace().count() <= 5
            && !body.ends_with(|c: char| ".!?。！？:;,".contains(c));
        if title {
            push(&mut cur, &mut out);
        } else {
            cur.push(' ');
        }
    }
    push(&mut cur, &mut out);
    out
}

/// The text of a list item (`- item`, `* item`, `+ item`, `1. item`, `1) item`, `a) item`,
/// `(a) item`, `(1) item`), without its marker.
fn list_item_body(line: &str) -> Option<&str> {
    if let Some(rest) = line.strip_prefix(['-', '*', '+']) {
        return rest.strip_prefix(' ').map(str::trim_start);
    }
    let unbracketed = line.strip_prefix('(').unwrap_or(line);
    let mut chars = unbracketed.chars();
    if let (Some(c), Some(')'), Some(' ')) = (chars.next(), chars.next(), chars.next())
        && c.is_ascii_alphanumeric()
    {
        return Some(unbracketed[3..].trim_start());
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    match line.as_bytes().get(digits..digits + 2) {
        Some(b". " | b") ") if digits > 0 => Some(line[digits + 2..].trim_start()),
        _ => None,
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// True when the sentence is written without spaces between words (Chinese, Japanese).
fn spaceless(s: &str) -> bool {
    let cjk = s.chars().filter(|&c| is_cjk(c)).count();
    cjk * 2 > s.chars().filter(|c| !c.is_whitespace()).count()
}

/// True when `s` is a whole sentence: it starts like one (a capital, a digit, CJK, or an opening
/// quote or bracket before one) and ends with `.` `!` `。` `！` (closing quotes and brackets allowed
/// after). A chunk that starts or ends mid-sentence, a title, a line ending in `:` are not.
fn whole_sentence(s: &str) -> bool {
    let start = s
        .trim_start_matches(['"', '\'', '“', '‘', '(', '[', '「', '『'])
        .chars()
        .next();
    let starts = start.is_some_and(|c| c.is_uppercase() || c.is_ascii_digit() || is_cjk(c));
    let end = s
        .trim_end_matches(['"', '\'', '”', '’', ')', ']', '」', '』'])
        .chars()
        .next_back();
    starts && end.is_some_and(|c| matches!(c, '.' | '!' | '。' | '！'))
}

fn keep(s: &str) -> bool {
    if !whole_sentence(s) {
        return false;
    }
    if spaceless(s) {
        (8..=200).contains(&s.chars().count())
    } else {
        (4..=80).contains(&s.split_whitespace().count())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Definition,
    Cloze,
    Fact,
}

struct Candidate {
    kind: Kind,
    index: usize,
    question: String,
    answer: String,
}

fn trim_token(w: &str) -> &str {
    w.trim_matches(|c: char| !c.is_alphanumeric())
}

fn definition_en(s: &str, zh_q: bool) -> Option<String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    for i in 1..=6.min(words.len().saturating_sub(1)) {
        let w = words[i].to_lowercase();
        let (template, rest_from) = match w.as_str() {
            "is" | "are" | "was" | "were" => (w.clone(), i + 1),
            "means" => ("means".to_string(), i + 1),
            "refers"
                if words
                    .get(i + 1)
                    .is_some_and(|n| n.eq_ignore_ascii_case("to")) =>
            {
                ("refers".to_string(), i + 2)
            }
            _ => continue,
        };
        let subject_words = &words[..i];
        let first = subject_words[0].to_lowercase();
        let starts_upper = subject_words[0]
            .chars()
            .next()
            .is_some_and(char::is_uppercase);
        if !starts_upper
            || PRONOUNS.contains(&trim_token(&first))
            || subject_words.iter().enumerate().any(|(k, w)| {
                let t = w.to_lowercase();
                let t = trim_token(&t);
                let article_first = k == 0 && ["the", "a", "an"].contains(&t);
                w.contains(',')
                    || w.contains(':')
                    || w.contains('`')
                    || (NOT_SUBJECT.contains(&t) && !article_first)
            })
            || words
                .get(rest_from)
                .is_some_and(|w| w.eq_ignore_ascii_case("not"))
        {
            return None;
        }
        if words.len() < rest_from + 2 {
            return None;
        }
        let mut subject = subject_words.join(" ");
        if ["the", "a", "an"].contains(&first.as_str()) {
            subject = format!("{}{}", first, &subject[subject_words[0].len()..]);
        }
        if zh_q {
            return Some(format!("什么是{subject}？"));
        }
        return Some(match template.as_str() {
            "means" => format!("What does {subject} mean?"),
            "refers" => format!("What does {subject} refer to?"),
            verb => format!("What {verb} {subject}?"),
        });
    }
    None
}

fn definition_zh(s: &str, zh_q: bool) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let pos = chars.iter().position(|&c| c == '是')?;
    if !(1..=12).contains(&pos) || chars.len() < pos + 3 {
        return None;
    }
    let subject: String = chars[..pos].iter().collect();
    if subject.starts_with(['这', '那', '它', '他', '她', '我', '你'])
        || subject.contains(['，', ','])
    {
        return None;
    }
    Some(if zh_q {
        format!("什么是{subject}？")
    } else {
        format!("What is {subject}?")
    })
}

fn cloze(s: &str, zh_q: bool) -> Option<(String, String)> {
    let token = if spaceless(s) {
        // The first run of ASCII digits (with inner separators).
        let start = s.find(|c: char| c.is_ascii_digit())?;
        let len = s[start..]
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
            .unwrap_or(s.len() - start);
        s[start..start + len]
            .trim_end_matches(['.', ','])
            .to_string()
    } else {
        let words: Vec<&str> = s.split_whitespace().collect();
        let pick = words
            .iter()
            .map(|w| trim_token(w))
            .enumerate()
            // Tokens before the first word (list bullets, symbols) do not count as the sentence start.
            .skip_while(|(_, w)| !w.chars().any(char::is_alphabetic))
            .enumerate()
            .map(|(k, (_, w))| (k, w))
            .find(|(k, w)| {
                !w.is_empty()
                    && !NOT_SUBJECT.contains(&w.to_lowercase().as_str())
                    && (w.chars().any(|c| c.is_ascii_digit())
                        || (*k > 0
                            && w.chars().next().is_some_and(char::is_uppercase)
                            && w.chars().count() > 1))
            })
            .map(|(_, w)| w)?;
        pick.to_string()
    };
    if token.is_empty() {
        return None;
    }
    let blanked = s.replacen(&token, "_____", 1);
    let q = if zh_q {
        format!("填空：「{blanked}」")
    } else {
        format!("Fill in the blank: \"{blanked}\"")
    };
    Some((q, token))
}

fn fact(s: &str, index: usize, zh_q: bool) -> Option<String> {
    if spaceless(s) {
        return Some(if zh_q {
            format!("这段文字的第{}句说了什么？", index + 1)
        } else {
            format!("What does sentence {} of the text say?", index + 1)
        });
    }
    let key = s
        .split_whitespace()
        .map(trim_token)
        .filter(|w| w.chars().count() >= 5 && w.chars().all(char::is_alphabetic))
        .filter(|w| !STOP.contains(&w.to_lowercase().as_str()))
        .fold(None::<&str>, |best, w| match best {
            Some(b) if b.chars().count() >= w.chars().count() => Some(b),
            _ => Some(w),
        })?;
    Some(if zh_q {
        format!("这段文字关于“{key}”说了什么？")
    } else {
        format!("What does the text say about {key}?")
    })
}

/// QA pairs built from `text` (see the module docs); questions in Chinese when `lang` is `zh`.
pub fn qa_pairs(text: &str, n: usize, lang: &str) -> Vec<(String, String)> {
    let zh_q = lang == "zh";
    let kept: Vec<String> = sentences(text).into_iter().filter(|s| keep(s)).collect();
    let mut cands = Vec::new();
    for (index, s) in kept.iter().enumerate() {
        let def = if spaceless(s) {
            definition_zh(s, zh_q)
        } else {
            definition_en(s, zh_q)
        };
        let cand = if let Some(q) = def {
            Candidate {
                kind: Kind::Definition,
                index,
                question: q,
                answer: s.clone(),
            }
        } else if let Some((q, a)) = cloze(s, zh_q) {
            Candidate {
                kind: Kind::Cloze,
                index,
                question: q,
                answer: a,
            }
        } else if let Some(q) = fact(s, index, zh_q) {
            Candidate {
                kind: Kind::Fact,
                index,
                question: q,
                answer: s.clone(),
            }
        } else {
            continue;
        };
        cands.push(cand);
    }
    cands.sort_by_key(|c| (c.kind, c.index));
    let mut chosen: Vec<Candidate> = Vec::new();
    for c in cands {
        if chosen.len() == n {
            break;
        }
        if !chosen.iter().any(|k| k.question == c.question) {
            chosen.push(c);
        }
    }
    chosen.sort_by_key(|c| c.index);
    chosen.into_iter().map(|c| (c.question, c.answer)).collect()
}

/// The lead of the text: kept sentences in order, up to 3 sentences or 400 characters.
pub fn summary(text: &str) -> String {
    let mut out = String::new();
    for (count, s) in sentences(text).into_iter().filter(|s| keep(s)).enumerate() {
        if count == 3 || (count > 0 && out.chars().count() + s.chars().count() > 400) {
            break;
        }
        if !out.is_empty() && !spaceless(&s) {
            out.push(' ');
        }
        out.push_str(&s);
    }
    out
}

impl Backend for Extractive {
    fn name(&self) -> &'static str {
        "extractive"
    }
    fn model(&self) -> &str {
        MODEL
    }
    fn body(&self, _req: &Request) -> Option<Vec<u8>> {
        None
    }
    fn params(&self, req: &Request) -> serde_json::Value {
        match &req.task {
            Task::Qa { n, .. } => json!({ "n": n }),
            _ => json!({}),
        }
    }
    fn send(&self, req: &Request, _body: Option<&[u8]>) -> Result<Reply, CallError> {
        let value = match &req.task {
            Task::Qa { text, n, lang, .. } => {
                if lang != "en" && lang != "zh" {
                    return Err(CallError::Item(format!(
                        "the extractive backend writes questions in en or zh only, not {lang:?}"
                    )));
                }
                let pairs: Vec<_> = qa_pairs(text, *n, lang)
                    .into_iter()
                    .map(|(q, a)| json!({"question": q, "answer": a}))
                    .collect();
                json!({ "pairs": pairs })
            }
            Task::Summary { text, .. } => json!({ "summary": summary(text) }),
            Task::Judge { .. } => {
                return Err(CallError::Fatal(
                    "the extractive backend cannot judge".into(),
                ));
            }
            Task::Generate { .. } | Task::Describe { .. } => {
                return Err(CallError::Fatal(
                    "the extractive backend cannot write free text".into(),
                ));
            }
        };
        Ok(Reply {
            text: value.to_string(),
            usage: Usage::default(),
            finish_reason: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences() {
        let s = sentences(
            "# Title\nRust is fast. It is safe!\n\nA paragraph that is wrapped at\nthe margin here.\n- item one\n- item two\n1. first\nHeading\n```\nlet x = 1;\n```\n数据是资产。很好",
        );
        assert_eq!(
            s,
            [
                "Rust is fast.",
                "It is safe!",
                "A paragraph that is wrapped at the margin here.",
                "item one",
                "item two",
                "first",
                "Heading",
                "数据是资产。",
                "很好"
            ]
        );
        // Decimal points do not end sentences.
        assert_eq!(
            sentences("Pi is 3.14 today. Yes."),
            ["Pi is 3.14 today.", "Yes."]
        );
    }

    #[test]
    fn builds_definitions_cloze_and_facts() {
        let text = "A LoRA adapter is a pair of small matrices added to a frozen layer. \
                    It trains quickly on one GPU. \
                    The method appeared in 2021 in a paper by Microsoft researchers. \
                    Training needs careful learning rates for stability.";
        let pairs = qa_pairs(text, 3, "en");
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].0, "What is a LoRA adapter?");
        assert!(pairs[0].1.starts_with("A LoRA adapter is a pair"));
        // "It" is a pronoun, so sentence 2 is no definition; "GPU" is a capitalised word: a cloze.
        assert_eq!(
            pairs[1],
            (
                "Fill in the blank: \"It trains quickly on one _____.\"".to_string(),
                "GPU".to_string()
            )
        );
        assert_eq!(
            pairs[2].0,
            "Fill in the blank: \"The method appeared in _____ in a paper by Microsoft researchers.\""
        );
        assert_eq!(pairs[2].1, "2021");
        // Sentence 4 has neither: a fact about its longest word, ranked last.
        let all = qa_pairs(text, 10, "en");
        assert_eq!(all[3].0, "What does the text say about stability?");
        assert_eq!(qa_pairs(text, 10, "en").len(), 4);
        assert!(qa_pairs("", 3, "en").is_empty());
    }

    #[test]
    fn skips_bullets_function_words_and_non_definitions() {
        // A bullet is not the sentence start, and "The" is never a cloze answer.
        let p = qa_pairs(
            "* The socket module now raises OSError on failure.",
            1,
            "en",
        );
        assert_eq!(p[0].1, "OSError");
        // Lower-case or function-word subjects and negations are no definitions.
        assert!(definition_en("will be set if there was a failure.", false).is_none());
        assert!(definition_en("Note that x is not the same as y here.", false).is_none());
        assert!(definition_en("Python is not a compiled language at all.", false).is_none());
        assert_eq!(
            definition_en("The GIL is a global lock in CPython.", false).as_deref(),
            Some("What is the GIL?")
        );
    }

    #[test]
    fn chinese_and_cross_lingual() {
        let text = "机器学习是人工智能的一个分支。该领域在1959年被正式命名。";
        let zh = qa_pairs(text, 2, "zh");
        assert_eq!(zh[0].0, "什么是机器学习？");
        assert_eq!(
            zh[1],
            (
                "填空：「该领域在_____年被正式命名。」".to_string(),
                "1959".to_string()
            )
        );
        let en = qa_pairs(text, 1, "en");
        assert_eq!(en[0].0, "What is 机器学习?");
    }

    #[test]
    fn summary_is_the_lead() {
        let s = summary(
            "One two three four. Five six seven eight. Nine ten eleven twelve. Last one here now.",
        );
        assert_eq!(
            s,
            "One two three four. Five six seven eight. Nine ten eleven twelve."
        );
    }
}
