//! `memtrace limits`: how large an allocation can succeed on this machine right now.
//!
//! Every figure is read from the running system (procfs, sysfs, `sysconf`) rather than
//! compiled in, and carries the source it came from: the buddy allocator's order count and
//! free lists (/proc/buddyinfo), zone watermarks (/proc/zoneinfo), the largest kmalloc
//! cache (/sys/kernel/slab or /proc/slabinfo), vmalloc space, RAM, CMA and huge pages
//! (/proc/meminfo, /sys/kernel/mm/transparent_hugepage). `memtrace limits` (in `cmd`) prints
//! them beside what a running daemon has observed.

mod parse;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use parse::{bracketed, is_plain_kmalloc, malformed, parse_num, shl};
pub use parse::{parse_buddyinfo, parse_meminfo, parse_zoneinfo};

/// Where to read from; tests point these at fixture trees.
#[derive(Debug, Clone)]
pub struct Sources {
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub page_size: u64,
}

impl Sources {
    /// The live system: /proc, /sys, page size from sysconf(_SC_PAGESIZE) (libc).
    ///
    /// POSIX requires `_SC_PAGESIZE`; should sysconf fail anyway the page size is 0 (every
    /// byte figure then reads 0) rather than an invented constant.
    pub fn live() -> Sources {
        Sources {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            page_size: sysconf_page_size().unwrap_or(0),
        }
    }
}

fn sysconf_page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it only returns a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// A value and where it came from (e.g. "/proc/buddyinfo: 11 order columns", "sysconf(_SC_PAGESIZE)").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure<T> {
    pub value: T,
    pub source: String,
}

impl<T> Figure<T> {
    fn new(value: T, source: impl Into<String>) -> Self {
        Figure {
            value,
            source: source.into(),
        }
    }
}

/// One memory zone of one NUMA node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Zone {
    pub node: u32,
    /// "DMA", "DMA32", "Normal", "Movable", ...
    pub zone: String,
    /// Free blocks per order (index = order), from /proc/buddyinfo.
    pub free_blocks: Vec<u64>,
    /// Highest order with a free block, None if all counts are zero.
    pub largest_free_order: Option<u32>,
    /// `page_size << largest_free_order`, 0 if there is no free block.
    pub largest_free_block_bytes: u64,
    /// Sum over orders of `count << order`.
    pub free_pages: u64,
    /// From /proc/zoneinfo when readable (None otherwise): the zone's min/low/high watermarks in pages, and managed pages.
    pub watermark_min: Option<u64>,
    pub watermark_low: Option<u64>,
    pub watermark_high: Option<u64>,
    pub managed_pages: Option<u64>,
}

/// A zone's watermarks and managed pages as /proc/zoneinfo gives them, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ZoneWatermarks {
    pub min: u64,
    pub low: u64,
    pub high: u64,
    pub managed: u64,
}

