//! The event contract of the journey pipeline.
//!
//! The `.avsc` files beside this crate are the single source of truth; this crate embeds
//! them, exposes the matching Rust types, and encodes/decodes them in the Confluent wire
//! format (magic byte 0, 4-byte big-endian schema id, Avro binary body). A test checks that
//! the Rust types and the schemas agree field by field, and that records written with an
//! earlier schema version still decode (backward compatibility).

pub mod avro;
pub mod codec;
pub mod dlq;
pub mod duration;
pub mod error;
pub mod registry;
pub mod topics;
pub mod types;
pub mod validate;

pub use codec::{Codec, Decoded};
pub use duration::{format_duration, parse_duration};
pub use error::ContractError;
pub use registry::{SchemaIds, SchemaSet};
pub use types::{Channel, ChannelEvent, ScenarioHit, Session};

/// The current `ChannelEvent` schema text.
pub const CHANNEL_EVENT_AVSC: &str = include_str!("../ChannelEvent.avsc");
/// The previous `ChannelEvent` schema (version 1, without `region`).
pub const CHANNEL_EVENT_V1_AVSC: &str = include_str!("../history/ChannelEvent.v1.avsc");
/// The current `Session` schema text.
pub const SESSION_AVSC: &str = include_str!("../Session.avsc");
/// The current `ScenarioHit` schema text.
pub const SCENARIO_HIT_AVSC: &str = include_str!("../ScenarioHit.avsc");
/// The manifest mapping schema files to ids, used when no Schema Registry is configured.
pub const MANIFEST_JSON: &str = include_str!("../manifest.json");
