//! The few value kinds predicates compare (fields are found by the core's `RawRecord::lookup`).

use anyhow::Result;
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
