//! Byte sizes on the command line: `4096`, `1K`, `256M`, `2G`, `1.5GiB` (K, M, G, T and KiB … TiB
//! are powers of 1024; KB, MB, GB, TB powers of 1000, as Hugging Face's `max_shard_size` counts;
//! case ignored).

/// Parses a size for clap; the error is worded for a usage message.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KIB" => 1024f64,
        "M" | "MIB" => 1024f64.powi(2),
        "G" | "GIB" => 1024f64.powi(3),
        "T" | "TIB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => {
            return Err(format!(
                "{text:?}: the size suffix must be K, M, G, T (powers of 1024, also KiB...) or KB, MB, GB, TB (powers of 1000)"
            ));
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number, optionally with K, M, G or T)"))?;
    let bytes = n * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_suffixes() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("1K"), Ok(1024));
        assert_eq!(parse("1k"), Ok(1024));
        assert_eq!(parse("256M"), Ok(268_435_456));
        assert_eq!(parse("2G"), Ok(2_147_483_648));
        assert_eq!(parse("1T"), Ok(1_099_511_627_776));
        assert_eq!(parse("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse("5GB"), Ok(5_000_000_000));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        for bad in ["", "K", "-1", "1X", "1..5M", "99999999999T", "5 parsecs"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
