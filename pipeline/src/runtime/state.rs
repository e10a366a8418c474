//! Durable processor state: a compacted changelog topic partitioned like the keyed topic.
//!
//! After every flush, the state of each customer that changed is written under `c/<key>`
//! (a tombstone when it has none left), forwarding pointers under `f/<old key>`, and the
//! partition's clocks under `m`. A partition newly assigned to an instance (start-up, crash,
//! rebalance) is restored by reading its changelog partition up to a marker record written
//! just before, so restore is exact on any broker. The changelog is written before input
//! offsets are committed, so restored state is never behind the committed offsets; records
//! replayed after a restore are recognised as duplicates or re-create identical outputs
//! (versions derive from input offsets).

use crate::inline::InlineStr;
use crate::sessionize::{CustomerSnapshot, SessionEvent};
use journey_schemas::avro::{Reader, Writer};
use journey_schemas::{Channel, Codec, ContractError};
use std::collections::HashMap;
use std::sync::Arc;

/// Key prefix of customer state.
pub const CUSTOMER_PREFIX: &str = "c/";
/// Key prefix of forwarding pointers.
pub const FORWARD_PREFIX: &str = "f/";
/// Changelog key prefix of a customer's scenario-detector state.
pub const DETECT_PREFIX: &str = "d/";
/// Key of the partition's clocks.
pub const META_KEY: &str = "m";
/// Key of restore markers.
pub const MARKER_KEY: &str = "marker";

/// Clocks of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Sessionizer watermark.
    pub watermark: i64,
    /// Largest event time seen.
    pub max_event_time: i64,
    /// Latest watermark per raw partition.
    pub upstream: Vec<(i32, i64)>,
    /// Number of raw partitions.
    pub upstream_count: usize,
    /// Absence windows of triggers up to this time were closed by quiet (`i64::MIN`: none).
    pub absence_closed_upto: i64,
}

/// Encodes a customer snapshot.
pub fn encode_customer(codec: &Codec, s: &CustomerSnapshot) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(64 + s.events.len() * 160));
    w.long(2); // format version: 2 added the region of each event
    w.string(&s.key);
    w.long(s.events.len() as i64);
    for e in &s.events {
        w.long(e.time);
        w.string(&e.id);
        w.long(e.channel.index() as i64);
        w.opt_string(e.topic.as_deref());
        w.opt_string(e.region.as_deref());
        w.boolean(e.assisted);
        w.long(e.offset);
        w.long(e.moves as i64);
        match &e.payload {
            Some(p) => {
                w.long(p.len() as i64);
                w.buf.extend_from_slice(p);
            }
            None => w.long(-1),
        }
    }
    w.long(s.emitted.len() as i64);
    for sess in &s.emitted {
        let bytes = codec.encode_session(sess);
        w.long(bytes.len() as i64);
        w.buf.extend_from_slice(&bytes);
    }
    w.buf
}

fn bytes<'a>(r: &mut Reader<'a>, buf: &'a [u8], len: i64) -> Result<&'a [u8], ContractError> {
    let len = usize::try_from(len).map_err(|_| ContractError::Malformed("negative length".into()))?;
    let start = buf.len() - r.remaining();
    let end = start.checked_add(len).filter(|&e| e <= buf.len()).ok_or_else(|| ContractError::Malformed("length beyond record".into()))?;
    // Advance the reader past the slice by reading it as raw bytes.
    let slice = &buf[start..end];
    *r = Reader::new(&buf[end..]);
    Ok(slice)
}

