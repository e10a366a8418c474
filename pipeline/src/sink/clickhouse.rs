//! ClickHouse sink. Guarantee: a batch counts as written only when ClickHouse acknowledged the
//! INSERT; transient failures are retried with capped exponential backoff for as long as it
//! takes (the caller stops consuming meanwhile, which is the back-pressure), and every retry
//! of a batch carries the same `insert_deduplication_token`, so a retry after a lost
//! acknowledgement does not duplicate rows. Rows re-inserted after a crash carry the same
//! sorting key and collapse in the ReplacingMergeTree tables.

use crate::config::ClickHouseConfig;
use crate::sessionize::Emitted;
use clickhouse::{Client, Compression, Row, RowOwned, RowWrite};
use journey_connectors::metrics;
use journey_schemas::ChannelEvent;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A row of `events` (field order and types match `sql/migrations`; checked by a test).
#[derive(Debug, Clone, PartialEq, Eq, Default, Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Event id.
    pub event_id: String,
    /// Event time, epoch ms (DateTime64(3)).
    pub event_time: i64,
    /// Ingest time, epoch ms.
    pub ingest_time: i64,
    /// Channel symbol (one of the static symbols when built from an event: no allocation per row).
    pub channel: std::borrow::Cow<'static, str>,
    /// Event type.
    pub event_type: String,
    /// Canonical customer key.
    pub customer_id: String,
    /// CRM id as sent, or empty.
    pub crm_id: String,
    /// Keyed hash of the phone number, or empty.
    pub msisdn_hash: String,
    /// App install id, or empty.
    pub app_instance_id: String,
    /// Topic, or empty.
    pub topic: String,
    /// Outcome, or empty.
    pub outcome: String,
    /// Line, or empty.
    pub line: String,
    /// Agent, or empty.
    pub agent_id: String,
    /// Region, or empty.
    pub region: String,
    /// Attributes.
    pub attrs: Vec<(String, String)>,
    /// Version: how many times the event moved to another customer key (the highest wins).
    pub version: u64,
}

impl EventRow {
    /// The row for an accepted event of canonical customer `customer`.
    pub fn new(e: &ChannelEvent, customer: &str, msisdn_hash: &str, version: u64) -> EventRow {
        let mut row = EventRow::default();
        row.fill_from(e, customer, msisdn_hash, version);
        row
    }

    /// [`EventRow::new`] into this row, every field overwritten, reusing its strings' buffers.
    pub fn fill_from(&mut self, e: &ChannelEvent, customer: &str, msisdn_hash: &str, version: u64) {
        fn set(dst: &mut String, src: Option<&str>) {
            dst.clear();
            dst.push_str(src.unwrap_or_default());
        }
        set(&mut self.event_id, Some(&e.event_id));
        self.event_time = e.event_time;
        self.ingest_time = e.ingest_time;
        self.channel = e.channel.as_str().into();
        set(&mut self.event_type, Some(&e.event_type));
        set(&mut self.customer_id, Some(customer));
        set(&mut self.crm_id, e.customer_id.as_deref());
        set(&mut self.msisdn_hash, Some(msisdn_hash));
        set(&mut self.app_instance_id, e.app_instance_id.as_deref());
        set(&mut self.topic, e.topic.as_deref());
        set(&mut self.outcome, e.outcome.as_deref());
        set(&mut self.line, e.line.as_deref());
        set(&mut self.agent_id, e.agent_id.as_deref());
        set(&mut self.region, e.region.as_deref());
        self.attrs.truncate(e.attrs.len());
        let reused = self.attrs.len();
        for (i, (k, v)) in e.attrs.iter().enumerate() {
            if i < reused {
                set(&mut self.attrs[i].0, Some(k));
                set(&mut self.attrs[i].1, Some(v));
            } else {
                self.attrs.push((k.clone(), v.clone()));
            }
        }
        self.version = version;
    }
}

