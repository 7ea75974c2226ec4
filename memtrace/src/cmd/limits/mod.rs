//! `memtrace limits`: the human-readable report of [`Limits`] (what can be allocated now) and
//! of [`Observed`] (what a running daemon has seen), each figure with its source.

use std::{io::Write, path::Path, time::Duration};

use crate::{
    export::scrape,
    limits::{Figure, Limits, Sources, collect},
};

pub mod observed;
use observed::Observed;

/// Flags of `memtrace limits`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The daemon's metrics URL for the observed figures; without this flag the default
    /// address is tried and skipped if no daemon answers.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

/// Where `memtrace limits` looks for a daemon when no --from is given.
pub const DEFAULT_METRICS_URL: &str = "http://127.0.0.1:9701/metrics";

/// Runs `memtrace limits`: the limits read now and, where a daemon answers, what it observed.
pub fn run(args: &LimitsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let limits = collect(&Sources::live())?;
    let url = args
        .from
        .clone()
        .unwrap_or_else(|| DEFAULT_METRICS_URL.to_string());
    let observed = match scrape::get(&url, Duration::from_secs(3)) {
        Ok(text) => Ok(Observed::from_samples(
            &scrape::parse_exposition(&text),
            &url,
        )),
        // An explicit --from must work; the default address is only a guess.
        Err(e) if args.from.is_some() => return Err(e.into()),
        Err(e) => Err(e.to_string()),
    };
    if args.json {
        let v = serde_json::json!({
            "limits": limits,
            "observed": observed.as_ref().ok(),
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        print_human(&limits, out)?;
        writeln!(out)?;
        match &observed {
            Ok(o) => print_observed(o, out)?,
            Err(e) => writeln!(
                out,
                "Observed since the daemon started: no daemon answered ({e}); start `memtrace daemon` or pass --from URL"
            )?,
        }
    }
    Ok(())
}

/// `4194304` -> "4 MiB (4194304 B)"; inexact sizes get one (truncated) decimal.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let (mut unit, mut div) = (0, 1024u64);
    while unit + 1 < UNITS.len() && b / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    let whole = if b.is_multiple_of(div) {
        (b / div).to_string()
    } else {
        let tenths = u128::from(b) * 10 / u128::from(div);
        format!("{}.{}", tenths / 10, tenths % 10)
    };
    format!("{whole} {} ({b} B)", UNITS[unit])
}

/// The file part of a source such as "/proc/meminfo: MemTotal (kB)".
fn file_of(source: &str) -> &str {
    source.rsplit_once(": ").map_or(source, |(file, _)| file)
}

/// Writes `label: value  [source]` rows under section headings.
struct Report<'a> {
    out: &'a mut dyn std::io::Write,
    meminfo: &'a str,
}

impl Report<'_> {
    fn head(&mut self, heading: &str) -> std::io::Result<()> {
        writeln!(self.out, "\n{heading}")
    }
    fn row(
        &mut self,
        label: &str,
        value: impl std::fmt::Display,
        source: &str,
    ) -> std::io::Result<()> {
        writeln!(self.out, "  {:<24}{value}  [{source}]", format!("{label}:"))
    }
    fn size(&mut self, label: &str, f: &Figure<u64>) -> std::io::Result<()> {
        self.row(label, human_bytes(f.value), &f.source)
    }
    /// An optional /proc/meminfo figure, `bytes` or a count; absent says which line is missing.
    fn meminfo(
        &mut self,
        label: &str,
        f: &Option<Figure<u64>>,
        key: &str,
        bytes: bool,
    ) -> std::io::Result<()> {
        match f {
            Some(f) if bytes => self.size(label, f),
            Some(f) => self.row(label, f.value, &f.source),
            None => self.row(label, "none", &format!("{}: no {key} line", self.meminfo)),
        }
    }
}