/// Decodes a customer snapshot.
pub fn decode_customer(codec: &Codec, buf: &[u8]) -> Result<CustomerSnapshot, ContractError> {
    let mut r = Reader::new(buf);
    let format = r.long()?;
    if !(1..=2).contains(&format) {
        return Err(ContractError::Malformed(format!("unknown state format {format}")));
    }
    let key = r.string()?;
    let n = r.long()?;
    let mut events = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1 << 16));
    for _ in 0..n {
        let time = r.long()?;
        let id = InlineStr::new(r.str()?);
        let ch = r.long()?;
        let channel = usize::try_from(ch).ok().and_then(|i| Channel::ALL.get(i).copied()).unwrap_or(Channel::Other);
        let topic = r.opt_string()?.map(Arc::from);
        let region = if format >= 2 { r.opt_string()?.map(Arc::from) } else { None };
        let assisted = r.boolean()?;
        let offset = r.long()?;
        let moves = r.long()? as u64;
        let len = r.long()?;
        let payload = if len < 0 { None } else { Some(Arc::from(bytes(&mut r, buf, len)?)) };
        events.push(SessionEvent { time, id, channel, topic, region, assisted, id_tag: 0, offset, payload, moves });
    }
    let n = r.long()?;
    let mut emitted = Vec::new();
    for _ in 0..n {
        let len = r.long()?;
        let b = bytes(&mut r, buf, len)?;
        emitted.push(codec.decode_session(b)?.value);
    }
    Ok(CustomerSnapshot { key, events, emitted })
}

/// Encodes a partition's clocks.
pub fn encode_meta(m: &Meta) -> Vec<u8> {
    let mut w = Writer::default();
    w.long(m.watermark);
    w.long(m.max_event_time);
    w.long(m.upstream_count as i64);
    w.long(m.upstream.len() as i64);
    for (p, t) in &m.upstream {
        w.long(i64::from(*p));
        w.long(*t);
    }
    // Appended later: older records end before it (read as "none").
    w.long(m.absence_closed_upto);
    w.buf
}

/// Decodes a partition's clocks.
pub fn decode_meta(buf: &[u8]) -> Result<Meta, ContractError> {
    let mut r = Reader::new(buf);
    let watermark = r.long()?;
    let max_event_time = r.long()?;
    let upstream_count = r.long()? as usize;
    let n = r.long()?;
    let mut upstream = Vec::new();
    for _ in 0..n {
        upstream.push((r.int()?, r.long()?));
    }
    let absence_closed_upto = if r.remaining() > 0 { r.long()? } else { i64::MIN };
    Ok(Meta { watermark, max_event_time, upstream, upstream_count, absence_closed_upto })
}

/// The state of one partition as read back from the changelog.
#[derive(Debug, Default)]
pub struct Restored {
    /// Customers.
    pub customers: Vec<CustomerSnapshot>,
    /// Scenario detector state per customer.
    pub detections: Vec<crate::detect::DetectSnapshot>,
    /// Forwarding pointers: old key -> (new key, event time at the merge).
    pub forwards: HashMap<String, (String, i64)>,
    /// Clocks.
    pub meta: Meta,
    /// Changelog records read.
    pub records: u64,
}

/// Folds changelog records (key, value; `None` value = tombstone) into the latest state.
pub fn fold(codec: &Codec, records: impl IntoIterator<Item = (String, Option<Vec<u8>>)>) -> Result<Restored, ContractError> {
    let mut customers: HashMap<String, Vec<u8>> = HashMap::new();
    let mut detections: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Restored::default();
    for (key, value) in records {
        out.records += 1;
        if let Some(k) = key.strip_prefix(CUSTOMER_PREFIX) {
            match value {
                Some(v) => customers.insert(k.to_string(), v),
                None => customers.remove(k),
            };
        } else if let Some(k) = key.strip_prefix(DETECT_PREFIX) {
            match value {
                Some(v) => detections.insert(k.to_string(), v),
                None => detections.remove(k),
            };
        } else if let Some(k) = key.strip_prefix(FORWARD_PREFIX) {
            match value.and_then(|v| String::from_utf8(v).ok()) {
                Some(v) => {
                    let (to, at) = v.split_once('\n').unwrap_or((v.as_str(), "0"));
                    out.forwards.insert(k.to_string(), (to.to_string(), at.parse().unwrap_or(0)));
                }
                None => {
                    out.forwards.remove(k);
                }
            }
        } else if key == META_KEY {
            if let Some(v) = value {
                out.meta = decode_meta(&v)?;
            }
        }
    }
    for (_, v) in customers {
        out.customers.push(decode_customer(codec, &v)?);
    }
    for (k, v) in detections {
        let snap = crate::detect::decode_snapshot(&v).map_err(|e| ContractError::Malformed(format!("detector state of {k}: {e}")))?;
        out.detections.push(snap);
    }
    Ok(out)
}

