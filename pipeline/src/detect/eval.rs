//! Rule evaluation over one customer's events sorted by (`event_time`, `event_id` bytes):
//! the per-rule searches shared by the batch [`evaluate`] and the streaming detector.
//!
//! Every search is bounded by the rule's window: a sequence hit walks backwards from its
//! last event, a count walks backwards from the counted event, an absence walks forwards from
//! its trigger; none looks further than `within` from where it starts.

use super::rules::{Compiled, Predicate, RuleSet, SameField, Shape};
use super::{hit_id, DetectedHit};
use journey_schemas::{ChannelEvent, ScenarioHit};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use thin_vec::ThinVec;

/// The part of an event the rules need; this is what the detector keeps per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectEvent {
    /// Event time, epoch ms.
    pub time: i64,
    /// Event id (ties in time are ordered by id bytes).
    pub id: Arc<str>,
    /// Channel.
    pub channel: journey_schemas::Channel,
    /// Event type, interned.
    pub event_type: Arc<str>,
    /// Outcome, interned.
    pub outcome: Option<Arc<str>>,
    /// Topic, interned.
    pub topic: Option<Arc<str>>,
    /// Contact-centre line, interned.
    pub line: Option<Arc<str>>,
    /// Region, interned.
    pub region: Option<Arc<str>>,
    /// Agent id, interned.
    pub agent_id: Option<Arc<str>>,
    /// The attributes some rule reads, sorted by key; others are not kept.
    pub attrs: Box<[(Arc<str>, Arc<str>)]>,
}

impl DetectEvent {
    /// Extracts what `rules` need from an event. Fields no rule reads are left out: `outcome`,
    /// `line`, `agent_id` and attributes unless a predicate or `same` uses them (`topic` and
    /// `region` are always kept, hits report them).
    pub fn from_event(e: &ChannelEvent, rules: &RuleSet) -> DetectEvent {
        let attrs: Box<[(Arc<str>, Arc<str>)]> = if rules.attr_keys.is_empty() || e.attrs.is_empty() {
            Box::default()
        } else {
            rules.attr_keys.iter().filter_map(|k| e.attrs.get(&**k).map(|v| (k.clone(), intern(v)))).collect()
        };
        let read = |on: bool, v: &Option<String>| if on { v.as_deref().map(intern) } else { None };
        DetectEvent {
            time: e.event_time,
            id: Arc::from(e.event_id.as_str()),
            channel: e.channel,
            event_type: intern(&e.event_type),
            outcome: read(rules.reads.outcome, &e.outcome),
            topic: e.topic.as_deref().map(intern),
            line: read(rules.reads.line, &e.line),
            region: e.region.as_deref().map(intern),
            agent_id: read(rules.reads.agent_id, &e.agent_id),
            attrs,
        }
    }

    /// The value of an attribute kept for the rules.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }

    /// Sort key: (time, id bytes).
    pub fn key(&self) -> (i64, &[u8]) {
        (self.time, self.id.as_bytes())
    }

    pub(crate) fn same_value(&self, f: &SameField) -> Option<&str> {
        match f {
            SameField::Topic => self.topic.as_deref(),
            SameField::Channel => Some(self.channel.as_str()),
            SameField::EventType => Some(&self.event_type),
            SameField::Outcome => self.outcome.as_deref(),
            SameField::Line => self.line.as_deref(),
            SameField::Region => self.region.as_deref(),
            SameField::AgentId => self.agent_id.as_deref(),
            SameField::Attr(k) => self.attr(k),
        }
    }
}

/// A word-at-a-time multiplicative hash (the rustc "Fx" scheme) for short keys: interned
/// values, customer keys. Much cheaper than SipHash on the hot path; hash flooding is not a
/// concern for keys that are pseudonymised ids and rule vocabulary.
#[derive(Default)]
pub(crate) struct WordHash(u64);

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// Strings longer than this are not interned (they are rarely repeated vocabulary).
const INTERN_MAX_LEN: usize = 64;
/// Distinct strings the interner keeps per thread; beyond it new strings are allocated.
const INTERN_MAX_ENTRIES: usize = 1 << 16;

