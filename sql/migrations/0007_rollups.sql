-- 0007: per-minute rollups that dashboards read cheaply, exact under corrections.
--
-- The base tables keep one row per version (a late event re-emits a session or a hit with a
-- higher version, or retracts it), and the pipeline may insert the same rows again after a
-- crash. Insert-time aggregation would count every version and every re-insert, and a median
-- cannot be un-merged. So each rollup is recomputed, per minute, from the current rows:
--
-- * A refreshable materialized view runs every minute. It finds the minutes touched by rows
--   that arrived in the last 15 minutes (inserted_at), recomputes exactly those minutes from
--   the current (FINAL) rows, and appends the result to a ReplacingMergeTree versioned by the
--   computation time, so the newest computation of a (minute, group) wins.
-- * A group that existed in a recomputed minute but has no current row any more is written
--   with count 0: a retraction really removes it. The *_current views show count > 0.
-- * Only groups whose value changed are written, so the tables grow with changes, not with
--   refreshes.
--
-- Every recomputation is a pure function of the current rows, so refreshing again, refreshing
-- after a crash re-insert, or overlapping windows change nothing: it is idempotent. A change
-- reaches the rollup at the first refresh after its insert (about a minute); it is missed
-- only if no refresh succeeds for 15 minutes (then rebuild the range with
-- sql/maintenance/rebuild_*.sql, which also fill the days before this migration: rows
-- written before 0002 carry inserted_at 1970 and are never refreshed automatically).
--
-- Every read is driven by a sorting key: events and scenario_hits are sorted by time, and
-- their inserted_at minmax index skips what did not arrive recently. sessions is sorted by
-- customer, so session_timeline (below) is its time index.
--
-- Needs ClickHouse 24.9 or later (REFRESH ... APPEND; the upstream 24.8 LTS does not parse
-- it). Before 25.x refreshable views also need `allow_experimental_refreshable_materialized_view`
-- (obsolete and ignored later). `journey migrate` passes a migration's SET statements as
-- settings of its later statements; `clickhouse client` keeps them for the session.
SET allow_experimental_refreshable_materialized_view = 1;

-- sessions re-keyed by time, for the flow rollup and the flow and path queries. sessions is
-- sorted by customer, so "the sessions with a transition in minute M" or "the versions of
-- these recently changed sessions" would read all of it. session_timeline holds, for every
-- session row (every version, retractions included):
--   * k = 0: the version itself, at the minute of its start, with the minutes its
--     transitions fall in (tr_minutes);
--   * k = 1..n: its n channel transitions (k = position in the tr_* arrays), each at its minute.
-- A session_id derives from the customer and the first event, so its start (start_minute) is
-- the same in every version: all versions of a session have their k = 0 rows at one minute,
-- next to each other in the key. Every row carries the version's attributes (path, region,
-- topics, ...), so a row of the current version answers filters without going back to
-- sessions. Filled at insert time, never aggregated: versions are resolved at read time, and
-- a row inserted twice (crash replay) has the same key and collapses (read FINAL or with
-- max/argMax/DISTINCT, which ignore duplicates).
CREATE TABLE IF NOT EXISTS session_timeline
(
    minute          DateTime('UTC')         COMMENT 'k = 0: minute of start_time; k > 0: minute of the transition',
    start_minute    DateTime('UTC')         COMMENT 'minute of start_time (the same in every version)',
    customer_id     String,
    session_id      String,
    version         UInt64,
    k               UInt32                  COMMENT '0: the version; n > 0: its n-th transition (tr_*[n])',
    retracted       Bool,
    start_time      DateTime64(3, 'UTC'),
    duration_ms     Int64,
    path            String,
    region          LowCardinality(String),
    topics          Array(String),
    assisted        Bool,
    tr_minutes      Array(DateTime('UTC'))  COMMENT 'k = 0: distinct minutes of the version''s transitions',
    from_channel    LowCardinality(String)  COMMENT 'k > 0: tr_from[k]',
    to_channel      LowCardinality(String)  COMMENT 'k > 0: tr_to[k]',
    event_time      DateTime64(3, 'UTC')    COMMENT 'k > 0: tr_time[k], first event on to_channel; k = 0: start_time',
    gap_ms          Int64                   COMMENT 'k > 0: tr_gap_ms[k]',
    inserted_at     DateTime                COMMENT 'inserted_at of the session row',
    INDEX idx_inserted_at inserted_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, customer_id, session_id, version, k);