/// Reads partition `partition` of the changelog up to a marker written just before, and folds
/// it into the latest state. Blocking (call it off the async runtime's hot path).
pub fn restore(
    cfg: &crate::config::Config,
    codec: &Codec,
    producer: &rdkafka::producer::FutureProducer,
    partition: i32,
) -> Result<Restored, crate::Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::FutureRecord;
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    let topic = &cfg.topics.state;
    let marker = format!("{}-{}-{}", std::process::id(), partition, journey_connectors::now_ms());
    let fut = producer
        .send_result(FutureRecord::to(topic).partition(partition).key(MARKER_KEY.as_bytes()).payload(marker.as_bytes()))
        .map_err(|(e, _)| crate::Error::Kafka(e))?;
    match futures::executor::block_on(fut) {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => return Err(crate::Error::Kafka(e)),
        Err(_) => return Err(crate::Error::Kafka(rdkafka::error::KafkaError::Canceled)),
    }
    let consumer: BaseConsumer = cfg
        .kafka
        .client_config()
        .set("group.id", format!("{}-restore", cfg.process.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(crate::Error::Restore(format!("marker not seen on {topic}/{partition} within 120s")));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
        if key == MARKER_KEY {
            if m.payload() == Some(marker.as_bytes()) {
                break;
            }
            continue;
        }
        records.push((key, m.payload().map(<[u8]>::to_vec)));
    }
    fold(codec, records).map_err(crate::Error::Contract)
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_schemas::Session;

    #[test]
    fn customer_snapshots_round_trip() {
        let codec = Codec::from_manifest().unwrap();
        let snap = CustomerSnapshot {
            key: "C1".into(),
            events: vec![SessionEvent {
                time: 5,
                id: "e1".into(),
                channel: Channel::Ivr,
                topic: Some("balance".into()),
                region: Some("north".into()),
                assisted: true,
                id_tag: 0,
                offset: 42,
                payload: Some(Arc::from(&b"\x00\x01raw"[..])),
                moves: 2,
            }],
            emitted: vec![Session {
                session_id: "s".into(),
                customer_id: "C1".into(),
                start_time: 5,
                end_time: 5,
                duration_ms: 0,
                event_count: 1,
                channels: vec!["IVR".into()],
                path: "IVR".into(),
                topics: vec!["balance".into()],
                assisted: true,
                first_event_id: "e1".into(),
                last_event_id: "e1".into(),
                version: 9,
                retracted: false,
            }],
        };
        let bytes = encode_customer(&codec, &snap);
        assert_eq!(decode_customer(&codec, &bytes).unwrap(), snap);
        assert!(decode_customer(&codec, &bytes[..bytes.len() - 4]).is_err());
    }

    #[test]
    fn fold_keeps_the_latest_value_and_honours_tombstones() {
        let codec = Codec::from_manifest().unwrap();
        let snap = |k: &str| CustomerSnapshot { key: k.into(), ..Default::default() };
        let meta = Meta { watermark: 7, max_event_time: 9, upstream: vec![(0, 7), (1, 8)], upstream_count: 2, absence_closed_upto: 5 };
        let records = vec![
            ("c/A".to_string(), Some(encode_customer(&codec, &snap("A")))),
            ("c/B".to_string(), Some(encode_customer(&codec, &snap("B")))),
            ("c/A".to_string(), None),
            ("f/a:x".to_string(), Some(b"C1\n100".to_vec())),
            ("m".to_string(), Some(encode_meta(&meta))),
        ];
        let r = fold(&codec, records).unwrap();
        assert_eq!(r.customers.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["B"]);
        assert_eq!(r.forwards["a:x"], ("C1".to_string(), 100));
        assert_eq!(r.meta, meta);
    }
}
