//! Per-event cost of the processor core, no I/O: decode (Avro, Confluent framing) and
//! validate, stitch (identifiers, pseudonymised phone, identity graph), sessionize, build the
//! ClickHouse row and encode emitted sessions.
//!
//! Run: `cargo bench -p journey-pipeline --bench core` (all groups), or one group, e.g.
//! `cargo bench -p journey-pipeline --bench core -- core/all`. `EVENTS=N CUSTOMERS=N` change the
//! data (default 2,000,000 events over 1,000,000 customers and 7 days of event time);
//! `CLOCK=cpu` measures the thread's CPU time instead of wall time (see `support/clock.rs`);
//! `RULES=FILE` gives the detector groups another rule file than the built-in one; `STATE=1`
//! prints, before timing, how many customers and events one pass leaves in the sessionizer and
//! the detector; `PAIRS=N` runs, before the groups, N pairs of `core/all` and
//! `core/all_with_detect` in one process, in turns (ABBA), and prints each pair's ratio and
//! their median: a figure of the detector's overhead that the drift of a shared machine between
//! processes and minutes disturbs much less than two separately timed groups; `ONCE=all` or
//! `ONCE=all_with_detect` runs one pass of that group in the function `once`, prints its wall
//! time and totals and exits, so that perf or callgrind can count just the pass (`REPEAT=N`
//! runs N such passes, each state dropped before the next, so that a profile sees the
//! allocator's reused memory as criterion's iterations do, not only a first pass's fresh pages).
//!
//! Groups: `core/all` is the whole path, one event after another, as the runtime runs it;
//! `core/decode`, `core/stitch`, `core/sessionize` and `core/encode` time each stage alone on
//! inputs prepared (untimed) by the stages before it, so their sum shows where the time goes;
//! `core/detect` does the same for the scenario detector (without session lookups).
//! `core/all_with_detect` is `core/all` plus the scenario detector with the built-in rules
//! (admit after the sessionizer, watermark advance, encode the hits), as the runtime runs it:
//! its ratio to `core/all` is the engine's overhead.
//! Each iteration of these starts from empty state (graph, pseudonym cache, sessionizer,
//! detector). `core/steady/all` and `core/steady/all_with_detect` time the same path over the
//! second half of the stream, after an untimed warm-up over the first half: a processor that
//! has been running, its tables grown and its state at its usual size.

#[path = "support/clock.rs"]
mod clock;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use journey_connectors::generator::{Generated, Generator, GeneratorConfig};
use journey_pipeline::detect::{DetectedHit, Detector, NoSessions, RuleSet};
use journey_pipeline::pii::{PseudonymCache, Pseudonymizer};
use journey_pipeline::sessionize::{Emitted, SessionEvent, SessionParams, Sessionizer};
use journey_pipeline::sink::clickhouse::EventRows;
use journey_pipeline::stitch::{identifiers_into, IdKind, Ident, IdentityGraph, Observation};
use journey_schemas::avro::Spare;
use journey_schemas::validate::{validate_event, Limits};
use journey_schemas::{ChannelEvent, Codec};
use std::sync::Arc;

const NOW: i64 = 1_800_000_000_000;
const PARAMS: SessionParams = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 24 * 3_600_000, horizon_ms: 24 * 3_600_000 };
const LATENESS: i64 = 5 * 60_000;
/// Events between two takes of the changed customers, as the runtime's flush does (without
/// encoding their snapshots, which is the changelog's cost, not the core's).
const FLUSH_EVERY: usize = 10_000;
/// Rows of one `events` insert (the runtime's batches are larger; the rows are reused either way).
const ROWS_PER_INSERT: usize = 1024;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Generated events in emission order, encoded as the raw topic carries them.
fn encoded_events(codec: &Codec) -> Vec<Vec<u8>> {
    let cfg = GeneratorConfig {
        customers: env_or("CUSTOMERS", 1_000_000),
        events: Some(env_or("EVENTS", 2_000_000)),
        seed: 3,
        days: 7,
        ..GeneratorConfig::default()
    };
    Generator::new(cfg, NOW)
        .filter_map(|g| match g {
            Generated::Event(e) => Some(codec.encode_event(&e)),
            _ => None,
        })
        .collect()
}

/// The rules of the detector groups: the built-in set, or the file `RULES` names (to see what
/// a rule set, or a rule left out, costs).
fn bench_rules() -> Arc<RuleSet> {
    let text = match std::env::var("RULES") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("RULES={path}: {e}")),
        Err(_) => journey_pipeline::config::BUILTIN_RULES.to_string(),
    };
    Arc::new(RuleSet::from_toml(&text).expect("valid rules"))
}

fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(b"bench-key-0123456789abcdef").expect("a 26-byte key is long enough")
}

