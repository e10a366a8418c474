//! Compact binary form of a [`DetectSnapshot`] for the state changelog.
//!
//! Layout: a format byte (1), then the fields in declaration order. Integers are LEB128
//! varints (signed ones zigzag-encoded), strings a length varint and UTF-8 bytes, optional
//! values a 0/1 byte first, lists a count varint first. A hit's customer id is written only
//! when it differs from the snapshot key (it never does in practice).

use super::detector::{DetectSnapshot, EmittedHit, PendingAbsence};
use super::eval::{intern, DetectEvent};
use super::DetectedHit;
use journey_schemas::{Channel, ScenarioHit};
use std::sync::Arc;

const FORMAT: u8 = 1;

struct W(Vec<u8>);

impl W {
    fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> R<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += 1;
        Ok(v)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint too long at byte {}", self.at))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    /// A count of items that each take at least one byte, so a corrupt count cannot make us
    /// allocate more than the input could hold.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        let left = (self.b.len() - self.at) as u64;
        if n > left {
            return Err(format!("count {n} exceeds the {left} bytes left at byte {}", self.at));
        }
        Ok(n as usize)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.count()?;
        let bytes = &self.b[self.at..self.at + n];
        self.at += n;
        std::str::from_utf8(bytes).map_err(|e| format!("invalid utf-8 at byte {}: {e}", self.at - n))
    }
    fn opt(&mut self) -> Result<Option<&'a str>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            x => Err(format!("bad option tag {x} at byte {}", self.at - 1)),
        }
    }
    fn channel(&mut self) -> Result<Channel, String> {
        let i = self.byte()?;
        Channel::ALL.get(usize::from(i)).copied().ok_or_else(|| format!("channel index {i} out of range"))
    }
    fn flag(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(format!("bad boolean {x} at byte {}", self.at - 1)),
        }
    }
}

/// Encodes a snapshot (see the module docs for the layout).
pub fn encode_snapshot(s: &DetectSnapshot) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(64 + 96 * s.events.len() + 160 * s.emitted.len()));
    w.0.push(FORMAT);
    w.str(&s.key);
    w.u64(s.events.len() as u64);
    for e in &s.events {
        w.i64(e.time);
        w.str(&e.id);
        w.0.push(e.channel.index() as u8);
        w.str(&e.event_type);
        for v in [&e.outcome, &e.topic, &e.line, &e.region, &e.agent_id] {
            w.opt(v.as_deref());
        }
        w.u64(e.attrs.len() as u64);
        for (k, v) in e.attrs.iter() {
            w.str(k);
            w.str(v);
        }
    }
    w.u64(s.pending.len() as u64);
    for p in &s.pending {
        w.str(&p.rule);
        w.u64(u64::from(p.rule_version));
        w.i64(p.trigger_time);
        w.str(&p.trigger_id);
        w.opt(p.session_hint.as_deref());
    }
    w.u64(s.emitted.len() as u64);
    for e in &s.emitted {
        let h = &e.hit.hit;
        w.str(&h.hit_id);
        w.str(&h.rule);
        w.i64(i64::from(h.rule_version));
        if h.customer_id == s.key {
            w.0.push(0);
        } else {
            w.0.push(1);
            w.str(&h.customer_id);
        }
        w.opt(h.session_id.as_deref());
        w.i64(h.event_time);
        w.str(&h.trigger_event_id);
        w.u64(h.matched_event_ids.len() as u64);
        for m in &h.matched_event_ids {
            w.str(m);
        }
        w.str(&h.path);
        w.opt(h.topic.as_deref());
        w.str(&h.severity);
        w.i64(h.version);
        w.0.push(u8::from(h.retracted));
        w.0.push(e.hit.channel.index() as u8);
        w.opt(e.hit.region.as_deref());
        w.i64(e.trigger_time);
    }
    w.0
}

/// Decodes [`encode_snapshot`]'s output; any malformed input is an error, never a panic.
pub fn decode_snapshot(b: &[u8]) -> Result<DetectSnapshot, String> {
    let mut r = R { b, at: 0 };
    match r.byte()? {
        FORMAT => {}
        f => return Err(format!("unknown detector snapshot format {f}")),
    }
    let key = r.str()?.to_string();
    let n = r.count()?;
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let time = r.i64()?;
        let id: Arc<str> = Arc::from(r.str()?);
        let channel = r.channel()?;
        let event_type = intern(r.str()?);
        let mut opts: [Option<Arc<str>>; 5] = Default::default();
        for o in &mut opts {
            *o = r.opt()?.map(intern);
        }
        let [outcome, topic, line, region, agent_id] = opts;
        let na = r.count()?;
        let mut attrs = Vec::with_capacity(na);
        for _ in 0..na {
            attrs.push((intern(r.str()?), intern(r.str()?)));
        }
        events.push(DetectEvent { time, id, channel, event_type, outcome, topic, line, region, agent_id, attrs: attrs.into() });
    }
    let n = r.count()?;
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        pending.push(PendingAbsence {
            rule: r.str()?.to_string(),
            rule_version: u32::try_from(r.u64()?).map_err(|_| "rule version out of range".to_string())?,
            trigger_time: r.i64()?,
            trigger_id: r.str()?.to_string(),
            session_hint: r.opt()?.map(str::to_string),
        });
    }
    let n = r.count()?;
    let mut emitted = Vec::with_capacity(n);
    for _ in 0..n {
        let hit_id = r.str()?.to_string();
        let rule = r.str()?.to_string();
        let rule_version = i32::try_from(r.i64()?).map_err(|_| "rule version out of range".to_string())?;
        let customer_id = if r.flag()? { r.str()?.to_string() } else { key.clone() };
        let session_id = r.opt()?.map(str::to_string);
        let event_time = r.i64()?;
        let trigger_event_id = r.str()?.to_string();
        let nm = r.count()?;
        let mut matched_event_ids = Vec::with_capacity(nm);
        for _ in 0..nm {
            matched_event_ids.push(r.str()?.to_string());
        }
        let hit = ScenarioHit {
            hit_id,
            rule,
            rule_version,
            customer_id,
            session_id,
            event_time,
            trigger_event_id,
            matched_event_ids,
            path: r.str()?.to_string(),
            topic: r.opt()?.map(str::to_string),
            severity: r.str()?.to_string(),
            version: r.i64()?,
            retracted: r.flag()?,
        };
        let channel = r.channel()?;
        let region = r.opt()?.map(str::to_string);
        let trigger_time = r.i64()?;
        emitted.push(EmittedHit { hit: DetectedHit { hit: Arc::new(hit), channel, region }, trigger_time });
    }
    if r.at != b.len() {
        return Err(format!("{} trailing bytes", b.len() - r.at));
    }
    Ok(DetectSnapshot { key, events, pending, emitted })
}
