//! Heuristic checks of a QA pair, and the 1-10 score made from them.
//!
//! Tokens: lowercase runs of letters and digits (words of one Latin letter and a few English stop words
//! dropped), and for Chinese/Japanese/Korean text every pair of adjacent CJK characters.
//!
//! | check              | value                                                          | weight |
//! |--------------------|----------------------------------------------------------------|--------|
//! | grounding          | share of the answer's tokens found in the context (null if no context) | 0.40 |
//! | question form      | ends with `?`/`？`, or starts with a question word or "Fill in the blank"/填空 | 0.15 |
//! | lengths            | question ≥ 3 words (4 CJK chars), answer 1..=250 words; 1, 0.5 if one fails, 0 if the answer is empty | 0.15 |
//! | restates question  | ≥ 80% of the answer's tokens are in the question (and it has ≥ 3) → 0, else 1 | 0.15 |
//! | language match     | the question's script-guessed language equals the record's `lang` (1 when absent) | 0.15 |
//!
//! heuristic = 1 + 9 × (weighted mean of the checks that apply), rounded to one decimal; then caps:
//! an answer with less than a third of its tokens in the context scores at most 5, one that restates
//! the question at most 3, an empty answer 1.
//! Summary records (no question) use grounding (0.6) and the answer length rule (0.4).

use ftkit_llm::lang;
use serde_json::{Value, json};
use std::collections::HashSet;

const STOP: &[&str] = &[
    "the", "a", "an", "of", "to", "in", "on", "and", "or", "is", "are", "was", "were", "be", "it",
    "its", "for", "with", "as", "by", "at", "that", "this", "from", "what", "which", "who", "how",
    "does", "do", "did",
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
    pub question_form: Option<bool>,
    pub question_words: Option<usize>,
    pub answer_words: usize,
    pub lengths: f64,
    pub restates_question: Option<bool>,
    pub lang_match: Option<bool>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Checks {
    /// The heuristic score, 1-10 (see the module docs).
    pub fn score(&self) -> f64 {
        let mut parts: Vec<(f64, f64)> = Vec::new();
        let qa = self.question_form.is_some();
        if let Some(g) = self.grounding {
            parts.push((if qa { 0.4 } else { 0.6 }, g));
        }
        parts.push((if qa { 0.15 } else { 0.4 }, self.lengths));
        if let Some(f) = self.question_form {
            parts.push((0.15, f64::from(u8::from(f))));
        }
        if let Some(r) = self.restates_question {
            parts.push((0.15, f64::from(u8::from(!r))));
        }
        if qa {
            parts.push((0.15, f64::from(u8::from(self.lang_match.unwrap_or(true)))));
        }
        let weight: f64 = parts.iter().map(|(w, _)| w).sum();
        let mean = parts.iter().map(|(w, v)| w * v).sum::<f64>() / weight;
        let mut score = ((1.0 + 9.0 * mean) * 10.0).round() / 10.0;
        if self.grounding.is_some_and(|g| g < 1.0 / 3.0) {
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
            "question_form": self.question_form,
            "question_words": self.question_words,
            "answer_words": self.answer_words,
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

pub fn qa(question: &str, answer: &str, context: Option<&str>, lang_tag: Option<&str>) -> Checks {
    let q = question.trim();
    let a = answer.trim();
    let a_tokens = tokens(a);
    let q_tokens: HashSet<String> = tokens(q).into_iter().collect();
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
    let a_ok = (1..=250).contains(&aw);
    let lengths = if aw == 0 {
        0.0
    } else {
        match (q_ok, a_ok) {
            (true, true) => 1.0,
            (false, false) => 0.0,
            _ => 0.5,
        }
    };
    let in_question = a_tokens.iter().filter(|t| q_tokens.contains(*t)).count();
    let restates = a_tokens.len() >= 3 && in_question as f64 >= 0.8 * a_tokens.len() as f64;
    let lang_match = lang_match(q, a, lang_tag);
    Checks {
        grounding: grounding(a, &a_tokens, context),
        question_form: Some(form),
        question_words: Some(qw),
        answer_words: aw,
        lengths,
        restates_question: Some(restates),
        lang_match,
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
        assert_eq!(good.score(), 10.0);
        let bad = qa(
            "LoRA adds matrices to weights",
            "LoRA adds matrices to weights",
            Some(ctx),
            Some("zh"),
        );
        assert_eq!(bad.restates_question, Some(true));
        assert_eq!(bad.lang_match, Some(false));
        assert_eq!(bad.score(), 3.0);
        let invented = qa(
            "When was LoRA published?",
            "In 1850 by Babbage.",
            Some(ctx),
            Some("en"),
        );
        assert!(invented.grounding.is_some_and(|g| g < 0.5));
        assert_eq!(invented.score(), 5.0);
        // Without context the other checks decide.
        assert_eq!(qa("What is LoRA?", "A method.", None, None).score(), 10.0);
        assert_eq!(qa("What is LoRA?", "", None, None).lengths, 0.0);
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