/// Everything `memtrace limits` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub page_size: Figure<u64>,
    /// MAX_PAGE_ORDER = number of order columns in /proc/buddyinfo - 1.
    pub max_order: Figure<u32>,
    /// `page_size << max_order`: the largest kmalloc, served by the page allocator.
    pub kmalloc_max_bytes: Figure<u64>,
    /// Largest object size among the plain `kmalloc-<size>` caches (dma-, cg-, rcl- and rnd-
    /// variants ignored); above it kmalloc goes straight to the page allocator. None if
    /// neither /sys/kernel/slab nor /proc/slabinfo is readable.
    pub kmalloc_max_cache_bytes: Option<Figure<u64>>,
    pub zones: Vec<Zone>,
    /// For each order 0..=max_order: whether some zone has a free block of that order or
    /// larger right now, i.e. it can be served from the free lists without reclaim or
    /// compaction. Watermarks are ignored: the allocator may still refuse a request that
    /// would take a zone below its min watermark.
    pub orders_satisfiable_now: Vec<bool>,
    /// Largest free block over all zones, in bytes.
    pub largest_free_block_bytes: u64,
    /// VmallocTotal: the size of the vmalloc address space.
    pub vmalloc_total_bytes: Figure<u64>,
    /// VmallocUsed.
    pub vmalloc_used_bytes: Figure<u64>,
    /// MemTotal: a vmalloc cannot exceed the RAM that backs it.
    pub ram_total_bytes: Figure<u64>,
    /// MemAvailable.
    pub ram_available_bytes: Option<Figure<u64>>,
    /// CmaTotal if the line exists (None = no CMA).
    pub cma_total_bytes: Option<Figure<u64>>,
    /// CmaFree.
    pub cma_free_bytes: Option<Figure<u64>>,
    /// Hugepagesize.
    pub hugepage_size_bytes: Option<Figure<u64>>,
    /// HugePages_Total (a count of pages).
    pub hugepages_total: Option<Figure<u64>>,
    /// HugePages_Free (a count of pages).
    pub hugepages_free: Option<Figure<u64>>,
    /// The bracketed word in transparent_hugepage/enabled ("always"/"madvise"/"never").
    pub thp_enabled: Option<Figure<String>>,
}

/// Why limits could not be collected. `line` 0 means the file as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed {path} line {line}: {what}")]
    Malformed {
        path: String,
        line: usize,
        what: String,
    },
}

/// Largest plain kmalloc cache object size: <sys>/kernel/slab/*/object_size, else the
/// objsize column of <proc>/slabinfo, else None.
fn kmalloc_max_cache(src: &Sources) -> Result<Option<Figure<u64>>, LimitsError> {
    let dir = src.sys_root.join("kernel/slab");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let (mut best, mut count): (Option<(u64, String)>, usize) = (None, 0);
        for entry in entries.flatten() {
            if !is_plain_kmalloc(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let file = entry.path().join("object_size");
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let path = file.display().to_string();
            let size = parse_num(text.trim(), &path, 1, "object_size")?;
            count += 1;
            if best.as_ref().is_none_or(|(b, _)| size > *b) {
                best = Some((size, path));
            }
        }
        if let Some((size, path)) = best {
            let source = format!("{path} (largest of {count} kmalloc-<size> caches)");
            return Ok(Some(Figure::new(size, source)));
        }
    }
    let file = src.proc_root.join("slabinfo");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let path = file.display().to_string();
    let mut best: Option<(u64, &str)> = None;
    for (i, line) in text.lines().enumerate() {
        let mut toks = line.split_whitespace();
        let Some(name) = toks.next().filter(|n| is_plain_kmalloc(n)) else {
            continue;
        };
        let objsize = toks
            .nth(2)
            .ok_or_else(|| malformed(&path, i + 1, "no objsize column"))?;
        let size = parse_num(objsize, &path, i + 1, "objsize")?;
        if best.is_none_or(|(b, _)| size > b) {
            best = Some((size, name));
        }
    }
    Ok(best.map(|(size, name)| Figure::new(size, format!("{path}: objsize of {name}"))))
}

