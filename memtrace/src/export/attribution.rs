//! Attribution series: allocations and bytes per calling kernel function, task name and
//! memory cgroup, each bounded per allocator (top N plus `other`).

use std::collections::BTreeMap;

use memtrace_common::Allocator;
use prometheus::proto::{self, MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family},
};
use crate::{bpf::Snapshot, label::cardinality::Limiter};

/// Per allocator and label value: (allocations, bytes).
type UsageByLabel = BTreeMap<Allocator, BTreeMap<String, Vec<u64>>>;

/// Adds `u` to `label`'s usage under allocator `a`.
fn add_usage(m: &mut UsageByLabel, a: Allocator, label: String, u: &memtrace_common::Usage) {
    let v = m
        .entry(a)
        .or_default()
        .entry(label)
        .or_insert_with(|| vec![0, 0]);
    v[0] += u.allocations;
    v[1] += u.bytes;
}

/// The `_allocations_total` and `_allocated_bytes_total` series of one attribution label,
/// bounded per allocator by `limiters` (created with `max` slots on first use).
fn usage_series(
    by_label: &UsageByLabel,
    limiters: &mut BTreeMap<Allocator, Limiter>,
    max: usize,
    label: &str,
) -> (Vec<proto::Metric>, Vec<proto::Metric>) {
    let (mut allocs, mut bytes) = (Vec::new(), Vec::new());
    for (a, current) in by_label {
        let series = limiters
            .entry(*a)
            .or_insert_with(|| Limiter::new(max))
            .apply(current, 0);
        for (value, v) in series {
            let pairs = [("allocator", a.name()), (label, value.as_str())];
            allocs.push(counter(&pairs, v[0] as f64));
            bytes.push(counter(&pairs, v[1] as f64));
        }
    }
    (allocs, bytes)
}

impl Exporter {
    /// The function a call site belongs to (never its address).
    fn function(&self, addr: u64) -> String {
        if addr == 0 {
            return crate::label::OTHER.to_string();
        }
        match self.symbols() {
            Some(s) => s.function(addr),
            None => crate::label::UNKNOWN.to_string(),
        }
    }

    /// Attribution series: per call site (function), per task name and per memory cgroup,
    /// each bounded per allocator by its limiter.
    pub(super) fn attribution(&mut self, snap: &Snapshot, out: &mut Vec<MetricFamily>) {
        let mut by_function = UsageByLabel::new();
        for ((a, addr), u) in &snap.callsites {
            let f = self.function(*addr);
            add_usage(&mut by_function, *a, f, u);
        }
        let mut by_comm = UsageByLabel::new();
        for ((a, comm), u) in &snap.comms {
            let c = if comm.is_empty() {
                crate::label::OTHER.to_string()
            } else {
                comm.clone()
            };
            add_usage(&mut by_comm, *a, c, u);
        }
        let mut by_cgroup = UsageByLabel::new();
        if !snap.cgroups.is_empty() {
            let paths = match &mut self.cgroup_paths {
                Some(r) => r.labels(snap.cgroups.keys().map(|(_, id)| *id)),
                None => Default::default(),
            };
            for ((a, id), u) in &snap.cgroups {
                let path = paths
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| crate::label::UNKNOWN.to_string());
                add_usage(&mut by_cgroup, *a, path, u);
            }
        }
        let l = self.limits;
        let (site_allocs, site_bytes) =
            usage_series(&by_function, &mut self.callsites, l.callsites, "function");
        let (proc_allocs, proc_bytes) =
            usage_series(&by_comm, &mut self.processes, l.processes, "comm");
        let (cg_allocs, cg_bytes) =
            usage_series(&by_cgroup, &mut self.cgroups, l.cgroups, "cgroup");
        out.push(family(
            names::CALLSITE_ALLOCATIONS_TOTAL,
            "Allocations per calling kernel function (top functions per allocator, plus other).",
            MetricType::COUNTER,
            site_allocs,
        ));
        out.push(family(
            names::CALLSITE_ALLOCATED_BYTES_TOTAL,
            "Bytes allocated per calling kernel function (top functions per allocator, plus other).",
            MetricType::COUNTER,
            site_bytes,
        ));
        out.push(family(
            names::PROCESS_ALLOCATIONS_TOTAL,
            "Allocations per task name (comm; top names per allocator, plus other).",
            MetricType::COUNTER,
            proc_allocs,
        ));
        out.push(family(
            names::PROCESS_ALLOCATED_BYTES_TOTAL,
            "Bytes allocated per task name (comm; top names per allocator, plus other).",
            MetricType::COUNTER,
            proc_bytes,
        ));
        out.push(family(
            names::CGROUP_ALLOCATIONS_TOTAL,
            "Allocations per memory cgroup of the allocating task (path below the memory hierarchy's root; top cgroups per allocator, plus other). Only with --attribution.cgroups.",
            MetricType::COUNTER,
            cg_allocs,
        ));
        out.push(family(
            names::CGROUP_ALLOCATED_BYTES_TOTAL,
            "Bytes allocated per memory cgroup of the allocating task (top cgroups per allocator, plus other). Only with --attribution.cgroups.",
            MetricType::COUNTER,
            cg_bytes,
        ));
    }
}
