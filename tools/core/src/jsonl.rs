//! JSONL reading and writing.
//!
//! [`LineReader`] hands out lines with their 1-based line number; [`RawRecord`] parses an object
//! while keeping every value as raw JSON text in its original order, so a tool decodes only the fields
//! it owns and passes the rest through byte for byte; [`ObjectWriter`] writes objects without building
//! a `serde_json::Value`.

use anyhow::{Context, Result, bail};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::io::BufRead;

/// Where a record came from: `path:line`.
#[derive(Clone, Copy, Debug)]
pub struct Loc<'a> {
    pub path: &'a str,
    pub line: u64,
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = crate::cli::escape_controls(self.path);
        write!(f, "{path}:{}", self.line)
    }
}

/// Reads `\n`-terminated lines into a reused buffer, counting line numbers and skipping blank lines.
pub struct LineReader<R> {
    reader: R,
    line: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, line: 0 }
    }

    /// Fills `buf` with the next non-blank line (without its `\n` or `\r\n`) and returns its number,
    /// or `None` at end of input.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
        buf.clear();
        self.append_line(buf)
    }

    /// Appends the next non-blank line (without its line ending) to `buf` and returns its number;
    /// the line starts where `buf` ended before the call.
    pub fn append_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
        let start = buf.len();
        loop {
            buf.truncate(start);
            if self.reader.read_until(b'\n', buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            trim_eol(buf);
            if !buf[start..].iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(self.line));
            }
        }
    }
}

fn trim_eol(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

/// A JSON object whose values stay raw JSON text, in input order.
#[derive(Debug, Default)]
pub struct RawRecord<'a> {
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawRecord<'a> {
    /// Parses one JSONL line; the error says what is wrong, the caller adds `path:line`.
    pub fn parse(line: &'a str) -> Result<Self> {
        serde_json::from_str(line).map_err(|e| anyhow::anyhow!("invalid JSON object: {e}"))
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A field that must be a string (`null` and absence read as `None`).
    pub fn get_str(&self, key: &str) -> Result<Option<Cow<'a, str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => match str_of(raw)? {
                Some(s) => Ok(Some(s)),
                None => bail!("field \"{key}\" is not a string"),
            },
        }
    }

    /// A string field that must be present.
    pub fn require_str(&self, key: &str) -> Result<Cow<'a, str>> {
        match self.get_str(key)? {
            Some(s) => Ok(s),
            None => bail!("missing field \"{key}\""),
        }
    }

    /// Decodes a field into any type.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .map(|raw| {
                serde_json::from_str(raw.get())
                    .with_context(|| format!("field \"{key}\" has the wrong type"))
            })
            .transpose()
    }

    /// The raw value at a dotted path, the one path syntax of every tool: a top-level key named
    /// exactly `path` wins (`"a.b"` as a key), else the dots walk into objects by key and into arrays
    /// by 0-based index (`score.overall`, `tags.0`, `q.answers.1.text`). `None` when a step is
    /// missing, out of range, or not an object or array.
    pub fn lookup(&self, path: &str) -> Result<Option<&'a RawValue>> {
        if let Some(v) = self.get(path) {
            return Ok(Some(v));
        }
        let mut parts = path.split('.');
        let Some(mut value) = parts.next().and_then(|first| self.get(first)) else {
            return Ok(None);
        };
        for part in parts {
            let next = match value.get().as_bytes().first() {
                Some(b'{') => member(value, part)?,
                // Only plain decimal digits index an array (`+1`, `01` name nothing).
                Some(b'[') => match part.parse::<usize>() {
                    Ok(i) if i.to_string() == part => element(value, i)?,
                    _ => None,
                },
                _ => None,
            };
            match next {
                Some(v) => value = v,
                None => return Ok(None),
            }
        }
        Ok(Some(value))
    }

    /// The field at a dotted path as text: a string's contents, any other value's JSON text; `None`
    /// when missing or null. What ft-filter compares, ft-split hashes and ft-to-alpaca writes.
    pub fn text_at(&self, path: &str) -> Result<Option<Cow<'a, str>>> {
        let Some(raw) = self.lookup(path)? else {
            return Ok(None);
        };
        if raw.get() == "null" {
            return Ok(None);
        }
        Ok(Some(str_of(raw)?.unwrap_or(Cow::Borrowed(raw.get()))))
    }

    /// Fields other than `skip`, for pass-through.
    pub fn others<'s>(
        &'s self,
        skip: &'s [&str],
    ) -> impl Iterator<Item = (&'s str, &'a RawValue)> + 's {
        self.fields
            .iter()
            .filter(move |(k, _)| !skip.contains(&k.as_ref()))
            .map(|(k, v)| (k.as_ref(), *v))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawRecord<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawRecord<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(RawRecord { fields })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The value of `key` in the JSON object `object`, without allocating (the hot path of dotted paths).
