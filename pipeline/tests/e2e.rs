//! The walking skeleton end to end on real servers: generator -> Kafka -> `process` ->
//! ClickHouse, against both broker implementations. Every generated event must be in
//! ClickHouse exactly once, sessions must exist, and a malformed record must reach the DLQ
//! with its reason.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_connectors::generator::{Generated, Generator, GeneratorConfig};
use journey_connectors::publish::BulkPublisher;
use journey_connectors::topics::create_topics;
use journey_pipeline::runtime::{run_all, ProcessOptions};
use journey_pipeline::{migrate, sink};
use journey_schemas::{dlq, Codec};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

#[derive(clickhouse::Row, serde::Deserialize)]
struct Id {
    event_id: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Count {
    n: u64,
}

async fn skeleton_on(brokers: String) {
    require_tcp("Kafka broker", &brokers);
    let cfg = test_config(&brokers);
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.expect("create topics");
    migrate::migrate(&cfg.clickhouse).await.expect("migrate");

    // Publish a generated data set plus malformed records.
    let gen_cfg = GeneratorConfig { customers: 300, events: Some(3000), seed: 11, ..GeneratorConfig::default() };
    let generated: Vec<Generated> = Generator::new(gen_cfg, journey_connectors::now_ms()).collect();
    let mut publisher = BulkPublisher::new(&cfg.kafka, Codec::from_manifest().unwrap(), &cfg.topics.raw, &cfg.topics.dlq).unwrap();
    let mut ids = BTreeSet::new();
    for g in &generated {
        if let Generated::Event(e) = g {
            publisher.send_event(e).unwrap();
            ids.insert(e.event_id.clone());
        }
    }
    publisher.send_raw(b"m:1", b"\x00\x00\x00\x00\x02garbage").unwrap();
    publisher.send_raw(b"m:2", b"{\"not\": \"avro\"}").unwrap();
    let stats = publisher.finish(Duration::from_secs(30)).unwrap();
    assert_eq!(stats.delivered, 3002);
    assert_eq!(ids.len(), 3000);

    let (stitched, summary) = run_all(
        cfg.clone(),
        Codec::from_manifest().unwrap(),
        pseudonymizer(),
        ProcessOptions { exit_when_idle: Some(Duration::from_secs(5)), upstream_done: None },
        std::future::pending(),
    )
    .await
    .expect("process");
    assert_eq!(stitched.forwarded, 3000, "every valid event re-keyed");
    assert_eq!(stitched.dead_lettered, 2);
    assert!(stitched.merges > 0, "generated logins link anonymous installs: {stitched:?}");
    // Events of merged keys are admitted again under their new key (possibly after hops).
    assert!(summary.accepted >= 3000 && summary.accepted <= 3000 + summary.forwarded, "{summary:?}");

    let ch = sink::clickhouse::client(&cfg.clickhouse);
    let rows: Vec<Id> = ch.query("SELECT event_id FROM events_current").fetch_all().await.unwrap();
    let got: Vec<String> = rows.into_iter().map(|r| r.event_id).collect();
    assert_eq!(got.len(), 3000, "every event exactly once (no duplicates)");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), ids, "the very same event ids");
    let sessions = ch.query("SELECT count() AS n FROM sessions_current").fetch_one::<Count>().await.unwrap().n;
    assert!(sessions > 0);
    let covered = ch.query("SELECT sum(event_count) AS n FROM sessions_current").fetch_one::<Count>().await.unwrap().n;
    assert_eq!(covered, 3000, "sessions partition the events");

    let dead = read_topic(&cfg.kafka, &cfg.topics.dlq, 2, Duration::from_secs(20));
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d.headers.get(dlq::HEADER_REASON).map(String::as_str), Some("undecodable"));
        assert!(d.headers.get(dlq::HEADER_DETAIL).is_some_and(|s| !s.is_empty()));
        assert_eq!(d.headers.get(dlq::HEADER_STAGE).map(String::as_str), Some("process"));
    }
    let payloads: BTreeSet<Vec<u8>> = dead.into_iter().map(|d| d.payload).collect();
    assert!(payloads.iter().any(|p| p == b"{\"not\": \"avro\"}"), "the original payload is kept: {payloads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skeleton_end_to_end_on_noida_kafka() {
    skeleton_on(kafka_brokers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skeleton_end_to_end_on_tansu() {
    skeleton_on(tansu_brokers()).await;
}
