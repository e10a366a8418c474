//! `journey process`: the consumer loop around the processors.
//!
//! Guarantees: at-least-once into ClickHouse and `journey.sessions`, with duplicates removed
//! downstream by deterministic ids (event ids; session ids + versions in ReplacingMergeTree).
//! Input offsets are committed only after (1) ClickHouse acknowledged every row derived from
//! records before them, (2) Kafka acknowledged every session, dead letter and late record
//! derived from them, and (3) no open (not yet emitted) session still depends on them: the
//! commit point of a partition is the smallest offset among events of its open sessions. A
//! crash therefore replays from there and loses nothing.
//!
//! Ordering: per input partition, events are processed in offset order; event-time order is
//! rebuilt by the sessionizer. Kafka polling is async (rdkafka's StreamConsumer); the per-event
//! work is a few microseconds, so the loop yields to the runtime between messages.

pub mod http;

use crate::config::Config;
use crate::pii::Pseudonymizer;
use crate::sessionize::{Admission, SessionEvent, SessionParams, Sessionizer};
use crate::sink::clickhouse::{batch_token, client, Backoff, ClickHouseSink, EventRow, SessionRow};
use crate::Error;
use journey_connectors::metrics;
use journey_connectors::publish::DeadLetter;
use journey_connectors::now_ms;
use journey_schemas::validate::{validate_event, Limits};
use journey_schemas::{ChannelEvent, Codec, Session};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of one `process` run.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Exit once no record arrived for this long and every session was flushed (batch runs,
    /// demos, tests). `None` runs until stopped.
    pub exit_when_idle: Option<Duration>,
}

/// Totals of a `process` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSummary {
    /// Records consumed.
    pub consumed: u64,
    /// Events accepted (written to `events`).
    pub accepted: u64,
    /// Duplicate events dropped.
    pub duplicates: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Events beyond the correction horizon, sent to the late topic.
    pub late: u64,
    /// Session records emitted (including new versions and retractions).
    pub sessions: u64,
}

/// Records partition assignment changes seen during polls.
#[derive(Default, Clone)]
pub struct RebalanceLog(Arc<Mutex<Vec<(bool, Vec<i32>)>>>);

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let entry = match rebalance {
            Rebalance::Assign(tpl) => (true, tpl.elements().iter().map(|e| e.partition()).collect()),
            Rebalance::Revoke(tpl) => (false, tpl.elements().iter().map(|e| e.partition()).collect()),
            Rebalance::Error(e) => {
                tracing::error!(error = %e, "rebalance error");
                return;
            }
        };
        tracing::info!(assigned = entry.0, partitions = ?entry.1, "rebalance");
        if let Ok(mut log) = self.0.lock() {
            log.push(entry);
        }
    }
}

struct PartitionState {
    sessionizer: Sessionizer,
    /// Offset of the next record to read (last consumed + 1): what a commit stores.
    next_offset: i64,
    /// Last offset committed for this partition.
    committed: i64,
    max_event_time: i64,
    last_event_wall: Instant,
}

/// The processor: state per assigned partition plus buffers awaiting the next flush.
pub struct Processor {
    cfg: Config,
    codec: Codec,
    pseudo: Pseudonymizer,
    limits: Limits,
    params: SessionParams,
    partitions: HashMap<i32, PartitionState>,
    event_rows: Vec<EventRow>,
    sessions: Vec<Session>,
    pending: Vec<DeliveryFuture>,
    summary: ProcessSummary,
}

impl Processor {
    /// A processor with empty state.
    pub fn new(cfg: Config, codec: Codec, pseudo: Pseudonymizer) -> Processor {
        let p = &cfg.process;
        let params = SessionParams {
            gap_ms: p.gap.as_millis() as i64,
            max_duration_ms: p.max_duration.as_millis() as i64,
            horizon_ms: p.correction_horizon.as_millis() as i64,
        };
        Processor {
            codec,
            pseudo,
            limits: Limits::default(),
            params,
            partitions: HashMap::new(),
            event_rows: Vec::new(),
            sessions: Vec::new(),
            pending: Vec::new(),
            summary: ProcessSummary::default(),
            cfg,
        }
    }

    /// The canonical customer key of an event: the CRM id when present, else the pseudonymised
    /// phone number, else the app install. (Identity stitching refines this across events.)
    pub fn customer_key(&self, e: &ChannelEvent) -> Option<String> {
        if let Some(c) = e.customer_id.as_deref().filter(|c| !c.is_empty()) {
            Some(c.to_string())
        } else if let Some(m) = e.msisdn.as_deref().filter(|m| !m.is_empty()) {
            Some(format!("m:{}", self.pseudo.hash(m)))
        } else {
            e.app_instance_id.as_deref().filter(|a| !a.is_empty()).map(|a| format!("a:{a}"))
        }
    }

