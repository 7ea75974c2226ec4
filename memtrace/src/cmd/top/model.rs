//! What `memtrace top` shows, read from memtrace's own metrics: the same model whether the
//! samples come from this process's programs (encoded by the exporter) or from a running
//! daemon's `/metrics`. Nothing is re-aggregated from kernel maps here.

use std::collections::BTreeMap;

use memtrace_common::Allocator;

use crate::export::{names, scrape::Sample};

/// The allocator an `allocator` label value names.
pub fn allocator_named(name: &str) -> Option<Allocator> {
    Allocator::ALL.into_iter().find(|a| a.name() == name)
}

/// Cumulative counts of one allocator since memtrace started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub allocations: f64,
    pub allocated_bytes: f64,
    /// Bytes callers asked for (kmalloc and slab caches; where slab rounding waste shows).
    pub requested_bytes: Option<f64>,
    pub failures: f64,
    pub frees: Option<f64>,
}

/// Allocations and bytes of one attribution key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub allocations: f64,
    pub bytes: f64,
}

/// One slab cache.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cache {
    pub allocations: f64,
    pub allocated_bytes: f64,
    pub requested_bytes: f64,
}

/// A size histogram: per bucket (upper bound in bytes, `f64::INFINITY` for the last) the
/// number of allocations in that bucket alone (not cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    fn from_cumulative(mut cumulative: Vec<(f64, f64)>) -> Histogram {
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut prev = 0.0;
        let buckets = cumulative
            .into_iter()
            .map(|(le, c)| {
                let n = (c - prev).max(0.0);
                prev = c;
                (le, n)
            })
            .collect();
        Histogram { buckets }
    }

    /// Per-bucket increase from `prev` to `self` (for rates); buckets missing in `prev`
    /// count from zero.
    pub fn since(&self, prev: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let before = prev
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |b| b.1);
                    (*le, increase(before, *n))
                })
                .collect(),
        }
    }
}

/// The increase of a counter from `before` to `now`; a counter that went down was reset
/// (the daemon restarted), so all of `now` is new.
pub fn increase(before: f64, now: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// Everything `top` reads from one set of samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub allocators: BTreeMap<Allocator, Totals>,
    pub kmalloc_sizes: Histogram,
    pub vmalloc_sizes: Histogram,
    pub percpu_sizes: Histogram,
    pub caches: BTreeMap<String, Cache>,
    /// (allocator, function) → usage.
    pub callsites: BTreeMap<(Allocator, String), Usage>,
    /// (allocator, comm) → usage.
    pub processes: BTreeMap<(Allocator, String), Usage>,
    /// (order, migratetype) → successful page allocations.
    pub pages: BTreeMap<(u32, String), f64>,
    pub page_failures: BTreeMap<u32, f64>,
    pub page_frees: BTreeMap<u32, f64>,
    /// `memtrace_events_lost_total` by reason.
    pub lost: BTreeMap<String, f64>,
    /// Probes attached, out of probes known.
    pub probes_attached: usize,
    pub probes_total: usize,
    pub vmalloc_used_bytes: Option<f64>,
    pub vmalloc_total_bytes: Option<f64>,
    /// The page size, from `memtrace_kmalloc_max_bytes >> memtrace_page_max_order`.
    pub page_size: f64,
    /// (allocator, function) → (estimated live bytes, age of the oldest live sample in
    /// seconds), from the heap profile.
    pub live: BTreeMap<(Allocator, String), (f64, Option<f64>)>,
}

