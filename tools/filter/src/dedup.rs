//! Duplicate detection: exact (on normalised text) and near-duplicate (MinHash LSH).
//!
//! Both keep the first record seen in input order and remember only what the kept records need:
//! 16 bytes per kept record for `exact`, one 8-byte key per band per kept record for `minhash`.
//!
//! MinHash recipe (fixed, so that results are the same on every machine):
//! - text = the normalised dedup fields joined by a space; words = whitespace-separated tokens;
//! - shingles = every run of `k` consecutive words (the whole text when it has fewer than `k` words);
//!   a word hashes with FNV-1a 64, a shingle folds its words' hashes through the splitmix64 finaliser;
//! - permutation i: `((a_i * x + b_i) mod 2^64) >> 32` with odd `a_i` and `b_i` drawn from splitmix64
//!   seeded with `seed + i`; the signature keeps each permutation's minimum;
//! - LSH: `b` bands of `r` rows, (b, r) minimising the weighted false positive and false negative areas
//!   under the S-curve for the threshold (datasketch's `_optimal_param`, weights 0.5/0.5); a record is a
//!   near duplicate when one of its band keys was already stored by a kept record.

use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Lowercases and collapses runs of whitespace to one space (trimmed).
pub fn normalise_into(text: &str, out: &mut String) {
    let mut first = true;
    for word in text.split_whitespace() {
        if !first {
            out.push(' ');
        }
        first = false;
        if word.is_ascii() {
            out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.extend(word.chars().flat_map(char::to_lowercase));
        }
    }
}

/// The exact-dedup key of a normalised text: the first 16 bytes of its SHA-256.
pub fn exact_key(normalised: &str) -> u128 {
    let digest = Sha256::digest(normalised.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(bytes)
}

#[derive(Default)]
pub struct ExactSet {
    seen: HashSet<u128>,
}

impl ExactSet {
    /// True when `key` is new (and now remembered).
    pub fn insert(&mut self, key: u128) -> bool {
        self.seen.insert(key)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Probability that a pair with Jaccard `s` becomes a candidate with `b` bands of `r` rows.
fn candidate_probability(s: f64, b: usize, r: usize) -> f64 {
    1.0 - (1.0 - s.powi(r as i32)).powi(b as i32)
}

/// Simpson's rule with 256 intervals: smooth integrands, ample for choosing (b, r).
fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const N: usize = 256;
    let h = (b - a) / N as f64;
    let mut sum = f(a) + f(b);
    for i in 1..N {
        let x = a + h * i as f64;
        sum += if i % 2 == 1 { 4.0 } else { 2.0 } * f(x);
    }
    sum * h / 3.0
}

/// (bands, rows) for `threshold` and `num_perm`, as datasketch's `MinHashLSH` chooses them.
pub fn optimal_params(threshold: f64, num_perm: usize) -> (usize, usize) {
    let mut best = (f64::INFINITY, (1, 1));
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let fp = integrate(|s| candidate_probability(s, b, r), 0.0, threshold);
            let fn_ = integrate(|s| 1.0 - candidate_probability(s, b, r), threshold, 1.0);
            let error = 0.5 * fp + 0.5 * fn_;
            if error < best.0 {
                best = (error, (b, r));
            }
        }
    }
    best.1
}

/// Computes MinHash signatures.
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    shingle: usize,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingle: usize, seed: u64) -> Self {
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for i in 0..num_perm as u64 {
            let x = splitmix64(seed.wrapping_add(i).wrapping_mul(2));
            a.push(x | 1);
            b.push(splitmix64(x));
        }
        Self {
            a,
            b,
            shingle: shingle.max(1),
        }
    }

    /// Shingle hashes of a normalised text.
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let words: Vec<u64> = text
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| fnv1a(w.as_bytes()))
            .collect();
        let k = self.shingle.min(words.len()).max(1);
        if words.is_empty() {
            return vec![splitmix64(0)];
        }
        words
            .windows(k)
            .map(|window| {
                window
                    .iter()
                    .fold(k as u64, |h, &w| splitmix64(h.rotate_left(17) ^ w))
            })
            .collect()
    }

    /// The signature of a set of shingle hashes (duplicates in the list do not matter).
    pub fn signature(&self, shingles: &[u64]) -> Vec<u32> {
        let mut sig = vec![u32::MAX; self.a.len()];
        for &x in shingles {
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let v = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                if v < *s {
                    *s = v;
                }
            }
        }
        sig
    }
}

