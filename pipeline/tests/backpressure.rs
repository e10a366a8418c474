//! ClickHouse down for 30 s in the middle of a stream: `journey process` must pause
//! consumption (back-pressure) with a bounded buffer, keep its place in the consumer group,
//! and, once ClickHouse answers again, finish with exactly the batch result (no loss, no
//! duplicates).
//!
//! "Down" is real: the process talks to ClickHouse through a TCP relay owned by this test,
//! which, while down, cuts every open connection and refuses new ones.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_connectors::generator::{Disorder, Generated, Generator, GeneratorConfig};
use journey_connectors::publish::BulkPublisher;
use journey_schemas::{ChannelEvent, Codec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `target` that can be switched off and on.
struct Relay {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if d.load(Ordering::SeqCst) {
                    // Refused: closed before a byte is read.
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {} // dropping both streams resets the connection
                    }
                });
            }
        });
        Relay { addr, down, cut }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One sample of the process's `/metrics` (`None` while it does not answer).
async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Publishes generated items (valid events, duplicates, malformed records) to the raw topic.
fn publish(cfg: &journey_pipeline::Config, items: &[Generated]) {
    let mut publisher = BulkPublisher::new(&cfg.kafka, Codec::from_manifest().unwrap(), &cfg.topics.raw, &cfg.topics.dlq).unwrap();
    for g in items {
        match g {
            Generated::Event(e) | Generated::Duplicate(e) => publisher.send_event(e).unwrap(),
            Generated::Malformed { key, payload, .. } => publisher.send_raw(key.as_bytes(), payload).unwrap(),
        }
    }
    publisher.finish(Duration::from_secs(60)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30s_pauses_consumption_and_loses_nothing() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    cfg.process.flush_interval = Duration::from_millis(300);
    cfg.process.max_batch_rows = 1000;
    journey_connectors::topics::create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    journey_pipeline::migrate::migrate(&cfg.clickhouse).await.unwrap();
    let gen = GeneratorConfig {
        customers: 800,
        events: Some(30_000),
        seed: 47,
        anonymous_app_share: 0.5,
        disorder: Disorder { delayed_share: 0.1, duplicate_share: 0.03, ..Disorder::default() },
        ..GeneratorConfig::default()
    };
    // A fifth of the stream up front, the rest trickling in (about 600 records a second) so
    // that records keep arriving before, during and after the outage.
    let items: Vec<Generated> = Generator::new(gen, journey_connectors::now_ms()).collect();
    let events: Vec<ChannelEvent> = items.iter().filter_map(|g| if let Generated::Event(e) = g { Some(e.clone()) } else { None }).collect();
    let (before, after) = items.split_at(items.len() / 5);
    publish(&cfg, before);
    let url = reqwest::Url::parse(&cfg.clickhouse.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap());
    let relay = Relay::start(target).await;

    // The child reaches ClickHouse only through the relay; the test reads it directly.
    let mut child_cfg = cfg.clone();
    child_cfg.clickhouse.url = format!("http://{}", relay.addr);
    let metrics_port = free_port();
    let dir = std::env::temp_dir().join(unique("journey-child"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_journey"))
        .args(["process", "--exit-when-idle", "6s"])
        .current_dir(&dir)
        .envs(child_env(&child_cfg))
        .env("JOURNEY__PROCESS__METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("JOURNEY__PROCESS__SINK_RETRY_FOR", "2s")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn journey process");

    let publishing = {
        let (cfg, after) = (cfg.clone(), after.to_vec());
        tokio::task::spawn_blocking(move || {
            for chunk in after.chunks(600) {
                publish(&cfg, chunk);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    wait_for_rows(&cfg, 3000, &mut child).await;
    relay.set_down(true);
    let outage = Instant::now();
    let inserts_at_outage = event_inserts(&cfg).await;
    let rss_at_outage = rss_kib(child.id());
    let (mut paused_seen, mut max_buffered, mut max_rss) = (false, 0.0f64, rss_at_outage);
    let mut consumed = Vec::new();
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(child.try_wait().unwrap().is_none(), "the process must ride out the outage, not exit");
        paused_seen |= metric(metrics_port, "journey_sink_backpressure").await == Some(1.0);
        max_buffered = max_buffered.max(metric(metrics_port, "journey_sink_buffered_rows").await.unwrap_or(0.0));
        max_rss = max_rss.max(rss_kib(child.id()));
        if let Some(n) = metric(metrics_port, "journey_process_events_in_total").await {
            consumed.push((outage.elapsed(), n));
        }
    }
    assert!(paused_seen, "back-pressure never reported while ClickHouse was down");
    // Bounded: one batch (max_batch_rows, counting events and sessions) plus what one poll and
    // the closing of open sessions can add.
    assert!(max_buffered <= 4000.0, "buffer grew to {max_buffered} rows while ClickHouse was down");
    // Paused: consumption stops once the first failed flush paused the partitions.
    let late: Vec<f64> = consumed.iter().filter(|(t, _)| *t >= Duration::from_secs(10)).map(|(_, n)| *n).collect();
    assert!(late.len() >= 10, "metrics unavailable during the outage");
    assert_eq!(late.first(), late.last(), "records were still consumed 10-30 s into the outage: {consumed:?}");
    assert!(max_rss < rss_at_outage + 200 * 1024, "resident memory grew from {rss_at_outage} KiB to {max_rss} KiB");
    assert_eq!(event_inserts(&cfg).await, inserts_at_outage, "nothing reached ClickHouse while it was down");

    relay.set_down(false);
    publishing.await.unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(120)).await;
    assert!(status.success(), "process failed after ClickHouse returned: {status}");
    assert_same(&expected(&cfg, &events), &in_clickhouse(&cfg).await);
}
