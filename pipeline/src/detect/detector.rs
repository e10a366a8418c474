//! The incremental scenario detector: one per input partition, state per customer.
//!
//! State, per customer, and what bounds it: only events that match some predicate of some
//! rule are kept (beside a sessionizer, not even those that only the earlier steps of short
//! rules served from its events use: see `served.rs` and [`Detector::beside_sessions`]), each
//! until `watermark - horizon - W` passes it (W = the largest window of the rules whose
//! predicates it matches): after that no hit that can still change (detection
//! time >= `watermark - horizon`) can include it, whether as a step, a counted event, an
//! absence trigger or a follower. Emitted hits are kept until final (detection time older than
//! `watermark - horizon`), absence triggers until their window closes. Pruning runs on a
//! timer rounded up to `min(horizon / 8, 1h)`, so state outlives that bound by at most as
//! much. Events older than `watermark - horizon` are refused by the runtime before they reach
//! the detector.
//!
//! In-order events (after every retained event of the customer, and not behind the watermark)
//! take the fast path: only the rules they complete are searched, backwards within their
//! window. Anything else recomputes the customer's non-final hits from the retained events
//! and emits the difference: new hits, changed ones with a higher version, vanished ones with
//! `retracted = true` (kept as tombstones so a re-appearance gets a still higher version).

use super::eval::{absence_open, build_hit, completes, detection_time, hit_at, Bits, Described, DetectEvent, Found, View, WordHash};
use super::rules::{RuleSet, Shape};
use super::served::{self, Served};
use super::stored::{InlineStr, Kept, Symbols};
use super::DetectedHit;
use crate::sessionize::{SessionEvent, Sessionizer};
use crate::slots::{ChunkedVec, SlotIndex};
use crate::timers::Timers;
use journey_schemas::ChannelEvent;
use std::collections::HashSet;
use std::sync::Arc;
use thin_vec::ThinVec;

/// Where the detector learns the session of an event. The runtime admits each event to the
/// sessionizer before the detector, so the lookup sees the current cut.
pub trait SessionLookup {
    /// Id of the session that contains event `(time, event_id)` of `customer`, if known.
    fn session_of(&self, customer: &str, time: i64, event_id: &str) -> Option<String>;

    /// The retained events of `customer`, sorted by (time, id), with the watermark of the
    /// store: every event at or after `watermark - horizon - gap` must be among them. `None`
    /// if this lookup keeps no events (a detector built with
    /// [`Detector::beside_sessions`] cannot use it).
    fn session_events(&self, _customer: &str) -> Option<(&[SessionEvent], i64)> {
        None
    }

    /// [`SessionLookup::session_of`] in the form the detector keeps for an open absence
    /// trigger (the default reads the id and parses it).
    fn session_ref_of(&self, customer: &str, time: i64, event_id: &str) -> Option<SessionRef> {
        self.session_of(customer, time, event_id).map(|s| SessionRef::from_text(&s))
    }
}

/// A session id as the detector keeps it for an open absence trigger, whose session it looks
/// up when the trigger arrives (the session store may forget it before the window closes):
/// the two hashes a sessionizer's id spells out, so that a trigger costs no text, or any other
/// id as it is. Each id has one form ([`SessionRef::from_text`]), so equal ids compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRef {
    /// The id [`crate::sessionize::session_id_text`] spells from these hashes.
    Hashed(u64, u64),
    /// An id that is not 32 lower-case hex digits.
    Text(Box<str>),
}

impl SessionRef {
    /// The form of `id`: its hashes when it is 32 lower-case hex digits, else the text.
    pub fn from_text(id: &str) -> SessionRef {
        match crate::stitch::lower_hex16(id) {
            Some(b) => {
                let (mut h0, mut h1) = ([0u8; 8], [0u8; 8]);
                h0.copy_from_slice(&b[..8]);
                h1.copy_from_slice(&b[8..]);
                SessionRef::Hashed(u64::from_be_bytes(h0), u64::from_be_bytes(h1))
            }
            None => SessionRef::Text(id.into()),
        }
    }

    /// The session id.
    pub fn text(&self) -> String {
        match self {
            SessionRef::Hashed(h0, h1) => crate::sessionize::session_id_text((*h0, *h1)),
            SessionRef::Text(s) => s.to_string(),
        }
    }
}

/// A lookup that knows no session (hits carry `session_id = None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSessions;

impl SessionLookup for NoSessions {
    fn session_of(&self, _: &str, _: i64, _: &str) -> Option<String> {
        None
    }
}

impl SessionLookup for Sessionizer {
    fn session_of(&self, customer: &str, time: i64, event_id: &str) -> Option<String> {
        Sessionizer::session_of(self, customer, time, event_id)
    }

    fn session_events(&self, customer: &str) -> Option<(&[SessionEvent], i64)> {
        Some((self.events_of(customer), self.watermark()))
    }

    fn session_ref_of(&self, customer: &str, time: i64, event_id: &str) -> Option<SessionRef> {
        self.session_hash_of(customer, time, event_id).map(|(h0, h1)| SessionRef::Hashed(h0, h1))
    }
}

/// The last emitted record of a hit id (tombstones included), for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedHit {
    /// The record as last emitted.
    pub hit: DetectedHit,
    /// Time of its trigger event (for absence hits, `event_time - within`).
    pub trigger_time: i64,
}

/// An absence trigger whose window is still open, for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAbsence {
    /// Rule name.
    pub rule: String,
    /// Rule version.
    pub rule_version: u32,
    /// Trigger event time.
    pub trigger_time: i64,
    /// Trigger event id.
    pub trigger_id: String,
    /// Session of the trigger when last looked up: the session store may have forgotten it
    /// by the time the window closes.
    pub session_hint: Option<String>,
}

/// Everything the detector keeps for one customer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetectSnapshot {
    /// Canonical customer key.
    pub key: String,
    /// Retained events, sorted by (time, id).
    pub events: Vec<DetectEvent>,
    /// Absence triggers waiting for the watermark.
    pub pending: Vec<PendingAbsence>,
    /// Last emitted record of each non-final hit id, sorted by hit id.
    pub emitted: Vec<EmittedHit>,
}

