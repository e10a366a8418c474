//! `journey process`: the consumer loop around the processors.
//!
//! Guarantees: at-least-once into ClickHouse and `journey.sessions`, with duplicates removed
//! downstream by deterministic ids (event ids; session ids + versions in ReplacingMergeTree).
//! Input offsets are committed only after (1) ClickHouse acknowledged every row derived from
//! records before them, (2) Kafka acknowledged every session, dead letter and late record
//! derived from them, and (3) no open (not yet emitted) session still depends on them: the
//! commit point of a partition is the smallest offset among events of its open sessions. A
//! crash therefore replays from there and loses nothing. What the processor emits is a function
//! of the log alone: the one decision taken on the wall clock, closing a partition that went
//! idle, is itself written to the log first (a control record, see [`Processor::on_idle_tick`])
//! and acted on when read back, so a replay emits again exactly what the crashed run emitted
//! (and can retract it if a later record says so).
//!
//! Ordering: per input partition, events are processed in offset order; event-time order is
//! rebuilt by the sessionizer. Kafka polling is async (rdkafka's StreamConsumer); the per-event
//! work is a few microseconds, so the loop yields to the runtime between messages.

pub mod http;
pub mod state;
pub mod stitch;

use crate::config::Config;
use crate::detect::{DetectedHit, Detector, RuleSet};
use crate::pii::{PseudonymCache, Pseudonymizer, Pseudonyms};
use crate::sessionize::{Admission, Emitted, SessionEvent, SessionParams, Sessionizer};
use crate::sink::clickhouse::{batch_token, client, Backoff, ClickHouseSink, EventRows, HitRow, SessionRow};
use crate::Error;
use journey_connectors::metrics;
use journey_connectors::now_ms;
use journey_connectors::publish::DeadLetter;
use journey_schemas::avro::Spare;
use journey_schemas::{ChannelEvent, Codec};
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
    /// With `exit_when_idle`: also wait until this flag is set (the upstream stage finished).
    pub upstream_done: Option<Arc<std::sync::atomic::AtomicBool>>,
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
    /// Scenario hit records emitted (including new versions and retractions).
    pub hits: u64,
    /// Records re-published under another customer key after an identity merge.
    pub forwarded: u64,
    /// Customer keys merged into another customer.
    pub reattributed: u64,
}

/// One rebalance event: assigned (true) or revoked (false), and the partitions.
pub type RebalanceEvent = (bool, Vec<i32>);

/// Records partition assignment changes seen during polls.
#[derive(Default, Clone)]
pub struct RebalanceLog(Arc<Mutex<Vec<RebalanceEvent>>>);

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
    detector: Detector,
    /// Offset of the next record to read (last consumed + 1): what a commit stores.
    next_offset: i64,
    /// Last offset committed for this partition.
    committed: i64,
    max_event_time: i64,
    last_event_wall: Instant,
    /// When an idle close was last requested (its control record not yet read back).
    idle_requested: Option<Instant>,
    /// Keys merged into another customer: old key -> (new key, max event time when merged).
    /// Records still arriving under an old key are re-published under the new one; an entry
    /// is dropped once event time has passed the correction horizon after the merge.
    forwards: HashMap<String, (String, i64)>,
    /// Latest watermark of each raw partition, and how many raw partitions there are.
    upstream: HashMap<i32, i64>,
    upstream_count: usize,
    /// Whether each raw partition's latest watermark said the whole upstream stage was quiet.
    upstream_quiet: HashMap<i32, bool>,
    /// Forwarding pointers added or dropped since the last checkpoint.
    forwards_dirty: std::collections::HashSet<String>,
}

impl PartitionState {
    fn new(params: SessionParams, rules: Arc<RuleSet>, offset: i64) -> PartitionState {
        PartitionState {
            sessionizer: Sessionizer::new(params),
            detector: Detector::beside_sessions(rules, params.horizon_ms, params.gap_ms),
            next_offset: offset,
            committed: -1,
            max_event_time: i64::MIN,
            last_event_wall: Instant::now(),
            idle_requested: None,
            forwards: HashMap::new(),
            upstream: HashMap::new(),
            upstream_count: 0,
            upstream_quiet: HashMap::new(),
            forwards_dirty: std::collections::HashSet::new(),
        }
    }

    /// Moves event time to `wm`; with `quiet_upto`, also closes every absence window of the
    /// triggers at or before it (the partition is quiet: see [`Detector::close_idle`]).
    fn advance(&mut self, wm: i64, quiet_upto: Option<i64>, hits: &mut Vec<DetectedHit>, sessions: &mut Vec<Emitted>) {
        // The detector first: its absence hits look up sessions the sessionizer may prune once
        // the watermark moves.
        self.detector.advance(wm, &self.sessionizer, hits);
        if let Some(upto) = quiet_upto {
            self.detector.close_idle(upto, &self.sessionizer, hits);
        }
        self.sessionizer.advance(wm, sessions);
    }

    /// The event-time watermark: the minimum over every raw partition's watermark, or none
    /// until all of them have reported.
    fn watermark(&self) -> Option<i64> {
        if self.upstream_count == 0 || self.upstream.len() < self.upstream_count {
            return None;
        }
        self.upstream.values().copied().min()
    }
}

/// Version of an output derived from the record at `offset`: deterministic, so a replay after
/// a crash re-creates the same versions, and increasing with the offset within a partition.
pub fn version_at(offset: i64) -> i64 {
    (offset + 1) << 20
}

