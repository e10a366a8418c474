//! Identity stitching: which identifiers belong to one customer.
//!
//! Events carry one or more of `customer_id`, `msisdn`, `app_instance_id`; an event carrying
//! two or more links them. A customer is a connected component of linked identifiers. Its
//! canonical key is its `customer_id` when it has one (the smallest, byte-wise, if a shared
//! phone links several), else `m:<pseudonym of the smallest msisdn>`, else
//! `a:<smallest app_instance_id>`: a stable choice that depends only on the component, never
//! on arrival order, so every instance and every replay agrees.
//!
//! State: one entry per identifier (a 128-bit hash, so raw phone numbers are not kept) and one
//! per component (its canonical key); bounded by the number of known identifiers. The graph is
//! rebuilt on every instance from the compacted `journey.identity` topic, whose records map an
//! identifier to the canonical key of its component at the time (replaying them with
//! [`IdentityGraph::apply_link`] reconstructs the components).

use crate::pii::Pseudonymizer;
use journey_schemas::ChannelEvent;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Kind of an identifier, in canonical-choice priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdKind {
    /// CRM customer id.
    Customer = 0,
    /// Phone number.
    Msisdn = 1,
    /// App install.
    App = 2,
}

/// An identifier as the graph stores it: kind and the text used for keys and canonical names
/// (phone numbers already pseudonymised).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ident {
    /// Kind.
    pub kind: IdKind,
    /// Value (CRM id, msisdn pseudonym, app install id).
    pub value: String,
}

impl Ident {
    /// The canonical key this identifier would give its component if it were chosen.
    pub fn canonical_key(&self) -> String {
        match self.kind {
            IdKind::Customer => self.value.clone(),
            IdKind::Msisdn => format!("m:{}", self.value),
            IdKind::App => format!("a:{}", self.value),
        }
    }

    /// The key of this identifier in the identity topic: `c:`, `m:` or `a:` + value.
    pub fn topic_key(&self) -> String {
        let p = match self.kind {
            IdKind::Customer => "c:",
            IdKind::Msisdn => "m:",
            IdKind::App => "a:",
        };
        format!("{p}{}", self.value)
    }

    /// Parses a topic key.
    pub fn from_topic_key(key: &str) -> Option<Ident> {
        let (kind, value) = match key.split_at_checked(2)? {
            ("c:", v) => (IdKind::Customer, v),
            ("m:", v) => (IdKind::Msisdn, v),
            ("a:", v) => (IdKind::App, v),
            _ => return None,
        };
        Some(Ident { kind, value: value.to_string() })
    }

    fn hash(&self) -> u128 {
        let mut h = Sha256::new();
        h.update([self.kind as u8]);
        h.update(self.value.as_bytes());
        let d = h.finalize();
        u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
    }
}

/// The identifiers of an event (phone numbers pseudonymised), in a fixed order.
pub fn identifiers(e: &ChannelEvent, pseudo: &Pseudonymizer) -> Vec<Ident> {
    let mut out = Vec::with_capacity(3);
    if let Some(c) = e.customer_id.as_deref().filter(|s| !s.is_empty()) {
        out.push(Ident { kind: IdKind::Customer, value: c.to_string() });
    }
    if let Some(m) = e.msisdn.as_deref().filter(|s| !s.is_empty()) {
        out.push(Ident { kind: IdKind::Msisdn, value: pseudo.hash(m) });
    }
    if let Some(a) = e.app_instance_id.as_deref().filter(|s| !s.is_empty()) {
        out.push(Ident { kind: IdKind::App, value: a.to_string() });
    }
    out
}

#[derive(Debug)]
struct Component {
    /// Best identifier of the component (canonical choice): smallest by (kind, value).
    best: Ident,
    /// Union-by-size.
    size: u32,
}

/// A canonical key that stopped being canonical because its component merged into another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// Canonical key before.
    pub from: String,
    /// Canonical key now.
    pub to: String,
}

/// What observing one event's identifiers did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// Canonical key of the event's customer.
    pub canonical: String,
    /// Components that merged: their old canonical keys now point to `canonical`.
    pub merges: Vec<Merge>,
    /// Identity records to publish: (identifier topic key, canonical key).
    pub links: Vec<(String, String)>,
}

/// The identity graph: union-find over identifiers.
#[derive(Debug, Default)]
pub struct IdentityGraph {
    index: HashMap<u128, u32>,
    parent: Vec<u32>,
    comps: HashMap<u32, Component>,
}

impl IdentityGraph {
    /// An empty graph.
    pub fn new() -> IdentityGraph {
        IdentityGraph::default()
    }

