//! `journey ingest`: the HTTP endpoint channel systems post events to.
//!
//! Guarantee: a 2xx answer means every accepted event was acknowledged by Kafka (acks=all,
//! idempotent producer) and every rejected item was written to the dead-letter topic with its
//! reason. Anything else (4xx for bad requests, 429 over the source's rate, 503 when Kafka
//! cannot take the events in time or too many are in flight) means the client must retry
//! what was not acknowledged; retries are safe because events keep their `event_id` (derived
//! from content when the client sends none), so downstream deduplication drops the repeats.
//!
//! `POST /v1/events` takes one JSON event, a JSON array of events, or NDJSON
//! (`Content-Type: application/x-ndjson`). `GET /healthz`, `GET /metrics` (Prometheus text).

mod config;

pub use config::{IngestConfig, SourceConfig};

use crate::metrics;
use crate::parse::event_from_json;
use crate::publish::{DeadLetter, Publisher};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota};
use journey_schemas::validate::Limits;
use journey_schemas::ChannelEvent;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Renders `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

struct Source {
    name: String,
    limiter: DefaultDirectRateLimiter,
}

/// Shared state of the ingest server.
pub struct Ingest {
    cfg: IngestConfig,
    publisher: Publisher,
    by_token: HashMap<String, Arc<Source>>,
    in_flight: Arc<Semaphore>,
    limits: Limits,
    render: MetricsRender,
}

/// One rejected item in a response.
#[derive(Debug, Serialize)]
pub struct ItemError {
    /// Position in the request (0-based; for NDJSON the line index).
    pub index: usize,
    /// Stable reason class.
    pub reason: &'static str,
    /// Precise message.
    pub message: String,
}

/// Response body of `POST /v1/events`.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// Events published and acknowledged.
    pub accepted: usize,
    /// Items rejected (each dead-lettered).
    pub rejected: usize,
    /// One entry per rejected item.
    pub errors: Vec<ItemError>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message.into() }))).into_response()
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

impl Ingest {
    /// The server state; `publisher` should be built with [`publisher_for`].
    pub fn new(cfg: IngestConfig, publisher: Publisher, render: MetricsRender) -> Arc<Ingest> {
        let by_token = cfg
            .sources
            .iter()
            .map(|(name, s)| {
                let rate = NonZeroU32::new(s.rate_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(s.burst).unwrap_or(NonZeroU32::MIN);
                let limiter = DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
                (s.token.clone(), Arc::new(Source { name: name.clone(), limiter }))
            })
            .collect();
        let limits = Limits { max_future_skew_ms: cfg.max_future_skew.as_millis() as i64, ..Limits::default() };
        Arc::new(Ingest { in_flight: Arc::new(Semaphore::new(cfg.max_in_flight_events)), by_token, limits, render, publisher, cfg })
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let render = self.render.clone();
        Router::new()
            .route("/v1/events", post(post_events))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(move || std::future::ready(render())))
            .layer(DefaultBodyLimit::max(self.cfg.max_body_bytes))
            .with_state(self.clone())
    }

    fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<Source>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
        self.by_token.get(token).cloned()
    }

    async fn dead_letter(&self, source: &str, raw: &[u8], reason: &'static str, detail: &str) -> Result<(), crate::publish::PublishError> {
        metrics::events_rejected("ingest", reason, 1);
        let origin = format!("ingest:{source}");
        self.publisher
            .dead_letter(DeadLetter { key: None, payload: raw, reason, detail, stage: "ingest", origin: &origin }, self.cfg.publish_timeout)
            .await?;
        metrics::dead_lettered("ingest", 1);
        Ok(())
    }
}

/// A producer for ingest: Kafka must acknowledge within `publish_timeout`, so a request never
/// waits longer than that before it is answered.
pub fn publisher_for(
    kafka: &crate::KafkaConfig,
    cfg: &IngestConfig,
    codec: journey_schemas::Codec,
    raw: &str,
    dlq: &str,
) -> Result<Publisher, rdkafka::error::KafkaError> {
    let mut k = kafka.clone();
    k.properties.entry("message.timeout.ms".into()).or_insert_with(|| cfg.publish_timeout.as_millis().to_string());
    Publisher::new(&k, codec, raw, dlq)
}

/// One item of a request after parsing: an event, or why it was rejected with its raw bytes.
pub type Item = Result<ChannelEvent, (&'static str, String, Vec<u8>)>;

/// Parses a request body into items: one JSON object, a JSON array of objects, or NDJSON
/// (`ndjson`). `Err` is a body that is not JSON at all (an NDJSON body never is: each line is
/// its own item). Pure and total: no input makes it panic (fuzzed by property tests).
pub fn parse_items(body: &[u8], ndjson: bool, now_ms: i64, limits: &Limits) -> Result<Vec<Item>, String> {
    let convert = |v: &Value, raw: Vec<u8>| -> Item { event_from_json(v, now_ms, limits).map_err(|r| (r.code, r.detail, raw)) };
    if ndjson {
        return Ok(body
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| match serde_json::from_slice::<Value>(l) {
                Ok(v) => convert(&v, l.to_vec()),
                Err(e) => Err(("malformed_json", format!("line is not valid JSON: {e}"), l.to_vec())),
            })
            .collect());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(arr)) => Ok(arr.iter().map(|v| convert(v, serde_json::to_vec(v).unwrap_or_default())).collect()),
        Ok(v) => Ok(vec![convert(&v, body.to_vec())]),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl") || ct.starts_with("application/ndjson")
    })
}

async fn post_events(State(ing): State<Arc<Ingest>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let resp = handle(&ing, &headers, body).await;
    metrics::ingest_latency_seconds(started.elapsed().as_secs_f64());
    resp
}

async fn handle(ing: &Ingest, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let Some(source) = ing.authenticate(headers) else {
        metrics::events_rejected("ingest", "unauthorized", 1);
        let mut r =
            error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid `Authorization: Bearer <token>` of a configured source is required");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            metrics::events_rejected("ingest", "body_too_large", 1);
            return error(e.status(), "body_too_large", format!("{} (limit {} bytes)", e.body_text(), ing.cfg.max_body_bytes));
        }
    };
    let now = crate::now_ms();
    let items = match parse_items(&body, is_ndjson(headers), now, &ing.limits) {
        Ok(items) => items,
        Err(detail) => {
            if ing.dead_letter(&source.name, &body, "malformed_json", &detail).await.is_err() {
                return with_retry_after(
                    error(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", "could not dead-letter the request"),
                    5,
                );
            }
            return error(StatusCode::BAD_REQUEST, "malformed_json", detail);
        }
    };
    let n = items.len();
    if n == 0 {
        return error(StatusCode::BAD_REQUEST, "empty_batch", "the request holds no events");
    }
    if n > ing.cfg.max_batch_events {
        metrics::events_rejected("ingest", "batch_too_large", 1);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{n} events in one request, limit {}", ing.cfg.max_batch_events),
        );
    }
    // Rate limits count events, not requests.
    let count = NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
    match source.limiter.check_n(count) {
        Ok(Ok(())) => {}
        Ok(Err(not_until)) => {
            metrics::events_rejected("ingest", "rate_limited", n as u64);
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return with_retry_after(
                error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("source {} is over its rate; retry later", source.name)),
                secs,
            );
        }
        Err(_) => {
            metrics::events_rejected("ingest", "rate_limited", n as u64);
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("a batch of {n} events exceeds the burst of source {}", source.name),
            );
        }
    }
    let mut accepted = Vec::with_capacity(n);
    let mut rejected: Vec<(usize, &'static str, String, Vec<u8>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(e) => accepted.push(e),
            Err((reason, detail, raw)) => rejected.push((i, reason, detail, raw)),
        }
    }
    // Bounded buffering: refuse rather than queue without limit while Kafka is slow or down.
    let Ok(_permit) = ing.in_flight.clone().try_acquire_many_owned(n as u32) else {
        metrics::events_rejected("ingest", "overloaded", n as u64);
        return with_retry_after(error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many events awaiting Kafka; retry later"), 1);
    };
    for (_, reason, detail, raw) in &rejected {
        if ing.dead_letter(&source.name, raw, reason, detail).await.is_err() {
            return with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", "Kafka did not acknowledge in time; nothing was accepted"),
                5,
            );
        }
    }
    if !accepted.is_empty() {
        if let Err(e) = ing.publisher.publish(&accepted, ing.cfg.publish_timeout).await {
            tracing::warn!(source = %source.name, events = accepted.len(), error = %e, "publish failed, answering 503");
            return with_retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kafka_unavailable",
                    format!("Kafka did not acknowledge in time ({e}); retry the request"),
                ),
                5,
            );
        }
        metrics::events_published("ingest", accepted.len() as u64);
        metrics::ingest_accepted(&source.name, accepted.len() as u64);
    }
    let status = if rejected.is_empty() {
        StatusCode::OK
    } else if accepted.is_empty() {
        if rejected.iter().all(|r| r.1 == "malformed_json") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    } else {
        StatusCode::MULTI_STATUS
    };
    let body = IngestResponse {
        accepted: accepted.len(),
        rejected: rejected.len(),
        errors: rejected.into_iter().map(|(index, reason, message, _)| ItemError { index, reason, message }).collect(),
    };
    (status, Json(body)).into_response()
}

/// Serves until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    ing: Arc<Ingest>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, sources = ing.by_token.len(), "ingest listening");
    axum::serve(listener, ing.router()).with_graceful_shutdown(shutdown).await?;
    ing.publisher.flush(Duration::from_secs(10)).ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_parser(body in proptest::collection::vec(any::<u8>(), 0..512), ndjson in any::<bool>()) {
            let _ = parse_items(&body, ndjson, 1_790_000_000_000, &Limits::default());
        }

        #[test]
        fn random_json_arrays_never_panic_the_parser(s in "\\[(\\{(\"[a-z_]{1,10}\":(\"[^\"]{0,10}\"|[0-9]{1,14}|null|true|\\[\\]),?){0,6}\\},?){0,5}\\]") {
            let _ = parse_items(s.as_bytes(), false, 1_790_000_000_000, &Limits::default());
        }
    }

    #[test]
    fn a_valid_array_parses_item_by_item() {
        let body =
            br#"[{"event_id":"a","event_time":1789999990000,"channel":"SMS","event_type":"sms.sent","msisdn":"7"}, {"channel":"NOPE"}]"#;
        let items = parse_items(body, false, 1_790_000_000_000, &Limits::default()).unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(matches!(&items[1], Err((reason, _, _)) if *reason == "missing_event_time"));
    }
}
