//! The declarative scenario rules (TOML) and their compiled form.
//!
//! Loading walks the TOML tree by hand instead of stopping at the first serde error, so a rule
//! file with several mistakes reports all of them at once, each with its location
//! (`rule[2] "foo": within: "3x" is not a duration`). Unknown keys are errors, as
//! `deny_unknown_fields` would make them.

use crate::sessionize::fnv1a;
use journey_schemas::{parse_duration, Channel};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Value;

/// How bad a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Worth acting on (the default).
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// The name used in rule files and hit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An event field that `same` requires to be equal (and non-null) across the matched events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SameField {
    /// `topic`.
    Topic,
    /// `channel`.
    Channel,
    /// `event_type`.
    EventType,
    /// `outcome`.
    Outcome,
    /// `line`.
    Line,
    /// `region`.
    Region,
    /// `agent_id`.
    AgentId,
    /// `attrs.<key>`.
    Attr(Arc<str>),
}

impl SameField {
    fn parse(s: &str) -> Option<SameField> {
        Some(match s {
            "topic" => SameField::Topic,
            "channel" => SameField::Channel,
            "event_type" => SameField::EventType,
            "outcome" => SameField::Outcome,
            "line" => SameField::Line,
            "region" => SameField::Region,
            "agent_id" => SameField::AgentId,
            _ => match s.strip_prefix("attrs.") {
                Some(key) if !key.is_empty() => SameField::Attr(Arc::from(key)),
                _ => return None,
            },
        })
    }
}

/// A condition on one event: every given field must match (a list means any of its values);
/// a field that is null on the event never matches. An empty predicate matches every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Predicate {
    /// Allowed channels.
    pub channel: Option<Vec<Channel>>,
    /// Allowed event types.
    pub event_type: Option<Vec<Arc<str>>>,
    /// Allowed outcomes.
    pub outcome: Option<Vec<Arc<str>>>,
    /// Allowed topics.
    pub topic: Option<Vec<Arc<str>>>,
    /// Allowed lines.
    pub line: Option<Vec<Arc<str>>>,
    /// Allowed regions.
    pub region: Option<Vec<Arc<str>>>,
    /// Allowed values of attributes, by key (sorted by key).
    pub attrs: Vec<(Arc<str>, Vec<Arc<str>>)>,
}

/// What a rule looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// Events matching the steps in order, all within the window.
    Sequence {
        /// At least two steps.
        steps: Vec<Predicate>,
    },
    /// A trigger not followed by a matching event within the window.
    Absence {
        /// The event that opens the window.
        trigger: Predicate,
        /// The event whose absence is the scenario.
        followed_by: Predicate,
    },
    /// At least `at_least` matching events within the window.
    Count {
        /// The counted events.
        predicate: Predicate,
        /// Threshold (>= 1).
        at_least: u32,
    },
}

impl RuleKind {
    /// `sequence`, `absence` or `count`.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Sequence { .. } => "sequence",
            RuleKind::Absence { .. } => "absence",
            RuleKind::Count { .. } => "count",
        }
    }
}

/// One scenario rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, `[a-z0-9_]+`.
    pub name: String,
    /// Definition version (>= 1); part of the hit id, so a new version starts new hits.
    pub version: u32,
    /// Severity of its hits.
    pub severity: Severity,
    /// Free text for people.
    pub description: Option<String>,
    /// Window: last matched event time minus first, inclusive.
    pub within: Duration,
    /// Fields that must be equal and non-null across the matched events.
    pub same: Vec<SameField>,
    /// What it looks for.
    pub kind: RuleKind,
}

impl Rule {
    /// The window in milliseconds.
    pub fn within_ms(&self) -> i64 {
        // Loading rejects windows that do not fit comfortably in an i64.
        i64::try_from(self.within.as_millis()).unwrap_or(i64::MAX / 4)
    }
}

/// The compiled shape of a rule: predicates replaced by indices into [`RuleSet`]'s unique
/// predicate table, so an event is matched against each distinct predicate once.
#[derive(Debug, Clone)]
pub(crate) enum Shape {
    Sequence { steps: Vec<usize> },
    Absence { trigger: usize, followed_by: usize },
    Count { predicate: usize, at_least: usize },
}

#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub within_ms: i64,
    /// The predicate of the completing event (last step, trigger, counted event).
    pub completing: usize,
    pub same: Vec<SameField>,
    pub shape: Shape,
}

