use super::*;
use journey_schemas::{Channel, ChannelEvent};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const BUILTIN: &str = include_str!("../../../config/scenarios.toml");
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn raw(time: i64, id: &str, channel: Channel, event_type: &str) -> ChannelEvent {
    ChannelEvent { customer_id: Some("c1".into()), ..crate::test_event(id, time, channel, event_type) }
}

fn ev(rules: &RuleSet, time: i64, id: &str, channel: Channel, event_type: &str, topic: Option<&str>, outcome: Option<&str>) -> DetectEvent {
    let mut e = raw(time, id, channel, event_type);
    e.topic = topic.map(str::to_string);
    e.outcome = outcome.map(str::to_string);
    DetectEvent::from_event(&e, rules)
}

fn rules(text: &str) -> RuleSet {
    match RuleSet::from_toml(text) {
        Ok(r) => r,
        Err(e) => panic!("rules do not parse:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match RuleSet::from_toml(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

fn has(errors: &[String], needle: &str) {
    assert!(errors.iter().any(|e| e.contains(needle)), "no error containing {needle:?} in {errors:#?}");
}

/// (rule, trigger, matched ids, event_time) of each hit, sorted.
fn summary(hits: &[DetectedHit]) -> Vec<(String, String, Vec<String>, i64)> {
    let mut v: Vec<_> = hits
        .iter()
        .map(|h| (h.hit.rule.clone(), h.hit.trigger_event_id.clone(), h.hit.matched_event_ids.clone(), h.hit.event_time))
        .collect();
    v.sort();
    v
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- rule files

#[test]
fn builtin_rules_parse_with_their_windows() {
    let r = rules(BUILTIN);
    let names: Vec<&str> = r.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "app_then_call",
            "repeat_contact",
            "ivr_to_agent",
            "bot_not_understood",
            "error_then_contact",
            "escalated_to_back_office",
            "contact_storm",
            "unresolved_contact"
        ]
    );
    assert_eq!(r.max_window_ms(), 7 * 24 * HOUR);
    let storm = &r.rules()[6];
    assert_eq!(
        storm.kind,
        RuleKind::Count { predicate: Predicate { event_type: Some(vec![Arc::from("contact.start")]), ..Default::default() }, at_least: 3 }
    );
    assert!(r.rules().iter().all(|r| r.severity == Severity::Warning && r.version == 1));
    assert_eq!(r.rules()[7].same, vec![SameField::Topic]);
}

#[test]
fn defaults_and_optional_fields() {
    let r = rules(
        r#"
        [[rule]]
        name = "a"
        kind = "count"
        within = "1h30m"
        at_least = 1
        match = {}
        severity = "critical"
        version = 7
        description = "x"
        same = ["attrs.screen", "agent_id", "topic", "topic"]
        "#,
    );
    let a = &r.rules()[0];
    assert_eq!(a.within_ms(), 90 * MIN);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.version, 7);
    assert_eq!(a.description.as_deref(), Some("x"));
    assert_eq!(a.same, vec![SameField::Attr(Arc::from("screen")), SameField::AgentId, SameField::Topic]);
}

#[test]
fn an_empty_file_is_an_empty_rule_set() {
    let r = rules("# nothing yet\n");
    assert!(r.rules().is_empty());
    assert_eq!(r.max_window_ms(), 0);
}

#[test]
fn syntax_errors_say_where() {
    let e = errors("[[rule]]\nname = \"a\"\nkind = = \"count\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("line 3, column "), "{e:?}");
}

#[test]
fn every_rule_level_problem_is_reported_at_once() {
    let e = errors(
        r#"
        colour = "red"

        [[rule]]
        name = "Bad-Name"
        kind = "sequence"
        within = "3x"
        severity = "high"
        version = 0
        description = 5
        same = ["topic", "colour", 3]
        at_least = 2
        steps = [{ channel = "APP" }]
        surprise = true

        [[rule]]
        name = "b"
        kind = "pattern"
        within = "0s"

        [[rule]]
        kind = "count"
        within = 30
        match = { event_type = "contact.start" }

        [[rule]]
        name = "b"
        kind = "absence"
        within = "20000d"
        trigger = { event_type = "contact.start" }
        "#,
    );
    has(&e, r#"unknown top-level key "colour""#);
    has(&e, r#"rule[0]: name: "Bad-Name" must be lowercase letters, digits and underscores"#);
    has(&e, r#"rule[0]: within: "3x" is not a duration: unknown unit "x""#);
    has(&e, r#"rule[0]: severity: expected "info", "warning" or "critical", got string "high""#);
    has(&e, "rule[0]: version: expected an integer from 1 to 2147483647, got integer 0");
    has(&e, "rule[0]: description: expected a string, got integer 5");
    has(&e, r#"rule[0]: same[1]: "colour" is not a field"#);
    has(&e, "rule[0]: same[2]: expected a field name, got integer 3");
    has(&e, "rule[0]: at_least: not allowed on a sequence rule (only on count)");
    has(&e, "rule[0]: steps: a sequence needs at least 2 steps, got 1");
    has(&e, r#"rule[0]: unknown key "surprise""#);
    has(&e, r#"rule[1] "b": kind: expected "sequence", "absence" or "count", got string "pattern""#);
    has(&e, r#"rule[1] "b": within: "0s" must be positive"#);
    has(&e, "rule[2]: name: missing");
    has(&e, r#"rule[2]: within: expected a duration string such as "30m", got integer 30"#);
    has(&e, "rule[2]: at_least: missing");
    has(&e, r#"rule[3] "b": name: "b" is already used by rule[1]"#);
    has(&e, r#"rule[3] "b": within: "20000d" is too long"#);
    has(&e, r#"rule[3] "b": followed_by: missing"#);
    assert_eq!(e.len(), 19, "{e:#?}");
}

#[test]
fn predicate_problems_carry_their_path() {
    let e = errors(
        r#"
        [[rule]]
        name = "p"
        kind = "sequence"
        within = "1h"
        steps = [
            { channel = ["APP", "PHONE"], colour = "x" },
            { event_type = [], outcome = ["ok", 1], attrs = { screen = [] , "" = "x" } },
            "APP",
            { attrs = "screen" },
        ]

        [[rule]]
        name = "q"
        kind = "count"
        within = "1h"
        at_least = 0
        match = { topic = 3 }

        [[rule]]
        name = "r"
        kind = "sequence"
        within = "1h"
        steps = { channel = "APP" }

        [[rule]]
        name = "s"
        kind = "absence"
        within = "1h"
        trigger = []
        followed_by = {}
        "#,
    );
    has(&e, r#"rule[0] "p": steps[0].channel: "PHONE" is not a channel (one of APP, WEB, IVR"#);
    has(&e, r#"rule[0] "p": steps[0]: unknown key "colour""#);
    has(&e, r#"rule[0] "p": steps[1].event_type: an empty list matches nothing"#);
    has(&e, r#"rule[0] "p": steps[1].outcome[1]: expected a string, got integer 1"#);
    has(&e, r#"rule[0] "p": steps[1].attrs.screen: an empty list matches nothing"#);
    has(&e, r#"rule[0] "p": steps[1].attrs: empty attribute key"#);
    has(&e, r#"rule[0] "p": steps[2]: expected a predicate table"#);
    has(&e, r#"rule[0] "p": steps[3].attrs: expected a table"#);
    has(&e, r#"rule[1] "q": at_least: expected an integer >= 1, got integer 0"#);
    has(&e, r#"rule[1] "q": match.topic: expected a string or a list of strings, got integer 3"#);
    has(&e, r#"rule[2] "r": steps: expected a list of predicate tables, got a table"#);
    has(&e, r#"rule[3] "s": trigger: expected a predicate table"#);
    assert_eq!(e.len(), 12, "{e:#?}");
}

#[test]
fn rule_must_be_an_array_of_tables() {
    has(&errors("rule = 3\n"), "rule: expected [[rule]] tables, got integer 3");
    has(&errors("rule = [1]\n"), "rule[0]: expected a table, got integer 1");
    has(&errors("[[rule]]\nname = \"x\"\n"), r#"rule[0] "x": kind: missing"#);
}

#[test]
fn errors_display_one_per_line_and_load_prefixes_the_path() {
    let e = RuleSet::from_toml("[[rule]]\nname = \"a\"\n").expect_err("kind and within are missing");
    let text = e.to_string();
    assert_eq!(text.lines().count(), e.0.len());
    assert!(e.0.len() >= 2);
    let dir = std::env::temp_dir().join(format!("detect-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[rule]]\nname = \"a\"\n").expect("write rules");
    let e = RuleSet::load(&path).expect_err("invalid rules");
    assert!(e.0.iter().all(|p| p.starts_with(&format!("{}: rule[0] \"a\": ", path.display()))), "{e}");
    let e = RuleSet::load(&dir.join("missing.toml")).expect_err("no such file");
    assert!(e.0[0].contains("cannot read"), "{e}");
    std::fs::write(&path, BUILTIN).expect("write rules");
    assert_eq!(RuleSet::load(&path).expect("built-in rules").rules().len(), 8);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn fingerprint_follows_meaning_not_layout() {
    let a = rules("[[rule]]\nname = \"a\"\nkind = \"count\"\nwithin = \"1h\"\nat_least = 2\nmatch = { channel = \"APP\" }\n");
    let b = rules("# comment\n[[rule]]\nmatch = {channel=\"APP\"}\nat_least = 2\nwithin = \"60m\"\nkind = \"count\"\nname = \"a\"\n");
    let c = rules("[[rule]]\nname = \"a\"\nkind = \"count\"\nwithin = \"1h\"\nat_least = 3\nmatch = { channel = \"APP\" }\n");
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn predicates_match_lists_nulls_and_attrs() {
    let r = rules(
        r#"
        [[rule]]
        name = "a"
        kind = "count"
        within = "1h"
        at_least = 1
        match = { channel = ["APP", "WEB"], outcome = ["error", "failed"], attrs = { screen = ["pay", "topup"] } }
        "#,
    );
    let p = match &r.rules()[0].kind {
        RuleKind::Count { predicate, .. } => predicate.clone(),
        _ => unreachable!(),
    };
    let mut e = raw(0, "e", Channel::Web, "error");
    e.outcome = Some("failed".into());
    e.attrs.insert("screen".into(), "topup".into());
    e.attrs.insert("other".into(), "ignored".into());
    let d = DetectEvent::from_event(&e, &r);
    assert_eq!(d.attrs.len(), 1, "only attributes a rule reads are kept");
    assert!(p.matches(&d));
    e.outcome = None;
    assert!(!p.matches(&DetectEvent::from_event(&e, &r)), "a null field never matches");
    e.outcome = Some("error".into());
    e.attrs.clear();
    assert!(!p.matches(&DetectEvent::from_event(&e, &r)), "a missing attribute never matches");
    assert!(Predicate::default().matches(&d), "{{}} matches everything");
}

// ---------------------------------------------------------------- semantics

const SEQ: &str = r#"
[[rule]]
name = "seq"
kind = "sequence"
within = "10ms"
steps = [{ channel = "APP" }, { channel = "IVR" }, { event_type = "contact.start" }]
"#;

#[test]
fn sequence_takes_the_latest_earlier_events_and_one_hit_per_last_event() {
    let r = rules(SEQ);
    let evs = vec![
        ev(&r, 0, "a1", Channel::App, "x", None, None),
        ev(&r, 1, "a2", Channel::App, "x", None, None),
        ev(&r, 2, "i1", Channel::Ivr, "x", None, None),
        ev(&r, 3, "i2", Channel::Ivr, "x", None, None),
        ev(&r, 4, "c1", Channel::ContactCentre, "contact.start", None, None),
        ev(&r, 5, "c2", Channel::Chat, "contact.start", None, None),
    ];
    let hits = evaluate(&r, "k", &evs);
    assert_eq!(
        summary(&hits),
        vec![("seq".into(), "c1".into(), ids(&["a2", "i2", "c1"]), 4), ("seq".into(), "c2".into(), ids(&["a2", "i2", "c2"]), 5)]
    );
    assert_eq!(hits[0].hit.path, "APP>IVR>CONTACT_CENTRE");
    assert_eq!(hits[0].channel, Channel::ContactCentre);
    assert_eq!(hits[0].hit.hit_id, hit_id("seq", 1, "k", "c1"));
    assert_eq!(hits[0].hit.hit_id.len(), 32);
    assert_eq!(hits[0].hit.severity, "warning");
    assert_eq!(hits[0].hit.session_id, None);
}

#[test]
fn hit_ids_hash_rule_version_customer_and_trigger() {
    use crate::sessionize::fnv1a;
    for (rule, version, customer, trigger) in
        [("app_then_call", 1, "c:42", "evt-1"), ("r", 4_000_000_000, "", ""), ("x_y", 10, "m:ü", "é/1")]
    {
        let a = format!("{rule}/{version}");
        let b = format!("{customer}/{trigger}");
        let want = format!("{:016x}{:016x}", fnv1a(a.as_bytes(), b.as_bytes(), 0), fnv1a(a.as_bytes(), b.as_bytes(), 1));
        assert_eq!(hit_id(rule, version, customer, trigger), want);
    }
    assert_ne!(hit_id("r", 1, "c", "e"), hit_id("r", 2, "c", "e"), "a new rule version starts new hits");
}

#[test]
fn sequence_window_is_inclusive_and_steps_strictly_increase() {
    let r = rules(SEQ);
    let at = |t0: i64| {
        vec![
            ev(&r, t0, "a", Channel::App, "x", None, None),
            ev(&r, 5, "i", Channel::Ivr, "x", None, None),
            ev(&r, 10, "c", Channel::Ivr, "contact.start", None, None),
        ]
    };
    assert_eq!(evaluate(&r, "k", &at(0)).len(), 1, "exactly `within` apart is a hit");
    assert_eq!(evaluate(&r, "k", &at(-1)).len(), 0, "1 ms more is not");
    // An IVR contact.start matches steps 2 and 3, but one event is never two steps.
    let one = vec![ev(&r, 0, "a", Channel::App, "x", None, None), ev(&r, 1, "c", Channel::Ivr, "contact.start", None, None)];
    assert!(evaluate(&r, "k", &one).is_empty());
}

#[test]
fn ties_in_time_are_ordered_by_id() {
    let r = rules(SEQ);
    // Same time: "b" < "c" so the app event "b" precedes IVR "c", but IVR "a" precedes app "b".
    let evs = vec![
        ev(&r, 5, "c", Channel::Ivr, "x", None, None),
        ev(&r, 5, "b", Channel::App, "x", None, None),
        ev(&r, 5, "a", Channel::Ivr, "x", None, None),
        ev(&r, 5, "d", Channel::ContactCentre, "contact.start", None, None),
    ];
    assert_eq!(summary(&evaluate(&r, "k", &evs)), vec![("seq".into(), "d".into(), ids(&["b", "c", "d"]), 5)]);
    let evs = vec![
        ev(&r, 5, "c", Channel::App, "x", None, None),
        ev(&r, 5, "b", Channel::Ivr, "x", None, None),
        ev(&r, 5, "d", Channel::ContactCentre, "contact.start", None, None),
    ];
    assert!(evaluate(&r, "k", &evs).is_empty(), "the IVR event sorts before the app event");
}

#[test]
fn same_requires_equal_non_null_values() {
    let r = rules(
        r#"
        [[rule]]
        name = "rep"
        kind = "sequence"
        within = "1h"
        same = ["topic"]
        steps = [{ event_type = "contact.start" }, { event_type = "contact.start" }]
        "#,
    );
    let evs = vec![
        ev(&r, 0, "a", Channel::Chat, "contact.start", Some("bill"), None),
        ev(&r, 1, "b", Channel::Chat, "contact.start", Some("roam"), None),
        ev(&r, 2, "c", Channel::Chat, "contact.start", None, None),
        ev(&r, 3, "d", Channel::Chat, "contact.start", None, None),
        ev(&r, 4, "e", Channel::Chat, "contact.start", Some("bill"), None),
    ];
    // "e" pairs with "a" (not the later "b"/"c"/"d"); null topics never pair, even with each other.
    assert_eq!(summary(&evaluate(&r, "k", &evs)), vec![("rep".into(), "e".into(), ids(&["a", "e"]), 4)]);
}

const ABS: &str = r#"
[[rule]]
name = "abs"
kind = "absence"
within = "10ms"
same = ["topic"]
trigger = { event_type = "contact.start" }
followed_by = { outcome = "resolved" }
"#;

#[test]
fn absence_boundaries_order_and_same() {
    let r = rules(ABS);
    let t = |id: &str, time: i64, topic: Option<&str>| ev(&r, time, id, Channel::ContactCentre, "contact.start", topic, None);
    let f = |id: &str, time: i64, topic: Option<&str>| ev(&r, time, id, Channel::App, "x", topic, Some("resolved"));
    // Follower exactly `within` later: no hit; 1 ms later: a hit at trigger + within.
    assert!(evaluate(&r, "k", &[t("t", 0, Some("a")), f("f", 10, Some("a"))]).is_empty());
    assert_eq!(
        summary(&evaluate(&r, "k", &[t("t", 0, Some("a")), f("f", 11, Some("a"))])),
        vec![("abs".into(), "t".into(), ids(&["t"]), 10)]
    );
    // Same time: only a follower ordered after the trigger (larger id) counts.
    assert!(evaluate(&r, "k", &[t("t", 0, Some("a")), f("u", 0, Some("a"))]).is_empty());
    assert_eq!(evaluate(&r, "k", &[t("t", 0, Some("a")), f("s", 0, Some("a"))]).len(), 1);
    // Different topic does not resolve. Null equals nothing: a trigger without a topic has
    // no follower, not even one without a topic either, so it is a hit.
    assert_eq!(evaluate(&r, "k", &[t("t", 0, Some("a")), f("f", 1, Some("b"))]).len(), 1);
    assert_eq!(summary(&evaluate(&r, "k", &[t("t", 0, None)])), vec![("abs".into(), "t".into(), ids(&["t"]), 10)]);
    assert_eq!(summary(&evaluate(&r, "k", &[t("t", 0, None), f("f", 1, None), f("g", 2, Some("a"))])).len(), 1);
    // An event both trigger and follower does not follow itself.
    let both = ev(&r, 0, "t", Channel::Chat, "contact.start", Some("a"), Some("resolved"));
    assert_eq!(evaluate(&r, "k", &[both]).len(), 1);
}

const COUNT: &str = r#"
[[rule]]
name = "storm"
kind = "count"
within = "10ms"
at_least = 3
match = { event_type = "contact.start" }
"#;

#[test]
fn count_reaches_and_exceeds_its_threshold_within_the_window() {
    let r = rules(COUNT);
    let c = |id: &str, time: i64| ev(&r, time, id, Channel::Chat, "contact.start", None, None);
    let evs = vec![c("a", 0), c("b", 5), c("c", 10), c("d", 11), c("d", 11), ev(&r, 12, "x", Channel::App, "y", None, None)];
    assert_eq!(
        summary(&evaluate(&r, "k", &evs)),
        vec![("storm".into(), "c".into(), ids(&["a", "b", "c"]), 10), ("storm".into(), "d".into(), ids(&["b", "c", "d"]), 11)]
    );
}

#[test]
fn duplicates_count_once_and_input_order_does_not_matter() {
    let r = rules(BUILTIN);
    let mut evs = vec![
        ev(&r, 0, "a", Channel::App, "app.open", Some("bill"), None),
        ev(&r, 10 * MIN, "b", Channel::ContactCentre, "contact.start", Some("bill"), None),
        ev(&r, 10 * MIN, "b", Channel::ContactCentre, "contact.start", Some("bill"), None),
        ev(&r, 11 * MIN, "c", Channel::ContactCentre, "contact.end", Some("bill"), Some("resolved")),
    ];
    let forward = evaluate(&r, "k", &evs);
    evs.reverse();
    assert_eq!(evaluate(&r, "k", &evs), forward);
    assert_eq!(summary(&forward), vec![("app_then_call".into(), "b".into(), ids(&["a", "b"]), 10 * MIN)]);
}

// ---------------------------------------------------------------- streaming

/// A session lookup that answers from a fixed map (trigger id -> session).
struct Fixed(BTreeMap<String, String>);

impl SessionLookup for Fixed {
    fn session_of(&self, _: &str, _: i64, id: &str) -> Option<String> {
        self.0.get(id).cloned()
    }
}

#[test]
fn in_order_hits_are_emitted_at_once_and_absence_after_the_watermark() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}")));
    let mut d = Detector::new(r.clone(), 100);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.advance(1, &s, &mut out);
    d.admit("k", ev(&r, 2, "c", Channel::ContactCentre, "contact.start", Some("t"), None), &s, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].hit.rule, "seq");
    assert_eq!(out[0].hit.version, 1);
    out.clear();
    d.advance(12, &s, &mut out);
    assert!(out.is_empty(), "watermark == trigger + within: a follower may still come");
    d.advance(13, &s, &mut out);
    assert_eq!(summary(&out), vec![("abs".into(), "c".into(), ids(&["c"]), 12)]);
    assert_eq!(out[0].hit.path, "CONTACT_CENTRE");
}

#[test]
fn late_follower_retracts_an_emitted_absence_and_a_late_step_changes_a_sequence() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}")));
    let mut d = Detector::new(r.clone(), 100);
    d.set_version_floor(5);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 3, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 5, "c", Channel::ContactCentre, "contact.start", Some("t"), None), &s, &mut out);
    d.advance(30, &s, &mut out);
    assert_eq!(out.iter().map(|h| (h.hit.rule.as_str(), h.hit.version)).collect::<Vec<_>>(), [("seq", 5), ("abs", 5)]);
    out.clear();
    // A resolution 10 ms after the trigger arrives late: the absence hit is retracted.
    d.set_version_floor(6);
    d.admit("k", ev(&r, 15, "r", Channel::App, "y", Some("t"), Some("resolved")), &s, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].hit.retracted && out[0].hit.rule == "abs" && out[0].hit.version == 6);
    out.clear();
    // A later app event arrives late: the sequence now starts there.
    d.admit("k", ev(&r, 1, "a2", Channel::App, "x", None, None), &s, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].hit.matched_event_ids, ids(&["a2", "i", "c"]));
    assert_eq!(out[0].hit.version, 6);
    out.clear();
    d.admit("k", ev(&r, 1, "a2", Channel::App, "x", None, None), &s, &mut out);
    assert!(out.is_empty());
    assert!(!d.admit("k", ev(&r, 1, "a2", Channel::App, "x", None, None), &s, &mut out), "duplicate");
}

#[test]
fn a_retracted_hit_that_reappears_gets_a_higher_version() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}")));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "c", Channel::ContactCentre, "contact.start", Some("t"), None), &s, &mut out);
    d.advance(100, &s, &mut out);
    d.admit("k", ev(&r, 5, "r", Channel::App, "y", Some("t"), Some("resolved")), &s, &mut out);
    // Same trigger id re-appearing is impossible, but a tombstone must also survive restores.
    let snap = d.snapshot("k").expect("customer has state");
    assert_eq!(decode_snapshot(&encode_snapshot(&snap)).expect("round trip"), snap);
    let versions: Vec<(i64, bool)> = out.iter().map(|h| (h.hit.version, h.hit.retracted)).collect();
    assert_eq!(versions, [(1, false), (2, true)]);
    assert!(snap.emitted.iter().any(|e| e.hit.hit.retracted), "tombstone kept");
}

#[test]
fn session_ids_come_from_the_lookup_and_follow_recuts() {
    let r = Arc::new(rules(SEQ));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let mut s = Fixed(BTreeMap::from([("c".to_string(), "s1".to_string())]));
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 2, "c", Channel::ContactCentre, "contact.start", None, None), &s, &mut out);
    assert_eq!(out[0].hit.session_id.as_deref(), Some("s1"));
    out.clear();
    s.0.insert("c".into(), "s0".into());
    d.note_recut("k", &s, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].hit.session_id.as_deref(), out[0].hit.version), (Some("s0"), 2));
    out.clear();
    d.note_recut("k", &s, &mut out);
    assert!(out.is_empty(), "nothing changed");
    // An irrelevant event before the hit re-reads sessions too.
    s.0.insert("c".into(), "s9".into());
    d.admit("k", ev(&r, 1, "z", Channel::Sms, "x", None, None), &s, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].hit.session_id.as_deref(), Some("s9"));
}

#[test]
fn absence_hits_remember_the_session_the_store_forgot() {
    let r = Arc::new(rules(ABS));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let s = Fixed(BTreeMap::from([("t".to_string(), "s1".to_string())]));
    d.admit("k", ev(&r, 0, "t", Channel::ContactCentre, "contact.start", Some("x"), None), &s, &mut out);
    d.advance(100, &Fixed(BTreeMap::new()), &mut out);
    assert_eq!(out[0].hit.session_id.as_deref(), Some("s1"));
}

#[test]
fn state_is_bounded_by_horizon_plus_window() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}{COUNT}")));
    let horizon = 50;
    let mut d = Detector::new(r.clone(), horizon);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 0, "sms", Channel::Sms, "x", None, None), &s, &mut out);
    assert_eq!(d.retained_events(), 1, "events no rule can use are not kept");
    d.advance(horizon + 10, &s, &mut out);
    assert_eq!(d.retained_events(), 1, "watermark - horizon - window == event time: still kept");
    d.advance(horizon + 11, &s, &mut out);
    assert_eq!(d.retained_events(), 0);
    assert_eq!(d.customers(), 0, "an empty customer is dropped");
    // A hit record stays until its detection time is beyond the horizon.
    d.admit("k", ev(&r, 100, "c1", Channel::Chat, "contact.start", None, None), &s, &mut out);
    d.admit("k", ev(&r, 101, "c2", Channel::Chat, "contact.start", None, None), &s, &mut out);
    d.admit("k", ev(&r, 102, "c3", Channel::Chat, "contact.start", None, None), &s, &mut out);
    assert_eq!(out.len(), 1);
    d.flush_all(&s, &mut out);
    assert_eq!(d.customers(), 0);
    assert_eq!(d.retained_events(), 0);
}

#[test]
fn take_customer_retracts_live_hits_and_dirty_keys_are_reported() {
    let r = Arc::new(rules(SEQ));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 2, "c", Channel::ContactCentre, "contact.start", None, None), &s, &mut out);
    d.admit("other", ev(&r, 2, "sms", Channel::Sms, "x", None, None), &s, &mut out);
    assert_eq!(d.take_dirty(), ["k"]);
    assert!(d.take_dirty().is_empty());
    out.clear();
    d.set_version_floor(9);
    d.take_customer("k", &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].hit.retracted);
    assert_eq!(out[0].hit.version, 9);
    assert_eq!(d.customers(), 0);
    assert_eq!(d.take_dirty(), ["k"], "the checkpoint must forget it");
    // Within one flush: changed, removed, created again, and another customer in between:
    // each key once, in the order first changed.
    d.admit("k", ev(&r, 3, "c2", Channel::ContactCentre, "contact.start", None, None), &s, &mut out);
    d.admit("j", ev(&r, 3, "c3", Channel::ContactCentre, "contact.start", None, None), &s, &mut out);
    d.take_customer("k", &mut out);
    d.admit("k", ev(&r, 4, "c4", Channel::ContactCentre, "contact.start", None, None), &s, &mut out);
    d.take_customer("k", &mut out);
    assert_eq!(d.take_dirty(), ["k", "j"]);
    assert!(d.take_dirty().is_empty());
}

#[test]
fn snapshot_restore_continues_where_it_stopped() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}")));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let s = Fixed(BTreeMap::from([("c".to_string(), "s1".to_string())]));
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 2, "c", Channel::ContactCentre, "contact.start", Some("t"), None), &s, &mut out);
    d.advance(5, &s, &mut out);
    let snap = d.snapshot("k").expect("customer has state");
    assert_eq!(snap.pending.len(), 1);
    assert_eq!(snap.pending[0].session_hint.as_deref(), Some("s1"));
    let bytes = encode_snapshot(&snap);
    assert_eq!(bytes[0], 1, "format byte");
    let mut e = Detector::new(r.clone(), 1000);
    e.restore_watermark(d.watermark());
    e.restore(decode_snapshot(&bytes).expect("round trip"));
    assert!(e.take_dirty().is_empty(), "restored state is already checkpointed");
    assert_eq!(e.snapshot("k"), Some(snap));
    let mut out2 = Vec::new();
    e.advance(20, &NoSessions, &mut out2);
    assert_eq!(out2.len(), 1);
    assert_eq!(out2[0].hit.rule, "abs");
    assert_eq!(out2[0].hit.session_id.as_deref(), Some("s1"));
    // A late step corrects the restored sequence hit with the next version.
    e.admit("k", ev(&r, 1, "a2", Channel::App, "x", None, None), &s, &mut out2);
    assert_eq!(out2.last().expect("a correction").hit.version, 2);
    assert_eq!(out2.last().expect("a correction").hit.matched_event_ids, ids(&["a2", "i", "c"]));
}

#[test]
fn set_rules_applies_from_now_on_and_keeps_emitted_hits() {
    let r = Arc::new(rules(&format!("{SEQ}{ABS}")));
    let mut d = Detector::new(r.clone(), 1000);
    let mut out = Vec::new();
    let s = NoSessions;
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 2, "c", Channel::ContactCentre, "contact.start", Some("t"), None), &s, &mut out);
    assert_eq!(out.len(), 1);
    let only_count = Arc::new(rules(COUNT));
    d.set_rules(only_count.clone());
    assert_ne!(r.fingerprint(), only_count.fingerprint());
    out.clear();
    // A late event would have changed the old sequence hit; the hit stays as emitted.
    d.admit("k", ev(&r, 1, "a2", Channel::App, "x", None, None), &s, &mut out);
    d.admit("k", ev(&r, 3, "c2", Channel::Chat, "contact.start", None, None), &s, &mut out);
    d.admit("k", ev(&r, 4, "c3", Channel::Chat, "contact.start", None, None), &s, &mut out);
    d.flush_all(&s, &mut out);
    assert_eq!(summary(&out), vec![("storm".into(), "c3".into(), ids(&["c", "c2", "c3"]), 4)]);
}

fn arb_opt() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z:/ ]{0,6}")
}

