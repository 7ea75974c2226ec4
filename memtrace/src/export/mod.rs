//! The one place memtrace's Prometheus metrics are named and built. Kernel aggregates are
//! read at scrape time and emitted as constant metric families (the ebpf_exporter model);
//! process metrics come from the prometheus crate's process collector.

pub mod record;
pub mod scrape;

use std::collections::BTreeMap;

use memtrace_common::{
    Allocator, Counter, ORDER_SLOTS, SIZE_BUCKETS, SizeStats, size_bucket_upper,
};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use crate::{
    bpf::{ProbeStatus, Snapshot},
    label::{cardinality::Limiter, gfp::GfpTable},
};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A Prometheus histogram from a [`SizeStats`]: cumulative buckets at the powers of two from
/// 8 B to 4 MiB, sum = bytes allocated.
fn histogram(pairs: &[(&str, &str)], s: &SizeStats) -> proto::Metric {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(SIZE_BUCKETS - 1);
    for (idx, n) in s.buckets.iter().enumerate() {
        cumulative += n;
        if let Some(le) = size_bucket_upper(idx) {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
    }
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(s.allocated_bytes as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

/// Every kernel-derived family of one scrape: the maps, read now, and the limits collector
/// (which, failing, says so in `memtrace_collector_up` instead of failing the scrape).
pub fn kernel_families(
    tracer: &crate::bpf::Tracer,
    exporter: &mut Exporter,
) -> anyhow::Result<Vec<MetricFamily>> {
    let snap = tracer.snapshot()?;
    let mut f = exporter.families(&snap, tracer.probes());
    match crate::limits::collect(&crate::limits::Sources::live()) {
        Ok(l) => {
            f.extend(limits_families(&l));
            f.push(collector_up("limits", true));
        }
        Err(e) => {
            tracing::warn!("limits collector failed: {e}");
            f.push(collector_up("limits", false));
        }
    }
    Ok(f)
}

/// `memtrace_notable_events_total` from ((allocator, kind), count) pairs.
pub fn notable_family(counts: &[((&str, &str), u64)]) -> MetricFamily {
    family(
        "memtrace_notable_events_total",
        "Notable events read from the kernel: kind=\"failure\" for every failed allocation, kind=\"large\" for allocations at or above --events.min-bytes / --events.min-order.",
        MetricType::COUNTER,
        counts
            .iter()
            .map(|((a, k), n)| counter(&[("allocator", a), ("kind", k)], *n as f64))
            .collect(),
    )
}

/// Gauges of what can be allocated right now, from [`crate::limits::Limits`].
pub fn limits_families(l: &crate::limits::Limits) -> Vec<MetricFamily> {
    let mut free_blocks = Vec::new();
    let mut largest = Vec::new();
    for z in &l.zones {
        let node = z.node.to_string();
        for (order, n) in z.free_blocks.iter().enumerate() {
            free_blocks.push(gauge(
                &[
                    ("node", &node),
                    ("zone", &z.zone),
                    ("order", &order.to_string()),
                ],
                *n as f64,
            ));
        }
        largest.push(gauge(
            &[("node", &node), ("zone", &z.zone)],
            z.largest_free_block_bytes as f64,
        ));
    }
    let one = |v: u64| vec![gauge(&[], v as f64)];
    let mut out = vec![
        family(
            "memtrace_free_blocks",
            "Free blocks in the buddy allocator, by node, zone and order (/proc/buddyinfo).",
            MetricType::GAUGE,
            free_blocks,
        ),
        family(
            "memtrace_largest_free_block_bytes",
            "The largest physically contiguous free block, by node and zone.",
            MetricType::GAUGE,
            largest,
        ),
        family(
            "memtrace_kmalloc_max_bytes",
            "The largest kmalloc this kernel can serve: page size << MAX_PAGE_ORDER.",
            MetricType::GAUGE,
            one(l.kmalloc_max_bytes.value),
        ),
        family(
            "memtrace_kmalloc_max_cache_bytes",
            "The largest kmalloc served from a slab cache; larger ones go to the page allocator.",
            MetricType::GAUGE,
            l.kmalloc_max_cache_bytes
                .as_ref()
                .map(|f| one(f.value))
                .unwrap_or_default(),
        ),
        family(
            "memtrace_page_max_order",
            "The page allocator's highest order (MAX_PAGE_ORDER).",
            MetricType::GAUGE,
            one(u64::from(l.max_order.value)),
        ),
        family(
            "memtrace_vmalloc_total_bytes",
            "Size of the vmalloc address range (VmallocTotal).",
            MetricType::GAUGE,
            one(l.vmalloc_total_bytes.value),
        ),
        family(
            "memtrace_vmalloc_used_bytes",
            "vmalloc memory in use (VmallocUsed).",
            MetricType::GAUGE,
            one(l.vmalloc_used_bytes.value),
        ),
        family(
            "memtrace_ram_total_bytes",
            "RAM (MemTotal): no vmalloc can be larger than the memory that backs it.",
            MetricType::GAUGE,
            one(l.ram_total_bytes.value),
        ),
        family(
            "memtrace_cma_total_bytes",
            "Contiguous memory allocator area (CmaTotal), when the kernel has CMA.",
            MetricType::GAUGE,
            l.cma_total_bytes
                .as_ref()
                .map(|f| one(f.value))
                .unwrap_or_default(),
        ),
    ];
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// `memtrace_collector_up{collector}`: whether a collector read its source on this scrape.
pub fn collector_up(collector: &str, up: bool) -> MetricFamily {
    family(
        "memtrace_collector_up",
        "1 if the collector read its source on this scrape, 0 if it failed (see the daemon's log).",
        MetricType::GAUGE,
        vec![gauge(
            &[("collector", collector)],
            if up { 1.0 } else { 0.0 },
        )],
    )
}

/// What turns raw kernel aggregates into labelled series: the running kernel's names for
/// GFP values and migrate types, its page-block order, and the bounded `cache` label.
pub struct Exporter {
    pub gfp: Option<GfpTable>,
    pub migratetypes: BTreeMap<u32, String>,
    pub pageblock_order: Option<u32>,
    pub kernel: String,
    caches: Limiter,
    /// Call sites become function names through this; `None` when kallsyms is unreadable
    /// (then every call site reads `function="unknown"`).
    pub symbols: Option<crate::label::symbolize::Cached>,
    callsites: BTreeMap<Allocator, Limiter>,
    processes: BTreeMap<Allocator, Limiter>,
    cgroups: BTreeMap<Allocator, Limiter>,
    limits: LabelLimits,
    /// Memory cgroup ids become paths through this; `None` when no memory hierarchy is
    /// mounted (then every cgroup reads `cgroup="unknown"`).
    cgroup_paths: Option<crate::label::cgroup::Resolver>,
}

/// Bounds of the attribution labels.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    pub caches: usize,
    pub callsites: usize,
    pub processes: usize,
    pub cgroups: usize,
}

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
    pub fn new(
        gfp: Option<GfpTable>,
        migratetypes: BTreeMap<u32, String>,
        pageblock_order: Option<u32>,
        kernel: String,
        limits: LabelLimits,
        symbols: Option<crate::label::symbolize::Cached>,
    ) -> Self {
        Exporter {
            gfp,
            migratetypes,
            pageblock_order,
            kernel,
            caches: Limiter::new(limits.caches),
            symbols,
            callsites: BTreeMap::new(),
            processes: BTreeMap::new(),
            cgroups: BTreeMap::new(),
            limits,
            cgroup_paths: None,
        }
    }

    /// An exporter for the running kernel: its GFP names (from tracefs), the tracer's
    /// migrate-type names, its page-block order and `/proc/kallsyms`. What cannot be read
    /// degrades to `other`/`unknown` labels, with a warning.
    pub fn for_running_kernel(migratetypes: BTreeMap<u32, String>, limits: LabelLimits) -> Self {
        let gfp = match GfpTable::from_kernel() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("GFP flags cannot be decoded ({e}); gfp labels will read \"other\"");
                None
            }
        };
        let symbols = match crate::label::symbolize::Cached::new(std::time::Duration::from_secs(10))
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "call sites cannot be symbolized ({e}); function labels read \"unknown\""
                );
                None
            }
        };
        Exporter::new(
            gfp,
            migratetypes,
            crate::kernel::pageblock_order(),
            crate::kernel::release(),
            limits,
            symbols,
        )
    }

    /// Names memory cgroups (the `cgroup` label) with `resolver`.
    pub fn with_cgroup_paths(mut self, resolver: crate::label::cgroup::Resolver) -> Self {
        self.cgroup_paths = Some(resolver);
        self
    }

    /// The function a call site belongs to (never its address).
    fn function(&mut self, addr: u64) -> String {
        if addr == 0 {
            return crate::label::OTHER.to_string();
        }
        match &mut self.symbols {
            Some(s) => s.get().function(addr),
            None => "unknown".to_string(),
        }
    }

    /// Attribution series: per call site (function), per task name and per memory cgroup,
    /// each bounded per allocator by its limiter.
    fn attribution(&mut self, snap: &Snapshot, out: &mut Vec<MetricFamily>) {
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
            "memtrace_callsite_allocations_total",
            "Allocations per calling kernel function (top functions per allocator, plus other).",
            MetricType::COUNTER,
            site_allocs,
        ));
        out.push(family(
            "memtrace_callsite_allocated_bytes_total",
            "Bytes allocated per calling kernel function (top functions per allocator, plus other).",
            MetricType::COUNTER,
            site_bytes,
        ));
        out.push(family(
            "memtrace_process_allocations_total",
            "Allocations per task name (comm; top names per allocator, plus other).",
            MetricType::COUNTER,
            proc_allocs,
        ));
        out.push(family(
            "memtrace_process_allocated_bytes_total",
            "Bytes allocated per task name (comm; top names per allocator, plus other).",
            MetricType::COUNTER,
            proc_bytes,
        ));
        out.push(family(
            "memtrace_cgroup_allocations_total",
            "Allocations per memory cgroup of the allocating task (path below the memory hierarchy's root; top cgroups per allocator, plus other). Only with --attribution.cgroups.",
            MetricType::COUNTER,
            cg_allocs,
        ));
        out.push(family(
            "memtrace_cgroup_allocated_bytes_total",
            "Bytes allocated per memory cgroup of the allocating task (top cgroups per allocator, plus other). Only with --attribution.cgroups.",
            MetricType::COUNTER,
            cg_bytes,
        ));
    }

    fn gfp_label(&self, raw: u64) -> String {
        GfpTable::label_of(self.gfp.as_ref(), raw)
    }

    fn migratetype_label(&self, mt: u32) -> String {
        if mt == u32::MAX {
            return "other".into();
        }
        self.migratetypes
            .get(&mt)
            .cloned()
            .unwrap_or_else(|| mt.to_string())
    }

    /// Builds every kernel-derived metric family from one snapshot.
    pub fn families(&mut self, snap: &Snapshot, probes: &[ProbeStatus]) -> Vec<MetricFamily> {
        let mut out = Vec::new();

        // Sizes, grouped by the allocator's composite GFP name (several raw values share one).
        let mut sizes: BTreeMap<(Allocator, String), SizeStats> = BTreeMap::new();
        for ((a, raw), s) in &snap.sizes {
            sizes
                .entry((*a, self.gfp_label(*raw)))
                .or_insert(SizeStats::ZERO)
                .add(s);
        }
        let of = |a: Allocator| sizes.iter().filter(move |((x, _), _)| *x == a);
        out.push(family(
            "memtrace_kmalloc_size_bytes",
            "Sizes of successful kmalloc allocations in bytes allocated (after slab rounding).",
            MetricType::HISTOGRAM,
            of(Allocator::Kmalloc)
                .map(|((_, g), s)| histogram(&[("gfp", g)], s))
                .collect(),
        ));
        out.push(family(
            "memtrace_kmalloc_requested_bytes_total",
            "Bytes callers asked kmalloc for; allocated minus requested is slab rounding waste.",
            MetricType::COUNTER,
            of(Allocator::Kmalloc)
                .map(|((_, g), s)| counter(&[("gfp", g)], s.requested_bytes as f64))
                .collect(),
        ));
        out.push(family(
            "memtrace_kmalloc_allocated_bytes_total",
            "Bytes kmalloc handed out, after rounding up to the slab object size.",
            MetricType::COUNTER,
            of(Allocator::Kmalloc)
                .map(|((_, g), s)| counter(&[("gfp", g)], s.allocated_bytes as f64))
                .collect(),
        ));
        let total = |a: Allocator| {
            let mut t = SizeStats::ZERO;
            for (_, s) in of(a) {
                t.add(s);
            }
            t
        };
        out.push(family(
            "memtrace_vmalloc_size_bytes",
            "Sizes of vmalloc address-space areas reserved (alloc_vmap_area; includes the guard page).",
            MetricType::HISTOGRAM,
            vec![histogram(&[], &total(Allocator::Vmalloc))],
        ));
        out.push(family(
            "memtrace_percpu_size_bytes",
            "Sizes of percpu allocations in bytes allocated over all CPUs.",
            MetricType::HISTOGRAM,
            vec![histogram(&[], &total(Allocator::Percpu))],
        ));

        // Slab caches, top-N by allocations plus `other`.
        let current: BTreeMap<String, Vec<u64>> = snap
            .caches
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    vec![c.allocations, c.allocated_bytes, c.requested_bytes],
                )
            })
            .collect();
        let caches = self.caches.apply(&current, 0);
        for (i, (name, help)) in [
            (
                "memtrace_kmem_cache_allocations_total",
                "Allocations from each slab cache (kmem_cache_alloc), top caches plus other.",
            ),
            (
                "memtrace_kmem_cache_allocated_bytes_total",
                "Bytes allocated from each slab cache (object size including metadata and padding).",
            ),
            (
                "memtrace_kmem_cache_requested_bytes_total",
                "Bytes requested from each slab cache (the cache's object size).",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            out.push(family(
                name,
                help,
                MetricType::COUNTER,
                caches
                    .iter()
                    .map(|(c, v)| counter(&[("cache", c)], v[i] as f64))
                    .collect(),
            ));
        }

        self.attribution(snap, &mut out);

        // The page allocator.
        let mut pages: BTreeMap<(u32, String, String), u64> = BTreeMap::new();
        for ((order, mt, raw), n) in &snap.pages {
            *pages
                .entry((*order, self.migratetype_label(*mt), self.gfp_label(*raw)))
                .or_default() += n;
        }
        out.push(family(
            "memtrace_page_allocations_total",
            "Successful page allocations, by order, migrate type and GFP flags.",
            MetricType::COUNTER,
            pages
                .iter()
                .map(|((o, mt, g), n)| {
                    counter(
                        &[("order", &o.to_string()), ("migratetype", mt), ("gfp", g)],
                        *n as f64,
                    )
                })
                .collect(),
        ));
        out.push(family(
            "memtrace_page_frees_total",
            "Page frees (mm_page_free, and mm_page_free_batched as order 0), by order.",
            MetricType::COUNTER,
            (0..ORDER_SLOTS)
                .filter(|o| snap.page_frees(*o) > 0)
                .map(|o| counter(&[("order", &o.to_string())], snap.page_frees(o) as f64))
                .collect(),
        ));
        let (mut frag, mut nonfrag, mut unknown) = (0u64, 0u64, 0u64);
        for o in 0..ORDER_SLOTS {
            let n = snap.extfrag(o);
            match self.pageblock_order {
                Some(pb) if o < pb => frag += n,
                Some(_) => nonfrag += n,
                None => unknown += n,
            }
        }
        let mut fallbacks = vec![
            counter(&[("fragmenting", "true")], frag as f64),
            counter(&[("fragmenting", "false")], nonfrag as f64),
        ];
        if self.pageblock_order.is_none() {
            fallbacks.push(counter(&[("fragmenting", "unknown")], unknown as f64));
        }
        out.push(family(
            "memtrace_page_fallbacks_total",
            "Allocations that fell back to another migrate type's free block (mm_page_alloc_extfrag); fragmenting=\"true\" when the block was smaller than a page block.",
            MetricType::COUNTER,
            fallbacks,
        ));

        let mut page_failures: BTreeMap<u32, u64> = BTreeMap::new();
        for ((a, order, _), n) in &snap.failures {
            if *a == Allocator::Page {
                *page_failures.entry(*order).or_default() += n;
            }
        }
        out.push(family(
            "memtrace_page_allocation_failures_total",
            "Failed page allocations, by order.",
            MetricType::COUNTER,
            page_failures
                .iter()
                .map(|(o, n)| counter(&[("order", &o.to_string())], *n as f64))
                .collect(),
        ));
        let stalls: u64 = (0..ORDER_SLOTS).map(|o| snap.compaction_stalls(o)).sum();
        out.push(family(
            "memtrace_compaction_stalls_total",
            "Direct compactions: allocations that stalled to compact memory (mm_compaction_try_to_compact_pages).",
            MetricType::COUNTER,
            vec![counter(&[], stalls as f64)],
        ));
        out.push(family(
            "memtrace_oom_kills_total",
            "Processes the OOM killer chose (oom:mark_victim).",
            MetricType::COUNTER,
            vec![counter(&[], snap.counter(Counter::OomKills) as f64)],
        ));
        out.push(family(
            "memtrace_kmalloc_largest_seen_bytes",
            "The largest successful kmalloc seen since memtrace started, in bytes allocated.",
            MetricType::GAUGE,
            vec![gauge(&[], snap.largest_kmalloc() as f64)],
        ));
        out.push(family(
            "memtrace_vmalloc_largest_seen_bytes",
            "The largest vmalloc area seen since memtrace started, in bytes.",
            MetricType::GAUGE,
            vec![gauge(&[], snap.largest_vmalloc() as f64)],
        ));
        out.push(family(
            "memtrace_page_largest_seen_order",
            "The highest order of a successful page allocation seen since memtrace started.",
            MetricType::GAUGE,
            snap.largest_page_order()
                .map(|o| vec![gauge(&[], o as f64)])
                .unwrap_or_default(),
        ));

        // vmalloc purges.
        out.push(family(
            "memtrace_vmalloc_purges_total",
            "Lazy purges of freed vmalloc areas (purge_vmap_area_lazy).",
            MetricType::COUNTER,
            vec![counter(&[], snap.counter(Counter::VmallocPurges) as f64)],
        ));
        out.push(family(
            "memtrace_vmalloc_purged_areas_total",
            "vmalloc areas released by lazy purges.",
            MetricType::COUNTER,
            vec![counter(
                &[],
                snap.counter(Counter::VmallocPurgedAreas) as f64,
            )],
        ));

        // Frees and failures across allocators.
        let page_frees: u64 = (0..ORDER_SLOTS).map(|o| snap.page_frees(o)).sum();
        out.push(family(
            "memtrace_frees_total",
            "Frees seen, by allocator (page: page frees of any order).",
            MetricType::COUNTER,
            [
                (Allocator::Kmalloc, snap.counter(Counter::KmallocFrees)),
                (Allocator::KmemCache, snap.counter(Counter::KmemCacheFrees)),
                (Allocator::Page, page_frees),
            ]
            .iter()
            .map(|(a, n)| counter(&[("allocator", a.name())], *n as f64))
            .collect(),
        ));
        let mut failures: BTreeMap<(Allocator, String), u64> = BTreeMap::new();
        for ((a, _order, raw), n) in &snap.failures {
            *failures.entry((*a, self.gfp_label(*raw))).or_default() += n;
        }
        out.push(family(
            "memtrace_allocation_failures_total",
            "Allocations the kernel could not satisfy, by allocator and GFP flags.",
            MetricType::COUNTER,
            failures
                .iter()
                .map(|((a, g), n)| counter(&[("allocator", a.name()), ("gfp", g)], *n as f64))
                .collect(),
        ));

        // memtrace itself.
        out.push(family(
            "memtrace_events_lost_total",
            "Events memtrace could not record as usual: map_full (counted under an \"other\" label instead), ringbuf_full (notable event dropped), recursion (not counted: an interrupt on a CPU where the same program was running).",
            MetricType::COUNTER,
            vec![
                counter(&[("reason", "map_full")], snap.counter(Counter::MapFull) as f64),
                counter(
                    &[("reason", "ringbuf_full")],
                    snap.counter(Counter::RingbufFull) as f64,
                ),
                counter(&[("reason", "recursion")], snap.recursion_misses as f64),
            ],
        ));
        out.push(family(
            "memtrace_probe_attached",
            "1 if the probe is attached, 0 if this kernel does not offer it.",
            MetricType::GAUGE,
            probes
                .iter()
                .map(|p| gauge(&[("probe", &p.probe)], if p.attached() { 1.0 } else { 0.0 }))
                .collect(),
        ));
        out.push(family(
            "memtrace_build_info",
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
        out.retain(|f| !f.get_metric().is_empty());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> GfpTable {
        GfpTable::from_print_fmt(include_str!(
            "../../testdata/linux-6.18/kmem_kmalloc.format"
        ))
        .unwrap()
    }

    fn render(f: &[MetricFamily]) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(f, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn kmalloc_histogram_is_cumulative_and_grouped_by_composite_gfp() {
        let mut snap = Snapshot::default();
        let mut s = SizeStats::ZERO;
        s.buckets[1] = 2; // 16 B
        s.buckets[9] = 1; // 4096 B
        s.requested_bytes = 4000;
        s.allocated_bytes = 4096 + 32;
        snap.sizes.insert((Allocator::Kmalloc, 0xcc0), s); // GFP_KERNEL
        snap.sizes.insert((Allocator::Kmalloc, 0xcc0 | 0x100), s); // GFP_KERNEL|__GFP_ZERO
        snap.sizes
            .insert((Allocator::Kmalloc, memtrace_common::GFP_OVERFLOW), s);
        snap.failures.insert((Allocator::Kmalloc, 0, 0x820), 3); // GFP_ATOMIC
        snap.failures.insert((Allocator::Page, 4, 0x820), 1);
        snap.failures.insert((Allocator::Page, 5, 0x820), 1);
        snap.pages.insert((0, 1, 0x100cca), 7); // movable, GFP_HIGHUSER_MOVABLE
        snap.pages
            .insert((3, u32::MAX, memtrace_common::GFP_OVERFLOW), 2);
        for i in 0..3u64 {
            snap.caches.insert(
                format!("cache{i}"),
                memtrace_common::CacheStats {
                    allocations: 10 * (i + 1),
                    requested_bytes: 0,
                    allocated_bytes: 100,
                },
            );
        }
        snap.counters = vec![0; memtrace_common::COUNTERS_LEN as usize];
        snap.counters[memtrace_common::EXTFRAG_BASE as usize + 2] = 4; // fragmenting
        snap.counters[memtrace_common::EXTFRAG_BASE as usize + 9] = 1; // whole page block
        snap.counters[memtrace_common::PAGE_FREES_BASE as usize] = 5;
        snap.counters[memtrace_common::COMPACTION_STALLS_BASE as usize + 9] = 2;
        snap.counters[memtrace_common::Counter::OomKills as usize] = 1;
        snap.maxima = vec![65536, 266240, 5, 0];
        let mut mts = BTreeMap::new();
        mts.insert(0, "unmovable".to_string());
        mts.insert(1, "movable".to_string());
        let mut e = Exporter::new(
            Some(table()),
            mts,
            Some(9),
            "6.18".into(),
            LabelLimits {
                caches: 2,
                callsites: 2,
                processes: 2,
                cgroups: 2,
            },
            None,
        );
        let text = render(&e.families(&snap, &[]));
        assert!(
            text.contains("memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"8\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"16\"} 4")
        );
        assert!(
            text.contains("memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"4096\"} 6")
        );
        assert!(
            text.contains("memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"+Inf\"} 6")
        );
        assert!(text.contains("memtrace_kmalloc_size_bytes_count{gfp=\"GFP_KERNEL\"} 6"));
        assert!(text.contains("memtrace_kmalloc_size_bytes_sum{gfp=\"GFP_KERNEL\"} 8256"));
        assert!(text.contains("memtrace_kmalloc_size_bytes_count{gfp=\"other\"} 3"));
        assert!(text.contains("memtrace_kmalloc_requested_bytes_total{gfp=\"GFP_KERNEL\"} 8000"));
        assert!(text.contains(
            "memtrace_allocation_failures_total{allocator=\"kmalloc\",gfp=\"GFP_ATOMIC\"} 3"
        ));
        assert!(text.contains("le=\"4194304\""));
        assert!(text.contains(
            "memtrace_allocation_failures_total{allocator=\"page\",gfp=\"GFP_ATOMIC\"} 2"
        ));
        assert!(text.contains("memtrace_page_allocations_total{order=\"0\",migratetype=\"movable\",gfp=\"GFP_HIGHUSER_MOVABLE\"} 7"), "{text}");
        assert!(text.contains(
            "memtrace_page_allocations_total{order=\"3\",migratetype=\"other\",gfp=\"other\"} 2"
        ));
        assert!(text.contains("memtrace_page_fallbacks_total{fragmenting=\"true\"} 4"));
        assert!(text.contains("memtrace_page_fallbacks_total{fragmenting=\"false\"} 1"));
        assert!(text.contains("memtrace_page_frees_total{order=\"0\"} 5"));
        assert!(text.contains("memtrace_frees_total{allocator=\"page\"} 5"));
        // Two cache slots: the two heaviest, the third in other.
        assert!(text.contains("memtrace_kmem_cache_allocations_total{cache=\"cache2\"} 30"));
        assert!(text.contains("memtrace_kmem_cache_allocations_total{cache=\"cache1\"} 20"));
        assert!(text.contains("memtrace_kmem_cache_allocations_total{cache=\"other\"} 10"));
        assert!(text.contains("# TYPE memtrace_vmalloc_size_bytes histogram"));
        assert!(text.contains("memtrace_page_allocation_failures_total{order=\"4\"} 1"));
        assert!(text.contains("memtrace_page_allocation_failures_total{order=\"5\"} 1"));
        assert!(text.contains("memtrace_compaction_stalls_total 2"));
        assert!(text.contains("memtrace_oom_kills_total 1"));
        assert!(text.contains("memtrace_kmalloc_largest_seen_bytes 65536"));
        assert!(text.contains("memtrace_vmalloc_largest_seen_bytes 266240"));
        assert!(text.contains("memtrace_page_largest_seen_order 4"));
        assert!(!text.to_lowercase().contains("0xffff"));
    }

    #[test]
    fn cgroup_series_are_paths_bounded_per_allocator() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("memtrace-metrics-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["a", "b", "c"] {
            std::fs::create_dir_all(root.join("s").join(d)).unwrap();
        }
        let ino = |rel: &str| std::fs::metadata(root.join(rel)).unwrap().ino();
        let mut snap = Snapshot::default();
        let usage = |n: u64| memtrace_common::Usage {
            allocations: n,
            bytes: 64 * n,
        };
        snap.cgroups
            .insert((Allocator::Kmalloc, ino("s/a")), usage(30));
        snap.cgroups
            .insert((Allocator::Kmalloc, ino("s/b")), usage(20));
        snap.cgroups
            .insert((Allocator::Kmalloc, ino("s/c")), usage(10));
        snap.cgroups.insert((Allocator::Page, ino("")), usage(4));
        snap.cgroups.insert(
            (Allocator::Page, memtrace_common::CGROUP_UNREADABLE),
            usage(1),
        );
        snap.cgroups.insert(
            (Allocator::Page, memtrace_common::CGROUP_OVERFLOW),
            usage(2),
        );
        let limits = LabelLimits {
            caches: 2,
            callsites: 2,
            processes: 2,
            cgroups: 2,
        };
        let mut e = Exporter::new(None, BTreeMap::new(), None, "6.18".into(), limits, None)
            .with_cgroup_paths(crate::label::cgroup::Resolver::new(root.clone()));
        let text = render(&e.families(&snap, &[]));
        let _ = std::fs::remove_dir_all(&root);
        for line in [
            "memtrace_cgroup_allocations_total{allocator=\"kmalloc\",cgroup=\"/s/a\"} 30",
            "memtrace_cgroup_allocations_total{allocator=\"kmalloc\",cgroup=\"/s/b\"} 20",
            "memtrace_cgroup_allocations_total{allocator=\"kmalloc\",cgroup=\"other\"} 10",
            "memtrace_cgroup_allocated_bytes_total{allocator=\"kmalloc\",cgroup=\"/s/a\"} 1920",
            "memtrace_cgroup_allocations_total{allocator=\"page\",cgroup=\"/\"} 4",
            "memtrace_cgroup_allocations_total{allocator=\"page\",cgroup=\"unknown\"} 1",
            "memtrace_cgroup_allocations_total{allocator=\"page\",cgroup=\"other\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Without per-cgroup counting, no cgroup family at all.
        let mut e = Exporter::new(None, BTreeMap::new(), None, "6.18".into(), limits, None);
        let text = render(&e.families(&Snapshot::default(), &[]));
        assert!(!text.contains("memtrace_cgroup_"), "{text}");
    }
}