/// A validated, compiled set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    pub(crate) compiled: Vec<Compiled>,
    /// Distinct predicates of all rules.
    pub(crate) predicates: Vec<Predicate>,
    /// Per predicate: the largest window of the rules using it (how long a matching event matters).
    pub(crate) predicate_window: Vec<i64>,
    /// Per predicate: the channels it accepts, one bit per `Channel::index`.
    pub(crate) predicate_channels: Vec<u16>,
    /// Attribute keys any rule reads (predicates and `same`), sorted.
    pub(crate) attr_keys: Vec<Arc<str>>,
    /// All predicates matched at once (up to 64 of them).
    pub(crate) matcher: Option<super::eval::Matcher>,
    /// Which optional fields some rule reads.
    pub(crate) reads: Reads,
    /// Predicates that complete some rule, as a bit mask (with up to 64 predicates).
    pub(crate) completing_mask: u64,
    max_window_ms: i64,
    fingerprint: u64,
}

/// Optional event fields the rules read (the others are not kept per event).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reads {
    pub outcome: bool,
    pub line: bool,
    pub agent_id: bool,
}

/// Every problem found in a rule file, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct RuleErrors(pub Vec<String>);

/// Largest accepted window (ten years), so event-time arithmetic never overflows.
const MAX_WITHIN_MS: u128 = 10 * 365 * 86_400_000;