thread_local! {
    /// Low-cardinality values (event types, topics, outcomes, agents...) shared between events:
    /// saves an allocation per field on the hot path and memory in retained state.
    static INTERNER: RefCell<HashSet<Arc<str>, BuildHasherDefault<WordHash>>> = RefCell::new(HashSet::default());
}

/// An `Arc<str>` equal to `s`, shared with earlier calls on this thread when possible.
pub fn intern(s: &str) -> Arc<str> {
    if s.len() > INTERN_MAX_LEN {
        return Arc::from(s);
    }
    INTERNER.with(|cell| {
        let mut set = cell.borrow_mut();
        if let Some(a) = set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if set.len() < INTERN_MAX_ENTRIES {
            set.insert(a.clone());
        }
        a
    })
}

/// Which of a rule set's distinct predicates an event matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bits {
    /// Up to 64 predicates.
    Small(u64),
    /// More (a thin vector, one pointer, so that `Bits` is two words: it is in every kept event).
    Large(ThinVec<u64>),
}

impl Bits {
    pub(crate) fn has(&self, i: usize) -> bool {
        match self {
            Bits::Small(w) => i < 64 && (w >> i) & 1 == 1,
            Bits::Large(ws) => ws.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Bits::Small(w) => *w == 0,
            Bits::Large(ws) => ws.iter().all(|w| *w == 0),
        }
    }
}

/// The fields predicates read, so a raw [`ChannelEvent`] can be matched before (or instead of)
/// extracting a [`DetectEvent`] from it.
pub trait EventFields {
    /// Channel.
    fn channel(&self) -> journey_schemas::Channel;
    /// Event type.
    fn event_type(&self) -> &str;
    /// Outcome.
    fn outcome(&self) -> Option<&str>;
    /// Topic.
    fn topic(&self) -> Option<&str>;
    /// Line.
    fn line(&self) -> Option<&str>;
    /// Region.
    fn region(&self) -> Option<&str>;
    /// An attribute.
    fn attr(&self, key: &str) -> Option<&str>;
}

impl EventFields for DetectEvent {
    fn channel(&self) -> journey_schemas::Channel {
        self.channel
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn outcome(&self) -> Option<&str> {
        self.outcome.as_deref()
    }
    fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }
    fn line(&self) -> Option<&str> {
        self.line.as_deref()
    }
    fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    fn attr(&self, key: &str) -> Option<&str> {
        DetectEvent::attr(self, key)
    }
}

impl EventFields for ChannelEvent {
    fn channel(&self) -> journey_schemas::Channel {
        self.channel
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn outcome(&self) -> Option<&str> {
        self.outcome.as_deref()
    }
    fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }
    fn line(&self) -> Option<&str> {
        self.line.as_deref()
    }
    fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

fn one_of(allowed: &Option<Vec<Arc<str>>>, v: Option<&str>) -> bool {
    match allowed {
        None => true,
        Some(list) => v.is_some_and(|v| list.iter().any(|a| a.len() == v.len() && **a == *v)),
    }
}

impl Predicate {
    /// Whether the event satisfies every field of the predicate.
    pub fn matches<E: EventFields + ?Sized>(&self, e: &E) -> bool {
        self.channel.as_ref().is_none_or(|cs| cs.contains(&e.channel())) && self.matches_besides_channel(e)
    }

    fn matches_besides_channel<E: EventFields + ?Sized>(&self, e: &E) -> bool {
        one_of(&self.event_type, Some(e.event_type()))
            && one_of(&self.outcome, e.outcome())
            && one_of(&self.topic, e.topic())
            && one_of(&self.line, e.line())
            && one_of(&self.region, e.region())
            && self.attrs.iter().all(|(k, vs)| e.attr(k).is_some_and(|v| vs.iter().any(|a| **a == *v)))
    }
}

/// For one string field: which predicates accept each value, and which do not look at it.
#[derive(Debug, Clone, Default)]
struct FieldIndex {
    /// Predicates that do not constrain the field.
    free: u64,
    /// Value -> predicates that accept it (empty when no predicate constrains the field).
    values: HashMap<Arc<str>, u64, BuildHasherDefault<WordHash>>,
}

impl FieldIndex {
    fn new(predicates: &[Predicate], field: impl Fn(&Predicate) -> Option<&Vec<Arc<str>>>) -> FieldIndex {
        let mut ix = FieldIndex::default();
        for (i, p) in predicates.iter().enumerate() {
            match field(p) {
                None => ix.free |= 1 << i,
                Some(values) => {
                    for v in values {
                        *ix.values.entry(v.clone()).or_default() |= 1 << i;
                    }
                }
            }
        }
        ix
    }

