//! Event-time cross-channel sessions with corrections.
//!
//! A session is a maximal run of one customer's events, ordered by (`event_time`, `event_id`),
//! in which consecutive events are less than `gap` apart; a run longer than `max_duration`
//! (measured from its first event) is split before the first event beyond it.
//!
//! State, per customer: the distinct events of the last `correction_horizon` (plus one gap) of
//! event time, and the sessions already emitted. That is what bounds it: whole sessions whose
//! end is older than `watermark - horizon - gap` are pruned, and events older than
//! `watermark - horizon` are refused as late. Sessions are derived from the retained events
//! by the same function a batch computation uses ([`cut_sessions`]), and emitted once closed
//! (`end + gap < watermark`, or `start + max_duration < watermark`). A late event that changes
//! an emitted session re-emits it with a higher version; a session that a merge absorbed is
//! emitted again with `retracted = true`. So, whatever the arrival order within the horizon,
//! the latest non-retracted versions equal the batch result.

use crate::inline::InlineStr;
use crate::operator::Operator;
use crate::slots::{ChunkedVec, SlotIndex};
use crate::timers::Timers;
use journey_schemas::{Channel, ChannelEvent, Session};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

/// Distinct topic and region strings shared per thread, so an event's `Arc<str>` fields cost a
/// lookup instead of an allocation. State, and why it is bounded: at most [`INTERN_MAX`]
/// strings (topics and regions are small vocabularies); strings beyond that are allocated as
/// before, so hostile input cannot grow it.
const INTERN_MAX: usize = 4096;

thread_local! {
    static INTERNED: RefCell<HashMap<Box<str>, Arc<str>, foldhash::fast::FixedState>> = RefCell::default();
}

/// The shared `Arc<str>` of `s` (see [`INTERN_MAX`]).
pub fn intern(s: &str) -> Arc<str> {
    INTERNED.with_borrow_mut(|m| {
        if let Some(a) = m.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if m.len() < INTERN_MAX {
            m.insert(s.into(), a.clone());
        }
        a
    })
}

/// Width of the timer buckets (see `timers.rs`): a minute of event time, so a day of
/// deadlines spans some 1 500 buckets.
const TIMER_BUCKET_MS: i64 = 60_000;

/// Session parameters, in milliseconds of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// Largest gap inside a session (exclusive).
    pub gap_ms: i64,
    /// Longest session, from its first event.
    pub max_duration_ms: i64,
    /// How far behind the watermark an event may be and still correct results.
    pub horizon_ms: i64,
}

/// The part of an event a session needs.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    /// Event time.
    pub time: i64,
    /// Event id (ties in time are ordered by id bytes), inline when short (see `inline.rs`).
    pub id: InlineStr,
    /// Channel.
    pub channel: Channel,
    /// Topic, interned.
    pub topic: Option<Arc<str>>,
    /// Region, interned.
    pub region: Option<Arc<str>>,
    /// `event_type == "contact.start"`.
    pub assisted: bool,
    /// A hash of `id`, which the sessionizer sets itself when it admits or restores the event
    /// (so any value may be given, and equality ignores it): the duplicate check compares it
    /// before the ids, whose bytes are a cache miss each.
    pub id_tag: u32,
    /// Input offset it came from (the runtime commits no further than the oldest unfinished one).
    pub offset: i64,
    /// The original record, kept so a re-attribution can re-publish it under the new key.
    pub payload: Option<Arc<[u8]>>,
    /// How many times the record already moved to another customer key.
    pub moves: u64,
}

impl PartialEq for SessionEvent {
    fn eq(&self, o: &SessionEvent) -> bool {
        let SessionEvent { time, id, channel, topic, region, assisted, id_tag: _, offset, payload, moves } = self;
        *time == o.time
            && *id == o.id
            && *channel == o.channel
            && *topic == o.topic
            && *region == o.region
            && *assisted == o.assisted
            && *offset == o.offset
            && *payload == o.payload
            && *moves == o.moves
    }
}

impl Eq for SessionEvent {}

// Every retained event is one of these (the tag takes padding; the inline id is 8 bytes more
// than a boxed one, and saves an allocation per event): keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<SessionEvent>() == 104);

/// [`SessionEvent::id_tag`] of an id: any fast hash does, since tags never leave the process
/// (a restore recomputes them).
fn id_tag(id: &[u8]) -> u32 {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::with_seed(0).hash_one(id) >> 32) as u32
}

