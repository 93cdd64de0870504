//! Heuristic checks of a QA pair, and the 1-10 score made from them.
//!
//! Tokens: lowercase runs of letters and digits (words of one Latin letter and a few English stop words
//! dropped), and for Chinese/Japanese/Korean text every pair of adjacent CJK characters. A question's
//! *content tokens* are its tokens less question and template words (`text`, `say`, `blank`, ...).
//!
//! | check          | value (0 to 1)                                                            | weight |
//! |----------------|---------------------------------------------------------------------------|--------|
//! | grounding      | share of the answer's tokens found in the context (null without context)   | 0.25   |
//! | question topic | share of the question's content tokens found in the context (null without) | 0.05   |
//! | question form  | ends with `?`/`？`, or starts with a question word or "Fill in the blank"/填空 | 0.10 |
//! | specificity    | content tokens of the question: 0 → 0, 1 → 0.5, 2 → 0.75, 3+ → 1; a generic template ("what does the text say about", "what does sentence N", "according to the text", 这段文字) at most 0.25 | 0.15 |
//! | lengths        | question ≥ 3 words (4 CJK chars), answer 1..=100 words: 1; 0.5 if one fails (or the answer has 101..=250 words), 0 if both | 0.10 |
//! | novelty        | share of the answer's tokens not in the question                          | 0.15   |
//! | completeness   | an answer of up to 3 words: 1; longer: starts like a sentence (capital, digit, CJK) and ends with `.` `!` `。` `！` (closing quotes allowed): 1, one of the two: 0.5, neither: 0 | 0.10 |
//! | language match | question and answer fit the record's `lang` (else the question's reliably detected language): the detected language where whatlang is confident, else the script (1 when nothing to compare) | 0.10 |
//!
//! heuristic = 1 + 9 × (weighted mean of the checks that apply), rounded to one decimal; then caps, the
//! lowest applying: an empty answer scores 1; an answer that restates the question (all of it, or 80%
//! of its tokens, in the question, however few) at most 3; a language mismatch at most 5; an answer
//! with less than a third of its tokens in the context at most 5; a pair without context at most 7
//! (nothing shows it is true, so it never passes at the default `--pass 8`); a generic template
//! question at most 7.5 (it asks about nothing: review at the defaults).
//! Summary records (no question) use grounding (0.6) and the answer length rule (0.4, 1..=400 words),
//! with the same empty, grounding and no-context caps.

use ftkit_llm::lang;
use serde_json::{Value, json};
use std::collections::HashSet;

const STOP: &[&str] = &[
    "the", "a", "an", "of", "to", "in", "on", "and", "or", "is", "are", "was", "were", "be", "it",
    "its", "for", "with", "as", "by", "at", "that", "this", "from", "what", "which", "who", "how",
    "does", "do", "did",
];

/// Words of question templates: not what a question is about.
const TEMPLATE_WORDS: &[&str] = &[
    "text",
    "say",
    "says",
    "passage",
    "according",
    "mention",
    "mentioned",
    "mentions",
    "fill",
    "blank",
    "sentence",
    "following",
    "describe",
    "described",
    "explain",
    "about",
    "context",
    "document",
    "whom",
    "whose",
    "when",
    "where",
    "why",
    "can",
    "could",
    "should",
    "would",
    "will",
    "name",
    "list",
];

/// Question templates that ask about nothing in particular.
const GENERIC: &[&str] = &[
    "what does the text say",
    "what does sentence",
    "according to the text",
    "what does the passage say",
    "what is mentioned",
    "这段文字",
];

