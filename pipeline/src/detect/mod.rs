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
//! events; an event lacking one of them takes no part in the rule, in any role.
//!
//! The streaming [`Detector`] guarantees: for any arrival order in which no event is older
//! than `watermark - horizon` when it arrives, the latest non-retracted version of every hit
//! id, once the watermark has passed everything, equals [`evaluate`] over all events. Hits are
//! emitted as soon as they are known, re-emitted with a higher version when a late event
//! changes them, and retracted when a late event cancels them.

mod detector;
mod eval;
mod rules;
mod snapshot;

pub use detector::{DetectSnapshot, Detector, EmittedHit, NoSessions, PendingAbsence, SessionLookup};
pub use eval::{evaluate, intern, DetectEvent};
pub use rules::{Predicate, Rule, RuleErrors, RuleKind, RuleSet, SameField, Severity};
pub use snapshot::{decode_snapshot, encode_snapshot};

use crate::sessionize::fnv1a;
use journey_schemas::{Channel, ScenarioHit};

/// A hit as the detector emits it: the record, plus the trigger event's channel and region
/// (the analytics table groups by them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedHit {
    /// The hit record.
    pub hit: ScenarioHit,
    /// Channel of the trigger (last matched) event.
    pub channel: Channel,
    /// Region of the trigger event.
    pub region: Option<String>,
}

/// Deterministic hit id: 32 hex characters of FNV-1a (salts 0 and 1, like session ids) over
/// `rule/version` and `customer/trigger_event_id`.
pub fn hit_id(rule: &str, version: u32, customer: &str, trigger_event_id: &str) -> String {
    let a = format!("{rule}/{version}");
    let b = format!("{customer}/{trigger_event_id}");
    format!("{:016x}{:016x}", fnv1a(a.as_bytes(), b.as_bytes(), 0), fnv1a(a.as_bytes(), b.as_bytes(), 1))
}

#[cfg(test)]
mod tests;
