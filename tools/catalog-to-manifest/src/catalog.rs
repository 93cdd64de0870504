//! Reading a catalog: a JSON object with a `datasets` array, a bare JSON array, or JSONL.
//!
//! Every entry keeps the `path:line` where it starts, so an error can point at it. A pretty-printed
//! object's first line (`{`) is not JSON on its own, which tells it apart from JSONL; a one-line
//! object with a `datasets` array is a catalog too.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One catalog entry and where it starts.
pub struct Located {
    /// `path:line`.
    pub loc: String,
    pub fields: Map<String, Value>,
}

#[derive(Deserialize)]
struct Wrapper<'a> {
    #[serde(borrow)]
    datasets: Vec<&'a RawValue>,
}

/// Parses the catalog text `text` read from `name` (shown in messages).
pub fn parse(name: &str, bytes: &[u8]) -> Result<Vec<Located>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8"))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| syntax(name, &e))?;
        return items.iter().map(|raw| entry(name, text, raw)).collect();
    }
    let first_line = trimmed.lines().next().unwrap_or("");
    let first_is_whole = serde_json::from_str::<Value>(first_line).is_ok();
    let single_value = serde_json::from_str::<Value>(text).ok();
    match single_value {
        Some(Value::Object(ref obj)) if obj.contains_key("datasets") => {
            let wrapper: Wrapper = serde_json::from_str(text).map_err(|e| syntax(name, &e))?;
            wrapper
                .datasets
                .iter()
                .map(|raw| entry(name, text, raw))
                .collect()
        }
        _ if first_is_whole || trimmed.is_empty() => jsonl(name, text),
        _ => {
            // Neither JSONL nor a whole value: report the document's own syntax error.
            let err = serde_json::from_str::<Value>(text)
                .err()
                .map(|e| syntax(name, &e));
            Err(err.unwrap_or_else(|| {
                anyhow::anyhow!(
                    "{name}: a catalog is a JSON object with a \"datasets\" array, a JSON array or JSONL"
                )
            }))
        }
    }
}

fn jsonl(name: &str, text: &str) -> Result<Vec<Located>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let loc = format!("{name}:{}", i + 1);
        let value: Value = serde_json::from_str(line).with_context(|| loc.clone())?;
        out.push(object(loc, value)?);
    }
    Ok(out)
}

fn entry(name: &str, text: &str, raw: &RawValue) -> Result<Located> {
    // A borrowed RawValue is a slice of `text`: its address gives its offset, hence its line.
    let offset = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    let line = text
        .get(..offset)
        .map_or(1, |head| head.bytes().filter(|&b| b == b'\n').count() + 1);
    let loc = format!("{name}:{line}");
    let value: Value = serde_json::from_str(raw.get()).with_context(|| loc.clone())?;
    object(loc, value)
}

fn object(loc: String, value: Value) -> Result<Located> {
    match value {
        Value::Object(fields) => Ok(Located { loc, fields }),
        other => bail!(
            "{loc}: an entry must be a JSON object, not {}",
            kind(&other)
        ),
    }
}

fn syntax(name: &str, e: &serde_json::Error) -> anyhow::Error {
    anyhow::anyhow!("{name}:{}: {e}", e.line())
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locs(text: &str) -> Vec<String> {
        parse("c", text.as_bytes())
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.loc)
            .collect()
    }

    #[test]
    fn entries_know_their_line_in_every_format() {
        assert_eq!(
            locs("{\n \"datasets\": [\n  {\"name\": \"a\"},\n\n  {\"name\": \"b\"}\n ]\n}\n"),
            ["c:3", "c:5"]
        );
        assert_eq!(
            locs("[{\"name\": \"a\"},\n{\"name\": \"b\"}]"),
            ["c:1", "c:2"]
        );
        assert_eq!(
            locs("{\"name\": \"a\"}\n\n{\"name\": \"b\"}\n"),
            ["c:1", "c:3"]
        );
        assert_eq!(locs("{\"datasets\": [{\"name\": \"a\"}]}"), ["c:1"]);
    }

    #[test]
    fn broken_documents_name_their_line() {
        let e = parse("c", b"{\n \"datasets\": [\n  {\"name\" \"a\"}\n ]\n}\n").err();
        assert!(format!("{e:?}").contains("c:3:"), "{e:?}");
        let e = parse("c", b"{\"name\": \"a\"}\n{\"name\":\n{\"name\": \"b\"}\n").err();
        assert!(format!("{e:?}").contains("c:2"), "{e:?}");
        let e = parse("c", b"[1]").err();
        assert!(
            format!("{e:?}").contains("c:1: an entry must be a JSON object, not a number"),
            "{e:?}"
        );
    }
}
