//! The stitch stage: `journey.events.raw` -> `journey.events.keyed`.
//!
//! Resolves each event's identifiers to its customer's canonical key and re-publishes the
//! record, byte for byte, keyed by that key, so all of one customer's events meet in one
//! partition of the keyed topic. Invalid records are dead-lettered here. New identity links
//! go to the compacted `journey.identity` topic, which every instance replays at start and
//! tails while running, so all instances share one identity graph. When components merge (a
//! late login, a CRM-identified call), a control record `reattribute` is sent to the old
//! key's partition, where the processor moves that key's state to the new key.
//!
//! Event time: events of one customer come from several raw partitions that are read at
//! different paces (a backfill may read one partition a day ahead of another), so a keyed
//! partition's own clock would run ahead and make on-time events late. Instead the stitch
//! stage sends, for each raw partition it owns, a watermark (max event time seen minus
//! `allowed_lateness`) to every keyed partition, after the events it covers; the processor
//! takes the minimum over all raw partitions. A raw partition quiet for `idle_timeout` of
//! wall-clock time stops holding the others back, and when the whole stage is quiet the
//! watermarks pass every event seen plus `gap`, so all sessions close.
//!
//! Guarantee: at-least-once. Raw offsets are committed only after every record derived from
//! them (keyed events, links, control records, dead letters) was acknowledged by Kafka, and
//! the links by ClickHouse (`identity_links`); a replay re-sends identical records, which the
//! processor deduplicates by event id (and `identity_links` by identifier). The identity
//! topic is written last, once everything else of the batch is acknowledged, so it is never
//! ahead of the keyed topic: a merge whose control record a crash lost is found again by the
//! replay, which does not know its link yet (see `flush`). While ClickHouse
//! does not acknowledge, consumption pauses (back-pressure) as in the processor.

use super::{send, BackPressure, ProcessOptions};
use crate::config::Config;
use crate::pii::{PseudonymCache, Pseudonymizer};
use crate::sink::clickhouse::{batch_token, client, Backoff, ClickHouseSink, IdentityRow};
use crate::stitch::{identifiers_into, IdentityGraph, Merge, Observation};
use crate::Error;
use journey_connectors::now_ms;
use journey_connectors::publish::DeadLetter;
use journey_schemas::validate::{validate_event, Limits};
use journey_schemas::Codec;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Header naming a control record's kind.
pub const CONTROL_HEADER: &str = "journey.control";
/// Control kind: move the record key's state to the key in [`REATTRIBUTE_TO_HEADER`].
pub const CONTROL_REATTRIBUTE: &str = "reattribute";
/// Target key of a re-attribution.
pub const REATTRIBUTE_TO_HEADER: &str = "journey.reattribute.to";
/// Control kind: the watermark of one raw partition (sent to every keyed partition).
pub const CONTROL_WATERMARK: &str = "watermark";
/// Raw partition a watermark is for.
pub const WM_PARTITION_HEADER: &str = "journey.wm.partition";
/// Number of raw partitions (a keyed partition's watermark is the minimum over all of them).
pub const WM_PARTITIONS_HEADER: &str = "journey.wm.partitions";
/// Watermark, epoch ms: no event of that raw partition older than this is still expected
/// (except late ones).
pub const WM_TIME_HEADER: &str = "journey.wm.time";
/// Control kind, sent by the processor to its own keyed partition: the partition received
/// nothing for `idle_timeout`, so close what is open up to the event time in [`WM_TIME_HEADER`]
/// (the latest seen then). The decision is taken on wall-clock time but acted on only when the
/// record is read back, at its place in the log, so a replay after a crash repeats it exactly.
pub const CONTROL_IDLE: &str = "idle";
/// Present (`1`) when the whole stitch stage was quiet for `idle_timeout`: event time is then
/// taken to have passed every open window (sessions and absence rules) of what was seen.
pub const WM_QUIET_HEADER: &str = "journey.wm.quiet";

/// Totals of a stitch run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StitchSummary {
    /// Raw records consumed.
    pub consumed: u64,
    /// Events forwarded to the keyed topic.
    pub forwarded: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Identity records published.
    pub links: u64,
    /// Re-attribution control records sent.
    pub merges: u64,
}

