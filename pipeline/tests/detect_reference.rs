//! The scenario engine against a reference evaluator written independently and as plainly as
//! possible: brute force over sorted events (every increasing index tuple for sequences,
//! direct loops for absence and count), on random events and random rule sets.
//!
//! Checked: batch [`evaluate`] equals the reference; the streaming [`Detector`], fed in a
//! random arrival order where no event is older than `watermark - horizon` when it arrives
//! (with a real sessionizer in lock-step and random checkpoint/restore cycles), ends with
//! latest non-retracted hit versions equal to the reference, session ids included; both as a
//! detector that keeps every matching event and as one beside the sessionizer, which finds
//! the earlier steps of short rules among the sessionizer's events.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use journey_pipeline::detect::{decode_snapshot, encode_snapshot, evaluate, hit_id, DetectEvent, DetectedHit, Detector, RuleSet};
use journey_pipeline::sessionize::{batch_sessions, SessionEvent, SessionParams, Sessionizer};
use journey_schemas::{Channel, ChannelEvent};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

// ------------------------------------------------------------------ rules as plain data

#[derive(Debug, Clone, Default)]
struct Pred {
    channel: Option<Vec<Channel>>,
    event_type: Option<Vec<&'static str>>,
    topic: Option<Vec<&'static str>>,
    outcome: Option<Vec<&'static str>>,
    attr_k: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Seq(Vec<Pred>),
    Abs(Pred, Pred),
    Count(Pred, usize),
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    version: u32,
    severity: &'static str,
    within: i64,
    same: Vec<&'static str>,
    kind: Kind,
}

fn toml_list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("\"{x}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn pred_toml(p: &Pred) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &p.channel {
        parts.push(format!("channel = {}", toml_list(c)));
    }
    if let Some(v) = &p.event_type {
        parts.push(format!("event_type = {}", toml_list(v)));
    }
    if let Some(v) = &p.topic {
        parts.push(format!("topic = {}", toml_list(v)));
    }
    if let Some(v) = &p.outcome {
        parts.push(format!("outcome = {}", toml_list(v)));
    }
    if let Some(v) = &p.attr_k {
        parts.push(format!("attrs = {{ k = {} }}", toml_list(v)));
    }
    format!("{{ {} }}", parts.join(", "))
}

fn rules_toml(specs: &[Spec]) -> String {
    let mut s = String::new();
    for r in specs {
        s.push_str(&format!(
            "[[rule]]\nname = \"{}\"\nversion = {}\nseverity = \"{}\"\nwithin = \"{}ms\"\nsame = {}\n",
            r.name,
            r.version,
            r.severity,
            r.within,
            toml_list(&r.same)
        ));
        match &r.kind {
            Kind::Seq(steps) => {
                let steps: Vec<String> = steps.iter().map(pred_toml).collect();
                s.push_str(&format!("kind = \"sequence\"\nsteps = [{}]\n", steps.join(", ")));
            }
            Kind::Abs(t, f) => s.push_str(&format!("kind = \"absence\"\ntrigger = {}\nfollowed_by = {}\n", pred_toml(t), pred_toml(f))),
            Kind::Count(m, n) => s.push_str(&format!("kind = \"count\"\nat_least = {n}\nmatch = {}\n", pred_toml(m))),
        }
        s.push('\n');
    }
    s
}

// ------------------------------------------------------------------ the reference

fn one_of(allowed: &Option<Vec<&'static str>>, v: Option<&String>) -> bool {
    match allowed {
        None => true,
        Some(list) => match v {
            None => false,
            Some(v) => list.iter().any(|a| a == v),
        },
    }
}

fn matches(p: &Pred, e: &ChannelEvent) -> bool {
    let channel_ok = match &p.channel {
        None => true,
        Some(cs) => cs.contains(&e.channel),
    };
    channel_ok
        && one_of(&p.event_type, Some(&e.event_type))
        && one_of(&p.topic, e.topic.as_ref())
        && one_of(&p.outcome, e.outcome.as_ref())
        && one_of(&p.attr_k, e.attrs.get("k"))
}