/// What stitching reuses from one event to the next, as the stitch stage does.
#[derive(Default)]
struct StitchBuffers {
    ids: Vec<Ident>,
    obs: Observation,
}

/// Stitches one event: its canonical key (in `buf.obs.canonical`) and its phone pseudonym
/// (see [`msisdn_hash`]).
fn stitch(e: &ChannelEvent, graph: &mut IdentityGraph, pseudo: &mut PseudonymCache, buf: &mut StitchBuffers) {
    identifiers_into(e, pseudo, &mut buf.ids);
    graph.observe_into(&buf.ids, &mut buf.obs);
}

/// The phone pseudonym of the event [`stitch`] last saw (empty without a phone), which the
/// row keeps.
fn msisdn_hash(buf: &StitchBuffers) -> &str {
    buf.ids.iter().find(|i| i.kind == IdKind::Msisdn).map_or("", |i| i.value.as_str())
}

/// What the whole path returns, so nothing is optimised away.
#[derive(Debug, Default)]
struct Totals {
    customers: usize,
    sessions: usize,
    rows: usize,
    bytes: usize,
    dirty: usize,
    hits: usize,
}

/// The processor's state and buffers, carried from one event to the next (and, for the
/// steady-state groups, from the untimed warm-up into the timed part).
struct Core {
    limits: Limits,
    graph: IdentityGraph,
    pseudo: PseudonymCache,
    buf: StitchBuffers,
    z: Sessionizer,
    detector: Option<Detector>,
    hits: Vec<DetectedHit>,
    emitted: Vec<Emitted>,
    /// The record each event is decoded into and the strings its null fields gave back, reused
    /// as the runtime's processor reuses them.
    event: ChannelEvent,
    spare: Spare,
    rows: EventRows,
    /// The changed keys of a flush, reused as the runtime's flush reuses its buffer.
    dirty: Vec<String>,
    max_t: i64,
    t: Totals,
}

impl Core {
    fn new(rules: Option<&Arc<RuleSet>>) -> Core {
        Core {
            limits: Limits::default(),
            graph: IdentityGraph::new(),
            pseudo: PseudonymCache::new(pseudonymizer()),
            buf: StitchBuffers::default(),
            z: Sessionizer::new(PARAMS),
            detector: rules.map(|r| Detector::beside_sessions(r.clone(), PARAMS.horizon_ms, PARAMS.gap_ms)),
            hits: Vec::new(),
            emitted: Vec::new(),
            event: ChannelEvent::default(),
            spare: Spare::default(),
            rows: EventRows::default(),
            dirty: Vec::new(),
            max_t: i64::MIN,
            t: Totals::default(),
        }
    }

    /// The whole path over `records`, whose first one has input offset `first_offset`.
    fn run(&mut self, codec: &Codec, records: &[Vec<u8>], first_offset: usize) {
        let Core { limits, graph, pseudo, buf, z, detector, hits, emitted, event, spare, rows, dirty, max_t, t } = self;
        for (i, rec) in records.iter().enumerate() {
            let offset = first_offset + i;
            // decode
            codec.decode_event_into(rec, event, spare).expect("generated records decode");
            let e = &*event;
            validate_event(e, NOW, limits).expect("generated events are valid");
            // stitch
            stitch(e, graph, pseudo, buf);
            let key = buf.obs.canonical.as_str();
            // sessionize
            let mut sev = SessionEvent::from_event(e);
            sev.offset = offset as i64;
            z.admit(key, sev, emitted);
            *max_t = (*max_t).max(e.event_time);
            z.advance(*max_t - LATENESS, emitted);
            // detect (with rules): after the sessionizer, as in the runtime's processor
            if let Some(d) = detector.as_mut() {
                d.admit_event(key, e, z, hits);
                d.advance(*max_t - LATENESS, z, hits);
                t.hits += hits.len();
                for h in hits.drain(..) {
                    t.bytes += codec.encode_hit(&h.hit).len();
                }
            }
            if offset % FLUSH_EVERY == FLUSH_EVERY - 1 {
                z.take_dirty_into(dirty);
                if let Some(d) = detector.as_mut() {
                    d.take_dirty_into(dirty);
                }
                t.dirty += dirty.len();
                dirty.clear();
            }
            // encode
            rows.push(e, key, msisdn_hash(buf), 0);
            if rows.len() == ROWS_PER_INSERT {
                t.rows += rows.len();
                rows.clear();
            }
            t.sessions += emitted.len();
            for s in emitted.drain(..) {
                t.bytes += codec.encode_session(&s).len();
            }
        }
        t.customers = graph.customers();
    }
}

