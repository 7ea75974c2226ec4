//! `memtrace daemon` when its sources fail under it, on the real kernel: tracefs unmounted
//! while it runs, /proc/kallsyms unreadable, a kernel module loaded and unloaded, its memory
//! cgroup near its limit, and SIGKILL. Each asserts that scrapes keep answering 200 quickly,
//! that `memtrace_collector_up` says what failed, and that counts keep growing where they
//! should. Every wait polls with a deadline.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    // The cgroup itself, not the allocation failures it forces (nor the worker they run on).
    #[allow(dead_code)]
    pub mod memcg;
    pub mod mountns;
    pub mod procfs;
    pub mod tools;
    #[allow(dead_code)]
    pub mod worker;
    pub mod xattr;
}

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    memcg::Memcg,
    mountns::{bind, in_mount_namespace_of, mount_points, private_mounts, unmount},
    tools::need,
    xattr::setxattr_kmalloc,
};

/// The longest a scrape may take here: "well under a second" on a real machine. The kernel
/// matrix runs under emulation (qemu TCG), many times slower: there the bound is looser.
fn scrape_bound() -> Duration {
    if std::env::var_os("MEMTRACE_VM").is_some() {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(500)
    }
}

/// /metrics as series → value, asserting 200 within [`scrape_bound`] and no kernel address.
fn scrape(d: &Daemon) -> HashMap<String, f64> {
    let t = Instant::now();
    let m = d.scrape();
    let took = t.elapsed();
    assert!(took < scrape_bound(), "a scrape took {took:?}");
    m
}

fn metric(m: &HashMap<String, f64>, key: &str) -> Option<f64> {
    m.get(key).copied()
}

fn collector_up(m: &HashMap<String, f64>, collector: &str) -> Option<f64> {
    metric(
        m,
        &format!("memtrace_collector_up{{collector=\"{collector}\"}}"),
    )
}

