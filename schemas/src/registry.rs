//! Where schema ids come from: the manifest in `schemas/manifest.json` (no registry), or a
//! Confluent-compatible Schema Registry (subjects `<topic>-value`, registered at start-up).

use crate::{ContractError, CHANNEL_EVENT_AVSC, CHANNEL_EVENT_V1_AVSC, MANIFEST_JSON, SCENARIO_HIT_AVSC, SESSION_AVSC};
use apache_avro::Schema;
use serde::Deserialize;
use std::collections::HashMap;

/// Which record a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `journey.ChannelEvent`.
    ChannelEvent,
    /// `journey.Session`.
    Session,
    /// `journey.ScenarioHit`.
    ScenarioHit,
}

impl RecordKind {
    /// The full Avro name.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::ChannelEvent => "journey.ChannelEvent",
            RecordKind::Session => "journey.Session",
            RecordKind::ScenarioHit => "journey.ScenarioHit",
        }
    }

    /// The current schema text of this record.
    pub fn current_avsc(self) -> &'static str {
        match self {
            RecordKind::ChannelEvent => CHANNEL_EVENT_AVSC,
            RecordKind::Session => SESSION_AVSC,
            RecordKind::ScenarioHit => SCENARIO_HIT_AVSC,
        }
    }
}

/// The ids under which this process writes the current schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaIds {
    /// Current `ChannelEvent` id.
    pub channel_event: u32,
    /// Current `Session` id.
    pub session: u32,
    /// Current `ScenarioHit` id.
    pub scenario_hit: u32,
}

/// Every schema this process can read, by id, plus the parsed current (reader) schemas.
#[derive(Debug)]
pub struct SchemaSet {
    /// Writer schemas by id.
    pub writers: HashMap<u32, (RecordKind, Schema)>,
    /// Ids of the current versions.
    pub ids: SchemaIds,
    /// Parsed current schemas, used as reader schemas for resolution.
    pub current: HashMap<RecordKind, Schema>,
}

#[derive(Deserialize)]
struct Manifest {
    schemas: Vec<ManifestEntry>,
}

#[derive(Deserialize)]
struct ManifestEntry {
    id: u32,
    subject: String,
    file: String,
}

fn kind_of(name: &str) -> Option<RecordKind> {
    [RecordKind::ChannelEvent, RecordKind::Session, RecordKind::ScenarioHit].into_iter().find(|k| k.full_name() == name)
}

fn parse(name: &str, text: &str) -> Result<Schema, ContractError> {
    Schema::parse_str(text).map_err(|e| ContractError::InvalidSchema { name: name.to_string(), reason: e.to_string() })
}

/// Schema files embedded in the binary, by manifest path.
fn embedded_file(path: &str) -> Option<&'static str> {
    match path {
        "ChannelEvent.avsc" => Some(CHANNEL_EVENT_AVSC),
        "history/ChannelEvent.v1.avsc" => Some(CHANNEL_EVENT_V1_AVSC),
        "Session.avsc" => Some(SESSION_AVSC),
        "ScenarioHit.avsc" => Some(SCENARIO_HIT_AVSC),
        _ => None,
    }
}

fn current_schemas() -> Result<HashMap<RecordKind, Schema>, ContractError> {
    let mut current = HashMap::new();
    for k in [RecordKind::ChannelEvent, RecordKind::Session, RecordKind::ScenarioHit] {
        current.insert(k, parse(k.full_name(), k.current_avsc())?);
    }
    Ok(current)
}

impl SchemaSet {
    /// The schema set from the embedded manifest (ids fixed in `schemas/manifest.json`).
    pub fn from_manifest() -> Result<SchemaSet, ContractError> {
        let manifest: Manifest = serde_json::from_str(MANIFEST_JSON)
            .map_err(|e| ContractError::InvalidSchema { name: "manifest.json".into(), reason: e.to_string() })?;
        let current = current_schemas()?;
        let mut writers = HashMap::new();
        let mut ids: HashMap<RecordKind, u32> = HashMap::new();
        for entry in manifest.schemas {
            let kind = kind_of(&entry.subject).ok_or_else(|| ContractError::InvalidSchema {
                name: "manifest.json".into(),
                reason: format!("unknown subject {:?}", entry.subject),
            })?;
            let text = embedded_file(&entry.file).ok_or_else(|| ContractError::InvalidSchema {
                name: "manifest.json".into(),
                reason: format!("file {:?} is not embedded in the contract crate", entry.file),
            })?;
            if text == kind.current_avsc() {
                ids.insert(kind, entry.id);
            }
            if writers.insert(entry.id, (kind, parse(&entry.file, text)?)).is_some() {
                return Err(ContractError::InvalidSchema {
                    name: "manifest.json".into(),
                    reason: format!("schema id {} used twice", entry.id),
                });
            }
        }
        let id = |k: RecordKind| {
            ids.get(&k).copied().ok_or_else(|| ContractError::InvalidSchema {
                name: "manifest.json".into(),
                reason: format!("no id for the current {} schema", k.full_name()),
            })
        };
        let ids = SchemaIds {
            channel_event: id(RecordKind::ChannelEvent)?,
            session: id(RecordKind::Session)?,
            scenario_hit: id(RecordKind::ScenarioHit)?,
        };
        Ok(SchemaSet { writers, ids, current })
    }

    /// Registers the current schemas under `<topic>-value` subjects and loads every version of
    /// those subjects, so older writers still decode. `subjects` maps each record to its topic.
    pub async fn from_registry(url: &str, topics: &[(RecordKind, &str)]) -> Result<SchemaSet, ContractError> {
        let client = reqwest::Client::new();
        let base = url.trim_end_matches('/');
        let err = |reason: String| ContractError::Registry { url: base.to_string(), reason };
        let current = current_schemas()?;
        let mut writers = HashMap::new();
        let mut ids = HashMap::new();
        for &(kind, topic) in topics {
            let subject = format!("{topic}-value");
            #[derive(Deserialize)]
            struct IdResp {
                id: u32,
            }
            let resp = client
                .post(format!("{base}/subjects/{subject}/versions"))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .json(&serde_json::json!({ "schema": kind.current_avsc() }))
                .send()
                .await
                .map_err(|e| err(e.to_string()))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(err(format!("register {subject}: {status} {body}")));
            }
            let id = resp.json::<IdResp>().await.map_err(|e| err(e.to_string()))?.id;
            ids.insert(kind, id);
            let versions: Vec<i64> = client
                .get(format!("{base}/subjects/{subject}/versions"))
                .send()
                .await
                .map_err(|e| err(e.to_string()))?
                .json()
                .await
                .map_err(|e| err(e.to_string()))?;
            for v in versions {
                #[derive(Deserialize)]
                struct VersionResp {
                    id: u32,
                    schema: String,
                }
                let vr: VersionResp = client
                    .get(format!("{base}/subjects/{subject}/versions/{v}"))
                    .send()
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .json()
                    .await
                    .map_err(|e| err(e.to_string()))?;
                writers.insert(vr.id, (kind, parse(&subject, &vr.schema)?));
            }
        }
        let get = |k: RecordKind| ids.get(&k).copied().ok_or_else(|| err(format!("no topic given for {}", k.full_name())));
        let ids = SchemaIds {
            channel_event: get(RecordKind::ChannelEvent)?,
            session: get(RecordKind::Session)?,
            scenario_hit: get(RecordKind::ScenarioHit)?,
        };
        Ok(SchemaSet { writers, ids, current })
    }
}
