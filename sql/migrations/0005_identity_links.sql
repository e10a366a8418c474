-- 0005: which customer an identifier belongs to, for support staff and data teams (the
-- pipeline's own copy is the compacted journey.identity topic).

-- One row per version of a link; the highest version per identifier is current. A phone
-- number appears only as its keyed hash (the key never reaches ClickHouse), exactly as in
-- events.msisdn_hash, so the two join; a number cannot be looked up without the key.
CREATE TABLE IF NOT EXISTS identity_links
(
    identifier_kind LowCardinality(String)  COMMENT 'customer, msisdn or app',
    identifier      String                  COMMENT 'the CRM id, keyed hash of the phone number, or app install id',
    customer_id     String                  COMMENT 'canonical customer key when linked',
    linked_at       DateTime64(3, 'UTC'),
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (identifier_kind, identifier)
SETTINGS non_replicated_deduplication_window = 10000;

-- The current link of every identifier.
CREATE VIEW IF NOT EXISTS identity_links_current AS
SELECT *
FROM identity_links FINAL;
