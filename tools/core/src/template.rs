//! `{field}` templates: the one template syntax of every tool (ft-ingest `--template`, ft-to-alpaca
//! `--template` and `--input-template`).
//!
//! The rule is read in the template's source, as people type it on a command line (where a shell's
//! quotes keep `\n` as two characters):
//! - `{path}` inserts a field; the path is a dotted path ([`crate::RawRecord::lookup`]), spaces around
//!   it are ignored;
//! - `{{` and `}}` are a literal `{` and `}`;
//! - `\n`, `\t` and `\\` are a newline, a tab and a backslash; any other backslash stays as written.
//!
//! How a field's value becomes text (strings, numbers, lists) is the calling tool's business: it
//! passes that rule to [`Template::render`].

use anyhow::{Result, bail};
use std::borrow::Cow;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(String),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `src`; the error quotes it, and the caller adds the option's name.
    pub fn parse(src: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = src.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some('n') => {
                        chars.next();
                        lit.push('\n');
                    }
                    Some('t') => {
                        chars.next();
                        lit.push('\t');
                    }
                    Some('\\') => {
                        chars.next();
                        lit.push('\\');
                    }
                    _ => lit.push('\\'),
                },
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => bail!("{src:?}: unmatched '}}' (write '}}}}' for a literal one)"),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                bail!("{src:?}: unclosed '{{' (write '{{{{' for a literal one)")
                            }
                            Some(ch) => name.push(ch),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        bail!("{src:?}: empty field name '{{}}'");
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
        Ok(Self { pieces })
    }

    /// The field paths the template names, in order (repeats included).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Fills the template; `field` turns a path into its text (or the error that stops the record).
    pub fn render<'v>(
        &self,
        mut field: impl FnMut(&str) -> Result<Cow<'v, str>>,
    ) -> Result<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(f) => out.push_str(&field(f)?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &Template) -> Result<String> {
        t.render(|f| Ok(Cow::Owned(format!("<{f}>"))))
    }

    #[test]
    fn escapes_and_braces_are_read_in_the_source() -> Result<()> {
        let t = Template::parse(r"Q: {question}\nA: { a.b.0 }{{x}}\t\\ \q \")?;
        assert_eq!(render(&t)?, "Q: <question>\nA: <a.b.0>{x}\t\\ \\q \\");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["question", "a.b.0"]);
        // `\\n` is a backslash then `n`, not a newline.
        assert_eq!(render(&Template::parse(r"{a}\\n")?)?, "<a>\\n");
        assert_eq!(render(&Template::parse("no fields")?)?, "no fields");
        Ok(())
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (bad, why) in [
            ("{a", "unclosed '{'"),
            ("{a{b}}", "unclosed '{'"),
            ("a}", "unmatched '}'"),
            ("{}", "empty field name"),
            ("{ }", "empty field name"),
        ] {
            match Template::parse(bad) {
                Ok(t) => panic!("{bad:?} parsed as {t:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{bad:?}: {e}"),
            }
        }
    }

    #[test]
    fn a_field_error_stops_the_render() {
        let t = Template::parse("{a} {b}").unwrap_or_else(|e| panic!("{e}"));
        let err = t
            .render(|f| match f {
                "a" => Ok(Cow::Borrowed("x")),
                _ => bail!("missing field \"{f}\""),
            })
            .map_err(|e| e.to_string());
        assert_eq!(err, Err("missing field \"b\"".to_string()));
    }
}
