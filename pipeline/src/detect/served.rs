//! Rules served from the sessionizer's events: short sequence rules whose earlier steps the
//! detector does not need to keep itself.
//!
//! The sessionizer keeps every event of a customer whose time is at or after
//! `watermark - horizon - gap` (it prunes only whole sessions that ended before that). A
//! sequence rule with `within <= gap` looks, for any hit that can still change (detection time
//! at or after `watermark - horizon`), only at events at or after `watermark - horizon - within`:
//! all of them are in the sessionizer. If its steps test only what the sessionizer keeps of an
//! event (channel, topic, region, and `event_type` only as `contact.start`, which is the
//! session's `assisted` flag) and its `same` fields are among topic and channel, the detector
//! can search its earlier steps among the sessionizer's events. Predicates used only as such
//! earlier steps are then not kept by the detector: in the built-in rules, that is every APP
//! and IVR event (`app_then_call`, `ivr_to_agent`), about half of all events. The completing
//! step is still kept, as for every rule, so the detector still sees in-order and out-of-order
//! arrivals of the events that end hits.
//!
//! This needs the sessionizer to have admitted every event the detector has. The processor
//! admits each event to the sessionizer first, and after a crash the sessionizer's state is
//! never older than the detector's: in each checkpoint the sessionizer's records precede the
//! detector's in the same changelog partition, so a torn checkpoint loses detector records
//! first, and the replay brings those events to both again.

use super::eval::{Bits, Described, EventFields, SameValue, View};
use super::rules::{Predicate, RuleSet, SameField, Shape};
use crate::sessionize::SessionEvent;
use journey_schemas::Channel;

/// Which rules of a rule set are served from the sessionizer, and what the detector keeps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    /// Per compiled rule: served from the sessionizer's events.
    pub rules: Vec<bool>,
    /// Predicates the detector keeps events for (all but those only served rules' earlier
    /// steps use). All ones when nothing is served.
    pub keep: u64,
    /// The largest window of the served rules.
    pub max_window_ms: i64,
}

impl Served {
    /// The rules of `rules` a sessionizer with this gap can serve; none without a sessionizer
    /// (`None`: the detector then keeps every matching event).
    pub(crate) fn new(rules: &RuleSet, gap_ms: Option<i64>) -> Served {
        let none = || Served { rules: vec![false; rules.compiled.len()], keep: u64::MAX, max_window_ms: 0 };
        // The masks below are one bit per predicate.
        let Some(gap_ms) = gap_ms.filter(|_| rules.predicates.len() <= 64) else { return none() };
        let servable_predicate = |p: &Predicate| {
            p.outcome.is_none()
                && p.line.is_none()
                && p.attrs.is_empty()
                && p.event_type.as_ref().is_none_or(|ts| ts.len() == 1 && &*ts[0] == CONTACT_START)
        };
        let served: Vec<bool> = rules
            .compiled
            .iter()
            .map(|r| match &r.shape {
                Shape::Sequence { steps } => {
                    r.within_ms <= gap_ms
                        && r.same.iter().all(|f| matches!(f, SameField::Topic | SameField::Channel))
                        && steps.iter().all(|&s| servable_predicate(&rules.predicates[s]))
                }
                _ => false,
            })
            .collect();
        // A predicate is still kept if it completes any rule or takes any part in a rule
        // that is not served.
        let mut needed = 0u64;
        for (r, &is_served) in rules.compiled.iter().zip(&served) {
            needed |= 1 << r.completing;
            if !is_served {
                needed |= match &r.shape {
                    Shape::Sequence { steps } => steps.iter().fold(0, |m, &s| m | 1 << s),
                    Shape::Absence { trigger, followed_by } => 1 << trigger | 1 << followed_by,
                    Shape::Count { predicate, .. } => 1 << predicate,
                };
            }
        }
        let max_window_ms = rules.compiled.iter().zip(&served).filter(|(_, &s)| s).map(|(r, _)| r.within_ms).max().unwrap_or(0);
        Served { rules: served, keep: needed, max_window_ms }
    }

    /// Whether any rule is served.
    pub(crate) fn any(&self) -> bool {
        self.rules.iter().any(|&s| s)
    }

    /// The predicates of `bits` the detector keeps an event for.
    pub(crate) fn kept(&self, bits: Bits) -> Bits {
        match bits {
            Bits::Small(w) => Bits::Small(w & self.keep),
            large => large,
        }
    }
}

const CONTACT_START: &str = "contact.start";

/// The fields of a sessionizer event, as the served rules' predicates read them.
struct Fields<'a>(&'a SessionEvent);

impl EventFields for Fields<'_> {
    fn channel(&self) -> Channel {
        self.0.channel
    }
    fn event_type(&self) -> &str {
        // The sessionizer keeps only whether the type is `contact.start`; served predicates
        // test for nothing else.
        if self.0.assisted {
            CONTACT_START
        } else {
            ""
        }
    }
    fn outcome(&self) -> Option<&str> {
        None
    }
    fn topic(&self) -> Option<&str> {
        self.0.topic.as_deref()
    }
    fn line(&self) -> Option<&str> {
        None
    }
    fn region(&self) -> Option<&str> {
        self.0.region.as_deref()
    }
    fn attr(&self, _: &str) -> Option<&str> {
        None
    }
}

/// A sessionizer event with the predicates it matches: what the searches read.
pub(crate) struct Step<'a> {
    ev: &'a SessionEvent,
    bits: Bits,
}

impl<'a> Step<'a> {
    pub(crate) fn new(rules: &RuleSet, ev: &'a SessionEvent) -> Step<'a> {
        Step { ev, bits: rules.match_bits(&Fields(ev)) }
    }

    pub(crate) fn id(&self) -> &'a str {
        &self.ev.id
    }

    pub(crate) fn described(&self) -> Described<'a> {
        Described { channel: self.ev.channel, id: &self.ev.id, topic: self.ev.topic.as_deref(), region: self.ev.region.as_deref() }
    }
}

impl View for Step<'_> {
    fn time(&self) -> i64 {
        self.ev.time
    }
    fn bits(&self) -> &Bits {
        &self.bits
    }
    fn same_value(&self, f: &SameField) -> Option<SameValue<'_>> {
        match f {
            SameField::Topic => self.ev.topic.as_deref().map(SameValue::Text),
            SameField::Channel => Some(SameValue::Text(self.ev.channel.as_str())),
            // Served rules compare no other field.
            _ => None,
        }
    }
}

/// The steps of `events` (sorted by time and id) from `from_time` up to and including the
/// event `(time, id)`; `None` if that event is not among them.
pub(crate) fn window<'a>(rules: &RuleSet, events: &'a [SessionEvent], from_time: i64, time: i64, id: &str) -> Option<Vec<Step<'a>>> {
    let end = events.partition_point(|e| (e.time, e.id.as_bytes()) < (time, id.as_bytes()));
    if events.get(end).is_none_or(|e| e.id.as_bytes() != id.as_bytes()) {
        return None;
    }
    let start = events[..end].partition_point(|e| e.time < from_time);
    Some(events[start..=end].iter().map(|e| Step::new(rules, e)).collect())
}
