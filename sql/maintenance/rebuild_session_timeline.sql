-- Rebuild session_timeline (sessions re-keyed by time, sql/migrations/0007_rollups.sql) for
-- sessions that started in [from, to), from sessions itself.
--
-- When: rows reached sessions without passing through its materialized view (a restored
-- backup, an ALTER ... UPDATE), or the view was dropped for a while. Every session row is
-- written again; rows already there have the same key and collapse, so it is safe to repeat.
-- Afterwards rebuild flow_minute for the same days plus one (sessions last up to a day):
-- sql/maintenance/rebuild_flow_minute.sql.
--
-- Parameters:
--   {from:DateTime('UTC')}  sessions that started at or after this time
--   {to:DateTime('UTC')}    ... and before this one
--
-- Example:
--   curl -sS --data-binary @sql/maintenance/rebuild_session_timeline.sql \
--     'http://127.0.0.1:8123/?database=journey&param_from=2025-03-03%2000:00:00&param_to=2025-03-04%2000:00:00'
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
ARRAY JOIN range(toUInt32(length(tr_time) + 1)) AS k
WHERE start_time >= {from:DateTime('UTC')} AND start_time < {to:DateTime('UTC')}