#[derive(Debug, Clone)]
struct Pending {
    /// Trigger time + within; the hit is due once the watermark is past it.
    deadline: i64,
    rule: usize,
    time: i64,
    id: InlineStr,
    session: Option<SessionRef>,
}

/// One customer's slot: one cache line (its vectors are one pointer each, and an empty one
/// allocates nothing), since looking a customer up, and its timer coming up later, touch the
/// slot of a customer whose state is long out of cache.
#[derive(Debug)]
#[repr(align(64))]
struct CustomerState {
    /// Canonical customer key (also in the index).
    key: InlineStr,
    /// Kept events, sorted by (time, id).
    events: ThinVec<Kept>,
    /// Absence triggers whose window is still open.
    pending: ThinVec<Pending>,
    /// Last emitted record per hit id.
    emitted: Emitted,
    /// Deadline in the timer set, or [`NO_TIMER`]. A deadline of `i64::MAX` would never come
    /// up (the watermark never passes it), so it needs no entry either.
    timer: i64,
    /// Its key is in `Detector::dirty` if this equals `Detector::dirty_epoch`.
    dirty_epoch: u64,
}

const _: () = assert!(std::mem::size_of::<CustomerState>() == 64);

/// [`CustomerState::timer`] of a slot without a timer.
const NO_TIMER: i64 = i64::MAX;

impl Default for CustomerState {
    fn default() -> CustomerState {
        CustomerState {
            key: InlineStr::default(),
            events: ThinVec::new(),
            pending: ThinVec::new(),
            emitted: Emitted::default(),
            timer: NO_TIMER,
            dirty_epoch: 0,
        }
    }
}

/// The per-partition scenario detector (see the module docs for semantics and bounds).
#[derive(Debug)]
pub struct Detector {
    rules: Arc<RuleSet>,
    horizon_ms: i64,
    /// The sessionizer's gap, when built beside it ([`Detector::beside_sessions`]).
    session_gap_ms: Option<i64>,
    /// Rules whose earlier steps are found among the sessionizer's events (see `served.rs`).
    served: Served,
    /// Pruning deadlines are rounded up to a multiple of this, so that a customer's expiries
    /// coalesce into few timer firings (state is kept at most this much longer).
    prune_grid_ms: i64,
    /// Customer key -> slot.
    index: CustomerIndex,
    /// The slots (see `slots.rs`: growing never moves them).
    customers: ChunkedVec<CustomerState>,
    /// Field values of the retained events.
    symbols: Symbols,
    free: Vec<usize>,
    /// (deadline, slot): the slot needs attention once the watermark is past the deadline.
    timers: Timers,
    watermark: i64,
    /// Absence triggers at or before this time have their window closed although the
    /// watermark has not passed it: the partition went quiet ([`Detector::close_idle`]).
    idle_closed_upto: i64,
    version_floor: i64,
    /// The latest time of any event ever kept (restored ones too): an unkept event after it
    /// lands behind every customer's kept events, so it needs no look at its customer.
    kept_upto: i64,
    /// Changed or removed since the last [`Detector::take_dirty`], in the order first marked:
    /// the keys are copied (inline, without an allocation) when a customer is first marked,
    /// while its state is in cache, rather than read back from thousands of cold slots at the
    /// flush; taking them starts a new epoch, which unmarks every slot. A key is listed once:
    /// a slot is marked in the epoch it was listed in, and `dirty_gone` holds the keys listed
    /// for slots released in this epoch, which a new slot of the same key looks up (only a
    /// release or a new slot hashes a key, not every first change of a customer in a flush).
    /// Both are cleared, not given away, so they are grown once rather than at every flush.
    dirty: Vec<InlineStr>,
    dirty_gone: HashSet<InlineStr, foldhash::fast::FixedState>,
    dirty_epoch: u64,
}

impl Detector {
    /// An empty detector; events older than `watermark - horizon_ms` must not be admitted.
    pub fn new(rules: Arc<RuleSet>, horizon_ms: i64) -> Detector {
        Detector {
            served: Served::new(&rules, None),
            session_gap_ms: None,
            rules,
            horizon_ms: horizon_ms.max(0),
            prune_grid_ms: (horizon_ms / 8).clamp(1, 3_600_000),
            index: CustomerIndex::default(),
            customers: ChunkedVec::default(),
            symbols: Symbols::default(),
            free: Vec::new(),
            timers: Timers::new((horizon_ms / 8).clamp(1, 3_600_000)),
            watermark: i64::MIN,
            idle_closed_upto: i64::MIN,
            version_floor: 1,
            kept_upto: i64::MIN,
            dirty: Vec::new(),
            dirty_gone: HashSet::default(),
            dirty_epoch: 1,
        }
    }

    /// A detector beside a sessionizer with this `gap_ms` (and the same horizon), as the
    /// processor runs it: short sequence rules whose steps read only what the sessionizer
    /// keeps find their earlier steps among its events, so the detector does not keep those
    /// events itself (see `served.rs`). Every [`SessionLookup`] passed to it must then be that
    /// sessionizer, with the event just admitted to it.
    pub fn beside_sessions(rules: Arc<RuleSet>, horizon_ms: i64, gap_ms: i64) -> Detector {
        let mut d = Detector::new(rules, horizon_ms);
        d.session_gap_ms = Some(gap_ms);
        d.served = Served::new(&d.rules, Some(gap_ms));
        d
    }

    /// The names of the rules served from the sessionizer's events.
    pub fn served_rules(&self) -> Vec<&str> {
        self.rules.rules().iter().zip(&self.served.rules).filter(|(_, &s)| s).map(|(r, _)| r.name.as_str()).collect()
    }

    /// The rules in force.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Current watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Sets the lowest version of future emissions.
    pub fn set_version_floor(&mut self, v: i64) {
        self.version_floor = self.version_floor.max(v);
    }

