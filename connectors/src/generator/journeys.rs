//! Journey scripts: what a customer does across channels for one need, with realistic timing.

use super::{Rng, ScenarioRates};
use journey_schemas::Channel;

/// The unwanted scenarios the generator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// App, then a call.
    AppThenCall,
    /// Two contacts on the same topic.
    RepeatContact,
    /// IVR, then an agent.
    IvrToAgent,
    /// Voice bot not understood, then an agent or chat.
    BotNotUnderstood,
    /// App or web error, then a contact.
    ErrorThenContact,
    /// Front line escalates to back office.
    Escalated,
}

impl Scenario {
    /// Parses the config name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Some(match name {
            "app_then_call" => Scenario::AppThenCall,
            "repeat_contact" => Scenario::RepeatContact,
            "ivr_to_agent" => Scenario::IvrToAgent,
            "bot_not_understood" => Scenario::BotNotUnderstood,
            "error_then_contact" => Scenario::ErrorThenContact,
            "escalated" => Scenario::Escalated,
            _ => return None,
        })
    }

    /// Draws a scenario by the configured shares, or `None` for an ordinary journey.
    pub fn pick(rng: &mut Rng, r: &ScenarioRates) -> Option<Scenario> {
        let mut x = rng.f64();
        for (share, s) in [
            (r.app_then_call, Scenario::AppThenCall),
            (r.repeat_contact, Scenario::RepeatContact),
            (r.ivr_to_agent, Scenario::IvrToAgent),
            (r.bot_not_understood, Scenario::BotNotUnderstood),
            (r.error_then_contact, Scenario::ErrorThenContact),
            (r.escalated, Scenario::Escalated),
        ] {
            if x < share {
                return Some(s);
            }
            x -= share;
        }
        None
    }
}

/// One scripted event, relative to the journey start.
#[derive(Debug, Clone)]
pub struct Step {
    /// Offset from the journey start.
    pub offset_ms: i64,
    /// Channel.
    pub channel: Channel,
    /// Event type.
    pub event_type: &'static str,
    /// Topic.
    pub topic: Option<String>,
    /// Outcome.
    pub outcome: Option<&'static str>,
    /// Line.
    pub line: Option<&'static str>,
    /// Agent number.
    pub agent: Option<u32>,
    /// One attribute.
    pub attr: Option<(&'static str, String)>,
    /// An app login that links the install to the customer.
    pub linking: bool,
    /// The contact centre identified the caller in CRM.
    pub crm_identified: bool,
}

const TOPICS: [(&str, u64); 8] = [
    ("balance", 25),
    ("tariff", 15),
    ("add_gb", 15),
    ("promised_payment", 12),
    ("internet_down", 10),
    ("roaming", 8),
    ("billing_dispute", 8),
    ("sim_replacement", 7),
];

fn topic(rng: &mut Rng) -> String {
    let total: u64 = TOPICS.iter().map(|t| t.1).sum();
    let mut x = rng.below(total);
    for (t, w) in TOPICS {
        if x < w {
            return t.to_string();
        }
        x -= w;
    }
    TOPICS[0].0.to_string()
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

struct Script<'r> {
    rng: &'r mut Rng,
    t: i64,
    steps: Vec<Step>,
    topic: String,
    login: bool,
}

impl Script<'_> {
    fn at(&mut self, after_ms: i64, channel: Channel, event_type: &'static str) -> &mut Step {
        self.t += after_ms.max(0);
        self.steps.push(Step {
            offset_ms: self.t,
            channel,
            event_type,
            topic: None,
            outcome: None,
            line: None,
            agent: None,
            attr: None,
            linking: false,
            crm_identified: true,
        });
        self.steps.last_mut().expect("just pushed")
    }

    fn secs(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.range(lo * 1000, hi * 1000)
    }

    fn app_session(&mut self, screens: u64) {
        self.at(0, Channel::App, "app.open");
        if self.login {
            self.login = false;
            let d = self.secs(3, 20);
            self.at(d, Channel::App, "app.login").linking = true;
        }
        for _ in 0..screens {
            let d = self.secs(5, 60);
            let tp = Some(self.topic.clone());
            let screen = format!("{}_screen", self.topic);
            let s = self.at(d, Channel::App, "screen.view");
            s.topic = tp;
            s.attr = Some(("screen", screen));
        }
    }

    fn contact(&mut self, after: i64, channel: Channel, outcome: &'static str) {
        let agent = Some(self.rng.below(400) as u32);
        let identified = self.rng.chance(0.8);
        let tp = Some(self.topic.clone());
        let s = self.at(after, channel, "contact.start");
        s.topic = tp.clone();
        s.agent = agent;
        s.crm_identified = identified;
        if channel == Channel::ContactCentre {
            s.line = Some("front");
        }
        let d = self.secs(60, 900);
        let e = self.at(d, channel, "contact.end");
        e.topic = tp;
        e.agent = agent;
        e.outcome = Some(outcome);
        e.crm_identified = identified;
        if channel == Channel::ContactCentre {
            e.line = Some("front");
        }
    }

    fn ivr(&mut self, menus: u64, end: &'static str) {
        self.at(0, Channel::Ivr, "ivr.call.start");
        for m in 0..menus {
            let d = self.secs(8, 40);
            let tp = Some(self.topic.clone());
            let s = self.at(d, Channel::Ivr, "ivr.menu");
            s.topic = tp;
            s.attr = Some(("menu", (m + 1).to_string()));
        }
        let d = self.secs(5, 30);
        let tp = Some(self.topic.clone());
        let s = self.at(d, Channel::Ivr, end);
        s.topic = tp;
        s.outcome = Some(if end == "ivr.transfer" { "transferred" } else { "resolved" });
    }
}