fn field(e: &ChannelEvent, f: &str) -> Option<String> {
    match f {
        "topic" => e.topic.clone(),
        "channel" => Some(e.channel.as_str().to_string()),
        "event_type" => Some(e.event_type.clone()),
        "outcome" => e.outcome.clone(),
        "attrs.k" => e.attrs.get("k").cloned(),
        other => panic!("field {other} not generated"),
    }
}

/// All events share the same non-null value of every `same` field.
fn all_same(same: &[&'static str], evs: &[&ChannelEvent]) -> bool {
    same.iter().all(|f| {
        let first = field(evs[0], f);
        first.is_some() && evs.iter().all(|e| field(e, f) == first)
    })
}

/// Comparable part of a hit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    hit_id: String,
    rule: String,
    customer: String,
    event_time: i64,
    trigger: String,
    matched: Vec<String>,
    path: String,
    topic: Option<String>,
    severity: String,
    session: Option<String>,
}

fn path_of(evs: &[&ChannelEvent]) -> String {
    let mut names: Vec<&str> = evs.iter().map(|e| e.channel.as_str()).collect();
    names.dedup();
    names.join(">")
}

/// Every strictly increasing tuple of indices `< end` of length `len`, ending anywhere.
fn tuples(len: usize, end: usize) -> Vec<Vec<usize>> {
    if len == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for last in 0..end {
        for mut t in tuples(len - 1, last) {
            t.push(last);
            out.push(t);
        }
    }
    out
}

fn reference(specs: &[Spec], customer: &str, events: &[ChannelEvent]) -> Vec<Row> {
    let mut sorted: Vec<&ChannelEvent> = events.iter().collect();
    sorted.sort_by(|a, b| (a.event_time, a.event_id.as_bytes()).cmp(&(b.event_time, b.event_id.as_bytes())));
    let mut seen = HashSet::new();
    sorted.retain(|e| seen.insert(e.event_id.clone()));
    let mut rows = Vec::new();
    for r in specs {
        let mut emit = |trigger: &ChannelEvent, matched: Vec<&ChannelEvent>, event_time: i64| {
            rows.push(Row {
                hit_id: hit_id(&r.name, r.version, customer, &trigger.event_id),
                rule: r.name.clone(),
                customer: customer.to_string(),
                event_time,
                trigger: trigger.event_id.clone(),
                matched: matched.iter().map(|e| e.event_id.clone()).collect(),
                path: path_of(&matched),
                topic: trigger.topic.clone(),
                severity: r.severity.to_string(),
                session: None,
            })
        };
        match &r.kind {
            Kind::Seq(steps) => {
                for k in 0..sorted.len() {
                    let mut best: Option<Vec<usize>> = None;
                    for mut t in tuples(steps.len() - 1, k) {
                        t.push(k);
                        let evs: Vec<&ChannelEvent> = t.iter().map(|&i| sorted[i]).collect();
                        let ok = evs.iter().zip(steps).all(|(e, p)| matches(p, e))
                            && evs[evs.len() - 1].event_time - evs[0].event_time <= r.within
                            && all_same(&r.same, &evs);
                        // Of all valid chains, the one whose indices are largest compared from
                        // the last step backwards.
                        let rev = |v: &Vec<usize>| v.iter().rev().copied().collect::<Vec<_>>();
                        if ok && best.as_ref().is_none_or(|b| rev(&t) > rev(b)) {
                            best = Some(t);
                        }
                    }
                    if let Some(t) = best {
                        let evs: Vec<&ChannelEvent> = t.iter().map(|&i| sorted[i]).collect();
                        emit(sorted[k], evs, sorted[k].event_time);
                    }
                }
            }
            Kind::Abs(trigger, follower) => {
                for (i, t) in sorted.iter().enumerate() {
                    // No `same` test of the trigger alone: one lacking a field has no
                    // follower (null equals nothing), so it is a hit.
                    if !matches(trigger, t) {
                        continue;
                    }
                    let followed = sorted[i + 1..]
                        .iter()
                        .any(|f| matches(follower, f) && f.event_time - t.event_time <= r.within && all_same(&r.same, &[t, f]));
                    if !followed {
                        emit(t, vec![t], t.event_time + r.within);
                    }
                }
            }
            Kind::Count(m, n) => {
                for (i, e) in sorted.iter().enumerate() {
                    if !matches(m, e) || !all_same(&r.same, &[e]) {
                        continue;
                    }
                    let counted: Vec<&ChannelEvent> = sorted[..=i]
                        .iter()
                        .copied()
                        .filter(|x| matches(m, x) && e.event_time - x.event_time <= r.within && all_same(&r.same, &[e, x]))
                        .collect();
                    if counted.len() >= *n {
                        emit(e, counted, e.event_time);
                    }
                }
            }
        }
    }
    rows.sort();
    rows
}

