//! The Rust types agree with the `.avsc` files, the fast codec agrees with `apache-avro`,
//! and records written with an earlier schema version still decode.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use apache_avro::types::Value;
use apache_avro::Schema;
use journey_schemas::avro::Spare;
use journey_schemas::registry::RecordKind;
use journey_schemas::{Channel, ChannelEvent, Codec, ScenarioHit, Session, CHANNEL_EVENT_V1_AVSC};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn schema_fields(avsc: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(avsc).unwrap();
    json["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()
}

fn record_fields(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Record(fields) => fields.clone(),
        other => panic!("not a record: {other:?}"),
    }
}

fn full_event() -> ChannelEvent {
    ChannelEvent {
        event_id: "e-1".into(),
        event_time: 1_700_000_000_000,
        ingest_time: 1_700_000_000_500,
        channel: Channel::VoiceBot,
        event_type: "bot.utterance".into(),
        customer_id: Some("C1".into()),
        msisdn: Some("79990001122".into()),
        app_instance_id: Some("app-1".into()),
        topic: Some("balance".into()),
        outcome: Some("unrecognized".into()),
        line: Some("front".into()),
        agent_id: Some("A7".into()),
        attrs: BTreeMap::from([("k".to_string(), "v".to_string())]),
        region: Some("north".into()),
    }
}

#[test]
fn rust_field_names_follow_the_schemas_in_order() {
    let json = serde_json::to_value(full_event()).unwrap();
    let names: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    let mut schema = schema_fields(RecordKind::ChannelEvent.current_avsc());
    let mut sorted = names.clone();
    sorted.sort();
    schema.sort();
    assert_eq!(sorted, schema, "ChannelEvent fields differ from ChannelEvent.avsc");

    let codec = Codec::from_manifest().unwrap();
    let bytes = codec.encode_event(&full_event());
    let schema = Schema::parse_str(RecordKind::ChannelEvent.current_avsc()).unwrap();
    let value = apache_avro::from_avro_datum(&schema, &mut &bytes[5..], None).unwrap();
    let decoded: Vec<String> = record_fields(&value).into_iter().map(|(n, _)| n).collect();
    assert_eq!(decoded, schema_fields(RecordKind::ChannelEvent.current_avsc()));
}