impl Model {
    pub fn from_samples(samples: &[Sample]) -> Model {
        let mut m = Model {
            allocators: Allocator::ALL.map(|a| (a, Totals::default())).into(),
            page_size: 4096.0,
            ..Default::default()
        };
        let mut kmalloc_buckets: BTreeMap<String, f64> = BTreeMap::new();
        let mut vmalloc_buckets = Vec::new();
        let mut percpu_buckets = Vec::new();
        let (mut kmalloc_max, mut max_order) = (None, None);
        for s in samples {
            let l = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or("");
            let allocator = || allocator_named(l("allocator"));
            let v = s.value;
            match histogram_part(&s.name) {
                (names::KMALLOC_SIZE_BYTES, "_bucket") => {
                    *kmalloc_buckets.entry(l("le").to_string()).or_default() += v;
                }
                (names::KMALLOC_SIZE_BYTES, "_count") => {
                    m.allocators
                        .get_mut(&Allocator::Kmalloc)
                        .unwrap()
                        .allocations += v;
                }
                (names::KMALLOC_SIZE_BYTES, "_sum") => {
                    m.allocators
                        .get_mut(&Allocator::Kmalloc)
                        .unwrap()
                        .allocated_bytes += v;
                }
                (names::KMALLOC_REQUESTED_BYTES_TOTAL, "") => {
                    *m.allocators
                        .get_mut(&Allocator::Kmalloc)
                        .unwrap()
                        .requested_bytes
                        .get_or_insert(0.0) += v;
                }
                (names::KMEM_CACHE_ALLOCATIONS_TOTAL, "") => {
                    m.caches
                        .entry(l("cache").to_string())
                        .or_default()
                        .allocations += v;
                    m.allocators
                        .get_mut(&Allocator::KmemCache)
                        .unwrap()
                        .allocations += v;
                }
                (names::KMEM_CACHE_ALLOCATED_BYTES_TOTAL, "") => {
                    m.caches
                        .entry(l("cache").to_string())
                        .or_default()
                        .allocated_bytes += v;
                    m.allocators
                        .get_mut(&Allocator::KmemCache)
                        .unwrap()
                        .allocated_bytes += v;
                }
                (names::KMEM_CACHE_REQUESTED_BYTES_TOTAL, "") => {
                    m.caches
                        .entry(l("cache").to_string())
                        .or_default()
                        .requested_bytes += v;
                    *m.allocators
                        .get_mut(&Allocator::KmemCache)
                        .unwrap()
                        .requested_bytes
                        .get_or_insert(0.0) += v;
                }
                (names::PAGE_ALLOCATIONS_TOTAL, "") => {
                    if let Ok(order) = l("order").parse::<u32>() {
                        *m.pages
                            .entry((order, l("migratetype").to_string()))
                            .or_default() += v;
                    }
                    m.allocators.get_mut(&Allocator::Page).unwrap().allocations += v;
                }
                (names::VMALLOC_SIZE_BYTES, "_bucket") => vmalloc_buckets.push((le(l("le")), v)),
                (names::VMALLOC_SIZE_BYTES, "_count") => {
                    m.allocators
                        .get_mut(&Allocator::Vmalloc)
                        .unwrap()
                        .allocations += v;
                }
                (names::VMALLOC_SIZE_BYTES, "_sum") => {
                    m.allocators
                        .get_mut(&Allocator::Vmalloc)
                        .unwrap()
                        .allocated_bytes += v;
                }
                (names::PERCPU_SIZE_BYTES, "_bucket") => percpu_buckets.push((le(l("le")), v)),
                (names::PERCPU_SIZE_BYTES, "_count") => {
                    m.allocators
                        .get_mut(&Allocator::Percpu)
                        .unwrap()
                        .allocations += v;
                }
                (names::PERCPU_SIZE_BYTES, "_sum") => {
                    m.allocators
                        .get_mut(&Allocator::Percpu)
                        .unwrap()
                        .allocated_bytes += v;
                }
                (names::ALLOCATION_FAILURES_TOTAL, "") => {
                    if let Some(t) = allocator().and_then(|a| m.allocators.get_mut(&a)) {
                        t.failures += v;
                    }
                }
                (names::FREES_TOTAL, "") => {
                    if let Some(t) = allocator().and_then(|a| m.allocators.get_mut(&a)) {
                        *t.frees.get_or_insert(0.0) += v;
                    }
                }
                (names::PAGE_ALLOCATION_FAILURES_TOTAL, "") => {
                    if let Ok(order) = l("order").parse::<u32>() {
                        *m.page_failures.entry(order).or_default() += v;
                    }
                }
                (names::PAGE_FREES_TOTAL, "") => {
                    if let Ok(order) = l("order").parse::<u32>() {
                        *m.page_frees.entry(order).or_default() += v;
                    }
                }
                (names::CALLSITE_ALLOCATIONS_TOTAL, "") => {
                    if let Some(a) = allocator() {
                        m.callsites
                            .entry((a, l("function").to_string()))
                            .or_default()
                            .allocations += v;
                    }
                }
                (names::CALLSITE_ALLOCATED_BYTES_TOTAL, "") => {
                    if let Some(a) = allocator() {
                        m.callsites
                            .entry((a, l("function").to_string()))
                            .or_default()
                            .bytes += v;
                    }
                }
                (names::PROCESS_ALLOCATIONS_TOTAL, "") => {
                    if let Some(a) = allocator() {
                        m.processes
                            .entry((a, l("comm").to_string()))
                            .or_default()
                            .allocations += v;
                    }
                }
                (names::PROCESS_ALLOCATED_BYTES_TOTAL, "") => {
                    if let Some(a) = allocator() {
                        m.processes
                            .entry((a, l("comm").to_string()))
                            .or_default()
                            .bytes += v;
                    }
                }
                (names::LIVE_BYTES, "") => {
                    if let Some(a) = allocator() {
                        m.live.entry((a, l("function").to_string())).or_default().0 = v;
                    }
                }
                (names::LIVE_OLDEST_AGE_SECONDS, "") => {
                    if let Some(a) = allocator() {
                        m.live.entry((a, l("function").to_string())).or_default().1 = Some(v);
                    }
                }
                (names::EVENTS_LOST_TOTAL, "") => {
                    *m.lost.entry(l("reason").to_string()).or_default() += v;
                }
                (names::PROBE_ATTACHED, "") => {
                    m.probes_total += 1;
                    if v >= 1.0 {
                        m.probes_attached += 1;
                    }
                }
                (names::VMALLOC_USED_BYTES, "") => m.vmalloc_used_bytes = Some(v),
                (names::VMALLOC_TOTAL_BYTES, "") => m.vmalloc_total_bytes = Some(v),
                (names::KMALLOC_MAX_BYTES, "") => kmalloc_max = Some(v),
                (names::PAGE_MAX_ORDER, "") => max_order = Some(v),
                _ => {}
            }
        }
        if let (Some(bytes), Some(order)) = (kmalloc_max, max_order) {
            // A daemon's numbers are input: an absurd order is ignored, not shifted.
            if (0.0..=31.0).contains(&order) && bytes > 0.0 {
                m.page_size = bytes / f64::from(1u32 << order as u32);
            }
        }
        let page = m.allocators.get_mut(&Allocator::Page).unwrap();
        page.allocated_bytes = m
            .pages
            .iter()
            .map(|((order, _), n)| n * m.page_size * f64::from(1u32 << (*order).min(31)))
            .sum();
        page.failures = page.failures.max(m.page_failures.values().sum());
        m.kmalloc_sizes =
            Histogram::from_cumulative(kmalloc_buckets.iter().map(|(k, v)| (le(k), *v)).collect());
        m.vmalloc_sizes = Histogram::from_cumulative(vmalloc_buckets);
        m.percpu_sizes = Histogram::from_cumulative(percpu_buckets);
        m
    }

