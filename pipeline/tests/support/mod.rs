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
    let mut cfg = Config::default();
    cfg.kafka = KafkaConfig::with_brokers(brokers);
    let id = unique("t");
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