pub fn member<'a>(object: &'a RawValue, key: &str) -> Result<Option<&'a RawValue>> {
    struct Find<'k>(&'k str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if found.is_none() && k == self.0 {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(object.get());
    Ok(de.deserialize_map(Find(key))?)
}

/// The contents of a JSON string value (`None` when it is not a string), borrowed when it holds no
/// escape.
pub fn str_of(raw: &RawValue) -> Result<Option<Cow<'_, str>>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Ok(None);
    }
    // RawValue has already validated the literal: without escapes it is the string itself.
    if memchr::memchr(b'\\', text.as_bytes()).is_none() {
        return Ok(Some(Cow::Borrowed(&text[1..text.len() - 1])));
    }
    Ok(Some(Cow::Owned(serde_json::from_str::<String>(text)?)))
}

/// Item `index` of the JSON array `array`, without allocating; `None` past its end.
pub fn element(array: &RawValue, index: usize) -> Result<Option<&RawValue>> {
    struct Nth(usize);
    impl<'de> Visitor<'de> for Nth {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<S: serde::de::SeqAccess<'de>>(
            self,
            mut seq: S,
        ) -> Result<Self::Value, S::Error> {
            // Every item is read (the others ignored): serde_json rejects a half-read array.
            let (mut found, mut i) = (None, 0);
            loop {
                if i == self.0 {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(v) => found = Some(v),
                        None => break,
                    }
                } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                    break;
                }
                i += 1;
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(array.get());
    Ok(de.deserialize_seq(Nth(index))?)
}

/// Writes one JSON object into a byte buffer, field by field.
pub struct ObjectWriter<'b> {
    buf: &'b mut Vec<u8>,
    first: bool,
}

impl<'b> ObjectWriter<'b> {
    pub fn new(buf: &'b mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        write_json_str(self.buf, key);
        self.buf.push(b':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_json_str(self.buf, value);
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        use std::io::Write;
        let _ = write!(self.buf, "{value}");
        self
    }

    /// A value that is already JSON text.
    pub fn raw(&mut self, key: &str, value: &RawValue) -> &mut Self {
        self.key(key);
        self.buf.extend_from_slice(value.get().as_bytes());
        self
    }

    /// Any serialisable value.
    pub fn value<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        self.key(key);
        // Serialising into a Vec cannot fail for the plain data types tools write.
        let _ = serde_json::to_writer(&mut *self.buf, value);
        self
    }