fn identity_reader(cfg: &Config) -> Result<BaseConsumer, Error> {
    let consumer: BaseConsumer = cfg
        .kafka
        .client_config()
        .set("group.id", format!("{}-identity-reader", cfg.process.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = consumer.fetch_metadata(Some(&cfg.topics.identity), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&cfg.topics.identity, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Sends a control record moving `m.from`'s state to `m.to`.
fn send_merge(pending: &mut Vec<DeliveryFuture>, producer: &FutureProducer, topic: &str, m: &Merge) {
    let headers = OwnedHeaders::new()
        .insert(Header { key: CONTROL_HEADER, value: Some(CONTROL_REATTRIBUTE) })
        .insert(Header { key: REATTRIBUTE_TO_HEADER, value: Some(m.to.as_str()) });
    send(pending, producer, FutureRecord::to(topic).key(m.from.as_bytes()).payload(&[][..]).headers(headers));
}

/// Runs the stitch stage until `shutdown` resolves (or, with `exit_when_idle`, until idle).
pub async fn stitch(
    cfg: Config,
    codec: Codec,
    pseudo: Pseudonymizer,
    opts: ProcessOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<StitchSummary, Error> {
    let producer: FutureProducer = cfg.kafka.producer_config().create()?;
    let identity = identity_reader(&cfg)?;
    let mut graph = IdentityGraph::new();
    let mut pseudo = PseudonymCache::new(pseudo);
    // Buffers of the per-record hot path, reused.
    let mut ids = Vec::new();
    let mut obs = Observation::default();
    // Catch up on the identity topic before resolving anything: read until it is quiet.
    let mut quiet_since = Instant::now();
    let mut replayed = 0u64;
    while quiet_since.elapsed() < Duration::from_millis(500) {
        match identity.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    graph.apply_link(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
                    replayed += 1;
                }
                quiet_since = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    tracing::info!(records = replayed, customers = graph.customers(), "identity graph restored");

    let mut ccfg = super::consumer_config(&cfg);
    ccfg.set("group.id", format!("{}-stitch", cfg.process.group_id));
    if let Some(id) = cfg.process.instance_id.as_deref().filter(|s| !s.is_empty()) {
        ccfg.set("group.instance.id", format!("{id}-stitch"));
    }
    let consumer: StreamConsumer = ccfg.create()?;
    consumer.subscribe(&[&cfg.topics.raw])?;
    let limits = Limits::default();
    let mut summary = StitchSummary::default();
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    let md = consumer.fetch_metadata(Some(&cfg.topics.keyed), Duration::from_secs(10))?;
    let keyed_partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let md = consumer.fetch_metadata(Some(&cfg.topics.raw), Duration::from_secs(10))?;
    let raw_partitions = md.topics().iter().map(|t| t.partitions().len()).sum::<usize>();
    let mut clocks: HashMap<i32, (i64, Instant)> = HashMap::new();
    let lateness = cfg.process.allowed_lateness.as_millis() as i64;
    let gap = cfg.process.gap.as_millis() as i64;
    let backoff = Backoff { give_up_after: Some(cfg.process.sink_retry_for), ..Backoff::default() };
    let sink = ClickHouseSink::new(client(&cfg.clickhouse), backoff, true);
    let mut link_rows: Vec<IdentityRow> = Vec::new();
    // Links for the identity topic, sent only at a flush, after everything derived with them.
    let mut links: Vec<(String, String)> = Vec::new();
    let mut bp = BackPressure::new("stitch", false);
    let mut last_flush = Instant::now();
    let mut last_record = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            msg = consumer.recv() => {
                let msg = msg?;
                last_record = Instant::now();
                summary.consumed += 1;
                // Committed offsets name the next record to read, hence +1.
                next_offsets.insert(msg.partition(), msg.offset() + 1);
                let payload = msg.payload().unwrap_or(&[]);
                let origin = || format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
                let rejected = match codec.decode_event(payload) {
                    Err(e) => {
                        let reason = super::decode_reason(&e);
                        Err((reason, e.to_string()))
                    }
                    Ok(d) => validate_event(&d.value, now_ms(), &limits).map(|()| d.value).map_err(|r| (r.code, r.detail)),
                };
                let event = match rejected {
                    Ok(e) => e,
                    Err((reason, detail)) => {
                        summary.dead_lettered += 1;
                        let o = origin();
                        let dl = DeadLetter { key: msg.key(), payload, reason, detail: &detail, stage: "process", origin: &o };
                        super::send_dead_letter(&mut pending, &producer, &cfg.topics.dlq, reason, dl);
                        continue;
                    }
                };
                let clock = clocks.entry(msg.partition()).or_insert((i64::MIN, Instant::now()));
                clock.0 = clock.0.max(event.event_time);
                clock.1 = Instant::now();
                identifiers_into(&event, &mut pseudo, &mut ids);
                graph.observe_into(&ids, &mut obs);
                let linked = now_ms() as u64;
                for (k, v) in &obs.links {
                    summary.links += 1;
                    link_rows.extend(IdentityRow::from_link(k, v, event.event_time, linked));
                }
                links.append(&mut obs.links); // moved, not copied: the next observation clears it anyway
                for m in &obs.merges {
                    summary.merges += 1;
                    send_merge(&mut pending, &producer, &cfg.topics.keyed, m);
                }
                summary.forwarded += 1;
                send(&mut pending, &producer, FutureRecord::to(&cfg.topics.keyed).key(obs.canonical.as_bytes()).payload(payload));
            }
            _ = tick.tick() => {
                // Links published by other instances: merges they imply move state too.
                while let Some(m) = identity.poll(Duration::ZERO) {
                    let m = m?;
                    if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                        if let Some(merge) = graph.apply_link(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v)) {
                            summary.merges += 1;
                            send_merge(&mut pending, &producer, &cfg.topics.keyed, &merge);
                        }
                    }
                }
            }
            _ = &mut shutdown => break,
        }
        let due = pending.len() + links.len() + link_rows.len() >= cfg.process.max_batch_rows
            || last_flush.elapsed() >= cfg.process.flush_interval;
        if due && bp.may_flush() {
            let owned: Vec<i32> = consumer.assignment()?.elements_for_topic(&cfg.topics.raw).iter().map(|e| e.partition()).collect();
            let marks = watermarks(&owned, &clocks, lateness, gap, cfg.process.idle_timeout);
            send_watermarks(&mut pending, &producer, &cfg.topics.keyed, &keyed_partitions, raw_partitions, &marks);
            let out = Outputs { producer: &producer, pending: &mut pending, links: &mut links, link_rows: &mut link_rows };
            match flush(&consumer, &cfg, out, &next_offsets, CommitMode::Async, &sink).await {
                Ok(()) => {
                    last_flush = Instant::now();
                    if bp.acknowledged(&consumer) {
                        // Paused time is not idle time: records may flow again now.
                        last_record = Instant::now();
                    }
                }
                Err(e) if BackPressure::applies(&e) => bp.failed(&consumer, &e, link_rows.len()),
                Err(e) => return Err(e),
            }
        }
        if let Some(idle) = opts.exit_when_idle {
            let owned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            if owned == 0 {
                // Not assigned yet (a rebalance may wait for a dead member's session to expire).
                last_record = Instant::now();
            } else if !bp.paused() && last_record.elapsed() >= idle && pending.is_empty() && links.is_empty() && link_rows.is_empty() {
                break;
            }
        }
    }
    let owned: Vec<i32> = consumer.assignment()?.elements_for_topic(&cfg.topics.raw).iter().map(|e| e.partition()).collect();
    let marks = watermarks(&owned, &clocks, lateness, gap, cfg.process.idle_timeout);
    send_watermarks(&mut pending, &producer, &cfg.topics.keyed, &keyed_partitions, raw_partitions, &marks);
    let out = Outputs { producer: &producer, pending: &mut pending, links: &mut links, link_rows: &mut link_rows };
    flush(&consumer, &cfg, out, &next_offsets, CommitMode::Sync, &sink).await?;
    tracing::info!(?summary, "stitch stopped");
    Ok(summary)
}

/// The watermark of each owned raw partition: its max event time minus `lateness`; a
/// partition quiet for `idle` follows the busiest one; when all are quiet, every watermark
/// passes the latest event seen by `gap`, which closes every session, and is flagged quiet.
pub fn watermarks(owned: &[i32], clocks: &HashMap<i32, (i64, Instant)>, lateness: i64, gap: i64, idle: Duration) -> Vec<(i32, i64, bool)> {
    let latest = clocks.values().map(|c| c.0).max().unwrap_or(i64::MIN);
    let all_quiet = clocks.values().all(|c| c.1.elapsed() >= idle);
    owned
        .iter()
        .map(|&p| {
            let quiet = all_quiet && latest != i64::MIN;
            let wm = match clocks.get(&p) {
                _ if quiet => latest.saturating_add(gap).saturating_add(1),
                Some(&(t, at)) if at.elapsed() < idle => t.saturating_sub(lateness),
                // Quiet or never seen: do not hold the others back.
                _ => latest.saturating_sub(lateness),
            };
            (p, wm, quiet)
        })
        .collect()
}

fn send_watermarks(
    pending: &mut Vec<DeliveryFuture>,
    producer: &FutureProducer,
    topic: &str,
    keyed: &[i32],
    raw_partitions: usize,
    marks: &[(i32, i64, bool)],
) {
    for &(raw, wm, quiet) in marks {
        if wm == i64::MIN {
            continue;
        }
        let (raw_s, n_s, wm_s) = (raw.to_string(), raw_partitions.to_string(), wm.to_string());
        for &kp in keyed {
            let headers = OwnedHeaders::new()
                .insert(Header { key: CONTROL_HEADER, value: Some(CONTROL_WATERMARK) })
                .insert(Header { key: WM_PARTITION_HEADER, value: Some(raw_s.as_str()) })
                .insert(Header { key: WM_PARTITIONS_HEADER, value: Some(n_s.as_str()) })
                .insert(Header { key: WM_TIME_HEADER, value: Some(wm_s.as_str()) })
                .insert(Header { key: WM_QUIET_HEADER, value: quiet.then_some("1") });
            send(pending, producer, FutureRecord::to(topic).partition(kp).payload(&[][..]).key(&[][..]).headers(headers));
        }
    }
}

/// What a flush makes durable.
struct Outputs<'a> {
    producer: &'a FutureProducer,
    /// Keyed events, control records and dead letters already sent.
    pending: &'a mut Vec<DeliveryFuture>,
    /// Links not yet sent to the identity topic.
    links: &'a mut Vec<(String, String)>,
    /// Links not yet in ClickHouse.
    link_rows: &'a mut Vec<IdentityRow>,
}

/// Makes the links durable in ClickHouse and everything sent durable in Kafka, then commits.
///
/// The identity topic comes last: a link is published only once every keyed event and
/// re-attribution derived with it is acknowledged. A restarted stage rebuilds its graph from
/// that topic and replays the uncommitted raw records; had a link got there first, the replay
/// would know it already, key the install's events to the customer directly and never send
/// the re-attribution the crash lost, and the old key's sessions would stay in place for good.
/// Behind instead of ahead, the replay finds the merge again and re-sends its control record,
/// which the processor recognises.
///
/// On a ClickHouse error the rows stay in `link_rows` for the next call (same rows, same token).
async fn flush(
    consumer: &StreamConsumer,
    cfg: &Config,
    out: Outputs<'_>,
    next_offsets: &HashMap<i32, i64>,
    mode: CommitMode,
    sink: &ClickHouseSink,
) -> Result<(), Error> {
    let rows = out.link_rows;
    let token = batch_token("identity_links", rows.iter().map(|r| format!("{}:{}/{}", r.identifier_kind, r.identifier, r.version)));
    sink.insert("identity_links", rows, &token).await?;
    rows.clear();
    super::await_acks(std::mem::take(out.pending)).await?;
    let mut acks = Vec::with_capacity(out.links.len());
    for (k, v) in out.links.drain(..) {
        send(&mut acks, out.producer, FutureRecord::to(&cfg.topics.identity).key(k.as_bytes()).payload(v.as_bytes()));
    }
    super::await_acks(acks).await?;
    if next_offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in next_offsets {
        tpl.add_partition_offset(&cfg.topics.raw, p, Offset::Offset(o))?;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "stitch offset commit failed; will retry at the next flush");
    }
    Ok(())
}
