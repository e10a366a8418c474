//! Identity stitching: which identifiers belong to one customer.
//!
//! Events carry one or more of `customer_id`, `msisdn`, `app_instance_id`; an event carrying
//! two or more links them. A customer is a connected component of linked identifiers. Its
//! canonical key is its `customer_id` when it has one (the smallest, byte-wise, if a shared
//! phone links several), else `m:<smallest of its phone numbers' pseudonyms>`, else
//! `a:<smallest app_instance_id>`: a stable choice that depends only on the component, never
//! on arrival order, so every instance and every replay agrees.
//!
//! State: one entry per identifier (a 128-bit hash, so raw phone numbers are not kept) and one
//! per component (its canonical key); bounded by the number of known identifiers. The graph is
//! rebuilt on every instance from the compacted `journey.identity` topic, whose records map an
//! identifier to the canonical key of its component at the time (replaying them with
//! [`IdentityGraph::apply_link`] reconstructs the components).

use crate::pii::Pseudonyms;
use journey_schemas::ChannelEvent;
use sha2::{Digest, Sha256};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

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

impl IdKind {
    /// What precedes the value in a canonical key naming an identifier of this kind (a CRM id
    /// is its own key).
    fn canonical_prefix(self) -> &'static str {
        match self {
            IdKind::Customer => "",
            IdKind::Msisdn => "m:",
            IdKind::App => "a:",
        }
    }

    /// What precedes the value in this kind's keys in the identity topic.
    fn topic_prefix(self) -> &'static str {
        match self {
            IdKind::Customer => "c:",
            IdKind::Msisdn => "m:",
            IdKind::App => "a:",
        }
    }
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
        prefixed(self.kind.canonical_prefix(), &self.value)
    }

    /// The key of this identifier in the identity topic: `c:`, `m:` or `a:` + value.
    pub fn topic_key(&self) -> String {
        prefixed(self.kind.topic_prefix(), &self.value)
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
}

/// The identifiers of an event (phone numbers pseudonymised), in a fixed order.
pub fn identifiers(e: &ChannelEvent, pseudo: impl Pseudonyms) -> Vec<Ident> {
    let mut out = Vec::with_capacity(3);
    identifiers_into(e, pseudo, &mut out);
    out
}

/// [`identifiers`] into `out`, reusing its identifiers' strings (the stitch hot path).
pub fn identifiers_into(e: &ChannelEvent, mut pseudo: impl Pseudonyms, out: &mut Vec<Ident>) {
    let mut n = 0;
    if let Some(c) = e.customer_id.as_deref().filter(|s| !s.is_empty()) {
        next_slot(out, &mut n, IdKind::Customer).push_str(c);
    }
    if let Some(m) = e.msisdn.as_deref().filter(|s| !s.is_empty()) {
        pseudo.pseudonym_into(m, next_slot(out, &mut n, IdKind::Msisdn));
    }
    if let Some(a) = e.app_instance_id.as_deref().filter(|s| !s.is_empty()) {
        next_slot(out, &mut n, IdKind::App).push_str(a);
    }
    out.truncate(n);
}

/// The emptied value of identifier `*n` of `out` (added if missing), now of `kind`.
fn next_slot<'a>(out: &'a mut Vec<Ident>, n: &mut usize, kind: IdKind) -> &'a mut String {
    if *n == out.len() {
        out.push(Ident { kind, value: String::new() });
    }
    let id = &mut out[*n];
    *n += 1;
    id.kind = kind;
    id.value.clear();
    &mut id.value
}

/// 128-bit fingerprint of an identifier (kind and value): what the graph's index keys on,
/// so raw values are not kept. Four `u32`s rather than a `u128` so an index entry is 20
/// bytes, not 32 (`u128` is 16-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u32; 4]);

impl Fingerprint {
    /// SHA-256 of the kind and the value, cut to 128 bits; for a phone pseudonym (32 hex
    /// digits), the pseudonym's own 128 bits instead. Those are already the first half of a
    /// keyed HMAC-SHA256, as unpredictable and as unlikely to collide as a hash of them would
    /// be, so hashing them again (a SHA-256 block for every phone of every event) adds nothing.
    fn of(id: &Ident) -> Fingerprint {
        if id.kind == IdKind::Msisdn {
            if let Some(bits) = lower_hex16(&id.value) {
                return Fingerprint::from_bytes(&bits);
            }
        }
        let mut h = Sha256::new();
        h.update([id.kind as u8]);
        h.update(id.value.as_bytes());
        let d = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&d[..16]);
        Fingerprint::from_bytes(&bytes)
    }

    fn from_bytes(d: &[u8; 16]) -> Fingerprint {
        let word = |i: usize| u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
        Fingerprint([word(0), word(1), word(2), word(3)])
    }
}

