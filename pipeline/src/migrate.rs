//! `journey migrate`: applies `sql/migrations/*.sql` in name order, once each.
//!
//! Applied migrations are recorded in `schema_migrations` with a checksum of their text; a
//! migration edited after it was applied is refused (write a new migration instead). Running
//! it again is a no-op, so it is safe at every start-up and from several hosts (statements are
//! `IF NOT EXISTS`).

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
}

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<Report, Error> {
    migrate_files(cfg, MIGRATIONS).await
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
        for stmt in statements(text) {
            db.query(&stmt).execute().await.map_err(|e| Error::Migration { name: name.to_string(), reason: e.to_string() })?;
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
}
