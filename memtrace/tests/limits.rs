//! `memtrace limits` on the running kernel: its free-block figures agree with
//! /proc/buddyinfo read at the same moment, the subcommand prints them, and a daemon's
//! observed figures move with a high-order allocation driven from userspace.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod cli;
    pub mod compaction;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod xattr;
}

use memtrace::limits::{Sources, collect};
use support::{daemon::Daemon, http::free_port, kernel::require_kernel, xattr::setxattr_kmalloc};

/// (node, zone, counts) straight from /proc/buddyinfo.
fn buddyinfo() -> Vec<(u32, String, Vec<u64>)> {
    let text = std::fs::read_to_string("/proc/buddyinfo").expect("/proc/buddyinfo");
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let node: u32 = w.nth(1)?.trim_end_matches(',').parse().ok()?;
            let zone = w.nth(1)?.to_string();
            Some((node, zone, w.filter_map(|x| x.parse().ok()).collect()))
        })
        .collect()
}

#[test]
fn largest_free_block_matches_buddyinfo_at_the_same_moment() {
    // Free lists change all the time: retry until /proc/buddyinfo reads the same just
    // before and just after memtrace's own reading, then the two must agree exactly.
    for _ in 0..200 {
        let before = buddyinfo();
        let l = collect(&Sources::live()).expect("limits");
        let after = buddyinfo();
        if before != after {
            continue;
        }
        let page = l.page_size.value;
        assert_eq!(l.zones.len(), before.len());
        let mut largest = 0;
        for (z, (node, zone, counts)) in l.zones.iter().zip(&before) {
            assert_eq!((z.node, &z.zone), (*node, zone));
            assert_eq!(&z.free_blocks, counts, "node {node} zone {zone}");
            let top = counts.iter().rposition(|&n| n > 0);
            let bytes = top.map_or(0, |o| page << o);
            assert_eq!(z.largest_free_block_bytes, bytes, "node {node} zone {zone}");
            largest = largest.max(bytes);
        }
        assert_eq!(l.largest_free_block_bytes, largest);
        assert_eq!(l.max_order.value as usize + 1, before[0].2.len());
        assert_eq!(l.kmalloc_max_bytes.value, page << l.max_order.value);
        for (order, ok) in l.orders_satisfiable_now.iter().enumerate() {
            let any = before
                .iter()
                .any(|(_, _, c)| c.iter().skip(order).any(|&n| n > 0));
            assert_eq!(*ok, any, "order {order}");
        }
        return;
    }
    panic!("/proc/buddyinfo never held still across one reading");
}

#[test]
fn limits_subcommand_prints_every_figure_with_its_source() {
    let port = free_port(); // nothing listens: observed figures are skipped, not an error
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = support::cli::memtrace(&["limits", "--json", "--from", &url]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an explicit --from must be reachable"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("cannot reach"),
        "{err}"
    );

    let out = support::cli::memtrace(&["limits", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let l = &v["limits"];
    for key in [
        "page_size",
        "max_order",
        "kmalloc_max_bytes",
        "vmalloc_total_bytes",
        "vmalloc_used_bytes",
        "ram_total_bytes",
    ] {
        assert!(l[key]["value"].is_number(), "{key}: {l}");
        assert!(
            l[key]["source"].as_str().is_some_and(|s| !s.is_empty()),
            "{key} has a source"
        );
    }
    assert!(l["zones"].as_array().is_some_and(|z| !z.is_empty()));

    let out = support::cli::memtrace(&["limits"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Observed since the daemon started"), "{text}");
    assert!(!text.contains("0xffff"));
}

#[test]
fn a_high_order_allocation_moves_the_observed_figures() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let d = Daemon::start(free_port());
    let url = format!("http://127.0.0.1:{}/metrics", d.port);
    // 64 KiB setxattr values: kmalloc_large, an order-4 page allocation each.
    let dir = std::env::temp_dir().join(format!("memtrace-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    support::compaction::compact_memory();
    for _ in 0..10 {
        setxattr_kmalloc(&file, 65536);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = support::cli::memtrace(&["limits", "--json", "--from", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &v["observed"];
    assert!(o["kmalloc_largest_bytes"].as_u64().unwrap() >= 65536, "{o}");
    assert!(o["page_largest_order"].as_u64().unwrap() >= 4, "{o}");
    assert_eq!(o["source"], url);
    // The daemon exports the same limits as gauges.
    let m = d.scrape();
    assert_eq!(
        m.get("memtrace_collector_up{collector=\"limits\"}"),
        Some(&1.0)
    );
    assert!(m.keys().any(|k| k.starts_with("memtrace_free_blocks{")));
    assert!(
        m.keys()
            .any(|k| k.starts_with("memtrace_largest_free_block_bytes{"))
    );
    assert!(
        m.get("memtrace_kmalloc_max_bytes")
            .is_some_and(|v| *v >= 4096.0)
    );
    d.terminate();
}
