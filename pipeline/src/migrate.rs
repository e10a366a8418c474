//! `journey migrate`: applies `sql/migrations/*.sql` in name order, once each, then sets the
//! raw-event retention (`clickhouse.events_retention_days`).
//!
//! Applied migrations are recorded in `schema_migrations` with a checksum of their text; a
//! migration edited after it was applied is refused (write a new migration instead). Running
//! it again is a no-op, so it is safe at every start-up and from several hosts (statements are
//! `IF NOT EXISTS`). The retention is compared with the `events` table's current TTL and
//! altered only when it differs, so that step is idempotent too.
//!
//! A migration file may contain `SET name = value` statements (the docker-compose init runs
//! each file in one `clickhouse client` session, where they apply to what follows). HTTP has
//! no session, so here they become settings of every later statement of the same file.

use crate::config::ClickHouseConfig;
use crate::Error;
use clickhouse::Row;
use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Splits a migration into statements: `;` at the end of a line ends a statement; `--` comments
/// are dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let code = match line.find("--") {
            Some(i) if !line[..i].contains('\'') => &line[..i],
            _ => line,
        };
        let trimmed = code.trim_end();
        if trimmed.trim().is_empty() {
            continue;
        }
        if let Some(stmt) = trimmed.strip_suffix(';') {
            cur.push_str(stmt);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_string());
            }
            cur.clear();
        } else {
            cur.push_str(trimmed);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Checksum of a migration's text (FNV-1a 64, hex).
pub fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The settings of a `SET a = 1, b = 'x'` statement, or `None` when `stmt` is no `SET`.
pub fn set_statement(stmt: &str) -> Option<Vec<(String, String)>> {
    let rest = stmt.trim();
    let head = rest.get(..4)?;
    if !head.eq_ignore_ascii_case("SET ") {
        return None;
    }
    let mut out = Vec::new();
    // Plain `name = value` pairs only: a value with a comma in it is not supported.
    for item in rest[4..].split(',') {
        let (name, value) = item.split_once('=')?;
        let value = value.trim();
        let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
        out.push((name.trim().to_string(), value.to_string()));
    }
    Some(out)
}

/// The retention in days that a TTL clause `toDateTime(event_time) + toIntervalDay(N)` (as
/// ClickHouse prints it in `system.tables.engine_full`) sets, or `None` when the table has no
/// such TTL.
pub fn events_ttl_days(engine_full: &str) -> Option<u32> {
    let ttl = &engine_full[engine_full.find(" TTL ")? + 5..];
    let rest = ttl.trim_start().strip_prefix("toDateTime(event_time) + ")?;
    let digits = rest.strip_prefix("toIntervalDay(")?;
    let end = digits.find(')')?;
    digits[..end].trim().parse().ok()
}

/// The statement that sets the raw-event retention to `days`.
pub fn events_ttl_statement(days: u32) -> String {
    format!("ALTER TABLE events MODIFY TTL toDateTime(event_time) + INTERVAL {days} DAY")
}

#[derive(Debug, Row, Deserialize)]
struct Applied {
    name: String,
    checksum: String,
}

/// What `migrate` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Newly applied migrations.
    pub applied: Vec<String>,
    /// Already applied before.
    pub skipped: Vec<String>,
    /// The raw-event retention changed: (days before, if the table had a TTL; days now).
    pub retention_changed: Option<(Option<u32>, u32)>,
}

/// Creates the database if needed, applies pending migrations and sets the raw-event retention.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<Report, Error> {
    let mut report = migrate_files(cfg, MIGRATIONS).await?;
    report.retention_changed = apply_events_retention(cfg).await?;
    Ok(report)
}

/// Sets the TTL of `events` to `cfg.events_retention_days` unless it already is; returns the
/// change made. Changing it makes ClickHouse re-evaluate the TTL of existing parts in the
/// background (`materialize_ttl_after_modify`), so a shorter retention drops old rows soon.
pub async fn apply_events_retention(cfg: &ClickHouseConfig) -> Result<Option<(Option<u32>, u32)>, Error> {
    let db = crate::sink::clickhouse::client(cfg).with_validation(false);
    let engine_full: String = db
        .query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'events'")
        .fetch_optional()
        .await?
        .ok_or_else(|| Error::Migration { name: "events retention".into(), reason: "table events does not exist".into() })?;
    let want = cfg.events_retention_days;
    let now = events_ttl_days(&engine_full);
    if now == Some(want) {
        return Ok(None);
    }
    db.query_raw(&events_ttl_statement(want))
        .execute()
        .await
        .map_err(|e| Error::Migration { name: "events retention".into(), reason: e.to_string() })?;
    tracing::info!(from_days = ?now, to_days = want, "events retention changed");
    Ok(Some((now, want)))
}