#[test]
fn every_channel_symbol_matches_the_enum() {
    let json: serde_json::Value = serde_json::from_str(RecordKind::ChannelEvent.current_avsc()).unwrap();
    let symbols: Vec<String> =
        json["fields"][3]["type"]["symbols"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let ours: Vec<String> = Channel::ALL.iter().map(|c| c.as_str().to_string()).collect();
    assert_eq!(symbols, ours);
    assert_eq!(json["fields"][3]["type"]["default"], "OTHER");
}

#[test]
fn a_record_written_with_schema_v1_still_decodes() {
    let v1 = Schema::parse_str(CHANNEL_EVENT_V1_AVSC).unwrap();
    let value = Value::Record(vec![
        ("event_id".into(), Value::String("old-1".into())),
        ("event_time".into(), Value::TimestampMillis(1_600_000_000_000)),
        ("ingest_time".into(), Value::TimestampMillis(1_600_000_000_001)),
        ("channel".into(), Value::Enum(2, "IVR".into())),
        ("event_type".into(), Value::String("ivr.menu".into())),
        ("customer_id".into(), Value::Union(0, Box::new(Value::Null))),
        ("msisdn".into(), Value::Union(1, Box::new(Value::String("7000".into())))),
        ("app_instance_id".into(), Value::Union(0, Box::new(Value::Null))),
        ("topic".into(), Value::Union(1, Box::new(Value::String("balance".into())))),
        ("outcome".into(), Value::Union(0, Box::new(Value::Null))),
        ("line".into(), Value::Union(0, Box::new(Value::Null))),
        ("agent_id".into(), Value::Union(0, Box::new(Value::Null))),
        ("attrs".into(), Value::Map([("menu".to_string(), Value::String("2".into()))].into())),
    ]);
    let mut bytes = vec![0, 0, 0, 0, 1]; // schema id 1 = ChannelEvent v1 in the manifest
    bytes.extend(apache_avro::to_avro_datum(&v1, value).unwrap());
    let codec = Codec::from_manifest().unwrap();
    let decoded = codec.decode_event(&bytes).unwrap();
    assert_eq!(decoded.schema_id, 1);
    let e = decoded.value;
    assert_eq!(e.event_id, "old-1");
    assert_eq!(e.channel, Channel::Ivr);
    assert_eq!(e.msisdn.as_deref(), Some("7000"));
    assert_eq!(e.topic.as_deref(), Some("balance"));
    assert_eq!(e.region, None, "a field added in v2 takes its default");
    assert_eq!(e.attrs.get("menu").map(String::as_str), Some("2"));
    // Into a reused record that had a region: the v1 record's default replaces it.
    let mut reused = e.clone();
    reused.region = Some("north".into());
    reused.attrs.insert("other".into(), "x".into());
    assert_eq!(codec.decode_event_into(&bytes, &mut reused, &mut Spare::default()).unwrap(), 1);
    assert_eq!(reused, e);
}

#[test]
fn every_new_field_carries_a_default() {
    // The evolution rule: the current schema must be able to read every older version.
    let old = schema_fields(CHANNEL_EVENT_V1_AVSC);
    let json: serde_json::Value = serde_json::from_str(RecordKind::ChannelEvent.current_avsc()).unwrap();
    for f in json["fields"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        if !old.iter().any(|o| o == name) {
            assert!(f.get("default").is_some(), "new field {name} has no default");
        }
    }
}

#[test]
fn wrong_magic_unknown_id_and_truncation_are_errors() {
    let codec = Codec::from_manifest().unwrap();
    let mut bytes = codec.encode_event(&full_event());
    assert!(codec.decode_event(&bytes[..bytes.len() - 3]).is_err());
    assert!(codec.decode_event(b"{\"json\":true}").is_err());
    bytes[4] = 99;
    assert!(matches!(codec.decode_event(&bytes), Err(journey_schemas::ContractError::UnknownSchema(99))));
    let session_bytes = codec.encode_session(&arb_session_fixed());
    assert!(codec.decode_event(&session_bytes).is_err(), "a Session record is not an event");
}

fn arb_session_fixed() -> Session {
    Session {
        session_id: "s".into(),
        customer_id: "c".into(),
        start_time: 1,
        end_time: 2,
        duration_ms: 1,
        event_count: 2,
        channels: vec!["APP".into()],
        path: "APP".into(),
        topics: vec![],
        assisted: false,
        first_event_id: "a".into(),
        last_event_id: "b".into(),
        version: 1,
        retracted: false,
    }
}

fn opt_str() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9 \\n\\u{e9}]{0,12}")
}

prop_compose! {
    fn arb_event()(
        event_id in "[a-f0-9-]{1,20}", event_time in any::<i64>(), ingest_time in any::<i64>(),
        ch in 0usize..12, event_type in "[a-z.]{1,16}",
        customer_id in opt_str(), msisdn in opt_str(), app_instance_id in opt_str(), topic in opt_str(),
        outcome in opt_str(), line in opt_str(), agent_id in opt_str(), region in opt_str(),
        attrs in proptest::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..2),
    ) -> ChannelEvent {
        ChannelEvent { event_id, event_time, ingest_time, channel: Channel::ALL[ch], event_type,
            customer_id, msisdn, app_instance_id, topic, outcome, line, agent_id, attrs, region }
    }
}

prop_compose! {
    fn arb_session()(
        session_id in "[a-f0-9]{1,16}", customer_id in "[a-z0-9:]{1,12}", start_time in any::<i64>(),
        end_time in any::<i64>(), duration_ms in any::<i64>(), event_count in any::<i64>(),
        channels in proptest::collection::vec("[A-Z_]{1,8}", 0..4), path in "[A-Z>]{0,20}",
        topics in proptest::collection::vec("[a-z_]{1,8}", 0..4), assisted in any::<bool>(),
        first_event_id in "[a-z0-9]{1,8}", last_event_id in "[a-z0-9]{1,8}", version in any::<i64>(), retracted in any::<bool>(),
    ) -> Session {
        Session { session_id, customer_id, start_time, end_time, duration_ms, event_count, channels, path,
            topics, assisted, first_event_id, last_event_id, version, retracted }
    }
}

