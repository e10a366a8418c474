//! Helpers for integration tests against real servers (used by this workspace's tests):
//! where the servers are, unique names per test, and reading a topic back. A server that is
//! not reachable fails the test with the command that starts it; nothing is skipped.

use crate::KafkaConfig;
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
    let ok =
        addr.parse::<std::net::SocketAddr>().ok().is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(ok, "{what} is not reachable at {addr}: start local infrastructure with `scripts/infra.sh up` (scripts/test.sh does)");
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this test run (letters, digits, underscores).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{prefix}_{}_{t:x}_{n}", std::process::id())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Headers as text.
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
