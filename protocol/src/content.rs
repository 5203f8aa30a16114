//! What names a file's content, computed in one pass over its bytes: the md5 (the seed's lookup key), the SHA-256
//! (the content's identity: dedup and verification rely on it, never on md5 alone), and the proof tag
//! (SHA-256 of a server's proof salt and the bytes), from which a client answers an ownership challenge.
//! Architecture Invariant: a proof can be made only by whoever has read every byte of the content: the tag depends on
//! all of them, and the salt (a server's own, given at login) means no public hash of the content is the tag.

use md5::{Digest, Md5};
use sha2::Sha256;

/// What a proof tag hashes before the salt, so that it can never equal a hash computed for any other purpose.
const PROOF_TAG_DOMAIN: &[u8] = b"netdisk proof tag v1\0";

/// The hashes of one content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentHashes {
    /// Lowercase hex md5.
    pub md5: String,
    /// Lowercase hex SHA-256: the content's identity.
    pub sha256: String,
    /// Lowercase hex SHA-256 of [`PROOF_TAG_DOMAIN`], the salt, then the bytes.
    pub proof_tag: String,
}

/// md5, SHA-256 and proof tag of bytes fed in order.
#[derive(Clone)]
pub struct ContentHasher {
    md5: Md5,
    sha256: Sha256,
    tag: Sha256,
}

impl ContentHasher {
    /// A hasher whose proof tag is for the server that gave `proof_salt` (its bytes, see [`decode_salt`]).
    pub fn new(proof_salt: &[u8]) -> ContentHasher {
        ContentHasher { md5: Md5::new(), sha256: Sha256::new(), tag: tag_hasher(proof_salt) }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.tag.update(bytes);
    }

    pub fn finish(self) -> ContentHashes {
        ContentHashes {
            md5: hex::encode(self.md5.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            proof_tag: hex::encode(self.tag.finalize()),
        }
    }

    /// The three hashers, to be fed on separate threads and put back with [`ContentHasher::from_parts`].
    pub fn into_parts(self) -> (Md5, Sha256, Sha256) {
        (self.md5, self.sha256, self.tag)
    }

    pub fn from_parts(md5: Md5, sha256: Sha256, tag: Sha256) -> ContentHasher {
        ContentHasher { md5, sha256, tag }
    }
}

/// The proof-tag hasher before any byte of content.
pub fn tag_hasher(proof_salt: &[u8]) -> Sha256 {
    let mut tag = Sha256::new();
    tag.update(PROOF_TAG_DOMAIN);
    tag.update(proof_salt);
    tag
}

/// All hashes of bytes held in memory.
pub fn content_hashes(proof_salt: &[u8], bytes: &[u8]) -> ContentHashes {
    let mut h = ContentHasher::new(proof_salt);
    h.update(bytes);
    h.finish()
}

/// The answer to an ownership challenge: lowercase hex SHA-256 of the content's proof tag (its hex digits) and the
/// challenge's nonce (as sent). A fresh nonce per challenge makes an answer worthless for any other challenge.
pub fn ownership_proof(proof_tag: &str, nonce: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"netdisk ownership proof v1\0");
    h.update(proof_tag.as_bytes());
    h.update(b"\0");
    h.update(nonce.as_bytes());
    hex::encode(h.finalize())
}

/// True when `s` is `len` lowercase hex digits.
fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True when `s` looks like a lowercase hex md5 (32 hex digits).
pub fn is_md5_hex(s: &str) -> bool {
    is_lower_hex(s, 32)
}

/// True when `s` looks like a lowercase hex SHA-256 (64 hex digits): also the form of a proof tag, a proof and a salt.
pub fn is_sha256_hex(s: &str) -> bool {
    is_lower_hex(s, 64)
}

/// The bytes of a proof salt as sent at login (64 lowercase hex digits); `None` for anything else.
pub fn decode_salt(hex_salt: &str) -> Option<Vec<u8>> {
    is_sha256_hex(hex_salt).then(|| hex::decode(hex_salt).ok()).flatten()
}

/// Byte-by-byte equality in a time that does not depend on where two strings differ (proofs are compared so).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_in_pieces_equal_hashes_at_once() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 / 7) as u8).collect();
        let whole = content_hashes(b"salt", &data);
        let mut h = ContentHasher::new(b"salt");
        for piece in data.chunks(4093) {
            h.update(piece);
        }
        assert_eq!(h.finish(), whole);
        assert_eq!(whole.md5, crate::md5_hex(&data));
        assert_ne!(content_hashes(b"other salt", &data).proof_tag, whole.proof_tag, "the tag depends on the salt");
        assert_ne!(whole.proof_tag, whole.sha256);
        assert!(is_sha256_hex(&whole.sha256) && is_sha256_hex(&whole.proof_tag) && is_md5_hex(&whole.md5));
    }

    #[test]
    fn proofs_depend_on_tag_and_nonce() {
        let p = ownership_proof("aa", "01");
        assert!(is_sha256_hex(&p));
        assert_ne!(p, ownership_proof("aa", "02"));
        assert_ne!(p, ownership_proof("ab", "01"));
        assert!(constant_time_eq(&p, &ownership_proof("aa", "01")));
        assert!(!constant_time_eq(&p, &p[1..]));
        assert_eq!(decode_salt(&"0f".repeat(32)), Some(vec![0x0f; 32]));
        assert_eq!(decode_salt("0F"), None);
    }
}