CREATE MATERIALIZED VIEW IF NOT EXISTS session_timeline_mv TO session_timeline AS
SELECT
    toStartOfMinute(if(k = 0, start_time, tr_time[k])) AS minute,
    toStartOfMinute(start_time) AS start_minute,
    customer_id,
    session_id,
    version,
    k,
    retracted,
    start_time,
    duration_ms,
    path,
    region,
    topics,
    assisted,
    if(k = 0, arrayDistinct(arrayMap(t -> toStartOfMinute(t), tr_time)), []) AS tr_minutes,
    if(k = 0, '', tr_from[k]) AS from_channel,
    if(k = 0, '', tr_to[k]) AS to_channel,
    if(k = 0, start_time, tr_time[k]) AS event_time,
    if(k = 0, 0, tr_gap_ms[k]) AS gap_ms,
    inserted_at
FROM sessions
ARRAY JOIN range(toUInt32(length(tr_time) + 1)) AS k;

-- Sessions written before this migration (the view sees only new inserts). Running it twice
-- only writes rows that collapse.
INSERT INTO session_timeline
SELECT
    toStartOfMinute(if(k = 0, start_time, tr_time[k])) AS minute,
    toStartOfMinute(start_time) AS start_minute,
    customer_id,
    session_id,
    version,
    k,
    retracted,
    start_time,
    duration_ms,
    path,
    region,
    topics,
    assisted,
    if(k = 0, arrayDistinct(arrayMap(t -> toStartOfMinute(t), tr_time)), []) AS tr_minutes,
    if(k = 0, '', tr_from[k]) AS from_channel,
    if(k = 0, '', tr_to[k]) AS to_channel,
    if(k = 0, start_time, tr_time[k]) AS event_time,
    if(k = 0, 0, tr_gap_ms[k]) AS gap_ms,
    inserted_at
FROM sessions
ARRAY JOIN range(toUInt32(length(tr_time) + 1)) AS k;

-- The process map: per minute (of tr_time) and channel pair, how many transitions current
-- sessions made and the median time between the two events (ms, exact: the mean of the two
-- middle values for an even count).
CREATE TABLE IF NOT EXISTS flow_minute
(
    minute          DateTime('UTC'),
    from_channel    LowCardinality(String),
    to_channel      LowCardinality(String),
    transitions     UInt64,
    gap_ms_median   Float64,
    computed_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, from_channel, to_channel);

-- recent: sessions with a row that arrived in the last 15 minutes; touched: every minute in
-- which any version of those sessions has a transition (the old version's minutes may lose
-- one, the new one's gain one); candidates: every session with a transition row (any
-- version) in a touched minute; cur: the current version of each candidate that is not
-- retracted. The current versions' transitions are aggregated; the rollup's own groups of
-- the touched minutes join with count 0, which keeps a group that vanished. Each step reads
-- session_timeline by its key (minute, customer_id, session_id), recent by the inserted_at
-- index.
CREATE MATERIALIZED VIEW IF NOT EXISTS flow_minute_refresh
REFRESH EVERY 1 MINUTE APPEND TO flow_minute AS
WITH
    recent AS
    (
        SELECT DISTINCT start_minute, customer_id, session_id
        FROM session_timeline
        WHERE inserted_at >= now() - INTERVAL 15 MINUTE
    ),
    touched AS
    (
        SELECT DISTINCT arrayJoin(tr_minutes) AS m
        FROM session_timeline
        WHERE (minute, customer_id, session_id) IN recent AND k = 0
    ),
    candidates AS
    (
        SELECT DISTINCT start_minute, customer_id, session_id
        FROM session_timeline
        WHERE minute IN touched AND k > 0
    ),
    cur AS
    (
        SELECT session_id, max(version) AS current_version
        FROM session_timeline
        WHERE (minute, customer_id, session_id) IN candidates AND k = 0
        GROUP BY customer_id, session_id
        HAVING NOT argMax(retracted, version)
    )