fn row(h: &DetectedHit) -> Row {
    let h = &h.hit;
    Row {
        hit_id: h.hit_id.clone(),
        rule: h.rule.clone(),
        customer: h.customer_id.clone(),
        event_time: h.event_time,
        trigger: h.trigger_event_id.clone(),
        matched: h.matched_event_ids.clone(),
        path: h.path.clone(),
        topic: h.topic.clone(),
        severity: h.severity.clone(),
        session: h.session_id.clone(),
    }
}

// ------------------------------------------------------------------ generators

const CHANNELS: [Channel; 4] = [Channel::App, Channel::Ivr, Channel::ContactCentre, Channel::Chat];
// `contact.start` is the one type the sessionizer keeps (as `assisted`): rules on it can be
// served from the sessionizer's events.
const TYPES: [&str; 3] = ["a", "b", "contact.start"];
const TOPICS: [&str; 2] = ["x", "y"];
const OUTCOMES: [&str; 2] = ["ok", "no"];
const KS: [&str; 2] = ["1", "2"];
const CUSTOMERS: [&str; 3] = ["c1", "c2", "c3"];

fn sub<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = Option<Vec<T>>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::sample::subsequence(all, 1..=all.len()).prop_map(Some),
    ]
}

fn arb_pred() -> impl Strategy<Value = Pred> {
    (sub(&CHANNELS), sub(&TYPES), sub(&TOPICS), sub(&OUTCOMES), sub(&KS)).prop_map(|(channel, event_type, topic, outcome, attr_k)| Pred {
        channel,
        event_type,
        topic,
        outcome,
        attr_k,
    })
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        proptest::collection::vec(arb_pred(), 2..=4).prop_map(Kind::Seq),
        (arb_pred(), arb_pred()).prop_map(|(t, f)| Kind::Abs(t, f)),
        (arb_pred(), 1usize..=4).prop_map(|(m, n)| Kind::Count(m, n)),
    ]
}

const SAME_FIELDS: [&str; 5] = ["topic", "channel", "event_type", "outcome", "attrs.k"];

fn arb_specs() -> impl Strategy<Value = Vec<Spec>> {
    proptest::collection::vec(
        (
            arb_kind(),
            1i64..=12,
            prop_oneof![2 => Just(Vec::new()), 1 => proptest::sample::subsequence(&SAME_FIELDS[..], 1..=2)],
            1u32..=3,
            proptest::sample::select(&["info", "warning", "critical"][..]),
        ),
        1..=4,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (kind, within, same, version, severity))| Spec { name: format!("r{i}"), version, severity, within, same, kind })
            .collect()
    })
}

fn opt<T: Clone + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = Option<T>> {
    prop_oneof![1 => Just(None), 3 => proptest::sample::select(all).prop_map(Some)]
}

