//! Shared helpers of the pipeline's integration tests (servers and names come from
//! `journey_connectors::testkit`): a config with its own topics and ClickHouse database.
#![allow(dead_code, missing_docs)]

pub use journey_connectors::testkit::*;
use journey_connectors::KafkaConfig;
use journey_pipeline::config::{ClickHouseConfig, Config};
use journey_pipeline::pii::Pseudonymizer;
use std::time::Duration;

/// A config for one test: own topics on `brokers`, own database, short timeouts.
pub fn test_config(brokers: &str) -> Config {
    let id = unique("t");
    let mut cfg = Config { kafka: KafkaConfig::with_brokers(brokers), ..Config::default() };
    cfg.topics = journey_connectors::TopicsConfig::with_prefix(&format!("{id}."));
    cfg.topics.partitions = 3;
    cfg.clickhouse = ClickHouseConfig { url: clickhouse_url(), database: id.clone(), ..ClickHouseConfig::default() };
    cfg.process.group_id = format!("{id}-group");
    cfg.process.idle_timeout = Duration::from_secs(2);
    cfg.process.flush_interval = Duration::from_millis(500);
    cfg.process.metrics_addr = String::new();
    cfg
}

pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(b"integration-test-key-0123456789").unwrap()
}

use journey_connectors::generator::{Generated, Generator, GeneratorConfig};
use journey_connectors::publish::BulkPublisher;
use journey_pipeline::detect::{evaluate, DetectEvent};
use journey_pipeline::sessionize::{batch_sessions, cut_sessions, session_id, SessionEvent, SessionParams};
use journey_pipeline::stitch::{identifiers, IdentityGraph};
use journey_schemas::{ChannelEvent, Codec};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The comparable part of a session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, serde::Deserialize)]
pub struct SessionKey {
    pub session_id: String,
    pub customer_id: String,
    pub start_time: i64,
    pub end_time: i64,
    pub event_count: u32,
    pub path: String,
    pub region: String,
    pub tr_time: Vec<i64>,
    pub tr_gap_ms: Vec<i64>,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct EventKey {
    event_id: String,
    customer_id: String,
}

/// Sessions and event owners, as a batch computation or as read from ClickHouse.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub sessions: BTreeSet<SessionKey>,
    pub events: BTreeMap<String, String>,
    pub hits: BTreeSet<HitKey>,
}

/// The comparable part of a scenario hit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, serde::Deserialize)]
pub struct HitKey {
    pub hit_id: String,
    pub rule: String,
    pub customer_id: String,
    pub session_id: String,
    pub event_time: i64,
    pub trigger_event_id: String,
    pub matched_event_ids: Vec<String>,
}

/// Publishes a generated data set (valid events and duplicates) and returns the valid events.
pub fn publish_generated(cfg: &Config, gen: GeneratorConfig) -> Vec<ChannelEvent> {
    let mut publisher = BulkPublisher::new(&cfg.kafka, Codec::from_manifest().unwrap(), &cfg.topics.raw, &cfg.topics.dlq).unwrap();
    let mut events = Vec::new();
    for g in Generator::new(gen, journey_connectors::now_ms()) {
        match g {
            Generated::Event(e) => {
                publisher.send_event(&e).unwrap();
                events.push(e);
            }
            Generated::Duplicate(e) => publisher.send_event(&e).unwrap(),
            Generated::Malformed { key, payload, .. } => publisher.send_raw(key.as_bytes(), &payload).unwrap(),
        }
    }
    publisher.finish(Duration::from_secs(60)).unwrap();
    events
}

