//! `{field}` templates and field access by dotted path.

use anyhow::{Result, bail};
use ftkit_core::RawRecord;
use std::borrow::Cow;

/// A field as text: a string's contents, an array of strings joined by blank lines, anything else as
/// JSON text; `None` when missing or null.
pub fn text_at<'a>(rec: &RawRecord<'a>, path: &str) -> Result<Option<Cow<'a, str>>> {
    let Some(raw) = rec.lookup(path)? else {
        return Ok(None);
    };
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => Some(Cow::Owned(serde_json::from_str::<String>(text)?)),
        Some(b'[') => match serde_json::from_str::<Vec<String>>(text) {
            Ok(items) => Some(Cow::Owned(items.join("\n\n"))),
            Err(_) => Some(Cow::Borrowed(text)),
        },
        _ => Some(Cow::Borrowed(text)),
    })
}

/// A field that must be text: a string or an array of strings (joined by blank lines).
pub fn require_text<'a>(rec: &RawRecord<'a>, path: &str) -> Result<Cow<'a, str>> {
    let Some(raw) = rec.lookup(path)? else {
        bail!("missing field \"{path}\"")
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => bail!("missing field \"{path}\""),
        Some(b'"' | b'[') => match text_at(rec, path)? {
            Some(t)
                if text.starts_with('"') || serde_json::from_str::<Vec<String>>(text).is_ok() =>
            {
                Ok(t)
            }
            _ => bail!("field \"{path}\" is not a string or a list of strings"),
        },
        _ => bail!("field \"{path}\" is not a string"),
    }
}

#[derive(Debug, PartialEq)]
enum Piece {
    Lit(String),
    Field(String),
}

/// A parsed `{field}` template; `{{` and `}}` stand for literal braces.
#[derive(Debug)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => bail!("template {text:?}: unclosed '{{'"),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() || name.contains('{') {
                        bail!("template {text:?}: bad placeholder {{{name}}}");
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => bail!("template {text:?}: lone '}}' (write '}}}}')"),
                other => lit.push(other),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self { pieces })
    }

    /// Fills the placeholders from `rec`; a missing field is an error.
    pub fn render(&self, rec: &RawRecord<'_>) -> Result<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(f) => match text_at(rec, f)? {
                    Some(t) => out.push_str(&t),
                    None => bail!("missing field \"{f}\" (used by the template)"),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_fields_and_escape_braces() -> Result<()> {
        let rec = RawRecord::parse(r#"{"q":"Why?","meta":{"n":3},"list":["a","b"]}"#)?;
        let t = Template::parse("{{json}} {q} n={meta.n} [{list}]")?;
        assert_eq!(t.render(&rec)?, "{json} Why? n=3 [a\n\nb]");
        assert!(Template::parse("x {q").is_err());
        assert!(Template::parse("x } y").is_err());
        assert!(Template::parse("{}").is_err());
        let err = Template::parse("{nope}")?
            .render(&rec)
            .expect_err("missing field")
            .to_string();
        assert!(err.contains("missing field \"nope\""), "{err}");
        Ok(())
    }

    #[test]
    fn required_text_accepts_strings_and_string_lists() -> Result<()> {
        let rec = RawRecord::parse(r#"{"s":"x","l":["a","b"],"n":1,"m":[1],"z":null}"#)?;
        assert_eq!(require_text(&rec, "s")?, "x");
        assert_eq!(require_text(&rec, "l")?, "a\n\nb");
        assert!(require_text(&rec, "n").is_err());
        assert!(require_text(&rec, "m").is_err());
        assert!(require_text(&rec, "z").is_err(), "null counts as missing");
        Ok(())
    }
}