    fn mask(&self, v: Option<&str>) -> u64 {
        if self.values.is_empty() {
            return self.free;
        }
        self.free | v.and_then(|v| self.values.get(v)).copied().unwrap_or(0)
    }
}

/// All predicates (up to 64) matched at once: one bit mask per channel and one hash lookup per
/// field some predicate constrains, instead of comparing strings predicate by predicate.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    channels: [u64; 12],
    event_type: FieldIndex,
    outcome: FieldIndex,
    topic: FieldIndex,
    line: FieldIndex,
    region: FieldIndex,
    attrs: Vec<(Arc<str>, FieldIndex)>,
}

impl Matcher {
    /// `None` beyond 64 predicates (they are then matched one by one).
    pub(crate) fn new(predicates: &[Predicate], attr_keys: &[Arc<str>]) -> Option<Matcher> {
        if predicates.len() > 64 {
            return None;
        }
        let mut channels = [0u64; 12];
        for (i, p) in predicates.iter().enumerate() {
            for c in journey_schemas::Channel::ALL {
                if p.channel.as_ref().is_none_or(|cs| cs.contains(&c)) {
                    channels[c.index()] |= 1 << i;
                }
            }
        }
        let attrs = attr_keys
            .iter()
            .map(|k| {
                let ix = FieldIndex::new(predicates, |p| p.attrs.iter().find(|(pk, _)| pk == k).map(|(_, vs)| vs));
                (k.clone(), ix)
            })
            .filter(|(_, ix)| !ix.values.is_empty())
            .collect();
        Some(Matcher {
            channels,
            event_type: FieldIndex::new(predicates, |p| p.event_type.as_ref()),
            outcome: FieldIndex::new(predicates, |p| p.outcome.as_ref()),
            topic: FieldIndex::new(predicates, |p| p.topic.as_ref()),
            line: FieldIndex::new(predicates, |p| p.line.as_ref()),
            region: FieldIndex::new(predicates, |p| p.region.as_ref()),
            attrs,
        })
    }

    fn bits<E: EventFields + ?Sized>(&self, e: &E) -> u64 {
        let mut m = self.channels[e.channel().index()];
        if m == 0 {
            return 0;
        }
        m &= self.event_type.mask(Some(e.event_type()));
        if m == 0 {
            return 0;
        }
        m &= self.outcome.mask(e.outcome()) & self.topic.mask(e.topic()) & self.line.mask(e.line()) & self.region.mask(e.region());
        for (k, ix) in &self.attrs {
            m &= ix.mask(e.attr(k));
        }
        m
    }
}

impl RuleSet {
    /// The predicates an event matches; empty when no rule can use it.
    pub(crate) fn match_bits<E: EventFields + ?Sized>(&self, e: &E) -> Bits {
        if let Some(m) = &self.matcher {
            return Bits::Small(m.bits(e));
        }
        let n = self.predicates.len();
        // Channels are checked as a bit mask first: most predicates name one and most events fail it.
        let channel = 1u16 << e.channel().index();
        let hit = |i: usize| self.predicate_channels[i] & channel != 0 && self.predicates[i].matches_besides_channel(e);
        if n <= 64 {
            let mut w = 0u64;
            for i in 0..n {
                if hit(i) {
                    w |= 1 << i;
                }
            }
            Bits::Small(w)
        } else {
            let mut ws: ThinVec<u64> = std::iter::repeat_n(0u64, n.div_ceil(64)).collect();
            for i in 0..n {
                if hit(i) {
                    ws[i / 64] |= 1 << (i % 64);
                }
            }
            Bits::Large(ws)
        }
    }

