//! Passwords, as the server keeps them: only what SCRAM needs to check a login and to prove itself
//! (`netdisk_protocol::login`): the salt, the argon2id cost, StoredKey and ServerKey. A copy of the database logs
//! nobody in. Stored as `scram-argon2id$m=M,t=T,p=P$SALT$STOREDKEY$SERVERKEY` (hex).

use netdisk_protocol::login::{salted_password, Kdf, StoredKeys, DEFAULT_KDF};
use sha2::{Digest, Sha256};

const PREFIX: &str = "scram-argon2id";

/// What the server keeps of one password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub salt: Vec<u8>,
    pub kdf: Kdf,
    pub keys: StoredKeys,
}

impl Secret {
    fn from_salted(salt: Vec<u8>, kdf: Kdf, salted: &[u8; 32]) -> Secret {
        Secret { salt, kdf, keys: StoredKeys::from_salted(salted) }
    }

    pub fn encode(&self) -> String {
        let Kdf { m_cost, t_cost, p_cost } = self.kdf;
        format!(
            "{PREFIX}$m={m_cost},t={t_cost},p={p_cost}${}${}${}",
            hex::encode(&self.salt),
            hex::encode(self.keys.stored_key),
            hex::encode(self.keys.server_key)
        )
    }

    pub fn decode(stored: &str) -> Option<Secret> {
        let mut parts = stored.split('$');
        if parts.next()? != PREFIX {
            return None;
        }
        let mut kdf = [0u32; 3];
        for (slot, (field, want)) in kdf.iter_mut().zip(parts.next()?.split(',').zip(["m", "t", "p"])) {
            let (name, value) = field.split_once('=')?;
            if name != want {
                return None;
            }
            *slot = value.parse().ok()?;
        }
        let salt = hex::decode(parts.next()?).ok()?;
        let mut keys = StoredKeys { stored_key: [0; 32], server_key: [0; 32] };
        hex::decode_to_slice(parts.next()?, &mut keys.stored_key).ok()?;
        hex::decode_to_slice(parts.next()?, &mut keys.server_key).ok()?;
        parts.next().is_none().then_some(Secret {
            salt,
            kdf: Kdf { m_cost: kdf[0], t_cost: kdf[1], p_cost: kdf[2] },
            keys,
        })
    }
}

/// What to store for a new password: a fresh salt, argon2's default cost.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = vec![0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for a salt: {e}"))?;
    let salted = salted_password(password, &salt, &DEFAULT_KDF)?;
    Ok(Secret::from_salted(salt, DEFAULT_KDF, &salted).encode())
}

/// A password hash of schema version 5 and before (an argon2id PHC string: its output is SaltedPassword) as this
/// version stores it; `None` for anything else.
pub fn from_phc(phc: &str) -> Option<String> {
    use argon2::password_hash::PasswordHash;
    let parsed = PasswordHash::new(phc).ok()?;
    if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(0x13) {
        return None;
    }
    let param = |name: &str| parsed.params.get_decimal(name);
    let kdf = Kdf { m_cost: param("m")?, t_cost: param("t")?, p_cost: param("p")? };
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?.to_vec();
    let salted: [u8; 32] = parsed.hash?.as_bytes().try_into().ok()?;
    Some(Secret::from_salted(salt, kdf, &salted).encode())
}

/// The stand-in for a name nobody has: a salt derived from the name (the same answer every time, as for a real
/// user) and keys no password matches.
pub fn unknown_user(server_secret: &[u8], name: &str) -> Secret {
    let salt = Sha256::new()
        .chain_update(b"netdisk unknown user salt\0")
        .chain_update(server_secret)
        .chain_update(name)
        .finalize();
    let mut keys = StoredKeys { stored_key: [0; 32], server_key: [0; 32] };
    let _ = getrandom::getrandom(&mut keys.stored_key);
    let _ = getrandom::getrandom(&mut keys.server_key);
    Secret { salt: salt[..16].to_vec(), kdf: DEFAULT_KDF, keys }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdisk_protocol::login::{auth_message, client_proof, proof_is_right};

    #[test]
    fn a_stored_password_checks_a_proof_and_nothing_else() {
        let stored = hash_password("secret").unwrap();
        assert!(!stored.contains("secret"));
        let secret = Secret::decode(&stored).unwrap();
        assert_eq!(Secret::decode(&secret.encode()), Some(secret.clone()));
        let message = auth_message("ann", "n", &hex::encode(&secret.salt), &secret.kdf, "r");
        let salted = salted_password("secret", &secret.salt, &secret.kdf).unwrap();
        assert!(proof_is_right(&secret.keys, &message, &client_proof(&salted, &message)));
        let wrong = salted_password("Secret", &secret.salt, &secret.kdf).unwrap();
        assert!(!proof_is_right(&secret.keys, &message, &client_proof(&wrong, &message)));
        assert_eq!(Secret::decode("not a secret"), None);
        assert_eq!(Secret::decode(&format!("{stored}$extra")), None);
    }

    #[test]
    fn an_old_argon2_hash_becomes_the_same_password() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let phc = argon2::Argon2::default().hash_password(b"secret", &salt).unwrap().to_string();
        let secret = Secret::decode(&from_phc(&phc).unwrap()).unwrap();
        let salted = salted_password("secret", &secret.salt, &secret.kdf).unwrap();
        assert_eq!(StoredKeys::from_salted(&salted), secret.keys);
        assert_eq!(from_phc("$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaA"), None);
    }

    #[test]
    fn an_unknown_name_gets_the_same_salt_every_time() {
        let (a, b) = (unknown_user(b"k", "bob"), unknown_user(b"k", "bob"));
        assert_eq!(a.salt, b.salt);
        assert_ne!(a.salt, unknown_user(b"k", "eve").salt);
        assert_ne!(a.keys, b.keys, "no password matches: fresh random keys");
    }
}
