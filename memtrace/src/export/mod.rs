//! The one place memtrace's Prometheus metrics are named ([`names`]) and built. Kernel
//! aggregates are read at scrape time and emitted as constant metric families (the
//! ebpf_exporter model), one module per topic: allocations, attribution, pages, limits and
//! memtrace's own status; process metrics come from the prometheus crate's process
//! collector. [`collect`] runs a scrape's collectors (each reporting its health, none
//! failing the scrape). [`record`] is the one schema of a notable event, [`scrape`] reads an
//! exposition back.

mod allocations;
mod attribution;
pub mod collect;
mod limits;
pub mod names;
mod pages;
mod profile;
mod proto;
pub mod record;
pub mod scrape;
mod status;

use std::collections::BTreeMap;

use memtrace_common::Allocator;
use prometheus::proto::MetricFamily;

use crate::{
    bpf::{ProbeStatus, Snapshot},
    label::{cardinality::Limiter, gfp::GfpTable},
};

/// What turns raw kernel aggregates into labelled series: the running kernel's names for
/// GFP values and migrate types, its page-block order, and the bounded `cache` label.
pub struct Exporter {
    gfp: Option<GfpTable>,
    migratetypes: BTreeMap<u32, String>,
    pageblock_order: Option<u32>,
    kernel: String,
    caches: Limiter,
    /// Call sites become function names through this (while it has no table, every call
    /// site reads `function="unknown"`); `None` only where no symbolizer is wanted (tests).
    symbols: Option<crate::label::symbolize::Cached>,
    callsites: BTreeMap<Allocator, Limiter>,
    processes: BTreeMap<Allocator, Limiter>,
    cgroups: BTreeMap<Allocator, Limiter>,
    limits: LabelLimits,
    /// Memory cgroup ids become paths through this; `None` when no memory hierarchy is
    /// mounted (then every cgroup reads `cgroup="unknown"`).
    cgroup_paths: Option<crate::label::cgroup::Resolver>,
    /// The `function` series of `memtrace_live_bytes`, per allocator.
    live_series: BTreeMap<Allocator, profile::LiveSeries>,
}

/// How often the daemon checks whether the kernel's modules changed (then reloads the
/// symbols).
pub const SYMBOLS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Bounds of the attribution labels.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    pub caches: usize,
    pub callsites: usize,
    pub processes: usize,
    pub cgroups: usize,
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
            live_series: BTreeMap::new(),
        }
    }

    /// An exporter for the running kernel: its GFP names (from tracefs), the tracer's
    /// migrate-type names, its page-block order and `/proc/kallsyms`. What cannot be read
    /// degrades to `other`/`unknown` labels: the GFP names with a warning here, the symbols
    /// as the `symbolizer` collector's status ([`Exporter::refresh_symbols`]).
    pub fn for_running_kernel(migratetypes: BTreeMap<u32, String>, limits: LabelLimits) -> Self {
        let gfp = match GfpTable::from_kernel() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("GFP flags cannot be decoded ({e}); gfp labels will read \"other\"");
                None
            }
        };
        let symbols = crate::label::symbolize::Cached::new(SYMBOLS_CHECK_INTERVAL);
        Exporter::new(
            gfp,
            migratetypes,
            crate::kernel::pageblock_order(),
            crate::kernel::release(),
            limits,
            Some(symbols),
        )
    }

    /// The record of notable event `e`, decoded with this exporter's GFP names and symbols
    /// (no stack: the daemon and `top` show none).
    pub fn record(
        &mut self,
        e: &memtrace_common::NotableEvent,
        clock: &record::Clock,
    ) -> record::EventRecord {
        record::EventRecord::new(e, self.gfp.as_ref(), self.symbols(), None, clock)
    }

    /// Names memory cgroups (the `cgroup` label) with `resolver`.
    pub fn with_cgroup_paths(mut self, resolver: crate::label::cgroup::Resolver) -> Self {
        self.cgroup_paths = Some(resolver);
        self
    }

    fn gfp_label(&self, raw: u64) -> String {
        GfpTable::label_of(self.gfp.as_ref(), raw)
    }

    fn migratetype_label(&self, mt: u32) -> String {
        if mt == u32::MAX {
            return crate::label::OTHER.into();
        }
        self.migratetypes
            .get(&mt)
            .cloned()
            .unwrap_or_else(|| mt.to_string())
    }

    /// The kernel's symbols as last loaded, if a load has succeeded ([`refresh_symbols`]
    /// reloads them when the modules change).
    ///
    /// [`refresh_symbols`]: Exporter::refresh_symbols
    pub fn symbols(&self) -> Option<&crate::label::symbolize::Symbolizer> {
        self.symbols.as_ref().and_then(|s| s.table())
    }

    /// Reloads the symbols if the kernel's modules changed (checked at most every
    /// [`SYMBOLS_CHECK_INTERVAL`]); `Ok` when a table is loaded and the last load succeeded,
    /// else why not, in one line. The `symbolizer` collector: the one caller that reloads.
    pub fn refresh_symbols(&mut self) -> Result<(), String> {
        match &mut self.symbols {
            Some(s) => s.refresh(),
            None => Err("no symbolizer".to_string()),
        }
    }

    /// How many times the symbols were reloaded after the modules changed.
    pub fn symbol_reloads(&self) -> u64 {
        self.symbols.as_ref().map_or(0, |s| s.reloads())
    }

    /// Builds every family of the kernel maps from one snapshot (the `maps` collector's);
    /// `profile`, when profiling is on, adds its lost samples to `memtrace_events_lost_total`.
    pub fn families(
        &mut self,
        snap: &Snapshot,
        probes: &[ProbeStatus],
        profile: Option<ProfileLosses>,
    ) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        self.allocation_families(snap, &mut out);
        self.attribution(snap, &mut out);
        self.page_families(snap, &mut out);
        self.status_families(snap, probes, profile, &mut out);
        out.retain(|f| !f.get_metric().is_empty());
        out
    }
}