/// A control record parsed from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Move the record key's state to this key.
    Reattribute(String),
    /// Watermark of one raw partition.
    Watermark {
        /// Raw partition.
        raw: i32,
        /// Number of raw partitions.
        of: usize,
        /// Watermark, epoch ms.
        time: i64,
        /// The whole upstream stage was quiet (see [`stitch::WM_QUIET_HEADER`]).
        quiet: bool,
    },
    /// The partition was idle up to this event time (see [`stitch::CONTROL_IDLE`]).
    Idle {
        /// Latest event time the partition had seen when it was found idle.
        upto: i64,
    },
}

/// Header counting how many times a keyed record moved to another customer key.
pub const MOVES_HEADER: &str = "journey.moves";

/// How many times a keyed record moved (0 when it came straight from the stitch stage).
pub fn moves_of(headers: Option<&rdkafka::message::BorrowedHeaders>) -> u64 {
    use rdkafka::message::Headers;
    headers
        .and_then(|h| h.iter().find(|hd| hd.key == MOVES_HEADER))
        .and_then(|hd| hd.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A record moved to `to`, one move more than before.
fn moved_record<'a>(topic: &'a str, to: &'a str, payload: &'a [u8], moves: u64) -> FutureRecord<'a, [u8], [u8]> {
    let headers = OwnedHeaders::new().insert(Header { key: MOVES_HEADER, value: Some(moves.to_string().as_str()) });
    FutureRecord::to(topic).key(to.as_bytes()).payload(payload).headers(headers)
}

