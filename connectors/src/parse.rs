//! JSON events in the contract's field names -> `ChannelEvent`, with one precise reason per
//! rejection. Shared by HTTP ingest and file replay so both accept exactly the same input.
//!
//! `event_time` is RFC 3339 (any offset) or epoch milliseconds; `channel` is a contract symbol
//! (case-insensitive); `ingest_time` is set by the connector; a missing `event_id` is derived
//! from the event's content, so a re-sent or replayed event keeps its id and deduplicates.

use journey_schemas::validate::{validate_event, Limits, Rejection};
use journey_schemas::{Channel, ChannelEvent};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn reject(code: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection { code, detail: detail.into() }
}

/// The contract's field names accepted in JSON events.
pub const FIELDS: [&str; 14] = [
    "event_id",
    "event_time",
    "ingest_time",
    "channel",
    "event_type",
    "customer_id",
    "msisdn",
    "app_instance_id",
    "topic",
    "outcome",
    "line",
    "agent_id",
    "attrs",
    "region",
];

/// Parses an event time: RFC 3339 text, or epoch milliseconds as a JSON integer or digits.
pub fn parse_event_time(v: &Value) -> Result<i64, Rejection> {
    match v {
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| reject("invalid_event_time", format!("event_time {n} is not a whole number of epoch milliseconds")))
        }
        Value::String(s) => parse_time_text(s),
        Value::Null => Err(reject("missing_event_time", "event_time is required")),
        other => Err(reject("invalid_event_time", format!("event_time {other} is neither RFC 3339 text nor epoch milliseconds"))),
    }
}

/// Parses RFC 3339 text or a string of digits (epoch milliseconds).
pub fn parse_time_text(s: &str) -> Result<i64, Rejection> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| reject("invalid_event_time", format!("event_time {s:?} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| reject("invalid_event_time", format!("event_time {s:?} is not RFC 3339 ({e})")))
}

fn opt_string(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Phone numbers and ids are often exported as numbers: keep their digits.
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        // Name the JSON type, never the value: identifiers are personal data, and rejection
        // details reach logs, dead-letter headers and HTTP responses.
        Some(other) => Err(reject("invalid_field", format!("{field} must be a string, got {}", kind(other)))),
    }
}

/// A deterministic event id from the event's content (without id and ingest time).
pub fn derived_event_id(obj: &Map<String, Value>) -> String {
    let mut canonical: BTreeMap<&str, &Value> = BTreeMap::new();
    for (k, v) in obj {
        if k != "event_id" && k != "ingest_time" {
            canonical.insert(k, v);
        }
    }
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    let mut id = String::with_capacity(34);
    id.push_str("d-");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Converts one JSON value into a validated event. `now_ms` is the ingest time and the
/// reference for the future-skew check.
pub fn event_from_json(v: &Value, now_ms: i64, limits: &Limits) -> Result<ChannelEvent, Rejection> {
    let obj = v.as_object().ok_or_else(|| reject("not_an_object", format!("an event must be a JSON object, got {}", kind(v))))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(reject("unknown_field", format!("unknown field {unknown:?} (fields: {})", FIELDS.join(", "))));
    }
    let event_time = parse_event_time(obj.get("event_time").unwrap_or(&Value::Null))?;
    let channel = match obj.get("channel") {
        Some(Value::String(s)) => Channel::from_symbol(&s.to_ascii_uppercase())
            .ok_or_else(|| reject("unknown_channel", format!("unknown channel {s:?} (one of: {})", symbols())))?,
        None | Some(Value::Null) => return Err(reject("missing_channel", "channel is required")),
        Some(other) => return Err(reject("unknown_channel", format!("channel must be a string, got {other}"))),
    };
    let event_type = opt_string(obj, "event_type")?.ok_or_else(|| reject("missing_event_type", "event_type is required"))?;
    let event_id = match opt_string(obj, "event_id")? {
        Some(id) => id,
        None => derived_event_id(obj),
    };
    let attrs = match obj.get("attrs") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    Value::Null => continue,
                    _ => return Err(reject("invalid_field", format!("attrs.{k} must be a string, number or boolean"))),
                };
                out.insert(k.clone(), s);
            }
            out
        }
        Some(other) => return Err(reject("invalid_field", format!("attrs must be an object of strings, got {}", kind(other)))),
    };
    let e = ChannelEvent {
        event_id,
        event_time,
        ingest_time: now_ms,
        channel,
        event_type,
        customer_id: opt_string(obj, "customer_id")?,
        msisdn: opt_string(obj, "msisdn")?,
        app_instance_id: opt_string(obj, "app_instance_id")?,
        topic: opt_string(obj, "topic")?,
        outcome: opt_string(obj, "outcome")?,
        line: opt_string(obj, "line")?,
        agent_id: opt_string(obj, "agent_id")?,
        attrs,
        region: opt_string(obj, "region")?,
    };
    validate_event(&e, now_ms, limits)?;
    Ok(e)
}