    /// Sets the watermark without emitting (restoring a checkpoint).
    pub fn restore_watermark(&mut self, wm: i64) {
        self.watermark = wm;
    }

    /// Up to which trigger time absence windows are closed by quiet (for checkpoints).
    pub fn idle_closed_upto(&self) -> i64 {
        self.idle_closed_upto
    }

    /// Restores [`Detector::idle_closed_upto`] from a checkpoint (before restoring customers).
    pub fn restore_idle_closed_upto(&mut self, upto: i64) {
        self.idle_closed_upto = upto;
    }

    /// The partition went quiet (no input for the idle timeout, as when a replay of history
    /// has ended): event time is taken to have passed the window of every absence trigger at
    /// or before `upto` (the latest event time seen), so their hits are emitted now, as every
    /// session is closed then. A follower that arrives later still cancels such a hit (a
    /// retraction), and later triggers wait for the watermark as usual.
    pub fn close_idle(&mut self, upto: i64, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        if upto <= self.idle_closed_upto {
            return;
        }
        self.idle_closed_upto = upto;
        for idx in 0..self.customers.len() {
            if self.customers[idx].pending.iter().any(|p| p.time <= upto) {
                self.on_timer(idx, sessions, out);
            }
        }
    }

    /// Customers with state.
    pub fn customers(&self) -> usize {
        self.index.len()
    }

    /// Retained events in all.
    pub fn retained_events(&self) -> usize {
        self.customers.iter().map(|c| c.events.len()).sum()
    }