/// The `events` rows of the next insert. Inserted rows are kept and refilled
/// ([`EventRow::fill_from`]) rather than freed, so that in a steady stream building a row
/// copies the event's strings into buffers already there instead of allocating them: a fresh
/// allocation hands out memory freed long before, a cache miss per string. The rows kept are
/// those of the largest batch so far, which the processor bounds by `process.max_batch_rows`
/// (50 000 by default; back-pressure stops reading while ClickHouse refuses a batch): some tens
/// of megabytes at most, held for the next batches instead of given back.
#[derive(Debug, Default)]
pub struct EventRows {
    rows: Vec<EventRow>,
    len: usize,
}

impl EventRows {
    /// Appends the row of an accepted event (see [`EventRow::new`]).
    pub fn push(&mut self, e: &ChannelEvent, customer: &str, msisdn_hash: &str, version: u64) {
        match self.rows.get_mut(self.len) {
            Some(row) => row.fill_from(e, customer, msisdn_hash, version),
            None => self.rows.push(EventRow::new(e, customer, msisdn_hash, version)),
        }
        self.len += 1;
    }

    /// The rows appended since the last [`EventRows::clear`].
    pub fn as_slice(&self) -> &[EventRow] {
        &self.rows[..self.len]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the rows, keeping their buffers for the next ones.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the rows for which `keep` (called once per row, in order) says so, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&EventRow) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            if keep(&self.rows[i]) {
                self.rows.swap(kept, i);
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// A row of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct SessionRow {
    /// Session id.
    pub session_id: String,
    /// Canonical customer key.
    pub customer_id: String,
    /// Start, epoch ms.
    pub start_time: i64,
    /// End, epoch ms.
    pub end_time: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// Distinct events.
    pub event_count: u32,
    /// Distinct channels in order.
    pub channels: Vec<String>,
    /// Channel path.
    pub path: String,
    /// Topics.
    pub topics: Vec<String>,
    /// Contains an assisted contact.
    pub assisted: bool,
    /// First event id.
    pub first_event_id: String,
    /// Last event id.
    pub last_event_id: String,
    /// Version.
    pub version: u64,
    /// Retracted.
    pub retracted: bool,
    /// Region of the first event that has one ('' if none).
    pub region: String,
    /// Channel transitions, aligned with `path`: from channel.
    pub tr_from: Vec<String>,
    /// To channel.
    pub tr_to: Vec<String>,
    /// Event time of the first event on the new channel, epoch ms.
    pub tr_time: Vec<i64>,
    /// Time since the previous event, ms.
    pub tr_gap_ms: Vec<i64>,
}

impl From<&Emitted> for SessionRow {
    fn from(e: &Emitted) -> SessionRow {
        let s = &e.session;
        SessionRow {
            session_id: s.session_id.clone(),
            customer_id: s.customer_id.clone(),
            start_time: s.start_time,
            end_time: s.end_time,
            duration_ms: s.duration_ms,
            event_count: u32::try_from(s.event_count).unwrap_or(u32::MAX),
            channels: s.channels.clone(),
            path: s.path.clone(),
            topics: s.topics.clone(),
            assisted: s.assisted,
            first_event_id: s.first_event_id.clone(),
            last_event_id: s.last_event_id.clone(),
            version: u64::try_from(s.version).unwrap_or(0),
            retracted: s.retracted,
            region: e.region.as_deref().unwrap_or_default().to_string(),
            tr_from: e.transitions.iter().map(|t| t.from.as_str().to_string()).collect(),
            tr_to: e.transitions.iter().map(|t| t.to.as_str().to_string()).collect(),
            tr_time: e.transitions.iter().map(|t| t.time).collect(),
            tr_gap_ms: e.transitions.iter().map(|t| t.gap_ms).collect(),
        }
    }
}

/// ClickHouse errors that a retry can fix: network trouble, timeouts, overload, and a server
/// that is starting or shutting down. Anything else (bad SQL, schema mismatch) is permanent.
///
/// An unknown database or table counts as transient: a server that is shutting down detaches
/// its databases while it still answers HTTP, so an insert in that window is told its database
/// does not exist. The processor created its tables at start (migrations), so a missing one
/// later is a restart or an operator's doing; the sink then holds the batch (back-pressure)
/// until the table is back, rather than fail the process.
pub fn is_transient(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    /// Server error codes that a retry can fix.
    const TRANSIENT_CODES: [u32; 12] = [
        60,  // UNKNOWN_TABLE (shutdown detaches tables)
        81,  // UNKNOWN_DATABASE (shutdown detaches databases)
        159, // TIMEOUT_EXCEEDED
        202, // TOO_MANY_SIMULTANEOUS_QUERIES
        203, // NO_FREE_CONNECTION
        209, // SOCKET_TIMEOUT
        210, // NETWORK_ERROR
        241, // MEMORY_LIMIT_EXCEEDED
        242, // TABLE_IS_READ_ONLY
        252, // TOO_MANY_PARTS
        394, // QUERY_WAS_CANCELLED (shutdown)
        999, // KEEPER_EXCEPTION
    ];
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(msg) => match exception_code(msg) {
            Some(code) => TRANSIENT_CODES.contains(&code),
            // No exception: the client's text for a bare HTTP status, e.g. a proxy's
            // "503 Service Unavailable", or a bare 500 from a server that could not even write
            // its error (18.16 while shutting down: `Cannot write to file (fd = -1)`). A
            // server that rejects the insert itself always sends the exception's code.
            None => ["500 ", "502 ", "503 ", "504 "].iter().any(|s| msg.starts_with(s)),
        },
        _ => false,
    }
}

