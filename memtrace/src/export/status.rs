//! memtrace's own state: events it lost, probes attached, its build, each collector's
//! health and time, symbol reloads, and the notable events read from the kernel.

use memtrace_common::Counter;
use prometheus::proto::{MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family, gauge},
};
use crate::{
    bpf::{ProbeStatus, Snapshot},
    profile::live::Profiler,
};

/// The heap profile's own losses, read from the [`Profiler`] (a copy: its lock is not held
/// while the maps' families are built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileLosses {
    /// [`Profiler::live_full`].
    pub live_full: u64,
    /// [`Profiler::stacks_full`].
    pub stacks_full: u64,
}

impl From<&Profiler> for ProfileLosses {
    fn from(p: &Profiler) -> Self {
        ProfileLosses {
            live_full: p.live_full,
            stacks_full: p.stacks_full,
        }
    }
}

impl Exporter {
    /// Lost events, probes attached, build information.
    pub(super) fn status_families(
        &self,
        snap: &Snapshot,
        probes: &[ProbeStatus],
        profile: Option<ProfileLosses>,
        out: &mut Vec<MetricFamily>,
    ) {
        // memtrace itself.
        let mut lost = vec![
            counter(
                &[("reason", "map_full")],
                snap.counter(Counter::MapFull) as f64,
            ),
            counter(
                &[("reason", "ringbuf_full")],
                snap.counter(Counter::RingbufFull) as f64,
            ),
            counter(&[("reason", "recursion")], snap.recursion_misses as f64),
        ];
        if let Some(p) = profile {
            lost.extend([
                counter(
                    &[("reason", "profile_live_full")],
                    (snap.counter(Counter::ProfileLiveFull) + p.live_full) as f64,
                ),
                counter(
                    &[("reason", "profile_ringbuf_full")],
                    snap.counter(Counter::ProfileRingFull) as f64,
                ),
                counter(&[("reason", "profile_stacks_full")], p.stacks_full as f64),
            ]);
        }
        out.push(family(
            names::EVENTS_LOST_TOTAL,
            "Events memtrace could not record as usual: map_full (counted under an \"other\" label instead), ringbuf_full (notable event dropped), recursion (not counted: an interrupt on a CPU where the same program was running); with heap profiling on, profile_live_full (a sample not taken: the live-sample map was full), profile_ringbuf_full (a sample not taken, or a sample's free not reported: that sample ages out), profile_stacks_full (a sample counted in its allocator's [other] stack: the stack table was full).",
            MetricType::COUNTER,
            lost,
        ));
        out.push(family(
            names::PROBE_ATTACHED,
            "1 if the probe is attached, 0 if this kernel does not offer it.",
            MetricType::GAUGE,
            probes
                .iter()
                .map(|p| gauge(&[("probe", &p.probe)], if p.attached() { 1.0 } else { 0.0 }))
                .collect(),
        ));
        out.push(family(
            names::BUILD_INFO,
            "Always 1; labels say which memtrace runs on which kernel.",
            MetricType::GAUGE,
            vec![gauge(
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("kernel", &self.kernel),
                ],
                1.0,
            )],
        ));
    }
}

/// `memtrace_notable_events_total` from ((allocator, kind), count) pairs.
pub fn notable_family(counts: &[((&str, &str), u64)]) -> MetricFamily {
    family(
        names::NOTABLE_EVENTS_TOTAL,
        "Notable events read from the kernel: kind=\"failure\" for every failed allocation, kind=\"large\" for allocations at or above --events.min-bytes / --events.min-order.",
        MetricType::COUNTER,
        counts
            .iter()
            .map(|((a, k), n)| counter(&[("allocator", a), ("kind", k)], *n as f64))
            .collect(),
    )
}

/// `memtrace_collector_up{collector}` and `memtrace_collector_duration_seconds{collector}` of
/// one scrape's collectors.
pub fn collector_families(outcomes: &[super::collect::Outcome]) -> Vec<MetricFamily> {
    vec![
        family(
            names::COLLECTOR_UP,
            "1 if the collector read its source on this scrape, 0 if it failed: its metrics are then absent from this scrape (the daemon's log says why, once, when it starts failing).",
            MetricType::GAUGE,
            outcomes
                .iter()
                .map(|o| {
                    gauge(
                        &[("collector", o.collector)],
                        if o.result.is_ok() { 1.0 } else { 0.0 },
                    )
                })
                .collect(),
        ),
        family(
            names::COLLECTOR_DURATION_SECONDS,
            "How long the collector took on this scrape.",
            MetricType::GAUGE,
            outcomes
                .iter()
                .map(|o| gauge(&[("collector", o.collector)], o.took.as_secs_f64()))
                .collect(),
        ),
    ]
}

/// `memtrace_symbol_reloads_total`: reloads of the kernel's symbols after a module change.
pub fn symbol_reloads_family(reloads: u64) -> MetricFamily {
    family(
        names::SYMBOL_RELOADS_TOTAL,
        "Times the kernel's symbol table (/proc/kallsyms) was reloaded because the loaded modules changed (/proc/modules).",
        MetricType::COUNTER,
        vec![counter(&[], reloads as f64)],
    )
}