/// The events of one journey. `forced_topic` pins the topic (incidents); `login` adds an app login.
pub fn script(rng: &mut Rng, scenario: Option<Scenario>, forced_topic: Option<String>, login: bool) -> Vec<Step> {
    let topic = forced_topic.unwrap_or_else(|| topic(rng));
    let mut s = Script { rng, t: 0, steps: Vec::with_capacity(10), topic, login };
    match scenario {
        Some(Scenario::AppThenCall) => {
            let n = s.rng.range(2, 5) as u64;
            s.app_session(n);
            let d = s.rng.range(3 * MIN, 25 * MIN);
            s.contact(d, Channel::ContactCentre, "resolved");
        }
        Some(Scenario::RepeatContact) => {
            let ch = if s.rng.chance(0.7) { Channel::ContactCentre } else { Channel::Chat };
            s.contact(0, ch, "abandoned");
            let d = s.rng.range(2 * HOUR, 60 * HOUR);
            s.contact(d, Channel::ContactCentre, "resolved");
        }
        Some(Scenario::IvrToAgent) => {
            let n = s.rng.range(1, 4) as u64;
            s.ivr(n, "ivr.transfer");
            let d = s.rng.range(20_000, 4 * MIN);
            s.contact(d, Channel::ContactCentre, "resolved");
        }
        Some(Scenario::BotNotUnderstood) => {
            s.at(0, Channel::VoiceBot, "bot.session.start");
            for _ in 0..s.rng.range(1, 2) {
                let d = s.secs(5, 25);
                let tp = Some(s.topic.clone());
                let u = s.at(d, Channel::VoiceBot, "bot.utterance");
                u.outcome = Some("unrecognized");
                u.topic = tp;
            }
            let ch = if s.rng.chance(0.75) { Channel::ContactCentre } else { Channel::Chat };
            let d = s.rng.range(30_000, 6 * MIN);
            s.contact(d, ch, "resolved");
        }
        Some(Scenario::ErrorThenContact) => {
            let ch = if s.rng.chance(0.6) { Channel::App } else { Channel::Web };
            if ch == Channel::App {
                s.app_session(1);
            } else {
                s.at(0, Channel::Web, "page.view");
            }
            let d = s.secs(5, 60);
            let tp = Some(s.topic.clone());
            let e = s.at(d, ch, "error");
            e.topic = tp;
            e.outcome = Some("error");
            let cc = if s.rng.chance(0.7) { Channel::ContactCentre } else { Channel::Chat };
            let d = s.rng.range(2 * MIN, 50 * MIN);
            s.contact(d, cc, "resolved");
        }
        Some(Scenario::Escalated) => {
            s.contact(0, Channel::ContactCentre, "transferred");
            let d = s.rng.range(HOUR, 20 * HOUR);
            let tp = Some(s.topic.clone());
            let t = s.at(d, Channel::BackOffice, "ticket.created");
            t.topic = tp.clone();
            t.line = Some("back");
            let d = s.rng.range(HOUR, 30 * HOUR);
            let r = s.at(d, Channel::BackOffice, "ticket.resolved");
            r.topic = tp;
            r.line = Some("back");
            r.outcome = Some("resolved");
        }
        None => ordinary(&mut s),
    }
    s.steps
}

fn ordinary(s: &mut Script<'_>) {
    match s.rng.below(100) {
        0..=34 => {
            let n = s.rng.range(1, 6) as u64;
            s.app_session(n);
            let d = s.secs(10, 90);
            let tp = Some(s.topic.clone());
            let e = s.at(d, Channel::App, "self_service.completed");
            e.topic = tp;
            e.outcome = Some("resolved");
        }
        35..=44 => {
            for _ in 0..s.rng.range(2, 6) {
                let d = s.secs(5, 120);
                let tp = Some(s.topic.clone());
                s.at(d, Channel::Web, "page.view").topic = tp;
            }
            let d = s.secs(10, 60);
            let tp = Some(s.topic.clone());
            let e = s.at(d, Channel::Web, "form.submit");
            e.topic = tp;
            e.outcome = Some("resolved");
        }
        45..=56 => {
            let n = s.rng.range(1, 3) as u64;
            s.ivr(n, "ivr.call.end");
        }
        57..=64 => {
            let tp = Some(s.topic.clone());
            let u = s.at(0, Channel::Ussd, "ussd.request");
            u.topic = tp;
            u.outcome = Some("resolved");
            let d = s.secs(1, 10);
            s.at(d, Channel::Sms, "sms.sent").attr = Some(("template", "ussd_reply".into()));
        }
        65..=69 => {
            s.at(0, Channel::Sms, "sms.sent").attr = Some(("template", "campaign".into()));
        }
        70..=75 => s.contact(0, Channel::Chat, "resolved"),
        76..=79 => s.contact(0, Channel::Retail, "resolved"),
        80..=81 => s.contact(0, Channel::Email, "resolved"),
        82..=89 => s.contact(0, Channel::ContactCentre, "resolved"),
        _ => {
            s.at(0, Channel::VoiceBot, "bot.session.start");
            let d = s.secs(5, 20);
            let tp = Some(s.topic.clone());
            let u = s.at(d, Channel::VoiceBot, "bot.utterance");
            u.outcome = Some("recognized");
            u.topic = tp.clone();
            let d = s.secs(10, 60);
            let e = s.at(d, Channel::VoiceBot, "bot.session.end");
            e.outcome = Some("resolved");
            e.topic = tp;
        }
    }
}