/// The server's error code in a ClickHouse error text: the number after the first `Code: `.
/// Servers write `Code: 81. DB::Exception: ...` (18.16: `Code: 81, e.displayText() = ...`);
/// the client writes `Code: 81` when only the `X-ClickHouse-Exception-Code` header came back.
fn exception_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + "Code: ".len()..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Retry policy of the sink.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Stop retrying one insert after this long and report the (transient) error, so the
    /// caller can apply back-pressure; `None` retries until acknowledged.
    pub give_up_after: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), give_up_after: None }
    }
}

/// Inserts batches into the pipeline's tables.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    backoff: Backoff,
    dedup_tokens: bool,
}

/// Builds a client from config.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_database(&cfg.database)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_compression(if cfg.compression { Compression::Lz4 } else { Compression::None })
        .with_validation(cfg.validation)
}

/// A stable token naming a batch: same rows, same token.
pub fn batch_token(table: &str, ids: impl Iterator<Item = impl AsRef<[u8]>>) -> String {
    let (mut a, mut b, mut n) = (0xcbf2_9ce4_8422_2325u64, 0x8422_2325_cbf2_9ce4u64, 0u64);
    for id in ids {
        for &byte in id.as_ref().iter().chain(&[0xffu8]) {
            a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0001_0000_01b3).rotate_left(5);
        }
        n += 1;
    }
    format!("{table}-{n}-{a:016x}{b:016x}")
}

impl ClickHouseSink {
    /// A sink over a client. `dedup_tokens` needs ClickHouse 22.2+ (off for older servers).
    pub fn new(client: Client, backoff: Backoff, dedup_tokens: bool) -> ClickHouseSink {
        ClickHouseSink { client, backoff, dedup_tokens }
    }

    /// The client (queries, health).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn insert_once<T: RowOwned + RowWrite>(&self, table: &str, rows: &[T], token: &str) -> clickhouse::error::Result<()> {
        let mut insert = self.client.insert::<T>(table).await?;
        if self.dedup_tokens {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await
    }

