-- 0004: spike alerts on unwanted scenarios (the alerting service comes later; its table now).

-- One row per version of an alert: fired, updated while it lasts (observed value, webhook
-- delivery), resolved. The highest version per alert_id is current. Few rows (alerts are
-- rare), so the key is just the id; a time-range scan reads little anyway.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id        String,
    rule            LowCardinality(String),
    group_key       String                  COMMENT 'the group that spiked, e.g. region=north,topic=billing',
    dims            Map(String, String)     COMMENT 'the same group as a map',
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    observed        Float64                 COMMENT 'value in the window',
    baseline        Float64                 COMMENT 'expected value',
    threshold       Float64                 COMMENT 'value above which it fires',
    severity        LowCardinality(String),
    state           LowCardinality(String)  COMMENT 'firing or resolved',
    fired_at        DateTime64(3, 'UTC'),
    resolved_at     Nullable(DateTime64(3, 'UTC')),
    webhook_status  LowCardinality(String)  COMMENT 'delivery of the notification, e.g. pending, delivered, failed',
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY alert_id
SETTINGS non_replicated_deduplication_window = 10000;

-- The current state of every alert.
CREATE VIEW IF NOT EXISTS alerts_current AS
SELECT *
FROM alerts FINAL;
