//! How fast a partition's processor state is rebuilt from its changelog: `runtime::state::fold`
//! (decode every customer record, keep the latest per key, honour tombstones), no I/O.
//!
//! Run: `cargo bench -p journey-pipeline --bench restore`. The changelog is the one the runtime
//! would write for one partition: the generator's events (default `EVENTS=1000000` over
//! `CUSTOMERS=250000`, 7 days) go through the sessionizer with their raw record kept (as the
//! runtime keeps it for re-attribution), and every 10,000 events each changed customer is
//! written (a tombstone once its state is gone) with the partition's clocks, as a flush does.
//! `restore/changelog` folds all of it (a topic not compacted yet), `restore/compacted` only the
//! latest record per key (what compaction converges to). Throughput is in records; the number
//! of customers restored is printed first, so customers/s = customers / time. `CLOCK=cpu`
//! measures the thread's CPU time instead of wall time (see `support/clock.rs`).

#[path = "support/clock.rs"]
mod clock;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use journey_connectors::generator::{Generated, Generator, GeneratorConfig};
use journey_pipeline::runtime::state::{self, Meta};
use journey_pipeline::sessionize::{SessionEvent, SessionParams, Sessionizer};
use journey_schemas::Codec;
use std::collections::HashMap;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000_000;
const PARAMS: SessionParams = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 24 * 3_600_000, horizon_ms: 24 * 3_600_000 };
const LATENESS: i64 = 5 * 60_000;
const FLUSH_EVERY: usize = 10_000;

type Record = (String, Option<Vec<u8>>);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn flush(codec: &Codec, z: &mut Sessionizer, max_t: i64, log: &mut Vec<Record>) {
    for key in z.take_dirty() {
        let value = z.snapshot(&key).map(|snap| state::encode_customer(codec, &snap));
        log.push((format!("{}{key}", state::CUSTOMER_PREFIX), value));
    }
    let meta =
        Meta { watermark: z.watermark(), max_event_time: max_t, upstream: vec![(0, z.watermark())], upstream_count: 1, ..Meta::default() };
    log.push((state::META_KEY.to_string(), Some(state::encode_meta(&meta))));
}

/// The changelog of one partition, in write order.
fn changelog(codec: &Codec) -> Vec<Record> {
    let cfg = GeneratorConfig {
        customers: env_or("CUSTOMERS", 250_000),
        events: Some(env_or("EVENTS", 1_000_000)),
        seed: 5,
        days: 7,
        ..GeneratorConfig::default()
    };
    let mut z = Sessionizer::new(PARAMS);
    let mut out = Vec::new();
    let mut log = Vec::new();
    let mut max_t = i64::MIN;
    let events = Generator::new(cfg, NOW).filter_map(|g| match g {
        Generated::Event(e) => Some(e),
        _ => None,
    });
    for (offset, e) in events.enumerate() {
        let key = e.best_key().unwrap_or_default();
        let mut sev = SessionEvent::from_event(&e);
        sev.offset = offset as i64;
        sev.payload = Some(Arc::from(codec.encode_event(&e)));
        z.admit(&key, sev, &mut out);
        max_t = max_t.max(e.event_time);
        z.advance(max_t - LATENESS, &mut out);
        out.clear();
        if offset % FLUSH_EVERY == FLUSH_EVERY - 1 {
            flush(codec, &mut z, max_t, &mut log);
        }
    }
    flush(codec, &mut z, max_t, &mut log);
    log
}

fn restore(c: &mut Criterion<clock::Clock>) {
    println!("measuring {}", clock::Clock::from_env().name());
    let codec = Codec::from_manifest().expect("embedded manifest");
    let log = changelog(&codec);
    let mut latest: HashMap<&str, usize> = HashMap::new();
    for (i, (k, _)) in log.iter().enumerate() {
        latest.insert(k, i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    let compacted: Vec<Record> = keep.iter().map(|&i| log[i].clone()).collect();
    let restored = state::fold(&codec, log.clone()).expect("the changelog folds");
    let bytes: usize = log.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
    println!(
        "changelog: {} records ({} MB), {} after compaction; {} customers, {} retained events restored",
        log.len(),
        bytes / 1_000_000,
        compacted.len(),
        restored.customers.len(),
        restored.customers.iter().map(|c| c.events.len()).sum::<usize>()
    );
    let mut group = c.benchmark_group("restore");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (name, records) in [("changelog", &log), ("compacted", &compacted)] {
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(|| records.clone(), |r| state::fold(&codec, r).expect("the changelog folds"), BatchSize::PerIteration)
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(clock::Clock::from_env());
    targets = restore
}
criterion_main!(benches);
