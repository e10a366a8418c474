//! `journey scenarios backtest`: evaluates a rule set over history, so a rule can be tried
//! before it goes live.
//!
//! History comes from ClickHouse (`events_current`: every accepted event under its canonical
//! customer) or from a file of events (JSON lines as `journey generate --output` and
//! `journey replay` read them, optionally gzipped), whose identities are stitched in batch
//! exactly as the live pipeline would. The result is the batch evaluation
//! ([`crate::detect::evaluate`]) per customer: the same hits the live detector converges to.
//!
//! Range: hits whose detection time falls in `[from, to)`. Events from `from - W` (W: the
//! longest window of the rule set) up to `to` are read, which is all any such hit can depend
//! on: earlier steps and counted events lie at most W before the detection, and an absence
//! rule's followers lie before its detection time. A file line that is not a valid event is
//! counted and reported, never silently skipped.

use crate::config::Config;
use crate::detect::{evaluate, DetectEvent, DetectedHit, RuleSet};
use crate::pii::Pseudonymizer;
use crate::stitch::{batch_canonical, identifiers};
use journey_schemas::validate::Limits;
use journey_schemas::{Channel, ChannelEvent};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

/// What a backtest found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events read (in the widened range).
    pub events: u64,
    /// Customers with at least one event.
    pub customers: u64,
    /// File lines that were not valid events, with the first few reasons.
    pub invalid_lines: u64,
    /// Examples of invalid lines: (line number, reason).
    pub invalid_examples: Vec<(u64, String)>,
    /// Per rule (every rule of the set, also those without hits): hits and distinct customers.
    pub per_rule: BTreeMap<String, RuleCount>,
    /// Every hit in range, sorted by (rule, customer, event time, trigger event).
    pub hits: Vec<DetectedHit>,
}

/// Hit counts of one rule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleCount {
    /// Rule kind (`sequence`, `absence`, `count`).
    pub kind: &'static str,
    /// Hits in range.
    pub hits: u64,
    /// Distinct customers with a hit.
    pub customers: u64,
}

/// Event-time range of a backtest, epoch ms; `None` = unbounded.
#[derive(Debug, Default, Clone, Copy)]
pub struct Range {
    /// Detection time at or after this.
    pub from: Option<i64>,
    /// Detection time before this.
    pub to: Option<i64>,
}

impl Range {
    fn read_from(&self, rules: &RuleSet) -> Option<i64> {
        self.from.map(|f| f.saturating_sub(rules.max_window_ms()))
    }

    fn reads(&self, rules: &RuleSet, t: i64) -> bool {
        self.read_from(rules).is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }

    fn reports(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }
}

/// Evaluates `rules` over one customer's events and adds what is in range to the report.
fn evaluate_customer(
    rules: &RuleSet,
    range: Range,
    customer: &str,
    events: &[DetectEvent],
    report: &mut Report,
    hit_customers: &mut HashMap<String, HashSet<String>>,
) {
    report.customers += 1;
    for h in evaluate(rules, customer, events) {
        if range.reports(h.hit.event_time) {
            report.per_rule.entry(h.hit.rule.clone()).or_default().hits += 1;
            hit_customers.entry(h.hit.rule.clone()).or_default().insert(customer.to_string());
            report.hits.push(h);
        }
    }
}

fn finish(rules: &RuleSet, mut report: Report, hit_customers: HashMap<String, HashSet<String>>) -> Report {
    for rule in rules.rules() {
        let entry = report.per_rule.entry(rule.name.clone()).or_default();
        entry.kind = rule.kind.name();
        entry.customers = hit_customers.get(&rule.name).map_or(0, |c| c.len() as u64);
    }
    report.hits.sort_by(|a, b| {
        (&a.hit.rule, &a.hit.customer_id, a.hit.event_time, &a.hit.trigger_event_id).cmp(&(
            &b.hit.rule,
            &b.hit.customer_id,
            b.hit.event_time,
            &b.hit.trigger_event_id,
        ))
    });
    report
}

