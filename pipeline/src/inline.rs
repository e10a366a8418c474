//! Short strings held inline: event ids and customer keys, kept per retained event and per
//! customer in the sessionizer's and the detector's state.
//!
//! A `Box<str>` per id is an allocation when the event arrives (the allocator hands out a
//! block freed long before, a cache miss), a free when it is pruned, and a pointer to follow
//! whenever it is compared. Inline, up to [`INLINE`] bytes, it is none of these.

use std::fmt;

/// Inline strings up to this many bytes (a generated event id has 18 to 23, a customer key
/// 10 to 20, a phone pseudonym key more).
pub const INLINE: usize = 23;

/// A short string, inline when it fits (padded with 0xff, which UTF-8 never contains), else
/// boxed: no allocation, and no pointer to follow when compared. Equality and hashing are
/// those of its bytes (so a map keyed by it is searched by `&[u8]`); it derefs to `str`, for
/// ordering and `to_string` too. (No `Display`: `to_string` would then go through the
/// formatter and grow its string, where `str`'s copies the text in one allocation.) 24 bytes.
#[derive(Clone)]
pub struct InlineStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline([u8; INLINE]),
    Boxed(Box<str>),
}

const _: () = assert!(std::mem::size_of::<InlineStr>() == 24);

impl Default for InlineStr {
    fn default() -> InlineStr {
        InlineStr(Repr::Inline([0xff; INLINE]))
    }
}

impl PartialEq for InlineStr {
    fn eq(&self, other: &InlineStr) -> bool {
        match (&self.0, &other.0) {
            // The padding is the same for the same text, so the arrays compare as the texts.
            (Repr::Inline(a), Repr::Inline(b)) => a == b,
            (Repr::Boxed(a), Repr::Boxed(b)) => a == b,
            // Only a text too long to be inline is boxed.
            _ => false,
        }
    }
}

impl Eq for InlineStr {}

impl std::hash::Hash for InlineStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for InlineStr {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::ops::Deref for InlineStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for InlineStr {
    fn from(s: &str) -> InlineStr {
        InlineStr::new(s)
    }
}

impl From<String> for InlineStr {
    fn from(s: String) -> InlineStr {
        InlineStr::new(&s)
    }
}

impl fmt::Debug for InlineStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl InlineStr {
    /// `s`, inline if it fits.
    pub fn new(s: &str) -> InlineStr {
        let b = s.as_bytes();
        if b.len() <= INLINE {
            let mut a = [0xffu8; INLINE];
            a[..b.len()].copy_from_slice(b);
            InlineStr(Repr::Inline(a))
        } else {
            InlineStr(Repr::Boxed(s.into()))
        }
    }

    /// The text's bytes (no UTF-8 check: compare with these).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(a) => &a[..inline_len(a)],
            Repr::Boxed(s) => s.as_bytes(),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes were copied from a `str` up to the padding: always valid UTF-8.
            Repr::Inline(_) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Boxed(s) => s,
        }
    }
}

/// The length of the text in a padded inline array: the position of its first 0xff byte,
/// found a word at a time (this runs for every key compared or hashed, so a byte loop showed in
/// the profiles).
fn inline_len(a: &[u8; INLINE]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Three words, the last overlapping the second (bytes 15 to 22).
    for at in [0, 8, INLINE - 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&a[at..at + 8]);
        // 0xff bytes are the zero bytes of the complement; the lowest set bit of this marks
        // the first of them (a borrow can only mark bytes above a zero byte).
        let x = !u64::from_le_bytes(w);
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return at + zero.trailing_zeros() as usize / 8;
        }
    }
    INLINE
}

#[cfg(test)]
mod tests {
    use super::{InlineStr, Repr, INLINE};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inline_strings_read_back_and_compare_as_their_text(a in "[a\\x00\u{e9}\u{1F600}:0-9]{0,30}", b in "[a\\x00\u{e9}:]{0,3}") {
            // Lengths around the inline limit (23 bytes), multi-byte characters, NUL bytes.
            let (x, y) = (InlineStr::new(&a), InlineStr::new(&b));
            prop_assert_eq!(x.as_bytes(), a.as_bytes());
            prop_assert_eq!(x.as_str(), a.as_str());
            prop_assert_eq!(&*x, a.as_str());
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.cmp(&y), a.as_bytes().cmp(b.as_bytes()));
            prop_assert_eq!(x.to_string(), a.clone());
            prop_assert_eq!(format!("{x:?}"), format!("{a:?}"));
            prop_assert!(x == InlineStr::new(&a));
            prop_assert!(x == InlineStr::from(a.clone()));
        }
    }

    #[test]
    fn every_inline_length_reads_back() {
        for n in 0..=INLINE + 2 {
            let s = "x".repeat(n);
            assert_eq!(InlineStr::new(&s).as_bytes(), s.as_bytes(), "length {n}");
            assert_eq!(matches!(InlineStr::new(&s).0, Repr::Inline(_)), n <= INLINE);
        }
        assert_eq!(InlineStr::default().as_str(), "");
    }
}
