-- 0006: churned customers, loaded by data teams, for churn retrospectives (sql/queries/churn_*).
--
-- Load (any number of times: a customer loaded again keeps the row loaded last):
--
--   curl --data-binary @churn.csv \
--     'http://127.0.0.1:8123/?database=journey&query=INSERT%20INTO%20churn%20(customer_id,%20churn_date,%20reason)%20FORMAT%20CSV'
--
-- or `clickhouse client --database journey --query "INSERT INTO churn (customer_id, churn_date,
-- reason) FORMAT CSV" < churn.csv`, with lines like `C00042,2025-03-31,price`. customer_id is
-- the canonical customer key of events and sessions (the CRM id for customers that have one).
CREATE TABLE IF NOT EXISTS churn
(
    customer_id String,
    churn_date  Date,
    reason      LowCardinality(String),
    loaded_at   DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY customer_id;
