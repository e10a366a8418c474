//! Golden scenario cases as data: `tests/golden/<case>/` at the repository root holds
//! `input.jsonl` (one `ChannelEvent` per line, in arrival order), `rules.toml` and
//! `expected.jsonl` (one hit per line: rule, customer_id, trigger_event_id, event_time,
//! matched_event_ids; sorted by rule, customer_id, event_time, trigger_event_id), and
//! optionally `emissions.jsonl` (every record the streaming detector emits, in order: rule,
//! customer_id, trigger_event_id, matched_event_ids, version, retracted).
//!
//! Fixed parameters for every case: the customer key is the event's `customer_id` (no
//! identity stitching), the watermark is the largest event time seen minus 5 minutes
//! (advanced after each event), the correction horizon is 24 hours, the version floor 1,
//! and no session store (hits carry no session id). Both the streaming detector (then
//! flushed) and the batch `evaluate` must produce exactly `expected.jsonl`.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use journey_pipeline::detect::{evaluate, DetectEvent, DetectedHit, Detector, NoSessions, RuleSet};
use journey_schemas::ChannelEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const LATENESS_MS: i64 = 5 * 60_000;
const HORIZON_MS: i64 = 24 * 3_600_000;

/// One line of `expected.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    rule: String,
    customer_id: String,
    event_time: i64,
    trigger_event_id: String,
    matched_event_ids: Vec<String>,
}

/// One line of `emissions.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Emission {
    rule: String,
    customer_id: String,
    trigger_event_id: String,
    matched_event_ids: Vec<String>,
    version: i64,
    retracted: bool,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

fn read(case: &str, file: &str) -> String {
    let path = golden_dir().join(case).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{case}: cannot read {}: {e}", path.display()))
}

fn lines<T: serde::de::DeserializeOwned>(case: &str, file: &str, text: &str) -> Vec<T> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{case}: {file} line {}: {e}", i + 1)))
        .collect()
}

fn expected_of(h: &DetectedHit) -> Expected {
    Expected {
        rule: h.hit.rule.clone(),
        customer_id: h.hit.customer_id.clone(),
        event_time: h.hit.event_time,
        trigger_event_id: h.hit.trigger_event_id.clone(),
        matched_event_ids: h.hit.matched_event_ids.clone(),
    }
}

fn show<T: Serialize>(rows: &[T]) -> String {
    rows.iter().map(|r| serde_json::to_string(r).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn run_case(case: &str) {
    let rules = match RuleSet::from_toml(&read(case, "rules.toml")) {
        Ok(r) => Arc::new(r),
        Err(e) => panic!("{case}: rules.toml:\n{e}"),
    };
    let input: Vec<ChannelEvent> = lines(case, "input.jsonl", &read(case, "input.jsonl"));
    let expected: Vec<Expected> = lines(case, "expected.jsonl", &read(case, "expected.jsonl"));
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(expected, sorted, "{case}: expected.jsonl must be sorted by rule, customer_id, event_time, trigger_event_id");

    // Streaming, in arrival order.
    let mut detector = Detector::new(rules.clone(), HORIZON_MS);
    let mut out = Vec::new();
    let mut max_seen = i64::MIN;
    let mut per_customer: BTreeMap<String, Vec<DetectEvent>> = BTreeMap::new();
    for (i, e) in input.iter().enumerate() {
        let customer = e.customer_id.clone().unwrap_or_else(|| panic!("{case}: input line {} has no customer_id", i + 1));
        if max_seen != i64::MIN {
            assert!(
                e.event_time >= max_seen - LATENESS_MS - HORIZON_MS,
                "{case}: input line {} is older than watermark - horizon; golden inputs stay within it",
                i + 1
            );
        }
        let ev = DetectEvent::from_event(e, &rules);
        per_customer.entry(customer.clone()).or_default().push(ev.clone());
        detector.admit(&customer, ev, &NoSessions, &mut out);
        max_seen = max_seen.max(e.event_time);
        detector.advance(max_seen - LATENESS_MS, &NoSessions, &mut out);
    }
    detector.flush_all(&NoSessions, &mut out);

    if let Ok(text) = std::fs::read_to_string(golden_dir().join(case).join("emissions.jsonl")) {
        let want: Vec<Emission> = lines(case, "emissions.jsonl", &text);
        let got: Vec<Emission> = out
            .iter()
            .map(|h| Emission {
                rule: h.hit.rule.clone(),
                customer_id: h.hit.customer_id.clone(),
                trigger_event_id: h.hit.trigger_event_id.clone(),
                matched_event_ids: h.hit.matched_event_ids.clone(),
                version: h.hit.version,
                retracted: h.hit.retracted,
            })
            .collect();
        assert!(got == want, "{case}: streaming emissions differ\n--- got\n{}\n--- expected\n{}", show(&got), show(&want));
    }

    let mut latest: BTreeMap<String, &DetectedHit> = BTreeMap::new();
    for h in &out {
        latest.insert(h.hit.hit_id.clone(), h);
    }
    let mut streamed: Vec<Expected> = latest.values().filter(|h| !h.hit.retracted).map(|h| expected_of(h)).collect();
    streamed.sort();
    assert!(streamed == expected, "{case}: streaming result differs\n--- got\n{}\n--- expected\n{}", show(&streamed), show(&expected));

    let mut batch: Vec<Expected> = per_customer.iter().flat_map(|(c, evs)| evaluate(&rules, c, evs)).map(|h| expected_of(&h)).collect();
    batch.sort();
    assert!(batch == expected, "{case}: batch result differs\n--- got\n{}\n--- expected\n{}", show(&batch), show(&expected));
}

macro_rules! golden {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                run_case(stringify!($case));
            }
        )*

        /// Every folder under tests/golden has its test above.
        #[test]
        fn every_golden_folder_is_listed() {
            let listed = [$(stringify!($case)),*];
            let mut folders: Vec<String> = std::fs::read_dir(golden_dir())
                .expect("tests/golden")
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            folders.sort();
            let mut listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
            listed.sort();
            assert_eq!(folders, listed, "add new golden folders to the golden! list in pipeline/tests/golden.rs");
        }
    };
}

golden!(
    sequence_basic,
    absence_basic,
    count_basic,
    count_reaches_and_exceeds,
    ties_order_by_id,
    window_boundaries,
    same_fields,
    disorder_shuffled,
    late_creates_hit,
    late_changes_matched_ids,
    late_cancels_absence,
    builtin_journey,
);

/// The built-in case runs the shipped rule file, not a copy that could drift.
#[test]
fn builtin_case_uses_the_shipped_rules() {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios.toml")).expect("config/scenarios.toml");
    assert_eq!(read("builtin_journey", "rules.toml"), shipped, "tests/golden/builtin_journey/rules.toml must equal config/scenarios.toml");
}
