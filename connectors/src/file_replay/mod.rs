//! `journey replay`: recorded logs into Kafka.
//!
//! Input: JSON lines in the contract's field names (no mapping), or CSV with a named column
//! mapping from config; either may be gzip-compressed (`.gz`). Every row is validated like an
//! HTTP-ingested event; rejects go to the dead-letter topic with `file:line` as their origin.
//! Replaying the same file again is safe: `event_id` is kept, or derived from the row's
//! content when the file has none, so downstream deduplication drops the repeats.
//! Guarantee: the summary's `published` counts records Kafka acknowledged; the command fails
//! if any record was not acknowledged.

mod config;

pub use config::{CsvMapping, ReplayConfig};

use crate::parse::{event_from_json, parse_time_text};
use crate::publish::{BulkPublisher, DeadLetter};
use journey_schemas::validate::Limits;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of one replay run.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Replay speed: `None` as fast as possible; `Some(60.0)` replays an hour per minute,
    /// keeping the original spacing of event times.
    pub speed: Option<f64>,
    /// Only events at or after this time (epoch ms).
    pub from_ms: Option<i64>,
    /// Only events before this time (epoch ms).
    pub to_ms: Option<i64>,
    /// CSV mapping to use (required for CSV unless exactly one is configured).
    pub mapping: Option<String>,
    /// Show a progress bar (default: when stderr is a terminal).
    pub progress: Option<bool>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Rows read.
    pub read: u64,
    /// Events acknowledged by Kafka.
    pub published: u64,
    /// Rows outside `--from/--to`.
    pub filtered: u64,
    /// Rejected rows by reason (each dead-lettered).
    pub rejected: BTreeMap<String, u64>,
}

