-- Churn retrospective, scenario exposure: how many churners met each unwanted scenario in
-- the 90 days before they left, against customers who stayed.
--
-- For: data teams and journey owners (which scenarios to fix first).
-- Reads: churn (FINAL: the latest load of each customer), sessions_current (who was active),
-- scenario_hits_current.
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
--   curl -sS --data-binary @sql/queries/churn_scenario_exposure.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-01&param_to=2025-03-31&param_reference_date=2025-04-01&param_lookback_days=90'
--
-- Columns (one row per rule that either cohort met):
--   rule                scenario rule
--   churned_exposed     churners with at least one current hit of the rule in their window
--   churned_customers   churners in the cohort
--   churned_share       churned_exposed / churned_customers
--   retained_exposed    retained customers with such a hit in their window
--   retained_customers  retained customers in the cohort
--   retained_share      retained_exposed / retained_customers
--   lift                churned_share / retained_share; NULL when no retained customer met it
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
    exposed AS
    (
        SELECT c.cohort AS cohort, h.rule AS rule, uniqExact(c.customer_id) AS customers
        FROM cohort AS c
        INNER JOIN
        (
            SELECT customer_id, rule, event_time
            FROM scenario_hits_current
            WHERE event_time >= least(toDateTime64({from:Date}, 3, 'UTC'), toDateTime64({reference_date:Date}, 3, 'UTC')) - toIntervalDay({lookback_days:UInt16})
              AND event_time < greatest(toDateTime64({to:Date}, 3, 'UTC'), toDateTime64({reference_date:Date}, 3, 'UTC'))
        ) AS h ON h.customer_id = c.customer_id
        WHERE h.event_time >= c.window_start AND h.event_time < c.window_end
        GROUP BY cohort, rule
    )
SELECT
    rule,
    sumIf(customers, cohort = 'churned') AS churned_exposed,
    (SELECT countIf(cohort = 'churned') FROM cohort) AS churned_customers,
    churned_exposed / churned_customers AS churned_share,
    sumIf(customers, cohort = 'retained') AS retained_exposed,
    (SELECT countIf(cohort = 'retained') FROM cohort) AS retained_customers,
    retained_exposed / retained_customers AS retained_share,
    if(retained_exposed = 0, NULL, churned_share / retained_share) AS lift
FROM exposed
GROUP BY rule
ORDER BY rule
