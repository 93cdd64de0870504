//! Field values as text, by dotted path; templates use them through the core's [`Template`].

use anyhow::{Result, bail};
use ftkit_core::RawRecord;
use ftkit_core::template::Template;
use std::borrow::Cow;

/// A field as text: a string's contents, an array of strings joined by blank lines, anything else as
/// JSON text; `None` when missing or null.
pub fn text_at<'a>(rec: &RawRecord<'a>, path: &str) -> Result<Option<Cow<'a, str>>> {
    if let Some(raw) = rec.lookup(path)?
        && raw.get().starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<String>>(raw.get())
    {
        return Ok(Some(Cow::Owned(items.join("\n\n"))));
    }
    rec.text_at(path)
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

/// Fills `template` from `rec`, each field by [`text_at`]; a missing field is an error.
pub fn render(template: &Template, rec: &RawRecord<'_>) -> Result<String> {
    template.render(|f| match text_at(rec, f)? {
        Some(t) => Ok(t),
        None => bail!("missing field \"{f}\" (used by the template)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_fields_with_their_text() -> Result<()> {
        let rec = RawRecord::parse(r#"{"q":"Why?","meta":{"n":3},"list":["a","b"],"t":[1,"x"]}"#)?;
        let t = Template::parse(r"{{json}} {q}\nn={meta.n} [{list}] {list.1} {t}")?;
        assert_eq!(render(&t, &rec)?, "{json} Why?\nn=3 [a\n\nb] b [1,\"x\"]");
        let err = render(&Template::parse("{nope}")?, &rec)
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