impl ReplaySummary {
    /// Rejected rows in all.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Parses `--from/--to`: RFC 3339 or epoch milliseconds.
pub fn parse_bound(s: &str) -> Result<i64, String> {
    parse_time_text(s).map_err(|r| r.detail)
}

fn open(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let f = std::fs::File::open(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

fn is_csv(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// Converts a CSV record to a JSON event object through `mapping`.
pub fn csv_row_to_json(
    headers: &csv::StringRecord,
    row: &csv::StringRecord,
    m: &CsvMapping,
    offset: chrono::FixedOffset,
) -> Result<Value, (&'static str, String)> {
    let col = |name: &str| -> Result<Option<&str>, (&'static str, String)> {
        let idx =
            headers.iter().position(|h| h == name).ok_or_else(|| ("missing_column", format!("column {name:?} is not in the header")))?;
        Ok(row.get(idx).map(str::trim).filter(|s| !s.is_empty()))
    };
    let mut obj = Map::new();
    for (field, value) in &m.constants {
        obj.insert(field.clone(), Value::String(value.clone()));
    }
    for (field, column) in &m.columns {
        let Some(raw) = col(column)? else { continue };
        let value = m.values.get(field).and_then(|t| t.get(raw)).map_or(raw, String::as_str);
        let v =
            if field == "event_time" { Value::from(csv_time(value, &m.time_format, offset)?) } else { Value::String(value.to_string()) };
        obj.insert(field.clone(), v);
    }
    if !m.attrs.is_empty() {
        let mut attrs = Map::new();
        for a in &m.attrs {
            if let Some(v) = col(a)? {
                attrs.insert(a.clone(), Value::String(v.to_string()));
            }
        }
        obj.insert("attrs".into(), Value::Object(attrs));
    }
    Ok(Value::Object(obj))
}

fn csv_time(s: &str, format: &str, offset: chrono::FixedOffset) -> Result<i64, (&'static str, String)> {
    let bad = |e: String| ("invalid_event_time", format!("event_time {s:?} does not match {format:?}: {e}"));
    match format {
        "rfc3339" => parse_time_text(s).map_err(|r| ("invalid_event_time", r.detail)),
        "epoch_ms" => s.parse::<i64>().map_err(|e| bad(e.to_string())),
        "epoch_s" => s.parse::<f64>().map(|x| (x * 1000.0).round() as i64).map_err(|e| bad(e.to_string())),
        f => chrono::NaiveDateTime::parse_from_str(s, f).map_err(|e| bad(e.to_string())).and_then(|t| {
            t.and_local_timezone(offset).single().map(|d| d.timestamp_millis()).ok_or_else(|| bad("ambiguous local time".into()))
        }),
    }
}

struct Run<'a> {
    publisher: &'a mut BulkPublisher,
    limits: Limits,
    opts: &'a ReplayOptions,
    summary: ReplaySummary,
    first_time: Option<(i64, Instant)>,
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    started: Instant,
}

impl Run<'_> {
    fn reject(&mut self, raw: &[u8], origin: &str, reason: &'static str, detail: &str) -> anyhow::Result<()> {
        crate::metrics::events_rejected("replay", reason, 1);
        tracing::debug!(origin, reason, detail, "row rejected");
        *self.summary.rejected.entry(reason.to_string()).or_default() += 1;
        self.publisher.send_dead_letter(DeadLetter { key: None, payload: raw, reason, detail, stage: "replay", origin })?;
        crate::metrics::dead_lettered("replay", 1);
        Ok(())
    }

    fn row(&mut self, value: Result<Value, (&'static str, String)>, raw: &[u8], origin: &str) -> anyhow::Result<()> {
        self.summary.read += 1;
        let now = crate::now_ms();
        let event = match value.and_then(|v| event_from_json(&v, now, &self.limits).map_err(|r| (r.code, r.detail))) {
            Ok(e) => e,
            Err((reason, detail)) => return self.reject(raw, origin, reason, &detail),
        };
        if self.opts.from_ms.is_some_and(|f| event.event_time < f) || self.opts.to_ms.is_some_and(|t| event.event_time >= t) {
            self.summary.filtered += 1;
            return Ok(());
        }
        if let Some(speed) = self.opts.speed {
            let (t0, w0) = *self.first_time.get_or_insert((event.event_time, Instant::now()));
            let due = Duration::from_secs_f64(((event.event_time - t0).max(0) as f64 / 1000.0) / speed);
            let elapsed = w0.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        self.publisher.send_event(&event)?;
        self.progress();
        Ok(())
    }

    fn progress(&mut self) {
        let n = self.summary.read;
        if let Some(bar) = &self.bar {
            if n % 1000 == 0 {
                bar.set_message(format!("{n} rows, {} rejected", self.summary.rejected_total()));
            }
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            let rate = n as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(rows = n, rejected = self.summary.rejected_total(), rate = format!("{rate:.0}/s"), "replaying");
        }
    }
}

/// Replays `paths` through `publisher`. Blocking; run it on a plain thread.
pub fn replay(
    paths: &[std::path::PathBuf],
    cfg: &ReplayConfig,
    opts: &ReplayOptions,
    mut publisher: BulkPublisher,
) -> anyhow::Result<ReplaySummary> {
    let total_bytes: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let show = opts.progress.unwrap_or_else(|| std::io::stderr().is_terminal());
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(total_bytes);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let limits = Limits { max_future_skew_ms: cfg.max_future_skew.as_millis() as i64, ..Limits::default() };
    let mut run = Run {
        publisher: &mut publisher,
        limits,
        opts,
        summary: ReplaySummary::default(),
        first_time: None,
        bar,
        last_log: Instant::now(),
        started: Instant::now(),
    };
    for path in paths {
        let name = path.display().to_string();
        let reader = open(path).map_err(|e| anyhow::anyhow!("cannot open {name}: {e}"))?;
        let reader: Box<dyn Read> = match &run.bar {
            // Progress follows the compressed bytes read, which is what the file size counts.
            Some(bar) if path.extension().is_none_or(|e| e != "gz") => Box::new(bar.wrap_read(reader)),
            _ => reader,
        };
        if is_csv(path) {
            let mapping = match &opts.mapping {
                Some(m) => cfg.mappings.get(m).ok_or_else(|| anyhow::anyhow!("no CSV mapping named {m:?} in [replay.mappings]"))?,
                None if cfg.mappings.len() == 1 => cfg.mappings.values().next().expect("one mapping"),
                None => anyhow::bail!(
                    "{name} is CSV: choose a mapping with --mapping (configured: {:?})",
                    cfg.mappings.keys().collect::<Vec<_>>()
                ),
            };
            let offset: chrono::FixedOffset =
                mapping.timezone.parse().map_err(|_| anyhow::anyhow!("invalid timezone {:?}", mapping.timezone))?;
            let mut rdr = csv::ReaderBuilder::new().delimiter(mapping.delimiter.as_bytes()[0]).flexible(true).from_reader(reader);
            let headers = rdr.headers()?.clone();
            let mut record = csv::StringRecord::new();
            loop {
                match rdr.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(0, |p| p.line());
                        let origin = format!("{name}:{line}");
                        let raw = record.iter().collect::<Vec<_>>().join(&mapping.delimiter);
                        let value = csv_row_to_json(&headers, &record, mapping, offset);
                        run.row(value, raw.as_bytes(), &origin)?;
                    }
                    Err(e) => {
                        run.summary.read += 1;
                        let line = e.position().map_or(0, |p| p.line());
                        let origin = format!("{name}:{line}");
                        run.reject(b"", &origin, "malformed_csv", &e.to_string())?;
                    }
                }
            }
        } else {
            let mut reader = BufReader::with_capacity(1 << 20, reader);
            let mut buf = Vec::with_capacity(1024);
            let mut line_no = 0u64;
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf)? == 0 {
                    break;
                }
                line_no += 1;
                let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let origin = format!("{name}:{line_no}");
                let value = serde_json::from_slice::<Value>(text).map_err(|e| ("malformed_json", format!("line is not valid JSON: {e}")));
                run.row(value, text, &origin)?;
            }
        }
    }
    if let Some(bar) = &run.bar {
        bar.finish_and_clear();
    }
    let mut summary = std::mem::take(&mut run.summary);
    let queued = publisher.sent();
    let stats = publisher.finish(Duration::from_secs(60))?;
    anyhow::ensure!(stats.delivered == queued, "Kafka acknowledged {} of {queued} records ({} failed)", stats.delivered, stats.failed);
    summary.published = queued - summary.rejected_total();
    crate::metrics::events_published("replay", summary.published);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_map_through_columns_constants_and_value_tables() {
        let m = CsvMapping {
            delimiter: ";".into(),
            columns: [("event_time", "ts"), ("msisdn", "ani"), ("channel", "src"), ("topic", "reason")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            constants: [("event_type".to_string(), "contact.start".to_string())].into(),
            values: [("channel".to_string(), [("CC".to_string(), "CONTACT_CENTRE".to_string())].into())].into(),
            attrs: vec!["queue".into()],
            time_format: "%Y-%m-%d %H:%M:%S".into(),
            timezone: "+03:00".into(),
        };
        let headers = csv::StringRecord::from(vec!["ts", "ani", "src", "reason", "queue"]);
        let row = csv::StringRecord::from(vec!["2026-09-21 13:00:00", "79990001122", "CC", "balance", "q1"]);
        let v = csv_row_to_json(&headers, &row, &m, "+03:00".parse().unwrap()).unwrap();
        assert_eq!(v["event_time"], 1_789_984_800_000i64);
        assert_eq!(v["channel"], "CONTACT_CENTRE");
        assert_eq!(v["event_type"], "contact.start");
        assert_eq!(v["attrs"]["queue"], "q1");
        let e = event_from_json(&v, 1_789_984_800_000, &Limits::default()).unwrap();
        assert_eq!(e.msisdn.as_deref(), Some("79990001122"));
    }

    #[test]
    fn bounds_accept_rfc3339_and_millis() {
        assert_eq!(parse_bound("2026-09-21T10:00:00Z").unwrap(), 1_789_984_800_000);
        assert_eq!(parse_bound("1790000000000").unwrap(), 1_790_000_000_000);
        assert!(parse_bound("soon").is_err());
    }
}
