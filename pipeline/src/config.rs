//! The one configuration file (TOML) with environment overrides.
//!
//! Loading never stops at the first problem: unknown keys, wrong types, unparsable durations
//! and semantic errors are all collected and reported together. Environment variables of the
//! form `JOURNEY__SECTION__KEY=value` override file values (`__` separates path segments; the
//! value is read as TOML when it parses, else as a string), so secrets and per-host settings
//! never need to live in the file.

use journey_connectors::file_replay::ReplayConfig;
use journey_connectors::generator::GeneratorConfig;
use journey_connectors::http_ingest::IngestConfig;
use journey_connectors::{KafkaConfig, TopicsConfig};
use journey_schemas::duration::serde_duration;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "JOURNEY__";

/// `[clickhouse]`: where the analytics tables live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP URL of ClickHouse.
    pub url: String,
    /// Database of the pipeline's tables.
    pub database: String,
    /// User.
    pub user: String,
    /// Password (prefer `JOURNEY__CLICKHOUSE__PASSWORD`).
    pub password: String,
    /// Check row types against the table schema (needs ClickHouse 24.x+).
    pub validation: bool,
    /// LZ4-compress request and response bodies.
    pub compression: bool,
    /// Raw event retention in days (TTL of `events`).
    pub events_retention_days: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "journey".into(),
            user: "default".into(),
            password: String::new(),
            validation: true,
            compression: true,
            events_retention_days: 400,
        }
    }
}

impl ClickHouseConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errors.push(format!("clickhouse.url: {:?} is not an http(s) URL", self.url));
        }
        let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ident(&self.database) {
            errors.push(format!("clickhouse.database: {:?} must be letters, digits and underscores", self.database));
        }
        if self.events_retention_days == 0 {
            errors.push("clickhouse.events_retention_days: must be at least 1".into());
        }
    }
}

/// `[process]`: the stateful processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Consumer group of `journey process` instances.
    pub group_id: String,
    /// Static group membership id of this instance (e.g. its host or pod name). A restarted
    /// instance with the same id takes its partitions back at once, without a rebalance or
    /// waiting for its old session to expire. Must be unique per running instance.
    pub instance_id: Option<String>,
    /// Largest gap between consecutive events of one session.
    #[serde(with = "serde_duration")]
    pub gap: Duration,
    /// Longest session; a longer one is split there.
    #[serde(with = "serde_duration")]
    pub max_duration: Duration,
    /// How far behind the largest event time seen a partition's watermark trails.
    #[serde(with = "serde_duration")]
    pub allowed_lateness: Duration,
    /// Wall-clock quiet time after which a partition's open sessions are closed.
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    /// How late an event may be and still correct emitted results.
    #[serde(with = "serde_duration")]
    pub correction_horizon: Duration,
    /// Flush to ClickHouse and commit at least this often.
    #[serde(with = "serde_duration")]
    pub flush_interval: Duration,
    /// Flush when this many rows are buffered.
    pub max_batch_rows: usize,
    /// Flush when the buffered rows hold about this many bytes.
    pub max_batch_bytes: usize,
    /// How long one flush keeps retrying ClickHouse before the processor pauses consumption
    /// (back-pressure) and retries the same batch while it waits; memory stays bounded by one
    /// batch.
    #[serde(with = "serde_duration")]
    pub sink_retry_for: Duration,
    /// Address of `/metrics` and `/healthz` (empty = off).
    pub metrics_addr: String,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            group_id: "journey-process".into(),
            instance_id: None,
            gap: Duration::from_secs(30 * 60),
            max_duration: Duration::from_secs(24 * 3600),
            allowed_lateness: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(10),
            correction_horizon: Duration::from_secs(24 * 3600),
            flush_interval: Duration::from_secs(1),
            max_batch_rows: 50_000,
            max_batch_bytes: 64 << 20,
            sink_retry_for: Duration::from_secs(5),
            metrics_addr: "127.0.0.1:9464".into(),
        }
    }
}

