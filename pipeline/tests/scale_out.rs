//! Scale-out: two `journey process` instances in one group split the partitions; stopping one
//! (SIGTERM) hands its partitions and their state to the other, and nothing is lost.

mod support;

use journey_connectors::generator::{Disorder, GeneratorConfig};
use journey_connectors::topics::create_topics;
use journey_pipeline::migrate;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_of_two_instances_hands_over_without_loss() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    cfg.process.flush_interval = Duration::from_millis(300);
    cfg.process.max_batch_rows = 2000;
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    migrate::migrate(&cfg.clickhouse).await.unwrap();
    let gen = GeneratorConfig {
        customers: 800,
        events: Some(40_000),
        seed: 37,
        anonymous_app_share: 0.5,
        disorder: Disorder { delayed_share: 0.1, duplicate_share: 0.03, ..Disorder::default() },
        ..GeneratorConfig::default()
    };
    let events = publish_generated(&cfg, gen);

    let mut a = spawn_process(&cfg, &[]);
    let mut b = spawn_process(&cfg, &["--exit-when-idle", "8s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while event_rows(&cfg).await < 4000 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = event_rows(&cfg).await;
    assert!(before < 40_000, "the hand-over must happen mid-stream ({before} rows already)");
    // Graceful stop of one instance: it flushes, checkpoints, commits and leaves the group.
    let status = std::process::Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap();
    assert!(status.success());
    let a_status = wait_exit(&mut a, Duration::from_secs(60)).await;
    assert!(a_status.success(), "stopped instance failed: {a_status}");
    let b_status = wait_exit(&mut b, Duration::from_secs(180)).await;
    assert!(b_status.success(), "remaining instance failed: {b_status}");

    assert_same(&expected(&cfg, &events), &in_clickhouse(&cfg).await);
}
