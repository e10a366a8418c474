//! The incremental scenario detector: one per input partition, state per customer.
//!
//! State, per customer, and what bounds it: only events that match some predicate of some
//! rule are kept, each until `watermark - horizon - W` passes it (W = the largest window of
//! the rules whose predicates it matches): after that no hit that can still change (detection
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

use super::eval::{absence_open, build_hit, completes, detection_time, hit_at, Bits, DetectEvent, Found, Matched, View, WordHash};
use super::rules::{RuleSet, Shape};
use super::DetectedHit;
use crate::sessionize::Sessionizer;
use journey_schemas::ChannelEvent;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Where the detector learns the session of an event. The runtime admits each event to the
/// sessionizer before the detector, so the lookup sees the current cut.
pub trait SessionLookup {
    /// Id of the session that contains event `(time, event_id)` of `customer`, if known.
    fn session_of(&self, customer: &str, time: i64, event_id: &str) -> Option<String>;
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

/// A retained event.
#[derive(Debug, Clone)]
struct Kept {
    m: Matched,
    /// Dropped once the watermark is past this: time + horizon + longest window it matters to.
    expires: i64,
}

impl View for Kept {
    fn mv(&self) -> &Matched {
        &self.m
    }
}

#[derive(Debug, Clone)]
struct Pending {
    /// Trigger time + within; the hit is due once the watermark is past it.
    deadline: i64,
    rule: usize,
    time: i64,
    id: Arc<str>,
    session: Option<String>,
}

#[derive(Debug, Default)]
struct CustomerState {
    /// Shared with the index.
    key: Arc<str>,
    /// Kept events, sorted by (time, id).
    events: Vec<Kept>,
    /// Absence triggers whose window is still open.
    pending: Vec<Pending>,
    /// Last emitted record per hit id.
    emitted: BTreeMap<String, EmittedHit>,
    /// Deadline in the timer set, if any.
    timer: Option<i64>,
    /// Listed in `Detector::dirty_slots`.
    dirty: bool,
}

/// The per-partition scenario detector (see the module docs for semantics and bounds).
#[derive(Debug)]
pub struct Detector {
    rules: Arc<RuleSet>,
    horizon_ms: i64,
    /// Pruning deadlines are rounded up to a multiple of this, so that a customer's expiries
    /// coalesce into few timer firings (state is kept at most this much longer).
    prune_grid_ms: i64,
    index: HashMap<Arc<str>, usize, BuildHasherDefault<WordHash>>,
    customers: Vec<CustomerState>,
    free: Vec<usize>,
    /// (deadline, slot): the slot needs attention once the watermark is past the deadline.
    timers: BTreeSet<(i64, usize)>,
    watermark: i64,
    /// Absence triggers at or before this time have their window closed although the
    /// watermark has not passed it: the partition went quiet ([`Detector::close_idle`]).
    idle_closed_upto: i64,
    version_floor: i64,
    dirty_slots: Vec<usize>,
    dirty_removed: Vec<String>,
}

impl Detector {
    /// An empty detector; events older than `watermark - horizon_ms` must not be admitted.
    pub fn new(rules: Arc<RuleSet>, horizon_ms: i64) -> Detector {
        Detector {
            rules,
            horizon_ms: horizon_ms.max(0),
            prune_grid_ms: (horizon_ms / 8).clamp(1, 3_600_000),
            index: HashMap::default(),
            customers: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            watermark: i64::MIN,
            idle_closed_upto: i64::MIN,
            version_floor: 1,
            dirty_slots: Vec::new(),
            dirty_removed: Vec::new(),
        }
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

    /// Keys whose state changed since the last call (checkpointing), and forgets them.
    pub fn take_dirty(&mut self) -> Vec<String> {
        let mut keys = std::mem::take(&mut self.dirty_removed);
        for idx in std::mem::take(&mut self.dirty_slots) {
            let c = &mut self.customers[idx];
            if c.dirty {
                c.dirty = false;
                keys.push(c.key.to_string());
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn mark_dirty(&mut self, idx: usize) {
        let c = &mut self.customers[idx];
        if !c.dirty {
            c.dirty = true;
            self.dirty_slots.push(idx);
        }
    }

    fn slot_for(&mut self, customer: &str) -> usize {
        if let Some(&i) = self.index.get(customer) {
            return i;
        }
        let key: Arc<str> = Arc::from(customer);
        let i = match self.free.pop() {
            Some(i) => {
                // A released slot keeps its (empty) buffers, saving their allocation.
                self.customers[i].key = key.clone();
                i
            }
            None => {
                self.customers.push(CustomerState { key: key.clone(), ..Default::default() });
                self.customers.len() - 1
            }
        };
        self.index.insert(key, i);
        i
    }

    /// Drops a slot's state; its key is reported dirty (so the checkpoint forgets it).
    fn release(&mut self, idx: usize) {
        // Its timer entry, if any, is left to expire: a stale entry only costs a spurious wake-up.
        let c = &mut self.customers[idx];
        let key = std::mem::take(&mut c.key);
        c.events.clear();
        c.pending.clear();
        if c.events.capacity() > 16 {
            c.events = Vec::new();
        }
        c.emitted.clear();
        c.timer = None;
        c.dirty = false;
        self.index.remove(&key);
        self.dirty_removed.push(key.to_string());
        self.free.push(idx);
    }

    /// Folds one event of `customer`; returns false when it is already retained (a duplicate:
    /// same id, and so, ids being unique, same time). Every event must be passed, even those
    /// no rule matches: they are not kept, but one arriving before retained events may have
    /// re-cut sessions, so the session ids of live hits are refreshed. Duplicates of events no rule matches are not
    /// recognised (they cannot change any hit). Events older than `watermark - horizon` are
    /// ignored (the runtime sends them to the late topic before they get here).
    pub fn admit(&mut self, customer: &str, ev: DetectEvent, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) -> bool {
        let bits = self.rules.match_bits(&ev);
        if bits.is_empty() {
            self.admit_irrelevant(customer, ev.time, &ev.id, sessions, out);
            return true;
        }
        self.admit_matched(customer, ev, bits, sessions, out)
    }

    /// [`Detector::admit`] straight from the raw event: the fast path for the runtime, since
    /// events no rule can use are recognised without extracting anything from them.
    pub fn admit_event(&mut self, customer: &str, e: &ChannelEvent, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) -> bool {
        let bits = self.rules.match_bits(e);
        if bits.is_empty() {
            self.admit_irrelevant(customer, e.event_time, &e.event_id, sessions, out);
            return true;
        }
        let ev = DetectEvent::from_event(e, &self.rules);
        self.admit_matched(customer, ev, bits, sessions, out)
    }

    fn too_late(&self, time: i64) -> bool {
        self.watermark != i64::MIN && time < self.watermark.saturating_sub(self.horizon_ms)
    }

    /// An event no rule matches is not kept; landing before kept events, it may have re-cut
    /// their sessions.
    fn admit_irrelevant(&mut self, customer: &str, time: i64, id: &str, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        if self.too_late(time) {
            return;
        }
        if let Some(&idx) = self.index.get(customer) {
            if self.customers[idx].events.last().is_some_and(|l| l.m.ev.key() > (time, id.as_bytes())) {
                self.refresh_sessions(idx, sessions, out);
            }
        }
    }

    fn admit_matched(
        &mut self,
        customer: &str,
        ev: DetectEvent,
        bits: Bits,
        sessions: &dyn SessionLookup,
        out: &mut Vec<DetectedHit>,
    ) -> bool {
        if self.too_late(ev.time) {
            return true;
        }
        let idx = match self.index.get(customer) {
            Some(&idx) => idx,
            None => self.slot_for(customer),
        };
        let c = &mut self.customers[idx];
        let pos = match c.events.last() {
            None => 0,
            Some(last) if last.m.ev.key() < ev.key() => c.events.len(),
            Some(_) => c.events.partition_point(|k| k.m.ev.key() < ev.key()),
        };
        // Event ids are unique, so a redelivery has the same time too: it sorts onto its copy.
        if c.events.get(pos).is_some_and(|k| k.m.ev.id == ev.id) {
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
        let may_cancel = c.emitted.values().any(|e| !e.hit.hit.retracted && e.hit.hit.event_time >= ev.time);
        let in_order = pos == c.events.len() && ev.time >= self.watermark && !after_quiet && !may_cancel;
        let expires = ev.time.saturating_add(self.horizon_ms).saturating_add(self.rules.keep_ms(&bits));
        c.events.insert(pos, Kept { m: Matched { ev, bits }, expires });
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
        let Detector { rules, customers, .. } = self;
        let c = &mut customers[idx];
        let k = c.events.len() - 1;
        let mut next = grid_up(c.events[k].expires, grid);
        let ev = &c.events[k].m.ev;
        let rules_to_check = if rules.may_complete(&c.events[k].m.bits) { rules.compiled.len() } else { 0 };
        for (ri, r) in rules.compiled.iter().enumerate().take(rules_to_check) {
            if !completes(r, &c.events[k].m) {
                continue;
            }
            if let Shape::Absence { .. } = r.shape {
                let deadline = ev.time.saturating_add(r.within_ms);
                let session = sessions.session_of(&c.key, ev.time, &ev.id);
                c.pending.push(Pending { deadline, rule: ri, time: ev.time, id: ev.id.clone(), session });
                next = next.min(deadline);
            } else if let Some(matched) = hit_at(rules, ri, &c.events, k) {
                let session = sessions.session_of(&c.key, ev.time, &ev.id);
                let hit = build_hit(rules, &c.key, &c.events, &Found { rule: ri, matched }, session);
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
        if c.timer.is_none_or(|t| deadline < t) {
            c.timer = Some(deadline);
            self.timers.insert((deadline, idx));
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
        c.emitted.retain(|_, e| {
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
                if c.timer != Some(d) {
                    c.timer = Some(d);
                    self.timers.insert((d, idx));
                }
            }
            None => self.release(idx),
        }
    }

    /// Recomputes the customer's non-final hits from its retained events and emits the
    /// difference with what was emitted; rebuilds its open absence triggers.
    fn reconcile(&mut self, idx: usize, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        let rules = Arc::clone(&self.rules);
        let wm = self.watermark;
        let idle = self.idle_closed_upto;
        let lo = wm.saturating_sub(self.horizon_ms);
        let floor = self.version_floor;
        self.mark_dirty(idx);
        let c = &mut self.customers[idx];
        let evs = &c.events;
        let mut computed: Vec<(i64, usize, usize, DetectedHit)> = Vec::new();
        let mut pending = Vec::new();
        for (ri, r) in rules.compiled.iter().enumerate() {
            for k in 0..evs.len() {
                let ev = &evs[k].m.ev;
                if !completes(r, &evs[k].m) || detection_time(&rules, ri, ev) < lo {
                    continue;
                }
                let Some(matched) = hit_at(&rules, ri, evs, k) else { continue };
                let det = detection_time(&rules, ri, ev);
                let old_hint = c.pending.iter().find(|p| p.rule == ri && p.id == ev.id).and_then(|p| p.session.clone());
                if matches!(r.shape, Shape::Absence { .. }) && det >= wm && ev.time > idle {
                    let session = sessions.session_of(&c.key, ev.time, &ev.id).or(old_hint);
                    pending.push(Pending { deadline: det, rule: ri, time: ev.time, id: ev.id.clone(), session });
                    continue;
                }
                let f = Found { rule: ri, matched };
                let mut hit = build_hit(&rules, &c.key, evs, &f, None);
                hit.hit.session_id = sessions
                    .session_of(&c.key, ev.time, &ev.id)
                    .or_else(|| c.emitted.get(&hit.hit.hit_id).and_then(|e| e.hit.hit.session_id.clone()))
                    .or(old_hint);
                computed.push((det, ri, k, hit));
            }
        }
        // Emissions in detection order, like the batch result.
        computed.sort_by_key(|(det, ri, k, _)| (*det, *ri, *k));
        let mut live = HashSet::with_capacity(computed.len());
        for (_, _, k, hit) in computed {
            live.insert(hit.hit.hit_id.clone());
            put(&mut c.emitted, floor, hit, evs[k].m.ev.time, out);
        }
        let mut retracted = Vec::new();
        for (id, e) in c.emitted.iter_mut() {
            let h = &mut e.hit.hit;
            let current = u32::try_from(h.rule_version).is_ok_and(|v| rules.position(&h.rule, v).is_some());
            if !h.retracted && h.event_time >= lo && current && !live.contains(id) {
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
        for e in c.emitted.values_mut() {
            let h = &mut e.hit.hit;
            if h.retracted || h.event_time < lo {
                continue;
            }
            if let Some(s) = sessions.session_of(&c.key, e.trigger_time, &h.trigger_event_id) {
                if h.session_id.as_deref() != Some(s.as_str()) {
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
            if let Some(s) = sessions.session_of(&c.key, p.time, &p.id) {
                changed |= p.session.as_deref() != Some(s.as_str());
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
        if let Some(&idx) = self.index.get(customer) {
            self.refresh_sessions(idx, sessions, out);
        }
    }

    /// Advances the watermark: emits absence hits whose window closed, prunes what expired.
    pub fn advance(&mut self, watermark: i64, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        while let Some(&(deadline, idx)) = self.timers.first() {
            if deadline >= watermark {
                break;
            }
            self.timers.pop_first();
            if self.customers[idx].timer == Some(deadline) {
                self.customers[idx].timer = None;
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
            let c = &mut self.customers[idx];
            let (mut due, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut c.pending).into_iter().partition(due);
            c.pending = rest;
            due.sort_by(|a, b| (a.deadline, a.rule, a.time, &a.id).cmp(&(b.deadline, b.rule, b.time, &b.id)));
            for p in due {
                let Ok(t) = c.events.binary_search_by(|k| k.m.ev.key().cmp(&(p.time, p.id.as_bytes()))) else { continue };
                let r = &rules.compiled[p.rule];
                let Shape::Absence { followed_by, .. } = r.shape else { continue };
                if absence_open(r, followed_by, &c.events, t) {
                    let session = sessions.session_of(&c.key, p.time, &p.id).or(p.session);
                    let hit = build_hit(&rules, &c.key, &c.events, &Found { rule: p.rule, matched: vec![t] }, session);
                    put(&mut c.emitted, floor, hit, p.time, out);
                }
            }
        }
        self.settle(idx);
    }

    /// Identity merge: retracts every live hit of `customer` (emitted before) and drops its state.
    pub fn take_customer(&mut self, customer: &str, out: &mut Vec<DetectedHit>) {
        let Some(&idx) = self.index.get(customer) else { return };
        let floor = self.version_floor;
        let mut retracted: Vec<DetectedHit> =
            self.customers[idx].emitted.values().filter(|e| !e.hit.hit.retracted).map(|e| e.hit.clone()).collect();
        retracted.sort_by(|a, b| emission_order(a).cmp(&emission_order(b)));
        for mut r in retracted {
            r.hit.version = (r.hit.version + 1).max(floor);
            r.hit.retracted = true;
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
        let horizon = self.horizon_ms;
        let wm = self.watermark;
        let idle = self.idle_closed_upto;
        let slots: Vec<usize> = self.index.values().copied().collect();
        for idx in slots {
            let rules = Arc::clone(&self.rules);
            let c = &mut self.customers[idx];
            let mut kept = Vec::with_capacity(c.events.len());
            for mut k in std::mem::take(&mut c.events) {
                k.m.bits = rules.match_bits(&k.m.ev);
                if !k.m.bits.is_empty() {
                    k.expires = k.m.ev.time.saturating_add(horizon).saturating_add(rules.keep_ms(&k.m.bits));
                    kept.push(k);
                }
            }
            c.events = kept;
            let old_pending = std::mem::take(&mut c.pending);
            for (ri, r) in rules.compiled.iter().enumerate() {
                let Shape::Absence { followed_by, .. } = r.shape else { continue };
                let rule = &rules.rules()[ri];
                for (k, m) in c.events.iter().map(View::mv).enumerate() {
                    let deadline = m.ev.time.saturating_add(r.within_ms);
                    if deadline < wm || m.ev.time <= idle || !completes(r, m) || !absence_open(r, followed_by, &c.events, k) {
                        continue;
                    }
                    let hint = old_pending.iter().find(|p| {
                        let o = &old.rules()[p.rule];
                        o.name == rule.name && o.version == rule.version && p.id == m.ev.id
                    });
                    c.pending.push(Pending {
                        deadline,
                        rule: ri,
                        time: m.ev.time,
                        id: m.ev.id.clone(),
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
        let c = &self.customers[*self.index.get(customer)?];
        Some(DetectSnapshot {
            key: c.key.to_string(),
            events: c.events.iter().map(|k| k.m.ev.clone()).collect(),
            pending: c
                .pending
                .iter()
                .map(|p| {
                    let r = &self.rules.rules()[p.rule];
                    PendingAbsence {
                        rule: r.name.clone(),
                        rule_version: r.version,
                        trigger_time: p.time,
                        trigger_id: p.id.to_string(),
                        session_hint: p.session.clone(),
                    }
                })
                .collect(),
            emitted: c.emitted.values().cloned().collect(),
        })
    }

    /// Restores a customer's state from a checkpoint (replacing any it had), re-matched
    /// against the current rules. Absence windows the watermark already closed are emitted
    /// by the next [`Detector::advance`].
    pub fn restore(&mut self, snap: DetectSnapshot) {
        if let Some(&idx) = self.index.get(snap.key.as_str()) {
            self.release(idx);
        }
        let rules = Arc::clone(&self.rules);
        let horizon = self.horizon_ms;
        let idx = self.slot_for(&snap.key);
        let c = &mut self.customers[idx];
        let mut events: Vec<Kept> = snap
            .events
            .into_iter()
            .filter_map(|ev| {
                let bits = rules.match_bits(&ev);
                if bits.is_empty() {
                    return None;
                }
                let expires = ev.time.saturating_add(horizon).saturating_add(rules.keep_ms(&bits));
                Some(Kept { m: Matched { ev, bits }, expires })
            })
            .collect();
        events.sort_by(|a, b| a.m.ev.key().cmp(&b.m.ev.key()));
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
                    id: Arc::from(p.trigger_id.as_str()),
                    session: p.session_hint,
                })
            })
            .collect();
        c.emitted = snap.emitted.into_iter().map(|e| (e.hit.hit.hit_id.clone(), e)).collect();
        self.settle_at(idx, i64::MIN);
        // Restored state is what the checkpoint already holds.
        if let Some(&idx) = self.index.get(snap.key.as_str()) {
            self.customers[idx].dirty = false;
        }
        self.dirty_removed.retain(|k| *k != snap.key);
    }

    /// Emits everything as if event time had ended (end of a replay, tests); pruning then
    /// empties the state.
    pub fn flush_all(&mut self, sessions: &dyn SessionLookup, out: &mut Vec<DetectedHit>) {
        self.advance(i64::MAX / 4, sessions, out);
    }
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

/// Emits `hit` unless the same content was the last emission of its id; versions grow.
fn put(emitted: &mut BTreeMap<String, EmittedHit>, floor: i64, mut hit: DetectedHit, trigger_time: i64, out: &mut Vec<DetectedHit>) {
    match emitted.get(&hit.hit.hit_id) {
        Some(prev) if !prev.hit.hit.retracted && same_content(&prev.hit, &hit) => return,
        Some(prev) => hit.hit.version = (prev.hit.hit.version + 1).max(floor),
        None => hit.hit.version = floor,
    }
    out.push(hit.clone());
    emitted.insert(hit.hit.hit_id.clone(), EmittedHit { hit, trigger_time });
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
