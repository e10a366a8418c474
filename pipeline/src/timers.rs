//! Deadlines of per-customer slots, for the sessionizer's and the detector's timers.
//!
//! Entries are never removed before they come up: a slot keeps its own current deadline, and
//! an entry that no longer matches it is skipped when popped. That makes arming a push, where
//! an ordered set of every customer's deadline took a cold B-tree descent per insert and per
//! removal. Entries come out in (deadline, slot) order, as from the ordered set.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Slot deadlines, bucketed by `width` with a min-heap per bucket: deadlines cluster (the
/// detector rounds its pruning deadlines to a grid; the sessionizer's follow event time), so
/// an insert is mostly a push onto the heap of a bucket that already exists, in a map of a few
/// hundred buckets that stays in cache. Duplicates are not merged (see the module docs).
#[derive(Debug)]
pub(crate) struct Timers {
    width: i64,
    /// Bucket number (deadline / width) -> its entries; empty buckets are removed.
    buckets: BTreeMap<i64, BinaryHeap<Reverse<(i64, usize)>>>,
}

impl Timers {
    /// Empty, with buckets `width` wide.
    pub(crate) fn new(width: i64) -> Timers {
        Timers { width: width.max(1), buckets: BTreeMap::new() }
    }

    /// Adds an entry (a duplicate is kept: it comes out beside the first).
    pub(crate) fn insert(&mut self, deadline: i64, idx: usize) {
        self.buckets.entry(deadline.div_euclid(self.width)).or_default().push(Reverse((deadline, idx)));
    }

    /// Bytes of the entries' buffers, for the state figures.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buckets.values().map(|b| b.capacity() * std::mem::size_of::<Reverse<(i64, usize)>>()).sum()
    }

    /// Removes and returns the earliest entry if its deadline is before `wm`.
    pub(crate) fn pop_before(&mut self, wm: i64) -> Option<(i64, usize)> {
        let mut first = self.buckets.first_entry()?;
        let &Reverse(top) = first.get().peek()?;
        if top.0 >= wm {
            return None;
        }
        first.get_mut().pop();
        if first.get().is_empty() {
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
