//! Topic names and idempotent topic creation (`journey topics create`, and at start-up).

use crate::KafkaConfig;
use journey_schemas::topics as defaults;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[topics]`: names and layout of the pipeline's topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Connectors -> pipeline, keyed by the best customer identifier.
    pub raw: String,
    /// Rejected input with the reason in headers.
    pub dlq: String,
    /// Closed sessions.
    pub sessions: String,
    /// Scenario hits.
    pub scenarios: String,
    /// Events older than the correction horizon, as they arrived.
    pub late: String,
    /// Valid events re-keyed by canonical customer (stitch -> sessionize), plus control records.
    pub keyed: String,
    /// Identity links, compacted: identifier -> canonical customer key.
    pub identity: String,
    /// Processor state changelog, compacted, partitioned like `keyed`.
    pub state: String,
    /// Partitions of each topic created by the pipeline.
    pub partitions: i32,
    /// Replication factor of each topic created by the pipeline.
    pub replication_factor: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            raw: defaults::EVENTS_RAW.to_string(),
            dlq: defaults::EVENTS_DLQ.to_string(),
            sessions: defaults::SESSIONS.to_string(),
            scenarios: defaults::SCENARIOS.to_string(),
            late: defaults::EVENTS_LATE.to_string(),
            keyed: defaults::EVENTS_KEYED.to_string(),
            identity: defaults::IDENTITY.to_string(),
            state: defaults::STATE.to_string(),
            partitions: 6,
            replication_factor: 1,
        }
    }
}

/// A topic to create and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
}

impl TopicsConfig {
    /// Topics with every name prefixed (tests give each run its own topics).
    pub fn with_prefix(prefix: &str) -> TopicsConfig {
        let d = TopicsConfig::default();
        TopicsConfig {
            raw: format!("{prefix}{}", d.raw),
            dlq: format!("{prefix}{}", d.dlq),
            sessions: format!("{prefix}{}", d.sessions),
            scenarios: format!("{prefix}{}", d.scenarios),
            late: format!("{prefix}{}", d.late),
            keyed: format!("{prefix}{}", d.keyed),
            identity: format!("{prefix}{}", d.identity),
            state: format!("{prefix}{}", d.state),
            ..d
        }
    }

    /// Every problem with this section.
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (field, name) in [
            ("raw", &self.raw),
            ("dlq", &self.dlq),
            ("sessions", &self.sessions),
            ("scenarios", &self.scenarios),
            ("late", &self.late),
            ("keyed", &self.keyed),
            ("identity", &self.identity),
            ("state", &self.state),
        ] {
            let legal = !name.is_empty()
                && name.len() <= 249
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            if !legal {
                errors.push(format!("topics.{field}: {name:?} is not a legal Kafka topic name"));
            }
        }
        if self.partitions < 1 {
            errors.push(format!("topics.partitions: {} must be at least 1", self.partitions));
        }
        if self.replication_factor < 1 {
            errors.push(format!("topics.replication_factor: {} must be at least 1", self.replication_factor));
        }
    }

    /// The topics the pipeline needs.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let spec = |name: &String| TopicSpec { name: name.clone(), partitions: self.partitions, configs: vec![] };
        let compacted = |name: &String| TopicSpec {
            name: name.clone(),
            partitions: self.partitions,
            configs: vec![("cleanup.policy".into(), "compact".into())],
        };
        vec![
            spec(&self.raw),
            spec(&self.dlq),
            spec(&self.sessions),
            spec(&self.scenarios),
            spec(&self.late),
            spec(&self.keyed),
            compacted(&self.identity),
            compacted(&self.state),
        ]
    }
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
/// Returns the names that were newly created.
pub async fn create_topics(kafka: &KafkaConfig, replication: i32, specs: &[TopicSpec]) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let configs: Vec<Vec<(&str, &str)>> = specs.iter().map(|s| s.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&configs)
        .map(|(s, cfg)| {
            let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication));
            for (k, v) in cfg {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(created)
}