/// The whole path from empty state. The state is returned so that dropping it is not timed
/// (the runtime never drops it).
fn all(codec: &Codec, records: &[Vec<u8>], rules: Option<&Arc<RuleSet>>) -> Core {
    let mut core = Core::new(rules);
    core.run(codec, records, 0);
    core
}

/// The `ONCE` mode: one pass of the whole path, in a function of its own so that a profiler
/// can count only it (`valgrind --tool=callgrind --toggle-collect='*once*'`); the state is
/// returned, so that dropping it is not counted.
#[inline(never)]
fn once(codec: &Codec, records: &[Vec<u8>], rules: Option<&Arc<RuleSet>>) -> Core {
    all(codec, records, rules)
}

/// The `PAIRS` mode: `pairs` runs of the whole path without and with the detector, timed
/// back to back by the benchmarks' clock, the order alternating (ABBA) so that neither side
/// always runs on the heap the other left. Prints each pair's ratio and the median ratio.
fn paired_overhead(codec: &Codec, records: &[Vec<u8>], rules: &Arc<RuleSet>, pairs: usize) {
    use criterion::measurement::Measurement;
    let clock = clock::Clock::from_env();
    let timed = |rules: Option<&Arc<RuleSet>>| {
        let started = clock.start();
        let core = all(codec, records, rules);
        let took = clock.end(started);
        drop(core);
        took.as_secs_f64()
    };
    let mut ratios = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (plain, with) = if i % 4 == 0 || i % 4 == 3 {
            let plain = timed(None);
            (plain, timed(Some(rules)))
        } else {
            let with = timed(Some(rules));
            (timed(None), with)
        };
        ratios.push(with / plain);
        println!("pair {}: core/all {plain:.3} s, core/all_with_detect {with:.3} s, overhead {:+.1}%", i + 1, 100.0 * (with / plain - 1.0));
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(&median) = ratios.get(ratios.len() / 2) {
        println!("median overhead over {pairs} pairs: {:+.1}%", 100.0 * (median - 1.0));
    }
}

