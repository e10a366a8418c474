//! How the detector holds a retained event: the same content as a [`DetectEvent`], compact.
//!
//! Field values are symbols of a table the detector owns (a `u32` compares and copies as an
//! integer, without the reference counting of shared strings), the event id is inline when it
//! fits. The table is bounded: when it has doubled since the last collection, the values no
//! retained event uses any more are dropped and the others renumbered
//! ([`Symbols::collect`]), so it never holds more than about twice the distinct values of the
//! retained events.

use super::eval::{intern, Bits, DetectEvent, EventFields, SameValue, View};
use super::rules::{RuleSet, SameField};
pub(crate) use crate::inline::InlineStr;
use journey_schemas::{Channel, ChannelEvent};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use thin_vec::ThinVec;

use super::eval::WordHash;

/// No value (a null field).
pub(crate) const NONE: u32 = u32::MAX;

/// Interned field values, numbered from 0.
#[derive(Debug)]
pub(crate) struct Symbols {
    /// Keyed by the value inline (a topic, type or region fits), so a lookup compares it in
    /// the table's own bucket instead of following a pointer to a string elsewhere in the heap:
    /// four lookups per kept event, each of them otherwise a cache miss more.
    index: HashMap<InlineStr, u32, BuildHasherDefault<WordHash>>,
    names: Vec<Arc<str>>,
    /// Collect when the table reaches this many entries.
    collect_at: usize,
}

/// Smallest table size at which unused symbols are collected.
const COLLECT_MIN: usize = 1 << 12;

impl Default for Symbols {
    fn default() -> Symbols {
        Symbols { index: HashMap::default(), names: Vec::new(), collect_at: COLLECT_MIN }
    }
}

impl Symbols {
    pub(crate) fn of(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s.as_bytes()) {
            return i;
        }
        // At most one symbol per retained field value (times two before a collection), far
        // below u32::MAX; saturating keeps NONE reserved in any case.
        let i = u32::try_from(self.names.len()).unwrap_or(NONE - 1).min(NONE - 1);
        self.names.push(Arc::from(s));
        self.index.insert(InlineStr::new(s), i);
        i
    }

    fn opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.of(s))
    }

    pub(crate) fn name(&self, sym: u32) -> Option<&Arc<str>> {
        self.names.get(sym as usize)
    }

    fn text(&self, sym: u32) -> Option<&str> {
        self.name(sym).map(|a| &**a)
    }

    /// Whether the table is due for [`Symbols::collect`].
    pub(crate) fn full(&self) -> bool {
        self.names.len() >= self.collect_at
    }

    /// Drops the symbols that no event in `events` uses and renumbers the rest in them.
    pub(crate) fn collect(&mut self, events: impl FnOnce(&mut dyn FnMut(&mut Kept))) {
        let mut renumber = vec![NONE; self.names.len()];
        let mut names = Vec::new();
        let old = std::mem::take(&mut self.names);
        events(&mut |k: &mut Kept| {
            for sym in k.symbols_mut() {
                if *sym == NONE {
                    continue;
                }
                let slot = &mut renumber[*sym as usize];
                if *slot == NONE {
                    *slot = names.len() as u32;
                    names.push(old[*sym as usize].clone());
                }
                *sym = *slot;
            }
        });
        self.index = names.iter().enumerate().map(|(i, a)| (InlineStr::new(a), i as u32)).collect();
        self.names = names;
        self.collect_at = (2 * self.names.len()).max(COLLECT_MIN);
    }
}

/// A retained event: a [`DetectEvent`]'s content with interned fields as symbols, the
/// predicates it matches and when it expires.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub time: i64,
    /// Dropped once the watermark is past this: time + horizon + longest window it matters to.
    pub expires: i64,
    pub bits: Bits,
    pub id: InlineStr,
    pub channel: Channel,
    /// Symbols: event type, outcome, topic, line, region, agent id (`NONE` for null).
    fields: [u32; 6],
    /// The attributes some rule read when the event came in, sorted by key (a thin vector:
    /// most events have none, and an empty one is one null-like pointer).
    attrs: ThinVec<(Arc<str>, Arc<str>)>,
}

// Every retained event is one of these: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Kept>() == 96);

const EVENT_TYPE: usize = 0;
const OUTCOME: usize = 1;
const TOPIC: usize = 2;
const LINE: usize = 3;
const REGION: usize = 4;
const AGENT_ID: usize = 5;