impl RuleSet {
    /// Parses and validates a rule file's text, reporting every problem at once.
    pub fn from_toml(text: &str) -> Result<RuleSet, RuleErrors> {
        let table: toml::Table = toml::from_str(text).map_err(|e| RuleErrors(vec![syntax_error(text, &e)]))?;
        let mut errors = Vec::new();
        for key in table.keys().filter(|k| k.as_str() != "rule") {
            errors.push(format!("unknown top-level key {key:?} (rules are [[rule]] tables)"));
        }
        let mut rules = Vec::new();
        match table.get("rule") {
            None => {}
            Some(Value::Array(items)) => {
                let mut first_index: HashMap<String, usize> = HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    let mut problems = Vec::new();
                    let rule = parse_rule(item, &mut problems);
                    let name = item.get("name").and_then(Value::as_str).filter(|n| valid_name(n));
                    let at = match name {
                        Some(n) => format!("rule[{i}] {n:?}"),
                        None => format!("rule[{i}]"),
                    };
                    if let Some(n) = name {
                        if let Some(j) = first_index.get(n) {
                            problems.push(format!("name: {n:?} is already used by rule[{j}]"));
                        } else {
                            first_index.insert(n.to_string(), i);
                        }
                    }
                    errors.extend(problems.iter().map(|p| format!("{at}: {p}")));
                    if let Some(r) = rule {
                        rules.push(r);
                    }
                }
            }
            Some(other) => errors.push(format!("rule: expected [[rule]] tables, got {}", describe(other))),
        }
        if errors.is_empty() {
            Ok(RuleSet::new(rules))
        } else {
            Err(RuleErrors(errors))
        }
    }

    /// Reads and validates a rule file; every problem is prefixed with the path.
    pub fn load(path: &Path) -> Result<RuleSet, RuleErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| RuleErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        RuleSet::from_toml(&text).map_err(|e| RuleErrors(e.0.into_iter().map(|p| format!("{}: {p}", path.display())).collect()))
    }

    /// Compiles validated rules (names are assumed unique).
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut predicates: Vec<Predicate> = Vec::new();
        let mut predicate_window: Vec<i64> = Vec::new();
        let mut intern = |p: &Predicate, w: i64| -> usize {
            match predicates.iter().position(|q| q == p) {
                Some(i) => {
                    predicate_window[i] = predicate_window[i].max(w);
                    i
                }
                None => {
                    predicates.push(p.clone());
                    predicate_window.push(w);
                    predicates.len() - 1
                }
            }
        };
        let mut compiled = Vec::with_capacity(rules.len());
        for r in &rules {
            let w = r.within_ms();
            let shape = match &r.kind {
                RuleKind::Sequence { steps } => Shape::Sequence { steps: steps.iter().map(|p| intern(p, w)).collect() },
                RuleKind::Absence { trigger, followed_by } => {
                    Shape::Absence { trigger: intern(trigger, w), followed_by: intern(followed_by, w) }
                }
                RuleKind::Count { predicate, at_least } => {
                    Shape::Count { predicate: intern(predicate, w), at_least: usize::try_from(*at_least).unwrap_or(usize::MAX) }
                }
            };
            let completing = match &shape {
                Shape::Sequence { steps } => steps[steps.len() - 1],
                Shape::Absence { trigger, .. } => *trigger,
                Shape::Count { predicate, .. } => *predicate,
            };
            compiled.push(Compiled { within_ms: w, completing, same: r.same.clone(), shape });
        }
        let mut attr_keys: Vec<Arc<str>> = predicates.iter().flat_map(|p| p.attrs.iter().map(|(k, _)| k.clone())).collect();
        for r in &rules {
            for f in &r.same {
                if let SameField::Attr(k) = f {
                    attr_keys.push(k.clone());
                }
            }
        }
        attr_keys.sort();
        attr_keys.dedup();
        let predicate_channels = predicates
            .iter()
            .map(|p| match &p.channel {
                None => u16::MAX,
                Some(cs) => cs.iter().fold(0u16, |m, c| m | 1 << c.index()),
            })
            .collect();
        let max_window_ms = rules.iter().map(Rule::within_ms).max().unwrap_or(0);
        // Debug output of the parsed rules is a canonical rendering: comments, layout and key
        // order of the file do not change it, any change of meaning does.
        let canonical = format!("{rules:?}");
        let fingerprint = fnv1a(canonical.as_bytes(), b"", 0);
        let matcher = super::eval::Matcher::new(&predicates, &attr_keys);
        let same_reads = |f: SameField| rules.iter().any(|r| r.same.contains(&f));
        let reads = Reads {
            outcome: predicates.iter().any(|p| p.outcome.is_some()) || same_reads(SameField::Outcome),
            line: predicates.iter().any(|p| p.line.is_some()) || same_reads(SameField::Line),
            agent_id: same_reads(SameField::AgentId),
        };
        let completing_mask = compiled.iter().filter(|c| c.completing < 64).fold(0u64, |m, c| m | 1 << c.completing);
        RuleSet {
            completing_mask,
            rules,
            compiled,
            predicates,
            predicate_window,
            predicate_channels,
            attr_keys,
            matcher,
            reads,
            max_window_ms,
            fingerprint,
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The largest window of any absence rule, in milliseconds (0 without one).
    pub fn max_absence_window_ms(&self) -> i64 {
        self.compiled.iter().filter(|c| matches!(c.shape, Shape::Absence { .. })).map(|c| c.within_ms).max().unwrap_or(0)
    }

    /// The largest window of any rule, in milliseconds (0 without rules).
    pub fn max_window_ms(&self) -> i64 {
        self.max_window_ms
    }

    /// A hash of the rules' meaning (not of comments or layout), to tell whether a reloaded
    /// file changed anything. Stable for a given build.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Index of the rule with this name and version.
    pub(crate) fn position(&self, name: &str, version: u32) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name && r.version == version)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {msg}")
        }
        None => format!("toml: {msg}"),
    }
}

/// A short description of a TOML value for error messages, with the value when it is short.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

const RULE_KEYS: [&str; 12] =
    ["name", "kind", "within", "severity", "version", "description", "same", "steps", "trigger", "followed_by", "match", "at_least"];

fn kind_of_key(key: &str) -> Option<&'static str> {
    match key {
        "steps" => Some("sequence"),
        "trigger" | "followed_by" => Some("absence"),
        "match" | "at_least" => Some("count"),
        _ => None,
    }
}

