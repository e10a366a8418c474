//! The per-customer slot tables of the sessionizer and the detector: slots in chunks that
//! never move, and an index from a customer's key to its slot.
//!
//! A `Vec` of slots doubles as it grows: each doubling copies every slot into a new buffer
//! twice the size, fresh memory that the system has to zero first, and for a moment holds both.
//! With some hundred thousand slots of over a hundred bytes that is tens of megabytes copied
//! and touched for nothing. Chunks never move: growing adds one chunk, and an element stays
//! where it is, so its index is stable as in a `Vec`.
//!
//! The index holds no key: an entry is the slot number and 32 bits of the key's hash, and the
//! key is the slot's own, compared on a probe (whose read of the slot the event goes on to use
//! anyway). Growing the index rehashes from the stored bits, not by reading every slot's key,
//! which would be a cache miss per customer; and a probe reads a slot only when its 32 bits
//! match.

use std::ops::{Index, IndexMut};

/// Elements per chunk (a power of two, so an index splits with a shift and a mask).
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// See the module docs. Elements are only ever appended; indices are those of a `Vec`.
#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    /// Full chunks, then the last one; each allocated for exactly [`CHUNK`] elements.
    chunks: Vec<Vec<T>>,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> ChunkedVec<T> {
        ChunkedVec { chunks: Vec::new() }
    }
}

impl<T> ChunkedVec<T> {
    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    /// Elements it holds room for without allocating.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Appends `v` and returns its index.
    pub(crate) fn push(&mut self, v: T) -> usize {
        let at = self.len();
        if at == self.capacity() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let last = self.chunks.last_mut().expect("a chunk with room was just ensured");
        last.push(v);
        at
    }

    /// The elements in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The elements in index order, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

/// Customer key -> slot number, for keys hashed by the caller (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SlotIndex {
    /// (slot, high 32 bits of the key's hash).
    table: hashbrown::HashTable<(u32, u32)>,
}

/// The table's hash of an entry, from its stored bits alone (so growing needs no key): the 32
/// bits in both halves, so that the low bits (the bucket) and the top seven (hashbrown's
/// control byte) both come from them.
fn table_hash(tag: u32) -> u64 {
    u64::from(tag) | (u64::from(tag) << 32)
}

fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl SlotIndex {
    /// The slot whose key has `hash` and for which `is_key(slot)` holds.
    pub(crate) fn get(&self, hash: u64, is_key: impl Fn(usize) -> bool) -> Option<usize> {
        let t = tag(hash);
        self.table.find(table_hash(t), |&(slot, tg)| tg == t && is_key(slot as usize)).map(|&(slot, _)| slot as usize)
    }

    /// Adds `slot`, whose key has `hash` and is not indexed yet.
    pub(crate) fn insert(&mut self, hash: u64, slot: usize) {
        // A slot takes over a hundred bytes, so 2^32 of them would need hundreds of GB.
        let slot = u32::try_from(slot).expect("fewer than 2^32 customer slots");
        let t = tag(hash);
        self.table.insert_unique(table_hash(t), (slot, t), |&(_, tg)| table_hash(tg));
    }

    /// Removes `slot`, whose key has `hash`.
    pub(crate) fn remove(&mut self, hash: u64, slot: usize) {
        if let Ok(e) = self.table.find_entry(table_hash(tag(hash)), |&(s, _)| s as usize == slot) {
            e.remove();
        }
    }

    /// Number of indexed slots.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes of the table (entries and control bytes), for the state figures.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<(u32, u32)>() + 1)
    }

    /// The indexed slots, in no particular order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.table.iter().map(|&(slot, _)| slot as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::{ChunkedVec, SlotIndex, CHUNK};
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #[test]
        fn behaves_as_a_vec(ops in proptest::collection::vec((any::<bool>(), any::<u32>(), any::<usize>()), 0..300), extra in 0..3 * CHUNK) {
            // Pushes across several chunk boundaries (`extra`), then random reads and writes.
            let (mut c, mut v) = (ChunkedVec::default(), Vec::new());
            for i in 0..extra {
                prop_assert_eq!(c.push(i as u32), v.len());
                v.push(i as u32);
            }
            for (write, x, at) in ops {
                if v.is_empty() || !write {
                    prop_assert_eq!(c.push(x), v.len());
                    v.push(x);
                } else {
                    let i = at % v.len();
                    c[i] = x;
                    v[i] = x;
                }
                prop_assert_eq!(c.len(), v.len());
                prop_assert!(c.capacity() >= c.len() && c.capacity() < c.len() + CHUNK + 1);
            }
            prop_assert!(c.iter().eq(v.iter()));
            for x in c.iter_mut() {
                *x = x.wrapping_add(1);
            }
            for (i, x) in v.iter().enumerate() {
                prop_assert_eq!(c[i], x.wrapping_add(1));
            }
        }

        #[test]
        fn index_finds_what_a_map_holds(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 0..400), hash_bits in 0u32..3) {
            // Keys 0..40 with hashes from few distinct values (hash_bits 0: all collide) to
            // many, so probes meet other keys' entries; slots are reused after removal.
            let groups = [1u64, 4, 256][hash_bits as usize];
            let hash = |k: u8| (u64::from(k) % groups + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let (mut index, mut keys, mut want) = (SlotIndex::default(), Vec::<Option<u8>>::new(), HashMap::new());
            for (insert, k) in ops {
                match (insert, want.get(&k).copied()) {
                    (true, None) => {
                        let slot = keys.iter().position(Option::is_none).unwrap_or(keys.len());
                        if slot == keys.len() {
                            keys.push(None);
                        }
                        keys[slot] = Some(k);
                        index.insert(hash(k), slot);
                        want.insert(k, slot);
                    }
                    (false, Some(slot)) => {
                        index.remove(hash(k), slot);
                        keys[slot] = None;
                        want.remove(&k);
                    }
                    _ => {}
                }
                for q in 0..40u8 {
                    prop_assert_eq!(index.get(hash(q), |s| keys[s] == Some(q)), want.get(&q).copied());
                }
                prop_assert_eq!(index.len(), want.len());
            }
            let mut slots: Vec<usize> = index.slots().collect();
            slots.sort_unstable();
            let mut expected: Vec<usize> = want.values().copied().collect();
            expected.sort_unstable();
            prop_assert_eq!(slots, expected);
        }
    }
}