    fn dead_letter(&mut self, producer: &FutureProducer, key: Option<&[u8]>, payload: &[u8], reason: &'static str, detail: &str, origin: &str) {
        metrics::events_rejected("process", reason, 1);
        metrics::dead_lettered("process", 1);
        tracing::warn!(origin, reason, detail, "record dead-lettered");
        self.summary.dead_lettered += 1;
        let dl = DeadLetter { key, payload, reason, detail, stage: "process", origin };
        let mut record = FutureRecord::to(&self.cfg.topics.dlq).payload(payload).headers(dl.headers());
        if let Some(k) = key {
            record = record.key(k);
        }
        send(&mut self.pending, producer, record);
    }


    /// Handles one input record.
    pub fn handle(&mut self, producer: &FutureProducer, topic: &str, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        self.summary.consumed += 1;
        metrics::events_in(1);
        let params = self.params;
        let st = self.partitions.entry(partition).or_insert_with(|| PartitionState {
            sessionizer: Sessionizer::new(params),
            next_offset: offset,
            committed: -1,
            max_event_time: i64::MIN,
            last_event_wall: Instant::now(),
        });
        // Committed offsets name the next record to read, hence +1.
        st.next_offset = offset + 1;
        let origin = || format!("{topic}/{partition}/{offset}");
        let event = match self.codec.decode_event(payload) {
            Ok(d) => d.value,
            Err(e) => {
                let reason = if matches!(e, journey_schemas::ContractError::UnknownSchema(_)) { "unknown_schema" } else { "undecodable" };
                self.dead_letter(producer, key, payload, reason, &e.to_string(), &origin());
                return;
            }
        };
        if let Err(r) = validate_event(&event, now_ms(), &self.limits) {
            self.dead_letter(producer, key, payload, r.code, &r.detail, &origin());
            return;
        }
        let Some(customer) = self.customer_key(&event) else {
            self.dead_letter(producer, key, payload, "missing_identifier", "no usable identifier", &origin());
            return;
        };
        let lateness = self.cfg.process.allowed_lateness.as_millis() as i64;
        let st = self.partitions.get_mut(&partition).expect("inserted above");
        st.max_event_time = st.max_event_time.max(event.event_time);
        st.last_event_wall = Instant::now();
        st.sessionizer.set_version_floor(now_ms());
        let mut sev = SessionEvent::from_event(&event);
        sev.offset = offset;
        match st.sessionizer.admit(&customer, sev, &mut self.sessions) {
            Admission::Accepted => {
                let hash = event.msisdn.as_deref().map(|m| self.pseudo.hash(m)).unwrap_or_default();
                self.event_rows.push(EventRow::new(&event, &customer, hash));
                self.summary.accepted += 1;
            }
            Admission::Duplicate => {
                metrics::duplicates_dropped(1);
                self.summary.duplicates += 1;
            }
            Admission::TooLate => {
                metrics::events_late(1);
                self.summary.late += 1;
                let headers = OwnedHeaders::new().insert(Header { key: "journey.late.origin", value: Some(origin().as_str()) });
                let mut record = FutureRecord::to(&self.cfg.topics.late).payload(payload).headers(headers);
                if let Some(k) = key {
                    record = record.key(k);
                }
                send(&mut self.pending, producer, record);
            }
        }
        let st = self.partitions.get_mut(&partition).expect("inserted above");
        st.sessionizer.advance(st.max_event_time.saturating_sub(lateness), &mut self.sessions);
    }

    /// Closes the sessions of partitions that were quiet for `idle_timeout` of wall-clock time:
    /// their watermark jumps past every event seen, so no session waits for an event that may
    /// never come. A later event there is handled as a (correcting) late event.
    pub fn on_idle_tick(&mut self) {
        let idle = self.cfg.process.idle_timeout;
        let gap = self.params.gap_ms;
        for st in self.partitions.values_mut() {
            if st.last_event_wall.elapsed() >= idle && st.sessionizer.has_open_sessions() {
                st.sessionizer.set_version_floor(now_ms());
                let wm = st.max_event_time.saturating_add(gap).saturating_add(1);
                st.sessionizer.advance(wm, &mut self.sessions);
            }
        }
    }

    /// Rows and records buffered since the last flush.
    pub fn buffered(&self) -> usize {
        self.event_rows.len() + self.sessions.len() + self.pending.len()
    }

    /// Whether any partition still holds open sessions.
    pub fn has_open_sessions(&self) -> bool {
        self.partitions.values().any(|p| p.sessionizer.has_open_sessions())
    }

