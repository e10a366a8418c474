//! The one place that names the project's metrics (exported in Prometheus text format by
//! `journey ingest` and `journey process` on `/metrics`). Each function records one event.

use metrics::{counter, histogram};

/// Events accepted by a connector and acknowledged by Kafka.
pub fn events_published(source: &'static str, n: u64) {
    counter!("journey_events_published_total", "source" => source).increment(n);
}

/// Input rejected by a connector or processor, by stage and reason; each one is dead-lettered.
pub fn events_rejected(stage: &'static str, reason: &'static str, n: u64) {
    counter!("journey_events_rejected_total", "stage" => stage, "reason" => reason).increment(n);
}

/// Records written to the dead-letter topic.
pub fn dead_lettered(stage: &'static str, n: u64) {
    counter!("journey_dead_lettered_total", "stage" => stage).increment(n);
}

/// Events consumed by the processor.
pub fn events_in(n: u64) {
    counter!("journey_process_events_in_total").increment(n);
}

/// Duplicate events (same event_id) dropped by the processor, counted so no drop is silent.
pub fn duplicates_dropped(n: u64) {
    counter!("journey_process_duplicates_total").increment(n);
}

/// Events that arrived behind the watermark (handled as late by the processor).
pub fn events_late(n: u64) {
    counter!("journey_process_events_late_total").increment(n);
}

/// Rows acknowledged by ClickHouse, by table.
pub fn rows_written(table: &'static str, n: u64) {
    counter!("journey_sink_rows_total", "table" => table).increment(n);
}

/// Sink retries after transient ClickHouse errors.
pub fn sink_retried(table: &'static str) {
    counter!("journey_sink_retries_total", "table" => table).increment(1);
}

/// Rows per ClickHouse insert.
pub fn sink_batch_rows(table: &'static str, rows: usize) {
    histogram!("journey_sink_batch_rows", "table" => table).record(rows as f64);
}

/// Event time to ClickHouse acknowledgement, seconds.
pub fn end_to_end_lag_seconds(lag: f64) {
    histogram!("journey_end_to_end_lag_seconds").record(lag);
}

/// HTTP ingest request latency, seconds.
pub fn ingest_latency_seconds(secs: f64) {
    histogram!("journey_ingest_request_seconds").record(secs);
}

/// Events accepted by HTTP ingest, per source.
pub fn ingest_accepted(source: &str, n: u64) {
    counter!("journey_ingest_accepted_total", "source" => source.to_string()).increment(n);
}

/// Whether the processor has paused consumption because ClickHouse does not acknowledge (1)
/// or consumes normally (0).
pub fn sink_backpressure(paused: bool) {
    metrics::gauge!("journey_sink_backpressure").set(if paused { 1.0 } else { 0.0 });
}

/// Rows and bytes the processor holds for its next ClickHouse flush (bounded by
/// `process.max_batch_rows` / `process.max_batch_bytes` plus one poll).
pub fn sink_buffered(rows: usize, bytes: usize) {
    metrics::gauge!("journey_sink_buffered_rows").set(rows as f64);
    metrics::gauge!("journey_sink_buffered_bytes").set(bytes as f64);
}

/// Scenario hits emitted, by rule and kind of record (`hit`, `update`, `retraction`).
pub fn scenario_hits(rule: &str, kind: &'static str, n: u64) {
    counter!("journey_scenario_hits_total", "rule" => rule.to_string(), "kind" => kind).increment(n);
}

/// Scenario rule set reloads, by outcome (`applied`, `rejected`).
pub fn rules_reloaded(outcome: &'static str) {
    counter!("journey_scenario_rules_reloads_total", "outcome" => outcome).increment(1);
}
