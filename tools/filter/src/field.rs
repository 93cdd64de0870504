//! Field access by dotted path on raw records, and the few value kinds predicates compare.

use anyhow::Result;
use ftkit_core::RawRecord;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A raw JSON value seen by its kind.
#[derive(Debug, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    /// An array or object, as JSON text.
    Other(&'a str),
}

impl<'a> Val<'a> {
    pub fn of(raw: &'a RawValue) -> Result<Self> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            Some(b'"') => {
                if text.contains('\\') {
                    Val::Str(Cow::Owned(serde_json::from_str::<String>(text)?))
                } else {
                    Val::Str(Cow::Borrowed(&text[1..text.len() - 1]))
                }
            }
            Some(b'n') => Val::Null,
            Some(b't') => Val::Bool(true),
            Some(b'f') => Val::Bool(false),
            Some(b'{' | b'[') => Val::Other(text),
            _ => Val::Num(text.parse::<f64>()?),
        })
    }

    /// The value as text: a string's contents, anything else as its JSON text.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Val::Null => Cow::Borrowed("null"),
            Val::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Val::Num(n) => Cow::Owned(n.to_string()),
            Val::Str(s) => Cow::Borrowed(s.as_ref()),
            Val::Other(t) => Cow::Borrowed(t),
        }
    }
}

/// The text of the field at `path`, `None` when missing or null (numbers and objects as JSON text).
pub fn text_at<'a>(rec: &RawRecord<'a>, path: &str) -> Result<Option<Cow<'a, str>>> {
    let Some(raw) = rec.lookup(path)? else {
        return Ok(None);
    };
    Ok(match Val::of(raw)? {
        Val::Null => None,
        Val::Str(s) => Some(s),
        Val::Other(t) => Some(Cow::Borrowed(t)),
        _ => Some(Cow::Borrowed(raw.get())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_at_decodes_strings_at_dotted_paths() -> Result<()> {
        let rec =
            RawRecord::parse(r#"{"score":{"overall":8.5,"x":{"y":"z"}},"a.b":1,"s":"t\"u"}"#)?;
        assert_eq!(text_at(&rec, "score.x.y")?.as_deref(), Some("z"));
        assert!(text_at(&rec, "score.missing")?.is_none());
        assert_eq!(text_at(&rec, "s")?.as_deref(), Some("t\"u"));
        Ok(())
    }
}
