//! The checks that keep a catalog from escaping the root or leaking a secret.
//!
//! Messages never repeat a URL: one may carry a credential, so they name the entry and the part
//! that is wrong instead.

/// `[a-z0-9._-]`, not starting with `.` (hidden, `.`, `..`) or `-` (read as an option by the pull
/// commands), at most 200 bytes.
pub fn slug_problem(slug: &str) -> Option<&'static str> {
    if slug.is_empty() {
        Some("is empty")
    } else if slug.len() > 200 {
        Some("is longer than 200 bytes")
    } else if !slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        Some("may hold only [a-z0-9._-]")
    } else if slug.starts_with('.') || slug.starts_with('-') {
        Some("may not start with . or -")
    } else {
        None
    }
}

/// The slug of a name: lowercased, every run of other characters turned into one `-`, with `-` and
/// `.` trimmed from both ends (`Kyudan/MathBridge` → `kyudan-mathbridge`).
pub fn derive_slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        let keep = c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_';
        if keep {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// A file name for a download: what [`slug_problem`] allows plus upper case letters.
pub fn file_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("may hold only [A-Za-z0-9._-]")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("may not start with . or -")
    } else {
        None
    }
}

/// Why `url` is refused, if it is: not `https://` (or `http://` with `allow_http`), no host, a
/// credential (see [`url_secret`]), or a space or control character.
pub fn url_problem(url: &str, allow_http: bool) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let rest = if let Some(rest) = lower.strip_prefix("https://") {
        rest
    } else if let Some(rest) = lower.strip_prefix("http://") {
        if !allow_http {
            return Some("is http, not https (--allow-http accepts it)".into());
        }
        rest
    } else {
        let scheme = lower.split_once("://").map_or("", |(s, _)| s);
        return Some(if scheme.is_empty() {
            "is not an https URL".into()
        } else {
            format!("has scheme {scheme:?}, not https")
        });
    };
    if let Some(why) = url_secret(url) {
        return Some(why);
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("holds a space or control character".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.starts_with(':') {
        return Some("has no host".into());
    }
    None
}

/// Why the URL starting at `url` (up to the first space) carries a credential, if it does: user
/// info (`user:pass@host`) or a query parameter named like one (`access_token`, `X-Amz-Signature`,
/// `key`, ...). The message never holds the URL.
pub fn url_secret(url: &str) -> Option<String> {
    let url = url.split(char::is_whitespace).next().unwrap_or("");
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Some(
            "carries user info (user:password@): catalogs must not hold credentials".into(),
        );
    }
    let query = rest
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    for pair in query.split('&') {
        let key = pair.split('=').next().unwrap_or("");
        let lower = key.to_ascii_lowercase();
        if is_secret_name(key) || ["key", "sig", "auth", "code", "pass"].contains(&lower.as_str()) {
            return Some(format!(
                "carries a credential in its query ({key:?}): catalogs must not hold credentials"
            ));
        }
    }
    None
}

/// Field names that hold credentials: one of their words (split at `_`, `-`, `.`) is token,
/// password, secret, ... (`hf_token`, `api_key`, `X-Amz-Signature`), while `max_tokens` or
/// `tokenizer` are not.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower.split(['_', '-', '.']).collect();
    const WORDS: [&str; 9] = [
        "token",
        "password",
        "passwd",
        "secret",
        "signature",
        "credential",
        "credentials",
        "apikey",
        "authorization",
    ];
    words.iter().any(|w| WORDS.contains(w))
        || words.windows(2).any(|w| w[0] == "api" && w[1] == "key")
}

/// Every URL in a free text (`scheme://...` up to a space) that carries a credential.
pub fn text_has_url_secret(text: &str) -> Option<String> {
    text.match_indices("://")
        .find_map(|(i, _)| url_secret(&text[i..]))
}

/// The last segment of a URL's path, if any.
pub fn url_file_name(url: &str) -> &str {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    let after_scheme = no_query.split_once("://").map_or(no_query, |(_, r)| r);
    match after_scheme.split_once('/') {
        Some((_, path)) => path.rsplit('/').next().unwrap_or(""),
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(derive_slug("Kyudan/MathBridge"), "kyudan-mathbridge");
        assert_eq!(
            derive_slug("  DocLayNet (core) v1.1 "),
            "doclaynet-core-v1.1"
        );
        assert_eq!(derive_slug("../.."), "");
        assert_eq!(derive_slug("Ünïcode_set"), "n-code_set");
        for bad in [
            "", ".", "..", "../x", "/abs", "a/b", "a\0b", "-rf", ".hidden", "UP",
        ] {
            assert!(slug_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(slug_problem("a.b_c-9"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(url_problem("https://example.org/a.zip", false), None);
        assert_eq!(url_problem("http://example.org/a.zip", true), None);
        for bad in [
            "http://example.org/a",
            "ftp://example.org/a",
            "example.org/a",
            "https://user:pw@example.org/a",
            "https://example.org/a?token=abc",
            "https://example.org/a?X-Amz-Signature=abc",
            "https:///a",
            "https://example.org/a b",
        ] {
            assert!(url_problem(bad, false).is_some(), "{bad}");
        }
        let msg = url_problem("https://u:hunter2@example.org", false).unwrap_or_default();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert_eq!(url_file_name("https://h/x/y.tar.gz?dl=1"), "y.tar.gz");
        for name in [
            "hf_token",
            "API_KEY",
            "apiKey",
            "X-Amz-Signature",
            "password",
            "access_token",
        ] {
            assert!(is_secret_name(name) || name == "apiKey", "{name}");
        }
        for name in [
            "max_tokens",
            "tokenizer",
            "key",
            "passage",
            "secretary_notes",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
        assert!(text_has_url_secret("see https://u:p@h/x for more").is_some());
        assert!(text_has_url_secret("see https://h/x?api_key=1").is_some());
        assert!(text_has_url_secret("see https://h/x?page=1 and me@example.org").is_none());
        assert_eq!(url_file_name("https://h"), "");
    }
}
