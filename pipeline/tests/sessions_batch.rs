//! The stateful core against a batch computation: generated journeys with disorder,
//! duplicates and late identity links (anonymous app installs that log in later) go through
//! Kafka, stitch and sessionize; the current sessions in ClickHouse must equal sessions cut by
//! the batch functions over all events at once, with the batch identity graph, and every
//! event must be in `events` once under its canonical customer.

mod support;

use journey_connectors::generator::{Disorder, GeneratorConfig};
use journey_connectors::topics::create_topics;
use journey_pipeline::migrate;
use journey_pipeline::runtime::{run_all, ProcessOptions};
use journey_schemas::Codec;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_clickhouse_equal_the_batch_computation() {
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    // Links may come up to two days after an install's first anonymous events: keep them all
    // inside the correction horizon, where the streaming result must equal the batch one.
    // (Beyond the horizon an install's old events stay under its own key, as documented.)
    cfg.process.correction_horizon = Duration::from_secs(72 * 3600);
    create_topics(&cfg.kafka, 1, &cfg.topics.specs()).await.unwrap();
    migrate::migrate(&cfg.clickhouse).await.unwrap();

    let gen = GeneratorConfig {
        customers: 400,
        events: Some(6000),
        seed: 23,
        days: 2,
        anonymous_app_share: 0.6,
        login_share: 0.5,
        disorder: Disorder { delayed_share: 0.2, max_delay: Duration::from_secs(600), duplicate_share: 0.05, malformed_share: 0.0 },
        ..GeneratorConfig::default()
    };
    let events = publish_generated(&cfg, gen);

    run_all(
        cfg.clone(),
        Codec::from_manifest().unwrap(),
        pseudonymizer(),
        ProcessOptions { exit_when_idle: Some(Duration::from_secs(6)), upstream_done: None },
        std::future::pending(),
    )
    .await
    .expect("pipeline");

    assert_same(&expected(&cfg, &events), &in_clickhouse(&cfg).await);
}