prop_compose! {
    fn arb_hit()(
        hit_id in "[a-f0-9]{1,16}", rule in "[a-z_]{1,12}", rule_version in any::<i32>(), customer_id in "[a-z0-9:]{1,12}",
        session_id in opt_str(), event_time in any::<i64>(), trigger_event_id in "[a-z0-9]{1,8}",
        matched_event_ids in proptest::collection::vec("[a-z0-9]{1,8}", 0..4), path in "[A-Z>]{0,20}",
        topic in opt_str(), severity in "(info|warning|critical)", version in any::<i64>(), retracted in any::<bool>(),
    ) -> ScenarioHit {
        ScenarioHit { hit_id, rule, rule_version, customer_id, session_id, event_time, trigger_event_id,
            matched_event_ids, path, topic, severity, version, retracted }
    }
}

/// apache-avro's reading of our bytes, re-encoded by apache-avro, must equal our bytes:
/// the fast codec writes exactly what the schema says.
fn agrees_with_apache_avro(kind: RecordKind, bytes: &[u8]) {
    let schema = Schema::parse_str(kind.current_avsc()).unwrap();
    let mut body = &bytes[5..];
    let value = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
    assert!(body.is_empty(), "apache-avro left {} bytes unread", body.len());
    let names: Vec<String> = record_fields(&value).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, schema_fields(kind.current_avsc()));
    let again = apache_avro::to_avro_datum(&schema, value).unwrap();
    assert_eq!(again, &bytes[5..]);
}

proptest! {
    #[test]
    fn events_round_trip_and_match_apache_avro(e in arb_event()) {
        let codec = Codec::from_manifest().unwrap();
        let bytes = codec.encode_event(&e);
        agrees_with_apache_avro(RecordKind::ChannelEvent, &bytes);
        prop_assert_eq!(codec.decode_event(&bytes).unwrap().value, e);
    }

    #[test]
    fn sessions_round_trip_and_match_apache_avro(s in arb_session()) {
        let codec = Codec::from_manifest().unwrap();
        let bytes = codec.encode_session(&s);
        agrees_with_apache_avro(RecordKind::Session, &bytes);
        prop_assert_eq!(codec.decode_session(&bytes).unwrap().value, s);
    }

    #[test]
    fn hits_round_trip_and_match_apache_avro(h in arb_hit()) {
        let codec = Codec::from_manifest().unwrap();
        let bytes = codec.encode_hit(&h);
        agrees_with_apache_avro(RecordKind::ScenarioHit, &bytes);
        prop_assert_eq!(codec.decode_hit(&bytes).unwrap().value, h);
    }

    #[test]
    fn decoding_into_a_reused_record_equals_a_fresh_decode(
        events in proptest::collection::vec(arb_event(), 1..12),
        garbage in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        // One record and one spare set for a whole stream, as the processor uses them, with a
        // failed decode now and then (which leaves the record half written).
        let codec = Codec::from_manifest().unwrap();
        let (mut into, mut spare) = (events[events.len() - 1].clone(), Spare::default());
        let mut framed = vec![0, 0, 0, 0, 2];
        framed.extend(&garbage);
        for (i, e) in events.iter().enumerate() {
            if i % 3 == 1 {
                let _ = codec.decode_event_into(&framed, &mut into, &mut spare);
            }
            let bytes = codec.encode_event(e);
            let fresh = codec.decode_event(&bytes).unwrap();
            prop_assert_eq!(codec.decode_event_into(&bytes, &mut into, &mut spare).unwrap(), fresh.schema_id);
            prop_assert_eq!(&into, e);
            prop_assert!(spare.len() <= Spare::MAX);
        }
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let codec = Codec::from_manifest().unwrap();
        let mut framed = vec![0, 0, 0, 0, 2];
        framed.extend(&bytes);
        let _ = codec.decode_event(&framed);
        let _ = codec.decode_event(&bytes);
    }
}