fn arb_event() -> impl Strategy<Value = DetectEvent> {
    (
        any::<i64>(),
        "[a-z0-9]{1,8}",
        0usize..12,
        "[a-z.]{0,10}",
        arb_opt(),
        arb_opt(),
        arb_opt(),
        arb_opt(),
        arb_opt(),
        proptest::collection::vec(("[a-z]{1,4}", "[a-z]{0,4}"), 0..3),
    )
        .prop_map(|(time, id, ch, et, outcome, topic, line, region, agent, attrs)| DetectEvent {
            time,
            id: Arc::from(id.as_str()),
            channel: Channel::ALL[ch],
            event_type: Arc::from(et.as_str()),
            outcome: outcome.map(|s| Arc::from(s.as_str())),
            topic: topic.map(|s| Arc::from(s.as_str())),
            line: line.map(|s| Arc::from(s.as_str())),
            region: region.map(|s| Arc::from(s.as_str())),
            agent_id: agent.map(|s| Arc::from(s.as_str())),
            attrs: attrs.into_iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str()))).collect(),
        })
}

fn arb_hit() -> impl Strategy<Value = EmittedHit> {
    (
        ("[0-9a-f]{32}", "[a-z_]{1,10}", any::<i32>(), "[a-z:0-9]{1,6}", arb_opt(), any::<i64>(), "[a-z0-9]{1,6}"),
        (proptest::collection::vec("[a-z0-9]{1,6}", 0..4), "[A-Z>]{0,20}", arb_opt(), "[a-z]{4,8}", any::<i64>(), any::<bool>()),
        (0usize..12, arb_opt(), any::<i64>()),
    )
        .prop_map(
            |(
                (hit_id, rule, rule_version, customer_id, session_id, event_time, trigger_event_id),
                (matched_event_ids, path, topic, severity, version, retracted),
                (ch, region, trigger_time),
            )| EmittedHit {
                hit: DetectedHit {
                    hit: Arc::new(journey_schemas::ScenarioHit {
                        hit_id,
                        rule,
                        rule_version,
                        customer_id,
                        session_id,
                        event_time,
                        trigger_event_id,
                        matched_event_ids,
                        path,
                        topic,
                        severity,
                        version,
                        retracted,
                    }),
                    channel: Channel::ALL[ch],
                    region,
                },
                trigger_time,
            },
        )
}

