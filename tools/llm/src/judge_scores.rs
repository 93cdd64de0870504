//! Judge scores from a local model's probabilities rather than its sampled digits (the G-Eval
//! rule): where a score starts, the reply's value is the probability-weighted mean of the
//! scores the allowed tokens spell. A small model's greedy digit is nearly always the same one (a
//! 135M judge answers 1 for everything); the mean keeps what it does tell apart.
//!
//! A token spells a score when its bytes are an integer 1..=10. With tokenizers that split
//! digits, `1` stands for itself although the model might have gone on to `10` or `1.5`: the
//! mean leans low for near-perfect pairs, the same way for every pair.

use ftkit_model::constrain::TokenBytes;
use serde_json::Value;

/// The score fields of a judgement, as `parse::judgement` reads them.
pub const SCORE_KEYS: [&str; 5] = ["relevance", "accuracy", "clarity", "grounding", "overall"];

/// The tokens that spell a score, with their values.
#[derive(Debug, Clone)]
pub struct ScoreTokens {
    values: Vec<(u32, f64)>,
}

impl ScoreTokens {
    pub fn new(vocab: &TokenBytes) -> Self {
        let values = (0..vocab.len() as u32)
            .filter_map(|id| {
                let text = std::str::from_utf8(vocab.get(id)?).ok()?;
                let v: u8 = text
                    .parse()
                    .ok()
                    .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))?;
                (1..=10).contains(&v).then_some((id, f64::from(v)))
            })
            .collect();
        Self { values }
    }

    /// The probability-weighted score over the score tokens the row allows (`-inf`: not allowed);
    /// `None` when it allows none.
    pub fn expectation(&self, logits: &[f32]) -> Option<f64> {
        let allowed: Vec<(f64, f64)> = self
            .values
            .iter()
            .filter_map(|&(id, v)| {
                let l = *logits.get(id as usize)?;
                (l > f32::NEG_INFINITY).then_some((f64::from(l), v))
            })
            .collect();
        let max = allowed
            .iter()
            .map(|&(l, _)| l)
            .fold(f64::NEG_INFINITY, f64::max);
        if allowed.is_empty() || !max.is_finite() {
            return None;
        }
        let (mut total, mut weighted) = (0.0, 0.0);
        for (l, v) in allowed {
            let p = (l - max).exp();
            total += p;
            weighted += p * v;
        }
        Some(weighted / total)
    }
}

/// The score field whose value `text` (a judgement being written) is about to start:
/// `{"relevance":7,"accuracy":` → `accuracy`.
pub fn pending_key(text: &[u8]) -> Option<&'static str> {
    let head = text.strip_suffix(b"\":")?;
    let start = head.iter().rposition(|&b| b == b'"')? + 1;
    SCORE_KEYS
        .into_iter()
        .find(|k| k.as_bytes() == &head[start..])
}

/// A judgement reply with its scores replaced by `weighted` (one decimal, as the judge writes
/// them); `None` when the reply is not an object holding every weighted key.
pub fn reweigh(reply: &[u8], weighted: &[(&'static str, f64)]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(reply).ok()?;
    let obj = v.as_object_mut()?;
    for &(key, score) in weighted {
        let slot = obj.get_mut(key)?;
        let rounded = format!("{:.1}", score.clamp(1.0, 10.0));
        *slot = Value::Number(rounded.parse().ok()?);
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> TokenBytes {
        let pieces = ["{", "1", "2", "10", "9", "0", "11", "x1", "\":"];
        TokenBytes::new(
            pieces.iter().map(|p| Some(p.as_bytes().to_vec())).collect(),
            Vec::new(),
        )
    }

    #[test]
    fn expectation_weighs_the_allowed_score_tokens() {
        let t = ScoreTokens::new(&vocab());
        // Scores: id 1 → 1, id 2 → 2, id 3 → 10, id 4 → 9; "0", "11", "x1" spell none.
        assert_eq!(t.values, vec![(1, 1.0), (2, 2.0), (3, 10.0), (4, 9.0)]);
        let ninf = f32::NEG_INFINITY;
        // Equal logits for 1 and 9 only: (1 + 9) / 2; the huge logit of "0" does not count.
        let row = [0.0, 0.5, ninf, ninf, 0.5, 40.0, 40.0, 40.0, 0.0];
        assert_eq!(t.expectation(&row), Some(5.0));
        // p(2) = e / (1 + e) against p(1): 1 + e / (1 + e).
        let row = [0.0, 0.0, 1.0, ninf, ninf, 0.0, 0.0, 0.0, 0.0];
        let e = 1f64.exp();
        assert!((t.expectation(&row).unwrap() - (1.0 + e / (1.0 + e))).abs() < 1e-12);
        assert_eq!(t.expectation(&[ninf; 9]), None);
    }

    #[test]
    fn pending_key_names_the_score_about_to_start() {
        assert_eq!(pending_key(br#"{"relevance":"#), Some("relevance"));
        assert_eq!(
            pending_key(br#"{"relevance":7,"overall":"#),
            Some("overall")
        );
        assert_eq!(pending_key(br#"{"relevance":7,"rationale":"#), None);
        assert_eq!(pending_key(br#"{"relevance":7"#), None);
    }

    #[test]
    fn reweigh_replaces_the_scores_and_keeps_the_rest() {
        let reply = br#"{"relevance":1,"accuracy":1,"clarity":1,"grounding":1,"overall":1,"rationale":"ok"}"#;
        let out = reweigh(reply, &[("relevance", 7.26), ("overall", 11.0)]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["relevance"], serde_json::json!(7.3));
        assert_eq!(v["overall"], serde_json::json!(10.0));
        assert_eq!(v["accuracy"], serde_json::json!(1));
        assert_eq!(v["rationale"], "ok");
        assert_eq!(reweigh(b"{\"overall\":2}", &[("accuracy", 3.0)]), None);
    }
}