/// (customer, event); ids are unique, some events are duplicated later in the list.
fn arb_events() -> impl Strategy<Value = Vec<(String, ChannelEvent)>> {
    proptest::collection::vec(
        (
            proptest::sample::select(&CUSTOMERS[..]),
            0i64..30,
            proptest::sample::select(&CHANNELS[..]),
            proptest::sample::select(&TYPES[..]),
            opt(&TOPICS),
            opt(&OUTCOMES),
            opt(&KS),
            "[a-d]{1,2}",
        ),
        0..28,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(n, (customer, time, channel, et, topic, outcome, k, idp))| {
                let mut attrs = BTreeMap::new();
                if let Some(k) = k {
                    attrs.insert("k".to_string(), k.to_string());
                }
                // Random prefixes make id order differ from creation order.
                let e = ChannelEvent {
                    event_id: format!("{idp}{n:02}"),
                    event_time: time,
                    ingest_time: time,
                    channel,
                    event_type: et.to_string(),
                    customer_id: Some(customer.to_string()),
                    msisdn: None,
                    app_instance_id: None,
                    topic: topic.map(str::to_string),
                    outcome: outcome.map(str::to_string),
                    line: None,
                    agent_id: None,
                    attrs,
                    region: None,
                };
                (customer.to_string(), e)
            })
            .collect()
    })
}

fn parse(specs: &[Spec]) -> RuleSet {
    let text = rules_toml(specs);
    match RuleSet::from_toml(&text) {
        Ok(r) => r,
        Err(e) => panic!("generated rules do not parse:\n{e}\n{text}"),
    }
}

fn by_customer(events: &[(String, ChannelEvent)]) -> BTreeMap<String, Vec<ChannelEvent>> {
    let mut m: BTreeMap<String, Vec<ChannelEvent>> = BTreeMap::new();
    for (c, e) in events {
        m.entry(c.clone()).or_default().push(e.clone());
    }
    m
}

// ------------------------------------------------------------------ properties

/// 400 cases per property unless `PROPTEST_CASES` asks for more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn batch_evaluation_equals_the_reference(specs in arb_specs(), events in arb_events()) {
        let rules = parse(&specs);
        for (customer, evs) in by_customer(&events) {
            let detect: Vec<DetectEvent> = evs.iter().map(|e| DetectEvent::from_event(e, &rules)).collect();
            let mut got: Vec<Row> = evaluate(&rules, &customer, &detect).iter().map(row).collect();
            got.sort();
            let want = reference(&specs, &customer, &evs);
            prop_assert_eq!(got, want, "customer {}\nrules:\n{}", customer, rules_toml(&specs));
        }
    }
}

/// One streaming run's parameters.
#[derive(Debug, Clone)]
struct Run {
    /// Per event: how long after its event time it arrives (ties broken by the random key).
    delays: Vec<(i64, u32)>,
    /// Duplicates: indices of events delivered a second time at the end.
    duplicates: Vec<usize>,
    lateness: i64,
    /// Extra horizon beyond the smallest that admits every event.
    slack: i64,
    /// Checkpoint and restore the detector after these arrival positions.
    restarts: BTreeSet<usize>,
    gap: i64,
    max_duration: i64,
}

fn arb_run() -> impl Strategy<Value = Run> {
    (
        proptest::collection::vec((0i64..12, any::<u32>()), 28),
        proptest::collection::vec(0usize..28, 0..4),
        0i64..5,
        0i64..4,
        proptest::collection::btree_set(0usize..32, 0..3),
        2i64..6,
        4i64..12,
    )
        .prop_map(|(delays, duplicates, lateness, slack, restarts, gap, max_duration)| Run {
            delays,
            duplicates,
            lateness,
            slack,
            restarts,
            gap,
            max_duration: max_duration.max(gap),
        })
}