/// The sum of every series of `family` (with or without labels).
fn total(m: &HashMap<String, f64>, family: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == family || k.starts_with(&format!("{family}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// kmallocs counted so far, over every GFP value.
fn kmallocs(m: &HashMap<String, f64>) -> f64 {
    total(m, "memtrace_kmalloc_size_bytes_count")
}

/// Asserts that no counter of `before` is lower in `after` (a series may be absent: a
/// failing collector's series are).
fn assert_monotonic(before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    for (k, v) in before {
        if k.contains("_total") || k.contains("_bucket") || k.ends_with("_count") {
            if let Some(now) = after.get(k) {
                assert!(now >= v, "{k} went backwards: {v} → {now}");
            }
        }
    }
}

/// A scratch file for the kmalloc workload, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("memtrace-faults-{}-{tag}", std::process::id()));
        std::fs::write(&p, b"x").expect("scratch file");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// 200 kmallocs of 3000 bytes (setxattr's copy of the value), then polls until the daemon
/// has counted at least that many more than in `before`: they are counted.
fn kmallocs_are_counted(d: &Daemon, before: &HashMap<String, f64>, file: &Path) {
    for _ in 0..200 {
        setxattr_kmalloc(file, 3000);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(d);
        let moved = kmallocs(&now) - kmallocs(before);
        if moved >= 200.0 {
            assert_monotonic(before, &now);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kmallocs moved by {moved} only, 10 s after 200 of them"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// tracefs unmounted under a running daemon (in its own mount namespace only): it keeps
/// serving and counting, every collector stays up, and it stops cleanly.
#[test]
fn tracefs_unmounted_while_running() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let d = Daemon::start_prepared(free_port(), &[], |cmd| private_mounts(cmd, &[]));
    let before = scrape(&d);
    for c in ["maps", "limits", "symbolizer", "notable"] {
        assert_eq!(collector_up(&before, c), Some(1.0), "{c} before");
    }
    let ours = mount_points("tracefs");
    let pid = d.child.id();
    let (unmounted, left) = in_mount_namespace_of(pid, || {
        let points = mount_points("tracefs");
        for p in &points {
            unmount(p);
        }
        (points, mount_points("tracefs"))
    });
    assert!(
        !unmounted.is_empty(),
        "the daemon's namespace had tracefs mounted"
    );
    assert!(left.is_empty(), "tracefs still mounted at {left:?}");
    assert_eq!(
        mount_points("tracefs"),
        ours,
        "the test's own namespace keeps its tracefs"
    );

    let file = Scratch::new("tracefs");
    kmallocs_are_counted(&d, &before, &file.0);
    let after = scrape(&d);
    for c in ["maps", "limits", "symbolizer", "notable"] {
        assert_eq!(collector_up(&after, c), Some(1.0), "{c} after the unmount");
    }
    let took = d.terminate();
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
}

/// /proc/kallsyms replaced by an empty file before the daemon starts (in its own mount
/// namespace): it starts and serves, `symbolizer` is down and says so once in the log, call
/// sites read `unknown`, and no kernel address shows.
#[test]
fn kallsyms_unreadable() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("memtrace-faults-ksyms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("kallsyms");
    std::fs::write(&empty, b"").unwrap();
    let log = dir.join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let empty_path = empty.display().to_string();
    let d = Daemon::start_prepared(free_port(), &[], |cmd| {
        private_mounts(cmd, &[(&empty_path, "/proc/kallsyms")]);
        cmd.stderr(log_file);
    });
    let before = scrape(&d);
    let file = Scratch::new("kallsyms");
    kmallocs_are_counted(&d, &before, &file.0);
    let text = d.scrape_text(); // asserts no kernel address
    let after = scrape(&d);
    assert_eq!(collector_up(&after, "symbolizer"), Some(0.0));
    for c in ["maps", "limits", "notable"] {
        assert_eq!(collector_up(&after, c), Some(1.0), "{c}");
    }
    assert!(
        !text.contains("memtrace_symbol_reloads_total"),
        "a failing collector's series are absent"
    );
    let functions: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("memtrace_callsite_allocations_total{"))
        .filter_map(|l| l.split("function=\"").nth(1)?.split('"').next())
        .collect();
    assert!(functions.contains("unknown"), "{functions:?}");
    assert!(
        functions.iter().all(|f| *f == "unknown" || *f == "other"),
        "a call site resolved without symbols: {functions:?}"
    );
    let (code, failures) = get(d.port, "/api/failures").unwrap();
    assert_eq!(code, 200);
    support::assert::assert_no_addresses(&failures);
    d.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("collector failed") && l.contains("symbolizer"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "logged once over several scrapes: {logged}"
    );
    assert!(
        warnings[0].contains("/proc/kallsyms holds no text symbol"),
        "{}",
        warnings[0]
    );
    support::assert::assert_no_addresses(&logged);
}

/// The module file the module test loads: `MEMTRACE_TEST_MODULE` (the kernel matrix puts one
/// in each VM), else the running kernel's uncompressed `dummy.ko`, if any.
fn test_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEMTRACE_TEST_MODULE") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(format!(
        "/lib/modules/{}/kernel/drivers/net/dummy.ko",
        memtrace::kernel::release()
    ));
    p.is_file().then_some(p)
}

fn loaded_modules() -> Vec<String> {
    std::fs::read_to_string(memtrace::kernel::MODULES_PATH)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Loads the module in `path` (`finit_module`), asserting success.
fn load_module(path: &Path) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    use std::os::fd::AsRawFd as _;
    // SAFETY: finit_module(2) on an open file, with empty parameters.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    assert_eq!(
        rc,
        0,
        "finit_module {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn unload_module(name: &str) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: delete_module(2) with a valid name.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) };
    assert_eq!(
        rc,
        0,
        "delete_module {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Polls until `memtrace_symbol_reloads_total` exceeds `than` (the daemon checks the modules
/// every 10 s); returns the scrape that saw it.
fn await_reload(d: &Daemon, than: f64, what: &str) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(d);
        if metric(&m, "memtrace_symbol_reloads_total").is_some_and(|r| r > than) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no symbol reload 60 s after {what}: symbolizer up {:?}",
            collector_up(&m, "symbolizer")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A kernel module loaded and unloaded under a running daemon: each change reloads its
/// symbols (`memtrace_symbol_reloads_total`), the symbolizer stays up, and it keeps serving.
/// Then kallsyms becomes unreadable while it runs: the next module change's reload fails, the
/// symbolizer is down (call sites keep their names from the table in use), and once kallsyms
/// is back the change after that brings it up again. Needs a kernel with modules: the kernel
/// matrix's VMs; elsewhere it says why it returns.
#[test]
fn module_load_and_unload_reloads_symbols() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    if !Path::new(memtrace::kernel::MODULES_PATH).exists() {
        eprintln!(
            "module test not run: this kernel has no module support (no {}); \
             `cargo xtask vm-test` runs it on kernels that have",
            memtrace::kernel::MODULES_PATH
        );
        return;
    }
    let Some(module) = test_module() else {
        let msg = "module test not run: no module to load (set MEMTRACE_TEST_MODULE to an \
                   uncompressed .ko of this kernel)";
        assert!(std::env::var_os("CI").is_none(), "{msg} (CI is set)");
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let name = module
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .expect("a module file name")
        .replace('-', "_");
    assert!(
        !loaded_modules().contains(&name),
        "{name} is loaded already: the test cannot load it"
    );
    let d = Daemon::start_prepared(free_port(), &[], |cmd| private_mounts(cmd, &[]));
    let before = scrape(&d);
    assert_eq!(collector_up(&before, "symbolizer"), Some(1.0));
    let reloads = metric(&before, "memtrace_symbol_reloads_total").expect("a reload counter");

    load_module(&module);
    assert!(loaded_modules().contains(&name), "{name} in /proc/modules");
    let loaded = await_reload(&d, reloads, "the load");
    assert_eq!(collector_up(&loaded, "symbolizer"), Some(1.0));
    assert_monotonic(&before, &loaded);

    unload_module(&name);
    assert!(!loaded_modules().contains(&name), "{name} unloaded");
    let reloads = metric(&loaded, "memtrace_symbol_reloads_total").unwrap_or(0.0);
    let unloaded = await_reload(&d, reloads, "the unload");
    assert_eq!(collector_up(&unloaded, "symbolizer"), Some(1.0));
    for c in ["maps", "limits", "notable"] {
        assert_eq!(collector_up(&unloaded, c), Some(1.0), "{c}");
    }
    assert_monotonic(&loaded, &unloaded);

    // kallsyms unreadable while running, in the daemon's namespace only.
    let empty = std::env::temp_dir().join(format!("memtrace-nokallsyms-{}", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let empty_path = empty.to_str().unwrap().to_string();
    let pid = d.child.id();
    in_mount_namespace_of(pid, || bind(&empty_path, "/proc/kallsyms"));
    load_module(&module);
    let down = await_symbolizer(&d, 0.0, "a module change with kallsyms unreadable");
    assert!(
        down.keys()
            .any(|k| k.starts_with("memtrace_callsite_allocations_total{")
                && !k.contains("function=\"unknown\"")
                && !k.contains("function=\"other\"")),
        "call sites keep their names from the table in use"
    );
    in_mount_namespace_of(pid, || unmount("/proc/kallsyms"));
    unload_module(&name);
    let up = await_symbolizer(&d, 1.0, "a module change with kallsyms readable again");
    for c in ["maps", "limits", "notable"] {
        assert_eq!(collector_up(&up, c), Some(1.0), "{c}");
    }
    let _ = std::fs::remove_file(&empty);
    d.terminate();
}

/// Scrapes until `memtrace_collector_up{collector="symbolizer"}` is `want` (60 s at most).
fn await_symbolizer(d: &Daemon, want: f64, what: &str) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(d);
        if collector_up(&m, "symbolizer") == Some(want) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "symbolizer not {want} 60 s after {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The anonymous resident memory of process `pid` (`RssAnon`: its heap and stacks, all
/// charged to its memory cgroup; `VmRSS` also counts the pages of files it maps, such as its
/// own binary, charged to whoever read them first), in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = support::procfs::status(format!("/proc/{pid}/status"));
    support::procfs::kib_bytes(&status, "RssAnon").expect("RssAnon")
}

/// Headroom of the daemon's memory cgroup above its usage after start.
const HEADROOM: u64 = 8 << 20;
/// How long the memory-cgroup test hammers the daemon.
const HAMMER: Duration = Duration::from_secs(20);

/// The daemon in a memory cgroup of its own whose limit is a few MiB above its usage, under
/// concurrent scrapes and allocations for 20 s: every scrape answers 200 in time, its
/// allocations keep being counted, the OOM killer never strikes and its (anonymous) RSS stays
/// under the limit. Heap profiling is on, and one client cycles through the other endpoints:
/// every blocking job of the daemon runs under the pressure.
#[test]
fn memory_cgroup_near_its_limit() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let memcg = Memcg::with_oom_killer(u64::MAX / 2);
    let mut d = Daemon::start_prepared(free_port(), &["--profile.enabled", "true"], |cmd| {
        memcg.enter_on_exec(cmd)
    });
    let pid = d.child.id();
    let procs = std::fs::read_to_string(memcg.dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "the daemon runs in the test's cgroup: {procs}"
    );
    // A first scrape sizes the exporter's state; then the limit.
    let before = scrape(&d);
    let usage = memcg.usage();
    let limit = usage + HEADROOM;
    let rss_at_start = rss_anon(pid);
    memcg.set_limit(limit);
    eprintln!(
        "daemon cgroup: {} KiB used, limit {} KiB",
        usage >> 10,
        limit >> 10
    );

    let stop = Arc::new(AtomicBool::new(false));
    let port = d.port;
    let bound = scrape_bound();
    let scrapers: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let others = ["/api/failures", "/debug/pprof/heap", "/api/leaks"];
                let (mut n, mut slowest) = (0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let path = if i == 2 {
                        others[n as usize % others.len()]
                    } else {
                        "/metrics"
                    };
                    let t = Instant::now();
                    let (code, body) = get(port, path).expect("the daemon answers");
                    slowest = slowest.max(t.elapsed());
                    assert_eq!(code, 200, "{path}: {body}");
                    n += 1;
                }
                (n, slowest)
            })
        })
        .collect();
    let file = Scratch::new("memcg");
    let started = Instant::now();
    let (mut allocations, mut max_rss) = (0u64, 0u64);
    while started.elapsed() < HAMMER {
        for _ in 0..100 {
            setxattr_kmalloc(&file.0, 3000);
        }
        allocations += 100;
        max_rss = max_rss.max(rss_anon(pid));
        assert!(
            d.child.try_wait().is_ok_and(|s| s.is_none()),
            "the daemon died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut scrapes, mut slowest_of_all) = (0, Duration::ZERO);
    for s in scrapers {
        let (n, slowest) = s.join().expect("a scraper failed");
        assert!(n > 0, "a scraper got no answer");
        assert!(slowest < bound, "a request took {slowest:?} near the limit");
        scrapes += n;
        slowest_of_all = slowest_of_all.max(slowest);
    }
    let after = scrape(&d);
    let moved = kmallocs(&after) - kmallocs(&before);
    eprintln!(
        "{scrapes} requests (the slowest {slowest_of_all:?}) and {allocations} kmallocs in \
         {HAMMER:?}: counted {moved}, \
         daemon anonymous RSS {} KiB at start, at most {} KiB, cgroup {} KiB of {} KiB",
        rss_at_start >> 10,
        max_rss >> 10,
        memcg.usage() >> 10,
        limit >> 10
    );
    assert!(
        moved >= allocations as f64,
        "kmallocs counted {moved} < {allocations}"
    );
    assert_monotonic(&before, &after);
    for c in ["maps", "limits", "symbolizer", "notable", "profile"] {
        assert_eq!(collector_up(&after, c), Some(1.0), "{c}");
    }
    assert_eq!(memcg.oom_kills(), 0, "the OOM killer struck in the cgroup");
    assert!(max_rss < limit, "RSS {max_rss} over the limit {limit}");
    assert!(
        d.child.try_wait().is_ok_and(|s| s.is_none()),
        "the daemon is alive"
    );
    d.terminate();
}

/// The ids of the BPF programs and links process `pid` holds, from its descriptors'
/// fdinfo (a link's fdinfo names its program too: it counts as a link only).
fn held_bpf_objects(pid: u32) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).expect("fdinfo").flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue; // closed meanwhile
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match (field("link_id:"), field("prog_id:")) {
            (Some(link), _) => {
                links.insert(link);
            }
            (None, Some(prog)) => {
                progs.insert(prog);
            }
            (None, None) => {}
        }
    }
    (progs, links)
}

