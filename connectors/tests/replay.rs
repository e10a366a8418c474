//! File replay against the real local broker: a CSV with a column mapping publishes the right
//! events, bad rows go to the DLQ with file and line, and a second replay of the same file
//! produces no new event ids.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use journey_connectors::file_replay::{replay, CsvMapping, ReplayConfig, ReplayOptions};
use journey_connectors::publish::BulkPublisher;
use journey_connectors::testkit::*;
use journey_connectors::topics::create_topics;
use journey_connectors::{now_ms, KafkaConfig, TopicsConfig};
use journey_schemas::{dlq, Channel, Codec};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

fn mapping() -> CsvMapping {
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeMap<_, _>>();
    CsvMapping {
        delimiter: ";".into(),
        columns: pairs(&[
            ("event_time", "call_start"),
            ("msisdn", "ani"),
            ("channel", "source"),
            ("topic", "reason"),
            ("agent_id", "agent"),
        ]),
        constants: pairs(&[("event_type", "contact.start"), ("line", "front")]),
        values: [("channel".to_string(), pairs(&[("CC", "CONTACT_CENTRE"), ("IVR", "IVR")]))].into(),
        attrs: vec!["queue".into()],
        time_format: "%Y-%m-%d %H:%M:%S".into(),
        timezone: "+03:00".into(),
    }
}

fn fmt_local(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap().with_timezone(&"+03:00".parse::<chrono::FixedOffset>().unwrap());
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn run(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    cfg: &ReplayConfig,
    path: &std::path::Path,
) -> journey_connectors::file_replay::ReplaySummary {
    let publisher = BulkPublisher::new(kafka, Codec::from_manifest().unwrap(), &topics.raw, &topics.dlq).unwrap();
    let opts = ReplayOptions { mapping: Some("cti".into()), progress: Some(false), ..ReplayOptions::default() };
    replay(&[path.to_path_buf()], cfg, &opts, publisher).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_replay_maps_columns_and_a_second_replay_adds_no_new_ids() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let kafka = KafkaConfig::with_brokers(&brokers);
    let topics = TopicsConfig::with_prefix(&format!("{}.", unique("rep")));
    create_topics(&kafka, 1, &topics.specs()).await.unwrap();
    let cfg = ReplayConfig { mappings: [("cti".to_string(), mapping())].into(), ..ReplayConfig::default() };

    let base = (now_ms() / 1000 - 7200) * 1000;
    let dir = std::env::temp_dir().join(unique("replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cti-export.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "call_start;ani;source;reason;agent;queue").unwrap();
    for i in 0..40 {
        let src = if i % 2 == 0 { "CC" } else { "IVR" };
        writeln!(f, "{};7999000{i:04};{src};balance;A{i};q{}", fmt_local(base + i * 60_000), i % 3).unwrap();
    }
    writeln!(f, "yesterday;79990009999;CC;balance;A1;q1").unwrap(); // line 42: bad time
    writeln!(f, "{};79990009998;FAX;balance;A1;q1", fmt_local(base)).unwrap(); // line 43: unknown channel
    writeln!(f, "{};;CC;balance;A1;q1", fmt_local(base)).unwrap(); // line 44: no identifier
    drop(f);

    let first = run(&kafka, &topics, &cfg, &path);
    assert_eq!(first.read, 43);
    assert_eq!(first.published, 40);
    assert_eq!(first.rejected.get("invalid_event_time"), Some(&1));
    assert_eq!(first.rejected.get("unknown_channel"), Some(&1));
    assert_eq!(first.rejected.get("missing_identifier"), Some(&1));

    let codec = Codec::from_manifest().unwrap();
    let records = read_topic(&kafka, &topics.raw, 40, Duration::from_secs(30));
    assert_eq!(records.len(), 40);
    let events: Vec<_> = records.iter().map(|r| codec.decode_event(&r.payload).unwrap().value).collect();
    let e0 = events.iter().find(|e| e.msisdn.as_deref() == Some("79990000000")).expect("row 0");
    assert_eq!(e0.event_time, base);
    assert_eq!(e0.channel, Channel::ContactCentre);
    assert_eq!(e0.event_type, "contact.start");
    assert_eq!(e0.topic.as_deref(), Some("balance"));
    assert_eq!(e0.agent_id.as_deref(), Some("A0"));
    assert_eq!(e0.line.as_deref(), Some("front"));
    assert_eq!(e0.attrs.get("queue").map(String::as_str), Some("q0"));
    assert_eq!(events.iter().filter(|e| e.channel == Channel::Ivr).count(), 20);

    let dead = read_topic(&kafka, &topics.dlq, 3, Duration::from_secs(30));
    let origins: BTreeSet<String> = dead.iter().map(|d| d.headers[dlq::HEADER_ORIGIN].clone()).collect();
    let name = path.display().to_string();
    assert_eq!(origins, [42, 43, 44].iter().map(|l| format!("{name}:{l}")).collect());

    // Replaying the same file again: same ids, nothing new for downstream deduplication.
    let second = run(&kafka, &topics, &cfg, &path);
    assert_eq!(second.published, 40);
    let all = read_topic(&kafka, &topics.raw, 80, Duration::from_secs(30));
    assert_eq!(all.len(), 80);
    let ids: BTreeSet<String> = all.iter().map(|r| codec.decode_event(&r.payload).unwrap().value.event_id).collect();
    assert_eq!(ids.len(), 40, "the second replay reuses every event id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_gz_replay_keeps_ids_and_filters_by_time() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let kafka = KafkaConfig::with_brokers(&brokers);
    let topics = TopicsConfig::with_prefix(&format!("{}.", unique("repj")));
    create_topics(&kafka, 1, &topics.specs()).await.unwrap();
    let base = now_ms() - 3_600_000;
    let path = std::env::temp_dir().join(format!("{}.jsonl.gz", unique("events")));
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    for i in 0..10 {
        let t = chrono::DateTime::from_timestamp_millis(base + i * 1000).unwrap().to_rfc3339();
        writeln!(
            gz,
            "{{\"event_id\":\"j{i}\",\"event_time\":\"{t}\",\"channel\":\"WEB\",\"event_type\":\"page.view\",\"customer_id\":\"C{i}\"}}"
        )
        .unwrap();
    }
    writeln!(gz, "not json").unwrap();
    gz.finish().unwrap();
    let publisher = BulkPublisher::new(&kafka, Codec::from_manifest().unwrap(), &topics.raw, &topics.dlq).unwrap();
    let opts = ReplayOptions { from_ms: Some(base + 2000), to_ms: Some(base + 8000), progress: Some(false), ..ReplayOptions::default() };
    let s = replay(std::slice::from_ref(&path), &ReplayConfig::default(), &opts, publisher).unwrap();
    assert_eq!(s.read, 11);
    assert_eq!(s.published, 6);
    assert_eq!(s.filtered, 4);
    assert_eq!(s.rejected.get("malformed_json"), Some(&1));
    let codec = Codec::from_manifest().unwrap();
    let ids: BTreeSet<String> = read_topic(&kafka, &topics.raw, 6, Duration::from_secs(30))
        .iter()
        .map(|r| codec.decode_event(&r.payload).unwrap().value.event_id)
        .collect();
    assert_eq!(ids, (2..8).map(|i| format!("j{i}")).collect());
}
