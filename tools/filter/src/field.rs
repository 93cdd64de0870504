//! Field access by dotted path on raw records, and the few value kinds predicates compare.

use anyhow::Result;
use ftkit_core::RawRecord;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The raw value at `path`: a top-level key named exactly `path` wins, else the dots walk into objects
/// (`score.overall`). `None` when any step is missing or is not an object.
pub fn lookup<'a>(rec: &RawRecord<'a>, path: &str) -> Result<Option<&'a RawValue>> {
    if let Some(v) = rec.get(path) {
        return Ok(Some(v));
    }
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return Ok(None);
    };
    let Some(mut value) = rec.get(first) else {
        return Ok(None);
    };
    for part in parts {
        if !value.get().starts_with('{') {
            return Ok(None);
        }
        match member(value, part)? {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(value))
}

/// The value of `key` in the JSON object `object`, without allocating (the hot path of dotted paths).
fn member<'a>(object: &'a RawValue, key: &str) -> Result<Option<&'a RawValue>> {
    struct Find<'k>(&'k str);
    impl<'de, 'k> Visitor<'de> for Find<'k> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if found.is_none() && k == self.0 {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(object.get());
    Ok(de.deserialize_map(Find(key))?)
}

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
    let Some(raw) = lookup(rec, path)? else {
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
    fn dotted_paths_walk_objects_and_exact_keys_win() -> Result<()> {
        let rec =
            RawRecord::parse(r#"{"score":{"overall":8.5,"x":{"y":"z"}},"a.b":1,"s":"t\"u"}"#)?;
        assert_eq!(lookup(&rec, "score.overall")?.map(|v| v.get()), Some("8.5"));
        assert_eq!(text_at(&rec, "score.x.y")?.as_deref(), Some("z"));
        assert_eq!(lookup(&rec, "a.b")?.map(|v| v.get()), Some("1"));
        assert!(lookup(&rec, "score.missing")?.is_none());
        assert!(lookup(&rec, "s.deeper")?.is_none());
        assert_eq!(text_at(&rec, "s")?.as_deref(), Some("t\"u"));
        Ok(())
    }
}
