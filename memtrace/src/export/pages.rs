//! The page allocator's series (allocations by order, migrate type and GFP name; frees;
//! fragmenting fallbacks; failures by order), the stalls and OOM kills behind failing
//! allocations, and the largest allocations seen.

use std::collections::BTreeMap;

use memtrace_common::{Allocator, Counter, ORDER_SLOTS};
use prometheus::proto::{MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family, gauge},
};
use crate::bpf::Snapshot;

impl Exporter {
    /// Page allocator series, stalls, OOM kills and the largest allocations seen.
    pub(super) fn page_families(&mut self, snap: &Snapshot, out: &mut Vec<MetricFamily>) {
        // The page allocator.
        let mut pages: BTreeMap<(u32, String, String), u64> = BTreeMap::new();
        for ((order, mt, raw), n) in &snap.pages {
            *pages
                .entry((*order, self.migratetype_label(*mt), self.gfp_label(*raw)))
                .or_default() += n;
        }
        out.push(family(
            names::PAGE_ALLOCATIONS_TOTAL,
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
            names::PAGE_FREES_TOTAL,
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
            fallbacks.push(counter(
                &[("fragmenting", crate::label::UNKNOWN)],
                unknown as f64,
            ));
        }
        out.push(family(
            names::PAGE_FALLBACKS_TOTAL,
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
            names::PAGE_ALLOCATION_FAILURES_TOTAL,
            "Failed page allocations, by order.",
            MetricType::COUNTER,
            page_failures
                .iter()
                .map(|(o, n)| counter(&[("order", &o.to_string())], *n as f64))
                .collect(),
        ));
        let stalls: u64 = (0..ORDER_SLOTS).map(|o| snap.compaction_stalls(o)).sum();
        out.push(family(
            names::COMPACTION_STALLS_TOTAL,
            "Direct compactions: allocations that stalled to compact memory (mm_compaction_try_to_compact_pages).",
            MetricType::COUNTER,
            vec![counter(&[], stalls as f64)],
        ));
        out.push(family(
            names::OOM_KILLS_TOTAL,
            "Processes the OOM killer chose (oom:mark_victim).",
            MetricType::COUNTER,
            vec![counter(&[], snap.counter(Counter::OomKills) as f64)],
        ));
        out.push(family(
            names::KMALLOC_LARGEST_SEEN_BYTES,
            "The largest successful kmalloc seen since memtrace started, in bytes allocated.",
            MetricType::GAUGE,
            vec![gauge(&[], snap.largest_kmalloc() as f64)],
        ));
        out.push(family(
            names::VMALLOC_LARGEST_SEEN_BYTES,
            "The largest vmalloc area seen since memtrace started, in bytes.",
            MetricType::GAUGE,
            vec![gauge(&[], snap.largest_vmalloc() as f64)],
        ));
        out.push(family(
            names::PAGE_LARGEST_SEEN_ORDER,
            "The highest order of a successful page allocation seen since memtrace started.",
            MetricType::GAUGE,
            snap.largest_page_order()
                .map(|o| vec![gauge(&[], o as f64)])
                .unwrap_or_default(),
        ));
    }
}