    /// Approximate heap bytes of the detector's state, from the capacities of its tables and
    /// buffers and the lengths of the strings its emitted hits hold (the allocator's own
    /// overhead not included); for the benchmarks' state figures. Walks every slot.
    pub fn approx_heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let hit_text = |h: &DetectedHit| {
            let x = &h.hit;
            x.hit_id.capacity()
                + x.rule.capacity()
                + x.customer_id.capacity()
                + text(&x.session_id)
                + x.trigger_event_id.capacity()
                + x.matched_event_ids.capacity() * size_of::<String>()
                + x.matched_event_ids.iter().map(String::capacity).sum::<usize>()
                + x.path.capacity()
                + text(&x.topic)
                + x.severity.capacity()
                + text(&h.region)
        };
        let slots: usize = self
            .customers
            .iter()
            .map(|c| {
                c.events.capacity() * size_of::<Kept>()
                    + c.pending.capacity() * size_of::<Pending>()
                    + c.pending.iter().map(|p| if let Some(SessionRef::Text(s)) = &p.session { s.len() } else { 0 }).sum::<usize>()
                    + c.emitted.0.capacity() * size_of::<EmittedHit>()
                    + c.emitted.0.iter().map(|e| hit_text(&e.hit)).sum::<usize>()
            })
            .sum();
        let timers = self.timers.heap_bytes();
        self.index.0.heap_bytes() + self.customers.capacity() * size_of::<CustomerState>() + slots + timers
    }

    /// Keys whose state changed since the last call (checkpointing), and forgets them.
    pub fn take_dirty(&mut self) -> Vec<String> {
        let mut keys = Vec::new();
        self.take_dirty_into(&mut keys);
        keys
    }

    /// [`Detector::take_dirty`] appended to `keys`, so that a caller that flushes often can
    /// reuse one buffer (a fresh one of this size takes fresh pages from the system each time).
    pub fn take_dirty_into(&mut self, keys: &mut Vec<String>) {
        self.dirty_epoch += 1;
        keys.extend(self.dirty.iter().map(|k| k.as_str().to_string()));
        self.dirty.clear();
        self.dirty_gone.clear();
    }

    fn mark_dirty(&mut self, idx: usize) {
        let c = &mut self.customers[idx];
        if c.dirty_epoch != self.dirty_epoch {
            // Not listed in this epoch: not through this slot (its mark), nor through a slot of
            // the same key released earlier in it (`new_slot` then marked this one).
            c.dirty_epoch = self.dirty_epoch;
            self.dirty.push(c.key.clone());
        }
    }

    /// A slot for `customer`, which has none (the caller looked it up).
    fn new_slot(&mut self, customer: &str) -> usize {
        let key = InlineStr::new(customer);
        let i = match self.free.pop() {
            Some(i) => {
                // A released slot keeps its (empty) event and trigger buffers, saving their
                // allocation; its emitted-hit buffer was freed (see `release`).
                self.customers[i].key = key;
                i
            }
            None => self.customers.push(CustomerState { key, ..Default::default() }),
        };
        self.index.insert(&self.customers, i);
        if !self.dirty_gone.is_empty() && self.dirty_gone.contains(customer.as_bytes()) {
            // Its key was listed when its earlier slot went, in this epoch.
            self.customers[i].dirty_epoch = self.dirty_epoch;
        }
        i
    }

    /// Drops a slot's state; its key is reported dirty (so the checkpoint forgets it).
    fn release(&mut self, idx: usize) {
        // Its timer entry, if any, is left to expire: a stale entry only costs a spurious wake-up.
        self.index.remove(&self.customers, idx);
        let c = &mut self.customers[idx];
        let key = std::mem::take(&mut c.key);
        c.events.clear();
        c.pending.clear();
        if c.events.capacity() > 16 {
            c.events = ThinVec::new();
        }
        // Few customers have live hit records (4 692 for 81 057 customers after a benchmark
        // pass), so a reused slot seldom needs the buffer: free it rather than keep room for four.
        c.emitted.0 = ThinVec::new();
        c.timer = NO_TIMER;
        if c.dirty_epoch != self.dirty_epoch {
            self.dirty.push(key.clone());
        }
        c.dirty_epoch = 0;
        self.dirty_gone.insert(key);
        self.free.push(idx);
    }

    /// Folds one event of `customer`; returns false when it is already retained (a duplicate:
    /// same id, and so, ids being unique, same time). Every event must be passed, even those
    /// no rule matches: they are not kept, but one arriving before retained events may have
    /// re-cut sessions, so the session ids of live hits are refreshed. Duplicates of events no rule matches are not
    /// recognised (they cannot change any hit). Events older than `watermark - horizon` are
    /// ignored (the runtime sends them to the late topic before they get here).
    pub fn admit(&mut self, customer: &str, ev: DetectEvent, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) -> bool {
        let (bits, served_step) = self.kept_bits(self.rules.match_bits(&ev));
        if bits.is_empty() {
            self.admit_unkept(customer, ev.time, &ev.id, served_step, sessions, out);
            return true;
        }
        if self.too_late(ev.time) {
            return true;
        }
        self.collect_symbols_if_full();
        let expires = self.expiry(ev.time, &bits);
        let k = Kept::from_detect_event(&ev, &mut self.symbols, bits, expires);
        self.admit_matched(customer, k, sessions, out)
    }

    /// [`Detector::admit`] straight from the raw event: the fast path for the runtime, since
    /// events no rule can use are recognised without extracting anything from them.
    pub fn admit_event(&mut self, customer: &str, e: &ChannelEvent, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) -> bool {
        let (bits, served_step) = self.kept_bits(self.rules.match_bits(e));
        if bits.is_empty() {
            self.admit_unkept(customer, e.event_time, &e.event_id, served_step, sessions, out);
            return true;
        }
        if self.too_late(e.event_time) {
            return true;
        }
        self.collect_symbols_if_full();
        let expires = self.expiry(e.event_time, &bits);
        let k = Kept::from_event(e, &self.rules, &mut self.symbols, bits, expires);
        self.admit_matched(customer, k, sessions, out)
    }

    /// The predicates of `bits` the detector keeps the event for, and whether it matched only
    /// earlier steps of rules served from the sessionizer (which keeps it instead).
    fn kept_bits(&self, bits: Bits) -> (Bits, bool) {
        let matched = !bits.is_empty();
        let kept = self.served.kept(bits);
        let served_step = matched && kept.is_empty();
        (kept, served_step)
    }

    /// When a retained event matching `bits` can be dropped (see the module docs).
    fn expiry(&self, time: i64, bits: &Bits) -> i64 {
        time.saturating_add(self.horizon_ms).saturating_add(self.rules.keep_ms(bits))
    }

    /// Keeps the symbol table bounded (before an event takes new symbols, so every symbol in
    /// use is in some retained event).
    fn collect_symbols_if_full(&mut self) {
        if self.symbols.full() {
            let customers = &mut self.customers;
            self.symbols.collect(|visit| {
                for c in customers.iter_mut() {
                    for k in &mut c.events {
                        visit(k);
                    }
                }
            });
        }
    }

    fn too_late(&self, time: i64) -> bool {
        self.watermark != i64::MIN && time < self.watermark.saturating_sub(self.horizon_ms)
    }

    /// An event the detector does not keep. Landing before kept events, it may have re-cut
    /// their sessions; if it is an earlier step of a served rule (`served_step`), it may also
    /// change the hits of completing events after it, which are always kept. An in-order one
    /// changes nothing: every hit it can take part in ends at a later event.
    fn admit_unkept(
        &mut self,
        customer: &str,
        time: i64,
        id: &str,
        served_step: bool,
        sessions: &dyn SessionLookup,
        out: &mut Vec<DetectedHit>,
    ) {
        // Most events arrive after every kept one: then no customer has a kept event after
        // this one, and the index probe (a cache miss, most of the time) is saved.
        if time > self.kept_upto || self.too_late(time) {
            return;
        }
        if let Some(idx) = self.index.get(&self.customers, customer) {
            if self.customers[idx].events.last().is_some_and(|l| l.key() > (time, id.as_bytes())) {
                if served_step {
                    self.reconcile(idx, sessions, out);
                } else {
                    self.refresh_sessions(idx, sessions, out);
                }
            }
        }
    }

    /// Inserts an event that some rule matches and is not too late.
    fn admit_matched(&mut self, customer: &str, ev: Kept, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) -> bool {
        let idx = match self.index.get(&self.customers, customer) {
            Some(idx) => idx,
            None => self.new_slot(customer),
        };
        let c = &mut self.customers[idx];
        let pos = match c.events.last() {
            None => 0,
            Some(last) if last.before(&ev) => c.events.len(),
            Some(_) => c.events.partition_point(|k| k.before(&ev)),
        };
        // Event ids are unique, so a redelivery has the same time too: it sorts onto its copy.
        if c.events.get(pos).is_some_and(|k| k.id == ev.id) {
            return false;
        }
        // After a quiet close, an event may cancel an absence hit fired early (its trigger's
        // window not yet passed by the watermark): such events take the recomputing path.
        let after_quiet =
            self.idle_closed_upto != i64::MIN && ev.time <= self.idle_closed_upto.saturating_add(self.rules.max_absence_window_ms());
        // The same, from the customer's own state: a live hit detected at or after this event
        // (an absence hit fired before its window had passed in event time) may be one this
        // event cancels. A restore can bring such a hit back without the partition's quiet
        // point (a crash between the two checkpoint records), so this does not rely on it.
        // (Last, so it is only looked at for an event that would otherwise be in order.)
        let may_cancel = || c.emitted.0.iter().any(|e| !e.hit.hit.retracted && e.hit.hit.event_time >= ev.time);
        let in_order = pos == c.events.len() && ev.time >= self.watermark && !after_quiet && !may_cancel();
        if c.events.capacity() == 0 {
            // Most customers keep one or two events; the default first capacity is four.
            c.events.reserve_exact(2);
        }
        self.kept_upto = self.kept_upto.max(ev.time);
        c.events.insert(pos, ev);
        self.mark_dirty(idx);
        if in_order {
            self.on_append(idx, sessions, out);
            // A trigger at or before the quiet point has its window closed already.
            if self.customers[idx].pending.iter().any(|p| p.time <= self.idle_closed_upto) {
                self.on_timer(idx, sessions, out);
            }
        } else {
            self.reconcile(idx, sessions, out);
        }
        true
    }

    /// Fast path: the last retained event is new and in order, so only hits it completes can
    /// appear; nothing emitted can change.
    fn on_append(&mut self, idx: usize, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        let floor = self.version_floor;
        let horizon = self.horizon_ms;
        let grid = self.prune_grid_ms;
        let Detector { rules, customers, symbols, served, .. } = self;
        let c = &mut customers[idx];
        let k = c.events.len() - 1;
        let mut next = grid_up(c.events[k].expires, grid);
        let ev = &c.events[k];
        let rules_to_check = if rules.may_complete(&ev.bits) { rules.compiled.len() } else { 0 };
        // The sessionizer's events within the longest served window, read once if needed.
        let mut steps: Option<Option<Vec<served::Step>>> = None;
        for (ri, r) in rules.compiled.iter().enumerate().take(rules_to_check) {
            if !completes(r, ev) {
                continue;
            }
            if let Shape::Absence { .. } = r.shape {
                let deadline = ev.time.saturating_add(r.within_ms);
                let session = sessions.session_ref_of(c.key.as_str(), ev.time, ev.id.as_str());
                if c.pending.capacity() == 0 {
                    c.pending.reserve_exact(1);
                }
                c.pending.push(Pending { deadline, rule: ri, time: ev.time, id: ev.id.clone(), session });
                next = next.min(deadline);
            } else if served.rules[ri] {
                let steps = steps.get_or_insert_with(|| {
                    let (evs, _) = session_events(sessions, c.key.as_str());
                    served::window(rules, evs, ev.time.saturating_sub(served.max_window_ms), ev.time, ev.id.as_str())
                });
                let Some(steps) = steps else { continue };
                if let Some(matched) = hit_at(rules, ri, steps, steps.len() - 1) {
                    let session = sessions.session_of(c.key.as_str(), ev.time, ev.id.as_str());
                    let hit = build_hit(rules, c.key.as_str(), steps, &Found { rule: ri, matched }, session, |s| s.described());
                    next = next.min(grid_up(hit.hit.event_time.saturating_add(horizon), grid));
                    put(&mut c.emitted, floor, hit, ev.time, out);
                }
            } else if let Some(matched) = hit_at(rules, ri, &c.events, k) {
                let session = sessions.session_of(c.key.as_str(), ev.time, ev.id.as_str());
                let hit = build_hit(rules, c.key.as_str(), &c.events, &Found { rule: ri, matched }, session, describe(symbols));
                next = next.min(grid_up(hit.hit.event_time.saturating_add(horizon), grid));
                put(&mut c.emitted, floor, hit, ev.time, out);
            }
        }
        self.arm(idx, next);
    }

    /// Moves the slot's timer earlier if `deadline` is before it. Timer entries are never
    /// removed: one that no longer matches its slot's `timer` is skipped when it comes up.
    fn arm(&mut self, idx: usize, deadline: i64) {
        let c = &mut self.customers[idx];
        if deadline < c.timer {
            c.timer = deadline;
            self.timers.insert(deadline, idx);
        }
    }

    /// Drops the events and emitted records the watermark made irrelevant (unless restoring,
    /// which keeps the checkpoint as it was), then sets the slot's timer to its earliest
    /// deadline, or frees the slot if nothing is left.
    fn settle(&mut self, idx: usize) {
        self.settle_at(idx, self.watermark);
    }

    fn settle_at(&mut self, idx: usize, wm: i64) {
        let horizon = self.horizon_ms;
        let c = &mut self.customers[idx];
        let (events, emitted) = (c.events.len(), c.emitted.len());
        let mut prune_at = i64::MAX;
        c.events.retain(|k| {
            let keep = k.expires >= wm;
            if keep {
                prune_at = prune_at.min(k.expires);
            }
            keep
        });
        c.emitted.0.retain(|e| {
            let final_at = e.hit.hit.event_time.saturating_add(horizon);
            let keep = final_at >= wm;
            if keep {
                prune_at = prune_at.min(final_at);
            }
            keep
        });
        let changed = events != c.events.len() || emitted != c.emitted.len();
        let mut next = c.pending.iter().map(|p| p.deadline).min();
        if prune_at != i64::MAX {
            let p = grid_up(prune_at, self.prune_grid_ms);
            next = Some(next.map_or(p, |n| n.min(p)));
        }
        if changed {
            self.mark_dirty(idx);
        }
        match next {
            Some(d) => {
                let c = &mut self.customers[idx];
                if c.timer != d {
                    c.timer = d;
                    if d != NO_TIMER {
                        self.timers.insert(d, idx);
                    }
                }
            }
            None => self.release(idx),
        }
    }

    /// Recomputes the customer's non-final hits from its retained events (and, for served
    /// rules, the sessionizer's) and emits the difference with what was emitted; rebuilds its
    /// open absence triggers.
    fn reconcile(&mut self, idx: usize, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        let rules = Arc::clone(&self.rules);
        let wm = self.watermark;
        let idle = self.idle_closed_upto;
        let lo = wm.saturating_sub(self.horizon_ms);
        let floor = self.version_floor;
        let horizon = self.horizon_ms;
        self.mark_dirty(idx);
        let Detector { customers, symbols, served, .. } = self;
        let c = &mut customers[idx];
        let evs = &c.events;
        // The sessionizer's events, for the served rules. Its watermark may be ahead of ours
        // (it advances first); it may have pruned what hits detected before its own
        // `watermark - horizon` need, but those hits are final to any event it still admits.
        let (steps, lo_served) = if served.any() {
            let (evs, wm) = session_events(sessions, c.key.as_str());
            let steps: Vec<served::Step> = evs.iter().map(|e| served::Step::new(&rules, e)).collect();
            (steps, lo.max(wm.saturating_sub(horizon)))
        } else {
            (Vec::new(), lo)
        };
        // (detection time, rule, trigger position, trigger time, hit)
        let mut computed: Vec<(i64, usize, usize, i64, DetectedHit)> = Vec::new();
        let mut pending = ThinVec::new();
        let session_for = |c: &CustomerState, hit: &DetectedHit, time: i64, id: &str, hint: Option<String>| {
            sessions
                .session_of(c.key.as_str(), time, id)
                .or_else(|| c.emitted.get(&hit.hit.hit_id).and_then(|e| e.hit.hit.session_id.clone()))
                .or(hint)
        };
        for (ri, r) in rules.compiled.iter().enumerate() {
            if served.rules[ri] {
                for k in 0..steps.len() {
                    let st = &steps[k];
                    if !completes(r, st) || st.time() < lo_served {
                        continue;
                    }
                    let Some(matched) = hit_at(&rules, ri, &steps, k) else { continue };
                    let mut hit = build_hit(&rules, c.key.as_str(), &steps, &Found { rule: ri, matched }, None, |s| s.described());
                    let session = session_for(c, &hit, st.time(), st.id(), None);
                    // A fresh record, not shared yet: no copy.
                    Arc::make_mut(&mut hit.hit).session_id = session;
                    computed.push((st.time(), ri, k, st.time(), hit));
                }
                continue;
            }
            for k in 0..evs.len() {
                let ev = &evs[k];
                if !completes(r, ev) || detection_time(&rules, ri, ev.time) < lo {
                    continue;
                }
                let Some(matched) = hit_at(&rules, ri, evs, k) else { continue };
                let det = detection_time(&rules, ri, ev.time);
                let old_hint = c.pending.iter().find(|p| p.rule == ri && p.id == ev.id).and_then(|p| p.session.clone());
                if matches!(r.shape, Shape::Absence { .. }) && det >= wm && ev.time > idle {
                    let session = sessions.session_ref_of(c.key.as_str(), ev.time, ev.id.as_str()).or(old_hint);
                    pending.push(Pending { deadline: det, rule: ri, time: ev.time, id: ev.id.clone(), session });
                    continue;
                }
                let f = Found { rule: ri, matched };
                let mut hit = build_hit(&rules, c.key.as_str(), evs, &f, None, describe(symbols));
                let session = session_for(c, &hit, ev.time, ev.id.as_str(), old_hint.as_ref().map(SessionRef::text));
                Arc::make_mut(&mut hit.hit).session_id = session;
                computed.push((det, ri, k, ev.time, hit));
            }
        }
        // Emissions in detection order, like the batch result.
        computed.sort_by_key(|(det, ri, k, _, _)| (*det, *ri, *k));
        let mut live = HashSet::with_capacity(computed.len());
        for (_, _, _, time, hit) in computed {
            live.insert(hit.hit.hit_id.clone());
            put(&mut c.emitted, floor, hit, time, out);
        }
        let mut retracted = Vec::new();
        for e in c.emitted.0.iter_mut() {
            let h = &e.hit.hit;
            let Some(ri) = u32::try_from(h.rule_version).ok().and_then(|v| rules.position(&h.rule, v)) else { continue };
            let changeable_from = if served.rules[ri] { lo_served } else { lo };
            if !h.retracted && h.event_time >= changeable_from && !live.contains(&h.hit_id) {
                // Copied only if an output still holds the record as it was.
                let h = Arc::make_mut(&mut e.hit.hit);
                h.version = (h.version + 1).max(floor);
                h.retracted = true;
                retracted.push(e.hit.clone());
            }
        }
        retracted.sort_by(|a, b| emission_order(a).cmp(&emission_order(b)));
        out.extend(retracted);
        c.pending = pending;
        self.settle(idx);
    }

    /// Re-reads the session of every live hit and open trigger; re-emits hits whose session changed.
    fn refresh_sessions(&mut self, idx: usize, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        let lo = self.watermark.saturating_sub(self.horizon_ms);
        let floor = self.version_floor;
        let c = &mut self.customers[idx];
        let mut reemit = Vec::new();
        for e in c.emitted.0.iter_mut() {
            let h = &e.hit.hit;
            if h.retracted || h.event_time < lo {
                continue;
            }
            if let Some(s) = sessions.session_of(c.key.as_str(), e.trigger_time, &h.trigger_event_id) {
                if h.session_id.as_deref() != Some(s.as_str()) {
                    let h = Arc::make_mut(&mut e.hit.hit);
                    h.session_id = Some(s);
                    h.version = (h.version + 1).max(floor);
                    reemit.push(e.hit.clone());
                }
            }
        }
        let mut changed = !reemit.is_empty();
        reemit.sort_by(|a, b| emission_order(a).cmp(&emission_order(b)));
        out.extend(reemit);
        for p in &mut c.pending {
            if let Some(s) = sessions.session_ref_of(c.key.as_str(), p.time, p.id.as_str()) {
                changed |= p.session.as_ref() != Some(&s);
                p.session = Some(s);
            }
        }
        if changed {
            self.mark_dirty(idx);
        }
    }

    /// Sessions of this customer were re-cut (by a late event the detector may not keep):
    /// refreshes the session ids of its non-final hits and re-emits those that changed.
    pub fn note_recut(&mut self, customer: &str, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        if let Some(idx) = self.index.get(&self.customers, customer) {
            self.refresh_sessions(idx, sessions, out);
        }
    }

    /// Advances the watermark: emits absence hits whose window closed, prunes what expired.
    pub fn advance(&mut self, watermark: i64, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        while let Some((deadline, idx)) = self.timers.pop_before(watermark) {
            if self.customers[idx].timer == deadline {
                self.customers[idx].timer = NO_TIMER;
                self.on_timer(idx, sessions, out);
            }
        }
    }

    fn on_timer(&mut self, idx: usize, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        let wm = self.watermark;
        let idle = self.idle_closed_upto;
        let due = |p: &Pending| p.deadline < wm || p.time <= idle;
        if self.customers[idx].pending.iter().any(due) {
            let rules = Arc::clone(&self.rules);
            let floor = self.version_floor;
            self.mark_dirty(idx);
            let Detector { customers, symbols, .. } = self;
            let c = &mut customers[idx];
            let (mut due, rest): (ThinVec<Pending>, ThinVec<Pending>) = std::mem::take(&mut c.pending).into_iter().partition(due);
            c.pending = rest;
            due.sort_by(|a, b| (a.deadline, a.rule, a.time, a.id.as_bytes()).cmp(&(b.deadline, b.rule, b.time, b.id.as_bytes())));
            for p in due {
                let Ok(t) = c.events.binary_search_by(|k| k.key().cmp(&(p.time, p.id.as_bytes()))) else { continue };
                let r = &rules.compiled[p.rule];
                let Shape::Absence { followed_by, .. } = r.shape else { continue };
                if absence_open(r, followed_by, &c.events, t) {
                    let session =
                        sessions.session_of(c.key.as_str(), p.time, p.id.as_str()).or_else(|| p.session.as_ref().map(SessionRef::text));
                    let found = Found { rule: p.rule, matched: vec![t] };
                    let hit = build_hit(&rules, c.key.as_str(), &c.events, &found, session, describe(symbols));
                    put(&mut c.emitted, floor, hit, p.time, out);
                }
            }
        }
        self.settle(idx);
    }

    /// Identity merge: retracts every live hit of `customer` (emitted before) and drops its state.
    pub fn take_customer(&mut self, customer: &str, out: &mut Vec<DetectedHit>) {
        let Some(idx) = self.index.get(&self.customers, customer) else { return };
        let floor = self.version_floor;
        let mut retracted: Vec<DetectedHit> =
            self.customers[idx].emitted.0.iter().filter(|e| !e.hit.hit.retracted).map(|e| e.hit.clone()).collect();
        retracted.sort_by(|a, b| emission_order(a).cmp(&emission_order(b)));
        for mut r in retracted {
            let h = Arc::make_mut(&mut r.hit);
            h.version = (h.version + 1).max(floor);
            h.retracted = true;
            out.push(r);
        }
        self.release(idx);
    }

    /// Replaces the rules (hot reload). They apply to evaluation from now on: emitted hits
    /// stay as they are (hits of rules that are gone are neither changed nor retracted), and
    /// retained events are re-matched, so a new rule sees only the events the old rules kept.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        if rules.fingerprint() == self.rules.fingerprint() {
            // Same meaning: indices into the rules stay valid.
            self.rules = rules;
            return;
        }
        let old = std::mem::replace(&mut self.rules, rules);
        self.served = Served::new(&self.rules, self.session_gap_ms);
        let horizon = self.horizon_ms;
        let wm = self.watermark;
        let idle = self.idle_closed_upto;
        let slots: Vec<usize> = self.index.slots().collect();
        for idx in slots {
            let rules = Arc::clone(&self.rules);
            let c = &mut self.customers[idx];
            let mut kept = ThinVec::with_capacity(c.events.len());
            for mut k in std::mem::take(&mut c.events) {
                k.bits = self.served.kept(rules.match_bits(&k.fields(&self.symbols)));
                if !k.bits.is_empty() {
                    k.expires = k.time.saturating_add(horizon).saturating_add(rules.keep_ms(&k.bits));
                    kept.push(k);
                }
            }
            c.events = kept;
            let old_pending = std::mem::take(&mut c.pending);
            for (ri, r) in rules.compiled.iter().enumerate() {
                let Shape::Absence { followed_by, .. } = r.shape else { continue };
                let rule = &rules.rules()[ri];
                for (k, m) in c.events.iter().enumerate() {
                    let deadline = m.time.saturating_add(r.within_ms);
                    if deadline < wm || m.time <= idle || !completes(r, m) || !absence_open(r, followed_by, &c.events, k) {
                        continue;
                    }
                    let hint = old_pending.iter().find(|p| {
                        let o = &old.rules()[p.rule];
                        o.name == rule.name && o.version == rule.version && p.id == m.id
                    });
                    c.pending.push(Pending {
                        deadline,
                        rule: ri,
                        time: m.time,
                        id: m.id.clone(),
                        session: hint.and_then(|p| p.session.clone()),
                    });
                }
            }
            self.mark_dirty(idx);
            self.settle(idx);
        }
    }

    /// A customer's state, if it has any.
    pub fn snapshot(&self, customer: &str) -> Option<DetectSnapshot> {
        let c = &self.customers[self.index.get(&self.customers, customer)?];
        Some(DetectSnapshot {
            key: c.key.as_str().to_string(),
            events: c.events.iter().map(|k| k.to_detect_event(&self.symbols)).collect(),
            pending: c
                .pending
                .iter()
                .map(|p| {
                    let r = &self.rules.rules()[p.rule];
                    PendingAbsence {
                        rule: r.name.clone(),
                        rule_version: r.version,
                        trigger_time: p.time,
                        trigger_id: p.id.as_str().to_string(),
                        session_hint: p.session.as_ref().map(SessionRef::text),
                    }
                })
                .collect(),
            emitted: c.emitted.0.to_vec(),
        })
    }

    /// Restores a customer's state from a checkpoint (replacing any it had), re-matched
    /// against the current rules. Absence windows the watermark already closed are emitted
    /// by the next [`Detector::advance`].
    pub fn restore(&mut self, snap: DetectSnapshot) {
        if let Some(idx) = self.index.get(&self.customers, &snap.key) {
            self.release(idx);
        }
        let rules = Arc::clone(&self.rules);
        let horizon = self.horizon_ms;
        let idx = self.new_slot(&snap.key);
        let symbols = &mut self.symbols;
        let served = &self.served;
        let c = &mut self.customers[idx];
        let mut events: ThinVec<Kept> = snap
            .events
            .iter()
            .filter_map(|ev| {
                let bits = served.kept(rules.match_bits(ev));
                if bits.is_empty() {
                    return None;
                }
                let expires = ev.time.saturating_add(horizon).saturating_add(rules.keep_ms(&bits));
                Some(Kept::from_detect_event(ev, symbols, bits, expires))
            })
            .collect();
        events.sort_by(|a, b| a.key().cmp(&b.key()));
        if let Some(last) = events.last() {
            self.kept_upto = self.kept_upto.max(last.time);
        }
        c.events = events;
        c.pending = snap
            .pending
            .into_iter()
            .filter_map(|p| {
                let ri = rules.position(&p.rule, p.rule_version)?;
                let r = &rules.compiled[ri];
                matches!(r.shape, Shape::Absence { .. }).then(|| Pending {
                    deadline: p.trigger_time.saturating_add(r.within_ms),
                    rule: ri,
                    time: p.trigger_time,
                    id: InlineStr::new(&p.trigger_id),
                    session: p.session_hint.as_deref().map(SessionRef::from_text),
                })
            })
            .collect();
        c.emitted.0.clear();
        for e in snap.emitted {
            c.emitted.insert(e);
        }
        self.settle_at(idx, i64::MIN);
        // Restored state is what the checkpoint already holds: unlist the key.
        let mut listed = self.dirty_gone.remove(snap.key.as_bytes());
        if let Some(idx) = self.index.get(&self.customers, &snap.key) {
            let c = &mut self.customers[idx];
            listed |= c.dirty_epoch == self.dirty_epoch;
            c.dirty_epoch = 0;
        }
        if listed {
            self.dirty.retain(|k| k.as_bytes() != snap.key.as_bytes());
        }
    }

    /// Emits everything as if event time had ended (end of a replay, tests); pruning then
    /// empties the state.
    pub fn flush_all(&mut self, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        self.advance(i64::MAX / 4, sessions, out);
    }
}

