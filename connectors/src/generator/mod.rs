//! A realistic simulator of a telecom operator's customers, for demos, load tests and benchmarks.
//!
//! Deterministic: the same configuration and seed yield the same records in the same order
//! (its own SplitMix64 generator, so output does not change with a dependency's version).
//! Journeys start by a seasonal Poisson process (daily and weekly profile), each journey is a
//! short script across channels; records are released in emission order, which is event order
//! except for the configured share of delayed events and duplicates.

mod config;
mod journeys;
pub mod output;

pub use config::{Disorder, GeneratorConfig, Incident, ScenarioRates};
pub use journeys::Scenario;

use journey_schemas::{Channel, ChannelEvent};
use std::collections::{BTreeMap, BinaryHeap};

/// SplitMix64: tiny, fast, statistically sound for simulation, stable forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1).max(1) as u64) as i64
    }
    /// True with probability p.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

/// Appends `v` in lower-case hex, zero-padded to at least `min_digits`.
fn push_hex(out: &mut String, v: u64, min_digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - (v.leading_zeros() as usize) / 4).max(min_digits).max(1);
    for i in (0..digits).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// The SplitMix64 finaliser, also used to derive stable identifiers.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One record the generator emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Generated {
    /// A valid event, seen for the first time.
    Event(ChannelEvent),
    /// A valid event emitted again with the same event_id.
    Duplicate(ChannelEvent),
    /// A malformed record: bytes that are not a valid event, and the kind of damage.
    Malformed {
        /// Key it would be published under.
        key: String,
        /// The damaged payload (an Avro record cut short, random bytes, or a bad JSON line).
        payload: Vec<u8>,
        /// What is wrong with it.
        kind: &'static str,
    },
}

/// Relative volume of journeys by hour of day (UTC+3 business day of the operator, simplified).
const DAILY: [f64; 24] = [
    0.15, 0.10, 0.08, 0.07, 0.08, 0.15, 0.35, 0.60, 0.85, 1.00, 1.10, 1.15, 1.10, 1.05, 1.00, 1.00, 1.00, 1.05, 1.15, 1.20, 1.10, 0.85,
    0.55, 0.30,
];
/// Relative volume by day of week, Monday first.
const WEEKLY: [f64; 7] = [1.10, 1.05, 1.0, 1.0, 0.95, 0.80, 0.75];
/// Average events per journey of a scenario mix, measured by sampling scripts (deterministic);
/// sizes the arrival rate so that `events` is reached inside the span.
fn events_per_journey(rates: &ScenarioRates, seed: u64) -> f64 {
    let mut rng = Rng::new(seed ^ 0xA5A5_5A5A);
    let n = 4000;
    let total: usize = (0..n)
        .map(|_| {
            let scenario = Scenario::pick(&mut rng, rates);
            journeys::script(&mut rng, scenario, None, false).len()
        })
        .sum();
    total as f64 / f64::from(n)
}

fn seasonal(t_ms: i64) -> f64 {
    let hour = (t_ms.div_euclid(3_600_000) % 24) as usize;
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let dow = ((t_ms.div_euclid(86_400_000) + 3) % 7) as usize;
    DAILY[hour] * WEEKLY[dow]
}

const SEASONAL_MAX: f64 = 1.20 * 1.10;

/// A customer of the simulated operator.
#[derive(Debug, Clone)]
pub struct Customer {
    /// CRM id.
    pub customer_id: String,
    /// Phone number.
    pub msisdn: String,
    /// App install id.
    pub app_instance_id: String,
    /// Whether the install is still anonymous (not yet linked by a login).
    pub anonymous: bool,
    /// Region.
    pub region: String,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    // BinaryHeap is a max-heap: store negated keys for earliest-first.
    neg_emit: i64,
    neg_seq: i64,
    slot: usize,
}

/// The journey simulator; iterate it for records in emission order.
pub struct Generator {
    cfg: GeneratorConfig,
    rng: Rng,
    customers: Vec<Customer>,
    start_ms: i64,
    end_ms: i64,
    /// Journeys per millisecond at seasonal factor 1.
    base_rate: f64,
    clock: i64,
    heap: BinaryHeap<Pending>,
    slots: Vec<Option<Generated>>,
    free: Vec<usize>,
    seq: i64,
    next_event: u64,
    valid_emitted: u64,
    done_starting: bool,
}