pub use limits::limits_families;
pub use status::{ProfileLosses, notable_family};

#[cfg(test)]
mod tests {
    use memtrace_common::SizeStats;

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
        let text = render(&e.families(&snap, &[], None));
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
        let text = render(&e.families(&snap, &[], None));
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
        let text = render(&e.families(&Snapshot::default(), &[], None));
        assert!(!text.contains("memtrace_cgroup_"), "{text}");
    }

    /// The exposition the exporter writes is what `top`'s model and `limits`' observed
    /// figures read: one set of metric names, and each number arrives where it belongs.
    #[test]
    fn exposition_reads_back_through_top_and_limits() {
        use crate::{
            bpf::AttachMode, cmd::limits::observed::Observed, cmd::top::model::Model,
            limits::collect,
        };
        use memtrace_common::{
            COMPACTION_STALLS_BASE, COUNTERS_LEN, CacheStats, Counter, EXTFRAG_BASE,
            PAGE_FREES_BASE, Usage,
        };
        let mut snap = Snapshot::default();
        let sizes = |n: u64, bucket: usize, req: u64, alloc: u64| {
            let mut s = SizeStats::ZERO;
            s.buckets[bucket] = n;
            s.requested_bytes = req;
            s.allocated_bytes = alloc;
            s
        };
        snap.sizes
            .insert((Allocator::Kmalloc, 0xcc0), sizes(3, 7, 3000, 3072)); // 1 KiB
        snap.sizes
            .insert((Allocator::Vmalloc, 0xcc0), sizes(2, 14, 0, 2 << 17));
        snap.sizes
            .insert((Allocator::Percpu, 0xcc0), sizes(5, 2, 0, 5 * 32));
        snap.caches.insert(
            "filp".into(),
            CacheStats {
                allocations: 11,
                requested_bytes: 11 * 232,
                allocated_bytes: 11 * 256,
            },
        );
        snap.pages.insert((0, 1, 0x100cca), 6);
        snap.pages.insert((2, 1, 0x100cca), 1);
        snap.failures.insert((Allocator::Kmalloc, 0, 0xcc0), 4);
        snap.failures.insert((Allocator::Page, 3, 0xcc0), 2);
        snap.counters = vec![0; COUNTERS_LEN as usize];
        snap.counters[Counter::KmallocFrees as usize] = 3;
        snap.counters[Counter::KmemCacheFrees as usize] = 10;
        snap.counters[PAGE_FREES_BASE as usize] = 5;
        snap.counters[EXTFRAG_BASE as usize + 1] = 2; // below the page block: fragmenting
        snap.counters[EXTFRAG_BASE as usize + 9] = 1;
        snap.counters[COMPACTION_STALLS_BASE as usize + 3] = 7;
        snap.counters[Counter::OomKills as usize] = 1;
        snap.counters[Counter::MapFull as usize] = 9;
        snap.maxima = vec![65536, 266240, 3, 0];
        snap.comms.insert(
            (Allocator::Kmalloc, "sh".into()),
            Usage {
                allocations: 3,
                bytes: 3072,
            },
        );
        snap.callsites.insert(
            (Allocator::Kmalloc, 0),
            Usage {
                allocations: 3,
                bytes: 3072,
            },
        );
        let probes = [
            ProbeStatus {
                probe: "kmem:kmalloc".into(),
                mode: Some(AttachMode::Btf),
                note: None,
                program: Some("kmalloc_btf"),
            },
            ProbeStatus {
                probe: "vmalloc:alloc_vmap_area".into(),
                mode: None,
                note: Some("absent".into()),
                program: None,
            },
        ];
        let limits_src = crate::limits::tests::fixture("single-node");
        let limits = collect(&limits_src).expect("fixture limits");
        let mut e = Exporter::new(
            Some(table()),
            BTreeMap::from([(1, "movable".to_string())]),
            Some(9),
            "6.18".into(),
            LabelLimits {
                caches: 10,
                callsites: 10,
                processes: 10,
                cgroups: 10,
            },
            None,
        );
        let mut families = e.families(&snap, &probes, None);
        families.extend(limits_families(&limits));
        let text = render(&families);
        let samples = scrape::parse_exposition(&text);

        let m = Model::from_samples(&samples);
        let k = m.totals(Allocator::Kmalloc);
        assert_eq!(
            (k.allocations, k.allocated_bytes, k.requested_bytes),
            (3.0, 3072.0, Some(3000.0))
        );
        assert_eq!((k.failures, k.frees), (4.0, Some(3.0)));
        let c = m.totals(Allocator::KmemCache);
        assert_eq!((c.allocations, c.frees), (11.0, Some(10.0)));
        assert_eq!(m.caches["filp"].requested_bytes, 11.0 * 232.0);
        let v = m.totals(Allocator::Vmalloc);
        assert_eq!(
            (v.allocations, v.allocated_bytes),
            (2.0, f64::from(2 << 17))
        );
        assert_eq!(m.totals(Allocator::Percpu).allocations, 5.0);
        let buckets =
            |h: &crate::cmd::top::model::Histogram| h.buckets.iter().map(|b| b.1).sum::<f64>();
        assert_eq!(buckets(&m.kmalloc_sizes), 3.0);
        assert_eq!(buckets(&m.vmalloc_sizes), 2.0);
        let p = m.totals(Allocator::Page);
        assert_eq!((p.allocations, p.frees), (7.0, Some(5.0)));
        assert_eq!(m.pages[&(2, "movable".to_string())], 1.0);
        assert_eq!(m.page_failures[&3], 2.0);
        assert_eq!(m.page_frees[&0], 5.0);
        assert_eq!(m.page_size, limits.page_size.value as f64);
        assert_eq!(p.allocated_bytes, (6.0 + 4.0) * m.page_size);
        assert_eq!(
            m.processes[&(Allocator::Kmalloc, "sh".to_string())].bytes,
            3072.0
        );
        assert_eq!(
            m.callsites[&(Allocator::Kmalloc, "other".to_string())].allocations,
            3.0
        );
        assert_eq!(m.lost["map_full"], 9.0);
        assert_eq!((m.probes_attached, m.probes_total), (1, 2));
        assert_eq!(
            m.vmalloc_total_bytes,
            Some(limits.vmalloc_total_bytes.value as f64)
        );

        let o = Observed::from_samples(&samples, "test");
        assert_eq!(
            (o.kmalloc_largest_bytes, o.vmalloc_largest_bytes),
            (65536, 266240)
        );
        assert_eq!(o.page_largest_order, Some(2));
        assert_eq!(o.page_failures_by_order, BTreeMap::from([(3, 2)]));
        assert_eq!(o.allocation_failures["kmalloc"], 4);
        assert_eq!(o.allocation_failures["page"], 2);
        assert_eq!((o.fallbacks_total, o.fallbacks_fragmenting), (3, 2));
        assert_eq!((o.compaction_stalls, o.oom_kills), (7, 1));
    }
}