/// Reads the control header of a keyed record, if any.
pub fn control_of(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<Control> {
    use rdkafka::message::Headers;
    let h = headers?;
    let text = |k: &str| h.iter().find(|hd| hd.key == k).and_then(|hd| hd.value).map(|v| String::from_utf8_lossy(v).to_string());
    match text(stitch::CONTROL_HEADER)?.as_str() {
        stitch::CONTROL_REATTRIBUTE => Some(Control::Reattribute(text(stitch::REATTRIBUTE_TO_HEADER)?)),
        stitch::CONTROL_WATERMARK => Some(Control::Watermark {
            raw: text(stitch::WM_PARTITION_HEADER)?.parse().ok()?,
            of: text(stitch::WM_PARTITIONS_HEADER)?.parse().ok()?,
            time: text(stitch::WM_TIME_HEADER)?.parse().ok()?,
            quiet: text(stitch::WM_QUIET_HEADER).is_some_and(|v| v == "1"),
        }),
        stitch::CONTROL_IDLE => Some(Control::Idle { upto: text(stitch::WM_TIME_HEADER)?.parse().ok()? }),
        _ => None,
    }
}

/// The processor: state per assigned partition plus buffers awaiting the next flush.
pub struct Processor {
    cfg: Config,
    codec: Codec,
    /// Phone pseudonyms for the `events` rows (a customer's events come in bursts).
    pseudo: PseudonymCache,
    params: SessionParams,
    partitions: HashMap<i32, PartitionState>,
    /// Rows for the next flush, with the input partition each came from (`event_parts` is
    /// parallel to `event_rows`), so a partition revoked while ClickHouse is down can be
    /// dropped whole: its new owner recomputes it from the last commit.
    event_rows: EventRows,
    event_parts: Vec<i32>,
    /// The record each input event is decoded into, with the strings its null fields gave
    /// back, and the phone pseudonym of its row: reused from one event to the next, so that
    /// decoding and building the row allocate nothing in a steady stream (see `EventRows`).
    event: ChannelEvent,
    spare: Spare,
    msisdn_hash: String,
    sessions: Vec<(i32, Emitted)>,
    hits: Vec<(i32, DetectedHit)>,
    /// Emissions of the current `handle` call, tagged with its partition afterwards.
    emitted: Vec<Emitted>,
    emitted_hits: Vec<DetectedHit>,
    /// The running scenario rules, and when the rule file was last checked for changes.
    rules: Arc<RuleSet>,
    rules_checked: Instant,
    /// The last rejected rule file's problems (logged once, not at every check).
    rules_rejected: Option<String>,
    /// Approximate size of the buffered rows.
    buffered_bytes: usize,
    pending: Vec<DeliveryFuture>,
    summary: ProcessSummary,
}

impl Processor {
    /// A processor with empty state.
    pub fn new(cfg: Config, codec: Codec, pseudo: Pseudonymizer, rules: RuleSet) -> Processor {
        let p = &cfg.process;
        let params = SessionParams {
            gap_ms: p.gap.as_millis() as i64,
            max_duration_ms: p.max_duration.as_millis() as i64,
            horizon_ms: p.correction_horizon.as_millis() as i64,
        };
        Processor {
            codec,
            pseudo: PseudonymCache::new(pseudo),
            params,
            partitions: HashMap::new(),
            event_rows: EventRows::default(),
            event_parts: Vec::new(),
            event: ChannelEvent::default(),
            spare: Spare::default(),
            msisdn_hash: String::new(),
            sessions: Vec::new(),
            hits: Vec::new(),
            emitted: Vec::new(),
            emitted_hits: Vec::new(),
            rules: Arc::new(rules),
            rules_checked: Instant::now(),
            rules_rejected: None,
            buffered_bytes: 0,
            pending: Vec::new(),
            summary: ProcessSummary::default(),
            cfg,
        }
    }

    fn dead_letter(
        &mut self,
        producer: &FutureProducer,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &'static str,
        detail: &str,
        origin: &str,
    ) {
        self.summary.dead_lettered += 1;
        let dl = DeadLetter { key, payload, reason, detail, stage: "process", origin };
        send_dead_letter(&mut self.pending, producer, &self.cfg.topics.dlq, reason, dl);
    }

    /// Handles one input record (`control` from its headers).
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        producer: &FutureProducer,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        control: Option<Control>,
        moves: u64,
    ) {
        self.handle_record(producer, topic, partition, offset, key, payload, control, moves);
        self.tag_emitted(partition);
    }

    /// Moves this call's emissions into the flush buffer under `partition`.
    fn tag_emitted(&mut self, partition: i32) {
        for e in self.emitted.drain(..) {
            self.buffered_bytes += 256 + e.session.path.len() + 48 * e.transitions.len();
            self.sessions.push((partition, e));
        }
        for h in self.emitted_hits.drain(..) {
            self.buffered_bytes += 256 + 40 * h.hit.matched_event_ids.len();
            self.hits.push((partition, h));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_record(
        &mut self,
        producer: &FutureProducer,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        control: Option<Control>,
        moves: u64,
    ) {
        self.summary.consumed += 1;
        metrics::events_in(1);
        let params = self.params;
        let rules = &self.rules;
        let st = self.partitions.entry(partition).or_insert_with(|| PartitionState::new(params, rules.clone(), offset));
        // Committed offsets name the next record to read, hence +1.
        st.next_offset = offset + 1;
        st.last_event_wall = Instant::now();
        st.sessionizer.set_version_floor(version_at(offset));
        st.detector.set_version_floor(version_at(offset));
        let origin = || format!("{topic}/{partition}/{offset}");
        let key_str = key.and_then(|k| std::str::from_utf8(k).ok()).unwrap_or("");
        match control {
            Some(Control::Reattribute(to)) => {
                self.reattribute(producer, partition, key_str, &to);
                return;
            }
            Some(Control::Watermark { raw, of, time, quiet }) => {
                let st = self.partitions.get_mut(&partition).expect("inserted above");
                let e = st.upstream.entry(raw).or_insert(time);
                *e = (*e).max(time);
                st.upstream_count = of;
                st.upstream_quiet.insert(raw, quiet);
                if let Some(wm) = st.watermark() {
                    let all_quiet = st.upstream_quiet.len() >= st.upstream_count && st.upstream_quiet.values().all(|q| *q);
                    // A quiet watermark is the latest event time seen upstream + gap + 1.
                    let latest = all_quiet.then(|| wm.saturating_sub(self.params.gap_ms).saturating_sub(1));
                    st.advance(wm, latest, &mut self.emitted_hits, &mut self.emitted);
                }
                return;
            }
            Some(Control::Idle { upto }) => {
                let st = self.partitions.get_mut(&partition).expect("inserted above");
                st.idle_requested = None;
                let wm = upto.saturating_add(self.params.gap_ms).saturating_add(1);
                st.advance(wm, Some(upto), &mut self.emitted_hits, &mut self.emitted);
                return;
            }
            None => {}
        }
        if let Some((to, _)) = self.partitions.get(&partition).and_then(|st| st.forwards.get(key_str)) {
            // This key was merged into another customer: the event belongs there.
            let to = to.clone();
            send(&mut self.pending, producer, moved_record(&self.cfg.topics.keyed, &to, payload, moves + 1));
            self.summary.forwarded += 1;
            return;
        }
        // Decoded into the reused record, taken out of `self` meanwhile and put back after.
        let mut event = std::mem::take(&mut self.event);
        if let Err(e) = self.codec.decode_event_into(payload, &mut event, &mut self.spare) {
            let reason = decode_reason(&e);
            self.dead_letter(producer, key, payload, reason, &e.to_string(), &origin());
        } else {
            self.handle_event(producer, partition, offset, key, payload, moves, &event, &origin);
        }
        self.event = event;
    }

    /// [`Processor::handle_record`] of a decoded event.
    #[allow(clippy::too_many_arguments)]
    fn handle_event(
        &mut self,
        producer: &FutureProducer,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        moves: u64,
        event: &ChannelEvent,
        origin: &dyn Fn() -> String,
    ) {
        // The stitch stage keyed the record by its canonical customer.
        let Some(customer) = key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| !k.is_empty()).map(str::to_string) else {
            self.dead_letter(producer, key, payload, "missing_key", "a keyed event has no customer key", &origin());
            return;
        };
        let st = self.partitions.get_mut(&partition).expect("inserted above");
        st.max_event_time = st.max_event_time.max(event.event_time);
        st.last_event_wall = Instant::now();
        let mut sev = SessionEvent::from_event(event);
        sev.offset = offset;
        sev.payload = Some(payload.into());
        sev.moves = moves;
        let admission = st.sessionizer.admit(&customer, sev, &mut self.emitted);
        if admission == Admission::TooLate {
            metrics::events_late(1);
            self.summary.late += 1;
            let headers = OwnedHeaders::new().insert(Header { key: "journey.late.origin", value: Some(origin().as_str()) });
            let mut record = FutureRecord::to(&self.cfg.topics.late).payload(payload).headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            send(&mut self.pending, producer, record);
            return;
        }
        // Duplicates too: the detector's state is checkpointed in records of its own, so a
        // crash between the sessionizer's and the detector's records of a customer restores an
        // event in the one and not in the other, and the replay must still reach the detector.
        // It recognises what it already has.
        st.detector.admit_event(&customer, event, &st.sessionizer, &mut self.emitted_hits);
        let accepted = admission == Admission::Accepted;
        if accepted {
            self.summary.accepted += 1;
        } else {
            metrics::duplicates_dropped(1);
            self.summary.duplicates += 1;
        }
        // A moved copy supersedes the rows of the keys it moved from, even when this key
        // already had the event (a duplicate that was keyed here directly).
        if accepted || moves > 0 {
            self.msisdn_hash.clear();
            if let Some(m) = event.msisdn.as_deref() {
                (&mut self.pseudo).pseudonym_into(m, &mut self.msisdn_hash);
            }
            self.event_rows.push(event, &customer, &self.msisdn_hash, moves);
            self.event_parts.push(partition);
            self.buffered_bytes += 64 + 2 * payload.len();
        }
    }

    /// Moves `from`'s state to `to`: retracts its sessions, re-publishes its retained events
    /// under `to` (one move more, so their new `events` rows replace the old ones), and
    /// forwards later records for `from`.
    fn reattribute(&mut self, producer: &FutureProducer, partition: i32, from: &str, to: &str) {
        if from.is_empty() || from == to {
            return;
        }
        let st = self.partitions.get_mut(&partition).expect("created by handle");
        st.forwards.insert(from.to_string(), (to.to_string(), st.max_event_time));
        st.forwards_dirty.insert(from.to_string());
        let events = st.sessionizer.take_customer(from, &mut self.emitted);
        st.detector.take_customer(from, &mut self.emitted_hits);
        for e in &events {
            let Some(payload) = &e.payload else { continue };
            send(&mut self.pending, producer, moved_record(&self.cfg.topics.keyed, to, payload, e.moves + 1));
            self.summary.forwarded += 1;
        }
        self.summary.reattributed += 1;
        tracing::debug!(events = events.len(), "customer key re-attributed");
    }

    /// Finds the partitions that received nothing at all (no event, no upstream watermark)
    /// for `idle_timeout` of wall-clock time while sessions are open, and asks for them to be
    /// closed: their watermark is to pass every event seen by `gap`, so no session waits for
    /// an event that may never come. (While the stitch stage runs with data it sends
    /// watermarks every flush, so this only fires when upstream is silent, e.g. after a restart
    /// on a drained topic.)
    ///
    /// Nothing is closed here: a control record ([`stitch::CONTROL_IDLE`]) goes to the
    /// partition itself and the close happens when it is read back, at its place in the log.
    /// Closing on the wall clock directly would emit records that a replay after a crash
    /// might never emit again (and so never retract, should a later event change them).
    /// A request is repeated if its record has not come back within five idle timeouts.
    pub fn on_idle_tick(&mut self, producer: &FutureProducer) {
        let idle = self.cfg.process.idle_timeout;
        let topic = self.cfg.topics.keyed.clone();
        for (&p, st) in &mut self.partitions {
            let quiet = st.last_event_wall.elapsed() >= idle && st.sessionizer.has_open_sessions() && st.max_event_time != i64::MIN;
            if !quiet || st.idle_requested.is_some_and(|at| at.elapsed() < idle * 5) {
                continue;
            }
            st.idle_requested = Some(Instant::now());
            let upto = st.max_event_time.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: stitch::CONTROL_HEADER, value: Some(stitch::CONTROL_IDLE) })
                .insert(Header { key: stitch::WM_TIME_HEADER, value: Some(upto.as_str()) });
            send(&mut self.pending, producer, FutureRecord::to(&topic).partition(p).payload(&[][..]).key(&[][..]).headers(headers));
            tracing::debug!(partition = p, upto = %upto, "partition idle: close requested");
        }
    }

    /// Re-reads the rule file when `detect.reload_interval` has passed: a valid new set
    /// replaces the running one in every partition (evaluation from now on; emitted hits
    /// stay), an invalid one is rejected with every problem logged, and the running set stays.
    pub fn reload_rules_if_due(&mut self) {
        let d = &self.cfg.detect;
        if d.rules.is_empty() || self.rules_checked.elapsed() < d.reload_interval {
            return;
        }
        self.rules_checked = Instant::now();
        match d.load_rules() {
            Ok(new) if new.fingerprint() != self.rules.fingerprint() => {
                let new = Arc::new(new);
                for st in self.partitions.values_mut() {
                    st.detector.set_rules(new.clone());
                }
                tracing::info!(file = %d.rules, rules = new.rules().len(), "scenario rules reloaded");
                metrics::rules_reloaded("applied");
                self.rules = new;
            }
            Ok(_) => {}
            Err(e) => {
                if self.rules_rejected != Some(e.to_string()) {
                    tracing::error!(file = %d.rules, problems = %e, "scenario rule file rejected; the running rules stay");
                    metrics::rules_reloaded("rejected");
                    self.rules_rejected = Some(e.to_string());
                }
                return;
            }
        }
        self.rules_rejected = None;
    }

    /// The running scenario rules.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Rows and records buffered since the last flush.
    pub fn buffered(&self) -> usize {
        self.event_rows.len() + self.sessions.len() + self.hits.len() + self.pending.len()
    }

    /// Approximate bytes of the buffered rows.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Whether any partition still holds open sessions.
    pub fn has_open_sessions(&self) -> bool {
        self.partitions.values().any(|p| p.sessionizer.has_open_sessions())
    }

    /// Makes everything buffered durable (ClickHouse, Kafka), then returns the offsets that
    /// may be committed: per partition, the next offset to read, held back to the oldest event
    /// of any still-open session.
    ///
    /// On a ClickHouse error nothing is lost: the buffers are kept and the next call inserts
    /// the same rows again under the same deduplication tokens (a table that had already
    /// acknowledged its part drops the repeat), so the caller may retry as often as needed.
    pub async fn flush(&mut self, sink: &ClickHouseSink, producer: &FutureProducer) -> Result<TopicPartitionList, Error> {
        let token = batch_token("events", self.event_rows.as_slice().iter().map(|r| r.event_id.as_bytes()));
        sink.insert("events", self.event_rows.as_slice(), &token).await?;
        let session_rows: Vec<SessionRow> = self.sessions.iter().map(|(_, e)| SessionRow::from(e)).collect();
        let token = batch_token("sessions", self.sessions.iter().map(|(_, e)| format!("{}/{}", e.session_id, e.version)));
        sink.insert("sessions", &session_rows, &token).await?;
        let hit_rows: Vec<HitRow> = self.hits.iter().map(|(_, h)| HitRow::from(h)).collect();
        let token = batch_token("scenario_hits", self.hits.iter().map(|(_, h)| format!("{}/{}", h.hit.hit_id, h.hit.version)));
        sink.insert("scenario_hits", &hit_rows, &token).await?;
        // ClickHouse holds every row: from here on the batch is Kafka's.
        let lag_now = now_ms();
        if let Some(max_t) = self.event_rows.as_slice().iter().map(|r| r.ingest_time).max() {
            metrics::end_to_end_lag_seconds((lag_now - max_t) as f64 / 1000.0);
        }
        self.event_rows.clear();
        self.event_parts.clear();
        self.buffered_bytes = 0;
        let sessions = std::mem::take(&mut self.sessions);
        self.summary.sessions += sessions.len() as u64;
        for (_, s) in &sessions {
            let payload = self.codec.encode_session(s);
            let record = FutureRecord::to(&self.cfg.topics.sessions).key(s.customer_id.as_bytes()).payload(&payload[..]);
            send(&mut self.pending, producer, record);
        }
        let hits = std::mem::take(&mut self.hits);
        self.summary.hits += hits.len() as u64;
        for (_, h) in &hits {
            metrics::scenario_hits(&h.hit.rule, if h.hit.retracted { "retraction" } else { "hit" }, 1);
            let payload = self.codec.encode_hit(&h.hit);
            let record = FutureRecord::to(&self.cfg.topics.scenarios).key(h.hit.customer_id.as_bytes()).payload(&payload[..]);
            send(&mut self.pending, producer, record);
        }
        await_acks(std::mem::take(&mut self.pending)).await?;
        let horizon = self.params.horizon_ms;
        for st in self.partitions.values_mut() {
            let wm = st.sessionizer.watermark();
            let expired: Vec<String> =
                st.forwards.iter().filter(|(_, (_, at))| at.saturating_add(horizon) < wm).map(|(k, _)| k.clone()).collect();
            for k in expired {
                st.forwards.remove(&k);
                st.forwards_dirty.insert(k);
            }
        }
        // Checkpoint: the changelog gets every changed customer, pointer and clock; only once
        // it is acknowledged may the input offsets move.
        let state_topic = self.cfg.topics.state.clone();
        let mut acks = Vec::new();
        let mut keys = Vec::new();
        // One key buffer for every record (the producer copies the key when it takes a record).
        let mut k = String::new();
        for (&p, st) in &mut self.partitions {
            let mut put = |prefix: &str, key: &str, value: Option<Vec<u8>>| {
                k.clear();
                k.push_str(prefix);
                k.push_str(key);
                let mut record = FutureRecord::to(&state_topic).partition(p).key(k.as_bytes());
                if let Some(v) = &value {
                    record = record.payload(&v[..]);
                }
                send(&mut acks, producer, record); // no value: a tombstone
            };
            st.sessionizer.take_dirty_into(&mut keys);
            for key in keys.drain(..) {
                put(state::CUSTOMER_PREFIX, &key, st.sessionizer.snapshot(&key).map(|snap| state::encode_customer(&self.codec, &snap)));
            }
            st.detector.take_dirty_into(&mut keys);
            for key in keys.drain(..) {
                put(state::DETECT_PREFIX, &key, st.detector.snapshot(&key).map(|snap| crate::detect::encode_snapshot(&snap)));
            }
            for from in std::mem::take(&mut st.forwards_dirty) {
                put(state::FORWARD_PREFIX, &from, st.forwards.get(&from).map(|(to, at)| format!("{to}\n{at}").into_bytes()));
            }
            let meta = state::Meta {
                watermark: st.sessionizer.watermark(),
                max_event_time: st.max_event_time,
                upstream: st.upstream.iter().map(|(a, b)| (*a, *b)).collect(),
                upstream_count: st.upstream_count,
                absence_closed_upto: st.detector.idle_closed_upto(),
            };
            let bytes = state::encode_meta(&meta);
            send(&mut acks, producer, FutureRecord::to(&state_topic).partition(p).key(state::META_KEY.as_bytes()).payload(&bytes[..]));
        }
        await_acks(acks).await?;
        let mut tpl = TopicPartitionList::new();
        for (&p, st) in &mut self.partitions {
            if st.next_offset > st.committed {
                tpl.add_partition_offset(&self.cfg.topics.keyed, p, Offset::Offset(st.next_offset))?;
                st.committed = st.next_offset;
            }
        }
        Ok(tpl)
    }

    /// Whether this instance holds state for `partition`.
    pub fn has_partition(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Restores `partition` from its changelog (a partition newly assigned to this instance).
    pub fn restore_partition(&mut self, producer: &FutureProducer, partition: i32) -> Result<u64, Error> {
        let started = Instant::now();
        let restored = state::restore(&self.cfg, &self.codec, producer, partition)?;
        let records = restored.records;
        let mut st = PartitionState::new(self.params, self.rules.clone(), 0);
        st.sessionizer.restore_watermark(restored.meta.watermark);
        st.detector.restore_watermark(restored.meta.watermark);
        st.detector.restore_idle_closed_upto(restored.meta.absence_closed_upto);
        for snap in restored.detections {
            st.detector.restore(snap);
        }
        st.max_event_time = restored.meta.max_event_time;
        st.upstream = restored.meta.upstream.into_iter().collect();
        st.upstream_count = restored.meta.upstream_count;
        st.forwards = restored.forwards;
        for snap in restored.customers {
            st.sessionizer.restore(snap, &mut self.emitted);
        }
        tracing::info!(
            partition,
            records,
            customers = st.sessionizer.customers(),
            ms = started.elapsed().as_millis() as u64,
            "partition state restored"
        );
        self.partitions.insert(partition, st);
        self.tag_emitted(partition);
        Ok(records)
    }

    /// Drops the state of partitions this instance no longer owns, and any rows of theirs
    /// still buffered (after a failed flush): nothing of them was committed, so their new
    /// owner recomputes the same rows from the last commit and the changelog.
    pub fn revoke(&mut self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        for p in partitions {
            self.partitions.remove(p);
        }
        let gone = |p: &i32| partitions.contains(p);
        if self.event_parts.iter().any(gone) {
            let mut keep = self.event_parts.iter().map(|p| !gone(p));
            self.event_rows.retain(|_| keep.next().unwrap_or(true));
            self.event_parts.retain(|p| !gone(p));
        }
        self.sessions.retain(|(p, _)| !gone(p));
        self.hits.retain(|(p, _)| !gone(p));
    }

    /// Totals so far.
    pub fn summary(&self) -> &ProcessSummary {
        &self.summary
    }
}