    /// Whether any rule can use this event.
    pub fn is_relevant<E: EventFields + ?Sized>(&self, e: &E) -> bool {
        !self.match_bits(e).is_empty()
    }

    /// How long a matching event can matter after its own time: the largest window among
    /// the predicates it matches.
    pub(crate) fn keep_ms(&self, bits: &Bits) -> i64 {
        match bits {
            Bits::Small(w) => {
                let (mut w, mut keep) = (*w, 0);
                while w != 0 {
                    keep = keep.max(self.predicate_window[w.trailing_zeros() as usize]);
                    w &= w - 1;
                }
                keep
            }
            Bits::Large(_) => (0..self.predicates.len()).filter(|&i| bits.has(i)).map(|i| self.predicate_window[i]).max().unwrap_or(0),
        }
    }

    /// Whether an event matching `bits` can complete some rule (be a sequence's last step, an
    /// absence trigger or a counted event); most events cannot, and are only stored.
    pub(crate) fn may_complete(&self, bits: &Bits) -> bool {
        match bits {
            Bits::Small(w) => w & self.completing_mask != 0,
            Bits::Large(_) => true,
        }
    }
}

/// An event with the predicates it matches, computed once.
#[derive(Debug, Clone)]
pub(crate) struct Matched {
    pub ev: DetectEvent,
    pub bits: Bits,
}

/// The value of a `same` field, comparable between events held the same way: the batch
/// evaluator compares strings, the detector its interned symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SameValue<'a> {
    /// An interned value (or a channel's index).
    Symbol(u32),
    /// A value as text.
    Text(&'a str),
}

/// What the searches read of an event, so they run on the detector's retained events as they
/// are, without copying, and on the batch evaluator's [`Matched`] events alike.
pub(crate) trait View {
    fn time(&self) -> i64;
    fn bits(&self) -> &Bits;
    fn same_value(&self, f: &SameField) -> Option<SameValue<'_>>;
}

impl View for Matched {
    fn time(&self) -> i64 {
        self.ev.time
    }
    fn bits(&self) -> &Bits {
        &self.bits
    }
    fn same_value(&self, f: &SameField) -> Option<SameValue<'_>> {
        self.ev.same_value(f).map(SameValue::Text)
    }
}

/// Whether `a` has the same non-null values as `b` for every field of `same`.
fn same_eq<E: View>(same: &[SameField], a: &E, b: &E) -> bool {
    same.iter().all(|f| match (a.same_value(f), b.same_value(f)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    })
}

/// Whether event `k` is a candidate end of the rule: it matches the completing predicate
/// (last step, trigger, counted). `same` is left to the searches, which compare every other
/// event with this one by [`same_eq`], where null equals nothing: an event lacking a `same`
/// field ends no sequence (it has at least two steps) and no count (not even itself counts),
/// and as an absence trigger it has no follower, so it is a hit once its window has passed.
pub(crate) fn completes<E: View>(r: &Compiled, m: &E) -> bool {
    m.bits().has(r.completing)
}

/// Sequence ending at `k` (which must satisfy [`completes`]): the greedy chain of the latest
/// earlier events matching each step, or `None` when no chain fits in the window.
pub(crate) fn sequence_at<E: View>(r: &Compiled, steps: &[usize], evs: &[E], k: usize) -> Option<Vec<usize>> {
    let last = &evs[k];
    let earliest = last.time().saturating_sub(r.within_ms);
    let step_before = |j: usize, pos: usize| {
        evs[..pos]
            .iter()
            .rposition(|m| m.time() < earliest || (m.bits().has(steps[j]) && same_eq(&r.same, m, last)))
            .filter(|&i| evs[i].time() >= earliest)
    };
    // Most candidates fail: find the chain's start first without allocating, then fill it in.
    let mut pos = k;
    for j in (0..steps.len() - 1).rev() {
        pos = step_before(j, pos)?;
    }
    let mut chain = vec![k; steps.len()];
    for j in (0..steps.len() - 1).rev() {
        // Cannot fail: the same search succeeded above.
        chain[j] = step_before(j, chain[j + 1]).unwrap_or(pos);
    }
    Some(chain)
}

