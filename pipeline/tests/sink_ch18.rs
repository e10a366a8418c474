//! The sink against a real ClickHouse server (Debian's clickhouse-server 18.16, on a test
//! table; it predates the production schema): inserts with LZ4-compressed bodies are read back
//! exactly, and a server restart in the middle of a stream loses and duplicates nothing (the
//! sink retries until the server is back; rows re-sent after a lost acknowledgement collapse
//! by key), and an insert into a database that does not exist yet waits for it.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use journey_pipeline::sink::clickhouse::{Backoff, ClickHouseSink};
use std::time::Duration;
use support::*;

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct TestRow {
    id: u64,
    name: String,
    at: u32,
}

fn client(db: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(ch18_url())
        .with_database(db)
        .with_compression(clickhouse::Compression::Lz4)
        .with_validation(false)
}

fn infra(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/infra.sh");
    let status = std::process::Command::new("bash").arg(script).args(args).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success(), "infra.sh {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_survive_a_server_restart_without_loss_or_duplicates() {
    let url = ch18_url();
    require_tcp("clickhouse-server 18.16", url.trim_start_matches("http://"));
    let db = unique("sink18");
    client("default").query(&format!("CREATE DATABASE {db}")).execute().await.unwrap();
    let ch = client(&db);
    ch.query("CREATE TABLE t (id UInt64, name String, at UInt32) ENGINE = ReplacingMergeTree ORDER BY id").execute().await.unwrap();
    let sink = ClickHouseSink::new(
        ch.clone(),
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), give_up_after: None },
        false,
    );

    // A batch with text that stresses the wire format: blank lines, NUL bytes, UTF-8.
    let odd: Vec<TestRow> = (0..3).map(|i| TestRow { id: 1_000_000 + i, name: format!("line\n\nbreak\0nul é{i}"), at: i as u32 }).collect();
    sink.insert("t", &odd, "odd").await.unwrap();
    let back: Vec<TestRow> = ch.query("SELECT id, name, at FROM t WHERE id >= 1000000 ORDER BY id").fetch_all().await.unwrap();
    assert_eq!(back, odd);

    let per = 1000u64;
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = restarted.clone();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::spawn_blocking(|| {
            infra(&["down", "ch18"]);
            std::thread::sleep(Duration::from_secs(2));
            infra(&["up", "ch18"]);
        })
        .await
        .unwrap();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Stream batches until the restart is over, then a few more.
    let mut during_restart = 0;
    let mut after = 0;
    let mut b = 0u64;
    while after < 5 {
        assert!(b < 2000, "the restart did not finish");
        if restarted.load(std::sync::atomic::Ordering::SeqCst) {
            after += 1;
        } else if b > 0 {
            during_restart += 1;
        }
        let rows: Vec<TestRow> =
            (0..per).map(|i| TestRow { id: b * per + i, name: format!("row {}", b * per + i), at: b as u32 }).collect();
        sink.insert("t", &rows, &format!("b{b}")).await.expect("the sink retries transient errors until the server is back");
        b += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batches = b;
    assert!(restarted.load(std::sync::atomic::Ordering::SeqCst), "the stream must outlast the restart");
    assert!(during_restart > 0, "some batches must be sent while the server restarts");
    restart.await.unwrap();
    let n: u64 = ch.query("SELECT count() FROM t FINAL WHERE id < 1000000").fetch_one().await.unwrap();
    assert_eq!(n, batches * per, "every row once");
    let distinct: u64 = ch.query("SELECT uniqExact(id) FROM t WHERE id < 1000000").fetch_one().await.unwrap();
    assert_eq!(distinct, batches * per, "nothing lost");
    client("default").query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
}

/// A server that is shutting down answers for a moment that the database does not exist; the
/// sink must hold the batch until it is back, not give up. Here the database really is missing
/// when the insert starts, and appears a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_into_a_missing_database_waits_until_it_exists() {
    let url = ch18_url();
    require_tcp("clickhouse-server 18.16", url.trim_start_matches("http://"));
    let db = unique("sink18_late");
    let sink = ClickHouseSink::new(
        client(&db),
        Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(300), give_up_after: None },
        false,
    );
    let create = {
        let db = db.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client("default").query(&format!("CREATE DATABASE {db}")).execute().await.unwrap();
            client(&db)
                .query("CREATE TABLE t (id UInt64, name String, at UInt32) ENGINE = ReplacingMergeTree ORDER BY id")
                .execute()
                .await
                .unwrap();
        })
    };
    let rows: Vec<TestRow> = (0..100).map(|i| TestRow { id: i, name: format!("row {i}"), at: 7 }).collect();
    let started = std::time::Instant::now();
    sink.insert("t", &rows, "late").await.expect("an unknown database is retried until it exists");
    assert!(started.elapsed() >= Duration::from_millis(900), "the insert cannot have landed before the database existed");
    create.await.unwrap();
    let back: Vec<TestRow> = client(&db).query("SELECT id, name, at FROM t FINAL ORDER BY id").fetch_all().await.unwrap();
    assert_eq!(back, rows);
    client("default").query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
}
