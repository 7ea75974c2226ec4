//! What a running daemon has observed since it started, read from its /metrics: the part of
//! `memtrace limits` that needs history (largest allocations seen, failures per order,
//! fallbacks, compaction stalls, OOM kills).

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use crate::scrape::Sample;

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
                "memtrace_kmalloc_largest_seen_bytes" => o.kmalloc_largest_bytes = v,
                "memtrace_vmalloc_largest_seen_bytes" => o.vmalloc_largest_bytes = v,
                "memtrace_page_largest_seen_order" => o.page_largest_order = Some(v as u32),
                "memtrace_page_allocation_failures_total" => {
                    if let Some(order) = s.labels.get("order").and_then(|x| x.parse().ok()) {
                        *o.page_failures_by_order.entry(order).or_default() += v;
                    }
                }
                "memtrace_allocation_failures_total" => {
                    if let Some(a) = s.labels.get("allocator") {
                        *o.allocation_failures.entry(a.clone()).or_default() += v;
                    }
                }
                "memtrace_page_fallbacks_total" => {
                    o.fallbacks_total += v;
                    if s.labels.get("fragmenting").map(String::as_str) == Some("true") {
                        o.fallbacks_fragmenting += v;
                    }
                }
                "memtrace_compaction_stalls_total" => o.compaction_stalls += v,
                "memtrace_oom_kills_total" => o.oom_kills += v,
                _ => {}
            }
        }
        o
    }

    pub fn print_human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "Observed since the daemon started [{}]", self.source)?;
        writeln!(
            out,
            "  largest kmalloc          {}",
            human_bytes(self.kmalloc_largest_bytes)
        )?;
        writeln!(
            out,
            "  largest vmalloc area     {}",
            human_bytes(self.vmalloc_largest_bytes)
        )?;
        writeln!(
            out,
            "  highest page order       {}",
            self.page_largest_order
                .map_or("none seen".to_string(), |o| o.to_string())
        )?;
        let fails: Vec<String> = self
            .allocation_failures
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        writeln!(
            out,
            "  allocation failures      {}",
            if fails.is_empty() {
                "none".to_string()
            } else {
                fails.join(", ")
            }
        )?;
        let per_order: Vec<String> = self
            .page_failures_by_order
            .iter()
            .map(|(o, n)| format!("order {o}: {n}"))
            .collect();
        writeln!(
            out,
            "  page failures by order   {}",
            if per_order.is_empty() {
                "none".to_string()
            } else {
                per_order.join(", ")
            }
        )?;
        writeln!(
            out,
            "  extfrag fallbacks        {} ({} fragmenting)",
            self.fallbacks_total, self.fallbacks_fragmenting
        )?;
        writeln!(out, "  compaction stalls        {}", self.compaction_stalls)?;
        writeln!(out, "  OOM kills                {}", self.oom_kills)
    }
}

/// `v` bytes in the largest binary unit that keeps it at 1 or more: (value, unit).
pub fn scaled_bytes(v: f64) -> (f64, &'static str) {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = if v.is_finite() { v.max(0.0) } else { 0.0 };
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    (v, UNITS[u])
}

/// `4 MiB (4194304 B)`-style sizes.
pub fn human_bytes(b: u64) -> String {
    match scaled_bytes(b as f64) {
        (_, "B") => format!("{b} B"),
        (v, unit) if v.fract() == 0.0 => format!("{v:.0} {unit} ({b} B)"),
        (v, unit) => format!("{v:.1} {unit} ({b} B)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse_exposition;

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
        o.print_human(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("64 KiB (65536 B)"), "{text}");
        assert!(text.contains("order 4: 2, order 5: 1"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(4 << 20), "4 MiB (4194304 B)");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 B)");
    }
}