SELECT
    minute,
    from_channel,
    to_channel,
    countIf(is_new) AS transitions,
    if(transitions = 0, 0, quantileExactInclusiveIf(0.5)(gap_ms, is_new)) AS gap_ms_median,
    now64(6) AS computed_at
FROM
(
    SELECT minute, from_channel, to_channel, gap_ms, 1 AS is_new, 0 AS old_transitions, 0. AS old_median
    FROM session_timeline FINAL
    WHERE minute IN touched AND k > 0 AND (session_id, version) IN cur
    UNION ALL
    SELECT minute, from_channel, to_channel, 0, 0, transitions, gap_ms_median
    FROM flow_minute FINAL
    WHERE minute IN touched AND transitions > 0
)
GROUP BY minute, from_channel, to_channel
HAVING transitions != max(old_transitions) OR gap_ms_median != max(old_median);

-- What dashboards read.
CREATE VIEW IF NOT EXISTS flow_minute_current AS
SELECT minute, from_channel, to_channel, transitions, gap_ms_median
FROM flow_minute FINAL
WHERE transitions > 0;

-- Scenario hits per minute (of event_time) and rule, channel (of the trigger event), topic,
-- region: current, non-retracted hits. A hit's event_time never changes, so the minutes that
-- recently arrived rows carry are all the touched minutes.
CREATE TABLE IF NOT EXISTS scenario_minute
(
    minute          DateTime('UTC'),
    rule            LowCardinality(String),
    channel         LowCardinality(String),
    topic           LowCardinality(String),
    region          LowCardinality(String),
    hits            UInt64,
    computed_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, rule, channel, topic, region);

CREATE MATERIALIZED VIEW IF NOT EXISTS scenario_minute_refresh
REFRESH EVERY 1 MINUTE APPEND TO scenario_minute AS
WITH
    touched AS
    (
        SELECT DISTINCT toStartOfMinute(event_time) AS m
        FROM scenario_hits
        WHERE inserted_at >= now() - INTERVAL 15 MINUTE
    )
SELECT
    minute,
    rule,
    channel,
    topic,
    region,
    countIf(is_new) AS hits,
    now64(6) AS computed_at
FROM
(
    SELECT toStartOfMinute(event_time) AS minute, rule, channel, topic, region, 1 AS is_new, 0 AS old_hits
    FROM scenario_hits_current
    WHERE toStartOfMinute(event_time) IN touched
    UNION ALL
    SELECT minute, rule, channel, topic, region, 0, hits
    FROM scenario_minute FINAL
    WHERE minute IN touched AND hits > 0
)
GROUP BY minute, rule, channel, topic, region
HAVING hits != max(old_hits);

CREATE VIEW IF NOT EXISTS scenario_minute_current AS
SELECT minute, rule, channel, topic, region, hits
FROM scenario_minute FINAL
WHERE hits > 0;

-- Distinct events per minute (of event_time), channel and region. An event's time, channel
-- and region never change (a move to another customer only re-keys it), so again the minutes
-- of recently arrived rows are the touched ones.
CREATE TABLE IF NOT EXISTS events_minute
(
    minute          DateTime('UTC'),
    channel         LowCardinality(String),
    region          LowCardinality(String),
    events          UInt64,
    computed_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, channel, region);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_minute_refresh
REFRESH EVERY 1 MINUTE APPEND TO events_minute AS
WITH
    touched AS
    (
        SELECT DISTINCT toStartOfMinute(event_time) AS m
        FROM events
        WHERE inserted_at >= now() - INTERVAL 15 MINUTE
    )
SELECT
    minute,
    channel,
    region,
    countIf(is_new) AS events,
    now64(6) AS computed_at
FROM
(
    SELECT toStartOfMinute(event_time) AS minute, channel, region, 1 AS is_new, 0 AS old_events
    FROM events FINAL
    WHERE toStartOfMinute(event_time) IN touched
    UNION ALL
    SELECT minute, channel, region, 0, events
    FROM events_minute FINAL
    WHERE minute IN touched AND events > 0
)
GROUP BY minute, channel, region
HAVING events != max(old_events);

CREATE VIEW IF NOT EXISTS events_minute_current AS
SELECT minute, channel, region, events
FROM events_minute FINAL
WHERE events > 0;