/// Customer key -> slot (see `slots.rs`), hashed with the detector's word hash.
#[derive(Debug, Default)]
struct CustomerIndex(SlotIndex);

fn key_hash(key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = WordHash::default();
    h.write(key);
    h.finish()
}

impl CustomerIndex {
    fn get(&self, customers: &ChunkedVec<CustomerState>, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        self.0.get(key_hash(key), |i| customers[i].key.as_bytes() == key)
    }

    /// Adds slot `idx`, whose key is set and not yet indexed.
    fn insert(&mut self, customers: &ChunkedVec<CustomerState>, idx: usize) {
        self.0.insert(key_hash(customers[idx].key.as_bytes()), idx);
    }

    /// Removes slot `idx` (its key still set).
    fn remove(&mut self, customers: &ChunkedVec<CustomerState>, idx: usize) {
        self.0.remove(key_hash(customers[idx].key.as_bytes()), idx);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.slots()
    }
}

/// What a hit reports of a retained event.
fn describe<'a>(symbols: &'a Symbols) -> impl Fn(&'a Kept) -> Described<'a> + 'a {
    |k| Described { channel: k.channel, id: k.id.as_str(), topic: k.topic(symbols), region: k.region(symbols) }
}

/// The sessionizer's events of `customer` and its watermark; the lookup of a detector built
/// beside a sessionizer must be one.
fn session_events<'a>(sessions: &'a dyn SessionLookup, customer: &str) -> (&'a [SessionEvent], i64) {
    sessions.session_events(customer).expect("a detector built beside_sessions is given the sessionizer as its lookup")
}