fn arb_snapshot() -> impl Strategy<Value = DetectSnapshot> {
    (
        "[a-z:0-9]{1,6}",
        proptest::collection::vec(arb_event(), 0..5),
        proptest::collection::vec(("[a-z_]{1,8}", 1u32..5, any::<i64>(), "[a-z0-9]{1,6}", arb_opt()), 0..3),
        proptest::collection::vec(arb_hit(), 0..4),
    )
        .prop_map(|(key, events, pending, emitted)| DetectSnapshot {
            key,
            events,
            pending: pending
                .into_iter()
                .map(|(rule, rule_version, trigger_time, trigger_id, session_hint)| PendingAbsence {
                    rule,
                    rule_version,
                    trigger_time,
                    trigger_id,
                    session_hint,
                })
                .collect(),
            emitted,
        })
}

proptest! {
    #[test]
    fn snapshots_round_trip(snap in arb_snapshot()) {
        let bytes = encode_snapshot(&snap);
        prop_assert_eq!(decode_snapshot(&bytes).expect("round trip"), snap);
        // Every strict prefix is an error, never a panic.
        for n in 0..bytes.len() {
            prop_assert!(decode_snapshot(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_snapshot(&bytes);
    }
}

#[test]
fn unknown_snapshot_formats_are_refused() {
    assert!(decode_snapshot(&[2]).expect_err("format 2").contains("format 2"));
    assert!(decode_snapshot(&[]).is_err());
    let mut bytes = encode_snapshot(&DetectSnapshot { key: "k".into(), ..Default::default() });
    bytes.push(0);
    assert!(decode_snapshot(&bytes).expect_err("trailing byte").contains("trailing"));
}

#[test]
fn sessionizer_lookup_finds_the_session_of_an_event() {
    use crate::sessionize::{session_id, SessionEvent, SessionParams, Sessionizer};
    let p = SessionParams { gap_ms: 10, max_duration_ms: 25, horizon_ms: 1000 };
    let mut z = Sessionizer::new(p);
    let mut out = Vec::new();
    let se = |t: i64, id: &str| SessionEvent {
        time: t,
        id: id.into(),
        channel: Channel::App,
        topic: None,
        region: None,
        assisted: false,
        id_tag: 0,
        offset: 0,
        payload: None,
        moves: 0,
    };
    for (t, id) in [(0, "a"), (5, "b"), (20, "c"), (24, "d"), (30, "e")] {
        z.admit("k", se(t, id), &mut out);
    }
    // Cuts: [a b] (gap 15 >= 10), then [c d e]; e is 10 after c... 30 - 20 = 10 <= 25: same run.
    let lookup: &dyn SessionLookup = &z;
    assert_eq!(lookup.session_of("k", 5, "b"), Some(session_id("k", "a")));
    assert_eq!(lookup.session_of("k", 30, "e"), Some(session_id("k", "c")));
    assert_eq!(lookup.session_of("k", 31, "e"), None);
    assert_eq!(lookup.session_of("x", 5, "b"), None);
    // The form the detector keeps for an absence trigger names the same session, as hashes.
    for (t, id) in [(0, "a"), (5, "b"), (24, "d"), (30, "e")] {
        let r = lookup.session_ref_of("k", t, id).expect("retained event");
        assert!(matches!(r, SessionRef::Hashed(..)), "{r:?}");
        assert_eq!(Some(r.text()), lookup.session_of("k", t, id));
    }
    assert_eq!(lookup.session_ref_of("k", 31, "e"), None);
}

#[test]
fn a_session_ref_has_one_form_per_id_and_spells_it_back() {
    let hex = crate::sessionize::session_id("k", "a");
    for id in
        [hex.as_str(), "s1", "", "0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcde", "g123456789abcdef0123456789abcdef"]
    {
        let r = SessionRef::from_text(id);
        assert_eq!(r.text(), id);
        assert_eq!(SessionRef::from_text(&r.text()), r);
        // Only 32 lower-case hex digits are held as hashes: any other id keeps its text.
        assert_eq!(matches!(r, SessionRef::Hashed(..)), id == hex, "{id:?}");
    }
    assert_ne!(SessionRef::from_text(&hex), SessionRef::from_text(&crate::sessionize::session_id("k", "b")));
}

/// Latest non-retracted record of every hit id, summarised.
fn latest(out: &[DetectedHit]) -> Vec<(String, String, Vec<String>, i64)> {
    let mut by_id: BTreeMap<String, &DetectedHit> = BTreeMap::new();
    for h in out {
        by_id.insert(h.hit.hit_id.clone(), h);
    }
    let live: Vec<DetectedHit> = by_id.values().filter(|h| !h.hit.retracted).map(|h| (*h).clone()).collect();
    summary(&live)
}

#[test]
fn many_distinct_values_are_collected_and_compare_as_before() {
    // Every customer has its own topics, so the detector's table of values passes its
    // collection threshold many times while events expire; `same` must still pair them.
    let r = Arc::new(rules(
        r#"
        [[rule]]
        name = "rep"
        kind = "sequence"
        within = "10ms"
        same = ["topic"]
        steps = [{ event_type = "contact.start" }, { event_type = "contact.start" }]
        "#,
    ));
    let mut d = Detector::new(r.clone(), 20);
    let mut out = Vec::new();
    let s = NoSessions;
    let mut all: BTreeMap<String, Vec<DetectEvent>> = BTreeMap::new();
    for i in 0..30_000i64 {
        let customer = format!("k{}", (i / 3) % 5);
        let topic = format!("t{}", i / 3);
        let e = ev(&r, i, &format!("e{i:06}"), Channel::Chat, "contact.start", Some(&topic), None);
        all.entry(customer.clone()).or_default().push(e.clone());
        d.admit(&customer, e, &s, &mut out);
        d.advance(i, &s, &mut out);
    }
    d.flush_all(&s, &mut out);
    let batch: Vec<DetectedHit> = all.iter().flat_map(|(c, evs)| evaluate(&r, c, evs)).collect();
    assert!(!batch.is_empty());
    assert_eq!(latest(&out), summary(&batch));
}

#[test]
fn attributes_and_other_same_fields_stream_as_in_batch() {
    // Attribute predicates and `same` on attributes, agent, channel and line go through the
    // detector's compact events (admit_event, raw events) and must agree with the batch result.
    let r = Arc::new(rules(
        r#"
        [[rule]]
        name = "screen_then_call"
        kind = "sequence"
        within = "1h"
        same = ["attrs.screen", "agent_id"]
        steps = [{ attrs = { screen = ["pay", "topup"] } }, { event_type = "contact.start", line = "front" }]

        [[rule]]
        name = "same_channel"
        kind = "count"
        within = "1h"
        at_least = 2
        same = ["channel", "line"]
        match = { event_type = "contact.start" }
        "#,
    ));
    let mut raws = Vec::new();
    for i in 0..60i64 {
        let mut e = raw(i * MIN, &format!("e{i:03}"), if i % 3 == 0 { Channel::App } else { Channel::ContactCentre }, "x");
        e.customer_id = Some(format!("c{}", i % 4));
        if i % 3 == 0 {
            e.attrs.insert("screen".into(), if i % 2 == 0 { "pay".into() } else { "topup".into() });
            e.attrs.insert("other".into(), "ignored".into());
        } else {
            e.event_type = "contact.start".into();
            e.line = Some(if i % 5 == 0 { "back".into() } else { "front".into() });
            e.attrs.insert("screen".into(), if i % 4 == 1 { "pay".into() } else { "topup".into() });
        }
        e.agent_id = (i % 7 != 0).then(|| format!("agent-{}", i % 2));
        raws.push(e);
    }
    // Late arrivals too: every fifth event comes after the next four.
    raws.swap(5, 9);
    raws.swap(20, 24);
    let mut d = Detector::new(r.clone(), 24 * HOUR);
    let mut out = Vec::new();
    let mut all: BTreeMap<String, Vec<DetectEvent>> = BTreeMap::new();
    for e in &raws {
        let customer = e.customer_id.clone().unwrap_or_default();
        all.entry(customer.clone()).or_default().push(DetectEvent::from_event(e, &r));
        d.admit_event(&customer, e, &NoSessions, &mut out);
        d.advance(e.event_time - 5 * MIN, &NoSessions, &mut out);
    }
    // A snapshot round trip of every customer keeps the same answers.
    let mut e2 = Detector::new(r.clone(), 24 * HOUR);
    e2.restore_watermark(d.watermark());
    for c in all.keys() {
        if let Some(snap) = d.snapshot(c) {
            e2.restore(decode_snapshot(&encode_snapshot(&snap)).expect("round trip"));
            assert_eq!(e2.snapshot(c), Some(snap));
        }
    }
    d.flush_all(&NoSessions, &mut out);
    let batch: Vec<DetectedHit> = all.iter().flat_map(|(c, evs)| evaluate(&r, c, evs)).collect();
    assert!(batch.iter().any(|h| h.hit.rule == "screen_then_call") && batch.iter().any(|h| h.hit.rule == "same_channel"));
    assert_eq!(latest(&out), summary(&batch));
}

#[test]
fn short_rules_on_what_the_sessionizer_keeps_are_served_from_it() {
    let builtin = Arc::new(rules(BUILTIN));
    // Windows of 30 and 10 minutes fit a 30-minute gap; bot_not_understood reads `outcome`,
    // error_then_contact's window (60 minutes) is longer than the gap.
    let d = Detector::beside_sessions(builtin.clone(), 24 * HOUR, 30 * MIN);
    assert_eq!(d.served_rules(), vec!["app_then_call", "ivr_to_agent"]);
    assert_eq!(Detector::beside_sessions(builtin.clone(), 24 * HOUR, 10 * MIN).served_rules(), vec!["ivr_to_agent"]);
    assert!(Detector::beside_sessions(builtin.clone(), 24 * HOUR, 5 * MIN).served_rules().is_empty());
    assert!(Detector::new(builtin, 24 * HOUR).served_rules().is_empty());
    // Other event types than contact.start, other `same` fields and other kinds stay with the detector.
    let r = Arc::new(rules(
        r#"
[[rule]]
name = "typed"
kind = "sequence"
within = "5m"
steps = [{ event_type = "app.open" }, { event_type = "contact.start" }]
[[rule]]
name = "same_region_is_kept_by_the_sessionizer_but_not_compared"
kind = "sequence"
within = "5m"
same = ["region"]
steps = [{ channel = "APP" }, { event_type = "contact.start" }]
[[rule]]
name = "topic_and_channel"
kind = "sequence"
within = "5m"
same = ["topic", "channel"]
steps = [{ channel = ["APP", "WEB"], topic = ["billing"] }, { event_type = "contact.start" }]
[[rule]]
name = "count"
kind = "count"
within = "5m"
at_least = 2
match = { channel = "APP" }
"#,
    ));
    assert_eq!(Detector::beside_sessions(r, 24 * HOUR, 30 * MIN).served_rules(), vec!["topic_and_channel"]);
}

#[test]
fn served_steps_are_not_kept_and_a_late_one_still_makes_its_hit() {
    use crate::sessionize::{SessionEvent, SessionParams, Sessionizer};
    let r = Arc::new(rules(BUILTIN));
    let p = SessionParams { gap_ms: 30 * MIN, max_duration_ms: 24 * HOUR, horizon_ms: 24 * HOUR };
    let mut z = Sessionizer::new(p);
    let mut d = Detector::beside_sessions(r.clone(), p.horizon_ms, p.gap_ms);
    let (mut sessions, mut out) = (Vec::new(), Vec::new());
    let t0 = 1_000 * HOUR;
    let mut feed = |z: &mut Sessionizer, d: &mut Detector, e: ChannelEvent, out: &mut Vec<DetectedHit>| {
        z.admit("c1", SessionEvent::from_event(&e), &mut sessions);
        d.admit_event("c1", &e, z, out);
    };
    // In order: an app event, then a call 20 minutes later. The detector keeps only the call.
    feed(&mut z, &mut d, raw(t0, "app1", Channel::App, "app.open"), &mut out);
    assert_eq!(d.retained_events(), 0, "an APP event matters only to served rules");
    feed(&mut z, &mut d, raw(t0 + 20 * MIN, "call1", Channel::ContactCentre, "contact.start"), &mut out);
    assert_eq!(d.retained_events(), 1);
    let hits: Vec<_> = out.iter().filter(|h| h.hit.rule == "app_then_call").map(|h| h.hit.matched_event_ids.clone()).collect();
    assert_eq!(hits, vec![ids(&["app1", "call1"])]);
    // A later app event that arrives late, between the two: the hit now names it (the latest
    // earlier step), with a higher version.
    out.clear();
    feed(&mut z, &mut d, raw(t0 + 10 * MIN, "app2", Channel::App, "app.open"), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].hit.matched_event_ids, ids(&["app2", "call1"]));
    assert!(out[0].hit.version > 1);
    // An IVR event arriving late, 5 minutes before the call, completes ivr_to_agent.
    out.clear();
    feed(&mut z, &mut d, raw(t0 + 15 * MIN, "ivr1", Channel::Ivr, "ivr.menu"), &mut out);
    assert_eq!(summary(&out), vec![("ivr_to_agent".to_string(), "call1".to_string(), ids(&["ivr1", "call1"]), t0 + 20 * MIN)]);
    assert_eq!(d.retained_events(), 1);
}

#[test]
#[should_panic(expected = "given the sessionizer")]
fn a_detector_beside_sessions_refuses_a_lookup_without_events() {
    let mut d = Detector::beside_sessions(Arc::new(rules(BUILTIN)), 24 * HOUR, 30 * MIN);
    let mut out = Vec::new();
    d.admit_event("c1", &raw(0, "call1", Channel::ContactCentre, "contact.start"), &NoSessions, &mut out);
}

#[test]
fn rule_sets_of_more_than_64_predicates_match_past_the_first_word() {
    // 40 rules of two steps each, every step on a topic of its own: 80 predicates, so an
    // event's predicate bits take two words, and the last rules' bits are all in the second.
    let text: String = (0..40)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\nkind = \"sequence\"\nwithin = \"10ms\"\nsame = [\"topic\"]\n\
                 steps = [{{ channel = \"APP\", topic = \"t{i}\" }}, {{ event_type = \"contact.start\", topic = \"t{i}\" }}]\n"
            )
        })
        .collect();
    let r = Arc::new(rules(&text));
    let evs = vec![
        ev(&r, 0, "a39", Channel::App, "x", Some("t39"), None),
        ev(&r, 1, "a0", Channel::App, "x", Some("t0"), None),
        ev(&r, 2, "c38", Channel::ContactCentre, "contact.start", Some("t38"), None),
        ev(&r, 3, "c39", Channel::ContactCentre, "contact.start", Some("t39"), None),
        ev(&r, 4, "c0", Channel::ContactCentre, "contact.start", Some("t0"), None),
    ];
    assert!(matches!(r.match_bits(&evs[3]), eval::Bits::Large(_)), "the bits do not fit one word");
    let want = vec![("r0".into(), "c0".into(), ids(&["a0", "c0"]), 4), ("r39".into(), "c39".into(), ids(&["a39", "c39"]), 3)];
    assert_eq!(summary(&evaluate(&r, "k", &evs)), want);
    let mut d = Detector::new(r.clone(), 100);
    let mut out = Vec::new();
    for e in evs {
        d.admit("k", e, &NoSessions, &mut out);
    }
    d.flush_all(&NoSessions, &mut out);
    assert_eq!(summary(&out), want);
}