    /// Makes everything buffered durable (ClickHouse, Kafka), then returns the offsets that
    /// may be committed: per partition, the next offset to read, held back to the oldest event
    /// of any still-open session.
    pub async fn flush(&mut self, sink: &ClickHouseSink, producer: &FutureProducer) -> Result<TopicPartitionList, Error> {
        let rows = std::mem::take(&mut self.event_rows);
        let token = batch_token("events", rows.iter().map(|r| r.event_id.as_bytes()));
        sink.insert("events", &rows, &token).await?;
        let lag_now = now_ms();
        if let Some(max_t) = rows.iter().map(|r| r.ingest_time).max() {
            metrics::end_to_end_lag_seconds((lag_now - max_t) as f64 / 1000.0);
        }
        let sessions = std::mem::take(&mut self.sessions);
        let session_rows: Vec<SessionRow> = sessions.iter().map(SessionRow::from).collect();
        let token = batch_token("sessions", sessions.iter().map(|s| format!("{}/{}", s.session_id, s.version)));
        sink.insert("sessions", &session_rows, &token).await?;
        self.summary.sessions += sessions.len() as u64;
        for s in &sessions {
            let payload = self.codec.encode_session(s);
            let record = FutureRecord::to(&self.cfg.topics.sessions).key(s.customer_id.as_bytes()).payload(&payload[..]);
            send(&mut self.pending, producer, record);
        }
        for f in std::mem::take(&mut self.pending) {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::Kafka(e)),
                Err(_) => return Err(Error::Kafka(rdkafka::error::KafkaError::Canceled)),
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, st) in &mut self.partitions {
            let safe = match st.sessionizer.min_pending_offset() {
                Some(o) => o.min(st.next_offset),
                None => st.next_offset,
            };
            if safe > st.committed {
                tpl.add_partition_offset(&self.cfg.topics.raw, p, Offset::Offset(safe))?;
                st.committed = safe;
            }
        }
        Ok(tpl)
    }

    /// Drops the state of partitions this instance no longer owns.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Totals so far.
    pub fn summary(&self) -> &ProcessSummary {
        &self.summary
    }
}

/// Enqueues a record, keeping its acknowledgement to await before the next commit.
fn send(pending: &mut Vec<DeliveryFuture>, producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send_result(record) {
            Ok(f) => {
                pending.push(f);
                return;
            }
            Err((_, r)) => {
                // Local queue full: let librdkafka drain it. Bounded by the producer's queue.
                record = r;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Consumer settings of the processor.
pub fn consumer_config(cfg: &Config) -> rdkafka::ClientConfig {
    let mut c = cfg.kafka.client_config();
    c.set("group.id", &cfg.process.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Short session timeout: fast failover, and some brokers delay a first join by half of it.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        .set("max.poll.interval.ms", "600000")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Runs the processor until `shutdown` resolves (or, with `exit_when_idle`, until idle).
pub async fn process(
    cfg: Config,
    codec: Codec,
    pseudo: Pseudonymizer,
    opts: ProcessOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<ProcessSummary, Error> {
    let log = RebalanceLog::default();
    let consumer: StreamConsumer<RebalanceLog> = consumer_config(&cfg).create_with_context(log.clone())?;
    consumer.subscribe(&[&cfg.topics.raw])?;
    let producer: FutureProducer = cfg.kafka.producer_config().create()?;
    let sink = ClickHouseSink::new(client(&cfg.clickhouse), Backoff::default(), true);
    let flush_every = cfg.process.flush_interval;
    let max_rows = cfg.process.max_batch_rows;
    let raw_topic = cfg.topics.raw.clone();
    let mut proc = Processor::new(cfg, codec, pseudo);
    let mut last_flush = Instant::now();
    let mut last_record = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(shutdown);
    tracing::info!(topic = %raw_topic, "processor started");
    loop {
        tokio::select! {
            msg = consumer.recv() => {
                let msg = msg?;
                last_record = Instant::now();
                proc.handle(&producer, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.payload().unwrap_or(&[]));
            }
            _ = tick.tick() => {
                proc.on_idle_tick();
            }
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: flushing");
                break;
            }
        }
        let revoked: Vec<i32> = match log.0.lock() {
            Ok(mut l) => l.drain(..).filter(|(assigned, _)| !assigned).flat_map(|(_, ps)| ps).collect(),
            Err(_) => Vec::new(),
        };
        if !revoked.is_empty() || proc.buffered() >= max_rows || last_flush.elapsed() >= flush_every {
            let tpl = proc.flush(&sink, &producer).await?;
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "offset commit failed; will retry at the next flush");
                }
            }
            proc.revoke(&revoked);
            last_flush = Instant::now();
        }
        if let Some(idle) = opts.exit_when_idle {
            if last_record.elapsed() >= idle && !proc.has_open_sessions() && proc.buffered() == 0 {
                tracing::info!("idle and fully flushed: exiting");
                break;
            }
        }
    }
    let tpl = proc.flush(&sink, &producer).await?;
    if tpl.count() > 0 {
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    Ok(proc.summary().clone())
}
