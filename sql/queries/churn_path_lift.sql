-- Churn retrospective, telling paths: which channel paths are over-represented among
-- churners compared with customers who stayed (lift).
--
-- For: data teams and journey owners.
-- Reads: churn (FINAL), sessions_current.
--
-- Parameters:
--   {from:Date}            churners: customers whose churn_date is on or after this day
--   {to:Date}              ... and on or before this one
--   {reference_date:Date}  retained customers are looked at in the days before this one
--   {lookback_days:UInt16} length of the window before churn / the reference date (90)
--   {min_support:UInt32}   only paths that at least this many churners followed
--   {limit:UInt32}         how many paths
--
-- Cohorts: churned = customers in churn (latest load) with churn_date in [from, to], each
-- looked at in [churn_date - lookback_days, churn_date); retained = customers with a
-- session starting in [reference_date - lookback_days, reference_date) and no churn row at
-- all, looked at in that window. Pick reference_date near the churn dates (e.g. to + 1 day)
-- so both cohorts are seen in the same season.
--
-- Example:
--   curl -sS --data-binary @sql/queries/churn_path_lift.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-01&param_to=2025-03-31&param_reference_date=2025-04-01&param_lookback_days=90&param_min_support=20&param_limit=25'
--
-- Columns (most over-represented first: paths no retained customer followed, then by lift,
-- then by churners; shares count customers, each once per path):
--   path                channel path (APP>IVR>CONTACT_CENTRE)
--   churned_customers   churners with at least one session on this path in their window
--   churned_share       churned_customers / churners in the cohort
--   retained_customers  retained customers with such a session in their window
--   retained_share      retained_customers / retained customers in the cohort
--   lift                churned_share / retained_share; NULL when no retained customer
--                       followed the path
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
    paths AS
    (
        SELECT cohort, path, uniqExact(customer_id) AS customers
        FROM cohort_sessions
        GROUP BY cohort, path
    )
SELECT
    path,
    sumIf(customers, cohort = 'churned') AS churned_customers,
    churned_customers / (SELECT countIf(cohort = 'churned') FROM cohort) AS churned_share,
    sumIf(customers, cohort = 'retained') AS retained_customers,
    retained_customers / (SELECT countIf(cohort = 'retained') FROM cohort) AS retained_share,
    if(retained_customers = 0, NULL, churned_share / retained_share) AS lift
FROM paths
GROUP BY path
HAVING churned_customers >= {min_support:UInt32}
ORDER BY lift DESC NULLS FIRST, churned_customers DESC, path
LIMIT {limit:UInt32}
