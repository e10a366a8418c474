//! The dead-letter contract: a DLQ record carries the original payload untouched as its value
//! and the original key as its key; these headers say why and where it came from.

/// Machine-readable reason class, e.g. `undecodable`, `invalid_event`, `malformed_json`.
pub const HEADER_REASON: &str = "journey.dlq.reason";
/// Human-readable detail of the reason, including the offending value.
pub const HEADER_DETAIL: &str = "journey.dlq.detail";
/// Component that rejected the record, e.g. `process`, `ingest`, `replay`.
pub const HEADER_STAGE: &str = "journey.dlq.stage";
/// Where the record came from: `topic/partition/offset`, `file:line`, or the ingest source name.
pub const HEADER_ORIGIN: &str = "journey.dlq.origin";
/// Wall-clock milliseconds when it was dead-lettered.
pub const HEADER_TIME: &str = "journey.dlq.time";
