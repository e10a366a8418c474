//! Shared helpers of the integration tests: real servers, each test with its own topics and
//! its own ClickHouse database. A server that is not reachable fails the test with the command
//! that starts it; nothing is skipped.
#![allow(dead_code, missing_docs)]

use journey_connectors::KafkaConfig;
use journey_pipeline::config::{ClickHouseConfig, Config};
use journey_pipeline::pii::Pseudonymizer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The broker under test: `JOURNEY_TEST_KAFKA` (default: noida-db on 127.0.0.1:9092).
pub fn kafka_brokers() -> String {
    std::env::var("JOURNEY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The second, independent broker: `JOURNEY_TEST_TANSU` (default 127.0.0.1:19092).
pub fn tansu_brokers() -> String {
    std::env::var("JOURNEY_TEST_TANSU").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// The modern ClickHouse engine (chDB front): `JOURNEY_TEST_CLICKHOUSE`.
pub fn clickhouse_url() -> String {
    std::env::var("JOURNEY_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// The old real clickhouse-server: `JOURNEY_TEST_CH18`.
pub fn ch18_url() -> String {
    std::env::var("JOURNEY_TEST_CH18").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// Panics with a clear message unless something listens on `addr` (host:port).
pub fn require_tcp(what: &str, addr: &str) {
    let ok = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        .unwrap_or(false);
    assert!(ok, "{what} is not reachable at {addr}: start local infrastructure with `scripts/infra.sh up` (scripts/test.sh does)");
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    format!("{prefix}_{}_{t:x}_{n}", std::process::id())
}

/// A config for one test: own topics on `brokers`, own database, short timeouts.
pub fn test_config(brokers: &str) -> Config {
    let mut cfg = Config::default();
    cfg.kafka = KafkaConfig::with_brokers(brokers);
    let id = unique("t");
    cfg.topics = journey_connectors::TopicsConfig::with_prefix(&format!("{id}."));
    cfg.topics.partitions = 3;
    cfg.clickhouse = ClickHouseConfig { url: clickhouse_url(), database: id.replace('.', "_"), ..ClickHouseConfig::default() };
    cfg.process.group_id = format!("{id}-group");
    cfg.process.idle_timeout = Duration::from_secs(2);
    cfg.process.flush_interval = Duration::from_millis(500);
    cfg.process.metrics_addr = String::new();
    cfg
}

pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(b"integration-test-key-0123456789").unwrap()
}

/// A DLQ or output record as read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `n` records arrived or `timeout` passed.
pub fn read_topic(kafka: &KafkaConfig, topic: &str, n: usize, timeout: Duration) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).to_string());
                }
            }
            out.push(ReadRecord { key: m.key().map(<[u8]>::to_vec), payload: m.payload().unwrap_or_default().to_vec(), headers });
        }
    }
    out
}
