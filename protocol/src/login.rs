//! Logging in without the password on the wire, in a way no captured exchange can replay: SCRAM (RFC 5802) with
//! SHA-256, over argon2id as the password hash. No I/O; both ends and the tests use it.
//!
//! ```text
//! client                                            server (keeps salt, argon2 parameters, StoredKey, ServerKey)
//!   Hello { user, client_nonce }            ──▶
//!                                           ◀──   HelloRes { salt, kdf, server_nonce }      (fresh nonce)
//!   SaltedPassword = argon2id(password, salt, kdf)        ClientKey = HMAC(SaltedPassword, "Client Key")
//!   ClientProof = ClientKey ⊕ HMAC(SHA-256(ClientKey), AuthMessage)
//!   Login { proof }                         ──▶   SHA-256(ClientProof ⊕ HMAC(StoredKey, AuthMessage)) = StoredKey?
//!                                           ◀──   LoginRes { .., server_signature = HMAC(ServerKey, AuthMessage) }
//!   the client checks server_signature: only a server holding this user's keys can make it
//! ```
//!
//! AuthMessage names the user, both nonces, the salt and the parameters, so a proof is worth nothing for any other
//! exchange. The server stores only StoredKey and ServerKey: a copy of its database does not log anyone in (it
//! still allows a guessing attack, slowed by argon2id). A client bounds the parameters a server may ask for.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The argon2id cost a server asks for (memory in KiB, passes, lanes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

/// What the server keeps for argon2's default (OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane).
pub const DEFAULT_KDF: Kdf = Kdf { m_cost: 19 * 1024, t_cost: 2, p_cost: 1 };
/// The most a client spends on one login (a server asking for more is refused, not obeyed): 256 MiB, 10 passes.
pub const MAX_KDF: Kdf = Kdf { m_cost: 256 * 1024, t_cost: 10, p_cost: 8 };
/// Salt length bounds, bytes (argon2's own minimum; the server makes 16-byte salts).
pub const MIN_SALT: usize = 8;
pub const MAX_SALT: usize = 64;

impl Kdf {
    /// Within what a client accepts (and argon2 can run).
    pub fn is_reasonable(&self) -> bool {
        (8 * self.p_cost.max(1)..=MAX_KDF.m_cost).contains(&self.m_cost)
            && (1..=MAX_KDF.t_cost).contains(&self.t_cost)
            && (1..=MAX_KDF.p_cost).contains(&self.p_cost)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot derive the login key: {0}")]
pub struct KdfError(String);

/// SaltedPassword: argon2id of the password with this salt and cost.
pub fn salted_password(password: &str, salt: &[u8], kdf: &Kdf) -> Result<[u8; 32], KdfError> {
    use argon2::{Algorithm, Argon2, Params, Version};
    if !kdf.is_reasonable() {
        return Err(KdfError(format!("unreasonable parameters {kdf:?}")));
    }
    let params = Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32)).map_err(|e| KdfError(e.to_string()))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| KdfError(e.to_string()))?;
    Ok(out)
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// What a server keeps of a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKeys {
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl StoredKeys {
    pub fn from_salted(salted: &[u8; 32]) -> StoredKeys {
        StoredKeys {
            stored_key: Sha256::digest(hmac(salted, b"Client Key")).into(),
            server_key: hmac(salted, b"Server Key"),
        }
    }
}

/// The one string both ends sign: it ties a proof to this user, these nonces, this salt and cost.
pub fn auth_message(user: &str, client_nonce: &str, salt_hex: &str, kdf: &Kdf, server_nonce: &str) -> String {
    // The user name goes last and escaped, so that no name can shift the other fields.
    format!(
        "n={client_nonce},r={server_nonce},s={salt_hex},m={},t={},p={},u={}",
        kdf.m_cost,
        kdf.t_cost,
        kdf.p_cost,
        user.escape_default()
    )
}

