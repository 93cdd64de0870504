//! Stable record ids.
//!
//! An id is the lowercase hex of the first 16 bytes of SHA-256 over the parts that define a record,
//! each part followed by a 0x1F (unit separator) byte so that `["ab","c"]` and `["a","bc"]` differ.
//! Ids depend on content only: the same input gives the same ids on every machine and thread count.

use sha2::{Digest, Sha256};

/// Id of a record defined by `parts` (see the module docs for the exact recipe).
pub fn stable_id<P: AsRef<[u8]>>(parts: &[P]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_ref());
        hasher.update([0x1f]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Full SHA-256 hex digest of `bytes` (file digests, prompt digests, cache keys).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Full SHA-256 hex digest of a file's bytes, read in a stream (model weights run to gigabytes).
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_32_hex_and_separates_parts() {
        let a = stable_id(&["ab", "c"]);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, stable_id(&["a", "bc"]));
        assert_eq!(a, stable_id(&["ab".to_string(), "c".to_string()]));
    }

    #[test]
    fn id_matches_the_documented_recipe() {
        // Computed independently with coreutils: printf 'hello\x1f' | sha256sum
        let want = "59f0b2b1911b8022cd91cdc20938a751542e1ac1815fd9e8a0de0886cd5b7e4b";
        assert_eq!(stable_id(&["hello"]), &want[..32]);
        assert_eq!(sha256_hex(b"hello\x1f"), want);
    }

    #[test]
    fn file_digest_streams_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        // printf 'hello\n' | sha256sum
        let want = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        assert_eq!(sha256_file(&path).unwrap(), want);
        assert_eq!(sha256_hex(b"hello\n"), want);
        let err = sha256_file(&dir.path().join("missing")).unwrap_err();
        assert!(
            format!("{err:#}").contains("missing: cannot open"),
            "{err:#}"
        );
    }
}
