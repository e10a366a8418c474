//! `[ingest]` configuration: listener, limits, and the sources allowed to send.

use journey_schemas::duration::serde_duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One system allowed to send events (a channel's backend, a CTI, the app analytics...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bearer token of this source. Prefer the environment:
    /// `JOURNEY__INGEST__SOURCES__<NAME>__TOKEN`.
    pub token: String,
    /// Sustained events per second.
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    /// Events allowed in one burst (and the largest batch accepted at once).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_rate() -> u32 {
    1000
}

fn default_burst() -> u32 {
    10_000
}

/// `[ingest]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// How far in the future an event time may be (clock skew of sources).
    #[serde(with = "serde_duration")]
    pub max_future_skew: Duration,
    /// How long to wait for Kafka to acknowledge a request's events before answering 503.
    #[serde(with = "serde_duration")]
    pub publish_timeout: Duration,
    /// Most events awaiting Kafka acknowledgement at once; beyond it requests get 503.
    pub max_in_flight_events: usize,
    /// Allowed sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 10_000,
            max_future_skew: Duration::from_secs(300),
            publish_timeout: Duration::from_secs(10),
            max_in_flight_events: 200_000,
            sources: BTreeMap::new(),
        }
    }
}

impl IngestConfig {
    /// Every problem with this section.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!("ingest.listen: {:?} is not host:port", self.listen));
        }
        if self.max_body_bytes == 0 {
            errors.push("ingest.max_body_bytes: must be positive".into());
        }
        if self.max_batch_events == 0 {
            errors.push("ingest.max_batch_events: must be positive".into());
        }
        if self.publish_timeout < Duration::from_millis(100) {
            errors.push("ingest.publish_timeout: must be at least 100ms".into());
        }
        if self.max_in_flight_events == 0 {
            errors.push("ingest.max_in_flight_events: must be positive".into());
        }
        let mut tokens = std::collections::HashSet::new();
        for (name, s) in &self.sources {
            if s.token.len() < 16 {
                errors.push(format!("ingest.sources.{name}.token: must be at least 16 characters"));
            }
            if !tokens.insert(&s.token) {
                errors.push(format!("ingest.sources.{name}.token: shared with another source"));
            }
            if s.rate_per_second == 0 || s.burst == 0 {
                errors.push(format!("ingest.sources.{name}: rate_per_second and burst must be positive"));
            }
        }
    }
}
