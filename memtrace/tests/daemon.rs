//! `memtrace daemon` end to end on the real kernel: it serves /metrics, /healthz and a landing
//! page, its kmalloc numbers move with a known workload, an occupied port is one clear error,
//! and SIGTERM stops it cleanly.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod cli;
    pub mod compaction;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod procfs;
    pub mod tracefs;
    pub mod workload;
    pub mod xattr;
}

use std::{collections::HashMap, process::Command, time::Duration};

use support::{
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    workload::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, bpf_map_create_close, open_close, pipe_pages,
    },
    xattr::setxattr_kmalloc,
};

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn daemon_serves_metrics_that_move_with_load_and_stops_on_sigterm() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let port = free_port();
    let d = Daemon::start(port);

    let (code, landing) = get(port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(landing.contains("/metrics"), "{landing}");

    let before = d.scrape();
    assert_eq!(
        metric(&before, "memtrace_probe_attached{probe=\"kmem:kmalloc\"}"),
        1.0
    );
    assert!(before.keys().any(|k| k.starts_with("memtrace_build_info{")));
    assert!(before.contains_key("process_resident_memory_bytes"));

    // 200 setxattr calls with a 3000-byte value: 200 kmallocs of 3000 B (GFP_USER, rounded
    // to 4096). The daemon counts the whole machine, so the increase is at least that.
    let dir = std::env::temp_dir().join(format!("memtrace-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("target");
    std::fs::write(&file, b"x").unwrap();
    for _ in 0..200 {
        setxattr_kmalloc(&file, 3000);
    }
    // And every other allocator: slab objects, order-0 and order-4 pages, vmalloc, percpu.
    support::compaction::compact_memory();
    open_close(&file, 100);
    pipe_pages(64);
    for _ in 0..10 {
        setxattr_kmalloc(&file, 65536);
    }
    for _ in 0..5 {
        bpf_map_create_close(BPF_MAP_TYPE_ARRAY, 4096, 64);
        bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 64, 16);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Notable events arrive through the ring buffer asynchronously.
    std::thread::sleep(Duration::from_millis(300));

    let after = d.scrape();
    let delta = |k: &str| metric(&after, k) - metric(&before, k);
    // setxattr copies with GFP_USER (vmemdup_user), or GFP_KERNEL before 5.11's rework.
    let bucket = |le: &str| {
        ["GFP_USER", "GFP_KERNEL"]
            .iter()
            .map(|g| {
                delta(&format!(
                    "memtrace_kmalloc_size_bytes_bucket{{gfp=\"{g}\",le=\"{le}\"}}"
                ))
            })
            .sum::<f64>()
    };
    let (le4096, le2048) = (bucket("4096"), bucket("2048"));
    assert!(
        le4096 - le2048 >= 200.0,
        "GFP_USER (or GFP_KERNEL) kmallocs in (2048, 4096]: {}",
        le4096 - le2048
    );
    let bytes = |m: &str| {
        ["GFP_USER", "GFP_KERNEL"]
            .iter()
            .map(|g| delta(&format!("{m}{{gfp=\"{g}\"}}")))
            .sum::<f64>()
    };
    assert!(bytes("memtrace_kmalloc_requested_bytes_total") >= 600_000.0);
    assert!(bytes("memtrace_kmalloc_allocated_bytes_total") >= 819_200.0);
    assert!(delta("memtrace_frees_total{allocator=\"kmalloc\"}") >= 200.0);
    assert!(delta("memtrace_kmem_cache_allocations_total{cache=\"filp\"}") >= 100.0);
    assert!(delta("memtrace_kmem_cache_allocated_bytes_total{cache=\"filp\"}") >= 100.0);
    assert!(delta("memtrace_frees_total{allocator=\"kmem_cache\"}") >= 100.0);
    let sum_where = |m: &HashMap<String, f64>, prefix: &str, needle: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.contains(needle))
            .map(|(_, v)| v)
            .sum()
    };
    let pages = |needle: &str| {
        sum_where(&after, "memtrace_page_allocations_total{", needle)
            - sum_where(&before, "memtrace_page_allocations_total{", needle)
    };
    assert!(pages("order=\"0\"") >= 64.0, "order-0 pages");
    assert!(pages("order=\"4\"") >= 10.0, "order-4 pages");
    assert!(delta("memtrace_frees_total{allocator=\"page\"}") >= 64.0);
    assert!(delta("memtrace_vmalloc_size_bytes_count") >= 5.0);
    assert!(
        delta("memtrace_vmalloc_size_bytes_bucket{le=\"+Inf\"}")
            - delta("memtrace_vmalloc_size_bytes_bucket{le=\"262144\"}")
            >= 5.0,
        "256 KiB arrays plus a guard page land above 256 KiB"
    );
    assert!(delta("memtrace_percpu_size_bytes_count") >= 80.0);
    // Default thresholds: pages of order >= 4 are notable.
    assert!(
        delta("memtrace_notable_events_total{allocator=\"page\",kind=\"large\"}") >= 10.0,
        "order-4 pages reach the ring buffer and the daemon reads them"
    );
    assert_eq!(
        delta("memtrace_events_lost_total{reason=\"ringbuf_full\"}"),
        0.0,
        "no notable event lost during the workload"
    );
    // Every probe this kernel has is attached; one it lacks is 0 (a tracepoint with no
    // stand-in, as vmalloc purges before 6.2) or, if only some kernels have it, no series.
    for spec in memtrace_common::PROBES {
        let probe = format!("{}:{}", spec.category, spec.event);
        let key = format!("memtrace_probe_attached{{probe=\"{probe}\"}}");
        let has = support::tracefs::has_event(spec.category, spec.event);
        match (has, spec.only_on, spec.fexit) {
            (false, Some(_), _) => assert!(!after.contains_key(&key), "{probe}"),
            (false, None, None) => assert_eq!(metric(&after, &key), 0.0, "{probe}"),
            _ => assert_eq!(metric(&after, &key), 1.0, "{probe}"),
        }
    }
    // Per-cgroup counting is off by default: no cgroup series.
    assert!(
        !after.keys().any(|k| k.starts_with("memtrace_cgroup_")),
        "cgroup series without --attribution.cgroups"
    );
    // Counters never go backwards between scrapes.
    for (k, v) in &before {
        if k.contains("_total") || k.contains("_bucket") || k.ends_with("_count") {
            assert!(metric(&after, k) >= *v, "{k} went backwards");
        }
    }

    // A second daemon on the same port: one clear line, non-zero exit, nothing loaded.
    let out = support::cli::memtrace(&[
        "daemon",
        "--web.listen-address",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("memtrace: cannot listen on 127.0.0.1:")
            && last.contains("--web.listen-address"),
        "{err}"
    );

    let took = d.terminate();
    eprintln!("daemon stopped {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(1),
        "daemon took {took:?} to stop"
    );
}

#[test]
fn daemon_rejects_bad_flags_in_one_line() {
    let bad_config = std::env::temp_dir().join(format!("memtrace-bad-{}.toml", std::process::id()));
    std::fs::write(&bad_config, "[web]\nlisten_adress = \"127.0.0.1:1\"\n").unwrap();
    let bad_config_arg = bad_config.display().to_string();
    for args in [
        &["daemon", "--config", &bad_config_arg][..],
        &["daemon", "--config", "/nonexistent/memtrace.toml"],
        &["daemon", "--web.listen-address", "nonsense"][..],
        &["daemon", "--web.telemetry-path", "metrics"],
        &["daemon", "--attach", "kprobe"],
        &["daemon", "--caches.max", "0"],
        &["daemon", "--callsites.max", "0"],
        &["daemon", "--attribution.callsites", "maybe"],
        &["daemon", "--cgroups.max", "0"],
        &["daemon", "--attribution.cgroups", "maybe"],
        &["daemon", "--events.min-order", "65"],
        &["daemon", "--log-format", "yaml"],
    ] {
        let out = support::cli::memtrace(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("memtrace: "), "{err}");
    }
    let _ = std::fs::remove_file(&bad_config);
}

/// Flags beat environment variables, which beat the configuration file; the file applies
/// wherever the command line names it: after `daemon`, after a global flag before `daemon`,
/// or through MEMTRACE_CONFIG.
#[test]
fn config_file_sets_flags_and_flags_win() {
    let Some(_guard) = support::kernel::require_kernel() else {
        return;
    };
    let config = std::env::temp_dir().join(format!("memtrace-{}.toml", std::process::id()));
    let file = config.display().to_string();
    let ways: [(&[&str], bool); 3] = [
        (&["daemon", "--config", &file], false),
        (
            &["--log-format", "json", "daemon", "--config", &file],
            false,
        ),
        (&["--log-format=json", "daemon"], true),
    ];
    for (args, by_env) in ways {
        let port = free_port();
        std::fs::write(
            &config,
            format!("[web]\nlisten-address = \"127.0.0.1:{port}\"\ntelemetry-path = \"/from-file\"\n[caches]\nmax = 3\n"),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memtrace"));
        cmd.args(args)
            .args(["--web.telemetry-path", "/from-flag"])
            .env_remove("MEMTRACE_CONFIG")
            .stderr(std::process::Stdio::null());
        if by_env {
            cmd.env("MEMTRACE_CONFIG", &config);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let body = loop {
            if let Ok((200, body)) = get(port, "/from-flag") {
                break body;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{args:?}: daemon exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{args:?}: daemon never served /from-flag on the file's port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(get(port, "/from-file").unwrap().0, 404, "{args:?}");
        let caches = body
            .lines()
            .filter(|l| l.starts_with("memtrace_kmem_cache_allocations_total{"))
            .count();
        assert!(
            caches <= 4,
            "{args:?}: caches.max = 3 from the file, plus other: {caches}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    // A bad file is refused the same way wherever it is named.
    std::fs::write(&config, "[web]\nlisten_adress = \"127.0.0.1:1\"\n").unwrap();
    let out = support::cli::memtrace(&["--log-format", "json", "daemon", "--config", &file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `web.listen_adress`"), "{err}");
    let _ = std::fs::remove_file(&config);
}

/// Every thread's (CapEff, CapPrm, CapBnd, CapAmb, NoNewPrivs) of process `pid`.
fn thread_caps(pid: u32) -> Vec<(u64, u64, u64, u64, bool)> {
    use support::procfs::{cap_mask, field, status};
    let mut all = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = status(t.unwrap().path().join("status"));
        let cap = |key| cap_mask(&s, key).unwrap_or_else(|| panic!("no {key} in {s}"));
        all.push((
            cap("CapEff"),
            cap("CapPrm"),
            cap("CapBnd"),
            cap("CapAmb"),
            field(&s, "NoNewPrivs") == Some("1"),
        ));
    }
    all
}

/// Once attached, the daemon keeps only CAP_SYSLOG (root needs nothing else to read its
/// /proc files) in every set of every thread, and keeps counting and naming call sites;
/// `--capabilities.keep` chooses another set.
#[test]
fn daemon_drops_capabilities_after_attach() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    const CAP_SYSLOG: u64 = 1 << 34;
    const CAP_BPF: u64 = 1 << 39;
    let before = thread_caps(std::process::id())[0];
    assert_eq!(
        before.0 & CAP_SYSLOG,
        CAP_SYSLOG,
        "the test runs with CAP_SYSLOG"
    );

    // Before 5.19, with kernel.unprivileged_bpf_disabled set, every bpf() command (map reads
    // too) needs CAP_BPF: the daemon keeps it there, and only there.
    let release = memtrace::kernel::release();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let unpriv_disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    let want = if (major, minor) < (5, 19) && unpriv_disabled {
        CAP_SYSLOG | CAP_BPF
    } else {
        CAP_SYSLOG
    };
    let d = Daemon::start(free_port());
    let threads = thread_caps(d.child.id());
    assert!(threads.len() > 1, "the runtime's threads are there too");
    for t in &threads {
        assert_eq!(*t, (want, want, want, 0, true), "{release}: {threads:x?}");
    }
    let file = std::env::temp_dir().join(format!("memtrace-caps-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    for _ in 0..100 {
        setxattr_kmalloc(&file, 3000);
    }
    let _ = std::fs::remove_file(&file);
    let m = d.scrape();
    assert_eq!(
        metric(&m, "memtrace_collector_up{collector=\"limits\"}"),
        1.0
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("memtrace_callsite_allocations_total{")
                && !k.contains("function=\"unknown\"")
                && !k.contains("function=\"other\"")),
        "call sites are still named"
    );
    drop(d);

    let d = Daemon::start_with(free_port(), &["--capabilities.keep", "cap_bpf"]);
    for t in thread_caps(d.child.id()) {
        assert_eq!((t.0, t.1, t.2), (CAP_BPF, CAP_BPF, CAP_BPF));
    }
    drop(d);
    if want & CAP_BPF != 0 {
        // Without it, such a kernel would refuse the daemon its own maps: a one-line error.
        let out = support::cli::memtrace(&["daemon", "--capabilities.keep", "cap_syslog"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.trim()
                .lines()
                .last()
                .unwrap_or("")
                .contains("add cap_bpf"),
            "{err}"
        );
    }
    let d = Daemon::start_with(free_port(), &["--capabilities.keep", "all"]);
    for t in thread_caps(d.child.id()) {
        assert_eq!(t.0, before.0, "all keeps every capability");
        assert!(!t.4, "all changes nothing");
    }
    drop(d);
    let out = support::cli::memtrace(&["daemon", "--capabilities.keep", "cap_nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown capability \"cap_nope\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// With --log-format json every log line is one JSON object (journald / log shippers).
#[test]
fn json_logs_are_one_object_per_line() {
    let Some(_guard) = support::kernel::require_kernel() else {
        return;
    };
    use std::io::BufRead as _;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_memtrace"))
        .args(["--log-format", "json", "daemon", "--web.listen-address"])
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = 0;
    while let Some(Ok(line)) = lines.next() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
        seen += 1;
        if v["fields"]["message"] == "serving metrics" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen >= 2, "the daemon logged its probes and its address");
}

/// This process's memory cgroup, relative to its hierarchy's root, from /proc/self/cgroup
/// (the v1 `memory` line, else the v2 `0::` line).
fn own_memory_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut v2 = None;
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (id, ctrl, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if ctrl.split(',').any(|c| c == "memory") {
            return path.to_string();
        }
        if id == "0" && ctrl.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2.expect("a memory cgroup in /proc/self/cgroup")
}

/// `attribution.cgroups = true` (here from the configuration file, the key of
/// `--attribution.cgroups`): allocations of this process show under its own memory cgroup's
/// path, and a cgroup label is never a number.
#[test]
fn daemon_counts_per_memory_cgroup_when_asked() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let port = free_port();
    let config = std::env::temp_dir().join(format!("memtrace-cg-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[attribution]\ncgroups = true\n[cgroups]\nmax = 1000\n",
    )
    .unwrap();
    let d = Daemon::start_with(port, &["--config", &config.display().to_string()]);
    let _ = std::fs::remove_file(&config);
    let own = own_memory_cgroup();
    let key =
        format!("memtrace_cgroup_allocations_total{{allocator=\"kmalloc\",cgroup=\"{own}\"}}");
    let before = d.scrape();
    let dir = std::env::temp_dir().join(format!("memtrace-daemon-cg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("target");
    std::fs::write(&file, b"x").unwrap();
    for _ in 0..200 {
        setxattr_kmalloc(&file, 3000);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let after = d.scrape();
    let moved = metric(&after, &key) - metric(&before, &key);
    assert!(moved >= 200.0, "{key} moved by {moved}");
    for k in after.keys().filter(|k| k.starts_with("memtrace_cgroup_")) {
        let cg = k.split("cgroup=\"").nth(1).unwrap_or("");
        assert!(
            cg.starts_with('/') || cg.starts_with("other\"") || cg.starts_with("unknown\""),
            "a cgroup label is a path, other or unknown: {k}"
        );
    }
    d.terminate();
}

/// The web config file is read again with the capabilities the daemon keeps: a file only a
/// dropped capability could read (root's CAP_DAC_OVERRIDE, here a file of another user with
/// mode 0600) stops it at start with one line, instead of failing every later reload.
#[test]
fn web_config_must_stay_readable_after_capabilities_drop() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("memtrace-webcaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.yml");
    let hash = bcrypt::hash("secret", 4).unwrap();
    std::fs::write(&file, format!("basic_auth_users:\n  alice: {hash}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let path = file.to_str().unwrap();
    let out = support::cli::memtrace(&[
        "daemon",
        "--web.listen-address",
        &format!("127.0.0.1:{}", free_port()),
        "--web.config.file",
        path,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.contains(path) && last.contains("once capabilities are dropped"),
        "{err}"
    );
    // Kept, the capability reads it, and the daemon serves (behind basic auth).
    let port = free_port();
    let d = Daemon::start_ready(
        port,
        &["--web.config.file", path, "--capabilities.keep", "all"],
        |_| {},
        |port| matches!(get(port, "/healthz"), Ok((401, _))),
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
