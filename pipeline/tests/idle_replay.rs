//! A keyed partition that receives nothing for `idle_timeout` closes its open sessions and
//! absence windows through a control record it sends itself, acted on when read back. So the
//! close has a place in the log, and a replay of that log (which is what a restart after a
//! crash does from the last commit) emits exactly the records the first run emitted, versions
//! included, even when later events correct what the close emitted.
//!
//! The processor runs alone here (no stitch stage, so no upstream watermarks): only the idle
//! close can finish the sessions.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_connectors::topics::create_topics;
use journey_pipeline::config::Config;
use journey_pipeline::migrate;
use journey_pipeline::runtime::{process, ProcessOptions};
use journey_pipeline::stitch::{identifiers, IdentityGraph};
use journey_schemas::{Channel, ChannelEvent, Codec};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const CUSTOMERS: usize = 24;
const MIN: i64 = 60_000;

fn event(id: String, customer: usize, time: i64, channel: Channel, event_type: &str, outcome: Option<&str>) -> ChannelEvent {
    ChannelEvent {
        event_id: id,
        event_time: time,
        ingest_time: time,
        channel,
        event_type: event_type.to_string(),
        customer_id: Some(format!("IDLE{customer:04}")),
        msisdn: None,
        app_instance_id: None,
        topic: Some("billing".to_string()),
        outcome: outcome.map(str::to_string),
        line: None,
        agent_id: None,
        attrs: Default::default(),
        region: None,
    }
}

/// First part: app, IVR, then a call (hits `app_then_call`, `ivr_to_agent`, and opens an
/// `unresolved_contact` window that only the idle close can end).
fn first_part(t0: i64) -> Vec<ChannelEvent> {
    (0..CUSTOMERS)
        .flat_map(|c| {
            let t = t0 + c as i64 * MIN;
            [
                event(format!("idle-a-{c}"), c, t, Channel::App, "app.open", None),
                event(format!("idle-b-{c}"), c, t + 2 * MIN, Channel::Ivr, "ivr.menu", None),
                event(format!("idle-c-{c}"), c, t + 5 * MIN, Channel::ContactCentre, "contact.start", None),
            ]
        })
        .collect()
}

/// Second part, after the idle close: an earlier web visit (the session gets another first
/// event, so another id, and the closed one is retracted) and a resolution an hour after the
/// call (the absence hit the idle close emitted is retracted).
fn second_part(t0: i64) -> Vec<ChannelEvent> {
    (0..CUSTOMERS)
        .flat_map(|c| {
            let t = t0 + c as i64 * MIN;
            [
                event(format!("idle-d-{c}"), c, t - 10 * MIN, Channel::Web, "web.page_view", None),
                event(format!("idle-e-{c}"), c, t + 65 * MIN, Channel::ContactCentre, "contact.end", Some("resolved")),
            ]
        })
        .collect()
}

/// Publishes events to the keyed topic under their canonical customer, as the stitch stage would.
async fn publish_keyed(cfg: &Config, events: &[ChannelEvent]) {
    let codec = Codec::from_manifest().unwrap();
    let pseudo = pseudonymizer();
    let mut graph = IdentityGraph::new();
    let producer: FutureProducer = cfg.kafka.producer_config().create().unwrap();
    for e in events {
        let key = graph.observe(&identifiers(e, &pseudo)).canonical;
        let payload = codec.encode_event(e);
        let record = FutureRecord::to(&cfg.topics.keyed).key(key.as_bytes()).payload(&payload[..]);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// Every session and hit record a run published (ClickHouse merges versions away in the
/// background, so the topics are where every emitted version can be compared).
type Emitted = (BTreeSet<(String, i64, bool, i64, i64)>, BTreeSet<(String, i64, bool, Option<String>)>);

async fn published(cfg: &Config, expect: Option<&Emitted>) -> Emitted {
    let codec = Codec::from_manifest().unwrap();
    // Without a count to wait for, read for a while: everything was acknowledged before the run ended.
    let (n_sessions, n_hits) = expect.map_or((usize::MAX, usize::MAX), |e| (e.0.len() + 1, e.1.len() + 1));
    let wait = Duration::from_secs(5);
    let sessions = read_topic(&cfg.kafka, &cfg.topics.sessions, n_sessions, wait)
        .into_iter()
        .map(|r| codec.decode_session(&r.payload).unwrap().value)
        .map(|s| (s.session_id, s.version, s.retracted, s.event_count, s.end_time))
        .collect();
    let hits = read_topic(&cfg.kafka, &cfg.topics.scenarios, n_hits, wait)
        .into_iter()
        .map(|r| codec.decode_hit(&r.payload).unwrap().value)
        .map(|h| (h.hit_id, h.version, h.retracted, h.session_id))
        .collect();
    (sessions, hits)
}

async fn count(cfg: &Config, sql: &str) -> u64 {
    journey_pipeline::sink::clickhouse::client(&cfg.clickhouse).query(sql).fetch_one().await.unwrap()
}

fn run(cfg: &Config, exit_when_idle: Duration) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let opts = ProcessOptions { exit_when_idle: Some(exit_when_idle), upstream_done: None };
        process(cfg, Codec::from_manifest().unwrap(), pseudonymizer(), opts, std::future::pending()).await.expect("process");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_close_is_in_the_log_so_a_replay_repeats_it() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let cfg = test_config(&brokers);
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    migrate::migrate(&cfg.clickhouse).await.unwrap();
    let t0 = journey_connectors::now_ms() - 2 * 24 * 3600 * 1000;

    // First run: the first part, then silence until the idle close has emitted the sessions.
    publish_keyed(&cfg, &first_part(t0)).await;
    let first = run(&cfg, Duration::from_secs(8));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&cfg, "SELECT count() FROM sessions").await < CUSTOMERS as u64 {
        assert!(std::time::Instant::now() < deadline, "the idle close emitted no sessions");
        assert!(!first.is_finished(), "the first run exited before closing its sessions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let absence = "SELECT count() FROM scenario_hits WHERE rule = 'unresolved_contact' AND NOT retracted";
    assert_eq!(count(&cfg, absence).await, CUSTOMERS as u64, "the idle close ends every absence window");
    // Then the corrections, while the same run still goes on.
    publish_keyed(&cfg, &second_part(t0)).await;
    first.await.unwrap();
    let first_rows = published(&cfg, None).await;
    assert!(first_rows.0.iter().any(|s| s.2), "the earlier visits should retract the sessions the idle close emitted");
    assert!(first_rows.1.iter().any(|h| h.2), "the resolutions should retract the absence hits the idle close emitted");
    assert_eq!(count(&cfg, "SELECT count() FROM scenario_hits_current WHERE rule = 'unresolved_contact'").await, 0);

    // Replay: the same keyed topic from the start, with no state, into another database.
    let mut replay = cfg.clone();
    replay.process.group_id = unique("replay-group");
    replay.topics.state = unique("replay-state");
    replay.topics.sessions = unique("replay-sessions");
    replay.topics.scenarios = unique("replay-scenarios");
    replay.clickhouse.database = unique("replay");
    create_topics(&replay.kafka, 1, &replay.topics.specs()).await.unwrap();
    migrate::migrate(&replay.clickhouse).await.unwrap();
    run(&replay, Duration::from_secs(6)).await.unwrap();
    let replay_rows = published(&replay, Some(&first_rows)).await;
    assert_eq!(replay_rows.0, first_rows.0, "a replay must emit the same session records (ids, versions, retractions)");
    assert_eq!(replay_rows.1, first_rows.1, "a replay must emit the same scenario hit records");
}