/// The band keys of a signature: one u64 per band.
pub fn band_keys(sig: &[u32], bands: usize, rows: usize) -> Vec<u64> {
    (0..bands)
        .map(|band| {
            sig[band * rows..(band + 1) * rows]
                .iter()
                .fold(splitmix64(band as u64), |h, &v| {
                    splitmix64(h ^ u64::from(v))
                })
        })
        .collect()
}

/// The LSH index of the kept records.
pub struct Lsh {
    tables: Vec<HashSet<u64>>,
}

impl Lsh {
    pub fn new(bands: usize) -> Self {
        Self {
            tables: (0..bands).map(|_| HashSet::new()).collect(),
        }
    }

    /// True when no kept record shares a band with `keys`; the record is then kept and remembered.
    pub fn insert_if_new(&mut self, keys: &[u64]) -> bool {
        if keys.iter().zip(&self.tables).any(|(k, t)| t.contains(k)) {
            return false;
        }
        for (k, t) in keys.iter().zip(&mut self.tables) {
            t.insert(*k);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = String::new();
        normalise_into(s, &mut out);
        out
    }

    #[test]
    fn normalisation_lowercases_and_collapses_whitespace() {
        assert_eq!(norm("  Hello\t\nWORLD  Ünïcode "), "hello world ünïcode");
        assert_eq!(exact_key(&norm("A  b")), exact_key(&norm("a b")));
        assert_ne!(exact_key("a b"), exact_key("a c"));
    }

    #[test]
    fn params_match_datasketch() {
        // Values printed by datasketch 2.0.0: _optimal_param(t, n, 0.5, 0.5).
        for (t, n, want) in [
            (0.5, 128, (25, 5)),
            (0.7, 128, (14, 9)),
            (0.8, 64, (5, 11)),
            (0.8, 128, (9, 13)),
            (0.8, 256, (17, 15)),
            (0.9, 128, (5, 25)),
        ] {
            assert_eq!(optimal_params(t, n), want, "threshold {t}, num_perm {n}");
        }
    }

    fn jaccard(a: &[u64], b: &[u64]) -> f64 {
        let a: HashSet<_> = a.iter().collect();
        let b: HashSet<_> = b.iter().collect();
        a.intersection(&b).count() as f64 / a.union(&b).count() as f64
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let h = MinHasher::new(256, 3, 1);
        let base: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let mut other = base.clone();
        for i in (0..200).step_by(10) {
            other[i] = format!("x{i}");
        }
        let (sa, sb) = (h.shingles(&base.join(" ")), h.shingles(&other.join(" ")));
        let truth = jaccard(&sa, &sb);
        let (ga, gb) = (h.signature(&sa), h.signature(&sb));
        let est = ga.iter().zip(&gb).filter(|(x, y)| x == y).count() as f64 / 256.0;
        assert!(
            (est - truth).abs() < 0.1,
            "estimate {est} vs jaccard {truth}"
        );
        assert!(truth > 0.3 && truth < 0.8, "{truth}");
    }

    #[test]
    fn lsh_keeps_the_first_of_near_duplicates() {
        let h = MinHasher::new(128, 3, 1);
        let (bands, rows) = optimal_params(0.8, 128);
        let mut lsh = Lsh::new(bands);
        let text: Vec<String> = (0..100).map(|i| format!("word{i}")).collect();
        let mut near = text.clone();
        near[50] = "changed".into();
        let far: Vec<String> = (0..100).map(|i| format!("other{i}")).collect();
        let key =
            |words: &[String]| band_keys(&h.signature(&h.shingles(&words.join(" "))), bands, rows);
        assert!(lsh.insert_if_new(&key(&text)));
        assert!(
            !lsh.insert_if_new(&key(&near)),
            "a one-word change is a near duplicate"
        );
        assert!(lsh.insert_if_new(&key(&far)));
        assert!(!lsh.insert_if_new(&key(&text)));
    }
}