/// Backtest over a file of events (raw identities, stitched here in batch).
pub fn from_file(rules: &RuleSet, path: &Path, range: Range, pseudo: &Pseudonymizer) -> anyhow::Result<Report> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut report = Report::default();
    let limits = Limits { max_future_skew_ms: i64::MAX / 4, ..Limits::default() };
    let now = journey_connectors::now_ms();
    let mut events: Vec<ChannelEvent> = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.map_err(|e| anyhow::anyhow!("read {} line {line_no}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<serde_json::Value>(&line)
            .map_err(|e| e.to_string())
            .and_then(|v| journey_connectors::parse::event_from_json(&v, now, &limits).map_err(|r| r.to_string()));
        match parsed {
            Ok(e) if range.reads(rules, e.event_time) => events.push(e),
            Ok(_) => {}
            Err(reason) => {
                report.invalid_lines += 1;
                if report.invalid_examples.len() < 5 {
                    report.invalid_examples.push((line_no, reason));
                }
            }
        }
    }
    // Duplicates by event id count once (the live pipeline drops them too).
    let mut seen = HashSet::new();
    events.retain(|e| seen.insert(e.event_id.clone()));
    report.events = events.len() as u64;
    let ids: Vec<_> = events.iter().map(|e| identifiers(e, pseudo)).collect();
    let canonical = batch_canonical(&ids);
    let mut by_customer: BTreeMap<String, Vec<DetectEvent>> = BTreeMap::new();
    for (e, i) in events.iter().zip(&ids) {
        let Some(first) = i.first() else {
            report.invalid_lines += 1;
            continue;
        };
        let customer = canonical.get(first).cloned().unwrap_or_default();
        by_customer.entry(customer).or_default().push(DetectEvent::from_event(e, rules));
    }
    let mut hit_customers = HashMap::new();
    for (customer, evs) in &by_customer {
        evaluate_customer(rules, range, customer, evs, &mut report, &mut hit_customers);
    }
    Ok(finish(rules, report, hit_customers))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct EventRow {
    event_id: String,
    event_time: i64,
    channel: String,
    event_type: String,
    customer_id: String,
    topic: String,
    outcome: String,
    line: String,
    agent_id: String,
    region: String,
    attrs: Vec<(String, String)>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Backtest over `events_current` in ClickHouse (customers already canonical). Streams the
/// events customer by customer, so memory holds one customer's history at a time.
pub async fn from_clickhouse(rules: &RuleSet, cfg: &Config, range: Range) -> anyhow::Result<Report> {
    let ch = crate::sink::clickhouse::client(&cfg.clickhouse).with_validation(false);
    let from = range.read_from(rules).unwrap_or(i64::MIN / 4);
    let to = range.to.unwrap_or(i64::MAX / 4);
    let mut cursor = ch
        .query(
            "SELECT event_id, toUnixTimestamp64Milli(event_time) AS event_time, channel, event_type, customer_id, topic, outcome, line, \
             agent_id, region, CAST(attrs, 'Array(Tuple(String, String))') AS attrs \
             FROM events_current \
             WHERE event_time >= fromUnixTimestamp64Milli(?, 'UTC') AND event_time < fromUnixTimestamp64Milli(?, 'UTC') \
             ORDER BY customer_id, event_time, event_id",
        )
        .bind(from.max(0))
        .bind(to.min(253_402_300_799_000))
        .fetch::<EventRow>()?;
    let mut report = Report::default();
    let mut hit_customers = HashMap::new();
    let mut current: Option<String> = None;
    let mut evs: Vec<DetectEvent> = Vec::new();
    while let Some(r) = cursor.next().await? {
        report.events += 1;
        if current.as_deref() != Some(r.customer_id.as_str()) {
            if let Some(c) = current.take() {
                evaluate_customer(rules, range, &c, &evs, &mut report, &mut hit_customers);
                evs.clear();
            }
            current = Some(r.customer_id.clone());
        }
        let e = ChannelEvent {
            event_id: r.event_id,
            event_time: r.event_time,
            ingest_time: r.event_time,
            channel: Channel::from_symbol(&r.channel).unwrap_or(Channel::Other),
            event_type: r.event_type,
            customer_id: Some(r.customer_id),
            msisdn: None,
            app_instance_id: None,
            topic: non_empty(r.topic),
            outcome: non_empty(r.outcome),
            line: non_empty(r.line),
            agent_id: non_empty(r.agent_id),
            attrs: r.attrs.into_iter().collect(),
            region: non_empty(r.region),
        };
        evs.push(DetectEvent::from_event(&e, rules));
    }
    if let Some(c) = current.take() {
        evaluate_customer(rules, range, &c, &evs, &mut report, &mut hit_customers);
    }
    Ok(finish(rules, report, hit_customers))
}

/// The report as a table for people.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "events read: {}   customers: {}", report.events, report.customers);
    if report.invalid_lines > 0 {
        let _ = writeln!(s, "invalid lines (not evaluated): {}", report.invalid_lines);
        for (line, reason) in &report.invalid_examples {
            let _ = writeln!(s, "  line {line}: {reason}");
        }
    }
    let _ = writeln!(s, "{:<28} {:<9} {:>10} {:>10} {:>9}", "rule", "kind", "hits", "customers", "% cust.");
    for (rule, c) in &report.per_rule {
        let share = if report.customers == 0 { 0.0 } else { 100.0 * c.customers as f64 / report.customers as f64 };
        let _ = writeln!(s, "{rule:<28} {:<9} {:>10} {:>10} {:>8.2}%", c.kind, c.hits, c.customers, share);
    }
    s
}
