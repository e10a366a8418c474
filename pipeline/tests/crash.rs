//! Effectively-once across a crash: `journey process` is killed with SIGKILL mid-stream and
//! restarted; ClickHouse must then hold exactly what the batch computation gives (nothing
//! lost, nothing duplicated, by session id and version).

mod support;

use journey_connectors::generator::{Disorder, GeneratorConfig};
use journey_connectors::topics::create_topics;
use journey_pipeline::migrate;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    cfg.process.flush_interval = Duration::from_millis(300);
    cfg.process.max_batch_rows = 2000;
    // The restarted process is the same instance: static membership gives it its partitions
    // back at once (a dynamic member killed with SIGKILL would first have to time out).
    cfg.process.instance_id = Some(unique("instance"));
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    migrate::migrate(&cfg.clickhouse).await.unwrap();
    let gen = GeneratorConfig {
        customers: 800,
        events: Some(40_000),
        seed: 31,
        anonymous_app_share: 0.5,
        disorder: Disorder { delayed_share: 0.1, duplicate_share: 0.03, ..Disorder::default() },
        ..GeneratorConfig::default()
    };
    let events = publish_generated(&cfg, gen);

    let mut first = spawn_process(&cfg, &[]);
    // Kill it once it has written part of the stream (and long before it is done).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = event_rows(&cfg).await;
        if rows >= 4000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress before the kill ({rows} rows)");
        assert!(first.try_wait().unwrap().is_none(), "the first process exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye
    first.wait().unwrap();
    let before = event_rows(&cfg).await;
    assert!(before < 40_000, "the crash must happen mid-stream ({before} rows already)");

    let mut second = spawn_process(&cfg, &["--exit-when-idle", "6s"]);
    let status = wait_exit(&mut second, Duration::from_secs(60)).await;
    assert!(status.success(), "restarted process failed: {status}");

    let got = in_clickhouse(&cfg).await;
    assert_same(&expected(&cfg, &events), &got);
    // No (session id, version) twice among the current sessions either.
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    let dup: u64 = ch
        .query("SELECT count() FROM (SELECT session_id FROM sessions FINAL GROUP BY session_id HAVING count() > 1)")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dup, 0);
}