fn session_event(e: &ChannelEvent) -> SessionEvent {
    SessionEvent::from_event(e)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn streaming_detection_ends_equal_to_the_reference(specs in arb_specs(), events in arb_events(), run in arb_run()) {
        let rules = Arc::new(parse(&specs));
        // Arrival order: event time plus a random delay; duplicates re-delivered at the end.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].1.event_time + run.delays[i].0, run.delays[i].1, i));
        order.extend(run.duplicates.iter().copied().filter(|&i| i < events.len()));
        // The smallest horizon that admits every event on arrival, plus some slack.
        let mut max_seen = i64::MIN;
        let mut horizon = 0;
        for &i in &order {
            let t = events[i].1.event_time;
            if max_seen != i64::MIN {
                horizon = horizon.max(max_seen - run.lateness - t);
            }
            max_seen = max_seen.max(t);
        }
        let horizon = horizon + run.slack;
        let params = SessionParams { gap_ms: run.gap, max_duration_ms: run.max_duration, horizon_ms: horizon };
        let mut want = Vec::new();
        for (customer, evs) in by_customer(&events) {
            let cut = batch_sessions(&customer, &evs.iter().map(session_event).collect::<Vec<_>>(), &params);
            for mut r in reference(&specs, &customer, &evs) {
                let trig = evs.iter().find(|e| e.event_id == r.trigger).expect("trigger is an input event");
                let key = (trig.event_time, trig.event_id.as_str());
                r.session = cut
                    .iter()
                    .find(|s| (s.start_time, s.first_event_id.as_str()) <= key && key <= (s.end_time, s.last_event_id.as_str()))
                    .map(|s| s.session_id.clone());
                want.push(r);
            }
        }
        want.sort();
        // Both ways the detector runs: keeping every event the rules match, and beside the
        // sessionizer, finding the earlier steps of short rules among its events.
        for beside in [false, true] {
            let mut sessions = Sessionizer::new(params);
            let new_detector = || if beside { Detector::beside_sessions(rules.clone(), horizon, run.gap) } else { Detector::new(rules.clone(), horizon) };
            let mut detector = new_detector();
            let mut out: Vec<DetectedHit> = Vec::new();
            let mut session_out = Vec::new();
            let mut max_seen = i64::MIN;
            for (pos, &i) in order.iter().enumerate() {
                let (customer, e) = &events[i];
                let late_for_sessions = e.event_time < sessions.watermark();
                sessions.admit(customer, session_event(e), &mut session_out);
                detector.admit(customer, DetectEvent::from_event(e, &rules), &sessions, &mut out);
                if late_for_sessions {
                    detector.note_recut(customer, &sessions, &mut out);
                }
                max_seen = max_seen.max(e.event_time);
                let wm = max_seen - run.lateness;
                sessions.advance(wm, &mut session_out);
                detector.advance(wm, &sessions, &mut out);
                if run.restarts.contains(&pos) {
                    // A restart: every customer's state through the binary format into a new detector.
                    let mut fresh = new_detector();
                    fresh.restore_watermark(detector.watermark());
                    for c in CUSTOMERS {
                        if let Some(snap) = detector.snapshot(c) {
                            fresh.restore(decode_snapshot(&encode_snapshot(&snap)).expect("snapshot round trip"));
                        }
                    }
                    prop_assert_eq!(fresh.customers(), detector.customers());
                    prop_assert_eq!(fresh.retained_events(), detector.retained_events());
                    detector = fresh;
                }
            }
            detector.flush_all(&sessions, &mut out);
            prop_assert_eq!(detector.customers(), 0);
            prop_assert_eq!(detector.retained_events(), 0);

            // Latest version of every hit id, versions strictly growing.
            let mut latest: BTreeMap<String, DetectedHit> = BTreeMap::new();
            for h in &out {
                if let Some(prev) = latest.get(&h.hit.hit_id) {
                    prop_assert!(h.hit.version > prev.hit.version, "versions must grow: {:?} then {:?}", prev.hit, h.hit);
                }
                latest.insert(h.hit.hit_id.clone(), h.clone());
            }
            let mut got: Vec<Row> = latest.values().filter(|h| !h.hit.retracted).map(row).collect();
            got.sort();
            prop_assert_eq!(got, want.clone(), "beside_sessions: {}, rules:\n{}", beside, rules_toml(&specs));
        }
    }
}

#[test]
fn the_reference_enumerates_tuples() {
    assert_eq!(tuples(2, 3), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
    assert_eq!(tuples(0, 3), vec![Vec::<usize>::new()]);
}