impl ProcessConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.group_id.trim().is_empty() {
            errors.push("process.group_id: must not be empty".into());
        }
        if self.gap.is_zero() {
            errors.push("process.gap: must be positive".into());
        }
        if self.max_duration < self.gap {
            errors.push(format!(
                "process.max_duration: {} is shorter than process.gap {}",
                journey_schemas::format_duration(self.max_duration),
                journey_schemas::format_duration(self.gap)
            ));
        }
        if self.correction_horizon < self.allowed_lateness {
            errors.push("process.correction_horizon: must be at least process.allowed_lateness".into());
        }
        if self.flush_interval.is_zero() {
            errors.push("process.flush_interval: must be positive".into());
        }
        if self.max_batch_rows == 0 {
            errors.push("process.max_batch_rows: must be at least 1".into());
        }
        if self.max_batch_bytes < 1024 {
            errors.push(format!("process.max_batch_bytes: {} is below 1024", self.max_batch_bytes));
        }
        if self.sink_retry_for.is_zero() {
            errors.push("process.sink_retry_for: must be positive".into());
        }
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!("process.metrics_addr: {:?} is not host:port", self.metrics_addr));
        }
    }
}

/// `[detect]`: the scenario engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Rule file (TOML); empty = the built-in set (the repository's `config/scenarios.toml`,
    /// compiled in).
    pub rules: String,
    /// How often the rule file is checked for changes; a valid new version replaces the
    /// running set without a restart, an invalid one is rejected (logged and counted) and the
    /// running set stays.
    #[serde(with = "serde_duration")]
    pub reload_interval: Duration,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig { rules: String::new(), reload_interval: Duration::from_secs(5) }
    }
}

impl DetectConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.reload_interval.is_zero() {
            errors.push("detect.reload_interval: must be positive".into());
        }
        if !self.rules.is_empty() {
            if let Err(e) = crate::detect::RuleSet::load(Path::new(&self.rules)) {
                for problem in e.0 {
                    errors.push(format!("detect.rules: {}: {problem}", self.rules));
                }
            }
        }
    }

    /// The rule set to start with.
    pub fn load_rules(&self) -> Result<crate::detect::RuleSet, crate::detect::RuleErrors> {
        if self.rules.is_empty() {
            crate::detect::RuleSet::from_toml(BUILTIN_RULES)
        } else {
            crate::detect::RuleSet::load(Path::new(&self.rules))
        }
    }
}

/// The built-in rule set (`config/scenarios.toml`).
pub const BUILTIN_RULES: &str = include_str!("../../config/scenarios.toml");

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Topic names and layout.
    pub topics: TopicsConfig,
    /// ClickHouse.
    pub clickhouse: ClickHouseConfig,
    /// The processor.
    pub process: ProcessConfig,
    /// The scenario engine.
    pub detect: DetectConfig,
    /// The journey generator.
    pub generator: GeneratorConfig,
    /// HTTP ingest.
    pub ingest: IngestConfig,
    /// File replay.
    pub replay: ReplayConfig,
}

