//! Publishing to Kafka. Guarantee: an event counts as published only once the broker
//! acknowledged it (acks=all, idempotent producer, so librdkafka's retries add no duplicates);
//! a rejected record is written to the dead-letter topic with its reason in headers.

use crate::KafkaConfig;
use journey_schemas::{dlq, ChannelEvent, Codec};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A record that is rejected and goes to the dead-letter topic.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Original key, if any.
    pub key: Option<&'a [u8]>,
    /// Original payload, untouched.
    pub payload: &'a [u8],
    /// Stable reason class.
    pub reason: &'a str,
    /// Precise detail.
    pub detail: &'a str,
    /// Rejecting component.
    pub stage: &'a str,
    /// Where the record came from.
    pub origin: &'a str,
}

impl DeadLetter<'_> {
    /// The headers carrying the reason.
    pub fn headers(&self) -> OwnedHeaders {
        let now = crate::now_ms().to_string();
        OwnedHeaders::new()
            .insert(Header { key: dlq::HEADER_REASON, value: Some(self.reason) })
            .insert(Header { key: dlq::HEADER_DETAIL, value: Some(self.detail) })
            .insert(Header { key: dlq::HEADER_STAGE, value: Some(self.stage) })
            .insert(Header { key: dlq::HEADER_ORIGIN, value: Some(self.origin) })
            .insert(Header { key: dlq::HEADER_TIME, value: Some(now.as_str()) })
    }
}

/// Publishes events and dead letters, one acknowledgement awaited per record.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    codec: Codec,
    raw_topic: String,
    dlq_topic: String,
}

/// Why publishing failed; every variant means the record may not be in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event has no identifier to key it by (validation should have caught it).
    #[error("event {0} has no customer identifier")]
    NoKey(String),
    /// Kafka refused or timed out; retrying later may help.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

impl Publisher {
    /// A publisher writing events to `raw_topic` and rejects to `dlq_topic`.
    pub fn new(kafka: &KafkaConfig, codec: Codec, raw_topic: &str, dlq_topic: &str) -> Result<Publisher, KafkaError> {
        Ok(Publisher {
            producer: kafka.producer_config().create()?,
            codec,
            raw_topic: raw_topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
        })
    }

    /// The underlying producer (health checks).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Publishes every event and waits until each is acknowledged; fails on the first error
    /// after all sends were attempted, so the caller can answer "not accepted" truthfully.
    pub async fn publish(&self, events: &[ChannelEvent], queue_timeout: Duration) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let key = e.best_key().ok_or_else(|| PublishError::NoKey(e.event_id.clone()))?;
            let payload = self.codec.encode_event(e);
            let mut record = FutureRecord::to(&self.raw_topic).key(&key).payload(&payload);
            // Enqueue without holding borrows across awaits; wait out a full local queue
            // until the deadline (then the caller answers 503).
            loop {
                match self.producer.send_result(record) {
                    Ok(fut) => {
                        pending.push(fut);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if tokio::time::Instant::now() < deadline => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        let mut first_err = None;
        for r in futures::future::join_all(pending).await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_err.get_or_insert(e);
                }
                Err(_canceled) => {
                    first_err.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Writes one dead letter and waits for its acknowledgement.
    pub async fn dead_letter(&self, dl: DeadLetter<'_>, queue_timeout: Duration) -> Result<(), PublishError> {
        let headers = dl.headers();
        let mut record = FutureRecord::to(&self.dlq_topic).payload(dl.payload).headers(headers);
        if let Some(k) = dl.key {
            record = record.key(k);
        }
        let fut = self.producer.send_result(record).map_err(|(e, _)| PublishError::Kafka(e))?;
        match tokio::time::timeout(queue_timeout.max(Duration::from_secs(30)), fut).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(e.into()),
            Ok(Err(_)) => Err(KafkaError::Canceled.into()),
            Err(_) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut).into()),
        }
    }

    /// Flushes outstanding records.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// Counts acknowledgements of a [`BulkPublisher`].
#[derive(Default, Clone)]
pub struct DeliveryCounter(Arc<Counts>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "kafka delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Totals of a bulk publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulkStats {
    /// Records acknowledged by the broker.
    pub delivered: u64,
    /// Records that failed after librdkafka's retries.
    pub failed: u64,
}

/// A high-throughput publisher for bulk sources (generator, replay): fire-and-count, blocking
/// when librdkafka's queue is full; `finish` flushes and reports what was acknowledged.
/// Runs on a plain thread (or `spawn_blocking`), never on the async runtime.
pub struct BulkPublisher {
    producer: ThreadedProducer<DeliveryCounter>,
    counter: DeliveryCounter,
    codec: Codec,
    raw_topic: String,
    dlq_topic: String,
    buf: Vec<u8>,
    sent: u64,
}

impl BulkPublisher {
    /// A bulk publisher writing events to `raw_topic` and rejects to `dlq_topic`.
    pub fn new(kafka: &KafkaConfig, codec: Codec, raw_topic: &str, dlq_topic: &str) -> Result<BulkPublisher, KafkaError> {
        let counter = DeliveryCounter::default();
        let producer = kafka.producer_config().create_with_context(counter.clone())?;
        Ok(BulkPublisher {
            producer,
            counter,
            codec,
            raw_topic: raw_topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
            buf: Vec::with_capacity(256),
            sent: 0,
        })
    }

    fn send_record(&mut self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: wait for acknowledgements to drain the local queue.
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Queues one event keyed by its best identifier.
    pub fn send_event(&mut self, e: &ChannelEvent) -> Result<(), KafkaError> {
        let key = e.best_key().unwrap_or_default();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.codec.encode_event_into(e, &mut buf);
        let topic = std::mem::take(&mut self.raw_topic);
        let r = self.send_record(BaseRecord::to(&topic).key(key.as_bytes()).payload(&buf[..]));
        self.raw_topic = topic;
        self.buf = buf;
        r
    }

    /// Queues raw bytes on the raw topic as they are (used to inject malformed records).
    pub fn send_raw(&mut self, key: &[u8], payload: &[u8]) -> Result<(), KafkaError> {
        let topic = std::mem::take(&mut self.raw_topic);
        let r = self.send_record(BaseRecord::to(&topic).key(key).payload(payload));
        self.raw_topic = topic;
        r
    }

    /// Queues a dead letter.
    pub fn send_dead_letter(&mut self, dl: DeadLetter<'_>) -> Result<(), KafkaError> {
        let topic = std::mem::take(&mut self.dlq_topic);
        let mut record = BaseRecord::to(&topic).payload(dl.payload).headers(dl.headers());
        if let Some(k) = dl.key {
            record = record.key(k);
        }
        let r = self.send_record(record);
        self.dlq_topic = topic;
        r
    }

    /// Records queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Acknowledged so far.
    pub fn stats(&self) -> BulkStats {
        BulkStats { delivered: self.counter.0.delivered.load(Ordering::Relaxed), failed: self.counter.0.failed.load(Ordering::Relaxed) }
    }

    /// Flushes and returns the totals; an error if anything queued is neither delivered nor failed.
    pub fn finish(self, timeout: Duration) -> Result<BulkStats, KafkaError> {
        self.producer.flush(timeout)?;
        Ok(self.stats())
    }
}
