-- Top channel paths (process variants): which sequences of channels sessions follow, how
-- often, and how long they take.
--
-- For: operations staff and journey owners (variants table next to the process map).
-- Reads: session_timeline (sessions re-keyed by time, sql/migrations/0007): the k = 0 rows
-- (one per session version) of the range, resolved to each session's current version.
--
-- Parameters:
--   {from:DateTime64(3, 'UTC')}  sessions that started at or after this time
--   {to:DateTime64(3, 'UTC')}    ... and before this one
--   {topic:String}               only sessions that touched this topic; '' for all
--   {region:String}              only sessions of this region; '' for all
--   {limit:UInt32}               how many paths
--
-- Example:
--   curl -sS --data-binary @sql/queries/top_paths.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-03%2000:00:00&param_to=2025-03-10%2000:00:00&param_topic=&param_region=north&param_limit=20'
--
-- Columns:
--   path                channels in the order visited, repeats collapsed (APP>IVR>CONTACT_CENTRE)
--   sessions            sessions that followed it
--   share               sessions / all sessions matching the filters (before the limit)
--   median_duration_ms  median session duration (first to last event), ms
WITH
    current_sessions AS
    (
        SELECT
            argMax(path, version) AS current_path,
            argMax(duration_ms, version) AS current_duration_ms,
            argMax(start_time, version) AS current_start_time,
            argMax(region, version) AS current_region,
            argMax(topics, version) AS current_topics
        FROM session_timeline
        WHERE k = 0
          AND minute >= toStartOfMinute({from:DateTime64(3, 'UTC')})
          AND minute < {to:DateTime64(3, 'UTC')}
        GROUP BY customer_id, session_id
        HAVING NOT argMax(retracted, version)
    )
SELECT
    current_path AS path,
    count() AS sessions,
    count() / sum(count()) OVER () AS share,
    quantileExactInclusive(0.5)(current_duration_ms) AS median_duration_ms
FROM current_sessions
WHERE current_start_time >= {from:DateTime64(3, 'UTC')}
  AND current_start_time < {to:DateTime64(3, 'UTC')}
  AND ({region:String} = '' OR current_region = {region:String})
  AND ({topic:String} = '' OR has(current_topics, {topic:String}))
GROUP BY current_path
ORDER BY sessions DESC, path
LIMIT {limit:UInt32}