    /// The total of one allocator (zero if unknown).
    pub fn totals(&self, allocator: Allocator) -> Totals {
        self.allocators.get(&allocator).cloned().unwrap_or_default()
    }

    /// The size histogram memtrace keeps for an allocator, if any.
    pub fn sizes(&self, allocator: Allocator) -> Option<&Histogram> {
        match allocator {
            Allocator::Kmalloc => Some(&self.kmalloc_sizes),
            Allocator::Vmalloc => Some(&self.vmalloc_sizes),
            Allocator::Percpu => Some(&self.percpu_sizes),
            Allocator::KmemCache | Allocator::Page => None,
        }
    }
}

/// A sample's family and, for a histogram's series, its suffix (`_bucket`, `_count`,
/// `_sum`; otherwise empty).
fn histogram_part(name: &str) -> (&str, &str) {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(family) = name.strip_suffix(suffix) {
            if [
                names::KMALLOC_SIZE_BYTES,
                names::VMALLOC_SIZE_BYTES,
                names::PERCPU_SIZE_BYTES,
            ]
            .contains(&family)
            {
                return (family, suffix);
            }
        }
    }
    (name, "")
}

fn le(s: &str) -> f64 {
    if s == "+Inf" {
        f64::INFINITY
    } else {
        s.parse().unwrap_or(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::scrape::parse_exposition;

    const TEXT: &str = r#"
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_KERNEL",le="8"} 1
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_KERNEL",le="16"} 3
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_KERNEL",le="+Inf"} 4
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_ATOMIC",le="8"} 0
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_ATOMIC",le="16"} 2
memtrace_kmalloc_size_bytes_bucket{gfp="GFP_ATOMIC",le="+Inf"} 2
memtrace_kmalloc_size_bytes_sum{gfp="GFP_KERNEL"} 100
memtrace_kmalloc_size_bytes_count{gfp="GFP_KERNEL"} 4
memtrace_kmalloc_size_bytes_sum{gfp="GFP_ATOMIC"} 32
memtrace_kmalloc_size_bytes_count{gfp="GFP_ATOMIC"} 2
memtrace_kmalloc_requested_bytes_total{gfp="GFP_KERNEL"} 90
memtrace_kmem_cache_allocations_total{cache="dentry"} 10
memtrace_kmem_cache_allocated_bytes_total{cache="dentry"} 1920
memtrace_kmem_cache_requested_bytes_total{cache="dentry"} 1900
memtrace_page_allocations_total{order="0",migratetype="Movable",gfp="GFP_HIGHUSER_MOVABLE"} 5
memtrace_page_allocations_total{order="2",migratetype="Unmovable",gfp="GFP_KERNEL"} 1
memtrace_page_allocation_failures_total{order="2"} 3
memtrace_allocation_failures_total{allocator="page",gfp="GFP_KERNEL"} 3
memtrace_allocation_failures_total{allocator="kmalloc",gfp="GFP_KERNEL"} 2
memtrace_callsite_allocations_total{allocator="kmalloc",function="vmemdup_user"} 4
memtrace_callsite_allocated_bytes_total{allocator="kmalloc",function="vmemdup_user"} 100
memtrace_process_allocations_total{allocator="kmalloc",comm="sh"} 6
memtrace_events_lost_total{reason="map_full"} 7
memtrace_probe_attached{probe="kmem:kmalloc"} 1
memtrace_probe_attached{probe="oom:mark_victim"} 0
memtrace_kmalloc_max_bytes 4194304
memtrace_page_max_order 10
"#;

    #[test]
    fn reads_every_family() {
        let m = Model::from_samples(&parse_exposition(TEXT));
        let k = m.totals(Allocator::Kmalloc);
        assert_eq!((k.allocations, k.allocated_bytes), (6.0, 132.0));
        assert_eq!(k.requested_bytes, Some(90.0));
        assert_eq!(k.failures, 2.0);
        assert_eq!(
            m.kmalloc_sizes.buckets,
            vec![(8.0, 1.0), (16.0, 4.0), (f64::INFINITY, 1.0)],
            "GFP labels summed, cumulative buckets made per bucket"
        );
        assert_eq!(m.page_size, 4096.0);
        let p = m.totals(Allocator::Page);
        assert_eq!(p.allocations, 6.0);
        assert_eq!(p.allocated_bytes, 5.0 * 4096.0 + 4.0 * 4096.0);
        assert_eq!(p.failures, 3.0);
        assert_eq!(m.caches["dentry"].requested_bytes, 1900.0);
        assert_eq!(m.totals(Allocator::KmemCache).allocations, 10.0);
        assert_eq!(
            m.callsites[&(Allocator::Kmalloc, "vmemdup_user".to_string())],
            Usage {
                allocations: 4.0,
                bytes: 100.0
            }
        );
        assert_eq!(m.processes.len(), 1);
        assert_eq!(m.lost["map_full"], 7.0);
        assert_eq!((m.probes_attached, m.probes_total), (1, 2));
    }

    #[test]
    fn absurd_input_is_ignored_not_a_panic() {
        let m = Model::from_samples(&parse_exposition(
            "memtrace_kmalloc_max_bytes 4194304\nmemtrace_page_max_order 63\n\
             memtrace_page_allocations_total{order=\"4000000000\",migratetype=\"x\",gfp=\"y\"} 1\n",
        ));
        assert_eq!(m.page_size, 4096.0, "the default page size stays");
        assert!(m.totals(Allocator::Page).allocated_bytes.is_finite());
    }

    #[test]
    fn histograms_and_counters_survive_resets() {
        let a = Histogram {
            buckets: vec![(8.0, 5.0), (16.0, 1.0)],
        };
        let b = Histogram {
            buckets: vec![(8.0, 7.0), (16.0, 0.5)],
        };
        assert_eq!(b.since(&a).buckets, vec![(8.0, 2.0), (16.0, 0.5)]);
        assert_eq!(increase(10.0, 4.0), 4.0);
        assert_eq!(increase(4.0, 10.0), 6.0);
    }
}