    /// Inserts `rows` into `table`, retrying transient errors until acknowledged or until
    /// `give_up_after` (then the last transient error is returned). Returns a permanent error
    /// at once. `token` names the batch for deduplication of retries.
    pub async fn insert<T: RowOwned + RowWrite>(&self, table: &'static str, rows: &[T], token: &str) -> Result<(), crate::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut delay = self.backoff.initial;
        loop {
            match self.insert_once(table, rows, token).await {
                Ok(()) => {
                    metrics::rows_written(table, rows.len() as u64);
                    metrics::sink_batch_rows(table, rows.len());
                    return Ok(());
                }
                Err(e) if is_transient(&e) && self.backoff.give_up_after.is_some_and(|g| started.elapsed() + delay > g) => {
                    metrics::sink_retried(table);
                    return Err(crate::Error::ClickHouse { table, source: e });
                }
                Err(e) if is_transient(&e) => {
                    metrics::sink_retried(table);
                    tracing::warn!(table, rows = rows.len(), error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse insert failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                }
                Err(e) => return Err(crate::Error::ClickHouse { table, source: e }),
            }
        }
    }
}

/// A row of `scenario_hits`: one emitted version of a hit.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct HitRow {
    /// Deterministic hit id.
    pub hit_id: String,
    /// Rule name.
    pub rule: String,
    /// Rule version.
    pub rule_version: u32,
    /// Canonical customer key.
    pub customer_id: String,
    /// Session of the trigger event ('' when unknown).
    pub session_id: String,
    /// Detection time, epoch ms.
    pub event_time: i64,
    /// Completing (or trigger / counted) event.
    pub trigger_event_id: String,
    /// Matched events in step order.
    pub matched_event_ids: Vec<String>,
    /// Channel path of the match.
    pub path: String,
    /// Topic of the trigger event ('' if none).
    pub topic: String,
    /// Channel of the trigger event.
    pub channel: String,
    /// Region of the trigger event ('' if none).
    pub region: String,
    /// Severity.
    pub severity: String,
    /// Version.
    pub version: u64,
    /// Retracted.
    pub retracted: bool,
}

impl From<&crate::detect::DetectedHit> for HitRow {
    fn from(d: &crate::detect::DetectedHit) -> HitRow {
        let h = &d.hit;
        HitRow {
            hit_id: h.hit_id.clone(),
            rule: h.rule.clone(),
            rule_version: u32::try_from(h.rule_version).unwrap_or(0),
            customer_id: h.customer_id.clone(),
            session_id: h.session_id.clone().unwrap_or_default(),
            event_time: h.event_time,
            trigger_event_id: h.trigger_event_id.clone(),
            matched_event_ids: h.matched_event_ids.clone(),
            path: h.path.clone(),
            topic: h.topic.clone().unwrap_or_default(),
            channel: d.channel.as_str().to_string(),
            region: d.region.clone().unwrap_or_default(),
            severity: h.severity.clone(),
            version: u64::try_from(h.version).unwrap_or(0),
            retracted: h.retracted,
        }
    }
}

/// A row of `identity_links`: which customer an identifier belonged to when it was linked.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct IdentityRow {
    /// `customer`, `msisdn` or `app`.
    pub identifier_kind: String,
    /// CRM id, keyed hash of the phone number, or app install id.
    pub identifier: String,
    /// Canonical customer key at the time.
    pub customer_id: String,
    /// Event time of the event that linked it, epoch ms.
    pub linked_at: i64,
    /// Wall-clock ms when the stitch stage published it: the latest link wins.
    pub version: u64,
}