fn core(c: &mut Criterion<clock::Clock>) {
    println!("measuring {}", clock::Clock::from_env().name());
    let codec = Codec::from_manifest().expect("embedded manifest");
    let records = encoded_events(&codec);
    let n = records.len() as u64;
    let limits = Limits::default();
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("all", |b| b.iter_with_large_drop(|| all(&codec, &records, None)));
    let rules = bench_rules();
    if std::env::var_os("STATE").is_some() {
        // What one pass leaves in memory (untimed): how much state the detector adds.
        let core = all(&codec, &records, Some(&rules));
        let d = core.detector.as_ref().expect("rules given");
        println!(
            "state after one pass: sessionizer {} customers, {} events; detector {} customers, {} events, {} hit records emitted, about {} bytes of heap (served from the sessionizer: {:?})",
            core.z.customers(),
            core.z.retained_events(),
            d.customers(),
            d.retained_events(),
            core.t.hits,
            d.approx_heap_bytes(),
            d.served_rules()
        );
    }
    if let Ok(which) = std::env::var("ONCE") {
        let with = match which.as_str() {
            "all" => None,
            "all_with_detect" => Some(&rules),
            other => panic!("ONCE={other}: expected all or all_with_detect"),
        };
        // REPEAT passes in one process, each state dropped before the next, as criterion drops
        // it between iterations: a profile then sees the allocator's reused memory, not only
        // the fresh pages of a first pass.
        for _ in 0..env_or("REPEAT", 1) {
            let started = std::time::Instant::now();
            let core = once(&codec, &records, with);
            println!("one pass of core/{which}: {:.3} s wall, {:?}", started.elapsed().as_secs_f64(), core.t);
        }
        std::process::exit(0);
    }
    if let Some(pairs) = std::env::var("PAIRS").ok().and_then(|s| s.parse::<usize>().ok()) {
        paired_overhead(&codec, &records, &rules, pairs);
    }
    group.bench_function("all_with_detect", |b| b.iter_with_large_drop(|| all(&codec, &records, Some(&rules))));

    // Steady state: the first half of the stream builds the state untimed (every customer of
    // it known to the identity graph, the sessionizer and the detector holding their recent
    // history, the allocator's pages in use), then the second half is timed. This is what a
    // processor that has been running for days does per event; the groups above also pay for
    // growing every table from empty.
    group.finish();
    let half = records.len() / 2;
    let (warm, timed) = records.split_at(half);
    let mut steady = c.benchmark_group("core/steady");
    steady.throughput(Throughput::Elements(timed.len() as u64));
    steady.sample_size(10);
    steady.sampling_mode(SamplingMode::Flat);
    for (name, rules) in [("all", None), ("all_with_detect", Some(&rules))] {
        steady.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut core = Core::new(rules);
                    core.run(&codec, warm, 0);
                    core
                },
                |mut core| {
                    core.run(&codec, timed, half);
                    core
                },
                BatchSize::PerIteration,
            )
        });
    }
    steady.finish();
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("decode", |b| {
        b.iter_with_large_drop(|| {
            let (mut ids, mut e, mut spare) = (0usize, ChannelEvent::default(), Spare::default());
            for rec in &records {
                codec.decode_event_into(rec, &mut e, &mut spare).expect("generated records decode");
                validate_event(&e, NOW, &limits).expect("generated events are valid");
                ids += e.event_id.len();
            }
            ids
        })
    });

    // Inputs of the later stages, made once by the stages before them.
    let events: Vec<ChannelEvent> = records.iter().map(|r| codec.decode_event(r).expect("decodes").value).collect();
    drop(records);
    group.bench_function("stitch", |b| {
        b.iter_batched(
            || (IdentityGraph::new(), PseudonymCache::new(pseudonymizer()), StitchBuffers::default()),
            |(mut graph, mut pseudo, mut buf)| {
                let mut bytes = 0usize;
                for e in &events {
                    stitch(e, &mut graph, &mut pseudo, &mut buf);
                    bytes += buf.obs.canonical.len() + msisdn_hash(&buf).len();
                }
                (graph, bytes)
            },
            BatchSize::PerIteration,
        )
    });

    let mut graph = IdentityGraph::new();
    let mut pseudo = PseudonymCache::new(pseudonymizer());
    let mut buf = StitchBuffers::default();
    let stitched: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            stitch(e, &mut graph, &mut pseudo, &mut buf);
            (buf.obs.canonical.clone(), msisdn_hash(&buf).to_string())
        })
        .collect();
    drop(graph);
    let session_input: Vec<SessionEvent> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| {
            let mut sev = SessionEvent::from_event(e);
            sev.offset = offset as i64;
            sev
        })
        .collect();
    let run_sessionizer = |input: Vec<SessionEvent>, out: &mut Vec<Emitted>, keep: bool| {
        let mut z = Sessionizer::new(PARAMS);
        let mut max_t = i64::MIN;
        let mut count = 0usize;
        let mut dirty = Vec::new();
        for (i, (sev, (key, _))) in input.into_iter().zip(&stitched).enumerate() {
            let time = sev.time;
            z.admit(key, sev, out);
            max_t = max_t.max(time);
            z.advance(max_t - LATENESS, out);
            count += out.len();
            if !keep {
                out.clear();
            }
            if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                z.take_dirty_into(&mut dirty);
                count += dirty.len();
                dirty.clear();
            }
        }
        (z, count)
    };
    group.bench_function("sessionize", |b| {
        b.iter_batched(
            || (session_input.clone(), Vec::new()),
            |(input, mut out)| run_sessionizer(input, &mut out, false),
            BatchSize::PerIteration,
        )
    });

    // detect: the scenario detector alone (built-in rules) on the decoded events and their
    // keys, as in core/all_with_detect but without the other stages beside it and without
    // session lookups: against the overhead core/all_with_detect shows, what it costs by itself.
    group.bench_function("detect", |b| {
        b.iter_with_large_drop(|| {
            let mut d = Detector::new(rules.clone(), PARAMS.horizon_ms);
            let mut hits: Vec<DetectedHit> = Vec::new();
            let (mut max_t, mut count) = (i64::MIN, 0usize);
            let mut dirty = Vec::new();
            for (i, (e, (key, _))) in events.iter().zip(&stitched).enumerate() {
                d.admit_event(key, e, &NoSessions, &mut hits);
                max_t = max_t.max(e.event_time);
                d.advance(max_t - LATENESS, &NoSessions, &mut hits);
                for h in hits.drain(..) {
                    count += codec.encode_hit(&h.hit).len();
                }
                if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                    d.take_dirty_into(&mut dirty);
                    count += dirty.len();
                    dirty.clear();
                }
            }
            (d, count)
        })
    });

    // encode: the ClickHouse row of every event (refilling the rows of the last insert, as the
    // runtime does) and the Avro record of every emitted session.
    let mut sessions = Vec::new();
    drop(run_sessionizer(session_input, &mut sessions, true));
    group.bench_function("encode", |b| {
        b.iter_with_large_drop(|| {
            let (mut bytes, mut rows) = (0usize, EventRows::default());
            for (e, (key, hash)) in events.iter().zip(&stitched) {
                rows.push(e, key, hash, 0);
                if rows.len() == ROWS_PER_INSERT {
                    rows.clear();
                }
            }
            for s in &sessions {
                bytes += codec.encode_session(s).len();
            }
            (rows, bytes)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(clock::Clock::from_env());
    targets = core
}
criterion_main!(benches);