/// Count ending at `k` (which must satisfy [`completes`]): the counted events, if at least `n`.
pub(crate) fn count_at<E: View>(r: &Compiled, predicate: usize, at_least: usize, evs: &[E], k: usize) -> Option<Vec<usize>> {
    let last = &evs[k];
    let earliest = last.time().saturating_sub(r.within_ms);
    let start = k + 1 - evs[..=k].iter().rev().take_while(|e| e.time() >= earliest).count();
    let counts = |m: &E| m.bits().has(predicate) && same_eq(&r.same, m, last);
    if evs[start..=k].iter().filter(|e| counts(e)).count() < at_least {
        return None;
    }
    Some((start..=k).filter(|&i| counts(&evs[i])).collect())
}

/// Whether trigger `t` (which must satisfy [`completes`]) has no follower among `evs`.
pub(crate) fn absence_open<E: View>(r: &Compiled, followed_by: usize, evs: &[E], t: usize) -> bool {
    let trig = &evs[t];
    let latest = trig.time().saturating_add(r.within_ms);
    !evs[t + 1..].iter().take_while(|m| m.time() <= latest).any(|m| m.bits().has(followed_by) && same_eq(&r.same, m, trig))
}

/// A found hit: rule index and matched event indices (the last one is the trigger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub rule: usize,
    pub matched: Vec<usize>,
}

/// Detection time of a hit: the completing event's time, or for an absence trigger + within.
pub(crate) fn detection_time(rules: &RuleSet, rule: usize, trigger_time: i64) -> i64 {
    match rules.compiled[rule].shape {
        Shape::Absence { .. } => trigger_time.saturating_add(rules.compiled[rule].within_ms),
        _ => trigger_time,
    }
}

/// Evaluates rule `ri` at event `k`, treating the absence window as complete.
pub(crate) fn hit_at<E: View>(rules: &RuleSet, ri: usize, evs: &[E], k: usize) -> Option<Vec<usize>> {
    let r = &rules.compiled[ri];
    if !completes(r, &evs[k]) {
        return None;
    }
    match &r.shape {
        Shape::Sequence { steps } => sequence_at(r, steps, evs, k),
        Shape::Count { predicate, at_least } => count_at(r, *predicate, *at_least, evs, k),
        Shape::Absence { followed_by, .. } => absence_open(r, *followed_by, evs, k).then(|| vec![k]),
    }
}

/// What a hit record reports of a matched event.
pub(crate) struct Described<'a> {
    pub channel: journey_schemas::Channel,
    pub id: &'a str,
    pub topic: Option<&'a str>,
    pub region: Option<&'a str>,
}

impl DetectEvent {
    pub(crate) fn described(&self) -> Described<'_> {
        Described { channel: self.channel, id: &self.id, topic: self.topic.as_deref(), region: self.region.as_deref() }
    }
}

/// Builds the hit record (session, version and retraction left to the caller); `describe`
/// reads the reported fields of an event.
pub(crate) fn build_hit<'a, E: View>(
    rules: &RuleSet,
    customer: &str,
    evs: &'a [E],
    f: &Found,
    session_id: Option<String>,
    describe: impl Fn(&'a E) -> Described<'a>,
) -> DetectedHit {
    let rule = &rules.rules()[f.rule];
    let trigger_at = f.matched[f.matched.len() - 1];
    let trigger = describe(&evs[trigger_at]);
    let mut path = String::new();
    let mut prev = None;
    let mut matched_event_ids = Vec::with_capacity(f.matched.len());
    for &i in &f.matched {
        let d = describe(&evs[i]);
        matched_event_ids.push(d.id.to_string());
        let c = d.channel;
        if prev != Some(c) {
            if prev.is_some() {
                path.push('>');
            }
            path.push_str(c.as_str());
            prev = Some(c);
        }
    }
    DetectedHit {
        hit: Arc::new(ScenarioHit {
            hit_id: hit_id(&rule.name, rule.version, customer, trigger.id),
            rule: rule.name.clone(),
            rule_version: i32::try_from(rule.version).unwrap_or(i32::MAX),
            customer_id: customer.to_string(),
            session_id,
            event_time: detection_time(rules, f.rule, evs[trigger_at].time()),
            trigger_event_id: trigger.id.to_string(),
            matched_event_ids,
            path,
            topic: trigger.topic.map(str::to_string),
            severity: rule.severity.as_str().to_string(),
            version: 0,
            retracted: false,
        }),
        channel: trigger.channel,
        region: trigger.region.map(str::to_string),
    }
}

