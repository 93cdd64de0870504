//! A reader that refuses a line longer than a cap, so that a JSONL source with no line end (or one
//! huge line) cannot grow the line buffer until memory runs out.

use std::io::{self, BufRead, Read};

/// Passes `inner` through, failing a read that would hand out a line of more than `max` bytes
/// (line end excluded): the error comes before any byte past the cap is read.
pub struct LineCap<R> {
    inner: R,
    max: u64,
    /// Bytes consumed since the last `\n`, and `\n`s consumed.
    run: u64,
    lines: u64,
}

impl<R: BufRead> LineCap<R> {
    pub fn new(inner: R, max: u64) -> Self {
        Self {
            inner,
            max,
            run: 0,
            lines: 0,
        }
    }
}

impl<R: BufRead> Read for LineCap<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for LineCap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let (run, max, line) = (self.run, self.max, self.lines + 1);
        let buf = self.inner.fill_buf()?;
        let rest = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
        if run + rest as u64 > max {
            return Err(io::Error::other(format!(
                "line {line} is longer than --max-file-size ({max} bytes)"
            )));
        }
        Ok(buf)
    }

    fn consume(&mut self, n: usize) {
        // The bytes being consumed are still in the inner buffer: this returns them without I/O.
        if let Ok(buf) = self.inner.fill_buf() {
            let seen = &buf[..n.min(buf.len())];
            let ends = memchr::memchr_iter(b'\n', seen).count() as u64;
            self.lines += ends;
            self.run = match memchr::memrchr(b'\n', seen) {
                Some(at) => (seen.len() - at - 1) as u64,
                None => self.run + seen.len() as u64,
            };
        }
        self.inner.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], capacity: usize, max: u64) -> (Vec<String>, Option<String>) {
        let mut r = LineCap::new(io::BufReader::with_capacity(capacity, input), max);
        let (mut got, mut buf) = (Vec::new(), Vec::new());
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) => return (got, None),
                Ok(_) => got.push(String::from_utf8_lossy(&buf).into_owned()),
                Err(e) => return (got, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn lines_up_to_the_cap_pass_and_a_longer_one_fails_before_it_is_read() {
        for capacity in [2, 4096] {
            let (got, err) = lines(b"1234\n12345\n\n123", capacity, 5);
            assert_eq!(
                (got, err),
                (
                    vec!["1234\n".into(), "12345\n".into(), "\n".into(), "123".into()],
                    None
                )
            );
            let (got, err) = lines(b"ok\n\n1234567890\nok\n", capacity, 5);
            assert_eq!(got, ["ok\n", "\n"], "capacity {capacity}");
            assert_eq!(
                err.as_deref(),
                Some("line 3 is longer than --max-file-size (5 bytes)")
            );
        }
    }
}
