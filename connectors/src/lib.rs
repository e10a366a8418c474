//! Connectors publish channel events to Kafka: HTTP ingest, file replay of recorded logs,
//! and a realistic telecom journey generator. They share one publishing path
//! ([`publish::Publisher`]): Avro in the Confluent wire format, keyed by the best customer
//! identifier, acks=all with the idempotent producer, rejected input dead-lettered with its
//! reason so that nothing accepted or rejected is ever silently lost.

pub mod file_replay;
pub mod generator;
pub mod http_ingest;
pub mod kafka;
pub mod metrics;
pub mod parse;
pub mod publish;
pub mod testkit;
pub mod topics;

pub use kafka::KafkaConfig;
pub use publish::Publisher;
pub use topics::TopicsConfig;

/// Wall-clock milliseconds since the epoch (used for ingest_time and idle watermarks only).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
