-- Channel flow graph: how customers move between channels in a time range (the process map),
-- with optional cross-filters.
--
-- For: operations staff (process-map panel; clicking a topic, region or scenario elsewhere
-- on the dashboard filters it).
-- Reads: session_timeline (sessions re-keyed by time, sql/migrations/0007) for the range:
-- its transition rows, and its k = 0 rows for the current version of each session;
-- scenario_hits_current for the scenario filter. Exact for any range (medians are computed
-- from the transitions, not merged from per-minute medians).
--
-- Parameters:
--   {from:DateTime64(3, 'UTC')}  transitions at or after this time (time of the first event
--                                on the new channel)
--   {to:DateTime64(3, 'UTC')}    ... and before this one
--   {topic:String}               only sessions that touched this topic; '' for all
--   {region:String}              only sessions of this region; '' for all
--   {scenario:String}            only sessions with a current hit of this rule; '' for all.
--                                Hits are looked up within 2 days of the range (sessions are
--                                at most a day long)
--
-- Example:
--   curl -sS --data-binary @sql/queries/channel_flow.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-03%2000:00:00&param_to=2025-03-04%2000:00:00&param_topic=billing&param_region=&param_scenario='
--
-- Columns:
--   from_channel   channel the customer left
--   to_channel     channel the customer went to next
--   transitions    how many times that happened
--   sessions       in how many sessions
--   median_gap_ms  median time between the last event on from_channel and the first on
--                  to_channel, ms (mean of the two middle values for an even count)
WITH
    in_range AS
    (
        SELECT DISTINCT start_minute, customer_id, session_id
        FROM session_timeline
        WHERE minute >= toStartOfMinute({from:DateTime64(3, 'UTC')})
          AND minute < {to:DateTime64(3, 'UTC')}
          AND k > 0
    ),
    current_versions AS
    (
        SELECT session_id, max(version) AS current_version
        FROM session_timeline
        WHERE (minute, customer_id, session_id) IN in_range AND k = 0
        GROUP BY customer_id, session_id
        HAVING NOT argMax(retracted, version)
    )
SELECT
    from_channel,
    to_channel,
    count() AS transitions,
    uniqExact(session_id) AS sessions,
    quantileExactInclusive(0.5)(gap_ms) AS median_gap_ms
FROM session_timeline FINAL
WHERE minute >= toStartOfMinute({from:DateTime64(3, 'UTC')})
  AND minute < {to:DateTime64(3, 'UTC')}
  AND k > 0
  AND event_time >= {from:DateTime64(3, 'UTC')}
  AND event_time < {to:DateTime64(3, 'UTC')}
  AND (session_id, version) IN current_versions
  AND ({region:String} = '' OR region = {region:String})
  AND ({topic:String} = '' OR has(topics, {topic:String}))
  AND ({scenario:String} = '' OR session_id IN
  (
      SELECT session_id
      FROM scenario_hits_current
      WHERE rule = {scenario:String}
        AND session_id != ''
        AND event_time >= {from:DateTime64(3, 'UTC')} - INTERVAL 2 DAY
        AND event_time < {to:DateTime64(3, 'UTC')} + INTERVAL 2 DAY
  ))
GROUP BY from_channel, to_channel
ORDER BY transitions DESC, from_channel, to_channel
