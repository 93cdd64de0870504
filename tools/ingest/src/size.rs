//! Byte sizes on the command line: `4096`, `1K`, `256M`, `2G` (powers of 1024; case ignored).

/// Parses a size for clap; the error is worded for a usage message.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: the size suffix must be K, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number, optionally with K, M, G or T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("1K"), Ok(1024));
        assert_eq!(parse("1k"), Ok(1024));
        assert_eq!(parse("256M"), Ok(268_435_456));
        assert_eq!(parse("2G"), Ok(2_147_483_648));
        assert_eq!(parse("1T"), Ok(1_099_511_627_776));
        for bad in ["", "K", "1.5M", "-1", "1X", "1KB", "99999999999T"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