    /// Number of identifiers known.
    pub fn identifiers(&self) -> usize {
        self.parent.len()
    }

    /// Number of customers (components).
    pub fn customers(&self) -> usize {
        self.comps.len()
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let gp = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = gp;
            x = gp;
        }
        x
    }

    fn node(&mut self, id: &Ident) -> (u32, bool) {
        let h = id.hash();
        if let Some(&n) = self.index.get(&h) {
            return (n, false);
        }
        let n = self.parent.len() as u32;
        self.parent.push(n);
        self.index.insert(h, n);
        self.comps.insert(n, Component { best: id.clone(), size: 1 });
        (n, true)
    }

    /// The canonical key of an identifier's component, if known.
    pub fn canonical_of(&mut self, id: &Ident) -> Option<String> {
        let n = *self.index.get(&id.hash())?;
        let r = self.find(n);
        Some(self.comps[&r].best.canonical_key())
    }

    /// The canonical key of an identifier: its component's, or its own when it was never linked
    /// (unlinked identifiers need not be in the graph).
    pub fn resolve(&mut self, id: &Ident) -> String {
        self.canonical_of(id).unwrap_or_else(|| id.canonical_key())
    }

    /// Unions two nodes; returns the merge of canonical keys if the components differed.
    fn union(&mut self, a: u32, b: u32) -> Option<Merge> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return None;
        }
        let ca = self.comps.remove(&ra).expect("root has a component");
        let cb = self.comps.remove(&rb).expect("root has a component");
        let (root, child) = if ca.size >= cb.size { (ra, rb) } else { (rb, ra) };
        self.parent[child as usize] = root;
        let (winner, loser) = if ca.best <= cb.best { (ca.best, cb.best) } else { (cb.best, ca.best) };
        let merge = Merge { from: loser.canonical_key(), to: winner.canonical_key() };
        self.comps.insert(root, Component { best: winner, size: ca.size + cb.size });
        Some(merge)
    }

    /// Folds in the identifiers of one event.
    pub fn observe(&mut self, ids: &[Ident]) -> Observation {
        let mut obs = Observation::default();
        let Some(first) = ids.first() else { return obs };
        let (n0, new0) = self.node(first);
        let mut changed = new0 && ids.len() > 1;
        for id in &ids[1..] {
            let (n, new) = self.node(id);
            changed |= new;
            if let Some(m) = self.union(n0, n) {
                changed = true;
                obs.merges.push(m);
            }
        }
        let r = self.find(n0);
        obs.canonical = self.comps[&r].best.canonical_key();
        // Merges of merges: every old key points at the final canonical key.
        for m in &mut obs.merges {
            m.to = obs.canonical.clone();
        }
        obs.merges.retain(|m| m.from != m.to);
        if changed {
            for id in ids {
                obs.links.push((id.topic_key(), obs.canonical.clone()));
            }
            for m in &obs.merges {
                obs.links.push((canonical_topic_key(&m.from), obs.canonical.clone()));
            }
        }
        obs
    }

    /// Applies one record of the identity topic (identifier topic key -> canonical key).
    /// Returns the merge it caused, if any.
    pub fn apply_link(&mut self, topic_key: &str, canonical: &str) -> Option<Merge> {
        let a = Ident::from_topic_key(topic_key)?;
        let b = ident_of_canonical(canonical)?;
        let (na, _) = self.node(&a);
        let (nb, _) = self.node(&b);
        self.union(na, nb)
    }
}

/// The identity-topic key of a canonical key.
pub fn canonical_topic_key(canonical: &str) -> String {
    ident_of_canonical(canonical).map_or_else(|| canonical.to_string(), |i| i.topic_key())
}

/// The identifier a canonical key names.
pub fn ident_of_canonical(canonical: &str) -> Option<Ident> {
    if let Some(v) = canonical.strip_prefix("m:") {
        Some(Ident { kind: IdKind::Msisdn, value: v.to_string() })
    } else if let Some(v) = canonical.strip_prefix("a:") {
        Some(Ident { kind: IdKind::App, value: v.to_string() })
    } else if canonical.is_empty() {
        None
    } else {
        Some(Ident { kind: IdKind::Customer, value: canonical.to_string() })
    }
}

/// Batch computation: the canonical key of every identifier, from all events at once.
/// The streaming graph must agree with it once it has seen the same events.
pub fn batch_canonical(all: &[Vec<Ident>]) -> HashMap<Ident, String> {
    let mut g = IdentityGraph::new();
    for ids in all {
        g.observe(ids);
    }
    let mut out = HashMap::new();
    for ids in all {
        for id in ids {
            let c = g.canonical_of(id).expect("observed");
            out.insert(id.clone(), c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