/// The ids `bpftool -j {prog|link} list` reports.
fn bpftool_ids(bpftool: &Path, what: &str) -> BTreeSet<u64> {
    let out = Command::new(bpftool)
        .args(["-j", what, "list"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {what} list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    v.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// SIGKILL: every program and link the daemon had loaded is gone once it is dead (the
/// kernel releases them with its last descriptor), with nothing pinned or left behind.
#[test]
fn sigkill_leaves_no_programs_or_links() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let Some(bpftool) = need("bpftool") else {
        return;
    };
    let mut d = Daemon::start(free_port());
    scrape(&d);
    let (progs, links) = held_bpf_objects(d.child.id());
    assert!(!progs.is_empty(), "the daemon holds programs");
    assert!(!links.is_empty(), "the daemon holds links");
    let (all_progs, all_links) = (bpftool_ids(&bpftool, "prog"), bpftool_ids(&bpftool, "link"));
    assert!(
        progs.is_subset(&all_progs),
        "bpftool lists the daemon's programs"
    );
    assert!(
        links.is_subset(&all_links),
        "bpftool lists the daemon's links"
    );

    d.child.kill().expect("SIGKILL");
    d.child.wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left_progs: Vec<u64> = bpftool_ids(&bpftool, "prog")
            .intersection(&progs)
            .copied()
            .collect();
        let left_links: Vec<u64> = bpftool_ids(&bpftool, "link")
            .intersection(&links)
            .copied()
            .collect();
        if left_progs.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after SIGKILL, programs {left_progs:?} and links {left_links:?} remain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
