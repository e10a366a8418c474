//! What makes a `ChannelEvent` acceptable; shared by every connector and the processor so
//! that one definition of "valid" holds everywhere.

use crate::ChannelEvent;

/// Limits used by [`validate_event`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Latest acceptable event time relative to `now`, in ms (clock skew of sources).
    pub max_future_skew_ms: i64,
    /// Earliest acceptable event time, epoch ms (older is absurd, e.g. a zero timestamp).
    pub min_event_time_ms: i64,
    /// Longest accepted string field, in bytes.
    pub max_field_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_future_skew_ms: 5 * 60_000,
            // 2000-01-01T00:00:00Z: nothing in a telecom's journey data is older.
            min_event_time_ms: 946_684_800_000,
            max_field_len: 4096,
        }
    }
}

/// Why an event was rejected; `code` is the stable reason class used in DLQ headers and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason class, e.g. `missing_identifier`.
    pub code: &'static str,
    /// Precise message with the offending value.
    pub detail: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

fn reject(code: &'static str, detail: String) -> Rejection {
    Rejection { code, detail }
}

/// Checks an event against the contract; `now_ms` is wall-clock time for the future-skew check.
pub fn validate_event(e: &ChannelEvent, now_ms: i64, limits: &Limits) -> Result<(), Rejection> {
    if e.event_id.trim().is_empty() {
        return Err(reject("missing_event_id", "event_id is empty".into()));
    }
    if e.event_type.trim().is_empty() {
        return Err(reject("missing_event_type", "event_type is empty".into()));
    }
    let ids = [&e.customer_id, &e.msisdn, &e.app_instance_id];
    if ids.iter().all(|id| id.as_deref().is_none_or(|s| s.trim().is_empty())) {
        return Err(reject("missing_identifier", "at least one of customer_id, msisdn, app_instance_id is required".into()));
    }
    if e.event_time < limits.min_event_time_ms {
        return Err(reject("event_time_too_old", format!("event_time {} is before {}", e.event_time, limits.min_event_time_ms)));
    }
    if e.event_time > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(reject(
            "event_time_in_future",
            format!("event_time {} is more than {} ms after now ({now_ms})", e.event_time, limits.max_future_skew_ms),
        ));
    }
    let fields = [
        ("event_id", Some(&e.event_id)),
        ("event_type", Some(&e.event_type)),
        ("customer_id", e.customer_id.as_ref()),
        ("msisdn", e.msisdn.as_ref()),
        ("app_instance_id", e.app_instance_id.as_ref()),
        ("topic", e.topic.as_ref()),
        ("outcome", e.outcome.as_ref()),
        ("line", e.line.as_ref()),
        ("agent_id", e.agent_id.as_ref()),
        ("region", e.region.as_ref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            if v.len() > limits.max_field_len {
                return Err(reject("field_too_long", format!("{name} is {} bytes, limit {}", v.len(), limits.max_field_len)));
            }
        }
    }
    Ok(())
}
