//! `/metrics` of HTTP ingest, through the process-wide Prometheus recorder: accepted events
//! per source, rejections by reason, and the request latency histogram.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_connectors::http_ingest::{publisher_for, serve, Ingest, IngestConfig, SourceConfig};
use journey_connectors::topics::create_topics;
use journey_connectors::{now_ms, KafkaConfig, TopicsConfig};
use journey_pipeline::runtime::http::metrics_handle;
use journey_schemas::Codec;
use std::sync::Arc;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_metrics_count_accepted_rejected_and_latency() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let kafka = KafkaConfig::with_brokers(&brokers);
    let topics = TopicsConfig::with_prefix(&format!("{}.", unique("met")));
    create_topics(&kafka, 1, &topics.specs()).await.unwrap();
    let mut cfg = IngestConfig::default();
    cfg.sources.insert("cti".into(), SourceConfig { token: "cti-token-0123456789abcdef".into(), rate_per_second: 1000, burst: 1000 });
    let publisher = publisher_for(&kafka, &cfg, Codec::from_manifest().unwrap(), &topics.raw, &topics.dlq).unwrap();
    let handle = metrics_handle();
    let ingest = Ingest::new(cfg, publisher, Arc::new(move || handle.render()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(ingest, listener, std::future::pending()));

    let http = reqwest::Client::new();
    let body = serde_json::json!([
        {"event_id": "m1", "event_time": now_ms() - 1000, "channel": "IVR", "event_type": "ivr.menu", "msisdn": "7900"},
        {"event_id": "m2", "event_time": now_ms() - 1000, "channel": "TELEPATHY", "event_type": "x", "msisdn": "7900"}
    ]);
    let resp = http.post(format!("{url}/v1/events")).bearer_auth("cti-token-0123456789abcdef").json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 207);
    let text = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("journey_ingest_accepted_total{source=\"cti\"} 1"), "{text}");
    assert!(text.contains("journey_events_rejected_total{stage=\"ingest\",reason=\"unknown_channel\"} 1"), "{text}");
    assert!(text.contains("journey_ingest_request_seconds_bucket"), "{text}");
}
