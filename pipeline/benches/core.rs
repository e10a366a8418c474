//! Per-event cost of the processor core, no I/O: decode (Avro, Confluent framing) + validate
//! + stitch (identifiers, pseudonymised phone, identity graph) + sessionize + build the
//! ClickHouse row + encode emitted sessions.
//! Run: `cargo bench -p journey-pipeline --bench core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use journey_connectors::generator::{Generated, Generator, GeneratorConfig};
use journey_pipeline::pii::Pseudonymizer;
use journey_pipeline::sessionize::{SessionEvent, SessionParams, Sessionizer};
use journey_pipeline::sink::clickhouse::EventRow;
use journey_pipeline::stitch::{identifiers, IdentityGraph};
use journey_schemas::validate::{validate_event, Limits};
use journey_schemas::Codec;

const N: usize = 200_000;

fn encoded_events(codec: &Codec) -> Vec<Vec<u8>> {
    let cfg = GeneratorConfig { customers: 50_000, events: Some(N as u64), seed: 3, days: 7, ..GeneratorConfig::default() };
    Generator::new(cfg, 1_800_000_000_000)
        .filter_map(|g| match g {
            Generated::Event(e) => Some(codec.encode_event(&e)),
            _ => None,
        })
        .collect()
}

fn core(c: &mut Criterion) {
    let codec = Codec::from_manifest().unwrap();
    let records = encoded_events(&codec);
    let pseudo = Pseudonymizer::new(b"bench-key-0123456789abcdef").unwrap();
    let limits = Limits::default();
    let params = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 24 * 3_600_000, horizon_ms: 24 * 3_600_000 };
    let lateness = 5 * 60_000;
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(10);
    group.bench_function("decode_validate_stitch_sessionize_encode", |b| {
        b.iter_batched(
            || (Sessionizer::new(params), IdentityGraph::new()),
            |(mut z, mut graph)| {
                let mut sessions = Vec::new();
                let mut rows = Vec::with_capacity(1024);
                let mut out_bytes = 0usize;
                let mut max_t = i64::MIN;
                for (offset, rec) in records.iter().enumerate() {
                    let e = codec.decode_event(rec).unwrap().value;
                    validate_event(&e, 1_800_000_000_000, &limits).unwrap();
                    let ids = identifiers(&e, &pseudo);
                    let key = graph.observe(&ids).canonical;
                    let msisdn_hash = ids
                        .iter()
                        .find(|i| i.kind == journey_pipeline::stitch::IdKind::Msisdn)
                        .map(|i| i.value.clone())
                        .unwrap_or_default();
                    let mut sev = SessionEvent::from_event(&e);
                    sev.offset = offset as i64;
                    z.admit(&key, sev, &mut sessions);
                    max_t = max_t.max(e.event_time);
                    z.advance(max_t - lateness, &mut sessions);
                    rows.push(EventRow::new(&e, &key, msisdn_hash, 0));
                    if rows.len() == 1024 {
                        rows.clear();
                    }
                    for s in sessions.drain(..) {
                        out_bytes += codec.encode_session(&s).len();
                    }
                }
                (z.customers(), graph.customers(), out_bytes)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
