//! Kafka client settings shared by every producer and consumer of the project.

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[kafka]`: how to reach the brokers and the Schema Registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Confluent-compatible Schema Registry URL; without it, schema ids come from `schemas/manifest.json`.
    pub schema_registry_url: Option<String>,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Extra librdkafka properties applied to every client (e.g. security settings).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_string(),
            schema_registry_url: None,
            client_id: "journey".to_string(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// A KafkaConfig for the given brokers, everything else default.
    pub fn with_brokers(brokers: impl Into<String>) -> Self {
        KafkaConfig { brokers: brokers.into(), ..KafkaConfig::default() }
    }

    /// Every problem with this section.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers: must not be empty".into());
        }
        if let Some(url) = &self.schema_registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(format!("kafka.schema_registry_url: {url:?} is not an http(s) URL"));
            }
        }
    }

    /// Base client config: brokers, client id, extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer config for at-least-once publishing without duplicates from retries:
    /// acks=all and the idempotent producer; LZ4 batches.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set("message.timeout.ms", "30000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
