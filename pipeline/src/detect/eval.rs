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
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

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
    /// Extracts what `rules` need from an event (attributes no rule reads are left out).
    pub fn from_event(e: &ChannelEvent, rules: &RuleSet) -> DetectEvent {
        let attrs: Box<[(Arc<str>, Arc<str>)]> = if rules.attr_keys.is_empty() || e.attrs.is_empty() {
            Box::default()
        } else {
            rules.attr_keys.iter().filter_map(|k| e.attrs.get(&**k).map(|v| (k.clone(), intern(v)))).collect()
        };
        DetectEvent {
            time: e.event_time,
            id: Arc::from(e.event_id.as_str()),
            channel: e.channel,
            event_type: intern(&e.event_type),
            outcome: e.outcome.as_deref().map(intern),
            topic: e.topic.as_deref().map(intern),
            line: e.line.as_deref().map(intern),
            region: e.region.as_deref().map(intern),
            agent_id: e.agent_id.as_deref().map(intern),
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

    fn same_value(&self, f: &SameField) -> Option<&str> {
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

/// FNV-1a as a `Hasher`, for the interner's short strings.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
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
    static INTERNER: RefCell<HashSet<Arc<str>, BuildHasherDefault<Fnv>>> = RefCell::new(HashSet::default());
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
    /// More.
    Large(Box<[u64]>),
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

fn one_of(allowed: &Option<Vec<Arc<str>>>, v: Option<&str>) -> bool {
    match allowed {
        None => true,
        Some(list) => v.is_some_and(|v| list.iter().any(|a| **a == *v)),
    }
}

impl Predicate {
    /// Whether the event satisfies every field of the predicate.
    pub fn matches(&self, e: &DetectEvent) -> bool {
        self.channel.as_ref().is_none_or(|cs| cs.contains(&e.channel))
            && one_of(&self.event_type, Some(&e.event_type))
            && one_of(&self.outcome, e.outcome.as_deref())
            && one_of(&self.topic, e.topic.as_deref())
            && one_of(&self.line, e.line.as_deref())
            && one_of(&self.region, e.region.as_deref())
            && self.attrs.iter().all(|(k, vs)| e.attr(k).is_some_and(|v| vs.iter().any(|a| **a == *v)))
    }
}

impl RuleSet {
    /// The predicates an event matches; empty when no rule can use it.
    pub(crate) fn match_bits(&self, e: &DetectEvent) -> Bits {
        let n = self.predicates.len();
        if n <= 64 {
            let mut w = 0u64;
            for (i, p) in self.predicates.iter().enumerate() {
                if p.matches(e) {
                    w |= 1 << i;
                }
            }
            Bits::Small(w)
        } else {
            let mut ws = vec![0u64; n.div_ceil(64)].into_boxed_slice();
            for (i, p) in self.predicates.iter().enumerate() {
                if p.matches(e) {
                    ws[i / 64] |= 1 << (i % 64);
                }
            }
            Bits::Large(ws)
        }
    }

    /// How long a matching event can matter after its own time: the largest window among
    /// the predicates it matches.
    pub(crate) fn keep_ms(&self, bits: &Bits) -> i64 {
        (0..self.predicates.len()).filter(|&i| bits.has(i)).map(|i| self.predicate_window[i]).max().unwrap_or(0)
    }
}

/// An event with the predicates it matches, computed once.
#[derive(Debug, Clone)]
pub(crate) struct Matched {
    pub ev: DetectEvent,
    pub bits: Bits,
}

/// Anything that holds a [`Matched`] event, so the searches run on the detector's retained
/// events as they are, without copying.
pub(crate) trait View {
    fn mv(&self) -> &Matched;
}

impl View for Matched {
    fn mv(&self) -> &Matched {
        self
    }
}

fn same_present(same: &[SameField], e: &DetectEvent) -> bool {
    same.iter().all(|f| e.same_value(f).is_some())
}

/// Whether `a` has the same non-null values as `b` for every field of `same`.
fn same_eq(same: &[SameField], a: &DetectEvent, b: &DetectEvent) -> bool {
    same.iter().all(|f| match (a.same_value(f), b.same_value(f)) {
        (Some(x), Some(y)) => std::ptr::eq(x, y) || x == y,
        _ => false,
    })
}

/// Whether event `k` is a candidate end of the rule: it matches the completing predicate
/// (last step, trigger, counted) and has every `same` field.
pub(crate) fn completes(r: &Compiled, m: &Matched) -> bool {
    let p = match &r.shape {
        Shape::Sequence { steps } => steps[steps.len() - 1],
        Shape::Absence { trigger, .. } => *trigger,
        Shape::Count { predicate, .. } => *predicate,
    };
    m.bits.has(p) && same_present(&r.same, &m.ev)
}

/// Sequence ending at `k` (which must satisfy [`completes`]): the greedy chain of the latest
/// earlier events matching each step, or `None` when no chain fits in the window.
pub(crate) fn sequence_at<E: View>(r: &Compiled, steps: &[usize], evs: &[E], k: usize) -> Option<Vec<usize>> {
    let last = &evs[k].mv().ev;
    let earliest = last.time.saturating_sub(r.within_ms);
    let mut chain = vec![0; steps.len()];
    chain[steps.len() - 1] = k;
    let mut pos = k;
    for j in (0..steps.len() - 1).rev() {
        let found = evs[..pos]
            .iter()
            .map(View::mv)
            .rposition(|m| m.ev.time < earliest || (m.bits.has(steps[j]) && same_eq(&r.same, &m.ev, last)))
            .filter(|&i| evs[i].mv().ev.time >= earliest)?;
        chain[j] = found;
        pos = found;
    }
    Some(chain)
}

/// Count ending at `k` (which must satisfy [`completes`]): the counted events, if at least `n`.
pub(crate) fn count_at<E: View>(r: &Compiled, predicate: usize, at_least: usize, evs: &[E], k: usize) -> Option<Vec<usize>> {
    let last = &evs[k].mv().ev;
    let earliest = last.time.saturating_sub(r.within_ms);
    let mut counted: Vec<usize> = evs[..=k]
        .iter()
        .map(View::mv)
        .enumerate()
        .rev()
        .take_while(|(_, m)| m.ev.time >= earliest)
        .filter(|(_, m)| m.bits.has(predicate) && same_eq(&r.same, &m.ev, last))
        .map(|(i, _)| i)
        .collect();
    if counted.len() < at_least {
        return None;
    }
    counted.reverse();
    Some(counted)
}

/// Whether trigger `t` (which must satisfy [`completes`]) has no follower among `evs`.
pub(crate) fn absence_open<E: View>(r: &Compiled, followed_by: usize, evs: &[E], t: usize) -> bool {
    let trig = &evs[t].mv().ev;
    let latest = trig.time.saturating_add(r.within_ms);
    !evs[t + 1..].iter().map(View::mv).take_while(|m| m.ev.time <= latest).any(|m| m.bits.has(followed_by) && same_eq(&r.same, &m.ev, trig))
}

/// A found hit: rule index and matched event indices (the last one is the trigger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub rule: usize,
    pub matched: Vec<usize>,
}

/// Detection time of a hit: the completing event's time, or for an absence trigger + within.
pub(crate) fn detection_time(rules: &RuleSet, rule: usize, trigger: &DetectEvent) -> i64 {
    match rules.compiled[rule].shape {
        Shape::Absence { .. } => trigger.time.saturating_add(rules.compiled[rule].within_ms),
        _ => trigger.time,
    }
}

/// Evaluates rule `ri` at event `k`, treating the absence window as complete.
pub(crate) fn hit_at<E: View>(rules: &RuleSet, ri: usize, evs: &[E], k: usize) -> Option<Vec<usize>> {
    let r = &rules.compiled[ri];
    if !completes(r, evs[k].mv()) {
        return None;
    }
    match &r.shape {
        Shape::Sequence { steps } => sequence_at(r, steps, evs, k),
        Shape::Count { predicate, at_least } => count_at(r, *predicate, *at_least, evs, k),
        Shape::Absence { followed_by, .. } => absence_open(r, *followed_by, evs, k).then(|| vec![k]),
    }
}

/// Builds the hit record (session, version and retraction left to the caller).
pub(crate) fn build_hit<E: View>(rules: &RuleSet, customer: &str, evs: &[E], f: &Found, session_id: Option<String>) -> DetectedHit {
    let rule = &rules.rules()[f.rule];
    let trigger = &evs[f.matched[f.matched.len() - 1]].mv().ev;
    let mut path = String::new();
    let mut prev = None;
    for &i in &f.matched {
        let c = evs[i].mv().ev.channel;
        if prev != Some(c) {
            if prev.is_some() {
                path.push('>');
            }
            path.push_str(c.as_str());
            prev = Some(c);
        }
    }
    DetectedHit {
        hit: ScenarioHit {
            hit_id: hit_id(&rule.name, rule.version, customer, &trigger.id),
            rule: rule.name.clone(),
            rule_version: i32::try_from(rule.version).unwrap_or(i32::MAX),
            customer_id: customer.to_string(),
            session_id,
            event_time: detection_time(rules, f.rule, trigger),
            trigger_event_id: trigger.id.to_string(),
            matched_event_ids: f.matched.iter().map(|&i| evs[i].mv().ev.id.to_string()).collect(),
            path,
            topic: trigger.topic.as_deref().map(str::to_string),
            severity: rule.severity.as_str().to_string(),
            version: 0,
            retracted: false,
        },
        channel: trigger.channel,
        region: trigger.region.as_deref().map(str::to_string),
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
                found.push((detection_time(rules, ri, &evs[k].ev), ri, k, Found { rule: ri, matched }));
            }
        }
    }
    found.sort_by_key(|(t, ri, k, _)| (*t, *ri, *k));
    found.into_iter().map(|(_, _, _, f)| build_hit(rules, customer, &evs, &f, None)).collect()
}
