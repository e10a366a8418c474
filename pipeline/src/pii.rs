//! Pseudonymisation of personal identifiers. Phone numbers never reach ClickHouse or logs in
//! clear: they become an HMAC-SHA256 under a key that comes only from the environment
//! (`JOURNEY_PII_KEY`), so joins still work and the key can be rotated by re-keying.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Environment variable holding the pseudonymisation key.
pub const PII_KEY_ENV: &str = "JOURNEY_PII_KEY";

/// Keyed hashing of identifiers.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<key hidden>)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer with the given key (at least 16 bytes).
    pub fn new(key: &[u8]) -> Result<Pseudonymizer, crate::Error> {
        if key.len() < 16 {
            return Err(crate::Error::MissingSecret(PII_KEY_ENV, "the key must be at least 16 bytes"));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| crate::Error::MissingSecret(PII_KEY_ENV, "invalid key"))?;
        Ok(Pseudonymizer { mac })
    }

    /// The pseudonymizer keyed from `JOURNEY_PII_KEY`.
    pub fn from_env() -> Result<Pseudonymizer, crate::Error> {
        let key = std::env::var(PII_KEY_ENV).map_err(|_| {
            crate::Error::MissingSecret(PII_KEY_ENV, "set it to a secret of at least 16 bytes (scripts/ generate one under .local/)")
        })?;
        Pseudonymizer::new(key.as_bytes())
    }

    /// Hex of the first 16 bytes of HMAC-SHA256(key, value).
    pub fn hash(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(32);
        for b in &out[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_pseudonym_other_key_other_pseudonym() {
        let a = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let b = Pseudonymizer::new(b"fedcba9876543210").unwrap();
        assert_eq!(a.hash("79990001122"), a.hash("79990001122"));
        assert_ne!(a.hash("79990001122"), b.hash("79990001122"));
        assert!(!a.hash("79990001122").contains("7999"));
        assert!(Pseudonymizer::new(b"short").is_err());
    }
}