/// The client's proof (hex).
pub fn client_proof(salted: &[u8; 32], auth_message: &str) -> String {
    let client_key = hmac(salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    hex::encode(xor(&client_key, &hmac(&stored_key, auth_message.as_bytes())))
}

/// The server's check of a proof, in constant time.
pub fn proof_is_right(keys: &StoredKeys, auth_message: &str, proof_hex: &str) -> bool {
    let mut proof = [0u8; 32];
    if hex::decode_to_slice(proof_hex, &mut proof).is_err() {
        return false;
    }
    let client_key = xor(&proof, &hmac(&keys.stored_key, auth_message.as_bytes()));
    let derived: [u8; 32] = Sha256::digest(client_key).into();
    derived.iter().zip(&keys.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The server's signature (hex): proof that it holds this user's keys.
pub fn server_signature(keys: &StoredKeys, auth_message: &str) -> String {
    hex::encode(hmac(&keys.server_key, auth_message.as_bytes()))
}

/// The client's check of the server's signature, in constant time.
pub fn server_signature_is_right(salted: &[u8; 32], auth_message: &str, signature_hex: &str) -> bool {
    let keys = StoredKeys::from_salted(salted);
    crate::constant_time_eq(&server_signature(&keys, auth_message), signature_hex)
}

/// The client's first step: a `Hello` with a fresh nonce.
pub fn hello(user: &str) -> crate::Hello {
    crate::Hello { user: user.to_string(), client_nonce: nonce() }
}

/// The salt a server sent (its answer was checked: hex of a sound length).
pub fn salt_of(res: &crate::HelloRes) -> Result<Vec<u8>, KdfError> {
    hex::decode(&res.salt).map_err(|e| KdfError(format!("salt: {e}")))
}

/// The client's second step, once it has SaltedPassword for the server's salt and cost: the `Login` to send, and
/// the AuthMessage to check the server's signature against.
pub fn answer(hello: &crate::Hello, res: &crate::HelloRes, salted: &[u8; 32]) -> (crate::Login, String) {
    let message = auth_message(&hello.user, &hello.client_nonce, &res.salt, &res.kdf, &res.server_nonce);
    (crate::Login { proof: client_proof(salted, &message) }, message)
}

/// A fresh nonce (64 hex digits) from the operating system's randomness.
pub fn nonce() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system's randomness");
    hex::encode(bytes)
}

/// The server's side of a login for a server that knows the password itself: test servers (the mount's in-memory
/// server, a fake server). A real server keeps only [`StoredKeys`] (`netdisk-server`'s `users.rs`).
pub struct KnownPassword {
    salt: Vec<u8>,
    kdf: Kdf,
    keys: StoredKeys,
}

impl KnownPassword {
    /// With the smallest argon2id cost: a login costs microseconds.
    pub fn new(password: &str) -> KnownPassword {
        let (salt, kdf) = (vec![1u8; MIN_SALT], Kdf { m_cost: 8, t_cost: 1, p_cost: 1 });
        let salted = salted_password(password, &salt, &kdf).expect("argon2id with the smallest cost");
        KnownPassword { salt, kdf, keys: StoredKeys::from_salted(&salted) }
    }

    /// The answer to a `Hello`, and the AuthMessage of the exchange.
    pub fn hello(&self, r: &crate::Hello) -> (crate::HelloRes, String) {
        let res = crate::HelloRes { salt: hex::encode(&self.salt), kdf: self.kdf, server_nonce: nonce() };
        let message = auth_message(&r.user, &r.client_nonce, &res.salt, &res.kdf, &res.server_nonce);
        (res, message)
    }

    /// The server signature for the `Login` of the exchange `message`, if its proof is right.
    pub fn login(&self, message: &str, r: &crate::Login) -> Option<String> {
        proof_is_right(&self.keys, message, &r.proof).then(|| server_signature(&self.keys, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_login_proves_both_ways_and_binds_to_its_exchange() {
        let kdf = Kdf { m_cost: 64, t_cost: 1, p_cost: 1 };
        let salt = [7u8; 16];
        let salted = salted_password("pw", &salt, &kdf).unwrap();
        let keys = StoredKeys::from_salted(&salted);
        let message = auth_message("ann", &"a".repeat(64), &hex::encode(salt), &kdf, &"b".repeat(64));
        let proof = client_proof(&salted, &message);
        assert!(proof_is_right(&keys, &message, &proof));
        assert!(server_signature_is_right(&salted, &message, &server_signature(&keys, &message)));
        // Another nonce (a replay on a new connection), a wrong password, a forged signature: refused.
        let other = auth_message("ann", &"a".repeat(64), &hex::encode(salt), &kdf, &"c".repeat(64));
        assert!(!proof_is_right(&keys, &other, &proof));
        let wrong = salted_password("pW", &salt, &kdf).unwrap();
        assert!(!proof_is_right(&keys, &message, &client_proof(&wrong, &message)));
        assert!(!server_signature_is_right(&wrong, &message, &server_signature(&keys, &message)));
        assert!(!proof_is_right(&keys, &message, "not hex"));
        // A name cannot shift the fields it is signed with.
        assert_ne!(auth_message("a,r=x", "n", "s", &kdf, "r"), auth_message("a", "n", "s", &kdf, "r"));
    }

    #[test]
    fn unreasonable_costs_are_refused_before_any_work() {
        for kdf in [
            Kdf { m_cost: MAX_KDF.m_cost + 1, ..DEFAULT_KDF },
            Kdf { t_cost: 0, ..DEFAULT_KDF },
            Kdf { t_cost: 11, ..DEFAULT_KDF },
            Kdf { p_cost: 0, ..DEFAULT_KDF },
            Kdf { m_cost: 4, ..DEFAULT_KDF },
        ] {
            assert!(salted_password("pw", &[0; 16], &kdf).is_err(), "{kdf:?}");
        }
        assert!(DEFAULT_KDF.is_reasonable());
    }
}
