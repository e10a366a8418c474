-- Rebuild flow_minute for a range of minutes: recomputes every minute in [from, to) from the
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
--   curl -sS --data-binary @sql/maintenance/rebuild_flow_minute.sql \
--     'http://127.0.0.1:8123/?database=journey&param_from=2025-03-03%2000:00:00&param_to=2025-03-04%2000:00:00'
--
-- Long ranges: run it a day or a week at a time.
INSERT INTO flow_minute (minute, from_channel, to_channel, transitions, gap_ms_median, computed_at)
WITH
    candidates AS
    (
        SELECT DISTINCT start_minute, customer_id, session_id
        FROM session_timeline
        WHERE minute >= {from:DateTime('UTC')} AND minute < {to:DateTime('UTC')} AND k > 0
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
    WHERE minute >= {from:DateTime('UTC')} AND minute < {to:DateTime('UTC')} AND k > 0 AND (session_id, version) IN cur
    UNION ALL
    SELECT minute, from_channel, to_channel, 0, 0, transitions, gap_ms_median
    FROM flow_minute FINAL
    WHERE minute >= {from:DateTime('UTC')} AND minute < {to:DateTime('UTC')} AND transitions > 0
)
GROUP BY minute, from_channel, to_channel
HAVING transitions != max(old_transitions) OR gap_ms_median != max(old_median)
