//! A growable vector stored as fixed-size chunks, for the per-customer slot tables of the
//! sessionizer and the detector.
//!
//! A `Vec` of slots doubles as it grows: each doubling copies every slot into a new buffer
//! twice the size, fresh memory that the system has to zero first, and for a moment holds both.
//! With some hundred thousand slots of over a hundred bytes that is tens of megabytes copied
//! and touched for nothing. Chunks never move: growing adds one chunk, and an element stays
//! where it is, so its index is stable as in a `Vec`.

use std::ops::{Index, IndexMut};

/// Elements per chunk (a power of two, so an index splits with a shift and a mask).
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// See the module docs. Elements are only ever appended; indices are those of a `Vec`.
#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    /// Full chunks, then the last one; each allocated for exactly [`CHUNK`] elements.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> ChunkedVec<T> {
        ChunkedVec { chunks: Vec::new(), len: 0 }
    }
}

impl<T> ChunkedVec<T> {
    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements it holds room for without allocating.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Appends `v` and returns its index.
    pub(crate) fn push(&mut self, v: T) -> usize {
        if self.len == self.capacity() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let last = self.chunks.last_mut().expect("a chunk with room was just ensured");
        last.push(v);
        self.len += 1;
        self.len - 1
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

#[cfg(test)]
mod tests {
    use super::{ChunkedVec, CHUNK};
    use proptest::prelude::*;

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
    }
}
