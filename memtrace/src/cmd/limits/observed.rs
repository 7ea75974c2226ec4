//! What a running daemon has observed since it started, read from its /metrics: the part of
//! `memtrace limits` that needs history (largest allocations seen, failures per order,
//! fallbacks, compaction stalls, OOM kills).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::export::{names, scrape::Sample};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// Where the figures came from.
    pub source: String,
    pub kmalloc_largest_bytes: u64,
    pub vmalloc_largest_bytes: u64,
    pub page_largest_order: Option<u32>,
    pub page_failures_by_order: BTreeMap<u32, u64>,
    pub allocation_failures: BTreeMap<String, u64>,
    pub fallbacks_fragmenting: u64,
    pub fallbacks_total: u64,
    pub compaction_stalls: u64,
    pub oom_kills: u64,
}

impl Observed {
    /// Extracts the figures from a scrape of `memtrace daemon`.
    pub fn from_samples(samples: &[Sample], source: &str) -> Observed {
        let mut o = Observed {
            source: source.to_string(),
            ..Default::default()
        };
        for s in samples {
            let v = s.value.max(0.0) as u64;
            match s.name.as_str() {
                names::KMALLOC_LARGEST_SEEN_BYTES => o.kmalloc_largest_bytes = v,
                names::VMALLOC_LARGEST_SEEN_BYTES => o.vmalloc_largest_bytes = v,
                names::PAGE_LARGEST_SEEN_ORDER => o.page_largest_order = Some(v as u32),
                names::PAGE_ALLOCATION_FAILURES_TOTAL => {
                    if let Some(order) = s.labels.get("order").and_then(|x| x.parse().ok()) {
                        *o.page_failures_by_order.entry(order).or_default() += v;
                    }
                }
                names::ALLOCATION_FAILURES_TOTAL => {
                    if let Some(a) = s.labels.get("allocator") {
                        *o.allocation_failures.entry(a.clone()).or_default() += v;
                    }
                }
                names::PAGE_FALLBACKS_TOTAL => {
                    o.fallbacks_total += v;
                    if s.labels.get("fragmenting").map(String::as_str) == Some("true") {
                        o.fallbacks_fragmenting += v;
                    }
                }
                names::COMPACTION_STALLS_TOTAL => o.compaction_stalls += v,
                names::OOM_KILLS_TOTAL => o.oom_kills += v,
                _ => {}
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::scrape::parse_exposition;

    #[test]
    fn reads_a_daemon_scrape() {
        let text = "memtrace_kmalloc_largest_seen_bytes 65536\nmemtrace_vmalloc_largest_seen_bytes 266240\nmemtrace_page_largest_seen_order 9\nmemtrace_page_allocation_failures_total{order=\"4\"} 2\nmemtrace_page_allocation_failures_total{order=\"5\"} 1\nmemtrace_allocation_failures_total{allocator=\"page\",gfp=\"GFP_KERNEL\"} 3\nmemtrace_allocation_failures_total{allocator=\"kmalloc\",gfp=\"GFP_NOWAIT\"} 4\nmemtrace_page_fallbacks_total{fragmenting=\"true\"} 5\nmemtrace_page_fallbacks_total{fragmenting=\"false\"} 1\nmemtrace_compaction_stalls_total 7\nmemtrace_oom_kills_total 1\n";
        let o = Observed::from_samples(&parse_exposition(text), "test");
        assert_eq!(o.kmalloc_largest_bytes, 65536);
        assert_eq!(o.page_largest_order, Some(9));
        assert_eq!(o.page_failures_by_order[&4], 2);
        assert_eq!(o.allocation_failures["kmalloc"], 4);
        assert_eq!((o.fallbacks_total, o.fallbacks_fragmenting), (6, 5));
        assert_eq!((o.compaction_stalls, o.oom_kills), (7, 1));
        let mut out = Vec::new();
        super::super::print_observed(&o, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("64 KiB (65536 B)"), "{text}");
        assert!(text.contains("order 4: 2, order 5: 1"));
    }
}