/// The batch computation: identities over all events, then sessions per canonical customer.
pub fn expected(cfg: &Config, events: &[ChannelEvent]) -> Outcome {
    let pseudo = pseudonymizer();
    let mut graph = IdentityGraph::new();
    let ids: Vec<_> = events.iter().map(|e| identifiers(e, &pseudo)).collect();
    for i in &ids {
        graph.observe(i);
    }
    let mut by_customer: HashMap<String, Vec<SessionEvent>> = HashMap::new();
    let mut out = Outcome::default();
    let rules = cfg.detect.load_rules().expect("rules");
    let mut detect_events: HashMap<String, Vec<DetectEvent>> = HashMap::new();
    for (e, i) in events.iter().zip(&ids) {
        let c = graph.resolve(&i[0]);
        out.events.insert(e.event_id.clone(), c.clone());
        by_customer.entry(c.clone()).or_default().push(SessionEvent::from_event(e));
        detect_events.entry(c).or_default().push(DetectEvent::from_event(e, &rules));
    }
    let p = &cfg.process;
    let params = SessionParams {
        gap_ms: p.gap.as_millis() as i64,
        max_duration_ms: p.max_duration.as_millis() as i64,
        horizon_ms: p.correction_horizon.as_millis() as i64,
    };
    for (c, evs) in &by_customer {
        // The session of every event: the batch cut of the customer's sorted, distinct events.
        let mut sorted = evs.clone();
        sorted.sort_by(|a, b| (a.time, a.id.as_bytes()).cmp(&(b.time, b.id.as_bytes())));
        sorted.dedup_by(|a, b| a.id == b.id);
        let mut session_of: HashMap<&str, String> = HashMap::new();
        for r in cut_sessions(&sorted, &params) {
            let sid = session_id(c, &sorted[r.start].id);
            for e in &sorted[r] {
                session_of.insert(&e.id, sid.clone());
            }
        }
        for h in evaluate(&rules, c, &detect_events[c]) {
            let h = std::sync::Arc::unwrap_or_clone(h.hit);
            out.hits.insert(HitKey {
                session_id: session_of.get(h.trigger_event_id.as_str()).cloned().unwrap_or_default(),
                hit_id: h.hit_id,
                rule: h.rule,
                customer_id: h.customer_id,
                event_time: h.event_time,
                trigger_event_id: h.trigger_event_id,
                matched_event_ids: h.matched_event_ids,
            });
        }
        for e in batch_sessions(c, evs, &params) {
            let s = std::sync::Arc::unwrap_or_clone(e.session);
            out.sessions.insert(SessionKey {
                session_id: s.session_id,
                customer_id: s.customer_id,
                start_time: s.start_time,
                end_time: s.end_time,
                event_count: s.event_count as u32,
                path: s.path,
                region: e.region.as_deref().unwrap_or_default().to_string(),
                tr_time: e.transitions.iter().map(|t| t.time).collect(),
                tr_gap_ms: e.transitions.iter().map(|t| t.gap_ms).collect(),
            });
        }
    }
    out
}

/// What ClickHouse holds now (current sessions, current events).
pub async fn in_clickhouse(cfg: &Config) -> Outcome {
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    let sessions = ch
        .query("SELECT session_id, customer_id, start_time, end_time, event_count, path, region, tr_time, tr_gap_ms FROM sessions_current")
        .fetch_all::<SessionKey>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    let rows: Vec<EventKey> = ch.query("SELECT event_id, customer_id FROM events_current").fetch_all().await.unwrap();
    let events = rows.into_iter().map(|r| (r.event_id, r.customer_id)).collect();
    let hits = ch
        .query("SELECT hit_id, rule, customer_id, session_id, event_time, trigger_event_id, matched_event_ids FROM scenario_hits_current")
        .fetch_all::<HitKey>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    Outcome { sessions, events, hits }
}

/// Asserts two outcomes are equal, showing a few differences when not.
pub fn assert_same(expected: &Outcome, got: &Outcome) {
    let missing: Vec<_> = expected.sessions.difference(&got.sessions).take(5).collect();
    let extra: Vec<_> = got.sessions.difference(&expected.sessions).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} sessions expected, {} in ClickHouse\nmissing: {missing:#?}\nextra: {extra:#?}",
        expected.sessions.len(),
        got.sessions.len()
    );
    let wrong: Vec<_> = expected
        .events
        .iter()
        .filter(|(id, c)| got.events.get(*id) != Some(c))
        .map(|(id, c)| (id, c, got.events.get(id)))
        .take(10)
        .collect();
    assert!(wrong.is_empty(), "events not under their canonical customer (id, expected, got): {wrong:#?}");
    assert_eq!(got.events.len(), expected.events.len(), "every event once");
    assert!(!expected.hits.is_empty(), "the data set should contain unwanted scenarios");
    let missing: Vec<_> = expected.hits.difference(&got.hits).take(5).collect();
    let extra: Vec<_> = got.hits.difference(&expected.hits).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} scenario hits expected (batch evaluation), {} current in ClickHouse\nmissing: {missing:#?}\nextra: {extra:#?}",
        expected.hits.len(),
        got.hits.len()
    );
}

