//! The stable hashes behind ft-split, built on `ftkit_core::id::stable_id`.

use ftkit_core::id::stable_id;

fn first_u64(id: &str) -> u64 {
    // stable_id is 32 lowercase hex digits; the first 16 are 8 bytes of SHA-256.
    u64::from_str_radix(&id[..16], 16).unwrap_or(0)
}

/// A number uniform in [0, 1) fixed by `seed` and `value`.
pub fn unit(seed: &str, value: &str) -> f64 {
    first_u64(&stable_id(&[seed, value])) as f64 / 18_446_744_073_709_551_616.0
}

/// The cap rank of `value`: independent of [`unit()`], so that the records kept by a cap spread over
/// every split.
pub fn rank(seed: &str, value: &str) -> u64 {
    first_u64(&stable_id(&[seed, "rank", value]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_follows_the_documented_recipe() {
        // sha256("42\x1fq1\x1f"): printf '42\x1fq1\x1f' | sha256sum
        let digest = ftkit_core::id::sha256_hex(b"42\x1fq1\x1f");
        let want = u64::from_str_radix(&digest[..16], 16).unwrap_or(0) as f64 / 2f64.powi(64);
        assert_eq!(unit("42", "q1"), want);
        assert!((0.0..1.0).contains(&unit("42", "q1")));
        assert_ne!(unit("42", "q1"), unit("43", "q1"));
    }
}