    /// Closes the object and the line.
    pub fn end(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // serde_json's escaper is fast and exact; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends `value` as one JSONL line.
pub fn write_line<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<()> {
    serde_json::to_writer(&mut *buf, value)?;
    buf.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_and_blank_lines_skipped() -> std::io::Result<()> {
        let mut r = LineReader::new(&b"a\n\n  \r\nb\r\nc"[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(n) = r.next_line(&mut buf)? {
            got.push((n, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(got, vec![(1, "a".into()), (4, "b".into()), (5, "c".into())]);
        Ok(())
    }

    #[test]
    fn raw_record_keeps_order_and_raw_values() -> Result<()> {
        let line = r#"{"z":1,"text":"a\"b\u00e9","meta":{"k":[1,2]},"n":null}"#;
        let rec = RawRecord::parse(line)?;
        let keys: Vec<&str> = rec.fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["z", "text", "meta", "n"]);
        assert_eq!(rec.require_str("text")?, "a\"bé");
        assert_eq!(rec.get("meta").map(|v| v.get()), Some(r#"{"k":[1,2]}"#));
        assert!(rec.get_str("n")?.is_none());
        assert!(rec.get_str("z").is_err());
        assert!(
            rec.require_str("missing")
                .unwrap_err()
                .to_string()
                .contains("missing field \"missing\"")
        );
        assert!(RawRecord::parse("[1,2]").is_err());
        assert!(RawRecord::parse("{\"a\":").is_err());
        Ok(())
    }

    #[test]
    fn lookup_walks_dotted_paths() -> Result<()> {
        let rec = RawRecord::parse(r#"{"score":{"overall":8.5},"a.b":1,"s":"x"}"#)?;
        assert_eq!(rec.lookup("score.overall")?.map(|v| v.get()), Some("8.5"));
        assert_eq!(rec.lookup("a.b")?.map(|v| v.get()), Some("1"));
        assert!(rec.lookup("score.missing")?.is_none());
        assert!(rec.lookup("s.deeper")?.is_none());
        let rec = RawRecord::parse(
            r#"{"tags":["x",{"k":[10,"y"]}],"tags.0":"exact","m":{"0":"key"},"e":[]}"#,
        )?;
        let at = |p: &str| rec.lookup(p).map(|v| v.map(|v| v.get().to_string()));
        assert_eq!(
            at("tags.0")?.as_deref(),
            Some("\"exact\""),
            "a dotted key wins"
        );
        assert_eq!(at("tags.1.k.1")?.as_deref(), Some("\"y\""));
        assert_eq!(at("tags.1.k.0")?.as_deref(), Some("10"));
        assert_eq!(
            at("m.0")?.as_deref(),
            Some("\"key\""),
            "digits are keys in objects"
        );
        for missing in [
            "tags.2",
            "tags.01",
            "tags.-1",
            "tags.x",
            "e.0",
            "tags.1.k.0.z",
        ] {
            assert_eq!(at(missing)?, None, "{missing}");
        }
        let text = |p: &str| rec.text_at(p).map(|t| t.map(Cow::into_owned));
        assert_eq!(text("tags.1.k.1")?.as_deref(), Some("y"), "strings decoded");
        assert_eq!(
            text("tags.1.k")?.as_deref(),
            Some("[10,\"y\"]"),
            "others as JSON"
        );
        assert_eq!(text("tags.1.k.0")?.as_deref(), Some("10"));
        assert_eq!(text("tags.9")?, None);
        let rec = RawRecord::parse(r#"{"tags":["x","z"],"n":null,"e":"a\"b"}"#)?;
        assert_eq!(rec.text_at("n")?, None, "null reads as missing");
        assert_eq!(rec.text_at("e")?.as_deref(), Some("a\"b"));
        let rec = RawRecord::parse(r#"{"tags":["x","z"]}"#)?;
        assert_eq!(rec.lookup("tags.1")?.map(|v| v.get()), Some("\"z\""));
        Ok(())
    }

    #[test]
    fn object_writer_round_trips() -> Result<()> {
        let src = RawRecord::parse(r#"{"keep":{"x":"y"}}"#)?;
        let mut buf = Vec::new();
        let mut w = ObjectWriter::new(&mut buf);
        w.str("text", "line\n\"q\"").u64("n", 7);
        for (k, v) in src.others(&[]) {
            w.raw(k, v);
        }
        w.value("list", &[1, 2]);
        w.end();
        let v: serde_json::Value = serde_json::from_slice(&buf)?;
        assert_eq!(v["text"], "line\n\"q\"");
        assert_eq!(v["n"], 7);
        assert_eq!(v["keep"]["x"], "y");
        assert_eq!(v["list"][1], 2);
        assert!(buf.ends_with(b"}\n"));
        Ok(())
    }
}
