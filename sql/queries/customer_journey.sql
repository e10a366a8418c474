-- One customer's journey: every event across channels in time order, the session each
-- belongs to, and the unwanted scenarios detected on it.
--
-- For: support staff and analysts drilling down from a dashboard (a spike, a path, a
-- scenario) to one customer.
-- Reads: events_current, sessions_current and scenario_hits_current, each through an index:
-- the events' and hits' by_customer projections find the keys of the customer's rows
-- without FINAL, FINAL then reads exactly those keys (a projection is never used with FINAL
-- itself); sessions are sorted by customer.
--
-- Parameters:
--   {customer:String}            canonical customer key (customer_id of events and sessions)
--   {from:DateTime64(3, 'UTC')}  events and hits at or after this time
--   {to:DateTime64(3, 'UTC')}    ... and before this one
--
-- Example:
--   curl -sS --data-binary @sql/queries/customer_journey.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_customer=C000042&param_from=2025-03-01%2000:00:00&param_to=2025-04-01%2000:00:00'
--
-- Columns (one row per event, kind = 'event', and per scenario hit, kind = 'scenario_hit'):
--   kind        'event' or 'scenario_hit'
--   time        event time; for a hit, the time of its completing event (absence rules:
--               trigger time + the rule's window)
--   id          event_id or hit_id
--   channel     channel of the event; for a hit, of its trigger event
--   what        event_type, or the hit's rule
--   topic       topic
--   region      region
--   detail      the event's outcome, or the hit's severity
--   session_id  session the event belongs to, or the hit's session ('' when unknown)
--   path        that session's channel path
--   hit_rules   for an event: the rules of the customer's current hits it takes part in
--               (trigger or matched), sorted; [] for a hit
--   event_ids   for a hit: its trigger event, then its matched events; [] for an event
WITH
    customer_events AS
    (
        SELECT customer_id, event_time, event_id, channel, event_type, topic, outcome, region
        FROM events_current
        WHERE (event_time, event_id) IN
        (
            SELECT event_time, event_id
            FROM events
            WHERE customer_id = {customer:String}
              AND event_time >= {from:DateTime64(3, 'UTC')}
              AND event_time < {to:DateTime64(3, 'UTC')}
        )
          AND customer_id = {customer:String}
    ),
    customer_sessions AS
    (
        SELECT customer_id, session_id, start_time, end_time, path
        FROM sessions_current
        WHERE customer_id = {customer:String}
    ),
    customer_hits AS
    (
        SELECT hit_id, rule, event_time, trigger_event_id, matched_event_ids, channel, topic, region, severity, session_id
        FROM scenario_hits_current
        WHERE (rule, event_time, hit_id) IN
        (
            SELECT rule, event_time, hit_id
            FROM scenario_hits
            WHERE customer_id = {customer:String}
              AND event_time >= {from:DateTime64(3, 'UTC')}
              AND event_time < {to:DateTime64(3, 'UTC')}
        )
          AND customer_id = {customer:String}
    ),
    rules_by_event AS
    (
        SELECT event_id, arraySort(groupUniqArray(rule)) AS hit_rules
        FROM customer_hits
        ARRAY JOIN arrayConcat([trigger_event_id], matched_event_ids) AS event_id
        GROUP BY event_id
    )
SELECT *
FROM
(
    SELECT
        'event' AS kind,
        e.event_time AS time,
        e.event_id AS id,
        toString(e.channel) AS channel,
        toString(e.event_type) AS what,
        toString(e.topic) AS topic,
        toString(e.region) AS region,
        toString(e.outcome) AS detail,
        if(e.event_time <= s.end_time, s.session_id, '') AS session_id,
        if(e.event_time <= s.end_time, s.path, '') AS path,
        r.hit_rules AS hit_rules,
        CAST([], 'Array(String)') AS event_ids
    FROM customer_events AS e
    ASOF LEFT JOIN customer_sessions AS s ON e.customer_id = s.customer_id AND e.event_time >= s.start_time
    LEFT JOIN rules_by_event AS r ON e.event_id = r.event_id
    UNION ALL
    SELECT
        'scenario_hit' AS kind,
        h.event_time AS time,
        h.hit_id AS id,
        toString(h.channel) AS channel,
        toString(h.rule) AS what,
        toString(h.topic) AS topic,
        toString(h.region) AS region,
        toString(h.severity) AS detail,
        h.session_id AS session_id,
        s.path AS path,
        CAST([], 'Array(String)') AS hit_rules,
        arrayConcat([h.trigger_event_id], h.matched_event_ids) AS event_ids
    FROM customer_hits AS h
    LEFT JOIN customer_sessions AS s ON h.session_id = s.session_id
)
ORDER BY time, kind, id