impl IdentityRow {
    /// The row for an identity-topic record (`c:`/`m:`/`a:` + identifier -> canonical key).
    pub fn from_link(topic_key: &str, canonical: &str, linked_at: i64, version: u64) -> Option<IdentityRow> {
        let (kind, identifier) = match topic_key.split_at_checked(2)? {
            ("c:", rest) => ("customer", rest),
            ("m:", rest) => ("msisdn", rest),
            ("a:", rest) => ("app", rest),
            _ => return None,
        };
        Some(IdentityRow {
            identifier_kind: kind.to_string(),
            identifier: identifier.to_string(),
            customer_id: canonical.to_string(),
            linked_at,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{is_transient, EventRow, EventRows};
    use clickhouse::error::Error;
    use journey_schemas::{Channel, ChannelEvent};
    use proptest::prelude::*;

    fn opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z0-9]{0,6}")
    }

    prop_compose! {
        fn event()(id in "[a-z0-9]{1,8}", t in any::<i64>(), ch in 0usize..12, ty in "[a-z.]{1,8}",
            (c, m, a, topic) in (opt(), opt(), opt(), opt()), (o, l, ag, r) in (opt(), opt(), opt(), opt()),
            attrs in proptest::collection::btree_map("[a-z]{1,3}", "[a-z0-9]{0,4}", 0..3),
        ) -> ChannelEvent {
            ChannelEvent { event_id: id, event_time: t, ingest_time: t / 2, channel: Channel::ALL[ch], event_type: ty,
                customer_id: c, msisdn: m, app_instance_id: a, topic, outcome: o, line: l, agent_id: ag, attrs, region: r }
        }
    }

    proptest! {
        #[test]
        fn reused_rows_equal_fresh_ones(
            batches in proptest::collection::vec(proptest::collection::vec((event(), "[a-z0-9:]{1,8}", "[a-f0-9]{0,4}", 0u64..3, any::<bool>()), 0..8), 1..5),
        ) {
            // Batches of rows through one buffer, as the processor's flushes use it; some
            // batches drop rows (a revoked partition's) before they are taken.
            let mut rows = EventRows::default();
            for batch in &batches {
                let mut want = Vec::new();
                for (e, customer, hash, version, keep) in batch {
                    rows.push(e, customer, hash, *version);
                    want.push((EventRow::new(e, customer, hash, *version), *keep));
                }
                prop_assert_eq!(rows.len(), batch.len());
                let mut keeps = want.iter().map(|(_, k)| *k);
                if batch.len() % 2 == 1 {
                    rows.retain(|_| keeps.next().unwrap_or(true));
                    want.retain(|(_, k)| *k);
                }
                let want: Vec<EventRow> = want.into_iter().map(|(r, _)| r).collect();
                prop_assert_eq!(rows.as_slice(), &want[..]);
                prop_assert_eq!(rows.is_empty(), want.is_empty());
                rows.clear();
                prop_assert!(rows.is_empty());
            }
        }
    }

    fn bad(msg: &str) -> Error {
        Error::BadResponse(msg.to_string())
    }

    #[test]
    fn a_server_shutting_down_is_transient_in_every_wording() {
        // 18.16's body, a current server's body, and the client's text from the header alone.
        for msg in [
            "Code: 81, e.displayText() = DB::Exception: Database sink18_1 doesn't exist, e.what() = DB::Exception",
            "Code: 81. DB::Exception: Database journey doesn't exist. (UNKNOWN_DATABASE) (version 24.8.1.1)",
            "Code: 60. DB::Exception: Table journey.events does not exist. (UNKNOWN_TABLE)",
            "Code: 394",
            "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)",
            "503 Service Unavailable",
            "500 Internal Server Error",
        ] {
            assert!(is_transient(&bad(msg)), "{msg}");
        }
    }

    #[test]
    fn bad_queries_and_schema_mismatches_are_permanent() {
        for msg in [
            "Code: 62. DB::Exception: Syntax error: failed at position 1. (SYNTAX_ERROR)",
            "Code: 16. DB::Exception: No such column region in table journey.events. (NO_SUCH_COLUMN_IN_TABLE)",
            // A code is read as a whole number: 8100 is not 81, and 1 is not 159.
            "Code: 8100. DB::Exception: something else",
            "Code: 1. DB::Exception: Unsupported method. (UNSUPPORTED_METHOD)",
            // A status code inside the text is not the response's status.
            "Code: 27. DB::Exception: Cannot parse input: expected 503 before: x. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
            "400 Bad Request",
        ] {
            assert!(!is_transient(&bad(msg)), "{msg}");
        }
    }
}
