//! Scenario detection: declarative rules over one customer's events, evaluated in batch
//! ([`evaluate`]) and incrementally with corrections ([`Detector`]). Pure, no I/O.
//!
//! A customer's events are ordered by (`event_time`, `event_id` bytes) and duplicates by id
//! count once; "within D" means `last.time - first.time <= D` in event-time milliseconds.
//! Rules come in three kinds (see `config/scenarios.toml` for the format):
//!
//! - **sequence** `s1..sk`: one hit per event `e_k` matching the last step that ends some
//!   chain `e_1 < .. < e_k` matching the steps in order within the window; the matched ids
//!   are the greedy chain of latest earlier events (which also maximises `e_1`'s time).
//! - **absence** `trigger, followed_by`: one hit per trigger with no later matching event
//!   within the window; its detection time is `trigger.time + within`, and the streaming
//!   detector emits it only once the watermark is past that.
//! - **count** `match, at_least N`: one hit per matching event `e` with at least `N` matching
//!   events `m <= e` in `[e.time - within, e.time]`.
//!
//! `same = [fields]` requires those fields to be equal and non-null across the matched
//! events (null equals nothing): an event lacking one of them completes no sequence and no
//! count and is counted by none, while an absence trigger lacking one has no possible
//! follower, so it is a hit once its window has passed.
//!
//! The streaming [`Detector`] guarantees: for any arrival order in which no event is older
//! than `watermark - horizon` when it arrives, the latest non-retracted version of every hit
//! id, once the watermark has passed everything, equals [`evaluate`] over all events. Hits are
//! emitted as soon as they are known, re-emitted with a higher version when a late event
//! changes them, and retracted when a late event cancels them.

mod detector;
mod eval;
mod rules;
mod served;
mod snapshot;
mod stored;

pub use detector::{DetectSnapshot, Detector, EmittedHit, NoSessions, PendingAbsence, SessionLookup, SessionRef};
pub use eval::{evaluate, intern, DetectEvent, EventFields};
pub use rules::{Predicate, Rule, RuleErrors, RuleKind, RuleSet, SameField, Severity};
pub use snapshot::{decode_snapshot, encode_snapshot};

use journey_schemas::{Channel, ScenarioHit};
use std::sync::Arc;

/// A hit as the detector emits it: the record, plus the trigger event's channel and region
/// (the analytics table groups by them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedHit {
    /// The hit record, shared with the detector's record of its last emission (so emitting
    /// a hit, and keeping it to compare with later, costs a reference count, not a copy).
    pub hit: Arc<ScenarioHit>,
    /// Channel of the trigger (last matched) event.
    pub channel: Channel,
    /// Region of the trigger event.
    pub region: Option<String>,
}

/// Deterministic hit id: 32 hex characters of FNV-1a (salts 0 and 1, like session ids) over
/// `rule/version` and `customer/trigger_event_id`, i.e. `fnv1a(a, b, 0)` then `fnv1a(a, b, 1)`
/// with `a = format!("{rule}/{version}")`, `b = format!("{customer}/{trigger_event_id}")`,
/// computed without building those strings.
pub fn hit_id(rule: &str, version: u32, customer: &str, trigger_event_id: &str) -> String {
    let mut digits = [0u8; 10];
    let mut n = version;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // The same arithmetic as `fnv1a` with salts 0 and 1, fed piece by piece.
    let (h0, h1) = crate::sessionize::fnv1a_pair([
        rule.as_bytes(),
        b"/",
        &digits[at..],
        &[0xff],
        customer.as_bytes(),
        b"/",
        trigger_event_id.as_bytes(),
    ]);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&h0.to_be_bytes());
    bytes[8..].copy_from_slice(&h1.to_be_bytes());
    crate::pii::hex16(&bytes)
}

#[cfg(test)]
mod tests;
