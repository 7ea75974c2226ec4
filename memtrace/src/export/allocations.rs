//! Allocation series: sizes per allocator and GFP name, slab caches (top N plus `other`),
//! frees and failures across allocators, vmalloc purges.

use std::collections::BTreeMap;

use memtrace_common::{Allocator, Counter, ORDER_SLOTS, SizeStats};
use prometheus::proto::{MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family, histogram},
};
use crate::bpf::Snapshot;

impl Exporter {
    /// Sizes, slab caches, frees, failures and vmalloc purges.
    pub(super) fn allocation_families(&mut self, snap: &Snapshot, out: &mut Vec<MetricFamily>) {
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
            names::KMALLOC_SIZE_BYTES,
            "Sizes of successful kmalloc allocations in bytes allocated (after slab rounding).",
            MetricType::HISTOGRAM,
            of(Allocator::Kmalloc)
                .map(|((_, g), s)| histogram(&[("gfp", g)], s))
                .collect(),
        ));
        out.push(family(
            names::KMALLOC_REQUESTED_BYTES_TOTAL,
            "Bytes callers asked kmalloc for; allocated minus requested is slab rounding waste.",
            MetricType::COUNTER,
            of(Allocator::Kmalloc)
                .map(|((_, g), s)| counter(&[("gfp", g)], s.requested_bytes as f64))
                .collect(),
        ));
        out.push(family(
            names::KMALLOC_ALLOCATED_BYTES_TOTAL,
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
            names::VMALLOC_SIZE_BYTES,
            "Sizes of vmalloc address-space areas reserved (alloc_vmap_area; includes the guard page).",
            MetricType::HISTOGRAM,
            vec![histogram(&[], &total(Allocator::Vmalloc))],
        ));
        out.push(family(
            names::PERCPU_SIZE_BYTES,
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
                names::KMEM_CACHE_ALLOCATIONS_TOTAL,
                "Allocations from each slab cache (kmem_cache_alloc), top caches plus other.",
            ),
            (
                names::KMEM_CACHE_ALLOCATED_BYTES_TOTAL,
                "Bytes allocated from each slab cache (object size including metadata and padding).",
            ),
            (
                names::KMEM_CACHE_REQUESTED_BYTES_TOTAL,
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

        // vmalloc purges.
        out.push(family(
            names::VMALLOC_PURGES_TOTAL,
            "Lazy purges of freed vmalloc areas (purge_vmap_area_lazy).",
            MetricType::COUNTER,
            vec![counter(&[], snap.counter(Counter::VmallocPurges) as f64)],
        ));
        out.push(family(
            names::VMALLOC_PURGED_AREAS_TOTAL,
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
            names::FREES_TOTAL,
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
            names::ALLOCATION_FAILURES_TOTAL,
            "Allocations the kernel could not satisfy, by allocator and GFP flags.",
            MetricType::COUNTER,
            failures
                .iter()
                .map(|((a, g), n)| counter(&[("allocator", a.name()), ("gfp", g)], *n as f64))
                .collect(),
        ));
    }
}
