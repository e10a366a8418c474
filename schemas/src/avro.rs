//! A small, allocation-lean Avro binary reader and writer for the contract's own records.
//!
//! The generic `apache-avro` path builds a `Value` tree per record, which costs several
//! microseconds; the pipeline decodes and encodes every event, so the hot path uses these
//! hand-written primitives for the *current* schema versions. Tests check them byte for byte
//! against `apache-avro` on random records, and any other writer version goes through
//! `apache-avro`'s schema resolution (see [`crate::codec`]).

use crate::ContractError;
use std::collections::BTreeMap;

/// Appends Avro binary primitives to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoded bytes.
    pub buf: Vec<u8>,
}

impl Writer {
    /// A writer appending to `buf`.
    pub fn new(buf: Vec<u8>) -> Self {
        Writer { buf }
    }

    /// Zig-zag varint `long` (also `int`, `enum` index, union branch, block counts).
    #[inline]
    pub fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }

    /// Length-prefixed UTF-8 string.
    #[inline]
    pub fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Boolean as one byte.
    #[inline]
    pub fn boolean(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    /// `["null","string"]` union.
    #[inline]
    pub fn opt_string(&mut self, s: Option<&str>) {
        match s {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.string(s);
            }
        }
    }

    /// Array of strings, one block.
    pub fn string_array<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) {
        if items.len() > 0 {
            self.long(items.len() as i64);
            for s in items {
                self.string(s);
            }
        }
        self.long(0);
    }

    /// Map of strings, one block, keys in sorted order (deterministic bytes).
    pub fn string_map(&mut self, map: &BTreeMap<String, String>) {
        if !map.is_empty() {
            self.long(map.len() as i64);
            for (k, v) in map {
                self.string(k);
                self.string(v);
            }
        }
        self.long(0);
    }
}

/// Strings that fields of a reused record gave back when they became null, for fields that
/// need one again: decoding into a reused record ([`Reader::opt_string_into`],
/// [`Reader::string_map_into`]) then allocates only when a value outgrows the buffer it lands
/// in. Holds at most [`Spare::MAX`] strings.
#[derive(Debug, Default)]
pub struct Spare(Vec<String>);

impl Spare {
    /// Most strings kept; more are freed.
    pub const MAX: usize = 32;