const QUESTION_WORDS: &[&str] = &[
    "what", "who", "whom", "whose", "which", "when", "where", "why", "how", "is", "are", "was",
    "were", "do", "does", "did", "can", "could", "should", "would", "will", "name", "list",
    "describe", "explain", "fill",
];

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// The token set of a text (see the module docs).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut prev_cjk: Option<char> = None;
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            let w = std::mem::take(word);
            let single_latin = w.chars().count() == 1 && w.chars().all(|c| c.is_ascii_alphabetic());
            if !single_latin && !STOP.contains(&w.as_str()) {
                out.push(w);
            }
        }
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush(&mut word, &mut out);
            if let Some(p) = prev_cjk {
                out.push(format!("{p}{c}"));
            }
            prev_cjk = Some(c);
        } else {
            prev_cjk = None;
            if c.is_alphanumeric() {
                word.extend(c.to_lowercase());
            } else {
                flush(&mut word, &mut out);
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Words for length checks: whitespace-separated words, or CJK characters / 1.5.
fn word_count(text: &str) -> usize {
    let cjk = text.chars().filter(|&c| is_cjk(c)).count();
    let words = text
        .split_whitespace()
        .filter(|w| !w.chars().all(is_cjk))
        .count();
    words + (cjk as f64 / 1.5).ceil() as usize
}

#[derive(Clone, Debug, PartialEq)]
pub struct Checks {
    pub grounding: Option<f64>,
    pub question_topic: Option<f64>,
    pub question_form: Option<bool>,
    pub question_words: Option<usize>,
    pub specificity: Option<f64>,
    pub answer_words: usize,
    pub lengths: f64,
    pub novelty: Option<f64>,
    pub complete_answer: Option<f64>,
    pub restates_question: Option<bool>,
    pub lang_match: Option<bool>,
    /// A context was given (the grounding checks could run).
    pub has_context: bool,
    /// The question is a generic template (see GENERIC).
    pub generic_question: bool,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Checks {
    /// The heuristic score, 1-10 (see the module docs).
    pub fn score(&self) -> f64 {
        let mut parts: Vec<(f64, f64)> = Vec::new();
        let qa = self.question_form.is_some();
        let bool_value = |b: bool| f64::from(u8::from(b));
        if qa {
            parts.extend(self.grounding.map(|g| (0.25, g)));
            parts.extend(self.question_topic.map(|t| (0.05, t)));
            parts.extend(self.question_form.map(|f| (0.10, bool_value(f))));
            parts.extend(self.specificity.map(|v| (0.15, v)));
            parts.push((0.10, self.lengths));
            parts.extend(self.novelty.map(|v| (0.15, v)));
            parts.extend(self.complete_answer.map(|v| (0.10, v)));
            parts.push((0.10, bool_value(self.lang_match.unwrap_or(true))));
        } else {
            parts.extend(self.grounding.map(|g| (0.6, g)));
            parts.push((0.4, self.lengths));
        }
        let weight: f64 = parts.iter().map(|(w, _)| w).sum();
        let mean = parts.iter().map(|(w, v)| w * v).sum::<f64>() / weight;
        let mut score = ((1.0 + 9.0 * mean) * 10.0).round() / 10.0;
        if !self.has_context {
            score = score.min(7.0);
        }
        if self.generic_question {
            score = score.min(7.5);
        }
        if self.grounding.is_some_and(|g| g < 1.0 / 3.0) || self.lang_match == Some(false) {
            score = score.min(5.0);
        }
        if self.restates_question == Some(true) {
            score = score.min(3.0);
        }
        if self.answer_words == 0 {
            score = 1.0;
        }
        score
    }

    pub fn json(&self) -> Value {
        json!({
            "grounding": self.grounding.map(round2),
            "question_topic": self.question_topic.map(round2),
            "question_form": self.question_form,
            "question_words": self.question_words,
            "specificity": self.specificity.map(round2),
            "answer_words": self.answer_words,
            "novelty": self.novelty.map(round2),
            "complete_answer": self.complete_answer,
            "restates_question": self.restates_question,
            "lang_match": self.lang_match,
        })
    }
}

fn grounding(raw: &str, answer: &[String], context: Option<&str>) -> Option<f64> {
    let context = context?;
    if answer.is_empty() {
        // Nothing to count (a symbol, a one-letter word): grounded when it occurs verbatim.
        return Some(if !raw.is_empty() && context.contains(raw) {
            1.0
        } else {
            0.0
        });
    }
    let context: HashSet<String> = tokens(context).into_iter().collect();
    Some(answer.iter().filter(|t| context.contains(*t)).count() as f64 / answer.len() as f64)
}

/// Whether question and answer are in the record's language (its `lang` tag, else the question's
/// where the detector is confident of it). Short text is checked by its script only (see lang::fits).
fn lang_match(q: &str, a: &str, tag: Option<&str>) -> Option<bool> {
    let want = match tag {
        Some(l) => l.split(['-', '_']).next().unwrap_or(l),
        None => lang::detect_reliable(q)?,
    };
    Some(lang::fits(q, want) && lang::fits(a, want))
}

/// Share of `tokens` found in `context` (None without context or tokens).
fn share_in(tokens: &[String], context: Option<&str>) -> Option<f64> {
    let context: HashSet<String> = tokens_of(context?);
    (!tokens.is_empty()).then(|| {
        tokens.iter().filter(|t| context.contains(*t)).count() as f64 / tokens.len() as f64
    })
}

fn tokens_of(text: &str) -> HashSet<String> {
    tokens(text).into_iter().collect()
}

fn is_generic(q: &str) -> bool {
    let lower = q.to_lowercase();
    GENERIC.iter().any(|g| lower.contains(g))
}

/// How well a question names what it asks about (see the module docs).
fn specificity(q: &str, content: &[String]) -> f64 {
    let distinct: HashSet<&String> = content.iter().collect();
    let by_count: f64 = match distinct.len() {
        0 => 0.0,
        1 => 0.5,
        2 => 0.75,
        _ => 1.0,
    };
    if is_generic(q) {
        by_count.min(0.25)
    } else {
        by_count
    }
}

/// 1 for a whole sentence (or an answer of up to 3 words), 0.5 for a half-formed one, 0 for a fragment.
fn completeness(a: &str, words: usize) -> f64 {
    if words <= 3 {
        return 1.0;
    }
    let first = a
        .trim_start_matches(['"', '\'', '“', '‘', '(', '[', '「'])
        .chars()
        .next();
    let starts = first.is_some_and(|c| c.is_uppercase() || c.is_ascii_digit() || is_cjk(c));
    let last = a
        .trim_end_matches(['"', '\'', '”', '’', ')', ']', '」'])
        .chars()
        .next_back();
    let ends = last.is_some_and(|c| matches!(c, '.' | '!' | '。' | '！'));
    f64::from(u8::from(starts) + u8::from(ends)) / 2.0
}

/// Text compared for restating: tokens in order, or the trimmed lowercase text when it has none.
fn same_text(a: &str, q: &str) -> bool {
    let norm = |t: &str| {
        let toks = tokens(t);
        if toks.is_empty() {
            t.trim().to_lowercase()
        } else {
            toks.join(" ")
        }
    };
    !a.trim().is_empty() && norm(a) == norm(q)
}

pub fn qa(question: &str, answer: &str, context: Option<&str>, lang_tag: Option<&str>) -> Checks {
    let q = question.trim();
    let a = answer.trim();
    let a_tokens = tokens(a);
    let q_token_list = tokens(q);
    let q_tokens: HashSet<String> = q_token_list.iter().cloned().collect();
    let content: Vec<String> = q_token_list
        .into_iter()
        .filter(|t| !TEMPLATE_WORDS.contains(&t.as_str()) && !QUESTION_WORDS.contains(&t.as_str()))
        .collect();
    let first = q
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    let form = q.ends_with('?')
        || q.ends_with('？')
        || QUESTION_WORDS.contains(&first.trim_matches(|c: char| !c.is_alphanumeric()))
        || q.starts_with("填空");
    let (qw, aw) = (word_count(q), word_count(a));
    let q_ok = qw >= 3 || q.chars().filter(|&c| is_cjk(c)).count() >= 4;
    let lengths = if aw == 0 {
        0.0
    } else {
        let a_score = match aw {
            1..=100 => 1.0,
            101..=250 => 0.5,
            _ => 0.0,
        };
        (a_score + f64::from(u8::from(q_ok))) / 2.0
    };
    let in_question = a_tokens.iter().filter(|t| q_tokens.contains(*t)).count();
    let restates = same_text(a, q)
        || (!a_tokens.is_empty() && in_question as f64 >= 0.8 * a_tokens.len() as f64);
    let novelty = if a_tokens.is_empty() {
        f64::from(u8::from(!restates))
    } else {
        1.0 - in_question as f64 / a_tokens.len() as f64
    };
    Checks {
        grounding: grounding(a, &a_tokens, context),
        question_topic: share_in(&content, context),
        question_form: Some(form),
        question_words: Some(qw),
        specificity: Some(specificity(q, &content)),
        answer_words: aw,
        lengths,
        novelty: Some(novelty),
        complete_answer: Some(completeness(a, aw)),
        restates_question: Some(restates),
        lang_match: lang_match(q, a, lang_tag),
        has_context: context.is_some(),
        generic_question: is_generic(q),
    }
}

pub fn summary(text: &str, context: Option<&str>) -> Checks {
    let aw = word_count(text);
    Checks {
        grounding: grounding(text.trim(), &tokens(text), context),
        question_form: None,
        question_words: None,
        answer_words: aw,
        lengths: if (1..=400).contains(&aw) { 1.0 } else { 0.0 },
        restates_question: None,
        lang_match: None,
        question_topic: None,
        specificity: None,
        novelty: None,
        complete_answer: None,
        has_context: context.is_some(),
        generic_question: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_words_and_cjk_bigrams() {
        assert_eq!(tokens("The LoRA rank, r=8!"), ["lora", "rank", "8"]);
        assert_eq!(tokens("机器学习"), ["机器", "器学", "学习"]);
    }

    #[test]
    fn grounded_answer_scores_high_and_restating_low() {
        let ctx = "LoRA adds two small matrices to a frozen weight. It was published in 2021.";
        let good = qa(
            "What does LoRA add to a frozen weight?",
            "Two small matrices.",
            Some(ctx),
            Some("en"),
        );
        assert_eq!(good.grounding, Some(1.0));
        // Only the question topic is short of 1 ("add" is not "adds"): 1 + 9 × (1 − 0.05 × 0.25).
        assert_eq!(good.question_topic, Some(0.75));
        assert_eq!(good.score(), 9.9);
        let bad = qa(
            "LoRA adds matrices to weights",
            "LoRA adds matrices to weights",
            Some(ctx),
            Some("zh"),
        );
        assert_eq!(bad.restates_question, Some(true));
        assert_eq!(bad.lang_match, Some(false));
        assert_eq!(bad.score(), 3.0);
        // Identical to the question, however short, is restating.
        let echo = qa("What is LoRA?", "What is LoRA?", Some(ctx), Some("en"));
        assert_eq!(echo.restates_question, Some(true));
        assert_eq!(echo.score(), 3.0);
        let invented = qa(
            "When was LoRA published?",
            "In 1850 by Babbage.",
            Some(ctx),
            Some("en"),
        );
        assert!(invented.grounding.is_some_and(|g| g < 0.5));
        assert_eq!(invented.score(), 5.0);
        // Without context nothing shows the answer is true: at most 7.
        assert_eq!(qa("What is LoRA?", "A method.", None, None).score(), 7.0);
        assert_eq!(qa("What is LoRA?", "", None, None).lengths, 0.0);
        // A generic question and a fragment answer score below a specific question with a sentence.
        let sentence = "LoRA adds two small matrices to a frozen weight.";
        let specific = qa(
            "What does LoRA add to a frozen weight?",
            sentence,
            Some(ctx),
            None,
        );
        let generic = qa(
            "What does the text say about matrices?",
            sentence,
            Some(ctx),
            None,
        );
        let fragment = qa(
            "What does LoRA add to a frozen weight?",
            "two small matrices to a frozen",
            Some(ctx),
            None,
        );
        assert_eq!(generic.specificity, Some(0.25));
        assert_eq!(fragment.complete_answer, Some(0.0));
        assert!(generic.score() < specific.score());
        assert!(fragment.score() < specific.score());
        // An answer without countable tokens is grounded when it occurs verbatim.
        assert_eq!(
            qa(
                "Fill in: low-level _____.",
                "I/O",
                Some("low-level I/O."),
                None
            )
            .grounding,
            Some(1.0)
        );
    }
}