impl Generator {
    /// A generator; `now_ms` anchors the default start (only when `start_ms` is not set).
    pub fn new(cfg: GeneratorConfig, now_ms: i64) -> Generator {
        let day = 86_400_000i64;
        let start_ms = cfg.start_ms.unwrap_or_else(|| (now_ms.div_euclid(day) - i64::from(cfg.days)) * day);
        let span = i64::from(cfg.days) * day;
        let mut rng = Rng::new(cfg.seed);
        let customers = (0..cfg.customers)
            .map(|i| {
                let h = mix(cfg.seed ^ mix(i));
                Customer {
                    customer_id: format!("CUST{i:08}"),
                    msisdn: format!("79{:09}", h % 1_000_000_000),
                    app_instance_id: format!("app-{:012x}", mix(h) & 0xffff_ffff_ffff),
                    anonymous: rng.chance(cfg.anonymous_app_share),
                    region: cfg.regions[(mix(h ^ 7) % cfg.regions.len() as u64) as usize].clone(),
                }
            })
            .collect();
        let journeys = match cfg.events {
            // Size the arrival rate so the target count is reached at ~75% of the span, so
            // Poisson noise and journeys cut at the end of the span never leave it short.
            Some(n) => n as f64 / events_per_journey(&cfg.scenarios, cfg.seed) / 0.7,
            None => cfg.customers as f64 * cfg.journeys_per_customer_day * f64::from(cfg.days),
        };
        let mean_season = DAILY.iter().sum::<f64>() / 24.0 * WEEKLY.iter().sum::<f64>() / 7.0;
        let base_rate = journeys / span as f64 / mean_season;
        Generator {
            rng,
            customers,
            start_ms,
            end_ms: start_ms + span,
            base_rate,
            clock: start_ms,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            next_event: 0,
            valid_emitted: 0,
            done_starting: false,
            cfg,
        }
    }

