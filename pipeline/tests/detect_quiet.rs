//! Absence windows and quiet partitions: when input stops (a replay of history has ended),
//! the detector closes the windows of the triggers it has seen, as the sessionizer closes
//! sessions; a follower that comes later still cancels the hit, and later triggers wait for
//! event time as usual.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use journey_pipeline::detect::{DetectEvent, DetectedHit, Detector, NoSessions, RuleSet};
use journey_schemas::{Channel, ChannelEvent};
use std::sync::Arc;

const H: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000;

fn rules() -> Arc<RuleSet> {
    Arc::new(
        RuleSet::from_toml(
            r#"
            [[rule]]
            name = "unresolved_contact"
            kind = "absence"
            within = "48h"
            same = ["topic"]
            trigger = { event_type = "contact.start" }
            followed_by = { outcome = "resolved" }
            "#,
        )
        .unwrap(),
    )
}

fn event(id: &str, time: i64, event_type: &str, outcome: Option<&str>) -> ChannelEvent {
    ChannelEvent {
        event_id: id.into(),
        event_time: time,
        ingest_time: time,
        channel: Channel::ContactCentre,
        event_type: event_type.into(),
        customer_id: Some("C1".into()),
        msisdn: None,
        app_instance_id: None,
        topic: Some("billing".into()),
        outcome: outcome.map(str::to_string),
        line: None,
        agent_id: None,
        attrs: Default::default(),
        region: None,
    }
}

fn admit(d: &mut Detector, rules: &RuleSet, e: ChannelEvent, out: &mut Vec<DetectedHit>) {
    assert!(d.admit("C1", DetectEvent::from_event(&e, rules), &NoSessions, out));
}

#[test]
fn quiet_closes_open_absence_windows_and_a_late_follower_still_cancels() {
    let rules = rules();
    let mut d = Detector::new(rules.clone(), 24 * H);
    let mut out = Vec::new();
    admit(&mut d, &rules, event("t1", T0, "contact.start", None), &mut out);
    d.advance(T0 + H, &NoSessions, &mut out);
    assert!(out.is_empty(), "the window (48 h) is still open in event time");

    // The partition goes quiet: the window of every trigger seen so far closes.
    d.close_idle(T0 + H, &NoSessions, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].hit.trigger_event_id.as_str(), out[0].hit.event_time, out[0].hit.retracted), ("t1", T0 + 48 * H, false));
    d.close_idle(T0 + H, &NoSessions, &mut out);
    assert_eq!(out.len(), 1, "the same quiet point closes nothing twice");

    // Input resumes: a follower inside the window cancels the early hit.
    admit(&mut d, &rules, event("f1", T0 + 2 * H, "call.end", Some("resolved")), &mut out);
    assert_eq!(out.len(), 2);
    assert!(out[1].hit.retracted && out[1].hit.hit_id == out[0].hit.hit_id && out[1].hit.version > out[0].hit.version);

    // A trigger after the quiet point waits for event time again.
    admit(&mut d, &rules, event("t2", T0 + 3 * H, "contact.start", None), &mut out);
    d.advance(T0 + 4 * H, &NoSessions, &mut out);
    assert_eq!(out.len(), 2);
    d.advance(T0 + 3 * H + 48 * H + 1, &NoSessions, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!((out[2].hit.trigger_event_id.as_str(), out[2].hit.retracted), ("t2", false));
    assert_eq!(d.idle_closed_upto(), T0 + H);
}

#[test]
fn a_follower_cancels_an_early_hit_restored_without_its_quiet_point() {
    // A checkpoint is many records; a crash can land between the customer's snapshot (which
    // holds the hit the quiet close emitted) and the partition's clock record (which says the
    // partition was closed by quiet). The customer's own state must be enough to retract.
    let rules = rules();
    let mut d = Detector::new(rules.clone(), 24 * H);
    let mut out = Vec::new();
    admit(&mut d, &rules, event("t1", T0, "contact.start", None), &mut out);
    d.advance(T0 + H, &NoSessions, &mut out);
    d.close_idle(T0 + H, &NoSessions, &mut out);
    assert_eq!(out.len(), 1);
    let snap = d.snapshot("C1").expect("the customer has state");

    let mut restored = Detector::new(rules.clone(), 24 * H);
    restored.restore_watermark(d.watermark());
    restored.restore(snap);
    let mut out2 = Vec::new();
    admit(&mut restored, &rules, event("f1", T0 + 2 * H, "call.end", Some("resolved")), &mut out2);
    assert_eq!(out2.len(), 1, "the follower must retract the restored early hit: {out2:#?}");
    assert!(out2[0].hit.retracted && out2[0].hit.hit_id == out[0].hit.hit_id && out2[0].hit.version > out[0].hit.version);
}