/// As [`migrate`], with an explicit list of `(name, text)` (tests).
pub async fn migrate_files(cfg: &ClickHouseConfig, files: &[(&str, &str)]) -> Result<Report, Error> {
    let server = crate::sink::clickhouse::client(&ClickHouseConfig { database: "default".into(), ..cfg.clone() });
    server.query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", cfg.database)).execute().await?;
    let db = crate::sink::clickhouse::client(cfg);
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name String, checksum String, applied_at DateTime DEFAULT now()) \
         ENGINE = MergeTree ORDER BY name",
    )
    .execute()
    .await?;
    let applied: Vec<Applied> =
        db.clone().with_validation(false).query("SELECT name, checksum FROM schema_migrations ORDER BY name").fetch_all().await?;
    let mut report = Report::default();
    for (name, text) in files {
        let sum = checksum(text);
        if let Some(prev) = applied.iter().find(|a| a.name == *name) {
            if prev.checksum != sum {
                return Err(Error::Migration {
                    name: name.to_string(),
                    reason: format!(
                        "was edited after it was applied (checksum {} now, {} when applied); add a new migration instead",
                        sum, prev.checksum
                    ),
                });
            }
            report.skipped.push(name.to_string());
            continue;
        }
        let mut file_db = db.clone();
        for stmt in statements(text) {
            if let Some(settings) = set_statement(&stmt) {
                for (k, v) in settings {
                    file_db = file_db.with_setting(k, v);
                }
                continue;
            }
            file_db.query_raw(&stmt).execute().await.map_err(|e| Error::Migration { name: name.to_string(), reason: e.to_string() })?;
        }
        db.query("INSERT INTO schema_migrations (name, checksum) VALUES (?, ?)").bind(*name).bind(&sum).execute().await?;
        tracing::info!(migration = name, "migration applied");
        report.applied.push(name.to_string());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let sql = "-- header\nCREATE TABLE a (x UInt8) -- trailing\nENGINE = Memory;\n\nCREATE VIEW v AS SELECT ';' AS s;\n";
        let s = statements(sql);
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE a"));
        assert!(!s[0].contains("trailing"));
        assert!(s[1].contains("';'"));
    }

    #[test]
    fn the_shipped_migrations_are_embedded_in_order() {
        assert!(!MIGRATIONS.is_empty());
        let names: Vec<&str> = MIGRATIONS.iter().map(|m| m.0).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(MIGRATIONS[0].1.contains("CREATE TABLE IF NOT EXISTS events"));
    }

    #[test]
    fn set_statements_become_settings() {
        assert_eq!(
            set_statement("SET allow_experimental_refreshable_materialized_view = 1, mutations_sync = '2'"),
            Some(vec![
                ("allow_experimental_refreshable_materialized_view".to_string(), "1".to_string()),
                ("mutations_sync".to_string(), "2".to_string())
            ])
        );
        assert_eq!(set_statement("SELECT 1"), None);
        assert_eq!(set_statement("SETTINGS x"), None);
        assert_eq!(set_statement("ALTER TABLE t MODIFY SETTING a = 1"), None);
    }

    #[test]
    fn reads_the_events_ttl_as_clickhouse_prints_it() {
        let engine = "ReplacingMergeTree(version) PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, event_id) \
                      TTL toDateTime(event_time) + toIntervalDay(400) SETTINGS index_granularity = 8192";
        assert_eq!(events_ttl_days(engine), Some(400));
        assert_eq!(events_ttl_days("MergeTree ORDER BY event_time SETTINGS index_granularity = 8192"), None);
        assert_eq!(events_ttl_days("MergeTree ORDER BY t TTL toDateTime(t) + toIntervalDay(3)"), None);
        assert_eq!(events_ttl_statement(30), "ALTER TABLE events MODIFY TTL toDateTime(event_time) + INTERVAL 30 DAY");
    }

    #[test]
    fn the_shipped_migrations_only_use_sets_the_runner_understands() {
        for (name, text) in MIGRATIONS {
            for stmt in statements(text) {
                if stmt.trim_start().to_ascii_uppercase().starts_with("SET ") {
                    assert!(set_statement(&stmt).is_some(), "{name}: unparsable SET: {stmt}");
                }
            }
        }
    }
}