/// The 16 bytes spelled by `value` if it is 32 lower-case hex digits, as the pseudonymiser
/// writes a phone ([`crate::pii::push_hex16`]). A table lookup per digit and one check at the
/// end: a branch per digit cost as much as the SHA-256 block it saves in [`Fingerprint::of`].
pub(crate) fn lower_hex16(value: &str) -> Option<[u8; 16]> {
    const BAD: u8 = 0x10;
    const DIGIT: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let hex: &[u8; 32] = value.as_bytes().try_into().ok()?;
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (DIGIT[usize::from(pair[0])], DIGIT[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0xf);
    }
    (bad & BAD == 0).then_some(out)
}

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: its first 64 bits are the table hash.
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Hasher for [`Fingerprint`]s: passes their first 64 bits through.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Fingerprint`; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The value of a component's best identifier, stored compactly: most ids (CRM ids, app
/// installs) fit inline, phone pseudonyms (32 hex digits) are kept as their 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    /// Up to 22 bytes of UTF-8.
    Inline { len: u8, bytes: [u8; 22] },
    /// 32 lower-case hex digits, as bytes.
    Hex16([u8; 16]),
    /// Anything longer.
    Heap(Box<str>),
}

impl Text {
    fn new(s: &str) -> Text {
        let b = s.as_bytes();
        if b.len() <= 22 {
            let mut bytes = [0u8; 22];
            bytes[..b.len()].copy_from_slice(b);
            return Text::Inline { len: b.len() as u8, bytes };
        }
        if let Some(bytes) = lower_hex16(s) {
            return Text::Hex16(bytes);
        }
        Text::Heap(s.into())
    }

    /// Calls `f` with the text (hex is spelled out on the stack).
    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Text::Inline { len, bytes } => f(std::str::from_utf8(&bytes[..usize::from(*len)]).expect("inline text is a copied str")),
            Text::Hex16(d) => crate::pii::with_hex16(d, f),
            Text::Heap(s) => f(s),
        }
    }
}

/// A component's best identifier: the same choice and order as [`Ident`] (kind, then value
/// bytes), in a compact form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Best {
    kind: IdKind,
    text: Text,
}

impl Best {
    fn new(id: &Ident) -> Best {
        Best { kind: id.kind, text: Text::new(&id.value) }
    }

    /// Whether `self` is a better (smaller) canonical choice than `other`, or equal.
    fn le(&self, other: &Best) -> bool {
        if self.kind != other.kind {
            return self.kind < other.kind;
        }
        match (&self.text, &other.text) {
            (Text::Hex16(a), Text::Hex16(b)) => a <= b,
            (a, b) => a.with_str(|a| b.with_str(|b| a <= b)),
        }
    }

    fn canonical_key(&self) -> String {
        let mut s = String::new();
        self.canonical_key_into(&mut s);
        s
    }

    /// Writes the canonical key into `s` (replacing its content).
    fn canonical_key_into(&self, s: &mut String) {
        let prefix = self.kind.canonical_prefix();
        s.clear();
        self.text.with_str(|v| {
            s.reserve(prefix.len() + v.len());
            s.push_str(prefix);
            s.push_str(v);
        });
    }
}

#[derive(Debug)]
struct Component {
    /// Best identifier of the component (canonical choice): smallest by (kind, value).
    best: Best,
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

/// Marks a root in [`IdentityGraph::nodes`]; the other 31 bits index its component.
const ROOT: u32 = 1 << 31;

/// The identity graph: union-find over identifiers.
///
/// Memory per customer (three identifiers, the component's best id inline): three index
/// entries of 20 bytes plus a control byte each (hashbrown, at 44-88% load), three 4-byte
/// nodes, one 32-byte component; see `docs/BENCHMARKS.md` for the measured figure.
#[derive(Debug, Default)]
pub struct IdentityGraph {
    /// Fingerprint -> node.
    index: HashMap<Fingerprint, u32, BuildHasherDefault<PassThrough>>,
    /// Per node: its parent, or `ROOT | component slot` for a root.
    nodes: Vec<u32>,
    /// Components by slot; slots of merged-away components are reused.
    comps: Vec<Component>,
    free: Vec<u32>,
}

impl IdentityGraph {
    /// An empty graph.
    pub fn new() -> IdentityGraph {
        IdentityGraph::default()
    }

    /// Number of identifiers known.
    pub fn identifiers(&self) -> usize {
        self.nodes.len()
    }

    /// Number of customers (components).
    pub fn customers(&self) -> usize {
        self.comps.len() - self.free.len()
    }

    /// The root of `x`'s tree (path halving).
    fn find(&mut self, mut x: u32) -> u32 {
        loop {
            let p = self.nodes[x as usize];
            if p & ROOT != 0 {
                return x;
            }
            let gp = self.nodes[p as usize];
            if gp & ROOT != 0 {
                return p;
            }
            self.nodes[x as usize] = gp;
            x = gp;
        }
    }

    /// The component slot of root `r`.
    fn slot(&self, r: u32) -> usize {
        (self.nodes[r as usize] & !ROOT) as usize
    }

    fn new_component(&mut self, c: Component) -> u32 {
        match self.free.pop() {
            Some(s) => {
                self.comps[s as usize] = c;
                s
            }
            None => {
                self.comps.push(c);
                u32::try_from(self.comps.len() - 1).expect("fewer than 2^31 components")
            }
        }
    }

    fn node(&mut self, id: &Ident) -> (u32, bool) {
        let n = u32::try_from(self.nodes.len()).ok().filter(|n| n & ROOT == 0).expect("fewer than 2^31 identifiers");
        match self.index.entry(Fingerprint::of(id)) {
            Entry::Occupied(o) => (*o.get(), false),
            Entry::Vacant(v) => {
                v.insert(n);
                let slot = self.new_component(Component { best: Best::new(id), size: 1 });
                self.nodes.push(ROOT | slot);
                (n, true)
            }
        }
    }

    /// The canonical key of an identifier's component, if known.
    pub fn canonical_of(&mut self, id: &Ident) -> Option<String> {
        let n = *self.index.get(&Fingerprint::of(id))?;
        let r = self.find(n);
        Some(self.comps[self.slot(r)].best.canonical_key())
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
        let (sa, sb) = (self.slot(ra), self.slot(rb));
        let (size_a, size_b) = (self.comps[sa].size, self.comps[sb].size);
        // The larger tree stays root; its slot keeps the merged component.
        let (root, child, keep, gone) = if size_a >= size_b { (ra, rb, sa, sb) } else { (rb, ra, sb, sa) };
        let gone_best =
            std::mem::replace(&mut self.comps[gone].best, Best { kind: IdKind::App, text: Text::Inline { len: 0, bytes: [0; 22] } });
        self.free.push(gone as u32);
        let kept_best = &self.comps[keep].best;
        let merge = if kept_best.le(&gone_best) {
            Merge { from: gone_best.canonical_key(), to: kept_best.canonical_key() }
        } else {
            let m = Merge { from: kept_best.canonical_key(), to: gone_best.canonical_key() };
            self.comps[keep].best = gone_best;
            m
        };
        self.comps[keep].size = size_a + size_b;
        self.nodes[child as usize] = root;
        Some(merge)
    }

    /// Folds in the identifiers of one event.
    pub fn observe(&mut self, ids: &[Ident]) -> Observation {
        let mut obs = Observation::default();
        self.observe_into(ids, &mut obs);
        obs
    }

    /// [`IdentityGraph::observe`] into `obs`, reusing its buffers (the stitch hot path): an
    /// event that links nothing new costs no allocation.
    pub fn observe_into(&mut self, ids: &[Ident], obs: &mut Observation) {
        obs.canonical.clear();
        obs.merges.clear();
        obs.links.clear();
        let Some(first) = ids.first() else { return };
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
        self.comps[self.slot(r)].best.canonical_key_into(&mut obs.canonical);
        // Merges of merges: every old key points at the final canonical key.
        for m in &mut obs.merges {
            m.to.clone_from(&obs.canonical);
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

/// `prefix` + `value`, in one allocation of the right size (no formatting machinery: these
/// keys are built for every identifier of every changed observation).
fn prefixed(prefix: &str, value: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + value.len());
    s.push_str(prefix);
    s.push_str(value);
    s
}

/// The identity-topic key of a canonical key: that of the identifier it names
/// ([`ident_of_canonical`]), which for a phone or app key is the canonical key itself.
pub fn canonical_topic_key(canonical: &str) -> String {
    if canonical.is_empty() || canonical.starts_with("m:") || canonical.starts_with("a:") {
        canonical.to_string()
    } else {
        prefixed("c:", canonical)
    }
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
