//! Ownership proofs: how a user gets content another user holds without sending it (cross-user instant upload).
//! A challenge is a fresh random nonce; the answer is `ownership_proof(proof_tag, nonce)`, where the proof tag is the
//! salted SHA-256 of every byte of the content (`netdisk_protocol::content`). So only whoever has read the whole
//! content can answer, and the store checks an answer against the tag it recorded at sealing, never reading the blob.
//! Architecture Invariant: a challenge is given whether or not anyone holds the content, and its check costs the same
//! either way (one indexed query and one SHA-256 of a few bytes): neither the answer nor its timing says more
//! than a right proof does. A user gets one challenge per content in [`PROOF_BLOCK_SECS`]; only a right answer
//! lifts that, so guessing, or answering from part of the content, cannot be retried.

use std::collections::VecDeque;

use netdisk_protocol::{constant_time_eq, ownership_proof, UploadFile, UploadFileRes};

/// How long a challenged (user, content) waits for another challenge when the answer was wrong or never came.
pub const PROOF_BLOCK_SECS: i64 = 24 * 3600;
/// Contents a user may be blocked for at once (a row each for a day): bounds what made-up names can add to the
/// database. Past it, new content gets the ordinary upload without a challenge until blocks expire.
pub const MAX_PROOF_BLOCKS: u32 = 16384;
/// Challenges a connection may have open at once; older ones are forgotten (and stay blocked).
const MAX_OPEN_CHALLENGES: usize = 64;
/// What a proof is checked against when nobody holds the content: no answer can match it, and checking takes
/// the same time as against a real tag.
const NO_TAG: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where challenge ids and nonces come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Random {
    /// The operating system's random source: what a server always uses.
    Os,
    /// The numbers from this one on (1, 2, 3 ...): a session that replays the same way every time, for the fuzz
    /// target and its corpus. Never for serving: it makes challenges predictable.
    Counter(u64),
}

impl Random {
    fn next_u64(&mut self) -> u64 {
        match self {
            Random::Os => {
                let mut bytes = [0u8; 8];
                getrandom::getrandom(&mut bytes).expect("the OS random source works");
                u64::from_ne_bytes(bytes)
            }
            Random::Counter(n) => {
                let value = *n;
                *n = n.wrapping_add(1);
                value
            }
        }
    }
}

/// A challenge given on this connection, with the request it answers.
pub struct Challenge {
    pub id: u64,
    pub nonce: String,
    pub request: UploadFile,
}

/// The challenges this connection has open.
pub struct Challenges {
    open: VecDeque<Challenge>,
    random: Random,
}

impl Challenges {
    pub fn new(random: Random) -> Challenges {
        Challenges { open: VecDeque::new(), random }
    }

    /// A fresh nonce: 64 hex digits (a challenge's, a login's).
    pub fn nonce(&mut self) -> String {
        let r = &mut self.random;
        format!("{:016x}{:016x}{:016x}{:016x}", r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64())
    }

    /// A new challenge for `request`, remembered until answered.
    pub fn issue(&mut self, request: UploadFile) -> UploadFileRes {
        let nonce = self.nonce();
        let id = self.random.next_u64();
        if self.open.len() >= MAX_OPEN_CHALLENGES {
            self.open.pop_front();
        }
        self.open.push_back(Challenge { id, nonce: nonce.clone(), request });
        UploadFileRes::Challenge { challenge_id: id, nonce }
    }

    /// The open challenge `id`, now closed (each is answered once).
    pub fn take(&mut self, id: u64) -> Option<Challenge> {
        let pos = self.open.iter().position(|c| c.id == id)?;
        self.open.remove(pos)
    }
}

/// Whether `proof` answers `nonce` for content with this tag (`None`: nobody holds it), in the same time either way.
pub fn proof_is_right(tag: Option<&str>, nonce: &str, proof: &str) -> bool {
    let expected = ownership_proof(tag.unwrap_or(NO_TAG), nonce);
    constant_time_eq(&expected, proof) & tag.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tags_proof_is_right() {
        let tag = "ab".repeat(32);
        let proof = ownership_proof(&tag, "n1");
        assert!(proof_is_right(Some(&tag), "n1", &proof));
        assert!(!proof_is_right(Some(&tag), "n2", &proof), "a proof is for one nonce");
        assert!(!proof_is_right(None, "n1", &proof), "nothing is right when nobody holds the content");
        assert!(!proof_is_right(None, "n1", &ownership_proof(NO_TAG, "n1")), "not even the dummy's own proof");
    }

    #[test]
    fn challenges_are_answered_once() {
        let mut c = Challenges::new(Random::Counter(1));
        let req = UploadFile {
            path: "/f".into(),
            size: 1,
            md5: String::new(),
            sha256: None,
            mode: 0o644,
            mtime: None,
            owner: Default::default(),
        };
        let UploadFileRes::Challenge { challenge_id, .. } = c.issue(req) else { panic!("a challenge") };
        assert!(c.take(challenge_id).is_some());
        assert!(c.take(challenge_id).is_none());
    }
}