impl SessionEvent {
    /// Extracts what a session needs from an event.
    pub fn from_event(e: &ChannelEvent) -> SessionEvent {
        SessionEvent {
            time: e.event_time,
            id: InlineStr::new(&e.event_id),
            channel: e.channel,
            topic: e.topic.as_deref().map(intern),
            region: e.region.as_deref().map(intern),
            assisted: e.event_type == "contact.start",
            id_tag: 0,
            offset: 0,
            payload: None,
            moves: 0,
        }
    }

    fn key(&self) -> (i64, &[u8]) {
        (self.time, self.id.as_bytes())
    }
}

/// Splits sorted events into sessions: index ranges into `events`.
pub fn cut_sessions(events: &[SessionEvent], p: &SessionParams) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..events.len() {
        let gap = events[i].time - events[i - 1].time;
        let too_long = events[i].time - events[start].time > p.max_duration_ms;
        if gap >= p.gap_ms || too_long {
            out.push(start..i);
            start = i;
        }
    }
    if !events.is_empty() {
        out.push(start..events.len());
    }
    out
}

/// Deterministic session id: a hash of the customer and the first event id.
pub fn session_id(customer: &str, first_event_id: &str) -> String {
    session_id_text(session_hash(customer, first_event_id))
}

/// The two hashes a session id spells out: `(fnv1a(.., 0), fnv1a(.., 1))` in one pass. The
/// sessionizer compares these instead of the text, which it builds only to emit.
pub fn session_hash(customer: &str, first_event_id: &str) -> (u64, u64) {
    session_hash_of_bytes(customer.as_bytes(), first_event_id.as_bytes())
}

/// [`session_hash`] of the texts' bytes (an inline id gives its bytes without a UTF-8 check).
fn session_hash_of_bytes(customer: &[u8], first_event_id: &[u8]) -> (u64, u64) {
    fnv1a_pair([customer, &[0xff], first_event_id])
}

