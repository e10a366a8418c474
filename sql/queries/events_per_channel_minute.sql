-- Events per channel per minute: how much traffic each channel carries right now.
--
-- For: operations staff (live dashboard, one line per channel).
-- Reads: events_minute_current, the per-minute rollup of distinct events (sql/migrations/0007);
-- cheap for any range, about a minute behind the pipeline.
--
-- Parameters:
--   {from:DateTime64(3, 'UTC')}  first minute shown (minutes that start at or after it)
--   {to:DateTime64(3, 'UTC')}    end of the range, exclusive
--   {channel:String}             only this channel; '' for all
--   {region:String}              only events of this region; '' for all
--
-- Example:
--   curl -sS --data-binary @sql/queries/events_per_channel_minute.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-03%2008:00:00&param_to=2025-03-03%2009:00:00&param_channel=&param_region='
--
-- Columns:
--   minute   start of the minute (UTC, event time)
--   channel  channel of the events
--   events   distinct events in that minute and channel (each event once, however often it
--            was re-sent or moved to another customer)
SELECT
    minute,
    channel,
    sum(events) AS events
FROM events_minute_current
WHERE minute >= {from:DateTime64(3, 'UTC')}
  AND minute < {to:DateTime64(3, 'UTC')}
  AND ({channel:String} = '' OR channel = {channel:String})
  AND ({region:String} = '' OR region = {region:String})
GROUP BY minute, channel
ORDER BY minute, channel