/// Waits until Kafka acknowledged every record of `acks`; the first failure is returned.
pub(crate) async fn await_acks(acks: Vec<DeliveryFuture>) -> Result<(), Error> {
    for f in acks {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(Error::Kafka(e)),
            Err(_) => return Err(Error::Kafka(rdkafka::error::KafkaError::Canceled)),
        }
    }
    Ok(())
}

/// Enqueues a record, keeping its acknowledgement to await before the next commit.
pub(crate) fn send(pending: &mut Vec<DeliveryFuture>, producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) {
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

/// Dead-letters a record rejected by a processing stage: counted, logged, and its
/// acknowledgement kept to await before the next offset commit.
pub(crate) fn send_dead_letter(
    pending: &mut Vec<DeliveryFuture>,
    producer: &FutureProducer,
    dlq_topic: &str,
    reason: &'static str,
    dl: DeadLetter<'_>,
) {
    metrics::events_rejected("process", reason, 1);
    metrics::dead_lettered("process", 1);
    tracing::warn!(origin = dl.origin, reason = dl.reason, detail = dl.detail, "record dead-lettered");
    let mut record = FutureRecord::to(dlq_topic).payload(dl.payload).headers(dl.headers());
    if let Some(k) = dl.key {
        record = record.key(k);
    }
    send(pending, producer, record);
}

/// The dead-letter reason of a record that does not decode.
pub(crate) fn decode_reason(e: &journey_schemas::ContractError) -> &'static str {
    if matches!(e, journey_schemas::ContractError::UnknownSchema(_)) {
        "unknown_schema"
    } else {
        "undecodable"
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
        .set("max.poll.interval.ms", "60000")
        .set("fetch.wait.max.ms", "100")
        // Bounds what librdkafka prefetches while the processor is paused by back-pressure.
        .set("queued.max.messages.kbytes", "32768");
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
    let mut ccfg = consumer_config(&cfg);
    if let Some(id) = cfg.process.instance_id.as_deref().filter(|s| !s.is_empty()) {
        ccfg.set("group.instance.id", format!("{id}-process"));
    }
    let consumer: StreamConsumer<RebalanceLog> = ccfg.create_with_context(log.clone())?;
    consumer.subscribe(&[&cfg.topics.keyed])?;
    let producer: FutureProducer = cfg.kafka.producer_config().create()?;
    let backoff = Backoff { give_up_after: Some(cfg.process.sink_retry_for), ..Backoff::default() };
    let sink = ClickHouseSink::new(client(&cfg.clickhouse), backoff, true);
    let flush_every = cfg.process.flush_interval;
    let max_rows = cfg.process.max_batch_rows;
    let max_bytes = cfg.process.max_batch_bytes;
    let mut bp = BackPressure::new("processor", true);
    let raw_topic = cfg.topics.keyed.clone();
    let rules = cfg.detect.load_rules()?;
    tracing::info!(rules = rules.rules().len(), file = %cfg.detect.rules, "scenario rules loaded");
    let mut proc = Processor::new(cfg, codec, pseudo, rules);
    let mut last_flush = Instant::now();
    let mut last_record = Instant::now();
    let mut last_waiting_log = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(shutdown);
    tracing::info!(topic = %raw_topic, "processor started");
    loop {
        tokio::select! {
            msg = consumer.recv() => {
                let msg = msg?;
                last_record = Instant::now();
                if !proc.has_partition(msg.partition()) {
                    let p = msg.partition();
                    tokio::task::block_in_place(|| proc.restore_partition(&producer, p))?;
                }
                let control = control_of(msg.headers());
                let moves = moves_of(msg.headers());
                proc.handle(&producer, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.payload().unwrap_or(&[]), control, moves);
            }
            _ = tick.tick() => {
                proc.on_idle_tick(&producer);
                proc.reload_rules_if_due();
            }
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: flushing");
                break;
            }
        }
        let (assigned, revoked): (Vec<_>, Vec<_>) = match log.0.lock() {
            Ok(mut l) => l.drain(..).partition(|(assigned, _)| *assigned),
            Err(_) => (Vec::new(), Vec::new()),
        };
        if !assigned.is_empty() {
            // A (re)assignment restarts the idle clock: records may now flow again.
            last_record = Instant::now();
        }
        let revoked: Vec<i32> = revoked.into_iter().flat_map(|(_, ps)| ps).collect();
        if bp.paused() && !assigned.is_empty() {
            pause_all(&consumer, true);
        }
        let due =
            !revoked.is_empty() || proc.buffered() >= max_rows || proc.buffered_bytes() >= max_bytes || last_flush.elapsed() >= flush_every;
        if due && bp.may_flush() {
            match proc.flush(&sink, &producer).await {
                Ok(tpl) => {
                    if tpl.count() > 0 {
                        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                            tracing::warn!(error = %e, "offset commit failed; will retry at the next flush");
                        }
                    }
                    proc.revoke(&revoked);
                    last_flush = Instant::now();
                    if bp.acknowledged(&consumer) {
                        // Paused time is not idle time: records may flow again now.
                        last_record = Instant::now();
                    }
                }
                Err(e) if BackPressure::applies(&e) => {
                    bp.failed(&consumer, &e, proc.buffered());
                    proc.revoke(&revoked);
                }
                Err(e) => return Err(e),
            }
            metrics::sink_buffered(proc.buffered(), proc.buffered_bytes());
        }
        if let Some(idle) = opts.exit_when_idle {
            let upstream_done = opts.upstream_done.as_ref().is_none_or(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            let has_partitions = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
            let open = proc.has_open_sessions();
            if upstream_done && !bp.paused() && has_partitions && last_record.elapsed() >= idle && !open && proc.buffered() == 0 {
                tracing::info!("idle and fully flushed: exiting");
                break;
            }
            if last_waiting_log.elapsed() >= Duration::from_secs(5) && last_record.elapsed() >= idle {
                last_waiting_log = Instant::now();
                tracing::info!(
                    upstream_done,
                    has_partitions,
                    open_sessions = open,
                    buffered = proc.buffered(),
                    "idle, waiting before exit"
                );
            }
        }
    }
    let tpl = proc.flush(&sink, &producer).await?;
    if tpl.count() > 0 {
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    Ok(proc.summary().clone())
}

/// Back-pressure of a consumer loop whose flush writes to ClickHouse: while ClickHouse does
/// not acknowledge, every assigned partition is paused (the consumer is still polled, so the
/// group keeps this member), the kept batch is retried every second, and consumption resumes
/// once a flush lands.
pub(crate) struct BackPressure {
    stage: &'static str,
    /// Whether to report the state as `journey_sink_backpressure` (one stage owns the gauge).
    report: bool,
    paused: bool,
    retry_at: Option<Instant>,
}

impl BackPressure {
    pub(crate) fn new(stage: &'static str, report: bool) -> BackPressure {
        BackPressure { stage, report, paused: false, retry_at: None }
    }

    /// Whether a flush error is ClickHouse being unavailable (pause and retry) rather than fatal.
    pub(crate) fn applies(e: &Error) -> bool {
        matches!(e, Error::ClickHouse { .. } | Error::Query(_)) && e.is_retryable()
    }

    /// Whether consumption is paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// Whether a due flush may be tried now (not before the retry time after a failure).
    pub(crate) fn may_flush(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// A flush landed; returns whether this resumed a paused consumer.
    pub(crate) fn acknowledged<C: ConsumerContext>(&mut self, consumer: &StreamConsumer<C>) -> bool {
        self.retry_at = None;
        if !self.paused {
            return false;
        }
        self.paused = false;
        pause_all(consumer, false);
        if self.report {
            metrics::sink_backpressure(false);
        }
        tracing::info!(stage = self.stage, "clickhouse acknowledged again: consumption resumed");
        true
    }

    /// A flush failed because ClickHouse is unavailable: pause (again, which also covers
    /// partitions assigned since) and retry in a second.
    pub(crate) fn failed<C: ConsumerContext>(&mut self, consumer: &StreamConsumer<C>, e: &Error, buffered: usize) {
        if !self.paused {
            self.paused = true;
            if self.report {
                metrics::sink_backpressure(true);
            }
        }
        pause_all(consumer, true);
        tracing::warn!(stage = self.stage, error = %e, buffered, "clickhouse unavailable: consumption paused, batch kept for retry");
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
    }
}

/// Pauses (or resumes) every partition currently assigned to `consumer`.
pub(crate) fn pause_all<C: ConsumerContext>(consumer: &StreamConsumer<C>, pause: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "could not change the paused state of the assignment");
    }
}