/// FNV-1a with salts 0 and 1 over the concatenation of `parts`, both in one pass. A plain loop
/// per part: a chained iterator checks which part it is in at every byte.
pub(crate) fn fnv1a_pair<const N: usize>(parts: [&[u8]; N]) -> (u64, u64) {
    let (mut h0, mut h1) = (fnv1a_seed(0), fnv1a_seed(1));
    for part in parts {
        for &byte in part {
            h0 = (h0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
            h1 = (h1 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }
    (h0, h1)
}

/// `format!("{h0:016x}{h1:016x}")`: the hex of the two hashes' big-endian bytes.
pub fn session_id_text((h0, h1): (u64, u64)) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&h0.to_be_bytes());
    bytes[8..].copy_from_slice(&h1.to_be_bytes());
    crate::pii::hex16(&bytes)
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a_seed(salt: u8) -> u64 {
    0xcbf2_9ce4_8422_2325 ^ u64::from(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// FNV-1a over two byte strings with a separator and a salt; stable across builds and platforms.
pub fn fnv1a(a: &[u8], b: &[u8], salt: u8) -> u64 {
    let mut h = fnv1a_seed(salt);
    for &byte in a.iter().chain(&[0xff]).chain(b) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Builds the session record for one run of sorted events (version and retraction left at 0/false).
pub fn build_session(customer: &str, events: &[SessionEvent]) -> Session {
    let first = &events[0];
    let last = &events[events.len() - 1];
    let mut channels: Vec<String> = Vec::new();
    let mut path = String::new();
    let mut prev: Option<Channel> = None;
    let mut topics: Vec<String> = Vec::new();
    for e in events {
        if prev != Some(e.channel) {
            if prev.is_some() {
                path.push('>');
            }
            path.push_str(e.channel.as_str());
            prev = Some(e.channel);
        }
        if !channels.iter().any(|c| c == e.channel.as_str()) {
            channels.push(e.channel.as_str().to_string());
        }
        if let Some(t) = &e.topic {
            if !topics.iter().any(|x| **x == **t) {
                topics.push(t.to_string());
            }
        }
    }
    Session {
        session_id: session_id_text(session_hash_of_bytes(customer.as_bytes(), first.id.as_bytes())),
        customer_id: customer.to_string(),
        start_time: first.time,
        end_time: last.time,
        duration_ms: last.time - first.time,
        event_count: events.len() as i64,
        channels,
        path,
        topics,
        assisted: events.iter().any(|e| e.assisted),
        first_event_id: first.id.as_str().to_owned(),
        last_event_id: last.id.as_str().to_owned(),
        version: 0,
        retracted: false,
    }
}

/// A change of channel between consecutive events of a session: one edge of the process map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Channel of the earlier event.
    pub from: Channel,
    /// Channel of the later event (different from `from`).
    pub to: Channel,
    /// Event time of the later event: the moment the customer arrived in `to`.
    pub time: i64,
    /// Time since the earlier event, in milliseconds.
    pub gap_ms: i64,
}

/// The channel transitions of one session's sorted events, aligned with its `path`: the k-th
/// transition goes from the k-th to the (k+1)-th channel of the path.
pub fn transitions(events: &[SessionEvent]) -> Vec<Transition> {
    events
        .windows(2)
        .filter(|w| w[0].channel != w[1].channel)
        .map(|w| Transition { from: w[0].channel, to: w[1].channel, time: w[1].time, gap_ms: w[1].time - w[0].time })
        .collect()
}

/// One output of the sessionizer: a session record (new, changed or retracted) with what the
/// analytics tables need beyond the `journey.Session` contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The record published to `journey.sessions` (shared with the sessionizer's state, which
    /// keeps the last emitted record of each session).
    pub session: Arc<Session>,
    /// Region of the session's first event that has one.
    pub region: Option<Arc<str>>,
    /// Channel transitions (empty for a retraction).
    pub transitions: Vec<Transition>,
}

impl Emitted {
    /// A live session built from its sorted events.
    pub fn live(session: Arc<Session>, events: &[SessionEvent]) -> Emitted {
        Emitted { session, region: events.iter().find_map(|e| e.region.clone()), transitions: transitions(events) }
    }

    /// A retraction: the record alone.
    pub fn retraction(session: Arc<Session>) -> Emitted {
        Emitted { session, region: None, transitions: Vec::new() }
    }
}

impl std::ops::Deref for Emitted {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

/// Batch computation: the sessions of one customer's complete event set (any order, duplicates
/// by event id counted once). The streaming operator must end up equal to this.
pub fn batch_sessions(customer: &str, events: &[SessionEvent], p: &SessionParams) -> Vec<Emitted> {
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut seen = std::collections::HashSet::new();
    sorted.retain(|e| seen.insert(e.id.clone()));
    cut_sessions(&sorted, p).into_iter().map(|r| Emitted::live(Arc::new(build_session(customer, &sorted[r.clone()])), &sorted[r])).collect()
}

/// What happened to one input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New event, folded into the state.
    Accepted,
    /// Same event id seen before for this customer: dropped (and counted by the caller).
    Duplicate,
    /// Older than `watermark - correction_horizon`: not folded; the caller routes it to the late topic.
    TooLate,
}

/// The last emitted record of a session id, with the id's hashes to compare cheaply.
#[derive(Debug, Clone)]
struct Sent {
    id: (u64, u64),
    rec: Arc<Session>,
}

#[derive(Debug, Default)]
struct CustomerState {
    /// Canonical customer key, inline when short: the index probe compares it in the slot,
    /// without a pointer to a second cold line.
    key: InlineStr,
    /// Distinct events sorted by (time, id).
    events: Vec<SessionEvent>,
    /// The last emitted record of each session id (a customer has a handful, so a list).
    emitted: Vec<Sent>,
    /// When the customer next needs a reconcile, if ever.
    timer: Option<i64>,
    /// Its entry in the timer set: at or before `timer` (a later `timer` is re-armed when this
    /// fires, so the in-order events of a session, which each push the deadline back, cost
    /// no timer-set update).
    armed: Option<i64>,
    /// Earliest prune deadline of the closed sessions and tombstones, as of the last reconcile
    /// (in-order events never close a session, so it stays valid until the next one).
    prune_at: Option<i64>,
    /// Smallest input offset among events of sessions not yet emitted as closed.
    pending_offset: Option<i64>,
    /// Listed in `Sessionizer::dirty` since the last `take_dirty`.
    dirty: bool,
}

/// Everything the sessionizer keeps for one customer, for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerSnapshot {
    /// Canonical customer key.
    pub key: String,
    /// Retained events, sorted by (time, id).
    pub events: Vec<SessionEvent>,
    /// Last emitted record of each session id (tombstones included).
    pub emitted: Vec<Session>,
}

/// The slots of the customers with state, found by their key (which the slot holds; see
/// `slots.rs`).
#[derive(Debug, Default)]
struct CustomerIndex {
    slots: SlotIndex,
    hasher: foldhash::fast::RandomState,
}

impl CustomerIndex {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn get(&self, customers: &ChunkedVec<CustomerState>, key: &str) -> Option<usize> {
        self.slots.get(self.hash(key), |i| customers[i].key.as_bytes() == key.as_bytes())
    }

    /// Adds slot `idx`, whose key is set and not yet indexed.
    fn insert(&mut self, customers: &ChunkedVec<CustomerState>, idx: usize) {
        self.slots.insert(self.hash(&customers[idx].key), idx);
    }

    /// Removes slot `idx` (its key still set).
    fn remove(&mut self, customers: &ChunkedVec<CustomerState>, idx: usize) {
        self.slots.remove(self.hash(&customers[idx].key), idx);
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// The per-partition sessionizer (see the module docs for its semantics and bounds).
#[derive(Debug)]
pub struct Sessionizer {
    params: SessionParams,
    /// Customer key -> slot, the key being the slot's own (no second copy, and the lookup's
    /// comparison reads the state the event goes on to use); looked up for every event, so a
    /// fast seeded hash, not SipHash.
    index: CustomerIndex,
    /// The slots (see `slots.rs`: growing never moves them).
    customers: ChunkedVec<CustomerState>,
    free: Vec<usize>,
    /// (armed deadline, slot); entries that no longer match their slot's `armed` are skipped.
    timers: Timers,
    watermark: i64,
    /// Lowest version a new emission may carry (the runtime derives it from input offsets,
    /// so versions are deterministic and grow across restarts).
    version_floor: i64,
    /// Slots of customers whose state changed since the last [`Sessionizer::take_dirty`]
    /// (each listed once: its `dirty` flag says so), so the hot path allocates no key.
    dirty: Vec<usize>,
    /// Keys whose state was removed since the last [`Sessionizer::take_dirty`] (one insert per
    /// pruned customer, so a fast seeded hash, and drained rather than dropped so that its
    /// table is grown once, not at every flush).
    dirty_gone: HashSet<InlineStr, foldhash::fast::RandomState>,
    /// Scratch list of the session ids of one reconcile, kept to reuse its allocation.
    live_ids: Vec<(u64, u64)>,
    /// Test switch: arm timers as the first version did (see `tests::reference_schedule`), and
    /// reconcile whenever one fires (no shortcut for state wholly past the horizon).
    #[cfg(test)]
    reference_timers: bool,
}

impl Sessionizer {
    /// An empty sessionizer.
    pub fn new(params: SessionParams) -> Sessionizer {
        Sessionizer {
            params,
            index: CustomerIndex::default(),
            customers: ChunkedVec::default(),
            free: Vec::new(),
            timers: Timers::new(TIMER_BUCKET_MS),
            watermark: i64::MIN,
            version_floor: 1,
            dirty: Vec::new(),
            dirty_gone: HashSet::default(),
            live_ids: Vec::new(),
            #[cfg(test)]
            reference_timers: false,
        }
    }

    /// Keys whose state changed since the last call (checkpointing), and forgets them.
    pub fn take_dirty(&mut self) -> Vec<String> {
        let mut keys = Vec::new();
        self.take_dirty_into(&mut keys);
        keys
    }

    /// [`Sessionizer::take_dirty`] appended to `keys`, so that a caller that flushes often can
    /// reuse one buffer (a fresh one of this size takes fresh pages from the system each time).
    pub fn take_dirty_into(&mut self, keys: &mut Vec<String>) {
        keys.reserve(self.dirty.len() + self.dirty_gone.len());
        for key in self.dirty_gone.drain() {
            // A key removed and then created again is listed below, once.
            if !self.index.get(&self.customers, &key).is_some_and(|idx| self.customers[idx].dirty) {
                keys.push(key.as_str().to_owned());
            }
        }
        // Cleared, not given away, so the list is grown once rather than at every flush.
        for &idx in &self.dirty {
            let c = &mut self.customers[idx];
            // A slot freed (and maybe reused) since it was listed has its flag cleared.
            if std::mem::take(&mut c.dirty) {
                keys.push(c.key.as_str().to_owned());
            }
        }
        self.dirty.clear();
    }

    fn mark_dirty(&mut self, idx: usize) {
        let c = &mut self.customers[idx];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    /// Forgets that `customer` changed (its state was just restored as it is in the changelog).
    fn clear_dirty(&mut self, customer: &str) {
        self.dirty_gone.remove(customer.as_bytes());
        if let Some(idx) = self.index.get(&self.customers, customer) {
            self.customers[idx].dirty = false;
        }
    }

    /// A customer's state, if it has any.
    pub fn snapshot(&self, customer: &str) -> Option<CustomerSnapshot> {
        let c = &self.customers[self.index.get(&self.customers, customer)?];
        let mut emitted: Vec<Session> = c.emitted.iter().map(|s| Session::clone(&s.rec)).collect();
        emitted.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Some(CustomerSnapshot { key: c.key.as_str().to_owned(), events: c.events.clone(), emitted })
    }

    /// Restores a customer's state from a checkpoint (replacing any it had), then re-arms its
    /// timer; anything the restored watermark already closes but was not emitted goes to `out`.
    pub fn restore(&mut self, snap: CustomerSnapshot, out: &mut Vec<Emitted>) {
        let mut discard = Vec::new();
        self.take_customer_quietly(&snap.key, &mut discard);
        let idx = self.slot_for(&snap.key);
        let c = &mut self.customers[idx];
        c.pending_offset = None;
        c.events = snap.events;
        for e in &mut c.events {
            e.id_tag = id_tag(e.id.as_bytes());
        }
        c.emitted = Vec::with_capacity(snap.emitted.len());
        for s in snap.emitted {
            // One record per session id, the last one winning, as a map would keep. The id is
            // the hash of the customer and the session's first event, so it is recomputed.
            let id = session_hash(&snap.key, &s.first_event_id);
            let s = Sent { id, rec: Arc::new(s) };
            match c.emitted.iter_mut().find(|e| e.id == id) {
                Some(e) => *e = s,
                None => c.emitted.push(s),
            }
        }
        self.reconcile(idx, out);
        self.clear_dirty(&snap.key);
    }

    /// Sets the watermark without emitting (restoring a checkpoint).
    pub fn restore_watermark(&mut self, watermark: i64) {
        self.watermark = watermark;
    }

    fn take_customer_quietly(&mut self, customer: &str, out: &mut Vec<Emitted>) {
        let _ = self.take_customer(customer, out);
        self.clear_dirty(customer);
    }

    fn slot_for(&mut self, customer: &str) -> usize {
        match self.index.get(&self.customers, customer) {
            Some(i) => i,
            None => self.new_slot(customer),
        }
    }

    fn new_slot(&mut self, customer: &str) -> usize {
        let state = CustomerState { key: InlineStr::new(customer), ..Default::default() };
        let i = match self.free.pop() {
            Some(i) => {
                self.customers[i] = state;
                i
            }
            None => self.customers.push(state),
        };
        self.index.insert(&self.customers, i);
        i
    }

    /// Current watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Id of the session that contains event `(time, event_id)` of `customer` in the current
    /// cut, if that event is retained. Walks the cut like [`cut_sessions`] without allocating.
    pub fn session_of(&self, customer: &str, time: i64, event_id: &str) -> Option<String> {
        self.session_hash_of(customer, time, event_id).map(session_id_text)
    }

    /// [`Sessionizer::session_of`] as the two hashes the id spells out ([`session_id_text`]),
    /// without building the text.
    pub fn session_hash_of(&self, customer: &str, time: i64, event_id: &str) -> Option<(u64, u64)> {
        let c = &self.customers[self.index.get(&self.customers, customer)?];
        let pos = c.events.partition_point(|e| e.key() < (time, event_id.as_bytes()));
        if c.events.get(pos).is_none_or(|e| e.id.as_bytes() != event_id.as_bytes()) {
            return None;
        }
        let p = &self.params;
        let mut start = 0;
        for i in 1..=pos {
            let gap = c.events[i].time - c.events[i - 1].time;
            if gap >= p.gap_ms || c.events[i].time - c.events[start].time > p.max_duration_ms {
                start = i;
            }
        }
        Some(session_hash_of_bytes(c.key.as_bytes(), c.events[start].id.as_bytes()))
    }

    /// The retained events of `customer`, sorted by (time, id): every event of it at or after
    /// `watermark - horizon - gap` (only whole sessions that ended before are pruned).
    pub fn events_of(&self, customer: &str) -> &[SessionEvent] {
        match self.index.get(&self.customers, customer) {
            Some(i) => &self.customers[i].events,
            None => &[],
        }
    }

    /// Sets the lowest version of future emissions.
    pub fn set_version_floor(&mut self, v: i64) {
        self.version_floor = self.version_floor.max(v);
    }

    /// Customers with state.
    pub fn customers(&self) -> usize {
        self.index.len()
    }

    /// Retained events in all.
    pub fn retained_events(&self) -> usize {
        self.customers.iter().map(|c| c.events.len()).sum()
    }

    /// Whether any session is still open (not yet emitted as closed).
    pub fn has_open_sessions(&self) -> bool {
        self.customers.iter().any(|c| c.pending_offset.is_some())
    }

    /// Folds one event of `customer` (its canonical key); outputs go to `out`.
    pub fn admit(&mut self, customer: &str, mut ev: SessionEvent, out: &mut Vec<Emitted>) -> Admission {
        if self.watermark != i64::MIN && ev.time < self.watermark.saturating_sub(self.params.horizon_ms) {
            return Admission::TooLate;
        }
        ev.id_tag = id_tag(ev.id.as_bytes());
        let idx = match self.index.get(&self.customers, customer) {
            Some(i) if self.customers[i].events.iter().any(|e| e.id_tag == ev.id_tag && e.id == ev.id) => return Admission::Duplicate,
            Some(i) => i,
            None => self.new_slot(customer),
        };
        self.mark_dirty(idx);
        let c = &mut self.customers[idx];
        let late = ev.time < self.watermark;
        c.pending_offset = Some(c.pending_offset.map_or(ev.offset, |o| o.min(ev.offset)));
        // In-order events append; out-of-order ones are inserted in place.
        let pos = match c.events.last() {
            Some(last) if last.key() <= ev.key() => c.events.len(),
            _ => c.events.partition_point(|e| e.key() < ev.key()),
        };
        if c.events.capacity() == 0 {
            // Sessions average a few events: one allocation instead of three growths.
            c.events.reserve_exact(4);
        }
        c.events.insert(pos, ev);
        if late {
            self.reconcile(idx, out);
        } else {
            self.schedule(idx);
        }
        Admission::Accepted
    }

    /// Advances the watermark and emits every session that closed.
    pub fn advance(&mut self, watermark: i64, out: &mut Vec<Emitted>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        // The reference mode of the tests always reconciles, so the shortcut below is checked
        // against the full computation.
        #[cfg(test)]
        let shortcut = !self.reference_timers;
        #[cfg(not(test))]
        let shortcut = true;
        while let Some((armed, idx)) = self.timers.pop_before(watermark) {
            let c = &mut self.customers[idx];
            if c.armed != Some(armed) {
                // Left behind when the slot was armed earlier, or freed (see `timers.rs`).
                continue;
            }
            c.armed = None;
            match c.timer {
                Some(t) if t < watermark => {
                    c.timer = None;
                    if shortcut && c.pending_offset.is_none() && all_past_horizon(c, &self.params, watermark) {
                        // What a reconcile would do, without cutting sessions it would only
                        // find unchanged: nothing is open and nothing was admitted since the
                        // last reconcile emitted every closed session (a late event
                        // reconciles at once), so nothing is emitted and the state goes.
                        self.remove_customer(idx);
                    } else {
                        self.reconcile(idx, out);
                    }
                }
                later => self.set_timer(idx, later),
            }
        }
    }

    /// Sets when customer `idx` next needs a reconcile, keeping an armed entry at or before it.
    fn set_timer(&mut self, idx: usize, deadline: Option<i64>) {
        let c = &mut self.customers[idx];
        c.timer = deadline;
        match (c.armed, deadline) {
            (Some(a), Some(t)) if a <= t => {}
            _ => {
                // An entry armed before stays in the set and is skipped when it comes up.
                c.armed = deadline;
                if let Some(t) = deadline {
                    self.timers.insert(t, idx);
                }
            }
        }
    }

    /// Recomputes one customer's sessions, emits what closed or changed, retracts what vanished,
    /// prunes what is past the horizon, and re-arms its timer.
    fn reconcile(&mut self, idx: usize, out: &mut Vec<Emitted>) {
        let p = self.params;
        let wm = self.watermark;
        let floor = self.version_floor;
        self.mark_dirty(idx);
        let mut live_ids = std::mem::take(&mut self.live_ids);
        live_ids.clear();
        let c = &mut self.customers[idx];
        let ranges = cut_sessions(&c.events, &p);
        let mut next_deadline: Option<i64> = None;
        let mut next_prune: Option<i64> = None;
        let mut prune_before = 0usize;
        let mut pruned_sessions = 0usize;
        let mut pending: Option<i64> = None;
        for r in &ranges {
            let run = &c.events[r.clone()];
            let (first, last) = (&run[0], &run[run.len() - 1]);
            let id = session_hash_of_bytes(c.key.as_bytes(), first.id.as_bytes());
            let closed = last.time.saturating_add(p.gap_ms) < wm || first.time.saturating_add(p.max_duration_ms) < wm;
            if closed {
                let prev = c.emitted.iter().position(|s| s.id == id);
                // Retained events only grow between prunes of whole sessions, and a session is a
                // contiguous run of them: an emitted record with the same first and last event
                // and the same count covers the very same events, so it needs no rebuild.
                let unchanged = prev.is_some_and(|i| {
                    let s = &c.emitted[i].rec;
                    !s.retracted
                        && s.start_time == first.time
                        && s.end_time == last.time
                        && s.event_count == run.len() as i64
                        && s.last_event_id.as_bytes() == last.id.as_bytes()
                });
                debug_assert!(!unchanged || prev.is_some_and(|i| same_content(&c.emitted[i].rec, &build_session(&c.key, run))));
                if !unchanged {
                    let mut s = build_session(&c.key, run);
                    let changed = prev.is_none_or(|i| !same_content(&c.emitted[i].rec, &s));
                    if changed {
                        s.version = prev.map_or(floor, |i| (c.emitted[i].rec.version + 1).max(floor));
                        let rec = Arc::new(s);
                        out.push(Emitted::live(rec.clone(), run));
                        match prev {
                            Some(i) => c.emitted[i].rec = rec,
                            None => c.emitted.push(Sent { id, rec }),
                        }
                    }
                }
                // Whole sessions beyond the horizon can no longer change: prune them.
                if last.time.saturating_add(p.gap_ms) < wm.saturating_sub(p.horizon_ms) && prune_before == r.start {
                    prune_before = r.end;
                    pruned_sessions += 1;
                }
                let prune_at = last.time.saturating_add(p.gap_ms).saturating_add(p.horizon_ms);
                next_deadline = Some(next_deadline.map_or(prune_at, |d| d.min(prune_at)));
                next_prune = Some(next_prune.map_or(prune_at, |d| d.min(prune_at)));
            } else {
                let min_off = run.iter().map(|e| e.offset).min();
                pending = match (pending, min_off) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let close_at = last.time.saturating_add(p.gap_ms).min(first.time.saturating_add(p.max_duration_ms));
                next_deadline = Some(next_deadline.map_or(close_at, |d| d.min(close_at)));
            }
            live_ids.push(id);
        }
        c.pending_offset = pending;
        // Emitted sessions that no longer exist were absorbed or re-cut: retract them. The
        // retraction stays as a tombstone so that, should a later re-cut bring the same id back,
        // its new version is still higher than the retraction's.
        for prev in c.emitted.iter_mut() {
            if !prev.rec.retracted && !live_ids.contains(&prev.id) {
                // The output's copy of the last emission is usually gone by now: no clone then.
                let rec = Arc::make_mut(&mut prev.rec);
                rec.version = (rec.version + 1).max(floor);
                rec.retracted = true;
                out.push(Emitted::retraction(prev.rec.clone()));
            }
        }
        if prune_before > 0 {
            c.events.drain(..prune_before);
        }
        // Keep the emitted records of sessions still derived from retained events, and
        // tombstones until they are past the horizon too. Pruning whole sessions off the front
        // leaves the cut of the rest as it was, so the retained sessions are the live ones
        // after the pruned ones.
        let horizon_start = wm.saturating_sub(p.horizon_ms);
        let retained = &live_ids[pruned_sessions..];
        c.emitted.retain(|s| retained.contains(&s.id) || s.rec.end_time.saturating_add(p.gap_ms) >= horizon_start);
        for s in c.emitted.iter().filter(|s| s.rec.retracted) {
            let prune_at = s.rec.end_time.saturating_add(p.gap_ms).saturating_add(p.horizon_ms);
            next_deadline = Some(next_deadline.map_or(prune_at, |d| d.min(prune_at)));
            next_prune = Some(next_prune.map_or(prune_at, |d| d.min(prune_at)));
        }
        c.prune_at = next_prune;
        self.live_ids = live_ids;
        if c.events.is_empty() && c.emitted.is_empty() {
            self.remove_customer(idx);
            return;
        }
        self.set_timer(idx, next_deadline);
    }

    /// Forgets customer `idx` whose state is no longer needed (not a re-attribution: nothing
    /// is retracted).
    fn remove_customer(&mut self, idx: usize) {
        self.set_timer(idx, None);
        self.index.remove(&self.customers, idx);
        let key = std::mem::take(&mut self.customers[idx].key);
        self.dirty_gone.insert(key);
        self.customers[idx] = CustomerState::default();
        self.free.push(idx);
    }

    /// Re-arms a customer's timer after an in-order event (not behind the watermark).
    ///
    /// Such an event never closes a session nor changes a closed one (it is at or after the
    /// watermark, so more than `gap` after any closed session's end, and more than
    /// `max_duration` after the start of one closed by length), so what can happen next is
    /// that an open session closes, or that the prune deadline set by the last reconcile
    /// passes. Open sessions close in order (their `min(end + gap, start + max_duration)`
    /// grows along the cut), so the first open one gives the deadline.
    fn schedule(&mut self, idx: usize) {
        #[cfg(test)]
        if self.reference_timers {
            return self.reference_schedule(idx);
        }
        let c = &mut self.customers[idx];
        let close = first_open_close(&c.events, &self.params, self.watermark);
        let deadline = c.prune_at.map_or(close, |t| t.min(close));
        self.set_timer(idx, Some(deadline));
    }

    /// Removes a customer's state (its key was merged into another customer): emits a
    /// retraction for each of its emitted sessions and returns its retained events, which the
    /// caller re-publishes under the new key.
    pub fn take_customer(&mut self, customer: &str, out: &mut Vec<Emitted>) -> Vec<SessionEvent> {
        let Some(idx) = self.index.get(&self.customers, customer) else { return Vec::new() };
        self.index.remove(&self.customers, idx);
        self.dirty_gone.insert(InlineStr::new(customer));
        let floor = self.version_floor;
        // Its timer entry, if any, stays behind and is skipped (the slot's `armed` is cleared).
        let state = std::mem::take(&mut self.customers[idx]);
        self.free.push(idx);
        let mut retractions: Vec<Arc<Session>> = state.emitted.into_iter().map(|s| s.rec).filter(|s| !s.retracted).collect();
        retractions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        for mut s in retractions {
            let rec = Arc::make_mut(&mut s);
            rec.version = (rec.version + 1).max(floor);
            rec.retracted = true;
            out.push(Emitted::retraction(s));
        }
        state.events
    }

    /// Emits every session as if event time had ended (used when a replay is complete and
    /// for tests); pruning then empties the state.
    pub fn flush_all(&mut self, out: &mut Vec<Emitted>) {
        self.advance(i64::MAX / 4, out);
    }
}

/// `min(end + gap, start + max_duration)` of the first session of `events` (sorted, not empty)
/// that is not closed at watermark `wm`, or of the last session if all are.
fn first_open_close(events: &[SessionEvent], p: &SessionParams, wm: i64) -> i64 {
    let close =
        |start: &SessionEvent, end: &SessionEvent| end.time.saturating_add(p.gap_ms).min(start.time.saturating_add(p.max_duration_ms));
    let mut start = 0;
    // The same cut as `cut_sessions`, walked without collecting it.
    for i in 1..events.len() {
        if events[i].time - events[i - 1].time >= p.gap_ms || events[i].time - events[start].time > p.max_duration_ms {
            let c = close(&events[start], &events[i - 1]);
            if c >= wm {
                return c;
            }
            start = i;
        }
    }
    close(&events[start], &events[events.len() - 1])
}

/// Whether a reconcile at watermark `wm` would prune all of `c`'s events and emitted records:
/// its last event and every emitted session (tombstones included) end a gap before the
/// horizon's start.
fn all_past_horizon(c: &CustomerState, p: &SessionParams, wm: i64) -> bool {
    let horizon_start = wm.saturating_sub(p.horizon_ms);
    c.events.last().is_none_or(|e| e.time.saturating_add(p.gap_ms) < horizon_start)
        && c.emitted.iter().all(|s| s.rec.end_time.saturating_add(p.gap_ms) < horizon_start)
}

fn same_content(a: &Session, b: &Session) -> bool {
    a.session_id == b.session_id
        && a.start_time == b.start_time
        && a.end_time == b.end_time
        && a.event_count == b.event_count
        && a.last_event_id == b.last_event_id
        && a.path == b.path
        && a.topics == b.topics
        && a.channels == b.channels
        && a.assisted == b.assisted
        && !a.retracted
}

impl Operator for Sessionizer {
    type In = (String, SessionEvent);
    type Out = Emitted;

    fn on_event(&mut self, (customer, ev): Self::In, out: &mut Vec<Emitted>) {
        self.admit(&customer, ev, out);
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Emitted>) {
        self.advance(watermark, out);
    }
}

#[cfg(test)]
mod tests;