impl Kept {
    /// What [`DetectEvent::from_event`] would keep of `e`, without building it.
    pub(crate) fn from_event(e: &ChannelEvent, rules: &RuleSet, syms: &mut Symbols, bits: Bits, expires: i64) -> Kept {
        let attrs: ThinVec<(Arc<str>, Arc<str>)> = if rules.attr_keys.is_empty() || e.attrs.is_empty() {
            ThinVec::new()
        } else {
            rules.attr_keys.iter().filter_map(|k| e.attrs.get(&**k).map(|v| (k.clone(), intern(v)))).collect()
        };
        fn read(on: bool, v: &Option<String>) -> Option<&str> {
            if on {
                v.as_deref()
            } else {
                None
            }
        }
        Kept {
            time: e.event_time,
            expires,
            bits,
            id: InlineStr::new(&e.event_id),
            channel: e.channel,
            fields: [
                syms.of(&e.event_type),
                syms.opt(read(rules.reads.outcome, &e.outcome)),
                syms.opt(e.topic.as_deref()),
                syms.opt(read(rules.reads.line, &e.line)),
                syms.opt(e.region.as_deref()),
                syms.opt(read(rules.reads.agent_id, &e.agent_id)),
            ],
            attrs,
        }
    }

    /// Holds `ev` as it is.
    pub(crate) fn from_detect_event(ev: &DetectEvent, syms: &mut Symbols, bits: Bits, expires: i64) -> Kept {
        Kept {
            time: ev.time,
            expires,
            bits,
            id: InlineStr::new(&ev.id),
            channel: ev.channel,
            fields: [
                syms.of(&ev.event_type),
                syms.opt(ev.outcome.as_deref()),
                syms.opt(ev.topic.as_deref()),
                syms.opt(ev.line.as_deref()),
                syms.opt(ev.region.as_deref()),
                syms.opt(ev.agent_id.as_deref()),
            ],
            attrs: ev.attrs.iter().cloned().collect(),
        }
    }

    /// The event as a [`DetectEvent`] (checkpoints).
    pub(crate) fn to_detect_event(&self, syms: &Symbols) -> DetectEvent {
        let name = |i: usize| syms.name(self.fields[i]).cloned();
        DetectEvent {
            time: self.time,
            id: Arc::from(self.id.as_str()),
            channel: self.channel,
            event_type: name(EVENT_TYPE).unwrap_or_else(|| Arc::from("")),
            outcome: name(OUTCOME),
            topic: name(TOPIC),
            line: name(LINE),
            region: name(REGION),
            agent_id: name(AGENT_ID),
            attrs: self.attrs.iter().cloned().collect(),
        }
    }

    /// Sort key: (time, id bytes).
    pub(crate) fn key(&self) -> (i64, &[u8]) {
        (self.time, self.id.as_bytes())
    }

    /// `self.key() < other.key()`, reading the ids only when the times tie.
    pub(crate) fn before(&self, other: &Kept) -> bool {
        self.time < other.time || (self.time == other.time && self.id.as_bytes() < other.id.as_bytes())
    }

    pub(crate) fn topic<'a>(&self, syms: &'a Symbols) -> Option<&'a str> {
        syms.text(self.fields[TOPIC])
    }

    pub(crate) fn region<'a>(&self, syms: &'a Symbols) -> Option<&'a str> {
        syms.text(self.fields[REGION])
    }

    fn symbols_mut(&mut self) -> impl Iterator<Item = &mut u32> {
        self.fields.iter_mut()
    }

    /// The event's fields for predicate matching (re-matching under new rules).
    pub(crate) fn fields<'a>(&'a self, syms: &'a Symbols) -> Fields<'a> {
        Fields { k: self, syms }
    }
}

impl View for Kept {
    fn time(&self) -> i64 {
        self.time
    }
    fn bits(&self) -> &Bits {
        &self.bits
    }
    fn same_value(&self, f: &SameField) -> Option<SameValue<'_>> {
        let sym = |i: usize| (self.fields[i] != NONE).then_some(SameValue::Symbol(self.fields[i]));
        match f {
            SameField::Topic => sym(TOPIC),
            SameField::Channel => Some(SameValue::Symbol(self.channel.index() as u32)),
            SameField::EventType => sym(EVENT_TYPE),
            SameField::Outcome => sym(OUTCOME),
            SameField::Line => sym(LINE),
            SameField::Region => sym(REGION),
            SameField::AgentId => sym(AGENT_ID),
            SameField::Attr(key) => self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| SameValue::Text(v)),
        }
    }
}

/// A retained event with its symbol table, readable as event fields.
pub(crate) struct Fields<'a> {
    k: &'a Kept,
    syms: &'a Symbols,
}

impl EventFields for Fields<'_> {
    fn channel(&self) -> Channel {
        self.k.channel
    }
    fn event_type(&self) -> &str {
        self.syms.text(self.k.fields[EVENT_TYPE]).unwrap_or_default()
    }
    fn outcome(&self) -> Option<&str> {
        self.syms.text(self.k.fields[OUTCOME])
    }
    fn topic(&self) -> Option<&str> {
        self.syms.text(self.k.fields[TOPIC])
    }
    fn line(&self) -> Option<&str> {
        self.syms.text(self.k.fields[LINE])
    }
    fn region(&self) -> Option<&str> {
        self.syms.text(self.k.fields[REGION])
    }
    fn attr(&self, key: &str) -> Option<&str> {
        self.k.attrs.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }
}
