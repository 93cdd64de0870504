//! Lenient parsing of model output into JSON: code fences, prose before or after the JSON, and
//! trailing commas are tolerated.

use serde_json::Value;

/// Parses the first JSON object or array found in `text`.
pub fn lenient_json(text: &str) -> Result<Value, String> {
    // Valid JSON first: its strings may quote a code fence of their own.
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return Ok(v);
    }
    let body = strip_fences(text);
    if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
        return Ok(v);
    }
    let start = body
        .find(['{', '['])
        .ok_or_else(|| "no JSON object in the output".to_string())?;
    let open = body.as_bytes()[start];
    let close = if open == b'{' { '}' } else { ']' };
    let end = body
        .rfind(close)
        .filter(|&e| e > start)
        .ok_or_else(|| "unterminated JSON in the output".to_string())?;
    let candidate = remove_trailing_commas(&body[start..=end]);
    serde_json::from_str(&candidate).map_err(|e| format!("output is not valid JSON ({e})"))
}

/// The inside of the first ``` fence, or the text itself.
fn strip_fences(text: &str) -> &str {
    let Some(open) = text.find("```") else {
        return text;
    };
    let after = &text[open + 3..];
    // Skip a language tag up to the end of the line.
    let body_start = after.find('\n').map_or(0, |i| i + 1);
    let body = &after[body_start..];
    match body.find("```") {
        Some(close) => &body[..close],
        None => body,
    }
}

/// Drops commas that directly precede `}` or `]` (outside strings).
fn remove_trailing_commas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_str = false;
    let mut escaped = false;
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        } else if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Question-answer pairs from a reply: `{"pairs":[...]}`, a bare array, or one `{"question","answer"}`.
pub fn qa_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let v = lenient_json(text)?;
    let list = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => match ["pairs", "qa_pairs", "qa", "questions", "items"]
            .iter()
            .find_map(|k| o.get(*k))
        {
            Some(Value::Array(a)) => a.clone(),
            _ if o.contains_key("question") => vec![v.clone()],
            _ => return Err("no \"pairs\" array in the output".into()),
        },
        _ => return Err("output is neither an object nor an array".into()),
    };
    let mut pairs = Vec::new();
    for item in list {
        let q = ["question", "q", "Q"]
            .iter()
            .find_map(|k| item.get(*k))
            .and_then(Value::as_str);
        let a = ["answer", "a", "A"]
            .iter()
            .find_map(|k| item.get(*k))
            .and_then(Value::as_str);
        if let (Some(q), Some(a)) = (q, a) {
            let (q, a) = (q.trim(), a.trim());
            // Small models copy the prompt's `"..."` placeholders: text without a letter or a
            // digit says nothing.
            let says_something = |s: &str| s.chars().any(char::is_alphanumeric);
            if says_something(q) && says_something(a) {
                pairs.push((q.to_string(), a.to_string()));
            }
        }
    }
    if pairs.is_empty() {
        return Err(
            "no pair with a question and an answer (letters or digits) in the output".into(),
        );
    }
    Ok(pairs)
}

/// A summary from `{"summary": ...}` (or a plain-text reply that is not JSON).
pub fn summary(text: &str) -> Result<String, String> {
    match lenient_json(text) {
        Ok(v) => v
            .get("summary")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "no \"summary\" string in the output".into()),
        Err(_) if !text.trim().is_empty() && !text.contains('{') => Ok(text.trim().to_string()),
        Err(e) => Err(e),
    }
}

/// A judge's rubric: scores 1-10 (clamped) and a rationale.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Judgement {
    pub relevance: f64,
    pub accuracy: f64,
    pub clarity: f64,
    pub grounding: f64,
    pub overall: f64,
    pub rationale: String,
}

pub fn judgement(text: &str) -> Result<Judgement, String> {
    let v = lenient_json(text)?;
    let score = |k: &str| -> Result<f64, String> {
        let x = match v.get(k) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        x.filter(|x| x.is_finite())
            .map(|x| x.clamp(1.0, 10.0))
            .ok_or_else(|| format!("no numeric \"{k}\" in the output"))
    };
    let rationale = v
        .get("rationale")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rationale = rationale.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(Judgement {
        relevance: score("relevance")?,
        accuracy: score("accuracy")?,
        clarity: score("clarity")?,
        grounding: score("grounding")?,
        overall: score("overall")?,
        rationale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_quoting_a_code_fence_is_taken_whole() {
        let text = r#"{"pairs":[{"question":"How?","answer":"Run:\n```\nft-chunk\n```"}]}"#;
        assert_eq!(
            qa_pairs(text).unwrap(),
            [("How?".to_string(), "Run:\n```\nft-chunk\n```".to_string())]
        );
    }

    #[test]
    fn tolerates_fences_prose_and_trailing_commas() {
        let t = "Sure! Here you go:\n```json\n{\"pairs\": [{\"question\": \"Q, really?\", \"answer\": \"A\",},],}\n```\nEnjoy.";
        assert_eq!(qa_pairs(t), Ok(vec![("Q, really?".into(), "A".into())]));
        assert_eq!(
            qa_pairs("[{\"q\":\"x\",\"a\":\"y\"}]"),
            Ok(vec![("x".into(), "y".into())])
        );
        assert_eq!(
            qa_pairs("Here: {\"question\":\"x\",\"answer\":\"y\"} done"),
            Ok(vec![("x".into(), "y".into())])
        );
        assert!(qa_pairs("I cannot do that.").is_err());
        assert!(qa_pairs("{\"pairs\": []}").is_err());
        // A comma inside a string before a brace stays.
        assert_eq!(remove_trailing_commas("{\"a\":\",}\",}"), "{\"a\":\",}\"}");
    }

    #[test]
    fn placeholder_pairs_are_dropped() {
        let t = r#"{"pairs":[{"question":"...","answer":"..."},{"question":"Why 42?","answer":" - "},{"question":"Who?","answer":"Ada, 1843."}]}"#;
        assert_eq!(qa_pairs(t), Ok(vec![("Who?".into(), "Ada, 1843.".into())]));
        assert!(qa_pairs(r#"{"pairs":[{"question":"...","answer":"..."}]}"#).is_err());
    }

    #[test]
    fn judgement_clamps_and_requires_scores() {
        let j = judgement(
            "{\"relevance\":9,\"accuracy\":\"8\",\"clarity\":12,\"grounding\":0,\"overall\":8.5,\"rationale\":\"ok\\nfine\"}",
        );
        let j = j.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (j.relevance, j.accuracy, j.clarity, j.grounding, j.overall),
            (9.0, 8.0, 10.0, 1.0, 8.5)
        );
        assert_eq!(j.rationale, "ok fine");
        assert!(judgement("{\"overall\": 5}").is_err());
    }
}
