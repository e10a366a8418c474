-- Scenario hit rates per hour against the same hour a week earlier: is an unwanted scenario
-- (app sent the customer to the phone, repeat call, IVR failure, ...) running hot?
--
-- For: operations staff and on-call people (trend panel; the spike alerts will use the
-- same comparison).
-- Reads: scenario_minute_current, the per-minute rollup of current hits (sql/migrations/0007);
-- cheap for any range, about a minute behind the pipeline.
--
-- Parameters:
--   {from:DateTime64(3, 'UTC')}  first hour (pass a whole hour)
--   {to:DateTime64(3, 'UTC')}    end, exclusive (a whole hour)
--   {rule:String}                only this rule; '' for all
--   {channel:String}             only hits whose trigger event was in this channel; '' for all
--   {topic:String}               only this topic; '' for all
--   {region:String}              only this region; '' for all
--
-- Example:
--   curl -sS --data-binary @sql/queries/scenario_hit_rates.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-10%2000:00:00&param_to=2025-03-11%2000:00:00&param_rule=&param_channel=&param_topic=&param_region='
--
-- Columns:
--   hour            start of the hour (UTC, time of the hit's completing event)
--   rule            scenario rule
--   hits            current hits in that hour (per hour: the rate)
--   hits_last_week  hits in the same hour 7 days earlier
--   ratio           hits / hits_last_week; NULL when last week had none
-- An hour and rule appear when either week had a hit.
WITH
    this_week AS
    (
        SELECT toStartOfHour(minute) AS hour, rule, sum(hits) AS hits
        FROM scenario_minute_current
        WHERE minute >= toStartOfHour({from:DateTime64(3, 'UTC')})
          AND minute < {to:DateTime64(3, 'UTC')}
          AND ({rule:String} = '' OR rule = {rule:String})
          AND ({channel:String} = '' OR channel = {channel:String})
          AND ({topic:String} = '' OR topic = {topic:String})
          AND ({region:String} = '' OR region = {region:String})
        GROUP BY hour, rule
    ),
    last_week AS
    (
        SELECT toStartOfHour(minute) + INTERVAL 7 DAY AS hour, rule, sum(hits) AS hits
        FROM scenario_minute_current
        WHERE minute >= toStartOfHour({from:DateTime64(3, 'UTC')}) - INTERVAL 7 DAY
          AND minute < {to:DateTime64(3, 'UTC')} - INTERVAL 7 DAY
          AND ({rule:String} = '' OR rule = {rule:String})
          AND ({channel:String} = '' OR channel = {channel:String})
          AND ({topic:String} = '' OR topic = {topic:String})
          AND ({region:String} = '' OR region = {region:String})
        GROUP BY hour, rule
    )
SELECT
    hour,
    rule,
    t.hits AS hits,
    l.hits AS hits_last_week,
    if(l.hits = 0, NULL, t.hits / l.hits) AS ratio
FROM this_week AS t
FULL OUTER JOIN last_week AS l USING (hour, rule)
ORDER BY hour, rule
