//! The journey pipeline's stateful processors, sinks and runtime.
//!
//! Data flow: `journey.events.raw` -> [`runtime::process`] (decode, validate, sessionize)
//! -> ClickHouse (`events`, `sessions`) and `journey.sessions`; rejects -> `journey.events.dlq`.
//! Processors are pure per-partition folds ([`operator::Operator`]); the runtime owns all I/O.

pub mod backtest;
pub mod config;
pub mod detect;
pub mod inline;
pub mod migrate;
pub mod operator;
pub mod pii;
pub mod runtime;
pub mod sessionize;
pub mod sink;
mod slots;
pub mod stitch;
mod timers;

pub use config::Config;

/// The allocator of everything built on this crate: the `journey` binary, its benchmarks and
/// tests, so the benchmarks measure what production runs. The processors interleave
/// short-lived strings (decoded fields, rows, records) with long-lived per-customer state,
/// which glibc's malloc handled poorly (~40% of the core benchmark; `docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An event for unit tests: the given id, time (also its ingest time), channel and type, and
/// no optional field set.
#[cfg(test)]
pub(crate) fn test_event(id: &str, time: i64, channel: journey_schemas::Channel, event_type: &str) -> journey_schemas::ChannelEvent {
    journey_schemas::ChannelEvent {
        event_id: id.to_string(),
        event_time: time,
        ingest_time: time,
        channel,
        event_type: event_type.to_string(),
        customer_id: None,
        msisdn: None,
        app_instance_id: None,
        topic: None,
        outcome: None,
        line: None,
        agent_id: None,
        attrs: Default::default(),
        region: None,
    }
}

/// The one error type of the pipeline crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration is invalid; fix it, a retry cannot help.
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    /// Kafka failed; most Kafka errors are retried by librdkafka before they surface, so this
    /// is usually permanent for the current run (restart to retry).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse refused a batch for a reason a retry cannot fix (schema, SQL, permissions).
    #[error("clickhouse insert into {table}: {source}")]
    ClickHouse {
        /// Table.
        table: &'static str,
        /// Cause.
        source: clickhouse::error::Error,
    },
    /// ClickHouse query failed.
    #[error("clickhouse: {0}")]
    Query(#[from] clickhouse::error::Error),
    /// A migration is invalid or was edited after it was applied; fix the files.
    #[error("migration {name}: {reason}")]
    Migration {
        /// File name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The contract (schemas, registry) failed.
    #[error(transparent)]
    Contract(#[from] journey_schemas::ContractError),
    /// Processor state could not be restored from its changelog; retrying may help.
    #[error("state restore: {0}")]
    Restore(String),
    /// The scenario rule file is invalid; fix it, a retry cannot help.
    #[error("scenario rules: {0}")]
    Rules(#[from] detect::RuleErrors),
    /// A required secret is missing from the environment.
    #[error("missing environment variable {0}: {1}")]
    MissingSecret(&'static str, &'static str),
}

impl Error {
    /// Whether retrying later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::Restore(_) => true,
            Error::Query(e) | Error::ClickHouse { source: e, .. } => sink::clickhouse::is_transient(e),
            Error::Contract(e) => e.is_retryable(),
            Error::Config(_) | Error::Migration { .. } | Error::MissingSecret(..) | Error::Rules(_) => false,
        }
    }
}
