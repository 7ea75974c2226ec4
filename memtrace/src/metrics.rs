//! The one place memtrace's Prometheus metrics are named and built. Kernel aggregates are
//! read at scrape time and emitted as constant metric families (the ebpf_exporter model);
//! process metrics come from the prometheus crate's process collector.

use std::collections::BTreeMap;

use memtrace_common::{Allocator, Counter, SIZE_BUCKETS, SizeStats, size_bucket_upper};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use crate::{
    gfp::GfpTable,
    probes::{ProbeStatus, Snapshot},
};

/// The `gfp` label of a map key: the kernel's composite name, or `other`.
fn gfp_label(table: Option<&GfpTable>, gfp: u64) -> String {
    if gfp == memtrace_common::GFP_OVERFLOW {
        return "other".into();
    }
    table.map_or_else(|| "other".into(), |t| t.label(gfp).to_string())
}

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

/// Builds every kernel-derived metric family from one snapshot.
pub fn families(
    snap: &Snapshot,
    probes: &[ProbeStatus],
    gfp: Option<&GfpTable>,
    kernel: &str,
) -> Vec<MetricFamily> {
    // Several raw gfp values share one composite label: sum them.
    let mut kmalloc: BTreeMap<String, SizeStats> = BTreeMap::new();
    for ((a, raw), s) in &snap.sizes {
        if *a == Allocator::Kmalloc {
            kmalloc
                .entry(gfp_label(gfp, *raw))
                .or_insert(SizeStats::ZERO)
                .add(s);
        }
    }
    let mut failures: BTreeMap<(Allocator, String), u64> = BTreeMap::new();
    for ((a, raw), n) in &snap.failures {
        *failures.entry((*a, gfp_label(gfp, *raw))).or_default() += n;
    }

    let mut out = vec![
        family(
            "memtrace_kmalloc_size_bytes",
            "Sizes of successful kmalloc allocations in bytes allocated (after slab rounding).",
            MetricType::HISTOGRAM,
            kmalloc
                .iter()
                .map(|(g, s)| histogram(&[("gfp", g)], s))
                .collect(),
        ),
        family(
            "memtrace_kmalloc_requested_bytes_total",
            "Bytes callers asked kmalloc for; allocated minus requested is slab rounding waste.",
            MetricType::COUNTER,
            kmalloc
                .iter()
                .map(|(g, s)| counter(&[("gfp", g)], s.requested_bytes as f64))
                .collect(),
        ),
        family(
            "memtrace_kmalloc_allocated_bytes_total",
            "Bytes kmalloc handed out, after rounding up to the slab object size.",
            MetricType::COUNTER,
            kmalloc
                .iter()
                .map(|(g, s)| counter(&[("gfp", g)], s.allocated_bytes as f64))
                .collect(),
        ),
        family(
            "memtrace_allocation_failures_total",
            "Allocations the kernel could not satisfy, by allocator and GFP flags.",
            MetricType::COUNTER,
            failures
                .iter()
                .map(|((a, g), n)| counter(&[("allocator", a.name()), ("gfp", g)], *n as f64))
                .collect(),
        ),
        family(
            "memtrace_frees_total",
            "Frees seen, by allocator.",
            MetricType::COUNTER,
            vec![counter(
                &[("allocator", Allocator::Kmalloc.name())],
                snap.counter(Counter::KmallocFrees) as f64,
            )],
        ),
        family(
            "memtrace_events_lost_total",
            "Events memtrace could not record as usual: map_full (counted under gfp=\"other\" instead), ringbuf_full (notable event dropped).",
            MetricType::COUNTER,
            vec![
                counter(
                    &[("reason", "map_full")],
                    snap.counter(Counter::MapFull) as f64,
                ),
                counter(
                    &[("reason", "ringbuf_full")],
                    snap.counter(Counter::RingbufFull) as f64,
                ),
            ],
        ),
        family(
            "memtrace_probe_attached",
            "1 if the probe is attached, 0 if this kernel does not offer it.",
            MetricType::GAUGE,
            probes
                .iter()
                .map(|p| gauge(&[("probe", &p.probe)], if p.attached() { 1.0 } else { 0.0 }))
                .collect(),
        ),
        family(
            "memtrace_build_info",
            "Always 1; labels say which memtrace runs on which kernel.",
            MetricType::GAUGE,
            vec![gauge(
                &[("version", env!("CARGO_PKG_VERSION")), ("kernel", kernel)],
                1.0,
            )],
        ),
    ];
    out.retain(|f| !f.get_metric().is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> GfpTable {
        GfpTable::from_print_fmt(include_str!("../testdata/linux-6.18/kmem_kmalloc.format"))
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
        snap.failures.insert((Allocator::Kmalloc, 0x820), 3); // GFP_ATOMIC
        snap.counters = vec![0; 16];
        let t = table();
        let text = render(&families(&snap, &[], Some(&t), "6.18"));
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
        assert!(!text.to_lowercase().contains("0xffff"));
    }
}