/// Sorts by (time, id) and keeps the first of each id.
pub(crate) fn sorted_distinct(rules: &RuleSet, events: &[DetectEvent]) -> Vec<Matched> {
    let mut sorted: Vec<&DetectEvent> = events.iter().collect();
    sorted.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut seen: HashSet<&str> = HashSet::with_capacity(sorted.len());
    sorted
        .into_iter()
        .filter(|e| seen.insert(&e.id))
        .map(|e| Matched { bits: rules.match_bits(e), ev: e.clone() })
        .filter(|m| !m.bits.is_empty())
        .collect()
}

/// The hits of one customer's complete event set (any order; duplicates by id count once;
/// absence windows treated as complete), with no session and version 0. Ordered by
/// (detection time, rule order, trigger order).
pub fn evaluate(rules: &RuleSet, customer: &str, events: &[DetectEvent]) -> Vec<DetectedHit> {
    let evs = sorted_distinct(rules, events);
    let mut found: Vec<(i64, usize, usize, Found)> = Vec::new();
    for ri in 0..rules.compiled.len() {
        for k in 0..evs.len() {
            if let Some(matched) = hit_at(rules, ri, &evs, k) {
                found.push((detection_time(rules, ri, evs[k].ev.time), ri, k, Found { rule: ri, matched }));
            }
        }
    }
    found.sort_by_key(|(t, ri, k, _)| (*t, *ri, *k));
    found.into_iter().map(|(_, _, _, f)| build_hit(rules, customer, &evs, &f, None, |m| m.ev.described())).collect()
}

#[cfg(test)]
mod matcher_tests {
    use super::{DetectEvent, Matcher, Predicate};
    use journey_schemas::Channel;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Values `v0`..`v11`, some of different lengths sharing a prefix (`v1`, `v10`).
    fn value() -> impl Strategy<Value = Arc<str>> {
        (0u8..12).prop_map(|i| Arc::from(format!("v{i}").as_str()))
    }

    fn values() -> impl Strategy<Value = Option<Vec<Arc<str>>>> {
        proptest::option::of(proptest::collection::vec(value(), 1..12))
    }

    fn predicate() -> impl Strategy<Value = Predicate> {
        (proptest::option::of(proptest::collection::vec(0usize..12, 1..3)), values(), values(), values(), values()).prop_map(
            |(channels, event_type, outcome, topic, attr)| Predicate {
                channel: channels.map(|cs| cs.into_iter().map(|i| Channel::ALL[i]).collect()),
                event_type,
                outcome,
                topic,
                line: None,
                region: None,
                attrs: attr.map(|vs| (Arc::from("k"), vs)).into_iter().collect(),
            },
        )
    }

    fn event() -> impl Strategy<Value = DetectEvent> {
        (0usize..12, value(), proptest::option::of(value()), proptest::option::of(value()), proptest::option::of(value())).prop_map(
            |(c, event_type, outcome, topic, attr)| DetectEvent {
                time: 0,
                id: Arc::from("e"),
                channel: Channel::ALL[c],
                event_type,
                outcome,
                topic,
                line: None,
                region: None,
                agent_id: None,
                attrs: attr.map(|v| (Arc::from("k"), v)).into_iter().collect(),
            },
        )
    }

    proptest! {
        #[test]
        fn the_matcher_gives_what_the_predicates_give_one_by_one(
            predicates in proptest::collection::vec(predicate(), 1..20),
            events in proptest::collection::vec(event(), 1..20),
        ) {
            let m = Matcher::new(&predicates, &[Arc::from("k")]).expect("fewer than 64 predicates");
            for e in &events {
                let want = predicates.iter().enumerate().filter(|(_, p)| p.matches(e)).fold(0u64, |w, (i, _)| w | 1 << i);
                prop_assert_eq!(m.bits(e), want, "{:?}", e);
            }
        }
    }
}
