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

/// Inline strings up to this many bytes (a generated event id has 18 to 23, a customer key
/// 10 to 20, a phone pseudonym key more).
const INLINE: usize = 23;

/// A short string (event id, customer key), inline when it fits (padded with 0xff, which
/// UTF-8 never contains), else boxed: no allocation, and no pointer to follow when compared.
/// Equality and hashing are those of its bytes, so a map keyed by it is searched by `&[u8]`.
#[derive(Debug, Clone)]
pub(crate) enum InlineStr {
    Inline([u8; INLINE]),
    Boxed(Box<str>),
}

impl Default for InlineStr {
    fn default() -> InlineStr {
        InlineStr::Inline([0xff; INLINE])
    }
}

impl PartialEq for InlineStr {
    fn eq(&self, other: &InlineStr) -> bool {
        match (self, other) {
            // The padding is the same for the same text, so the arrays compare as the texts.
            (InlineStr::Inline(a), InlineStr::Inline(b)) => a == b,
            (InlineStr::Boxed(a), InlineStr::Boxed(b)) => a == b,
            // Only a text too long to be inline is boxed.
            _ => false,
        }
    }
}

impl Eq for InlineStr {}

impl std::hash::Hash for InlineStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for InlineStr {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl InlineStr {
    pub(crate) fn new(id: &str) -> InlineStr {
        let b = id.as_bytes();
        if b.len() <= INLINE {
            let mut a = [0xffu8; INLINE];
            a[..b.len()].copy_from_slice(b);
            InlineStr::Inline(a)
        } else {
            InlineStr::Boxed(id.into())
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineStr::Inline(a) => &a[..inline_len(a)],
            InlineStr::Boxed(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // The bytes were copied from a `str` up to the padding: always valid UTF-8.
            InlineStr::Inline(_) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            InlineStr::Boxed(s) => s,
        }
    }
}

/// The length of the text in a padded inline array: the position of its first 0xff byte,
/// found a word at a time (this runs for every key compared or hashed, so a byte loop showed in
/// the profiles).
fn inline_len(a: &[u8; INLINE]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Three words, the last overlapping the second (bytes 15 to 22).
    for at in [0, 8, INLINE - 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&a[at..at + 8]);
        // 0xff bytes are the zero bytes of the complement; the lowest set bit of this marks
        // the first of them (a borrow can only mark bytes above a zero byte).
        let x = !u64::from_le_bytes(w);
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return at + zero.trailing_zeros() as usize / 8;
        }
    }
    INLINE
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

#[cfg(test)]
mod tests {
    use super::{InlineStr, INLINE};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inline_strings_read_back_and_compare_as_their_text(a in "[a\\x00\u{e9}\u{1F600}:0-9]{0,30}", b in "[a\\x00\u{e9}:]{0,3}") {
            // Lengths around the inline limit (23 bytes), multi-byte characters, NUL bytes.
            let (x, y) = (InlineStr::new(&a), InlineStr::new(&b));
            prop_assert_eq!(x.as_bytes(), a.as_bytes());
            prop_assert_eq!(x.as_str(), a.as_str());
            prop_assert_eq!(x == y, a == b);
            prop_assert!(x == InlineStr::new(&a));
        }
    }

    #[test]
    fn every_inline_length_reads_back() {
        for n in 0..=INLINE + 2 {
            let s = "x".repeat(n);
            assert_eq!(InlineStr::new(&s).as_bytes(), s.as_bytes(), "length {n}");
            assert_eq!(matches!(InlineStr::new(&s), InlineStr::Inline(_)), n <= INLINE);
        }
    }
}
