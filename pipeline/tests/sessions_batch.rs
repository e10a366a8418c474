//! The stateful core against a batch computation: generated journeys with disorder,
//! duplicates and late identity links (anonymous app installs that log in later) go through
//! Kafka, stitch and sessionize; the current sessions in ClickHouse must equal sessions cut by
//! the batch functions over all events at once, with the batch identity graph, and every
//! event must be in `events` once under its canonical customer.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_connectors::generator::{Disorder, GeneratorConfig};
use journey_connectors::topics::create_topics;
use journey_pipeline::migrate;
use journey_pipeline::runtime::{run_all, ProcessOptions};
use journey_schemas::Codec;
use std::collections::HashMap;
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

    identity_links_resolve_to_the_batch_customers(&cfg, &events).await;
    assert_same(&expected(&cfg, &events), &in_clickhouse(&cfg).await);
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Link {
    identifier_kind: String,
    identifier: String,
    customer_id: String,
}

/// `identity_links_current` records, per identifier, its customer when it was linked; an
/// absorbed customer's own identifier points on to the customer that absorbed it. Following
/// that chain must end, for every linked identifier, at the batch canonical customer.
async fn identity_links_resolve_to_the_batch_customers(cfg: &journey_pipeline::Config, events: &[journey_schemas::ChannelEvent]) {
    use journey_pipeline::stitch::{batch_canonical, identifiers, IdKind, Ident};
    let pseudo = pseudonymizer();
    let ids: Vec<Vec<Ident>> = events.iter().map(|e| identifiers(e, &pseudo)).collect();
    let canonical = batch_canonical(&ids);
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    let rows: Vec<Link> =
        ch.query("SELECT identifier_kind, identifier, customer_id FROM identity_links_current").fetch_all().await.unwrap();
    let links: HashMap<(String, String), String> = rows.into_iter().map(|r| ((r.identifier_kind, r.identifier), r.customer_id)).collect();
    let kind = |k: IdKind| match k {
        IdKind::Customer => "customer",
        IdKind::Msisdn => "msisdn",
        IdKind::App => "app",
    };
    let ident_of = |key: &str| match key.split_at_checked(2) {
        Some(("m:", rest)) => ("msisdn".to_string(), rest.to_string()),
        Some(("a:", rest)) => ("app".to_string(), rest.to_string()),
        _ => ("customer".to_string(), key.to_string()),
    };
    let linked: Vec<&Vec<Ident>> = ids.iter().filter(|i| i.len() > 1).collect();
    assert!(!linked.is_empty(), "the data set links identifiers");
    for id in linked.into_iter().flatten() {
        let mut at = links.get(&(kind(id.kind).to_string(), id.value.clone())).unwrap_or_else(|| panic!("{id:?} has no link")).clone();
        for _ in 0..32 {
            match links.get(&ident_of(&at)) {
                Some(next) if *next != at => at = next.clone(),
                _ => break,
            }
        }
        assert_eq!(&at, &canonical[id], "links of {id:?} end elsewhere");
    }
}
