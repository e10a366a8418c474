//! Rust types of the contract records, with their fast Avro body encoders and decoders
//! for the current schema versions (field order = schema order).

use crate::avro::{Reader, Spare, Writer};
use crate::ContractError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Customer-facing channel; Avro enum `journey.Channel` with default `OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    /// Mobile app.
    App,
    /// Web site.
    Web,
    /// Interactive voice response.
    Ivr,
    /// Voice bot.
    VoiceBot,
    /// Chat (bot or agent).
    Chat,
    /// Contact centre, front line.
    ContactCentre,
    /// Back office (tickets, second line).
    BackOffice,
    /// Retail store.
    Retail,
    /// SMS.
    Sms,
    /// USSD.
    Ussd,
    /// E-mail.
    Email,
    /// Anything else, and symbols unknown to this reader (and the schema's default).
    #[default]
    Other,
}

impl Channel {
    /// All channels in schema symbol order (the Avro enum index is the position here).
    pub const ALL: [Channel; 12] = [
        Channel::App,
        Channel::Web,
        Channel::Ivr,
        Channel::VoiceBot,
        Channel::Chat,
        Channel::ContactCentre,
        Channel::BackOffice,
        Channel::Retail,
        Channel::Sms,
        Channel::Ussd,
        Channel::Email,
        Channel::Other,
    ];

    /// The Avro symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::App => "APP",
            Channel::Web => "WEB",
            Channel::Ivr => "IVR",
            Channel::VoiceBot => "VOICE_BOT",
            Channel::Chat => "CHAT",
            Channel::ContactCentre => "CONTACT_CENTRE",
            Channel::BackOffice => "BACK_OFFICE",
            Channel::Retail => "RETAIL",
            Channel::Sms => "SMS",
            Channel::Ussd => "USSD",
            Channel::Email => "EMAIL",
            Channel::Other => "OTHER",
        }
    }

    /// Parses an Avro symbol exactly (connectors decide how lenient to be before this).
    pub fn from_symbol(s: &str) -> Option<Channel> {
        Channel::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Index in the Avro enum.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened to a customer in one channel (`journey.ChannelEvent`). The default
/// (all empty, channel `OTHER`) is not a valid event: it is a record to decode into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChannelEvent {
    /// Globally unique event id.
    pub event_id: String,
    /// Event time at the source, epoch milliseconds.
    pub event_time: i64,
    /// When a connector accepted the event, epoch milliseconds.
    pub ingest_time: i64,
    /// Channel.
    pub channel: Channel,
    /// Dotted event type.
    pub event_type: String,
    /// CRM customer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
    /// App install id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_instance_id: Option<String>,
    /// Reason of contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Contact-centre line (`front` / `back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Free-form attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
    /// Region (schema version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl ChannelEvent {
    /// The best customer identifier for keying: `customer_id`, else `msisdn`, else `app_instance_id`,
    /// prefixed with its kind so different identifier spaces never collide.
    pub fn best_key(&self) -> Option<String> {
        if let Some(c) = &self.customer_id {
            Some(format!("c:{c}"))
        } else if let Some(m) = &self.msisdn {
            Some(format!("m:{m}"))
        } else {
            self.app_instance_id.as_ref().map(|a| format!("a:{a}"))
        }
    }

    /// Encodes the Avro body with the current schema.
    pub fn encode_body(&self, w: &mut Writer) {
        w.string(&self.event_id);
        w.long(self.event_time);
        w.long(self.ingest_time);
        w.long(self.channel.index() as i64);
        w.string(&self.event_type);
        w.opt_string(self.customer_id.as_deref());
        w.opt_string(self.msisdn.as_deref());
        w.opt_string(self.app_instance_id.as_deref());
        w.opt_string(self.topic.as_deref());
        w.opt_string(self.outcome.as_deref());
        w.opt_string(self.line.as_deref());
        w.opt_string(self.agent_id.as_deref());
        w.string_map(&self.attrs);
        w.opt_string(self.region.as_deref());
    }

    /// Decodes an Avro body written with the current schema.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, ContractError> {
        let mut e = ChannelEvent::default();
        ChannelEvent::decode_body_into(r, &mut e, &mut Spare::default())?;
        Ok(e)
    }

    /// [`ChannelEvent::decode_body`] into `e`, every field overwritten, reusing its strings (and
    /// `spare`'s, see [`Spare`]): a processor that decodes one event after another into the
    /// same record allocates only when a value outgrows its buffer. After an error `e` holds a
    /// mix of old and new fields and must not be used.
    pub fn decode_body_into(r: &mut Reader<'_>, e: &mut ChannelEvent, spare: &mut Spare) -> Result<(), ContractError> {
        r.string_into(&mut e.event_id)?;
        e.event_time = r.long()?;
        e.ingest_time = r.long()?;
        let idx = r.long()?;
        e.channel = usize::try_from(idx)
            .ok()
            .and_then(|i| Channel::ALL.get(i).copied())
            .ok_or_else(|| ContractError::Malformed(format!("channel index {idx} out of range")))?;
        r.string_into(&mut e.event_type)?;
        r.opt_string_into(&mut e.customer_id, spare)?;
        r.opt_string_into(&mut e.msisdn, spare)?;
        r.opt_string_into(&mut e.app_instance_id, spare)?;
        r.opt_string_into(&mut e.topic, spare)?;
        r.opt_string_into(&mut e.outcome, spare)?;
        r.opt_string_into(&mut e.line, spare)?;
        r.opt_string_into(&mut e.agent_id, spare)?;
        r.string_map_into(&mut e.attrs, spare)?;
        r.opt_string_into(&mut e.region, spare)?;
        Ok(())
    }
}

