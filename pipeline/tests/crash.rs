//! Effectively-once across crashes: `journey process` is killed with SIGKILL mid-stream and
//! restarted, three times; ClickHouse must then hold exactly what the batch computation gives
//! (nothing lost, nothing duplicated, by session id and version). And the order of writes
//! that makes this hold for identity merges.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    // The restarted process is the same instance: static membership gives it its partitions
    // back at once (a dynamic member killed with SIGKILL would first have to time out).
    let (cfg, events) = child_stream(31, |cfg| cfg.process.instance_id = Some(unique("instance"))).await;

    // Killed three times, each once it has written more of the stream (and long before it
    // is done): each crash lands at another point of a flush, a merge or a restore.
    for rows in [4_000, 12_000, 20_000] {
        let mut child = spawn_process(&cfg, &[]);
        wait_for_rows(&cfg, rows, &mut child).await;
        child.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye
        child.wait().unwrap();
        let before = event_rows(&cfg).await;
        assert!(before < CHILD_STREAM_EVENTS, "the crash must happen mid-stream ({before} rows already)");
    }

    let mut last = spawn_process(&cfg, &["--exit-when-idle", "6s"]);
    let status = wait_exit(&mut last, Duration::from_secs(180)).await;
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

/// The identity topic is never ahead of the keyed topic. A restarted stitch stage rebuilds
/// its graph from that topic and replays what it had not committed; a link it already knows
/// makes the replay key an install's events to the customer directly and send no
/// re-attribution, so one lost in the crash would leave the install's sessions in place for
/// good. Here the keyed topic refuses every record: the stage must fail without publishing a
/// single link (it found some: they reached `identity_links`, which comes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_is_published_before_the_records_derived_with_it() {
    use journey_connectors::generator::GeneratorConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = kafka_brokers();
    require_tcp("Kafka broker", &brokers);
    let mut cfg = test_config(&brokers);
    // Flush on rows, not on time: a first flush that came before any linking event was
    // read would fail on the refused records with no link to hold back, and the test
    // would prove nothing. 300 rows are reached well within the 400 events, which link.
    cfg.process.flush_interval = Duration::from_secs(30);
    cfg.process.max_batch_rows = 300;
    let mut specs = cfg.topics.specs();
    for s in specs.iter_mut().filter(|s| s.name == cfg.topics.keyed) {
        s.configs.push(("max.message.bytes".into(), "16".into()));
    }
    journey_connectors::topics::create_topics(&cfg.kafka, 1, &specs).await.unwrap();
    journey_pipeline::migrate::migrate(&cfg.clickhouse).await.unwrap();
    let gen = GeneratorConfig { customers: 50, events: Some(400), seed: 5, anonymous_app_share: 0.5, ..GeneratorConfig::default() };
    publish_generated(&cfg, gen);

    let opts = journey_pipeline::runtime::ProcessOptions { exit_when_idle: Some(Duration::from_secs(3)), upstream_done: None };
    let codec = journey_schemas::Codec::from_manifest().unwrap();
    let run = journey_pipeline::runtime::stitch::stitch(cfg.clone(), codec, pseudonymizer(), opts, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the stitch stage neither failed nor finished");
    let err = result.expect_err("the keyed topic accepts nothing, yet the stage succeeded");
    assert!(err.to_string().to_lowercase().contains("too large"), "unexpected failure: {err}");

    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    let found: u64 = ch.query("SELECT count() FROM identity_links").fetch_one().await.unwrap();
    assert!(found > 0, "the data set must link identities for this test to mean anything");

    let reader: BaseConsumer = cfg.kafka.client_config().create().unwrap();
    let mut published = 0;
    for p in 0..cfg.topics.partitions {
        let (low, high) = reader.fetch_watermarks(&cfg.topics.identity, p, Duration::from_secs(10)).unwrap();
        published += high - low;
    }
    assert_eq!(published, 0, "links reached the identity topic before their keyed records");
}