    /// Start of the event-time span.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// End of the event-time span.
    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }

    /// The simulated population.
    pub fn customers(&self) -> &[Customer] {
        &self.customers
    }

    fn push(&mut self, emit: i64, g: Generated) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(g);
                s
            }
            None => {
                self.slots.push(Some(g));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Pending { neg_emit: -emit, neg_seq: -self.seq, slot });
    }

    fn event_id(&mut self) -> String {
        let n = self.next_event;
        self.next_event += 1;
        // `{:016x}-{n:x}` written by hand: this runs for every event and `format!` dominated it.
        let mut id = String::with_capacity(28);
        push_hex(&mut id, mix(self.cfg.seed.wrapping_add(0x5eed) ^ mix(n)), 16);
        id.push('-');
        push_hex(&mut id, n, 1);
        id
    }

    /// Schedules the next journey; returns false when the span is over.
    fn start_next_journey(&mut self) -> bool {
        // Thinning of a non-homogeneous Poisson process.
        loop {
            let gap = self.rng.exp(1.0 / (self.base_rate * SEASONAL_MAX));
            self.clock += gap.max(1.0) as i64;
            if self.clock >= self.end_ms {
                return false;
            }
            if self.rng.f64() * SEASONAL_MAX <= seasonal(self.clock) {
                break;
            }
        }
        let ci = self.rng.below(self.customers.len() as u64) as usize;
        let t0 = self.clock;
        let mut scenario = Scenario::pick(&mut self.rng, &self.cfg.scenarios);
        let mut topic = None;
        if let Some(inc) = &self.cfg.incident {
            let from = self.start_ms + inc.start_offset.as_millis() as i64;
            let to = from + inc.duration.as_millis() as i64;
            if t0 >= from && t0 < to && self.customers[ci].region == inc.region && self.rng.chance(inc.multiplier / (1.0 + inc.multiplier))
            {
                scenario = Scenario::from_name(&inc.scenario);
                topic = Some(inc.topic.clone());
            }
        }
        let login = self.customers[ci].anonymous && self.rng.chance(self.cfg.login_share);
        let steps = journeys::script(&mut self.rng, scenario, topic, login);
        // Events before the login stay anonymous; the login links the install for good.
        let mut anonymous = self.customers[ci].anonymous;
        for step in steps {
            anonymous &= !step.linking;
            let t = t0 + step.offset_ms;
            if t >= self.end_ms {
                continue; // the span is over: the journey is cut there, as a real export would be
            }
            let event = self.materialise(ci, t, step, anonymous);
            self.schedule(event);
        }
        self.customers[ci].anonymous = anonymous;
        true
    }

    fn materialise(&mut self, ci: usize, t: i64, s: journeys::Step, anonymous: bool) -> ChannelEvent {
        let c = &self.customers[ci];
        let (customer_id, msisdn, app_instance_id) = match s.channel {
            Channel::App if s.linking => (Some(c.customer_id.clone()), None, Some(c.app_instance_id.clone())),
            Channel::App if anonymous => (None, None, Some(c.app_instance_id.clone())),
            Channel::App => (Some(c.customer_id.clone()), None, Some(c.app_instance_id.clone())),
            Channel::Ivr | Channel::VoiceBot | Channel::Sms | Channel::Ussd => (None, Some(c.msisdn.clone()), None),
            Channel::ContactCentre if s.crm_identified => (Some(c.customer_id.clone()), Some(c.msisdn.clone()), None),
            Channel::ContactCentre => (None, Some(c.msisdn.clone()), None),
            _ => (Some(c.customer_id.clone()), None, None),
        };
        let region = Some(c.region.clone());
        let mut attrs = BTreeMap::new();
        if let Some((k, v)) = s.attr {
            attrs.insert(k.to_string(), v);
        }
        ChannelEvent {
            event_id: self.event_id(),
            event_time: t,
            ingest_time: t,
            channel: s.channel,
            event_type: s.event_type.to_string(),
            customer_id,
            msisdn,
            app_instance_id,
            topic: s.topic,
            outcome: s.outcome.map(str::to_string),
            line: s.line.map(str::to_string),
            agent_id: s.agent.map(|a| format!("agent-{a:04}")),
            attrs,
            region,
        }
    }

    fn schedule(&mut self, mut e: ChannelEvent) {
        let d = self.cfg.disorder.clone();
        let mut emit = e.event_time;
        if self.rng.chance(d.delayed_share) {
            emit += self.rng.range(1, d.max_delay.as_millis().max(1) as i64);
        }
        e.ingest_time = emit;
        if self.rng.chance(d.duplicate_share) {
            let again = emit + self.rng.range(0, 60_000);
            self.push(again, Generated::Duplicate(e.clone()));
        }
        if self.rng.chance(d.malformed_share) {
            let (payload, kind) = self.damage(&e);
            self.push(emit, Generated::Malformed { key: e.best_key().unwrap_or_default(), payload, kind });
        }
        self.push(emit, Generated::Event(e));
    }

    fn damage(&mut self, e: &ChannelEvent) -> (Vec<u8>, &'static str) {
        match self.rng.below(3) {
            0 => {
                let bytes = journey_schemas::Codec::from_manifest().map(|c| c.encode_event(e)).unwrap_or_default();
                let cut = bytes.len() / 2;
                (bytes[..cut].to_vec(), "truncated_avro")
            }
            1 => ((0..24).map(|_| self.rng.next_u64() as u8).collect(), "random_bytes"),
            _ => (format!("{{\"event_id\":\"{}\",\"channel\":\"PIGEON\"", e.event_id).into_bytes(), "bad_json"),
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        loop {
            if let Some(limit) = self.cfg.events {
                if self.valid_emitted >= limit {
                    // Only what was already released counts; drop the rest so the count is exact.
                    return None;
                }
            }
            let head = self.heap.peek().map(|p| -p.neg_emit);
            let release = match head {
                Some(t) => self.done_starting || t <= self.clock,
                None => false,
            };
            if release {
                let p = self.heap.pop()?;
                let g = self.slots[p.slot].take();
                self.free.push(p.slot);
                if matches!(g, Some(Generated::Event(_))) {
                    self.valid_emitted += 1;
                }
                return g;
            }
            if self.done_starting {
                return None;
            }
            if !self.start_next_journey() {
                self.done_starting = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(events: u64) -> GeneratorConfig {
        GeneratorConfig {
            customers: 500,
            events: Some(events),
            start_ms: Some(1_700_000_000_000 - 1_700_000_000_000 % 86_400_000),
            ..Default::default()
        }
    }

    #[test]
    fn an_incident_spikes_its_scenario_in_its_region_topic_and_window() {
        let day = 86_400_000;
        let incident = Incident {
            scenario: "ivr_to_agent".into(),
            region: "north".into(),
            topic: "internet_down".into(),
            start_offset: std::time::Duration::from_secs(10 * 3600),
            duration: std::time::Duration::from_secs(2 * 3600),
            multiplier: 10.0,
        };
        let cfg = GeneratorConfig { customers: 2000, events: None, journeys_per_customer_day: 3.0, incident: Some(incident), ..cfg(0) };
        let start = cfg.start_ms.unwrap();
        let transfers = |from: i64, to: i64, out: &[Generated]| {
            out.iter()
                .filter(|g| {
                    matches!(g, Generated::Event(e) if e.event_type == "ivr.transfer" && e.region.as_deref() == Some("north")
                    && e.topic.as_deref() == Some("internet_down") && e.event_time >= from && e.event_time < to)
                })
                .count()
        };
        let out: Vec<_> = Generator::new(cfg, 0).collect();
        let during = transfers(start + 10 * 3_600_000, start + 12 * 3_600_000, &out);
        let before = transfers(start + 6 * 3_600_000, start + 8 * 3_600_000, &out);
        assert!(during > 10 * before.max(1), "during {during}, before {before}");
        assert!(out.iter().all(|g| !matches!(g, Generated::Event(e) if e.event_time >= start + day)));
    }

    #[test]
    fn hex_ids_match_format() {
        for v in [0u64, 1, 0xf, 0x10, 0xabc, u64::MAX, 1 << 63] {
            let mut s = String::new();
            push_hex(&mut s, v, 16);
            assert_eq!(s, format!("{v:016x}"));
            let mut s = String::new();
            push_hex(&mut s, v, 1);
            assert_eq!(s, format!("{v:x}"));
        }
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        let a: Vec<_> = Generator::new(cfg(2000), 0).collect();
        let b: Vec<_> = Generator::new(cfg(2000), 0).collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(GeneratorConfig { seed: 7, ..cfg(2000) }, 0).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn emits_exactly_the_requested_number_of_valid_unique_events() {
        let cfg = GeneratorConfig {
            disorder: Disorder { duplicate_share: 0.05, malformed_share: 0.02, delayed_share: 0.1, ..Default::default() },
            ..cfg(5000)
        };
        let out: Vec<_> = Generator::new(cfg, 0).collect();
        let valid: Vec<_> = out.iter().filter_map(|g| if let Generated::Event(e) = g { Some(e) } else { None }).collect();
        assert_eq!(valid.len(), 5000);
        let ids: std::collections::HashSet<_> = valid.iter().map(|e| &e.event_id).collect();
        assert_eq!(ids.len(), 5000);
        assert!(out.iter().any(|g| matches!(g, Generated::Duplicate(_))));
        assert!(out.iter().any(|g| matches!(g, Generated::Malformed { .. })));
        let limits = journey_schemas::validate::Limits::default();
        for e in &valid {
            journey_schemas::validate::validate_event(e, 1_800_000_000_000, &limits).unwrap();
        }
    }

    #[test]
    fn events_stay_inside_the_span_so_none_is_in_the_future() {
        let g = Generator::new(cfg(20_000), 0);
        let (start, end) = (g.start_ms(), g.end_ms());
        let out: Vec<_> = g.collect();
        let mut n = 0;
        for g in &out {
            if let Generated::Event(e) = g {
                assert!(e.event_time >= start && e.event_time < end, "{} outside [{start}, {end})", e.event_time);
                n += 1;
            }
        }
        assert_eq!(n, 20_000);
    }

    #[test]
    fn without_delays_emission_follows_event_time() {
        let out: Vec<_> = Generator::new(cfg(3000), 0).collect();
        let times: Vec<i64> = out.iter().filter_map(|g| if let Generated::Event(e) = g { Some(e.event_time) } else { None }).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn covers_every_channel_and_the_injected_scenarios() {
        let out: Vec<_> = Generator::new(cfg(20_000), 0).collect();
        let events: Vec<&ChannelEvent> = out.iter().filter_map(|g| if let Generated::Event(e) = g { Some(e) } else { None }).collect();
        for ch in Channel::ALL.iter().filter(|c| **c != Channel::Other) {
            assert!(events.iter().any(|e| e.channel == *ch), "no {ch} events");
        }
        assert!(events.iter().any(|e| e.channel == Channel::VoiceBot && e.outcome.as_deref() == Some("unrecognized")));
        assert!(events.iter().any(|e| e.channel == Channel::BackOffice && e.event_type == "ticket.created"));
        // Anonymous installs and later logins exist.
        assert!(events.iter().any(|e| e.channel == Channel::App && e.customer_id.is_none()));
        assert!(events.iter().any(|e| e.event_type == "app.login" && e.customer_id.is_some() && e.app_instance_id.is_some()));
    }
}
