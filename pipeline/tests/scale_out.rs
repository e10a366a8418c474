//! Scale-out: two `journey process` instances in one group split the partitions; stopping one
//! (SIGTERM) hands its partitions and their state to the other, and nothing is lost.

// An unexpected error should fail the test where it happens.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_of_two_instances_hands_over_without_loss() {
    let (cfg, events) = child_stream(37, |_| {}).await;

    let mut a = spawn_process(&cfg, &[]);
    let mut b = spawn_process(&cfg, &["--exit-when-idle", "8s"]);
    let before = wait_for_rows(&cfg, 4000, &mut a).await;
    assert!(before < CHILD_STREAM_EVENTS, "the hand-over must happen mid-stream ({before} rows already)");
    // Graceful stop of one instance: it flushes, checkpoints, commits and leaves the group.
    let status = std::process::Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap();
    assert!(status.success());
    let a_status = wait_exit(&mut a, Duration::from_secs(60)).await;
    assert!(a_status.success(), "stopped instance failed: {a_status}");
    let b_status = wait_exit(&mut b, Duration::from_secs(180)).await;
    assert!(b_status.success(), "remaining instance failed: {b_status}");

    assert_same(&expected(&cfg, &events), &in_clickhouse(&cfg).await);
}
