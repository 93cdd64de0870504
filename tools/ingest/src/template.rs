//! Where a record's text comes from: one field (`--text-field`) or a template over fields
//! (`--template "{question}\n{answer}"`).
//!
//! A field name is first looked up as a top-level key, exactly; when no such key exists and the name
//! holds dots, it is a path: `a.b.0.c` walks objects by key and arrays by index. Strings are used as
//! they are, numbers and booleans as their JSON text; `null` or absence is a missing field; an object
//! or array is an error.
//!
//! Template syntax: `{name}` inserts a field, `{{` and `}}` are literal braces, and the escapes `\n`,
//! `\t`, `\\` stand for a newline, a tab and a backslash (so a shell's plain double quotes work).

use anyhow::{Result, bail};
use serde_json::Value;
use std::borrow::Cow;

/// A record's fields: names and raw JSON texts, in input order.
pub type Fields<'a> = [(Cow<'a, str>, Cow<'a, str>)];

/// The text recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextSpec {
    Field(String),
    Template(Vec<Piece>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Field(String),
}

impl TextSpec {
    /// Parses a template; the error is a usage message.
    pub fn template(src: &str) -> std::result::Result<TextSpec, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = src.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => lit.push('\n'),
                    Some('t') => lit.push('\t'),
                    Some('\\') => lit.push('\\'),
                    Some(other) => {
                        lit.push('\\');
                        lit.push(other);
                    }
                    None => lit.push('\\'),
                },
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(format!(
                        "--template {src:?}: unmatched '}}' (write '}}}}' for a literal one)"
                    ));
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!(
                                    "--template {src:?}: unclosed '{{' (write '{{{{' for a literal one)"
                                ));
                            }
                            Some(ch) => name.push(ch),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("--template {src:?}: empty field name '{{}}'"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name.to_string()));
                }
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(format!(
                "--template {src:?} names no field: write fields as {{name}}"
            ));
        }
        Ok(TextSpec::Template(pieces))
    }

    /// The top-level keys consumed by the text (left out of `meta`): names used whole, not dotted paths.
    pub fn consumed<'s>(&'s self, fields: &Fields<'_>) -> Vec<&'s str> {
        let names: Vec<&str> = match self {
            TextSpec::Field(f) => vec![f.as_str()],
            TextSpec::Template(pieces) => pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Field(f) => Some(f.as_str()),
                    Piece::Lit(_) => None,
                })
                .collect(),
        };
        names
            .into_iter()
            .filter(|n| fields.iter().any(|(k, _)| k == n))
            .collect()
    }

    /// The record's text.
    pub fn render(&self, fields: &Fields<'_>) -> Result<String> {
        match self {
            TextSpec::Field(name) => lookup(fields, name),
            TextSpec::Template(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Field(name) => out.push_str(&lookup(fields, name)?),
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The value of field `name` as text (see the module docs).
pub fn lookup(fields: &Fields<'_>, name: &str) -> Result<String> {
    if let Some((_, raw)) = fields.iter().find(|(k, _)| k == name) {
        return scalar(name, &parse(name, raw)?);
    }
    let mut parts = name.split('.');
    let head = parts.next().unwrap_or_default();
    let Some((_, raw)) = fields
        .iter()
        .find(|(k, _)| k == head)
        .filter(|_| name.contains('.'))
    else {
        bail!("missing field \"{name}\"");
    };
    let mut value = parse(name, raw)?;
    for part in parts {
        value = match value {
            Value::Object(mut map) => map.remove(part).unwrap_or(Value::Null),
            Value::Array(mut items) => match part.parse::<usize>() {
                Ok(i) if i < items.len() => items.swap_remove(i),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
    }
    scalar(name, &value)
}

fn parse(name: &str, raw: &str) -> Result<Value> {
    match serde_json::from_str(raw) {
        Ok(v) => Ok(v),
        Err(e) => bail!("field \"{name}\": {e}"),
    }
}

fn scalar(name: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => bail!("missing field \"{name}\""),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Array(_) | Value::Object(_) => {
            bail!("field \"{name}\" is not text (an array or object)")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        let map: serde_json::Map<String, Value> = serde_json::from_str(json).unwrap_or_default();
        map.into_iter()
            .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v.to_string())))
            .collect()
    }

    #[test]
    fn templates_parse_escapes_and_braces() {
        let t = TextSpec::template(r"Q: {question}\nA: { answer }{{x}}\t\\")
            .unwrap_or(TextSpec::Field(String::new()));
        assert_eq!(
            t,
            TextSpec::Template(vec![
                Piece::Lit("Q: ".into()),
                Piece::Field("question".into()),
                Piece::Lit("\nA: ".into()),
                Piece::Field("answer".into()),
                Piece::Lit("{x}\t\\".into()),
            ])
        );
        for bad in ["{a", "a}", "{}", "no fields", "{a{b}}"] {
            assert!(TextSpec::template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn render_uses_exact_keys_then_dotted_paths() -> Result<()> {
        let f = fields(
            r#"{"q":"why?","a.b":"exact","a":{"b":"nested","n":[10,{"x":true}]},"n":3,"z":null}"#,
        );
        assert_eq!(lookup(&f, "q")?, "why?");
        assert_eq!(lookup(&f, "a.b")?, "exact");
        assert_eq!(lookup(&f, "a.n.0")?, "10");
        assert_eq!(lookup(&f, "a.n.1.x")?, "true");
        assert_eq!(lookup(&f, "n")?, "3");
        assert_eq!(
            lookup(&f, "z").unwrap_err().to_string(),
            "missing field \"z\""
        );
        assert_eq!(
            lookup(&f, "nope").unwrap_err().to_string(),
            "missing field \"nope\""
        );
        assert_eq!(
            lookup(&f, "a.n.9").unwrap_err().to_string(),
            "missing field \"a.n.9\""
        );
        assert!(
            lookup(&f, "a")
                .unwrap_err()
                .to_string()
                .contains("not text")
        );
        let t = TextSpec::template(r"{q}\n{a.b}|{a.n.0}").map_err(anyhow::Error::msg)?;
        assert_eq!(t.render(&f)?, "why?\nexact|10");
        assert_eq!(t.consumed(&f), ["q", "a.b"]);
        let t = TextSpec::template("{a.b.c} {q}").map_err(anyhow::Error::msg)?;
        assert_eq!(
            t.consumed(&f),
            ["q"],
            "dotted paths leave their parent in meta"
        );
        Ok(())
    }
}
