//! Where generated records go: Kafka (through the bulk publisher) or a JSON-lines file for
//! `journey replay`. Both are paced by `rate` when it is set.

use super::{Generated, Generator};
use crate::publish::{BulkPublisher, BulkStats};
use std::io::Write;
use std::time::{Duration, Instant};

/// What a generator run produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Valid, first-time events.
    pub events: u64,
    /// Duplicates emitted.
    pub duplicates: u64,
    /// Malformed records emitted.
    pub malformed: u64,
    /// Kafka acknowledgements (Kafka output only).
    pub kafka: BulkStats,
}

impl Summary {
    fn count(&mut self, g: &Generated) {
        match g {
            Generated::Event(_) => self.events += 1,
            Generated::Duplicate(_) => self.duplicates += 1,
            Generated::Malformed { .. } => self.malformed += 1,
        }
    }
    /// Records emitted in all.
    pub fn total(&self) -> u64 {
        self.events + self.duplicates + self.malformed
    }
}

/// Paces emission to `rate` records per second (0 = unpaced), sleeping in ~1 ms slices.
struct Pacer {
    rate: u64,
    start: Instant,
    n: u64,
}

impl Pacer {
    fn tick(&mut self) {
        if self.rate == 0 {
            return;
        }
        self.n += 1;
        let due = Duration::from_secs_f64(self.n as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed + Duration::from_millis(1) {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Publishes every record to Kafka; blocking, call from a plain thread.
/// `progress` is called every 100k records with the running summary.
///
/// Generation runs on its own thread and hands batches to this one, which encodes and
/// enqueues them, so simulation and publishing use both cores.
pub fn to_kafka(gen: Generator, rate: u64, mut publisher: BulkPublisher, mut progress: impl FnMut(&Summary)) -> anyhow::Result<Summary> {
    const BATCH: usize = 2048;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Generated>>(8);
    let producer = std::thread::Builder::new().name("generator".into()).spawn(move || {
        let mut batch = Vec::with_capacity(BATCH);
        for g in gen {
            batch.push(g);
            if batch.len() == BATCH && tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_err() {
                return;
            }
        }
        let _ = tx.send(batch);
    })?;
    let mut summary = Summary::default();
    let mut pacer = Pacer { rate, start: Instant::now(), n: 0 };
    let mut next_progress = 100_000;
    for batch in rx {
        for g in &batch {
            summary.count(g);
            match g {
                Generated::Event(e) | Generated::Duplicate(e) => publisher.send_event(e)?,
                Generated::Malformed { key, payload, .. } => publisher.send_raw(key.as_bytes(), payload)?,
            }
            pacer.tick();
        }
        if summary.total() >= next_progress {
            next_progress += 100_000;
            summary.kafka = publisher.stats();
            progress(&summary);
        }
    }
    producer.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))?;
    summary.kafka = publisher.finish(Duration::from_secs(60))?;
    if summary.kafka.delivered != summary.total() {
        anyhow::bail!("kafka acknowledged {} of {} records ({} failed)", summary.kafka.delivered, summary.total(), summary.kafka.failed);
    }
    Ok(summary)
}

/// Writes every record as one JSON line (malformed records as their damaged bytes).
pub fn to_writer(gen: Generator, rate: u64, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut pacer = Pacer { rate, start: Instant::now(), n: 0 };
    for g in gen {
        summary.count(&g);
        match &g {
            Generated::Event(e) | Generated::Duplicate(e) => serde_json::to_writer(&mut *out, e)?,
            Generated::Malformed { payload, .. } => {
                // Keep one record per line: a damaged payload must not contain the separator.
                let line: Vec<u8> = payload.iter().map(|&b| if b == b'\n' { b' ' } else { b }).collect();
                out.write_all(&line)?;
            }
        }
        out.write_all(b"\n")?;
        pacer.tick();
    }
    out.flush()?;
    Ok(summary)
}
