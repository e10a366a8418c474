//! `[generator]` configuration: population, time span, scenario mix, disorder, incident.

use journey_schemas::duration::serde_duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shares (0..=1) of journeys that play out each unwanted scenario; the rest are self-service
/// and ordinary assisted journeys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioRates {
    /// App session, then a call to the contact centre on the same topic.
    pub app_then_call: f64,
    /// A contact, then another on the same topic hours to days later.
    pub repeat_contact: f64,
    /// IVR menus, then transfer to an agent.
    pub ivr_to_agent: f64,
    /// Voice bot does not understand, customer reaches an agent or chat.
    pub bot_not_understood: f64,
    /// App or web error, then a contact on the same topic.
    pub error_then_contact: f64,
    /// Front-line contact escalated to a back-office ticket.
    pub escalated: f64,
}

impl Default for ScenarioRates {
    fn default() -> Self {
        ScenarioRates {
            app_then_call: 0.06,
            repeat_contact: 0.04,
            ivr_to_agent: 0.07,
            bot_not_understood: 0.03,
            error_then_contact: 0.03,
            escalated: 0.02,
        }
    }
}

/// Controlled disorder, to exercise event time, deduplication and the DLQ.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Disorder {
    /// Share of events emitted late (out of order).
    pub delayed_share: f64,
    /// Largest delay of a late event, in event time.
    #[serde(with = "serde_duration")]
    pub max_delay: Duration,
    /// Share of events emitted twice (same event_id).
    pub duplicate_share: f64,
    /// Share of extra malformed records (undecodable bytes, or invalid JSON lines in files).
    pub malformed_share: f64,
}

impl Default for Disorder {
    fn default() -> Self {
        Disorder { delayed_share: 0.0, max_delay: Duration::from_secs(600), duplicate_share: 0.0, malformed_share: 0.0 }
    }
}

/// A spike of one scenario in one region and topic, to exercise alerting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    /// Scenario to amplify (a field name of [`ScenarioRates`]).
    pub scenario: String,
    /// Region affected.
    pub region: String,
    /// Topic of the affected journeys.
    pub topic: String,
    /// Start, as an offset from the start of the generated span.
    #[serde(with = "serde_duration")]
    pub start_offset: Duration,
    /// How long it lasts.
    #[serde(with = "serde_duration")]
    pub duration: Duration,
    /// Extra journeys of that scenario per ordinary journey in the region, during the incident.
    pub multiplier: f64,
}

/// `[generator]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Number of customers in the population.
    pub customers: u64,
    /// Seed: the same seed and settings produce identical output.
    pub seed: u64,
    /// Days of event time covered (journeys end at the end of the span).
    pub days: u32,
    /// Start of event time, epoch ms; default: `days` days before now, at midnight UTC.
    pub start_ms: Option<i64>,
    /// Events per second; 0 = as fast as possible.
    pub rate: u64,
    /// Stop after this many valid events (duplicates and malformed records come on top).
    pub events: Option<u64>,
    /// Journeys per customer per day, when `events` is not set.
    pub journeys_per_customer_day: f64,
    /// Share of app installs that stay anonymous until a login links them.
    pub anonymous_app_share: f64,
    /// Share of an anonymous install's journeys that include a login.
    pub login_share: f64,
    /// Unwanted-scenario mix.
    pub scenarios: ScenarioRates,
    /// Disorder.
    pub disorder: Disorder,
    /// Optional incident.
    pub incident: Option<Incident>,
    /// Regions customers live in.
    pub regions: Vec<String>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            customers: 10_000,
            seed: 42,
            days: 1,
            start_ms: None,
            rate: 0,
            events: None,
            journeys_per_customer_day: 0.5,
            anonymous_app_share: 0.3,
            login_share: 0.3,
            scenarios: ScenarioRates::default(),
            disorder: Disorder::default(),
            incident: None,
            regions: ["capital", "north", "south", "east", "west", "central", "volga", "siberia"].into_iter().map(String::from).collect(),
        }
    }
}

fn share(errors: &mut Vec<String>, name: &str, v: f64) {
    if !(0.0..=1.0).contains(&v) || v.is_nan() {
        errors.push(format!("generator.{name}: {v} must be between 0 and 1"));
    }
}

impl GeneratorConfig {
    /// Every problem with this section.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.customers == 0 {
            errors.push("generator.customers: must be at least 1".into());
        }
        if self.days == 0 {
            errors.push("generator.days: must be at least 1".into());
        }
        if self.regions.is_empty() {
            errors.push("generator.regions: must not be empty".into());
        }
        // NaN fails this too.
        if self.journeys_per_customer_day.is_nan() || self.journeys_per_customer_day <= 0.0 {
            errors.push(format!("generator.journeys_per_customer_day: {} must be positive", self.journeys_per_customer_day));
        }
        share(errors, "anonymous_app_share", self.anonymous_app_share);
        share(errors, "login_share", self.login_share);
        let s = &self.scenarios;
        for (n, v) in [
            ("scenarios.app_then_call", s.app_then_call),
            ("scenarios.repeat_contact", s.repeat_contact),
            ("scenarios.ivr_to_agent", s.ivr_to_agent),
            ("scenarios.bot_not_understood", s.bot_not_understood),
            ("scenarios.error_then_contact", s.error_then_contact),
            ("scenarios.escalated", s.escalated),
        ] {
            share(errors, n, v);
        }
        let total = s.app_then_call + s.repeat_contact + s.ivr_to_agent + s.bot_not_understood + s.error_then_contact + s.escalated;
        if total > 1.0 {
            errors.push(format!("generator.scenarios: shares add up to {total}, more than 1"));
        }
        share(errors, "disorder.delayed_share", self.disorder.delayed_share);
        share(errors, "disorder.duplicate_share", self.disorder.duplicate_share);
        share(errors, "disorder.malformed_share", self.disorder.malformed_share);
        if let Some(i) = &self.incident {
            if super::Scenario::from_name(&i.scenario).is_none() {
                errors.push(format!("generator.incident.scenario: unknown scenario {:?}", i.scenario));
            }
            if !self.regions.contains(&i.region) {
                errors.push(format!("generator.incident.region: {:?} is not in generator.regions", i.region));
            }
            if i.multiplier.is_nan() || i.multiplier < 0.0 {
                errors.push(format!("generator.incident.multiplier: {} must be non-negative", i.multiplier));
            }
        }
    }
}