/// `d` rounded up to a multiple of `grid` (saturating).
fn grid_up(d: i64, grid: i64) -> i64 {
    let r = d.rem_euclid(grid);
    if r == 0 {
        d
    } else {
        d.saturating_add(grid - r)
    }
}

/// Order of several emissions at once: detection time, then rule name, then trigger id.
fn emission_order(h: &DetectedHit) -> (i64, &str, &str) {
    (h.hit.event_time, &h.hit.rule, &h.hit.trigger_event_id)
}

/// The last emitted record of each hit id of a customer, sorted by hit id: a customer has a
/// handful at most, so a sorted vector beats a map (a B-tree leaf alone holds eleven records).
#[derive(Debug, Default)]
struct Emitted(ThinVec<EmittedHit>);

impl Emitted {
    fn find(&self, hit_id: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|e| e.hit.hit.hit_id.as_str().cmp(hit_id))
    }

    fn get(&self, hit_id: &str) -> Option<&EmittedHit> {
        self.find(hit_id).ok().map(|i| &self.0[i])
    }

    /// Inserts or replaces the record of its hit id.
    fn insert(&mut self, e: EmittedHit) {
        match self.find(&e.hit.hit.hit_id) {
            Ok(i) => self.0[i] = e,
            Err(i) => {
                if self.0.capacity() == 0 {
                    // Most customers with hits have one: room for one, not the default four.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, e)
            }
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Emits `hit` unless the same content was the last emission of its id; versions grow.
fn put(emitted: &mut Emitted, floor: i64, mut hit: DetectedHit, trigger_time: i64, out: &mut Vec<DetectedHit>) {
    match emitted.get(&hit.hit.hit_id) {
        Some(prev) if !prev.hit.hit.retracted && same_content(&prev.hit, &hit) => return,
        Some(prev) => Arc::make_mut(&mut hit.hit).version = (prev.hit.hit.version + 1).max(floor),
        None => Arc::make_mut(&mut hit.hit).version = floor,
    }
    out.push(hit.clone());
    emitted.insert(EmittedHit { hit, trigger_time });
}

fn same_content(a: &DetectedHit, b: &DetectedHit) -> bool {
    let (x, y) = (&a.hit, &b.hit);
    x.hit_id == y.hit_id
        && x.rule == y.rule
        && x.rule_version == y.rule_version
        && x.customer_id == y.customer_id
        && x.session_id == y.session_id
        && x.event_time == y.event_time
        && x.trigger_event_id == y.trigger_event_id
        && x.matched_event_ids == y.matched_event_ids
        && x.path == y.path
        && x.topic == y.topic
        && x.severity == y.severity
        && a.channel == b.channel
        && a.region == b.region
}
