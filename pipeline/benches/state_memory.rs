//! Memory of the identity state per known customer: builds the identity graph for N
//! customers, each with a CRM id, a phone number and an app install linked by events, and
//! reports the resident-memory growth per customer (Linux /proc/self/statm).
//! Run: `cargo bench -p journey-pipeline --bench state_memory` (N = 1,000,000).

use journey_pipeline::pii::Pseudonymizer;
use journey_pipeline::stitch::{IdKind, Ident, IdentityGraph};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::var("CUSTOMERS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let pseudo = Pseudonymizer::new(b"bench-key-0123456789abcdef").expect("key");
    // Identifiers are prepared first so only the graph's own growth is measured.
    let ids: Vec<[Ident; 3]> = (0..n)
        .map(|i| {
            [
                Ident { kind: IdKind::Customer, value: format!("CUST{i:08}") },
                Ident { kind: IdKind::Msisdn, value: pseudo.hash(&format!("79{i:09}")) },
                Ident { kind: IdKind::App, value: format!("app-{i:012x}") },
            ]
        })
        .collect();
    let before = rss_bytes();
    let mut graph = IdentityGraph::new();
    let started = std::time::Instant::now();
    for c in &ids {
        graph.observe(&c[..2]);
        graph.observe(&[c[0].clone(), c[2].clone()]);
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    println!(
        "identity graph: {} customers, {} identifiers, {:.0} bytes per customer (RSS growth), built in {:.2?} ({:.0} links/s)",
        graph.customers(),
        graph.identifiers(),
        (after.saturating_sub(before)) as f64 / n as f64,
        elapsed,
        (2 * n) as f64 / elapsed.as_secs_f64()
    );
}
