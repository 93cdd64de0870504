//! A loopback HTTP/1.1 server for tests: serves byte strings by path with Range and If-Range
//! support, the headers the hub's clients read (`etag`, `x-repo-commit`, `content-range`), and
//! injected faults (dropped connections, error statuses with `Retry-After`, stalls, slow bodies).
//! Every request is logged as `PATH RANGE [if-range] [auth=AUTHORIZATION]`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Debug)]
pub enum Fault {
    /// Headers and the first N bytes of the body, then the connection is closed.
    Drop(usize),
    /// This status with an empty body, and a `Retry-After` when given.
    Status(u16, Option<u32>),
    /// The first N bytes, then nothing more for a minute (a stalled or killed download).
    Hang(usize),
    /// The whole body in 7-byte pieces, 20 ms apart.
    Slow,
}

#[derive(Clone, Default)]
pub struct Server {
    pub url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    faults: Arc<Mutex<HashMap<String, VecDeque<Fault>>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut server = Server {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..Server::default()
        };
        server.url = server.url.clone();
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || s.handle(stream));
            }
        });
        server
    }

    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), bytes.into());
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back(fault);
    }

    /// Answers the hub's endpoints for `repo` (`org/name`) of `repo_type` (`dataset` or `model`), as
    /// hf-hub asks them: the revision info (sha [`COMMIT`], siblings) for `main` and [`COMMIT`], and
    /// each file under `resolve/main/` and `resolve/COMMIT/`.
    pub fn put_hub_repo(&self, repo_type: &str, repo: &str, files: &[(&str, &[u8])]) {
        let (api, base) = match repo_type {
            "model" => (format!("/api/models/{repo}"), format!("/{repo}")),
            _ => (format!("/api/datasets/{repo}"), format!("/datasets/{repo}")),
        };
        let mut names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let siblings: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"rfilename": n}))
            .collect();
        let info = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
        for rev in ["main", COMMIT] {
            self.put(&format!("{api}/revision/{rev}"), info.clone());
            for (name, bytes) in files {
                self.put(&format!("{base}/resolve/{rev}/{name}"), bytes.to_vec());
            }
        }
    }

    /// Every request so far as `PATH RANGE` (`-` without a Range header).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn hits(&self, path: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.split(' ').next() == Some(path))
            .collect()
    }

    fn handle(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        let mut auth = None;
        let mut if_range: Option<String> = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                range = Some(v.trim().to_string());
            }
            if lower.starts_with("authorization:") {
                auth = Some(h[14..].trim().to_string());
            }
            if lower.starts_with("if-range:") {
                if_range = Some(h[9..].trim().to_string());
            }
        }
        let mut shown = range
            .clone()
            .map_or("-".to_string(), |r| format!("bytes={r}"));
        if if_range.is_some() {
            shown.push_str(" if-range");
        }
        if let Some(a) = auth {
            shown.push_str(&format!(" auth={a}"));
        }
        self.log.lock().unwrap().push(format!("{path} {shown}"));
        let fault = self
            .faults
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        let body = self.files.lock().unwrap().get(&path).cloned();
        let mut out = stream;
        if let Some(Fault::Status(code, after)) = fault {
            let retry = after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
            let _ = write!(
                out,
                "HTTP/1.1 {code} Nope\r\n{retry}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            return;
        }
        let Some(body) = body else {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            return;
        };
        let len = body.len();
        // If-Range with another ETag than the file's now: the whole file (RFC 9110 13.1.5).
        let etag = format!("\"{:016x}\"", fnv(&body));
        if if_range.is_some_and(|v| v != etag) {
            range = None;
        }
        let (status, start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some((a, b)) => {
                let a: usize = a.parse().unwrap_or(0);
                if a >= len {
                    let _ = write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    return;
                }
                let b = b.parse::<usize>().map_or(len - 1, |b| b.min(len - 1));
                ("206 Partial Content", a, b + 1)
            }
            None => ("200 OK", 0, len),
        };
        let part = &body[start..end];
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{len}\r\naccept-ranges: bytes\r\netag: {etag}\r\nx-repo-commit: {COMMIT}\r\nconnection: close\r\n\r\n",
            part.len(),
            end.saturating_sub(1),
        );
        match fault {
            Some(Fault::Drop(n)) => {
                let _ = out.write_all(&part[..n.min(part.len())]);
            }
            Some(Fault::Hang(n)) => {
                let _ = out.write_all(&part[..n.min(part.len())]);
                let _ = out.flush();
                std::thread::sleep(Duration::from_secs(60));
            }
            Some(Fault::Slow) => {
                for piece in part.chunks(7) {
                    if out.write_all(piece).is_err() {
                        return;
                    }
                    let _ = out.flush();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            _ => {
                let _ = out.write_all(part);
            }
        }
        let _ = out.flush();
    }
}

/// FNV-1a of `bytes`: the test server's ETag, different for different contents.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}
