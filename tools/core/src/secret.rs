//! Secrets (API keys, hub tokens, passwords in URLs) and the one URL redactor every message uses.
//!
//! A [`Secret`] never prints: its `Debug` is `Secret(***)` and it has no `Display`. A URL is shown only
//! through [`redact_url`] (one URL) or [`redact_urls`] (free text that may hold URLs, such as an error
//! of an HTTP client): user info becomes `***@` and the values of query parameters that look like
//! credentials (`key=`, `api_key=`, `token=`, `sig=`, ...) become `***`.

/// A value that must never be shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that sends it (a header, a client's token).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the secret in `text` with `***`. Values under 4 bytes are left
    /// alone: replacing `a` everywhere would garble the message and protect nothing.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "***")
        } else {
            text.to_string()
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Query parameters whose name contains one of these (case-insensitive) carry credentials: `key`,
/// `api_key`, `apikey`, `token`, `access_token`, `sig`, `signature` (S3, Azure SAS), `secret`,
/// `password`, `auth`, `credential`.
const SECRET_PARAMS: &[&str] = &[
    "key",
    "token",
    "sig",
    "secret",
    "pass",
    "auth",
    "credential",
];

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// The parts of `url` that [`redact_url`] hides: `(start, end)` byte ranges, in order.
fn secret_ranges(url: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let before_query = url.find(['?', '#']).unwrap_or(url.len());
    match url.find("://") {
        Some(i) => {
            let after_scheme = i + 3;
            let rest = &url[after_scheme..before_query.max(after_scheme)];
            let authority_len = rest.find('/').unwrap_or(rest.len());
            // The last `@` of the authority ends the user info (a password may itself hold `@`).
            if let Some(at) = rest[..authority_len].rfind('@') {
                ranges.push((after_scheme, after_scheme + at));
            }
        }
        // A malformed URL (`htp:/user:pw@host`): whatever precedes an `@` after the scheme's colon.
        None => {
            if let (Some(colon), Some(at)) = (
                url[..before_query].find(':'),
                url[..before_query].rfind('@'),
            ) && colon < at
            {
                let start = colon + 1 + url[colon + 1..].len()
                    - url[colon + 1..].trim_start_matches('/').len();
                if start < at {
                    ranges.push((start, at));
                }
            }
        }
    }
    if let Some(q) = url.find('?') {
        let end = url[q..].find('#').map_or(url.len(), |i| q + i);
        let mut pos = q + 1;
        for pair in url[q + 1..end].split('&') {
            if let Some(eq) = pair.find('=')
                && is_secret_param(&pair[..eq])
                && eq + 1 < pair.len()
            {
                ranges.push((pos + eq + 1, pos + pair.len()));
            }
            pos += pair.len() + 1;
        }
    }
    ranges
}

/// `url` with its user info and credential query values replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut pos = 0;
    for (start, end) in secret_ranges(url) {
        out.push_str(&url[pos..start]);
        out.push_str("***");
        pos = end;
    }
    out.push_str(&url[pos..]);
    out
}

/// The secret parts of `url` (password or whole user info, credential query values), so that a
/// server's echo of them can be scrubbed from text that is not a URL.
pub fn url_secrets(url: &str) -> Vec<Secret> {
    let mut out = Vec::new();
    for (start, end) in secret_ranges(url) {
        let part = &url[start..end];
        out.push(Secret::new(part.to_string()));
        // User info `user:password`: the password alone may be echoed too.
        if let Some((_, password)) = part.split_once(':') {
            out.push(Secret::new(password.to_string()));
        }
    }
    out
}

/// `text` with every URL in it (`scheme://` up to whitespace or a quote) passed through [`redact_url`].
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = text[pos..].find("://") {
        let sep = pos + found;
        let start = text[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1)
            .max(pos);
        let end = text[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(text.len(), |i| sep + i);
        out.push_str(&text[pos..start]);
        out.push_str(&redact_url(&text[start..end]));
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk-abcdef".into());
        assert_eq!(s.scrub("key sk-abcdef here"), "key *** here");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(s)), "Some(Secret(***))");
    }

    #[test]
    fn urls_lose_user_info_and_credential_parameters() {
        for (url, shown) in [
            ("http://u:sk-SECRET@host:8080/v1", "http://***@host:8080/v1"),
            ("https://tok@example.com", "https://***@example.com"),
            (
                "https://h/v1?key=abc&model=m",
                "https://h/v1?key=***&model=m",
            ),
            (
                "https://h/p?api_key=A1&token=T2&X-Amz-Signature=S3&sig=S4#frag",
                "https://h/p?api_key=***&token=***&X-Amz-Signature=***&sig=***#frag",
            ),
            ("https://h/p?access_token=", "https://h/p?access_token="),
            ("https://h/a@b/c", "https://h/a@b/c"),
            ("htp:/u:pw-1234@x?key=k", "htp:/***@x?key=***"),
            ("u:pw-1234@x/v1", "u:***@x/v1"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let found: Vec<String> = url_secrets("http://u:p@ss@h/?token=t0k")
            .iter()
            .map(|s| s.expose().to_string())
            .collect();
        assert_eq!(found, ["u:p@ss", "p@ss", "t0k"]);
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        assert_eq!(
            redact_urls("request to http://u:pw@127.0.0.1:9/v1 failed: \"https://x?key=k\" (io)"),
            "request to http://***@127.0.0.1:9/v1 failed: \"https://x?key=***\" (io)"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
    }
}
