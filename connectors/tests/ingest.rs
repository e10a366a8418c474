//! HTTP ingest against the real local broker: accepted events are readable from the topic,
//! each class of bad input gets its documented status and a DLQ record, auth and rate limits
//! hold, and an unreachable Kafka gives 503 instead of unbounded buffering.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

use journey_connectors::http_ingest::{publisher_for, serve, Ingest, IngestConfig, SourceConfig};
use journey_connectors::testkit::*;
use journey_connectors::topics::create_topics;
use journey_connectors::{now_ms, KafkaConfig, TopicsConfig};
use journey_schemas::{dlq, Codec};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "crm-token-0123456789abcdef";
const SLOW_TOKEN: &str = "slow-token-0123456789abcdef";

struct Server {
    url: String,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    http: reqwest::Client,
}

async fn start(kafka: KafkaConfig, cfg: IngestConfig) -> Server {
    let topics = TopicsConfig::with_prefix(&format!("{}.", unique("ing")));
    let publisher = publisher_for(&kafka, &cfg, Codec::from_manifest().unwrap(), &topics.raw, &topics.dlq).unwrap();
    let ingest = Ingest::new(cfg, publisher, Arc::new(|| "# metrics\n".to_string()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(ingest, listener, std::future::pending()));
    Server { url, kafka, topics, http: reqwest::Client::new() }
}

fn config() -> IngestConfig {
    let mut cfg = IngestConfig { max_body_bytes: 64 * 1024, publish_timeout: Duration::from_secs(3), ..IngestConfig::default() };
    cfg.sources.insert("crm".into(), SourceConfig { token: TOKEN.into(), rate_per_second: 10_000, burst: 10_000 });
    cfg.sources.insert("slow".into(), SourceConfig { token: SLOW_TOKEN.into(), rate_per_second: 1, burst: 2 });
    cfg
}

fn event(i: usize) -> Value {
    json!({
        "event_id": format!("ing-{i}"),
        "event_time": now_ms() - 60_000,
        "channel": "APP",
        "event_type": "screen.view",
        "customer_id": format!("C{i}"),
        "topic": "balance",
        "attrs": {"screen": "home"}
    })
}

impl Server {
    async fn post(&self, token: Option<&str>, content_type: &str, body: Vec<u8>) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.post(format!("{}/v1/events", self.url)).header("content-type", content_type).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn post_json(&self, token: Option<&str>, v: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
        self.post(token, "application/json", serde_json::to_vec(v).unwrap()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_accepts_batches_rejects_bad_input_and_enforces_auth_and_rate_limits() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let kafka = KafkaConfig::with_brokers(&brokers);
    let s = start(kafka.clone(), config()).await;
    create_topics(&kafka, 1, &s.topics.specs()).await.unwrap();

    // A batch: every accepted event is readable from the raw topic.
    let batch: Vec<Value> = (0..25).map(event).collect();
    let (status, body, _) = s.post_json(Some(TOKEN), &Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 25);
    assert_eq!(body["rejected"], 0);
    let codec = Codec::from_manifest().unwrap();
    let records = read_topic(&s.kafka, &s.topics.raw, 25, Duration::from_secs(30));
    let ids: BTreeSet<String> = records.iter().map(|r| codec.decode_event(&r.payload).unwrap().value.event_id).collect();
    assert_eq!(ids, (0..25).map(|i| format!("ing-{i}")).collect());
    let keys: BTreeSet<Vec<u8>> = records.iter().filter_map(|r| r.key.clone()).collect();
    assert!(keys.iter().any(|k| k == b"c:C3"), "keyed by the best identifier");

    // Each class of bad input: its status, its reason, and a DLQ record.
    let mut expected_dlq = Vec::new();
    let (status, body, _) = s.post(Some(TOKEN), "application/json", b"{\"event_id\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "malformed_json");
    expected_dlq.push("malformed_json");
    for (mutate, reason) in [
        (json!({"channel": "PIGEON"}), "unknown_channel"),
        (json!({"customer_id": null}), "missing_identifier"),
        (json!({"event_time": null}), "missing_event_time"),
        (json!({"event_time": now_ms() + 86_400_000}), "event_time_in_future"),
        (json!({"event_time": "not a time"}), "invalid_event_time"),
    ] {
        let mut e = event(100);
        for (k, v) in mutate.as_object().unwrap() {
            e[k] = v.clone();
        }
        let (status, body, _) = s.post_json(Some(TOKEN), &e).await;
        assert_eq!(status, 422, "{reason}: {body}");
        assert_eq!(body["rejected"], 1);
        assert_eq!(body["errors"][0]["reason"], reason, "{body}");
        assert!(!body["errors"][0]["message"].as_str().unwrap().is_empty());
        expected_dlq.push(reason);
    }
    // A mixed NDJSON batch: the good lines are accepted, the bad one is reported by index.
    let ndjson = format!("{}\n{{oops\n{}\n", event(200), event(201));
    let (status, body, _) = s.post(Some(TOKEN), "application/x-ndjson", ndjson.into_bytes()).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["errors"][0]["index"], 1);
    expected_dlq.push("malformed_json");
    // Oversized body.
    let big = vec![b' '; 70 * 1024];
    let (status, body, _) = s.post(Some(TOKEN), "application/json", big).await;
    assert_eq!(status, 413, "{body}");

    let dead = read_topic(&s.kafka, &s.topics.dlq, expected_dlq.len(), Duration::from_secs(30));
    let mut reasons: Vec<String> = dead.iter().map(|d| d.headers[dlq::HEADER_REASON].clone()).collect();
    reasons.sort();
    let mut want: Vec<String> = expected_dlq.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want);
    assert!(dead.iter().all(|d| d.headers[dlq::HEADER_STAGE] == "ingest" && d.headers[dlq::HEADER_ORIGIN] == "ingest:crm"));
    assert!(dead.iter().any(|d| d.payload == b"{\"event_id\": "), "the raw payload is kept");

    // Auth.
    let (status, _, headers) = s.post_json(None, &event(300)).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = s.post_json(Some("not-a-token-0000000000"), &event(300)).await;
    assert_eq!(status, 401);

    // Rate limit: burst 2 events, then 429 with Retry-After.
    for i in 0..2 {
        let (status, body, _) = s.post_json(Some(SLOW_TOKEN), &event(400 + i)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, headers) = s.post_json(Some(SLOW_TOKEN), &event(402)).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);

    let health = s.http.get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unavailable_gives_503_not_unbounded_buffering() {
    // Nothing listens on this port: Kafka is down.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let mut cfg = config();
    cfg.publish_timeout = Duration::from_secs(1);
    let s = start(KafkaConfig::with_brokers(dead_addr), cfg).await;
    let (status, body, headers) = s.post_json(Some(TOKEN), &Value::Array((0..5).map(event).collect())).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "kafka_unavailable");
    assert!(headers.contains_key("retry-after"));
}