/// Parses one `[[rule]]` table; problems go to `problems` (without the rule prefix).
fn parse_rule(item: &Value, problems: &mut Vec<String>) -> Option<Rule> {
    let Some(t) = item.as_table() else {
        problems.push(format!("expected a table, got {}", describe(item)));
        return None;
    };
    let kind = match t.get("kind") {
        None => {
            problems.push("kind: missing (sequence, absence or count)".into());
            None
        }
        Some(Value::String(k)) if ["sequence", "absence", "count"].contains(&k.as_str()) => Some(k.as_str()),
        Some(v) => {
            problems.push(format!("kind: expected \"sequence\", \"absence\" or \"count\", got {}", describe(v)));
            None
        }
    };
    for key in t.keys() {
        if !RULE_KEYS.contains(&key.as_str()) {
            problems.push(format!("unknown key {key:?}"));
        } else if let (Some(k), Some(need)) = (kind, kind_of_key(key)) {
            if k != need {
                problems.push(format!("{key}: not allowed on a {k} rule (only on {need})"));
            }
        }
    }
    let name = match t.get("name") {
        None => {
            problems.push("name: missing".into());
            None
        }
        Some(Value::String(n)) if valid_name(n) => Some(n.clone()),
        Some(Value::String(n)) => {
            problems.push(format!("name: {n:?} must be lowercase letters, digits and underscores"));
            None
        }
        Some(v) => {
            problems.push(format!("name: expected a string, got {}", describe(v)));
            None
        }
    };
    let within = match t.get("within") {
        None => {
            problems.push("within: missing (a duration such as \"30m\")".into());
            None
        }
        Some(Value::String(s)) => match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                problems.push(format!("within: {s:?} must be positive"));
                None
            }
            Ok(d) if d.as_millis() > MAX_WITHIN_MS => {
                problems.push(format!("within: {s:?} is too long (at most 3650d)"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let reason = e.strip_prefix(&format!("invalid duration {s:?}: ")).unwrap_or(&e).to_string();
                problems.push(format!("within: {s:?} is not a duration: {reason}"));
                None
            }
        },
        Some(v) => {
            problems.push(format!("within: expected a duration string such as \"30m\", got {}", describe(v)));
            None
        }
    };
    let severity = match t.get("severity") {
        None => Some(Severity::Warning),
        Some(Value::String(s)) if s == "info" => Some(Severity::Info),
        Some(Value::String(s)) if s == "warning" => Some(Severity::Warning),
        Some(Value::String(s)) if s == "critical" => Some(Severity::Critical),
        Some(v) => {
            problems.push(format!("severity: expected \"info\", \"warning\" or \"critical\", got {}", describe(v)));
            None
        }
    };
    let version = match t.get("version") {
        None => Some(1),
        Some(Value::Integer(i)) if (1..=i64::from(i32::MAX)).contains(i) => u32::try_from(*i).ok(),
        Some(v) => {
            problems.push(format!("version: expected an integer from 1 to {}, got {}", i32::MAX, describe(v)));
            None
        }
    };
    let description = match t.get("description") {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(v) => {
            problems.push(format!("description: expected a string, got {}", describe(v)));
            None
        }
    };
    let same = match t.get("same") {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let mut fields: Vec<SameField> = Vec::new();
            let mut ok = true;
            for (i, v) in items.iter().enumerate() {
                match v.as_str().map(|s| (s, SameField::parse(s))) {
                    Some((_, Some(f))) => {
                        if !fields.contains(&f) {
                            fields.push(f);
                        }
                    }
                    Some((s, None)) => {
                        ok = false;
                        problems.push(format!(
                            "same[{i}]: {s:?} is not a field (topic, channel, event_type, outcome, line, region, agent_id or attrs.<key>)"
                        ));
                    }
                    None => {
                        ok = false;
                        problems.push(format!("same[{i}]: expected a field name, got {}", describe(v)));
                    }
                }
            }
            ok.then_some(fields)
        }
        Some(v) => {
            problems.push(format!("same: expected a list of field names, got {}", describe(v)));
            None
        }
    };
    let rule_kind = match kind {
        Some("sequence") => match t.get("steps") {
            None => {
                problems.push("steps: missing (at least two predicates)".into());
                None
            }
            Some(Value::Array(items)) => {
                if items.len() < 2 {
                    problems.push(format!("steps: a sequence needs at least 2 steps, got {}", items.len()));
                }
                let steps: Vec<Option<Predicate>> =
                    items.iter().enumerate().map(|(i, v)| parse_predicate(&format!("steps[{i}]"), v, problems)).collect();
                (items.len() >= 2 && steps.iter().all(Option::is_some))
                    .then(|| RuleKind::Sequence { steps: steps.into_iter().flatten().collect() })
            }
            Some(v) => {
                problems.push(format!("steps: expected a list of predicate tables, got {}", describe(v)));
                None
            }
        },
        Some("absence") => {
            let trigger = required_predicate(t, "trigger", problems);
            let followed_by = required_predicate(t, "followed_by", problems);
            match (trigger, followed_by) {
                (Some(trigger), Some(followed_by)) => Some(RuleKind::Absence { trigger, followed_by }),
                _ => None,
            }
        }
        Some("count") => {
            let predicate = required_predicate(t, "match", problems);
            let at_least = match t.get("at_least") {
                None => {
                    problems.push("at_least: missing (an integer >= 1)".into());
                    None
                }
                Some(Value::Integer(i)) if (1..=i64::from(u32::MAX)).contains(i) => u32::try_from(*i).ok(),
                Some(v) => {
                    problems.push(format!("at_least: expected an integer >= 1, got {}", describe(v)));
                    None
                }
            };
            match (predicate, at_least) {
                (Some(predicate), Some(at_least)) => Some(RuleKind::Count { predicate, at_least }),
                _ => None,
            }
        }
        _ => None,
    };
    Some(Rule {
        name: name?,
        version: version?,
        severity: severity?,
        description: description?,
        within: within?,
        same: same?,
        kind: rule_kind?,
    })
}