/// A readable report: one section per topic, every figure followed by its source in brackets, sizes in human units (e.g. "4 MiB (4194304 B)").
pub fn print_human(l: &Limits, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let buddy = file_of(&l.max_order.source);
    let zoneinfo = Path::new(buddy)
        .with_file_name("zoneinfo")
        .display()
        .to_string();
    let meminfo = file_of(&l.ram_total_bytes.source);
    let mut r = Report { out, meminfo };

    writeln!(r.out, "Page allocator")?;
    r.size("page size", &l.page_size)?;
    r.row("max order", l.max_order.value, &l.max_order.source)?;
    let largest = human_bytes(l.largest_free_block_bytes);
    r.row(
        "largest free block",
        largest,
        &format!("{buddy}: max over zones"),
    )?;
    match l.orders_satisfiable_now.iter().rposition(|&s| s) {
        Some(top) => r.row(
            "satisfiable now",
            format!("orders 0-{top} (free lists only)"),
            buddy,
        )?,
        None => r.row("satisfiable now", "none (no free block in any zone)", buddy)?,
    }
    writeln!(
        r.out,
        "  (watermarks ignored; reclaim or compaction may make larger blocks)"
    )?;

    r.head("Zones")?;
    for z in &l.zones {
        let largest = match z.largest_free_order {
            Some(o) => format!("order {o} = {}", human_bytes(z.largest_free_block_bytes)),
            None => "none".into(),
        };
        let free = format!("{} free pages, largest free block {largest}", z.free_pages);
        r.row(&format!("node {} {}", z.node, z.zone), free, buddy)?;
        if let (Some(min), Some(low), Some(high), Some(managed)) = (
            z.watermark_min,
            z.watermark_low,
            z.watermark_high,
            z.managed_pages,
        ) {
            let marks = format!("min {min} / low {low} / high {high} of {managed} managed pages");
            r.row("  watermarks", marks, &zoneinfo)?;
        }
    }

    r.head("kmalloc")?;
    r.size("largest kmalloc", &l.kmalloc_max_bytes)?;
    match &l.kmalloc_max_cache_bytes {
        Some(f) => r.size("largest kmalloc cache", f)?,
        None => r.row(
            "largest kmalloc cache",
            "unknown",
            "no readable kernel/slab or slabinfo",
        )?,
    }
    writeln!(
        r.out,
        "  (above the largest cache, kmalloc goes straight to the page allocator)"
    )?;

    r.head("vmalloc")?;
    r.size("address space", &l.vmalloc_total_bytes)?;
    r.size("used", &l.vmalloc_used_bytes)?;
    let ram = l.ram_available_bytes.as_ref().unwrap_or(&l.ram_total_bytes);
    let space = l
        .vmalloc_total_bytes
        .value
        .saturating_sub(l.vmalloc_used_bytes.value);
    let bound = format!("min(VmallocTotal - VmallocUsed, {})", ram.source);
    r.row("upper bound now", human_bytes(space.min(ram.value)), &bound)?;

    r.head("RAM")?;
    r.size("total", &l.ram_total_bytes)?;
    r.meminfo("available", &l.ram_available_bytes, "MemAvailable", true)?;

    r.head("CMA")?;
    r.meminfo("total", &l.cma_total_bytes, "CmaTotal", true)?;
    r.meminfo("free", &l.cma_free_bytes, "CmaFree", true)?;

    r.head("Huge pages")?;
    match &l.thp_enabled {
        Some(f) => r.row("transparent huge pages", &f.value, &f.source)?,
        None => r.row(
            "transparent huge pages",
            "unknown",
            "transparent_hugepage/enabled unreadable",
        )?,
    }
    r.meminfo(
        "hugetlb page size",
        &l.hugepage_size_bytes,
        "Hugepagesize",
        true,
    )?;
    r.meminfo(
        "hugetlb pages total",
        &l.hugepages_total,
        "HugePages_Total",
        false,
    )?;
    r.meminfo(
        "hugetlb pages free",
        &l.hugepages_free,
        "HugePages_Free",
        false,
    )
}

/// Prints what a daemon has observed, for `memtrace limits --from`.
pub fn print_observed(o: &Observed, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Observed since the daemon started [{}]", o.source)?;
    writeln!(
        out,
        "  largest kmalloc          {}",
        human_bytes(o.kmalloc_largest_bytes)
    )?;
    writeln!(
        out,
        "  largest vmalloc area     {}",
        human_bytes(o.vmalloc_largest_bytes)
    )?;
    writeln!(
        out,
        "  highest page order       {}",
        o.page_largest_order
            .map_or("none seen".to_string(), |o| o.to_string())
    )?;
    let fails: Vec<String> = o
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
    let per_order: Vec<String> = o
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
        o.fallbacks_total, o.fallbacks_fragmenting
    )?;
    writeln!(out, "  compaction stalls        {}", o.compaction_stalls)?;
    writeln!(out, "  OOM kills                {}", o.oom_kills)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{
        collect,
        tests::{fixture, report},
    };

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4 << 20), "4 MiB (4194304 B)");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 B)");
        assert_eq!(human_bytes((1 << 20) - 1), "1023.9 KiB (1048575 B)");
        assert_eq!(
            human_bytes(34359738367 * 1024),
            "31.9 TiB (35184372087808 B)"
        );
    }

    #[test]
    fn human_report() {
        for case in ["single-node", "multi-node"] {
            let text = report(&collect(&fixture(case)).expect("collect"));
            for heading in [
                "Page allocator",
                "\nZones\n",
                "\nkmalloc\n",
                "\nvmalloc\n",
                "\nRAM\n",
                "\nCMA\n",
                "\nHuge pages\n",
            ] {
                assert!(text.contains(heading), "{case}: no {heading:?} in\n{text}");
            }
            assert!(!text.contains("0xffff"), "{text}");
            assert!(
                text.contains("4 MiB (4194304 B)  [page size << max order"),
                "{text}"
            );
            assert!(text.contains("/proc/zoneinfo]"), "{text}");
        }
    }
}
