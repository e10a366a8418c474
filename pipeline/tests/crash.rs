//! Effectively-once across a crash: `journey process` is killed with SIGKILL mid-stream and
//! restarted; ClickHouse must then hold exactly what the batch computation gives (nothing
//! lost, nothing duplicated, by session id and version).

mod support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    // The restarted process is the same instance: static membership gives it its partitions
    // back at once (a dynamic member killed with SIGKILL would first have to time out).
    let (cfg, events) = child_stream(31, |cfg| cfg.process.instance_id = Some(unique("instance"))).await;

    let mut first = spawn_process(&cfg, &[]);
    // Kill it once it has written part of the stream (and long before it is done).
    wait_for_rows(&cfg, 4000, &mut first).await;
    first.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye
    first.wait().unwrap();
    let before = event_rows(&cfg).await;
    assert!(before < CHILD_STREAM_EVENTS, "the crash must happen mid-stream ({before} rows already)");

    let mut second = spawn_process(&cfg, &["--exit-when-idle", "6s"]);
    let status = wait_exit(&mut second, Duration::from_secs(180)).await;
    assert!(status.success(), "restarted process failed: {status}");

    let got = in_clickhouse(&cfg).await;
    assert_same(&expected(&cfg, &events), &got);
    // No (session id, version) twice among the current sessions either.
    let ch = journey_pipeline::sink::clickhouse::client(&cfg.clickhouse);
    let dup: u64 = ch
        .query("SELECT count() FROM (SELECT session_id FROM sessions FINAL GROUP BY session_id HAVING count() > 1)")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dup, 0);
}
