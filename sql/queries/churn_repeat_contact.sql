-- Churn retrospective, repeat contacts: did churners have to come back to an agent again
-- and again before they left?
--
-- For: data teams and contact-centre owners.
-- Reads: churn (FINAL), sessions_current (assisted = the session has a contact with an agent:
-- contact centre, retail, back office).
--
-- Parameters:
--   {from:Date}            churners: customers whose churn_date is on or after this day
--   {to:Date}              ... and on or before this one
--   {reference_date:Date}  retained customers are looked at in the days before this one
--   {lookback_days:UInt16} length of the window before churn / the reference date (90)
--   {repeat_days:UInt16}   an assisted session is a repeat contact when it starts at most this
--                          many days after the customer's previous assisted session in the
--                          window (7)
--
-- Cohorts: churned = customers in churn (latest load) with churn_date in [from, to], each
-- looked at in [churn_date - lookback_days, churn_date); retained = customers with a
-- session starting in [reference_date - lookback_days, reference_date) and no churn row at
-- all, looked at in that window. Pick reference_date near the churn dates (e.g. to + 1 day)
-- so both cohorts are seen in the same season.
--
-- Example:
--   curl -sS --data-binary @sql/queries/churn_repeat_contact.sql \
--     'http://127.0.0.1:8123/?database=journey&default_format=PrettyCompact&param_from=2025-03-01&param_to=2025-03-31&param_reference_date=2025-04-01&param_lookback_days=90&param_repeat_days=7'
--
-- Columns (one row per cohort, 'churned' then 'retained'):
--   cohort                     'churned' or 'retained'
--   customers                  customers in the cohort
--   assisted_contacts          assisted sessions in their windows
--   repeat_contacts            of those, repeat contacts
--   repeat_contact_rate        repeat_contacts / assisted_contacts; NULL without contacts
--   customers_with_repeat      customers with at least one repeat contact
--   share_customers_with_repeat  customers_with_repeat / customers
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
    per_customer AS
    (
        SELECT
            cohort,
            customer_id,
            arraySort(groupArray(toUnixTimestamp64Milli(start_time))) AS starts,
            length(starts) AS contacts,
            arrayCount(d -> d <= toInt64({repeat_days:UInt16}) * 86400000, arrayPopFront(arrayDifference(starts))) AS repeats
        FROM cohort_sessions
        WHERE assisted
        GROUP BY cohort, customer_id
    ),
    per_cohort AS
    (
        SELECT cohort, sum(contacts) AS assisted_contacts, sum(repeats) AS repeat_contacts, countIf(repeats > 0) AS customers_with_repeat
        FROM per_customer
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
    p.assisted_contacts AS assisted_contacts,
    p.repeat_contacts AS repeat_contacts,
    if(p.assisted_contacts = 0, NULL, p.repeat_contacts / p.assisted_contacts) AS repeat_contact_rate,
    p.customers_with_repeat AS customers_with_repeat,
    p.customers_with_repeat / z.customers AS share_customers_with_repeat
FROM sizes AS z
LEFT JOIN per_cohort AS p ON p.cohort = z.cohort
ORDER BY cohort
