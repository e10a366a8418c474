-- 0002: what the analytics layer needs on the pipeline's own tables: each session's region
-- and channel transitions (the edges of the process map), and the time every row arrived.
-- Idempotent like every migration (IF NOT EXISTS, OR REPLACE), so the docker-compose init and
-- `journey migrate` may both run it.

-- The session's region: that of its first event that has one ('' if none).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS region LowCardinality(String);

-- The session's channel changes between consecutive events, aligned with `path`: element k is
-- the step from the k-th to the (k+1)-th channel of the path. tr_time is the event time of the
-- first event on the new channel, tr_gap_ms that time minus the previous event's. Empty for a
-- single-channel session and for a retraction row.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS tr_from Array(LowCardinality(String));
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS tr_to Array(LowCardinality(String));
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS tr_time Array(DateTime64(3, 'UTC'));
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS tr_gap_ms Array(Int64);

-- When the row arrived (server clock; the sink does not send it). The rollups recompute the
-- minutes that recently arrived rows touch (0007). Rows that existed before this migration
-- get 1970-01-01: they never count as recent, so the first refresh does not recompute the
-- whole history in one query; fill the rollups for past days with sql/maintenance/rebuild_*
-- (docs/ANALYTICS.md). The 1970 value is written into the old parts (MATERIALIZE, waited
-- for) before the default becomes now(): a part without the column would otherwise show
-- the default of the moment it is read, and its rows would look new at every read.
SET mutations_sync = 2;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS inserted_at DateTime DEFAULT toDateTime(0);
ALTER TABLE sessions MATERIALIZE COLUMN inserted_at;
ALTER TABLE sessions MODIFY COLUMN inserted_at DateTime DEFAULT now();
ALTER TABLE events ADD COLUMN IF NOT EXISTS inserted_at DateTime DEFAULT toDateTime(0);
ALTER TABLE events MATERIALIZE COLUMN inserted_at;
ALTER TABLE events MODIFY COLUMN inserted_at DateTime DEFAULT now();

-- events is sorted by event time, which tracks arrival closely, so a minmax index on
-- inserted_at lets "what arrived in the last 15 minutes" skip almost every granule.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_inserted_at inserted_at TYPE minmax GRANULARITY 1;
ALTER TABLE events MATERIALIZE INDEX idx_inserted_at;

-- A view's column list is fixed when it is created, so `SELECT *` views do not show columns
-- added later: recreate them.
CREATE OR REPLACE VIEW sessions_current AS
SELECT *
FROM sessions FINAL
WHERE NOT retracted;

CREATE OR REPLACE VIEW events_current AS
SELECT *
FROM events FINAL;
