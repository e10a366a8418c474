-- Rebuild scenario_minute for a range of minutes: recomputes every minute in [from, to) from the
-- current base rows, exactly as the every-minute refresh does for recently touched minutes
-- (sql/migrations/0007_rollups.sql), including count-0 rows for groups that no longer exist.
--
-- When: the refresh was stopped or failing for more than its 15-minute window (see
-- system.view_refreshes), rows were changed without an INSERT (ALTER ... UPDATE/DELETE,
-- a restored backup), or a rollup was added after its data. Safe to run at any time and as
-- often as needed: it writes only groups whose value differs, versioned by now64(6), and a
-- refresh running at the same time computes the same values.
--
-- Parameters:
--   {from:DateTime('UTC')}  first minute to rebuild
--   {to:DateTime('UTC')}    end, exclusive
--
-- Example (one day):
--   curl -sS --data-binary @sql/maintenance/rebuild_scenario_minute.sql \
--     'http://127.0.0.1:8123/?database=journey&param_from=2025-03-03%2000:00:00&param_to=2025-03-04%2000:00:00'
--
-- Long ranges: run it a day or a week at a time.
INSERT INTO scenario_minute (minute, rule, channel, topic, region, hits, computed_at)
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
    WHERE event_time >= {from:DateTime('UTC')} AND event_time < {to:DateTime('UTC')}
    UNION ALL
    SELECT minute, rule, channel, topic, region, 0, hits
    FROM scenario_minute FINAL
    WHERE minute >= {from:DateTime('UTC')} AND minute < {to:DateTime('UTC')} AND hits > 0
)
GROUP BY minute, rule, channel, topic, region
HAVING hits != max(old_hits)