/// A cross-channel session (`journey.Session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Deterministic session id.
    pub session_id: String,
    /// Canonical customer key.
    pub customer_id: String,
    /// First event time, epoch ms.
    pub start_time: i64,
    /// Last event time, epoch ms.
    pub end_time: i64,
    /// `end_time - start_time`.
    pub duration_ms: i64,
    /// Number of distinct events.
    pub event_count: i64,
    /// Distinct channels in order of first appearance.
    pub channels: Vec<String>,
    /// Channel path, consecutive repeats collapsed.
    pub path: String,
    /// Distinct topics in order of first appearance.
    pub topics: Vec<String>,
    /// Contains an assisted contact.
    pub assisted: bool,
    /// Id of the first event.
    pub first_event_id: String,
    /// Id of the last event.
    pub last_event_id: String,
    /// Monotonic version.
    pub version: i64,
    /// Absorbed by a correction.
    pub retracted: bool,
}

impl Session {
    /// Encodes the Avro body.
    pub fn encode_body(&self, w: &mut Writer) {
        w.string(&self.session_id);
        w.string(&self.customer_id);
        w.long(self.start_time);
        w.long(self.end_time);
        w.long(self.duration_ms);
        w.long(self.event_count);
        w.string_array(self.channels.iter().map(String::as_str));
        w.string(&self.path);
        w.string_array(self.topics.iter().map(String::as_str));
        w.boolean(self.assisted);
        w.string(&self.first_event_id);
        w.string(&self.last_event_id);
        w.long(self.version);
        w.boolean(self.retracted);
    }

    /// Decodes an Avro body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, ContractError> {
        Ok(Session {
            session_id: r.string()?,
            customer_id: r.string()?,
            start_time: r.long()?,
            end_time: r.long()?,
            duration_ms: r.long()?,
            event_count: r.long()?,
            channels: r.string_array()?,
            path: r.string()?,
            topics: r.string_array()?,
            assisted: r.boolean()?,
            first_event_id: r.string()?,
            last_event_id: r.string()?,
            version: r.long()?,
            retracted: r.boolean()?,
        })
    }
}

/// One occurrence of an unwanted scenario (`journey.ScenarioHit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioHit {
    /// Deterministic hit id.
    pub hit_id: String,
    /// Rule name.
    pub rule: String,
    /// Rule version.
    pub rule_version: i32,
    /// Canonical customer key.
    pub customer_id: String,
    /// Session of the completing event.
    pub session_id: Option<String>,
    /// Detection event time, epoch ms.
    pub event_time: i64,
    /// Completing (or trigger / counted) event id.
    pub trigger_event_id: String,
    /// Matched event ids in step order.
    pub matched_event_ids: Vec<String>,
    /// Channel path of the match.
    pub path: String,
    /// Topic of the completing event.
    pub topic: Option<String>,
    /// Severity.
    pub severity: String,
    /// Monotonic version.
    pub version: i64,
    /// Invalidated by a correction.
    pub retracted: bool,
}

impl ScenarioHit {
    /// Encodes the Avro body.
    pub fn encode_body(&self, w: &mut Writer) {
        w.string(&self.hit_id);
        w.string(&self.rule);
        w.long(i64::from(self.rule_version));
        w.string(&self.customer_id);
        w.opt_string(self.session_id.as_deref());
        w.long(self.event_time);
        w.string(&self.trigger_event_id);
        w.string_array(self.matched_event_ids.iter().map(String::as_str));
        w.string(&self.path);
        w.opt_string(self.topic.as_deref());
        w.string(&self.severity);
        w.long(self.version);
        w.boolean(self.retracted);
    }

    /// Decodes an Avro body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, ContractError> {
        Ok(ScenarioHit {
            hit_id: r.string()?,
            rule: r.string()?,
            rule_version: r.int()?,
            customer_id: r.string()?,
            session_id: r.opt_string()?,
            event_time: r.long()?,
            trigger_event_id: r.string()?,
            matched_event_ids: r.string_array()?,
            path: r.string()?,
            topic: r.opt_string()?,
            severity: r.string()?,
            version: r.long()?,
            retracted: r.boolean()?,
        })
    }
}