    /// An emptied spare string, or a new one (which allocates nothing until written).
    pub fn take(&mut self) -> String {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps `s`'s buffer for a later [`Spare::take`].
    pub fn give(&mut self, mut s: String) {
        if self.0.len() < Self::MAX && s.capacity() > 0 {
            s.clear();
            self.0.push(s);
        }
    }

    /// Strings held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads Avro binary primitives from a slice; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(what: &str) -> ContractError {
    ContractError::Malformed(what.to_string())
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Zig-zag varint `long`.
    #[inline]
    pub fn long(&mut self) -> Result<i64, ContractError> {
        // One byte is the common case: union branches, enum indexes, short lengths.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(i64::from(b >> 1) ^ -i64::from(b & 1));
            }
        }
        self.long_multibyte()
    }

    /// [`Reader::long`] of more than one byte (or none left).
    #[inline(never)]
    fn long_multibyte(&mut self) -> Result<i64, ContractError> {
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(malformed("varint longer than 10 bytes"));
            }
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// `int`: a long that must fit 32 bits.
    pub fn int(&mut self) -> Result<i32, ContractError> {
        i32::try_from(self.long()?).map_err(|_| malformed("int out of range"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ContractError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| malformed("negative length"))?;
        if len > self.remaining() {
            return Err(malformed("length beyond end of record"));
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    /// Borrowed UTF-8 string.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, ContractError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| malformed("string is not UTF-8"))
    }

    /// Owned UTF-8 string.
    #[inline]
    pub fn string(&mut self) -> Result<String, ContractError> {
        self.str().map(str::to_owned)
    }

    /// [`Reader::string`] into `out`, reusing its buffer.
    #[inline]
    pub fn string_into(&mut self, out: &mut String) -> Result<(), ContractError> {
        let s = self.str()?;
        out.clear();
        out.push_str(s);
        Ok(())
    }

    /// Boolean byte, strictly 0 or 1.
    pub fn boolean(&mut self) -> Result<bool, ContractError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| malformed("truncated boolean"))?;
        self.pos += 1;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed("boolean byte is neither 0 nor 1")),
        }
    }

    /// `["null","string"]` union.
    pub fn opt_string(&mut self) -> Result<Option<String>, ContractError> {
        match self.long()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(malformed("union branch out of range")),
        }
    }

    /// [`Reader::opt_string`] into `out`, reusing its buffer, or one of `spare`'s; a null gives
    /// the buffer to `spare`.
    #[inline]
    pub fn opt_string_into(&mut self, out: &mut Option<String>, spare: &mut Spare) -> Result<(), ContractError> {
        match self.long()? {
            0 => {
                if let Some(s) = out.take() {
                    spare.give(s);
                }
                Ok(())
            }
            1 => self.string_into(out.get_or_insert_with(|| spare.take())),
            _ => Err(malformed("union branch out of range")),
        }
    }

    /// Reads one block header: item count (a negative count is followed by the block size).
    fn block_count(&mut self) -> Result<usize, ContractError> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?; // block size in bytes, not needed to decode
            n.checked_neg().ok_or_else(|| malformed("block count overflow"))?
        } else {
            n
        };
        let n = usize::try_from(n).map_err(|_| malformed("block count too large"))?;
        // Every item takes at least one byte: refuse counts that cannot fit.
        if n > self.remaining() {
            return Err(malformed("block count beyond end of record"));
        }
        Ok(n)
    }

    /// Array of strings (any number of blocks).
    pub fn string_array(&mut self) -> Result<Vec<String>, ContractError> {
        let mut out = Vec::new();
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(out);
            }
            out.reserve(n);
            for _ in 0..n {
                out.push(self.string()?);
            }
        }
    }

    /// Map of strings (any number of blocks; a repeated key keeps the last value).
    pub fn string_map(&mut self) -> Result<BTreeMap<String, String>, ContractError> {
        let mut out = BTreeMap::new();
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(out);
            }
            for _ in 0..n {
                let k = self.string()?;
                let v = self.string()?;
                out.insert(k, v);
            }
        }
    }

    /// [`Reader::string_map`] into `out`, whose entries' strings go to `spare` and are taken
    /// from it again for the new entries. The entries are popped one by one rather than the
    /// map dropped: an emptied map keeps its root node (hundreds of bytes), which the next
    /// record's entries then fill without allocating it again.
    pub fn string_map_into(&mut self, out: &mut BTreeMap<String, String>, spare: &mut Spare) -> Result<(), ContractError> {
        while let Some((k, v)) = out.pop_first() {
            spare.give(k);
            spare.give(v);
        }
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(());
            }
            for _ in 0..n {
                let k = self.str()?;
                let v = self.str()?;
                match out.get_mut(k) {
                    Some(slot) => {
                        slot.clear();
                        slot.push_str(v);
                    }
                    None => {
                        let (mut ks, mut vs) = (spare.take(), spare.take());
                        ks.push_str(k);
                        vs.push_str(v);
                        out.insert(ks, vs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn long_round_trips(v in any::<i64>()) {
            let mut w = Writer::default();
            w.long(v);
            let mut r = Reader::new(&w.buf);
            prop_assert_eq!(r.long().unwrap(), v);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn reader_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.string_map();
            let mut r = Reader::new(&bytes);
            let _ = r.string_array();
            let mut r = Reader::new(&bytes);
            let _ = r.opt_string();
        }
    }

    #[test]
    fn one_byte_longs_decode_as_the_general_path_does() {
        for b in 0u8..0x80 {
            let fast = Reader::new(&[b]).long().unwrap();
            let general = Reader::new(&[b]).long_multibyte().unwrap();
            assert_eq!(fast, general, "byte {b:#04x}");
        }
        for v in [-64i64, -1, 0, 1, 63, 64, -65, i64::MIN, i64::MAX] {
            let mut w = Writer::default();
            w.long(v);
            assert_eq!(Reader::new(&w.buf).long().unwrap(), v);
        }
        assert!(Reader::new(&[]).long().is_err(), "nothing to read");
        assert!(Reader::new(&[0x80]).long().is_err(), "truncated after a continuation byte");
    }

    #[test]
    fn rejects_length_past_end() {
        let mut w = Writer::default();
        w.long(10);
        w.buf.extend_from_slice(b"abc");
        assert!(matches!(Reader::new(&w.buf).str(), Err(ContractError::Malformed(_))));
    }
}
