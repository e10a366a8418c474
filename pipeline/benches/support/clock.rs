//! The benchmarks' clock: wall time by default, or with `CLOCK=cpu` the CPU time of the
//! benchmarking thread, which other processes on a shared machine disturb much less (they
//! still share caches and memory bandwidth). CPU time comes from `/proc/thread-self/stat`,
//! in clock ticks of 10 ms, so it suits iterations of a second or more.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use std::time::{Duration, Instant};

/// Wall or thread CPU time, chosen by `CLOCK`.
pub struct Clock {
    cpu: bool,
    wall: WallTime,
}

impl Clock {
    /// The clock named by `CLOCK` (`cpu`, else wall time).
    pub fn from_env() -> Clock {
        Clock { cpu: std::env::var("CLOCK").is_ok_and(|v| v == "cpu"), wall: WallTime }
    }

    /// What the figures measure, for the report.
    pub fn name(&self) -> &'static str {
        if self.cpu {
            "thread CPU time"
        } else {
            "wall time"
        }
    }
}

/// User plus system time of this thread, in ticks (Linux's USER_HZ, 100 per second).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

impl Measurement for Clock {
    type Intermediate = (Instant, u64);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        (Instant::now(), if self.cpu { thread_cpu_ticks() } else { 0 })
    }

    fn end(&self, (started, ticks): Self::Intermediate) -> Self::Value {
        if self.cpu {
            Duration::from_millis(10 * thread_cpu_ticks().saturating_sub(ticks))
        } else {
            started.elapsed()
        }
    }

    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }

    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}