fn symbols() -> String {
    Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_790_000_000_000;

    fn ok(v: Value) -> ChannelEvent {
        event_from_json(&v, NOW, &Limits::default()).unwrap()
    }

    fn code(v: Value) -> &'static str {
        event_from_json(&v, NOW, &Limits::default()).unwrap_err().code
    }

    #[test]
    fn accepts_rfc3339_and_epoch_millis() {
        let a =
            ok(json!({"event_id":"a","event_time":"2026-09-21T10:00:00+03:00","channel":"app","event_type":"screen.view","msisdn":"7999"}));
        let b =
            ok(json!({"event_id":"b","event_time":1789974000000i64,"channel":"APP","event_type":"screen.view","msisdn":79990001122u64}));
        assert_eq!(a.event_time, 1_789_974_000_000);
        assert_eq!(b.event_time, 1_789_974_000_000);
        assert_eq!(b.msisdn.as_deref(), Some("79990001122"));
        assert_eq!(a.ingest_time, NOW);
    }

    #[test]
    fn each_class_of_bad_input_has_its_reason() {
        let base = json!({"event_id":"x","event_time":NOW,"channel":"IVR","event_type":"ivr.menu","msisdn":"7"});
        let with = |k: &str, v: Value| {
            let mut o = base.clone();
            o[k] = v;
            o
        };
        assert_eq!(code(with("channel", json!("PIGEON"))), "unknown_channel");
        assert_eq!(code(json!({"event_id":"x","event_time":NOW,"channel":"IVR","event_type":"t"})), "missing_identifier");
        assert_eq!(code(json!({"event_id":"x","channel":"IVR","event_type":"t","msisdn":"7"})), "missing_event_time");
        assert_eq!(code(with("event_time", json!("yesterday"))), "invalid_event_time");
        assert_eq!(code(with("event_time", json!(NOW + 3_600_000))), "event_time_in_future");
        assert_eq!(code(with("event_time", json!(0))), "event_time_too_old");
        assert_eq!(code(with("colour", json!("red"))), "unknown_field");
        assert_eq!(code(json!([1, 2])), "not_an_object");
    }

    #[test]
    fn a_rejected_identifier_is_not_echoed_in_the_reason() {
        let v = json!({"event_id":"x","event_time":NOW,"channel":"IVR","event_type":"t","msisdn":-79990001122i64,"customer_id":"C1"});
        let r = event_from_json(&v, NOW, &Limits::default()).unwrap_err();
        assert_eq!(r.code, "invalid_field");
        assert!(r.detail.contains("msisdn") && !r.detail.contains("7999"), "{}", r.detail);
    }

    #[test]
    fn a_missing_event_id_is_derived_from_content() {
        let v = json!({"event_time":NOW,"channel":"IVR","event_type":"ivr.menu","msisdn":"7"});
        let a = ok(v.clone());
        let b = ok(v);
        assert_eq!(a.event_id, b.event_id);
        let c = ok(json!({"event_time":NOW,"channel":"IVR","event_type":"ivr.menu","msisdn":"8"}));
        assert_ne!(a.event_id, c.event_id);
    }

    proptest! {
        #[test]
        fn random_json_never_panics(s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = event_from_json(&v, NOW, &Limits::default());
            }
        }

        #[test]
        fn random_objects_never_panic(
            keys in proptest::collection::vec(prop_oneof![Just("event_time".to_string()), Just("channel".to_string()), Just("msisdn".to_string()), Just("attrs".to_string()), "[a-z_]{1,12}"], 0..8),
            vals in proptest::collection::vec(prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), any::<f64>().prop_map(Value::from), "\\PC{0,30}".prop_map(Value::from), Just(json!({"a": [1]}))], 8),
        ) {
            let mut m = Map::new();
            for (i, k) in keys.into_iter().enumerate() {
                m.insert(k, vals[i].clone());
            }
            let _ = event_from_json(&Value::Object(m), NOW, &Limits::default());
        }
    }
}
