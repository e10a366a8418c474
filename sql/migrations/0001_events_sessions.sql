-- 0001: raw events and cross-channel sessions.
-- Plain SQL with unqualified names: `journey migrate` runs it in the configured database
-- (and records it in schema_migrations); the docker-compose ClickHouse service runs the same
-- files at init through sql/docker-init.sh.

-- Every accepted event once, under its canonical customer (read with FINAL, or through
-- events_current). Sorted by time for dashboards' time-range scans; the by_customer
-- projection serves one customer's journey. When a late identity link moves an event to
-- another customer, it is inserted again with a higher version (how many times it moved), and
-- ReplacingMergeTree keeps that row; a row re-inserted after a crash is identical and collapses.
CREATE TABLE IF NOT EXISTS events
(
    event_id        String,
    event_time      DateTime64(3, 'UTC'),
    ingest_time     DateTime64(3, 'UTC'),
    channel         LowCardinality(String),
    event_type      LowCardinality(String),
    customer_id     String                  COMMENT 'canonical customer key',
    crm_id          String                  COMMENT 'customer_id as sent by the source, empty when none',
    msisdn_hash     String                  COMMENT 'keyed hash of the phone number, never the number',
    app_instance_id String,
    topic           LowCardinality(String),
    outcome         LowCardinality(String),
    line            LowCardinality(String),
    agent_id        String,
    region          LowCardinality(String),
    attrs           Map(String, String),
    version         UInt64                  COMMENT 'times the event moved to another customer key',
    INDEX idx_customer customer_id TYPE bloom_filter GRANULARITY 4,
    PROJECTION by_customer (SELECT * ORDER BY customer_id, event_time)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_time, event_id)
TTL toDateTime(event_time) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000, deduplicate_merge_projection_mode = 'rebuild';

-- One row per emitted session version; the highest version per session_id is current.
CREATE TABLE IF NOT EXISTS sessions
(
    session_id      String,
    customer_id     String,
    start_time      DateTime64(3, 'UTC'),
    end_time        DateTime64(3, 'UTC'),
    duration_ms     Int64,
    event_count     UInt32,
    channels        Array(LowCardinality(String)),
    path            String,
    topics          Array(String),
    assisted        Bool,
    first_event_id  String,
    last_event_id   String,
    version         UInt64,
    retracted       Bool
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (customer_id, session_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Exactly the current, non-retracted sessions.
CREATE VIEW IF NOT EXISTS sessions_current AS
SELECT *
FROM sessions FINAL
WHERE NOT retracted;

-- Exactly the current events: one row per event, under its canonical customer.
CREATE VIEW IF NOT EXISTS events_current AS
SELECT *
FROM events FINAL;