/// Runs the whole pipeline in this process: the stitch stage and the processor, each with its
/// own consumer group, until `shutdown` (or, with `exit_when_idle`, until both are idle).
pub async fn run_all(
    cfg: Config,
    codec: Codec,
    pseudo: Pseudonymizer,
    opts: ProcessOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(stitch::StitchSummary, ProcessSummary), Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stitched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let stitch_opts = ProcessOptions { exit_when_idle: opts.exit_when_idle, upstream_done: None };
    let process_opts = ProcessOptions { exit_when_idle: opts.exit_when_idle, upstream_done: Some(stitched.clone()) };
    let stitch_task = {
        let (cfg, codec, pseudo, rx, stitched) = (cfg.clone(), codec.clone(), pseudo.clone(), stop_rx.clone(), stitched.clone());
        async move {
            let r = stitch::stitch(cfg, codec, pseudo, stitch_opts, wait(rx)).await;
            stitched.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        }
    };
    let process_task = process(cfg, codec, pseudo, process_opts, wait(stop_rx));
    tokio::pin!(shutdown);
    let both = async { tokio::join!(stitch_task, process_task) };
    tokio::pin!(both);
    let (s, p) = tokio::select! {
        r = &mut both => r,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            both.await
        }
    };
    Ok((s?, p?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
        [[rule]]
        name = "app_then_call"
        kind = "sequence"
        within = "30m"
        steps = [{ channel = "APP" }, { channel = "CONTACT_CENTRE", event_type = "contact.start" }]
    "#;

    fn processor(rules_path: &std::path::Path) -> Processor {
        let mut cfg = Config::default();
        cfg.detect.rules = rules_path.display().to_string();
        cfg.detect.reload_interval = Duration::from_millis(1);
        let rules = cfg.detect.load_rules().unwrap();
        let pseudo = Pseudonymizer::new(b"unit-test-key-0123456789").unwrap();
        Processor::new(cfg, Codec::from_manifest().unwrap(), pseudo, rules)
    }

    /// A producer that is never used: no record of these tests is sent anywhere.
    fn idle_producer() -> FutureProducer {
        rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap()
    }

    fn record(codec: &Codec, id: &str, time: i64, channel: journey_schemas::Channel, event_type: &str) -> Vec<u8> {
        let e = journey_schemas::ChannelEvent { customer_id: Some("C1".into()), ..crate::test_event(id, time, channel, event_type) };
        codec.encode_event(&e)
    }

    /// A rule file holding `ONE` in a fresh folder of its own; returns (folder, file).
    fn rule_file(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("journey-rules-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.toml");
        std::fs::write(&path, ONE).unwrap();
        (dir, path)
    }

    #[test]
    fn an_event_the_detector_lost_to_a_torn_checkpoint_still_reaches_it_on_replay() {
        let (dir, path) = rule_file("torn");
        let mut p = processor(&path);
        let producer = idle_producer();
        let codec = Codec::from_manifest().unwrap();
        let t0 = 1_790_000_000_000;
        let app = record(&codec, "e-app", t0, journey_schemas::Channel::App, "app.open");
        p.handle(&producer, "keyed", 0, 0, Some(b"crm:C1"), &app, None, 0);
        // The crash landed between the two checkpoint records of this customer: the
        // sessionizer's came back with the app event, the detector's did not.
        let rules = p.rules().clone();
        let st = p.partitions.get_mut(&0).unwrap();
        st.detector = Detector::beside_sessions(rules, p.params.horizon_ms, p.params.gap_ms);
        // The replay brings the app event again (a duplicate to the sessionizer), then a call.
        p.handle(&producer, "keyed", 0, 0, Some(b"crm:C1"), &app, None, 0);
        let call = record(&codec, "e-call", t0 + 60_000, journey_schemas::Channel::ContactCentre, "contact.start");
        p.handle(&producer, "keyed", 0, 1, Some(b"crm:C1"), &call, None, 0);
        let hits: Vec<_> = p.hits.iter().map(|(_, h)| (h.hit.rule.as_str(), h.hit.matched_event_ids.clone())).collect();
        assert_eq!(hits, [("app_then_call", vec!["e-app".to_string(), "e-call".to_string()])]);
        assert_eq!(p.summary().duplicates, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_rule_file_is_applied_and_a_broken_one_rejected() {
        let (dir, path) = rule_file("reload");
        let mut p = processor(&path);
        assert_eq!(p.rules().rules().len(), 1);

        let two = format!("{ONE}\n[[rule]]\nname = \"storm\"\nkind = \"count\"\nwithin = \"7d\"\nat_least = 3\nmatch = {{ event_type = \"contact.start\" }}\n");
        std::fs::write(&path, &two).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        p.reload_rules_if_due();
        assert_eq!(p.rules().rules().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["app_then_call", "storm"]);

        // A broken file (unknown kind, bad duration) is rejected; the running set stays.
        std::fs::write(&path, "[[rule]]\nname = \"x\"\nkind = \"sometimes\"\nwithin = \"3 fortnights\"\n").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        p.reload_rules_if_due();
        assert_eq!(p.rules().rules().len(), 2);
        assert!(p.rules_rejected.as_deref().is_some_and(|e| e.contains("rule[0]")), "{:?}", p.rules_rejected);

        // Fixed again: applied, and the rejection is forgotten.
        std::fs::write(&path, ONE).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        p.reload_rules_if_due();
        assert_eq!(p.rules().rules().len(), 1);
        assert!(p.rules_rejected.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
