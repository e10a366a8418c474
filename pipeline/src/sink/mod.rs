//! Sinks: where processor output is made durable before input offsets are committed.

pub mod clickhouse;
