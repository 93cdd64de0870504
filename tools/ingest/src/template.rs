//! Where a record's text comes from: one field (`--text-field`) or a template over fields
//! (`--template "{question}\n{answer}"`, the core's [`Template`] syntax).
//!
//! Fields are found by the core's one path syntax ([`RawRecord::lookup`]): a top-level key named
//! exactly wins, else `a.b.0.c` walks objects by key and arrays by index. Strings are used as they
//! are, numbers and booleans as their JSON text; `null` or absence is a missing field; an object or
//! array is an error.

use anyhow::{Result, bail};
use ftkit_core::RawRecord;
use ftkit_core::jsonl::str_of;
use ftkit_core::template::Template;
use std::borrow::Cow;

/// The text recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextSpec {
    Field(String),
    Template(Template),
}

impl TextSpec {
    /// Parses `--template`; the error is a usage message.
    pub fn template(src: &str) -> std::result::Result<TextSpec, String> {
        let t = Template::parse(src).map_err(|e| format!("--template {e:#}"))?;
        if t.fields().next().is_none() {
            return Err(format!(
                "--template {src:?} names no field: write fields as {{name}}"
            ));
        }
        Ok(TextSpec::Template(t))
    }

    /// The top-level keys consumed by the text (left out of `meta`): names used whole, not dotted paths.
    pub fn consumed<'s>(&'s self, rec: &RawRecord<'_>) -> Vec<&'s str> {
        let names: Vec<&str> = match self {
            TextSpec::Field(f) => vec![f.as_str()],
            TextSpec::Template(t) => t.fields().collect(),
        };
        names.into_iter().filter(|n| rec.get(n).is_some()).collect()
    }

    /// The record's text.
    pub fn render<'a>(&self, rec: &RawRecord<'a>) -> Result<Cow<'a, str>> {
        match self {
            TextSpec::Field(name) => lookup(rec, name),
            TextSpec::Template(t) => t.render(|name| lookup(rec, name)).map(Cow::Owned),
        }
    }
}

/// The value of field `name` as text (see the module docs).
pub fn lookup<'a>(rec: &RawRecord<'a>, name: &str) -> Result<Cow<'a, str>> {
    let Some(raw) = rec.lookup(name)? else {
        bail!("missing field \"{name}\"");
    };
    if let Some(s) = str_of(raw)? {
        return Ok(s);
    }
    match raw.get().as_bytes().first() {
        Some(b'n') => bail!("missing field \"{name}\""),
        Some(b'[' | b'{') => bail!("field \"{name}\" is not text (an array or object)"),
        // Numbers and booleans as their JSON text.
        _ => Ok(Cow::Borrowed(raw.get())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_must_name_a_field() {
        assert!(TextSpec::template(r"Q: {question}\nA: {answer}").is_ok());
        for bad in ["{a", "a}", "{}", "no fields", "{a{b}}"] {
            assert!(TextSpec::template(bad).is_err(), "{bad}");
        }
        let err = TextSpec::template("no fields").unwrap_err();
        assert!(err.contains("names no field"), "{err}");
    }

    #[test]
    fn render_uses_exact_keys_then_dotted_paths() -> Result<()> {
        let rec = RawRecord::parse(
            r#"{"q":"why?","a.b":"exact","a":{"b":"nested","n":[10,{"x":true}]},"n":3,"z":null}"#,
        )?;
        let text = |name: &str| {
            lookup(&rec, name)
                .map(String::from)
                .map_err(|e| e.to_string())
        };
        assert_eq!(text("q"), Ok("why?".into()));
        assert_eq!(text("a.b"), Ok("exact".into()));
        assert_eq!(text("a.n.0"), Ok("10".into()));
        assert_eq!(text("a.n.1.x"), Ok("true".into()));
        assert_eq!(text("n"), Ok("3".into()));
        assert_eq!(text("z"), Err("missing field \"z\"".into()));
        assert_eq!(text("nope"), Err("missing field \"nope\"".into()));
        assert_eq!(text("a.n.9"), Err("missing field \"a.n.9\"".into()));
        assert!(text("a").unwrap_err().contains("not text"));
        let t = TextSpec::template(r"{q}\n{a.b}|{a.n.0}").map_err(anyhow::Error::msg)?;
        assert_eq!(t.render(&rec)?, "why?\nexact|10");
        assert_eq!(t.consumed(&rec), ["q", "a.b"]);
        let t = TextSpec::template("{a.b.c} {q}").map_err(anyhow::Error::msg)?;
        assert_eq!(
            t.consumed(&rec),
            ["q"],
            "dotted paths leave their parent in meta"
        );
        Ok(())
    }
}
