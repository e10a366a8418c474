//! Confluent wire format: `0x00`, 4-byte big-endian schema id, Avro binary body.
//!
//! Records written with the current schema id take the fast path in [`crate::types`]; records
//! with any other known id are resolved against the current reader schema by `apache-avro`
//! (Avro's schema-resolution rules: new fields take their defaults, unknown enum symbols take
//! the enum default), re-encoded, then decoded by the fast path, so both paths yield one type.

use crate::avro::{Reader, Spare, Writer};
use crate::registry::{RecordKind, SchemaIds, SchemaSet};
use crate::{ChannelEvent, ContractError, ScenarioHit, Session};
use std::borrow::Cow;
use std::sync::Arc;

/// Length of the wire-format header.
pub const HEADER_LEN: usize = 5;

/// Encodes and decodes contract records; cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Codec {
    set: Arc<SchemaSet>,
}

/// A decoded record and the writer schema id it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    /// The record.
    pub value: T,
    /// Writer schema id from the header.
    pub schema_id: u32,
}

/// Splits a wire-format record into schema id and Avro body.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), ContractError> {
    if bytes.len() < HEADER_LEN {
        return Err(ContractError::Malformed(format!("record of {} bytes is shorter than the 5-byte header", bytes.len())));
    }
    if bytes[0] != 0 {
        return Err(ContractError::Malformed(format!("magic byte is {:#04x}, expected 0x00", bytes[0])));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

fn write_header(buf: &mut Vec<u8>, id: u32) {
    buf.push(0);
    buf.extend_from_slice(&id.to_be_bytes());
}

impl Codec {
    /// A codec over a schema set.
    pub fn new(set: SchemaSet) -> Codec {
        Codec { set: Arc::new(set) }
    }

    /// The codec with ids from the embedded manifest.
    pub fn from_manifest() -> Result<Codec, ContractError> {
        SchemaSet::from_manifest().map(Codec::new)
    }

    /// The ids this codec writes.
    pub fn ids(&self) -> SchemaIds {
        self.set.ids
    }

    /// The schema set.
    pub fn schemas(&self) -> &SchemaSet {
        &self.set
    }

    fn current_id(&self, kind: RecordKind) -> u32 {
        match kind {
            RecordKind::ChannelEvent => self.set.ids.channel_event,
            RecordKind::Session => self.set.ids.session,
            RecordKind::ScenarioHit => self.set.ids.scenario_hit,
        }
    }

    /// Returns an Avro body in the current schema: borrowed when the writer id is current,
    /// otherwise resolved from the writer schema.
    fn body_in_current<'a>(&self, kind: RecordKind, bytes: &'a [u8]) -> Result<(u32, Cow<'a, [u8]>), ContractError> {
        let (id, body) = split_header(bytes)?;
        if id == self.current_id(kind) {
            return Ok((id, Cow::Borrowed(body)));
        }
        let (writer_kind, writer) = self.set.writers.get(&id).ok_or(ContractError::UnknownSchema(id))?;
        if *writer_kind != kind {
            return Err(ContractError::Malformed(format!(
                "schema id {id} is a {}, expected a {}",
                writer_kind.full_name(),
                kind.full_name()
            )));
        }
        let reader_schema = &self.set.current[&kind];
        let mut slice = body;
        let value = apache_avro::from_avro_datum(writer, &mut slice, Some(reader_schema))
            .map_err(|e| ContractError::Malformed(format!("cannot resolve schema id {id}: {e}")))?;
        let resolved = apache_avro::to_avro_datum(reader_schema, value)
            .map_err(|e| ContractError::Malformed(format!("cannot re-encode schema id {id}: {e}")))?;
        Ok((id, Cow::Owned(resolved)))
    }

    fn decode<T>(
        &self,
        kind: RecordKind,
        bytes: &[u8],
        f: impl FnOnce(&mut Reader<'_>) -> Result<T, ContractError>,
    ) -> Result<Decoded<T>, ContractError> {
        let (schema_id, body) = self.body_in_current(kind, bytes)?;
        let mut r = Reader::new(&body);
        let value = f(&mut r)?;
        if !r.is_empty() {
            return Err(ContractError::Malformed(format!("{} trailing bytes after the record", r.remaining())));
        }
        Ok(Decoded { value, schema_id })
    }

    /// Decodes a `ChannelEvent` record.
    pub fn decode_event(&self, bytes: &[u8]) -> Result<Decoded<ChannelEvent>, ContractError> {
        self.decode(RecordKind::ChannelEvent, bytes, ChannelEvent::decode_body)
    }

    /// [`Codec::decode_event`] into a reused record (see [`ChannelEvent::decode_body_into`]):
    /// returns the writer's schema id. After an error `out` must not be used.
    pub fn decode_event_into(&self, bytes: &[u8], out: &mut ChannelEvent, spare: &mut Spare) -> Result<u32, ContractError> {
        self.decode(RecordKind::ChannelEvent, bytes, |r| ChannelEvent::decode_body_into(r, out, spare)).map(|d| d.schema_id)
    }

    /// Decodes a `Session` record.
    pub fn decode_session(&self, bytes: &[u8]) -> Result<Decoded<Session>, ContractError> {
        self.decode(RecordKind::Session, bytes, Session::decode_body)
    }

    /// Decodes a `ScenarioHit` record.
    pub fn decode_hit(&self, bytes: &[u8]) -> Result<Decoded<ScenarioHit>, ContractError> {
        self.decode(RecordKind::ScenarioHit, bytes, ScenarioHit::decode_body)
    }

    /// Appends a wire-format `ChannelEvent` to `buf`.
    pub fn encode_event_into(&self, e: &ChannelEvent, buf: &mut Vec<u8>) {
        write_header(buf, self.set.ids.channel_event);
        let mut w = Writer::new(std::mem::take(buf));
        e.encode_body(&mut w);
        *buf = w.buf;
    }

    /// A wire-format `ChannelEvent`.
    pub fn encode_event(&self, e: &ChannelEvent) -> Vec<u8> {
        let mut buf = Vec::with_capacity(128);
        self.encode_event_into(e, &mut buf);
        buf
    }

    /// A wire-format `Session`.
    pub fn encode_session(&self, s: &Session) -> Vec<u8> {
        let mut w = Writer::new(Vec::with_capacity(160));
        write_header(&mut w.buf, self.set.ids.session);
        s.encode_body(&mut w);
        w.buf
    }

    /// A wire-format `ScenarioHit`.
    pub fn encode_hit(&self, h: &ScenarioHit) -> Vec<u8> {
        let mut w = Writer::new(Vec::with_capacity(160));
        write_header(&mut w.buf, self.set.ids.scenario_hit);
        h.encode_body(&mut w);
        w.buf
    }
}
