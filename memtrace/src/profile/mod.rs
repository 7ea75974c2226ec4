//! Kernel heap profiles: live and allocated bytes per kernel stack, estimated from
//! allocations the programs sample by bytes (see [`memtrace_common::SampleGaps`]).
//!
//! [`weight`] is the estimator, [`live`] the state fed from the profile ring buffer,
//! [`growth`] the leak test, [`report`] the symbolized profile that [`pprof`] and [`folded`]
//! encode.

mod args;
pub mod folded;
pub mod growth;
pub mod live;
pub mod pprof;
pub mod report;
pub mod weight;

use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};

use crate::label::symbolize::Symbolizer;
pub use args::ProfileArgs;
use live::Profiler;
use report::HeapProfile;

/// Where the daemon serves the heap profile, as Go services serve theirs (Parca and
/// Pyroscope scrape this path).
pub const HEAP_PATH: &str = "/debug/pprof/heap";
/// Where the daemon serves its leak suspects, as JSON.
pub const LEAKS_PATH: &str = "/api/leaks";

/// CLOCK_MONOTONIC in nanoseconds: the clock of the programs' `bpf_ktime_get_ns`, which
/// dates every sample.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The profile of everything sampled since `started` (wall clock), symbolized.
pub fn report_since(
    p: &Profiler,
    symbols: Option<&Symbolizer>,
    started: std::time::SystemTime,
) -> HeapProfile {
    let start = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let elapsed = started.elapsed().unwrap_or_default();
    p.report(
        symbols,
        start.as_nanos() as i64,
        elapsed.as_nanos().min(i64::MAX as u128) as i64,
    )
}

/// Reads every record currently in the profile ring buffer into `p`, without blocking;
/// returns how many.
pub fn drain_into(ring: &mut RingBuf<MapData>, p: &mut Profiler) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        p.record(&item);
        n += 1;
    }
    n
}

/// How often the profile ring buffer is drained: the programs wake its reader only when it
/// is a quarter full (see the programs' `submit_flags`).
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Feeds the profile ring buffer into `p` every [`DRAIN_INTERVAL`], and whenever the kernel
/// signals that it is filling. If polling the ring fails, it stops and says why in
/// [`Profiler::drain_stopped`] (the daemon's `profile` collector reports it).
pub async fn drain(ring: RingBuf<MapData>, p: Arc<Mutex<Profiler>>) {
    let why = drain_until_error(ring, &p).await;
    crate::sync::lock(&p).drain_stopped = Some(why);
}

/// [`drain`] until polling fails: why.
async fn drain_until_error(ring: RingBuf<MapData>, p: &Mutex<Profiler>) -> String {
    let mut fd = match crate::bpf::events::poll(ring) {
        Ok(fd) => fd,
        Err(e) => return e.to_string(),
    };
    let mut every = tokio::time::interval(DRAIN_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The profiler is locked only if free: a blocking job (a heap report symbolizing its
    // stacks) may hold it for a while, and this task runs on a runtime worker. The records
    // wait in the ring meanwhile, and the next tick takes them.
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Some(mut p) = crate::sync::try_lock(p) {
                    drain_into(fd.get_mut(), &mut p);
                }
            }
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => return format!("polling the profile ring buffer failed: {e}"),
                };
                if let Some(mut p) = crate::sync::try_lock(p) {
                    drain_into(guard.get_inner_mut(), &mut p);
                }
                guard.clear_ready();
            }
        }
    }
}
