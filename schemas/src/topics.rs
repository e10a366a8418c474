//! Default topic names; every name is configurable, these are the documented defaults.

/// Connectors -> pipeline, Avro `ChannelEvent`, keyed by the best customer identifier.
pub const EVENTS_RAW: &str = "journey.events.raw";
/// Rejected input: the raw payload with the reason in headers (see [`crate::dlq`]).
pub const EVENTS_DLQ: &str = "journey.events.dlq";
/// Closed sessions, Avro `Session`, keyed by canonical customer.
pub const SESSIONS: &str = "journey.sessions";
/// Scenario hits, Avro `ScenarioHit`, keyed by canonical customer.
pub const SCENARIOS: &str = "journey.scenarios";
/// Events older than the correction horizon, kept as they arrived for inspection or replay.
pub const EVENTS_LATE: &str = "journey.events.late";
/// Valid events re-keyed by canonical customer, and re-attribution control records.
pub const EVENTS_KEYED: &str = "journey.events.keyed";
/// Identity links (compacted): identifier -> canonical customer key.
pub const IDENTITY: &str = "journey.identity";
/// Processor state changelog (compacted).
pub const STATE: &str = "journey.state";
