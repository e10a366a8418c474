//! Deadlines of per-customer slots, for the sessionizer's and the detector's timers.
//!
//! Entries are never removed before they come up: a slot keeps its own current deadline, and
//! an entry that no longer matches it is skipped when popped. That makes arming a push, where
//! an ordered set of every customer's deadline took a cold B-tree descent per insert and per
//! removal. Entries come out in (deadline, slot) order, as from the ordered set.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Slot deadlines, bucketed by `width`: deadlines cluster (the detector rounds its pruning
/// deadlines to a grid; the sessionizer's follow event time), so an insert is mostly a push
/// onto a bucket that already exists, in a map of a few hundred buckets that stays in cache.
/// Duplicates are not merged (see the module docs).
///
/// A bucket is a plain vector until entries are first taken from it, and only then made a
/// min-heap (in one linear pass): an insert into a later bucket is a push onto its hot tail,
/// where a heap's sift-up read the parent entries, out in the cold middle of a large bucket.
#[derive(Debug)]
pub(crate) struct Timers {
    width: i64,
    /// Bucket number (deadline / width) -> its entries; empty buckets are removed.
    buckets: BTreeMap<i64, Bucket>,
}

/// One bucket's entries: pushed onto `fresh` while nothing has been taken from it, then all
/// made a heap at the first take; once draining, an insert goes onto the heap.
#[derive(Debug, Default)]
struct Bucket {
    fresh: Vec<(i64, usize)>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Timers {
    /// Empty, with buckets `width` wide.
    pub(crate) fn new(width: i64) -> Timers {
        Timers { width: width.max(1), buckets: BTreeMap::new() }
    }

    /// Adds an entry (a duplicate is kept: it comes out beside the first).
    pub(crate) fn insert(&mut self, deadline: i64, idx: usize) {
        let b = self.buckets.entry(deadline.div_euclid(self.width)).or_default();
        if b.heap.is_empty() {
            b.fresh.push((deadline, idx));
        } else {
            b.heap.push(Reverse((deadline, idx)));
        }
    }

    /// Bytes of the entries' buffers, for the state figures.
    pub(crate) fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(i64, usize)>();
        self.buckets.values().map(|b| (b.fresh.capacity() + b.heap.capacity()) * entry).sum()
    }

    /// Removes and returns the earliest entry if its deadline is before `wm`.
    pub(crate) fn pop_before(&mut self, wm: i64) -> Option<(i64, usize)> {
        let mut first = self.buckets.first_entry()?;
        // Every deadline of the first bucket is at or after its start: none is due before it.
        if first.key().saturating_mul(self.width) >= wm {
            return None;
        }
        let b = first.get_mut();
        if b.heap.is_empty() {
            // A bucket is removed when it empties, so its entries are all still fresh.
            b.heap = b.fresh.drain(..).map(Reverse).collect();
        }
        let &Reverse(top) = b.heap.peek()?;
        if top.0 >= wm {
            return None;
        }
        b.heap.pop();
        if b.heap.is_empty() {
            first.remove();
        }
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::Timers;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn timers_come_out_as_from_an_ordered_set(
            ops in proptest::collection::vec((any::<bool>(), -50i64..50, 0usize..6), 0..200),
            width in 1i64..20,
        ) {
            let mut t = Timers::new(width);
            let mut set = BTreeSet::new();
            for (insert, x, idx) in ops {
                if insert {
                    t.insert(x, idx);
                    set.insert((x, idx));
                } else {
                    let mut got = Vec::new();
                    while let Some(e) = t.pop_before(x) {
                        // Duplicates come out together; the set holds one copy.
                        if got.last() != Some(&e) {
                            got.push(e);
                        }
                    }
                    let want: Vec<(i64, usize)> = set.iter().copied().take_while(|e| e.0 < x).collect();
                    for e in &want {
                        set.remove(e);
                    }
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
