//! Pseudonymisation of personal identifiers. Phone numbers never reach ClickHouse or logs in
//! clear: they become an HMAC-SHA256 under a key that comes only from the environment
//! (`JOURNEY_PII_KEY`), so joins still work and the key can be rotated by re-keying.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{BuildHasher, RandomState};

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

/// Lower-case hex of 16 bytes.
pub fn hex16(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(32);
    push_hex16(bytes, &mut s);
    s
}

/// Appends the lower-case hex of 16 bytes to `s`.
pub fn push_hex16(bytes: &[u8; 16], s: &mut String) {
    with_hex16(bytes, |hex| s.push_str(hex));
}

/// Calls `f` with the lower-case hex of 16 bytes, spelled out on the stack (one copy into the
/// caller's string instead of a push per digit).
pub fn with_hex16<R>(bytes: &[u8; 16], f: impl FnOnce(&str) -> R) -> R {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, &b) in bytes.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    // Hex digits are ASCII, so this never falls back to the empty string.
    f(std::str::from_utf8(&buf).unwrap_or_default())
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

    /// The first 16 bytes of HMAC-SHA256(key, value).
    pub fn digest(&self, value: &str) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut d = [0u8; 16];
        d.copy_from_slice(&out[..16]);
        d
    }

    /// Hex of the first 16 bytes of HMAC-SHA256(key, value).
    pub fn hash(&self, value: &str) -> String {
        hex16(&self.digest(value))
    }
}

/// Turns raw phone numbers into pseudonyms: a [`Pseudonymizer`] or a [`PseudonymCache`].
pub trait Pseudonyms {
    /// The pseudonym of `raw` (what [`Pseudonymizer::hash`] returns).
    fn pseudonym(&mut self, raw: &str) -> String;

    /// Appends the pseudonym of `raw` to `out` (no allocation when `out` has room).
    fn pseudonym_into(&mut self, raw: &str, out: &mut String) {
        out.push_str(&self.pseudonym(raw));
    }
}

impl Pseudonyms for &Pseudonymizer {
    fn pseudonym(&mut self, raw: &str) -> String {
        self.hash(raw)
    }
}

impl Pseudonyms for &mut PseudonymCache {
    fn pseudonym(&mut self, raw: &str) -> String {
        self.hash(raw)
    }

    fn pseudonym_into(&mut self, raw: &str, out: &mut String) {
        push_hex16(&self.digest(raw), out);
    }
}

/// One slot of a [`PseudonymCache`]: a raw number's fingerprint and its pseudonym's bytes.
type Slot = Option<([u64; 2], [u8; 16])>;

/// Slots of a [`PseudonymCache`] by default (about 1.3 MB).
pub const PSEUDONYM_CACHE_SLOTS: usize = 1 << 15;

/// A [`Pseudonymizer`] that remembers the pseudonyms of recently seen phone numbers, because
/// one customer's events come in bursts (a call, its IVR steps, the SMS after it) and the
/// HMAC is the costliest step of stitching.
///
/// State, and why it is bounded and holds no raw number: a fixed table of `slots` entries,
/// each a 128-bit fingerprint of a raw number (SipHash under two random per-process keys, so
/// fingerprints cannot be precomputed or reversed by enumerating numbers without those keys)
/// and its pseudonym. A new number overwrites whatever shared its slot, so the table never
/// grows and needs no eviction pass.
#[derive(Debug)]
pub struct PseudonymCache {
    pseudo: Pseudonymizer,
    fingerprint: [RandomState; 2],
    slots: Box<[Slot]>,
    hits: u64,
    misses: u64,
}

impl PseudonymCache {
    /// A cache of [`PSEUDONYM_CACHE_SLOTS`] slots.
    pub fn new(pseudo: Pseudonymizer) -> PseudonymCache {
        PseudonymCache::with_slots(pseudo, PSEUDONYM_CACHE_SLOTS)
    }

    /// A cache of `slots` slots (rounded up to a power of two, at least 1).
    pub fn with_slots(pseudo: Pseudonymizer, slots: usize) -> PseudonymCache {
        let n = slots.max(1).next_power_of_two();
        PseudonymCache {
            pseudo,
            fingerprint: [RandomState::new(), RandomState::new()],
            slots: vec![None; n].into_boxed_slice(),
            hits: 0,
            misses: 0,
        }
    }

    /// The pseudonymizer behind the cache.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudo
    }

    /// [`Pseudonymizer::digest`] of `value`, from the cache when it is there.
    pub fn digest(&mut self, value: &str) -> [u8; 16] {
        let fp = [self.fingerprint[0].hash_one(value), self.fingerprint[1].hash_one(value)];
        // The mask keeps the index below the table's (power-of-two) length.
        let slot = &mut self.slots[fp[0] as usize & (self.slots.len() - 1)];
        if let Some((f, d)) = slot {
            if *f == fp {
                self.hits += 1;
                return *d;
            }
        }
        self.misses += 1;
        let d = self.pseudo.digest(value);
        *slot = Some((fp, d));
        d
    }

    /// [`Pseudonymizer::hash`] of `value`, from the cache when it is there.
    pub fn hash(&mut self, value: &str) -> String {
        hex16(&self.digest(value))
    }

    /// Lookups answered from the cache and lookups that computed the HMAC.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
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

    #[test]
    fn pseudonym_is_the_hex_of_the_hmac_prefix() {
        // The hex writer must give what the former `format!("{b:02x}")` per byte gave.
        let key = b"0123456789abcdef";
        let p = Pseudonymizer::new(key).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(b"79990001122");
        let full = mac.finalize().into_bytes();
        let expected: String = full[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p.hash("79990001122"), expected);
    }

    #[test]
    fn the_cache_answers_like_the_pseudonymizer_even_when_slots_collide() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        // Two slots for a hundred numbers: most lookups evict another number.
        let mut cache = PseudonymCache::with_slots(p.clone(), 2);
        for round in 0..3 {
            for i in 0..100 {
                let raw = format!("7999{i:07}");
                assert_eq!((&mut cache).pseudonym(&raw), p.hash(&raw), "round {round}");
            }
        }
        let mut cache = PseudonymCache::new(p.clone());
        for _ in 0..3 {
            assert_eq!((&mut cache).pseudonym("79990001122"), p.hash("79990001122"));
        }
        assert_eq!(cache.stats(), (2, 1));
    }
}
