-- Churn retrospective, leaving self-service: what share of churners' journeys ended up with
-- an agent (a session with an assisted contact) rather than being solved in the app, web,
-- IVR or bot, against customers who stayed.
--
-- For: data teams and digital channel owners.
-- Reads: churn (FINAL), sessions_current.
--
-- Parameters:
--   {from:Date}            churners: customers whose churn_date is on or after this day
--   {to:Date}              ... and on or before this one
--   {reference_date:Date}  retained customers are looked at in the days before this one
--   {lookback_days:UInt16} length of the window before churn / the reference date (90)
--
-- Cohorts: churned = customers in churn (latest load) with churn_date in [from, to], each
-- looked at in [churn_date - lookback_days, churn_date); retained = customers with a
-- session starting in [reference_date - lookback_days, reference_date) and no churn row at
-- all, looked at in that window. Pick reference_date near the churn dates (e.g. to + 1 day)
-- so both cohorts are seen in the same season.
--
-- Example:
--   curl -sS --data-binary @sql/queries/churn_left_self_service.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-01&param_to=2025-03-31&param_reference_date=2025-04-01&param_lookback_days=90'
--
-- Columns (one row per cohort, 'churned' then 'retained'):
--   cohort                    'churned' or 'retained'
--   customers                 customers in the cohort
--   sessions                  their sessions (journeys) in their windows
--   assisted_sessions         of those, sessions with an assisted contact
--   share_left_self_service   assisted_sessions / sessions; NULL without sessions
--   customers_who_left        customers with at least one assisted session
--   share_customers_who_left  customers_who_left / customers
WITH
    churned AS
    (
        SELECT customer_id, toDateTime64(churn_date, 3, 'UTC') AS window_end
        FROM churn FINAL
        WHERE churn_date >= {from:Date} AND churn_date <= {to:Date}
    ),
    retained AS
    (
        SELECT DISTINCT customer_id, toDateTime64({reference_date:Date}, 3, 'UTC') AS window_end
        FROM sessions_current
        WHERE start_time >= toDateTime64({reference_date:Date}, 3, 'UTC') - toIntervalDay({lookback_days:UInt16})
          AND start_time < toDateTime64({reference_date:Date}, 3, 'UTC')
          AND customer_id NOT IN (SELECT customer_id FROM churn)
    ),
    cohort AS
    (
        SELECT 'churned' AS cohort, customer_id, window_end - toIntervalDay({lookback_days:UInt16}) AS window_start, window_end
        FROM churned
        UNION ALL
        SELECT 'retained' AS cohort, customer_id, window_end - toIntervalDay({lookback_days:UInt16}) AS window_start, window_end
        FROM retained
    ),
    cohort_sessions AS
    (
        SELECT c.cohort AS cohort, s.customer_id AS customer_id, s.start_time AS start_time, s.path AS path, s.assisted AS assisted
        FROM cohort AS c
        INNER JOIN
        (
            SELECT customer_id, start_time, path, assisted
            FROM sessions_current
            WHERE start_time >= least(toDateTime64({from:Date}, 3, 'UTC'), toDateTime64({reference_date:Date}, 3, 'UTC')) - toIntervalDay({lookback_days:UInt16})
              AND start_time < greatest(toDateTime64({to:Date}, 3, 'UTC'), toDateTime64({reference_date:Date}, 3, 'UTC'))
        ) AS s ON s.customer_id = c.customer_id
        WHERE s.start_time >= c.window_start AND s.start_time < c.window_end
    ),
    per_cohort AS
    (
        SELECT cohort, count() AS sessions, countIf(assisted) AS assisted_sessions, uniqExactIf(customer_id, assisted) AS customers_who_left
        FROM cohort_sessions
        GROUP BY cohort
    ),
    sizes AS
    (
        SELECT cohort, count() AS customers
        FROM cohort
        GROUP BY cohort
    )
SELECT
    z.cohort AS cohort,
    z.customers AS customers,
    p.sessions AS sessions,
    p.assisted_sessions AS assisted_sessions,
    if(p.sessions = 0, NULL, p.assisted_sessions / p.sessions) AS share_left_self_service,
    p.customers_who_left AS customers_who_left,
    p.customers_who_left / z.customers AS share_customers_who_left
FROM sizes AS z
LEFT JOIN per_cohort AS p ON p.cohort = z.cohort
ORDER BY cohort