/// What [`Config::redacted`] shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first).and_then(toml::Value::as_table_mut) {
            Some(t) => remove_path(t, rest),
            None => false,
        },
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Read the value as a TOML scalar when it is one (numbers, booleans, arrays), else a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Config {
    /// The configuration with its secrets replaced by [`REDACTED`] (the ClickHouse password,
    /// every ingest source's token, and Kafka client properties whose name says password,
    /// secret or JAAS config), so that `journey config` can be pasted into a ticket. An empty
    /// value stays empty: it tells that no secret is set.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |v: &mut String| {
            if !v.is_empty() {
                *v = REDACTED.to_string();
            }
        };
        hide(&mut c.clickhouse.password);
        for source in c.ingest.sources.values_mut() {
            hide(&mut source.token);
        }
        for (name, value) in c.kafka.properties.iter_mut() {
            let name = name.to_ascii_lowercase();
            if ["password", "secret", "jaas"].iter().any(|s| name.contains(s)) {
                hide(value);
            }
        }
        c
    }

    /// Loads `path` (if given) and applies overrides from `env`; returns every problem at once.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut table = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(t) => t,
                    Err(e) => return Err(ConfigErrors(vec![format!("{}: {}", p.display(), e.to_string().trim())])),
                },
                Err(e) => return Err(ConfigErrors(vec![format!("{}: {e}", p.display())])),
            },
            None => toml::Table::new(),
        };
        let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        overrides.sort();
        for (key, raw) in overrides {
            let path: Vec<String> = key[ENV_PREFIX.len()..].split("__").map(str::to_lowercase).collect();
            if let Err(e) = set_path(&mut table, &path, parse_env_value(&raw)) {
                errors.push(format!("{key}: {e}"));
            }
        }
        Self::from_table(table, errors)
    }

    /// Parses a TOML text (tests, examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let table = text.parse::<toml::Table>().map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        Self::from_table(table, Vec::new())
    }

    fn from_table(mut table: toml::Table, mut errors: Vec<String>) -> Result<Config, ConfigErrors> {
        // Deserialize; on an error, record it with its path, drop the offending key and retry,
        // so that every structural problem is reported, not just the first.
        let config = loop {
            let value = toml::Value::Table(table.clone());
            match serde_path_to_error::deserialize::<_, Config>(value) {
                Ok(c) => break c,
                Err(e) => {
                    let path: Vec<String> = e
                        .path()
                        .iter()
                        .filter_map(|seg| match seg {
                            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                            _ => None,
                        })
                        .collect();
                    errors.push(format!("{}: {}", e.path(), e.inner()));
                    if errors.len() > 100 || !remove_path(&mut table, &path) {
                        return Err(ConfigErrors(errors));
                    }
                }
            }
        };
        config.kafka.validate(&mut errors);
        config.topics.validate(&mut errors);
        config.clickhouse.validate(&mut errors);
        config.process.validate(&mut errors);
        config.detect.validate(&mut errors);
        config.generator.validate(&mut errors);
        config.ingest.validate(&mut errors);
        config.replay.validate(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config/journey.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.topics.raw, "journey.events.raw");
        assert_eq!(c.process.gap, Duration::from_secs(1800));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [kafka]
            brokers = ""
            [process]
            gap = "30 parsecs"
            bogus = 1
            max_batch_rows = 0
            [topics]
            raw = "bad topic name"
            partitions = "six"
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let all = err.0.join("\n");
        for needle in ["kafka.brokers", "process.gap", "bogus", "process.max_batch_rows", "topics.raw", "topics.partitions"] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
        assert!(err.0.len() >= 6, "{all}");
    }

    /// An environment of `(name, value)` pairs.
    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_printed_configuration_hides_its_secrets() {
        let c = Config::load(
            None,
            env(&[
                ("JOURNEY__CLICKHOUSE__PASSWORD", "ch-secret-1"),
                ("JOURNEY__INGEST__SOURCES__CRM__TOKEN", "token-secret-0123456789"),
                ("JOURNEY__KAFKA__PROPERTIES__SASL.PASSWORD", "sasl-secret-1"),
                ("JOURNEY__KAFKA__PROPERTIES__SASL.USERNAME", "journey-user"),
            ]),
        )
        .unwrap();
        assert_eq!(c.clickhouse.password, "ch-secret-1", "the running configuration keeps them");
        let printed = toml::to_string_pretty(&c.redacted()).unwrap();
        for secret in ["ch-secret-1", "token-secret-0123456789", "sasl-secret-1"] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("journey-user"), "a property that is no secret is shown:\n{printed}");
        assert_eq!(printed.matches(REDACTED).count(), 3, "{printed}");
        // No secret set: nothing to hide, and the output says so by an empty value.
        assert_eq!(Config::default().redacted().clickhouse.password, "");
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = Config::load(
            None,
            env(&[
                ("JOURNEY__KAFKA__BROKERS", "kafka-1:9092"),
                ("JOURNEY__PROCESS__MAX_BATCH_ROWS", "123"),
                ("JOURNEY__PROCESS__GAP", "10m"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "kafka-1:9092");
        assert_eq!(c.process.max_batch_rows, 123);
        assert_eq!(c.process.gap, Duration::from_secs(600));
    }
}
