//! `--where 'field OP value'` predicates.
//!
//! Operators: `==`, `!=`, `<`, `<=`, `>`, `>=`, `contains`, `matches` (a regex). The value is JSON when
//! it parses as a JSON scalar (`7`, `"a b"`, `true`, `null`), else the bare text (`lang == en`).
//! Comparisons need matching kinds: numbers compare as numbers, strings as strings (byte order); a
//! missing or null field fails every operator except `!=` (and `== null` matches it). `contains` is a
//! substring test on a string field, or an element test on an array field; `matches` tests a string
//! field against the regex (unanchored).

use crate::field::Val;
use anyhow::{Result, bail};
use ftkit_core::RawRecord;
use regex::Regex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    Matches,
}

/// The literal on the right-hand side.
#[derive(Debug)]
enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    /// A string (quoted JSON or bare text).
    Str(String),
}

#[derive(Debug)]
pub struct Where {
    /// The expression as given, for messages and `reject_reason`.
    pub text: String,
    field: String,
    op: Op,
    lit: Lit,
    /// The value as text for `contains`: a JSON string's contents, anything else as written.
    needle: String,
    regex: Option<Regex>,
}

impl Where {
    /// Parses `field OP value`; the error explains what is wrong.
    pub fn parse(expr: &str) -> Result<Self> {
        let trimmed = expr.trim();
        let Some((field, rest)) = trimmed.split_once(char::is_whitespace) else {
            bail!("--where {expr:?}: expected 'FIELD OP VALUE'");
        };
        let rest = rest.trim_start();
        let (op_text, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let op = match op_text {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "contains" => Op::Contains,
            "matches" => Op::Matches,
            other => bail!(
                "--where {expr:?}: unknown operator {other:?} (use ==, !=, <, <=, >, >=, contains, matches)"
            ),
        };
        let value = value.trim();
        if value.is_empty() {
            bail!("--where {expr:?}: missing value");
        }
        let lit = match serde_json::from_str::<serde_json::Value>(value) {
            Ok(serde_json::Value::Null) => Lit::Null,
            Ok(serde_json::Value::Bool(b)) => Lit::Bool(b),
            Ok(serde_json::Value::Number(n)) => Lit::Num(n.as_f64().unwrap_or(f64::NAN)),
            Ok(serde_json::Value::String(s)) => Lit::Str(s),
            _ => Lit::Str(value.to_string()),
        };
        let needle = match &lit {
            Lit::Str(s) => s.clone(),
            _ => value.to_string(),
        };
        let regex = if op == Op::Matches {
            match Regex::new(&needle) {
                Ok(r) => Some(r),
                Err(e) => bail!("--where {expr:?}: bad regex: {e}"),
            }
        } else {
            None
        };
        Ok(Self {
            text: trimmed.to_string(),
            field: field.to_string(),
            op,
            lit,
            needle,
            regex,
        })
    }

    /// True when the record passes.
    pub fn eval(&self, rec: &RawRecord<'_>) -> Result<bool> {
        let value = match rec.lookup(&self.field)? {
            None => Val::Null,
            Some(raw) => Val::of(raw)?,
        };
        if value == Val::Null {
            return Ok(match (self.op, &self.lit) {
                (Op::Eq, Lit::Null) => true,
                (Op::Ne, Lit::Null) => false,
                (Op::Ne, _) => true,
                _ => false,
            });
        }
        let ord = match (&value, &self.lit) {
            (Val::Num(a), Lit::Num(b)) => a.partial_cmp(b),
            (Val::Str(a), Lit::Str(b)) => Some(a.as_ref().cmp(b.as_str())),
            (Val::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        };
        use std::cmp::Ordering::*;
        Ok(match self.op {
            Op::Eq => ord == Some(Equal),
            Op::Ne => ord != Some(Equal),
            Op::Lt => ord == Some(Less),
            Op::Le => matches!(ord, Some(Less | Equal)),
            Op::Gt => ord == Some(Greater),
            Op::Ge => matches!(ord, Some(Greater | Equal)),
            Op::Contains => self.contains(&value)?,
            Op::Matches => match (&value, &self.regex) {
                (Val::Str(s), Some(re)) => re.is_match(s),
                _ => false,
            },
        })
    }

    fn contains(&self, value: &Val<'_>) -> Result<bool> {
        Ok(match value {
            Val::Str(s) => s.contains(self.needle.as_str()),
            Val::Other(text) if text.starts_with('[') => {
                let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)?;
                let mut found = false;
                for item in items {
                    let v = Val::of(item)?;
                    let hit = match (&v, &self.lit) {
                        (Val::Num(a), Lit::Num(b)) => a == b,
                        (Val::Str(a), Lit::Str(b)) => a == b,
                        (Val::Bool(a), Lit::Bool(b)) => a == b,
                        (Val::Null, Lit::Null) => true,
                        _ => false,
                    };
                    if hit {
                        found = true;
                        break;
                    }
                }
                found
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str, line: &str) -> bool {
        let w = Where::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        w.eval(&RawRecord::parse(line).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn operators_compare_by_kind() {
        let rec = r#"{"n":7,"s":"beta","lang":"en","tags":["a","b c",3],"score":{"overall":8.5},"z":null}"#;
        assert!(eval("n == 7", rec));
        assert!(
            eval("n >= 7", rec)
                && eval("n <= 7", rec)
                && !eval("n < 7", rec)
                && eval("n > 6.5", rec)
        );
        assert!(eval("n != 8", rec));
        assert!(!eval("n == \"7\"", rec), "a number never equals a string");
        assert!(eval("lang == en", rec) && eval("lang == \"en\"", rec) && !eval("lang != en", rec));
        assert!(eval("s > alpha", rec) && eval("s < gamma", rec));
        assert!(eval("s contains et", rec) && !eval("s contains x", rec));
        assert!(
            eval(r#"p contains 1.50"#, r#"{"p":"costs 1.50 EUR"}"#),
            "numbers are searched as written"
        );
        assert!(
            eval("tags contains \"b c\"", rec)
                && eval("tags contains 3", rec)
                && !eval("tags contains b", rec)
        );
        assert!(eval("s matches ^b.t", rec) && !eval("s matches ^et", rec));
        assert!(eval("score.overall > 8", rec) && !eval("score.overall > 9", rec));
        assert!(
            !eval("missing == 1", rec) && eval("missing != 1", rec) && !eval("missing < 1", rec)
        );
        assert!(eval("z == null", rec) && eval("missing == null", rec) && eval("n != null", rec));
        assert!(!eval("s > 3", rec), "a kind mismatch fails");
    }

    #[test]
    fn bad_expressions_are_explained() {
        for (expr, needle) in [
            ("n", "expected 'FIELD OP VALUE'"),
            ("n ~ 3", "unknown operator"),
            ("n ==", "missing value"),
            ("s matches (", "bad regex"),
        ] {
            let err = Where::parse(expr).expect_err(expr).to_string();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }
}
