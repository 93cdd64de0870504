//! Downloads over HTTP(S) with ureq: into `.NAME.part` beside the destination, resumed with a Range
//! request after a dropped connection or a killed run, retried with backoff on 429, 5xx, timeouts and
//! connection errors (`Retry-After` in seconds honoured), renamed into place only once complete.

use anyhow::{Context, Result, anyhow, bail};
use ftkit_core::secret::{redact_url, redact_urls};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub struct Client {
    agent: ureq::Agent,
    pub retries: u32,
    /// The first backoff; doubled after each retry, at most 60 s.
    pub backoff: Duration,
    pub progress: bool,
}

/// What went wrong with one attempt: worth another try or not.
enum Failure {
    Retry(String, Option<Duration>),
    Fatal(anyhow::Error),
}

impl Client {
    pub fn new(timeout: Duration, retries: u32, backoff: Duration, progress: bool) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            // A stalled body fails after `timeout` without data; a slow but live one goes on.
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("ftkit-fetch/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            agent,
            retries,
            backoff,
            progress,
        }
    }

    /// Downloads `url` into `part`, resuming from the bytes already there. On return `part` holds
    /// the whole body.
    pub fn download(&self, url: &str, part: &Path) -> Result<()> {
        let shown = redact_url(url);
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            match self.attempt(url, part) {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => {
                    return Err(e.context(format!("{shown}: download failed")));
                }
                Err(Failure::Retry(reason, after)) => {
                    if attempt >= self.retries {
                        bail!("{shown}: {reason} (gave up after {} attempts)", attempt + 1);
                    }
                    let pause = after.unwrap_or(wait);
                    ftkit_core::cli::warn(format!(
                        "{shown}: {reason}; retrying in {:.1}s",
                        pause.as_secs_f64()
                    ));
                    std::thread::sleep(pause);
                    wait = (wait * 2).min(Duration::from_secs(60));
                    attempt += 1;
                }
            }
        }
    }

    fn attempt(&self, url: &str, part: &Path) -> std::result::Result<(), Failure> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
            // The server sends the whole file instead when it changed since the part was begun.
            if let Some(etag) = std::fs::read_to_string(etag_path(part))
                .ok()
                .filter(|e| !e.is_empty())
            {
                req = req.header("If-Range", etag);
            }
        }
        let resp = req.call().map_err(transport)?;
        let status = resp.status().as_u16();
        let (offset, total) = match status {
            200 => (0, content_length(&resp)),
            206 => match content_range(&resp) {
                Some((start, total)) if start == have => (have, total),
                // The server sent another range than asked: start over.
                _ => {
                    remove(part)?;
                    return Err(Failure::Retry(
                        "unexpected content-range".into(),
                        Some(Duration::ZERO),
                    ));
                }
            },
            // The part is as long as (or longer than) the file: it cannot be trusted, start over.
            416 if have > 0 => {
                remove(part)?;
                return Err(Failure::Retry(
                    "range not satisfiable".into(),
                    Some(Duration::ZERO),
                ));
            }
            429 | 500..=599 => {
                return Err(Failure::Retry(format!("HTTP {status}"), retry_after(&resp)));
            }
            _ => return Err(Failure::Fatal(anyhow!("HTTP {status}"))),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .open(part)
            .map_err(|e| Failure::Fatal(anyhow!("{}: cannot create: {e}", part.display())))?;
        if offset == 0 {
            // A strong ETag of the file being written (a weak one cannot validate a range).
            let etag = header(&resp, "etag")
                .filter(|e| !e.starts_with("W/"))
                .unwrap_or("");
            std::fs::write(etag_path(part), etag).map_err(|e| {
                Failure::Fatal(anyhow!("{}: cannot write: {e}", etag_path(part).display()))
            })?;
        }
        let bar = crate::progress::bar(self.progress, part, total);
        bar.set_position(offset);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = offset;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // The bytes so far stay in the part: the next attempt asks for the rest.
                Err(e) => {
                    let _ = file.sync_data();
                    return Err(Failure::Retry(
                        format!(
                            "connection lost after {got} bytes: {}",
                            redact_urls(&e.to_string())
                        ),
                        None,
                    ));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| Failure::Fatal(anyhow!("{}: cannot write: {e}", part.display())))?;
            got += n as u64;
            bar.set_position(got);
        }
        bar.finish_and_clear();
        if let Some(total) = total
            && got != total
        {
            let _ = file.sync_data();
            return Err(Failure::Retry(
                format!("body ended at {got} of {total} bytes"),
                None,
            ));
        }
        file.sync_all().map_err(|e| {
            Failure::Fatal(anyhow!("{}: cannot write (fsync): {e}", part.display()))
        })?;
        Ok(())
    }
}

fn transport(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Timeout(t) => Failure::Retry(format!("timed out ({t})"), None),
        ureq::Error::Io(e) => Failure::Retry(redact_urls(&e.to_string()), None),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Failure::Retry(redact_urls(&e.to_string()), None)
        }
        e => Failure::Fatal(anyhow!(redact_urls(&e.to_string()))),
    }
}

/// `.NAME.part.etag`: the ETag of the response a part was begun from, for `If-Range`.
fn etag_path(part: &Path) -> std::path::PathBuf {
    let mut name = part.as_os_str().to_os_string();
    name.push(".etag");
    name.into()
}

/// Removes a part and its ETag (a part that failed its checksum, or one to start over).
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(etag_path(part));
    let _ = std::fs::remove_file(part);
}

fn remove(part: &Path) -> std::result::Result<(), Failure> {
    let _ = std::fs::remove_file(etag_path(part));
    match std::fs::remove_file(part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::Fatal(anyhow!(
            "{}: cannot remove: {e}",
            part.display()
        ))),
        _ => Ok(()),
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name)?.to_str().ok().map(str::trim)
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    header(resp, "content-length")?.parse().ok()
}

/// `bytes START-END/TOTAL` → (START, TOTAL when known).
fn content_range(resp: &ureq::http::Response<ureq::Body>) -> Option<(u64, Option<u64>)> {
    parse_content_range(header(resp, "content-range")?)
}

fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// `Retry-After` in seconds (HTTP dates are not followed), at most one hour.
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let v: f64 = header(resp, "retry-after")?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(3600.0)))
}

/// Moves the complete `part` onto `dest` and makes the rename durable.
pub fn commit(part: &Path, dest: &Path) -> Result<()> {
    std::fs::rename(part, dest)
        .with_context(|| format!("{}: cannot rename into place", dest.display()))?;
    let _ = std::fs::remove_file(etag_path(part));
    if let Some(dir) = dest.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
