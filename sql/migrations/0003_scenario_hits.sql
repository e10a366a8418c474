-- 0003: detected unwanted scenarios ("the app sent the customer to the phone", "repeat call").

-- One row per emitted version of a hit; the highest version per hit_id is current, and a
-- current row with retracted = true means the hit no longer holds (a late event broke it).
--
-- Keys: customer_id, rule and event_time never change for a hit id, so the sorting key may
-- carry them and every version of a hit lands in the same partition and collapses there.
-- ORDER BY (rule, event_time, hit_id) serves the scans dashboards and rollups make (one rule
-- or all rules over a time range: with a few dozen rules the index still prunes on
-- event_time inside each rule); monthly partitions prune long ranges.
--
-- One customer's hits: the by_customer projection (sorted by customer) answers "which hits"
-- without FINAL, and FINAL over the sorting-key tuples it returns gives their current state
-- (sql/queries/customer_journey.sql shows the pattern); projections are never used with FINAL
-- itself. The bloom filters help ad-hoc lookups by customer or session on the base table.
-- inserted_at is nearly sorted within the time-sorted parts, so its minmax index lets the
-- rollup refresh find the rows that arrived recently without reading the table (0007).
CREATE TABLE IF NOT EXISTS scenario_hits
(
    hit_id              String,
    rule                LowCardinality(String),
    rule_version        UInt32,
    customer_id         String                  COMMENT 'canonical customer key',
    session_id          String                  COMMENT 'session of the completing event, empty when unknown',
    event_time          DateTime64(3, 'UTC')    COMMENT 'time of the completing event; for an absence rule trigger time + within',
    trigger_event_id    String,
    matched_event_ids   Array(String),
    path                String,
    topic               LowCardinality(String),
    channel             LowCardinality(String)  COMMENT 'channel of the trigger event',
    region              LowCardinality(String),
    severity            LowCardinality(String),
    version             UInt64,
    retracted           Bool,
    inserted_at         DateTime DEFAULT now(),
    INDEX idx_customer customer_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_session session_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_inserted_at inserted_at TYPE minmax GRANULARITY 1,
    PROJECTION by_customer (SELECT rule, event_time, hit_id, customer_id ORDER BY customer_id, event_time)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (rule, event_time, hit_id)
SETTINGS non_replicated_deduplication_window = 10000, deduplicate_merge_projection_mode = 'rebuild';

-- Exactly the current, non-retracted hits.
CREATE VIEW IF NOT EXISTS scenario_hits_current AS
SELECT *
FROM scenario_hits FINAL
WHERE NOT retracted;