fn required_predicate(t: &toml::Table, key: &str, problems: &mut Vec<String>) -> Option<Predicate> {
    match t.get(key) {
        None => {
            problems.push(format!("{key}: missing (a predicate table, {{}} matches every event)"));
            None
        }
        Some(v) => parse_predicate(key, v, problems),
    }
}

const PREDICATE_KEYS: [&str; 7] = ["channel", "event_type", "outcome", "topic", "line", "region", "attrs"];

/// A string or a non-empty list of strings.
fn string_list(at: &str, v: &Value, problems: &mut Vec<String>) -> Option<Vec<Arc<str>>> {
    match v {
        Value::String(s) => Some(vec![Arc::from(s.as_str())]),
        Value::Array(items) if items.is_empty() => {
            problems.push(format!("{at}: an empty list matches nothing"));
            None
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, x) in items.iter().enumerate() {
                match x {
                    Value::String(s) => out.push(Arc::from(s.as_str())),
                    other => {
                        ok = false;
                        problems.push(format!("{at}[{i}]: expected a string, got {}", describe(other)));
                    }
                }
            }
            ok.then_some(out)
        }
        other => {
            problems.push(format!("{at}: expected a string or a list of strings, got {}", describe(other)));
            None
        }
    }
}

fn parse_predicate(at: &str, v: &Value, problems: &mut Vec<String>) -> Option<Predicate> {
    let Some(t) = v.as_table() else {
        problems.push(format!("{at}: expected a predicate table such as {{ channel = \"APP\" }}, got {}", describe(v)));
        return None;
    };
    let mut p = Predicate::default();
    let mut ok = true;
    for (key, value) in t {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "channel" => match string_list(&here, value, problems) {
                Some(symbols) => {
                    let mut channels = Vec::with_capacity(symbols.len());
                    for s in &symbols {
                        match Channel::from_symbol(s) {
                            Some(c) => channels.push(c),
                            None => {
                                ok = false;
                                let all: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
                                problems.push(format!("{here}: {s:?} is not a channel (one of {})", all.join(", ")));
                            }
                        }
                    }
                    p.channel = Some(channels);
                }
                None => ok = false,
            },
            "event_type" | "outcome" | "topic" | "line" | "region" => match string_list(&here, value, problems) {
                Some(values) => {
                    let slot = match key.as_str() {
                        "event_type" => &mut p.event_type,
                        "outcome" => &mut p.outcome,
                        "topic" => &mut p.topic,
                        "line" => &mut p.line,
                        _ => &mut p.region,
                    };
                    *slot = Some(values);
                }
                None => ok = false,
            },
            "attrs" => match value.as_table() {
                Some(attrs) => {
                    for (k, av) in attrs {
                        if k.is_empty() {
                            ok = false;
                            problems.push(format!("{here}: empty attribute key"));
                            continue;
                        }
                        match string_list(&format!("{here}.{k}"), av, problems) {
                            Some(values) => p.attrs.push((Arc::from(k.as_str()), values)),
                            None => ok = false,
                        }
                    }
                    p.attrs.sort();
                }
                None => {
                    ok = false;
                    problems.push(format!("{here}: expected a table such as {{ key = \"value\" }}, got {}", describe(value)));
                }
            },
            other => {
                ok = false;
                problems.push(format!("{at}: unknown key {other:?} (one of {})", PREDICATE_KEYS.join(", ")));
            }
        }
    }
    ok.then_some(p)
}