#[test]
fn a_restored_key_is_unlisted_however_it_was_listed() {
    let r = Arc::new(rules(SEQ));
    let s = NoSessions;
    let mut out = Vec::new();
    let mut d = Detector::new(r.clone(), 1000);
    d.admit("k", ev(&r, 0, "a", Channel::App, "x", None, None), &s, &mut out);
    let snap = d.snapshot("k").expect("customer has state");
    d.take_dirty();
    // Listed through its slot; through its released slot; through a slot created again after
    // a release: in each case a restore of the key leaves only the other key listed.
    for i in 0..3 {
        d.admit("j", ev(&r, 3, &format!("j{i}"), Channel::Ivr, "x", None, None), &s, &mut out);
        match i {
            0 => {
                d.admit("k", ev(&r, 1, "i", Channel::Ivr, "x", None, None), &s, &mut out);
            }
            1 => d.take_customer("k", &mut out),
            _ => {
                d.take_customer("k", &mut out);
                d.admit("k", ev(&r, 2, "i2", Channel::Ivr, "x", None, None), &s, &mut out);
            }
        }
        d.restore(snap.clone());
        assert_eq!(d.take_dirty(), ["j"], "case {i}");
        assert_eq!(d.snapshot("k").as_ref(), Some(&snap), "case {i}");
    }
}
