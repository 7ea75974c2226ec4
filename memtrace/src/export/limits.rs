//! What can be allocated right now, from [`crate::limits::Limits`]: free blocks per order,
//! the largest free block, kmalloc and vmalloc bounds, RAM and CMA.

use prometheus::proto::{MetricFamily, MetricType};

use super::{
    names,
    proto::{family, gauge},
};

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
            names::FREE_BLOCKS,
            "Free blocks in the buddy allocator, by node, zone and order (/proc/buddyinfo).",
            MetricType::GAUGE,
            free_blocks,
        ),
        family(
            names::LARGEST_FREE_BLOCK_BYTES,
            "The largest physically contiguous free block, by node and zone.",
            MetricType::GAUGE,
            largest,
        ),
        family(
            names::KMALLOC_MAX_BYTES,
            "The largest kmalloc this kernel can serve: page size << MAX_PAGE_ORDER.",
            MetricType::GAUGE,
            one(l.kmalloc_max_bytes.value),
        ),
        family(
            names::KMALLOC_MAX_CACHE_BYTES,
            "The largest kmalloc served from a slab cache; larger ones go to the page allocator.",
            MetricType::GAUGE,
            l.kmalloc_max_cache_bytes
                .as_ref()
                .map(|f| one(f.value))
                .unwrap_or_default(),
        ),
        family(
            names::PAGE_MAX_ORDER,
            "The page allocator's highest order (MAX_PAGE_ORDER).",
            MetricType::GAUGE,
            one(u64::from(l.max_order.value)),
        ),
        family(
            names::VMALLOC_TOTAL_BYTES,
            "Size of the vmalloc address range (VmallocTotal).",
            MetricType::GAUGE,
            one(l.vmalloc_total_bytes.value),
        ),
        family(
            names::VMALLOC_USED_BYTES,
            "vmalloc memory in use (VmallocUsed).",
            MetricType::GAUGE,
            one(l.vmalloc_used_bytes.value),
        ),
        family(
            names::RAM_TOTAL_BYTES,
            "RAM (MemTotal): no vmalloc can be larger than the memory that backs it.",
            MetricType::GAUGE,
            one(l.ram_total_bytes.value),
        ),
        family(
            names::CMA_TOTAL_BYTES,
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