/// Reads every figure from `src`. /proc/buddyinfo and /proc/meminfo (with MemTotal,
/// VmallocTotal and VmallocUsed) are required; everything else is optional (None / empty).
/// An optional file that cannot be read counts as absent; one that reads but does not parse
/// is still an error, since its figures would otherwise be silently wrong.
pub fn collect(src: &Sources) -> Result<Limits, LimitsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| LimitsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let page_size = src.page_size;
    let page_source = if sysconf_page_size() == Some(page_size) {
        "sysconf(_SC_PAGESIZE)"
    } else {
        "page size supplied by the caller"
    };

    let bpath = src.proc_root.join("buddyinfo");
    let bname = bpath.display().to_string();
    let rows = parse_buddyinfo(&read(&bpath)?, &bname)?;
    let columns = rows.first().map_or(0, |r| r.2.len());
    let max_order = u32::try_from(columns.saturating_sub(1)).unwrap_or(u32::MAX);

    let zpath = src.proc_root.join("zoneinfo");
    let watermarks: BTreeMap<(u32, String), ZoneWatermarks> = match std::fs::read_to_string(&zpath)
    {
        Ok(text) => parse_zoneinfo(&text, &zpath.display().to_string())?
            .into_iter()
            .map(|(node, zone, w)| ((node, zone), w))
            .collect(),
        Err(_) => BTreeMap::new(),
    };

    let zones: Vec<Zone> = rows
        .into_iter()
        .map(|(node, zone, free_blocks)| {
            let largest_free_order = free_blocks.iter().rposition(|&c| c > 0).map(|o| o as u32);
            let free_pages = (0u32..)
                .zip(&free_blocks)
                .fold(0u64, |acc, (o, &c)| acc.saturating_add(shl(c, o)));
            let w = watermarks.get(&(node, zone.clone()));
            Zone {
                largest_free_block_bytes: largest_free_order.map_or(0, |o| shl(page_size, o)),
                watermark_min: w.map(|w| w.min),
                watermark_low: w.map(|w| w.low),
                watermark_high: w.map(|w| w.high),
                managed_pages: w.map(|w| w.managed),
                node,
                zone,
                free_blocks,
                largest_free_order,
                free_pages,
            }
        })
        .collect();
    let orders_satisfiable_now = (0..=max_order)
        .map(|o| {
            zones
                .iter()
                .any(|z| z.largest_free_order.is_some_and(|l| l >= o))
        })
        .collect();
    let largest_free_block_bytes = zones
        .iter()
        .map(|z| z.largest_free_block_bytes)
        .max()
        .unwrap_or(0);

    let mpath = src.proc_root.join("meminfo");
    let mname = mpath.display().to_string();
    let mem = parse_meminfo(&read(&mpath)?, &mname)?;
    let kb = |key: &str| {
        mem.get(key)
            .map(|&v| Figure::new(v.saturating_mul(1024), format!("{mname}: {key} (kB)")))
    };
    let count = |key: &str| {
        mem.get(key)
            .map(|&v| Figure::new(v, format!("{mname}: {key}")))
    };
    let required =
        |key: &str| kb(key).ok_or_else(|| malformed(&mname, 0, format!("no {key} line")));

    let tpath = src.sys_root.join("kernel/mm/transparent_hugepage/enabled");
    let thp_enabled = match std::fs::read_to_string(&tpath) {
        Ok(text) => {
            let tname = tpath.display().to_string();
            let word =
                bracketed(&text).ok_or_else(|| malformed(&tname, 1, "no [bracketed] setting"))?;
            Some(Figure::new(word.to_string(), tname))
        }
        Err(_) => None,
    };

    Ok(Limits {
        page_size: Figure::new(page_size, page_source),
        max_order: Figure::new(max_order, format!("{bname}: {columns} order columns")),
        kmalloc_max_bytes: Figure::new(
            shl(page_size, max_order),
            format!("page size << max order ({bname})"),
        ),
        kmalloc_max_cache_bytes: kmalloc_max_cache(src)?,
        zones,
        orders_satisfiable_now,
        largest_free_block_bytes,
        vmalloc_total_bytes: required("VmallocTotal")?,
        vmalloc_used_bytes: required("VmallocUsed")?,
        ram_total_bytes: required("MemTotal")?,
        ram_available_bytes: kb("MemAvailable"),
        cma_total_bytes: kb("CmaTotal"),
        cma_free_bytes: kb("CmaFree"),
        hugepage_size_bytes: kb("Hugepagesize"),
        hugepages_total: count("HugePages_Total"),
        hugepages_free: count("HugePages_Free"),
        thp_enabled,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::parse::*;
    use super::*;

    const KIB4: u64 = 4096;

    pub(crate) fn fixture(case: &str) -> Sources {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/limits")).join(case);
        Sources {
            proc_root: root.join("proc"),
            sys_root: root.join("sys"),
            page_size: KIB4,
        }
    }

    pub(crate) fn report(l: &Limits) -> String {
        let mut buf = Vec::new();
        crate::cmd::limits::print_human(l, &mut buf).expect("write to a Vec");
        String::from_utf8(buf).expect("utf-8 report")
    }

    #[test]
    fn single_node_captured() {
        let l = collect(&fixture("single-node")).expect("collect");
        assert_eq!(l.max_order.value, 10);
        assert!(
            l.max_order
                .source
                .ends_with("/proc/buddyinfo: 11 order columns"),
            "{}",
            l.max_order.source
        );
        assert_eq!(l.kmalloc_max_bytes.value, 4 << 20);
        let cache = l.kmalloc_max_cache_bytes.as_ref().expect("kmalloc cache");
        assert_eq!(cache.value, 8192);
        assert!(
            cache.source.contains("kmalloc-8k/object_size"),
            "{}",
            cache.source
        );
        assert!(cache.source.contains("largest of 13 "), "{}", cache.source);

        let names: Vec<&str> = l.zones.iter().map(|z| z.zone.as_str()).collect();
        assert_eq!(names, ["DMA", "DMA32", "Normal"]);
        let top = l
            .zones
            .iter()
            .filter_map(|z| z.largest_free_order)
            .max()
            .expect("some free block");
        assert_eq!(top, 10);
        assert_eq!(l.largest_free_block_bytes, KIB4 << top);
        for z in &l.zones {
            assert_eq!(z.free_blocks.len(), 11);
            let expect = z.free_blocks.iter().rposition(|&c| c > 0).map(|o| o as u32);
            assert_eq!(z.largest_free_order, expect);
            assert!(
                z.watermark_min.is_some() && z.managed_pages.is_some(),
                "{z:?}"
            );
        }
        let dma = &l.zones[0];
        assert_eq!(dma.free_pages, 3 * 1024 + 512 + 256);
        assert_eq!(
            (dma.watermark_min, dma.watermark_low, dma.watermark_high),
            (Some(19), Some(23), Some(27))
        );
        assert_eq!(dma.managed_pages, Some(3840));
        assert_eq!(l.orders_satisfiable_now, vec![true; 11]);

        assert_eq!(l.ram_total_bytes.value, 24731700 * 1024);
        assert_eq!(l.vmalloc_total_bytes.value, 34359738367 * 1024);
        assert_eq!(l.cma_total_bytes, None);
        assert_eq!(
            l.hugepage_size_bytes.as_ref().map(|f| f.value),
            Some(2 << 20)
        );
        assert_eq!(l.hugepages_total.as_ref().map(|f| f.value), Some(0));
        assert_eq!(
            l.thp_enabled.as_ref().map(|f| f.value.as_str()),
            Some("madvise")
        );
        serde_json::to_string(&l).expect("serialize");
    }

    #[test]
    fn multi_node_per_zone() {
        let l = collect(&fixture("multi-node")).expect("collect");
        let key: Vec<(u32, &str, Option<u32>)> = l
            .zones
            .iter()
            .map(|z| (z.node, z.zone.as_str(), z.largest_free_order))
            .collect();
        assert_eq!(
            key,
            [
                (0, "DMA", Some(10)),
                (0, "DMA32", Some(7)),
                (0, "Normal", Some(5)),
                (1, "Normal", Some(9)),
                (1, "Movable", None)
            ]
        );
        let movable = &l.zones[4];
        assert_eq!(
            (movable.largest_free_block_bytes, movable.free_pages),
            (0, 0)
        );
        assert_eq!(
            (movable.watermark_min, movable.managed_pages),
            (Some(32), Some(0))
        );
        let n0 = &l.zones[2];
        assert_eq!(
            n0.free_pages,
            100 + 50 * 2 + 25 * 4 + 12 * 8 + 6 * 16 + 3 * 32
        );
        assert_eq!(n0.largest_free_block_bytes, KIB4 << 5);
        assert_eq!(
            (n0.watermark_min, n0.watermark_low, n0.watermark_high),
            (Some(12996), Some(16245), Some(19494))
        );
        assert_eq!(n0.managed_pages, Some(5400000));
        assert_eq!(l.zones[3].watermark_high, Some(21000));
        assert_eq!(l.largest_free_block_bytes, 4 << 20);
        assert_eq!(l.orders_satisfiable_now, vec![true; 11]);
        // Plain kmalloc caches top out at 4k here; the 8k cg/rcl/rnd/dma variants are ignored.
        assert_eq!(
            l.kmalloc_max_cache_bytes.as_ref().map(|f| f.value),
            Some(4096)
        );
        assert_eq!(l.cma_total_bytes.as_ref().map(|f| f.value), Some(256 << 20));
        assert_eq!(l.cma_free_bytes.as_ref().map(|f| f.value), Some(128 << 20));
        assert!(
            l.cma_total_bytes
                .as_ref()
                .is_some_and(|f| f.source.ends_with("meminfo: CmaTotal (kB)"))
        );
        assert_eq!(l.hugepages_free.as_ref().map(|f| f.value), Some(8));
        assert_eq!(
            l.thp_enabled.as_ref().map(|f| f.value.as_str()),
            Some("always")
        );
    }

    #[test]
    fn satisfiable_orders_follow_largest_block() {
        let l = collect(&fixture("minimal")).expect("collect");
        assert_eq!(l.max_order.value, 3);
        assert_eq!(l.kmalloc_max_bytes.value, KIB4 << 3);
        assert_eq!(l.orders_satisfiable_now, [true, true, true, false]);
        assert_eq!(l.largest_free_block_bytes, KIB4 << 2);
        // Everything optional is absent from this tree: None, not an error.
        assert_eq!(l.zones[0].watermark_min, None);
        assert_eq!(l.kmalloc_max_cache_bytes, None);
        assert_eq!(l.ram_available_bytes, None);
        assert_eq!(l.cma_total_bytes, None);
        assert_eq!(l.hugepage_size_bytes, None);
        assert_eq!(l.hugepages_total, None);
        assert_eq!(l.thp_enabled, None);
        assert!(
            report(&l).contains("none  [") && report(&l).contains("meminfo: no CmaTotal line]")
        );
    }

    #[test]
    fn slabinfo_fallback() {
        let l = collect(&fixture("no-sys-slab")).expect("collect");
        let cache = l.kmalloc_max_cache_bytes.expect("from slabinfo");
        assert_eq!(cache.value, 2048);
        assert!(
            cache
                .source
                .ends_with("/proc/slabinfo: objsize of kmalloc-2k"),
            "{}",
            cache.source
        );
        assert!(l.zones.iter().all(|z| z.watermark_min.is_none()));
        assert_eq!(l.thp_enabled, None);
    }

    #[test]
    fn missing_buddyinfo_is_a_read_error() {
        let err = collect(&fixture("missing")).expect_err("no buddyinfo");
        assert!(matches!(err, LimitsError::Read { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read ") && msg.contains("missing/proc/buddyinfo"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_input() {
        let err = parse_buddyinfo(
            "Node 0, zone DMA 1 2 3\nNode 0, zone Normal 4 x 6\n",
            "/proc/buddyinfo",
        );
        let msg = err.expect_err("non-number").to_string();
        assert_eq!(
            msg,
            "malformed /proc/buddyinfo line 2: free-block count \"x\" is not a number"
        );

        let err = parse_buddyinfo("Node 0, zone DMA 1 2 3\n\nNode 0, zone Normal 4 5\n", "bi")
            .expect_err("ragged");
        assert!(
            matches!(err, LimitsError::Malformed { line: 3, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("2 order columns, but the first row has 3")
        );
        assert!(parse_buddyinfo("garbage\n", "bi").is_err());
        assert!(parse_buddyinfo("", "bi").is_err());
        assert!(parse_buddyinfo("Node 0, zone DMA\n", "bi").is_err());

        let err = parse_meminfo("MemTotal: 1 kB\nVmallocTotal 5 kB\n", "/proc/meminfo")
            .expect_err("no colon");
        assert_eq!(
            err.to_string(),
            "malformed /proc/meminfo line 2: expected `Key: value`"
        );
        assert!(parse_meminfo("MemTotal: lots kB\n", "m").is_err());

        assert!(parse_zoneinfo("Node 0, zone DMA\n  min  x\n", "z").is_err());
        assert!(parse_zoneinfo("Node x, zone DMA\n", "z").is_err());
    }

    #[test]
    fn parsers() {
        let rows =
            parse_buddyinfo("Node 1, zone   Normal      6614   8941 \n", "bi").expect("parse");
        assert_eq!(rows, [(1, "Normal".to_string(), vec![6614, 8941])]);
        let mem =
            parse_meminfo("MemTotal:  24731700 kB\nHugePages_Total:  3\n", "m").expect("parse");
        assert_eq!(mem.get("MemTotal"), Some(&24731700));
        assert_eq!(mem.get("HugePages_Total"), Some(&3));
        // Partial zones (here without `managed`) are left out; per-cpu `high:` never matches.
        let text = "Node 0, zone Normal\n  pages free 5\n    min 1\n    low 2\n    high 3\n    managed 9\n      high:  77\n    min 100\nNode 0, zone Device\n    min 0\n";
        let z = parse_zoneinfo(text, "z").expect("parse");
        assert_eq!(
            z,
            [(
                0,
                "Normal".to_string(),
                ZoneWatermarks {
                    min: 1,
                    low: 2,
                    high: 3,
                    managed: 9
                }
            )]
        );
        for (name, plain) in [
            ("kmalloc-8", true),
            ("kmalloc-96", true),
            ("kmalloc-8k", true),
            ("kmalloc-2M", true),
            ("kmalloc-cg-8k", false),
            ("dma-kmalloc-8k", false),
            ("kmalloc-rcl-64", false),
            ("kmalloc-rnd-01-8k", false),
            ("kmalloc_buckets", false),
            ("kmalloc-", false),
            ("kmalloc-k", false),
        ] {
            assert_eq!(is_plain_kmalloc(name), plain, "{name}");
        }
        assert_eq!(bracketed("always [madvise] never\n"), Some("madvise"));
    }

    #[test]
    fn live_system() {
        let src = Sources::live();
        assert!(src.page_size.is_power_of_two());
        let direct = || {
            let text = std::fs::read_to_string("/proc/buddyinfo").expect("read /proc/buddyinfo");
            let top = text
                .lines()
                .filter_map(|l| {
                    let counts: Vec<u64> = l
                        .split_whitespace()
                        .skip(4)
                        .map(|c| c.parse().expect("count"))
                        .collect();
                    counts.iter().rposition(|&c| c > 0)
                })
                .max();
            top.map_or(0, |o| src.page_size << o)
        };
        // The free lists change under us; compare only when two direct reads bracket agree.
        for attempt in 0..20 {
            let before = direct();
            let l = collect(&src).expect("collect live");
            if before == direct() || attempt == 19 {
                assert_eq!(l.largest_free_block_bytes, before);
                assert_eq!(l.page_size.source, "sysconf(_SC_PAGESIZE)");
                assert_eq!(
                    l.kmalloc_max_bytes.value,
                    src.page_size << l.max_order.value
                );
                return;
            }
        }
    }
}