/// Environment for a `journey` child process running with `cfg`.
pub fn child_env(cfg: &Config) -> Vec<(String, String)> {
    let t = &cfg.topics;
    let p = &cfg.process;
    let d = |d: Duration| format!("{}ms", d.as_millis());
    [
        ("JOURNEY__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
        ("JOURNEY__TOPICS__RAW", t.raw.clone()),
        ("JOURNEY__TOPICS__DLQ", t.dlq.clone()),
        ("JOURNEY__TOPICS__SESSIONS", t.sessions.clone()),
        ("JOURNEY__TOPICS__SCENARIOS", t.scenarios.clone()),
        ("JOURNEY__TOPICS__LATE", t.late.clone()),
        ("JOURNEY__TOPICS__KEYED", t.keyed.clone()),
        ("JOURNEY__TOPICS__IDENTITY", t.identity.clone()),
        ("JOURNEY__TOPICS__STATE", t.state.clone()),
        ("JOURNEY__TOPICS__PARTITIONS", t.partitions.to_string()),
        ("JOURNEY__CLICKHOUSE__URL", cfg.clickhouse.url.clone()),
        ("JOURNEY__CLICKHOUSE__DATABASE", cfg.clickhouse.database.clone()),
        ("JOURNEY__PROCESS__GROUP_ID", p.group_id.clone()),
        ("JOURNEY__PROCESS__IDLE_TIMEOUT", d(p.idle_timeout)),
        ("JOURNEY__PROCESS__FLUSH_INTERVAL", d(p.flush_interval)),
        ("JOURNEY__PROCESS__CORRECTION_HORIZON", d(p.correction_horizon)),
        ("JOURNEY__PROCESS__MAX_BATCH_ROWS", p.max_batch_rows.to_string()),
        ("JOURNEY__PROCESS__METRICS_ADDR", "\"\"".to_string()),
        ("JOURNEY_PII_KEY", "integration-test-key-0123456789".to_string()),
        ("RUST_LOG", "warn,journey_pipeline=info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(p.instance_id.clone().map(|id| ("JOURNEY__PROCESS__INSTANCE_ID".to_string(), id)))
    .collect()
}

/// Starts `journey process` (this package's binary) with `cfg`, from an empty working
/// directory so no config file is picked up.
pub fn spawn_process(cfg: &Config, extra_args: &[&str]) -> std::process::Child {
    let dir = std::env::temp_dir().join(unique("journey-child"));
    std::fs::create_dir_all(&dir).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_journey"))
        .arg("process")
        .args(extra_args)
        .current_dir(&dir)
        .envs(child_env(cfg))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn journey process")
}

/// Rows in `events` now (any version).
pub async fn event_rows(cfg: &Config) -> u64 {
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    ch.query("SELECT count() FROM events").fetch_one::<u64>().await.unwrap_or(0)
}

/// The highest insert block number among `events`' parts: it grows with every insert that
/// reached the table and, unlike a row count, no background merge can lower it (a merge keeps
/// the block range of the parts it joins, while ReplacingMergeTree may drop duplicate rows).
pub async fn event_inserts(cfg: &Config) -> u64 {
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    ch.query(
        "SELECT toUInt64(max(max_block_number)) FROM system.parts \
         WHERE database = currentDatabase() AND table = 'events' AND active",
    )
    .fetch_one::<u64>()
    .await
    .expect("read events' parts")
}

/// Waits for a child to exit, failing after `timeout`.
pub async fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("journey process did not exit within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Events in the stream of [`child_stream`].
pub const CHILD_STREAM_EVENTS: u64 = 40_000;

/// Topics, tables and a published stream for tests that run `journey process` children:
/// 40 000 generated events with disorder, duplicates and anonymous installs; short flushes
/// so a stop can land mid-stream. `tune` adjusts the config before anything is created.
pub async fn child_stream(seed: u64, tune: impl FnOnce(&mut Config)) -> (Config, Vec<ChannelEvent>) {
    use journey_connectors::generator::Disorder;
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    cfg.process.flush_interval = Duration::from_millis(300);
    cfg.process.max_batch_rows = 2000;
    tune(&mut cfg);
    journey_connectors::topics::create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    journey_pipeline::migrate::migrate(&cfg.clickhouse).await.unwrap();
    let gen = GeneratorConfig {
        customers: 800,
        events: Some(CHILD_STREAM_EVENTS),
        seed,
        anonymous_app_share: 0.5,
        disorder: Disorder { delayed_share: 0.1, duplicate_share: 0.03, ..Disorder::default() },
        ..GeneratorConfig::default()
    };
    let events = publish_generated(&cfg, gen);
    (cfg, events)
}

/// Waits until `events` holds at least `rows` rows, failing after two minutes or when `child`
/// exits first; returns the row count then.
pub async fn wait_for_rows(cfg: &Config, rows: u64, child: &mut std::process::Child) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = event_rows(cfg).await;
        if n >= rows {
            return n;
        }
        assert!(std::time::Instant::now() < deadline, "no progress ({n} rows)");
        assert!(child.try_wait().unwrap().is_none(), "the process exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
