//! The stateful core against a batch computation: generated journeys with disorder,
//! duplicates and late identity links (anonymous app installs that log in later) go through
//! Kafka, stitch and sessionize; the current sessions in ClickHouse must equal sessions cut by
//! the batch functions over all events at once, with the batch identity graph.

mod support;

use journey_connectors::generator::{Disorder, Generated, Generator, GeneratorConfig};
use journey_connectors::publish::BulkPublisher;
use journey_connectors::topics::create_topics;
use journey_pipeline::runtime::{run_all, ProcessOptions};
use journey_pipeline::sessionize::{batch_sessions, SessionEvent, SessionParams};
use journey_pipeline::stitch::{identifiers, IdentityGraph};
use journey_pipeline::{migrate, sink};
use journey_schemas::Codec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use support::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, serde::Deserialize)]
struct SessionKey {
    session_id: String,
    customer_id: String,
    start_time: i64,
    end_time: i64,
    event_count: u32,
    path: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct EventKey {
    event_id: String,
    customer_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_clickhouse_equal_the_batch_computation() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    // Links may come up to two days after an install's first anonymous events: keep them all
    // inside the correction horizon, where the streaming result must equal the batch one.
    // (Beyond the horizon an install's old events stay under its own key, as documented.)
    cfg.process.correction_horizon = Duration::from_secs(72 * 3600);
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    migrate::migrate(&cfg.clickhouse).await.unwrap();

    let gen_cfg = GeneratorConfig {
        customers: 400,
        events: Some(6000),
        seed: 23,
        days: 2,
        anonymous_app_share: 0.6,
        login_share: 0.5,
        disorder: Disorder { delayed_share: 0.2, max_delay: Duration::from_secs(600), duplicate_share: 0.05, malformed_share: 0.0 },
        ..GeneratorConfig::default()
    };
    let generated: Vec<Generated> = Generator::new(gen_cfg, journey_connectors::now_ms()).collect();
    let mut publisher = BulkPublisher::new(&cfg.kafka, Codec::from_manifest().unwrap(), &cfg.topics.raw, &cfg.topics.dlq).unwrap();
    let mut events = Vec::new();
    for g in &generated {
        match g {
            Generated::Event(e) => {
                publisher.send_event(e).unwrap();
                events.push(e.clone());
            }
            Generated::Duplicate(e) => publisher.send_event(e).unwrap(),
            Generated::Malformed { .. } => {}
        }
    }
    publisher.finish(Duration::from_secs(30)).unwrap();

    run_all(
        cfg.clone(),
        Codec::from_manifest().unwrap(),
        pseudonymizer(),
        ProcessOptions { exit_when_idle: Some(Duration::from_secs(6)), upstream_done: None },
        std::future::pending(),
    )
    .await
    .expect("pipeline");

    // Batch: identities over all events, then sessions per canonical customer.
    let pseudo = pseudonymizer();
    let mut graph = IdentityGraph::new();
    let ids: Vec<_> = events.iter().map(|e| identifiers(e, &pseudo)).collect();
    for i in &ids {
        graph.observe(i);
    }
    let mut by_customer: HashMap<String, Vec<SessionEvent>> = HashMap::new();
    let mut expected_events = BTreeMap::new();
    for (e, i) in events.iter().zip(&ids) {
        let c = graph.resolve(&i[0]);
        expected_events.insert(e.event_id.clone(), c.clone());
        by_customer.entry(c).or_default().push(SessionEvent::from_event(e));
    }
    let p = &cfg.process;
    let params = SessionParams {
        gap_ms: p.gap.as_millis() as i64,
        max_duration_ms: p.max_duration.as_millis() as i64,
        horizon_ms: p.correction_horizon.as_millis() as i64,
    };
    let mut expected = BTreeSet::new();
    for (c, evs) in &by_customer {
        for s in batch_sessions(c, evs, &params) {
            expected.insert(SessionKey {
                session_id: s.session_id,
                customer_id: s.customer_id,
                start_time: s.start_time,
                end_time: s.end_time,
                event_count: s.event_count as u32,
                path: s.path,
            });
        }
    }

    let ch = sink::clickhouse::client(&cfg.clickhouse);
    let got: BTreeSet<SessionKey> = ch
        .query("SELECT session_id, customer_id, start_time, end_time, event_count, path FROM sessions_current")
        .fetch_all()
        .await
        .unwrap()
        .into_iter()
        .collect();
    if let Some(first) = expected.difference(&got).next() {
        let c = &first.customer_id;
        eprintln!("expected for {c}: {:#?}", expected.iter().filter(|s| &s.customer_id == c).collect::<Vec<_>>());
        eprintln!("got for {c}: {:#?}", got.iter().filter(|s| &s.customer_id == c).collect::<Vec<_>>());
        let raw = ch
            .query("SELECT toString(start_time) || ' ' || path || ' n=' || toString(event_count) || ' v=' || toString(version) || ' r=' || toString(retracted) FROM sessions WHERE customer_id = ? ORDER BY start_time, version")
            .bind(c.as_str())
            .fetch_all::<String>()
            .await
            .unwrap();
        eprintln!("all rows: {raw:#?}");
        let evs = ch
            .query("SELECT toString(event_time) || ' ' || channel || ' ' || event_id || ' v=' || toString(version) || ' d=' || toString(is_deleted) FROM events WHERE customer_id = ? ORDER BY event_time")
            .bind(c.as_str())
            .fetch_all::<String>()
            .await
            .unwrap();
        eprintln!("event rows: {evs:#?}");
    }
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{} expected, {} in ClickHouse\nmissing: {missing:#?}\nextra: {extra:#?}", expected.len(), got.len());

    let rows: Vec<EventKey> = ch.query("SELECT event_id, customer_id FROM events_current").fetch_all().await.unwrap();
    let got_events: BTreeMap<String, String> = rows.into_iter().map(|r| (r.event_id, r.customer_id)).collect();
    let wrong: Vec<_> = expected_events
        .iter()
        .filter(|(id, c)| got_events.get(*id) != Some(c))
        .map(|(id, c)| (id, c, got_events.get(id)))
        .take(10)
        .collect();
    assert!(wrong.is_empty(), "events not under their canonical customer (id, expected, got): {wrong:#?}");
    assert_eq!(got_events.len(), expected_events.len(), "every event once");
}
