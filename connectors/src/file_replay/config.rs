//! `[replay]` configuration: limits and named CSV column mappings.

use journey_schemas::duration::serde_duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a CSV export maps onto the contract, so a contact-centre export, a CTI log or an app
/// analytics dump can be replayed without code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CsvMapping {
    /// Field delimiter (one character).
    #[serde(default = "comma")]
    pub delimiter: String,
    /// Contract field -> CSV column (header name).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Contract field -> constant value, for fields the export does not carry.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// Contract field -> (CSV value -> contract value), e.g. channel codes to symbols.
    #[serde(default)]
    pub values: BTreeMap<String, BTreeMap<String, String>>,
    /// CSV columns copied into `attrs` under their own names.
    #[serde(default)]
    pub attrs: Vec<String>,
    /// `rfc3339`, `epoch_ms`, `epoch_s`, or a chrono format such as `%Y-%m-%d %H:%M:%S`.
    #[serde(default = "rfc3339")]
    pub time_format: String,
    /// UTC offset of times written without one, e.g. `+03:00`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn comma() -> String {
    ",".into()
}
fn rfc3339() -> String {
    "rfc3339".into()
}
fn utc() -> String {
    "+00:00".into()
}

/// `[replay]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// How far in the future an event time may be.
    #[serde(with = "serde_duration")]
    pub max_future_skew: Duration,
    /// Named CSV mappings (`journey replay --mapping NAME`).
    pub mappings: BTreeMap<String, CsvMapping>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig { max_future_skew: Duration::from_secs(300), mappings: BTreeMap::new() }
    }
}

impl ReplayConfig {
    /// Every problem with this section.
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (name, m) in &self.mappings {
            if m.delimiter.chars().count() != 1 || !m.delimiter.is_ascii() {
                errors.push(format!("replay.mappings.{name}.delimiter: {:?} must be one ASCII character", m.delimiter));
            }
            for field in m.columns.keys().chain(m.constants.keys()).chain(m.values.keys()) {
                if !crate::parse::FIELDS.contains(&field.as_str()) || field == "ingest_time" || field == "attrs" {
                    errors.push(format!("replay.mappings.{name}: {field:?} is not a contract field"));
                }
            }
            if !m.columns.contains_key("event_time") {
                errors.push(format!("replay.mappings.{name}.columns: event_time must come from a column"));
            }
            if m.timezone.parse::<chrono::FixedOffset>().is_err() {
                errors.push(format!("replay.mappings.{name}.timezone: {:?} is not an offset like +03:00", m.timezone));
            }
        }
    }
}
