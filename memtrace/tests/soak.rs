//! Soak: the daemon under the full allocation rate the test can make, scraped every second,
//! for `MEMTRACE_SOAK_SECONDS` (default 600: ten minutes, as CI runs it). It must keep
//! answering, its resident memory must stay flat after the first minute (within
//! [`RSS_GROWTH_BOUND`]), every counter it exports must be monotonic and stay exported, and
//! afterwards its counts must still equal the kernel's own ftrace stream exactly.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod daemon;
    // The soak compares counts, not GFP labels: ftrace_gfp_label stays unused here.
    #[allow(dead_code)]
    pub mod ftrace;
    pub mod http;
    pub mod kernel;
    pub mod procfs;
    pub mod tracefs;
    pub mod worker;
    pub mod workload;
    pub mod xattr;
}

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    daemon::{Daemon, series},
    ftrace::{Ftrace, kernel_events},
    http::{free_port, get},
    kernel::require_kernel,
    worker::Worker,
    workload::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, bpf_map_create_close, open_close, pipe_pages,
    },
    xattr::setxattr_kmalloc,
};

/// How much the daemon's resident memory may grow between the end of the first minute and
/// the end of the soak. Every table it keeps is bounded (label limiters, the profile's live
/// samples and stacks, the failure list); what grows at first is those filling up.
const RSS_GROWTH_BOUND: f64 = 16.0 * 1024.0 * 1024.0;

/// The slowest a scrape may answer while the machine is loaded.
const SCRAPE_BOUND: Duration = Duration::from_secs(2);

fn soak_seconds() -> u64 {
    std::env::var("MEMTRACE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

/// The counter series of an exposition's `# TYPE` lines: counters and the cumulative parts
/// of histograms (`_bucket`, `_count`, `_sum`).
fn counter_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        match rest.split_once(' ') {
            Some((name, "counter")) => out.push(name.to_string()),
            Some((name, "histogram")) => {
                for s in ["_bucket", "_count", "_sum"] {
                    out.push(format!("{name}{s}"));
                }
            }
            _ => {}
        }
    }
    out
}

fn name_of(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// Pins the calling thread to `cpu`. The kernel side counts a task name in a small table of
/// the CPU it runs on, then in a shared map; on a busy machine both fill up with other names
/// (the rest counts under `other`), so a thread that keeps its CPU keeps the slot it took
/// first.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A load thread: every allocator, as fast as the syscalls go, until `stop`.
fn load(id: usize, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("mt-soak-{id}"))
        .spawn(move || {
            pin_to_cpu(id);
            let dir =
                std::env::temp_dir().join(format!("memtrace-soak-{}-{id}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("f");
            std::fs::write(&file, b"x").unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for size in [64, 300, 3000, 9000] {
                    setxattr_kmalloc(&file, size);
                }
                open_close(&file, 4);
                pipe_pages(4);
                if n.is_multiple_of(64) {
                    bpf_map_create_close(BPF_MAP_TYPE_ARRAY, 4096, 16);
                    bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 4);
                }
                n += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .expect("spawn load thread")
}

fn rss_of(pid: u32) -> f64 {
    let status = support::procfs::status(format!("/proc/{pid}/status"));
    support::procfs::kib_bytes(&status, "VmRSS").expect("VmRSS") as f64
}

#[test]
fn soak_at_full_rate_with_a_scrape_every_second() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let secs = soak_seconds();
    let warmup = Duration::from_secs(secs.min(600) / 10);
    let port = free_port();
    // Room for every task name of the machine (kworkers come and go), so that the load's and
    // the check's own series are exported under their names.
    let d = Daemon::start_with(
        port,
        &["--profile.enabled", "true", "--processes.max", "2000"],
    );
    let pid = d.child.id();

    // The checking worker, and its task name's slot in the kernel's table, from the start.
    let worker = Worker::spawn();
    let check_file =
        std::env::temp_dir().join(format!("memtrace-soak-check-{}", std::process::id()));
    std::fs::write(&check_file, b"x").unwrap();
    let f = check_file.clone();
    worker.run(move || {
        pin_to_cpu(0);
        setxattr_kmalloc(&f, 3000);
    });

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loads: Vec<_> = (0..threads)
        .map(|i| load(i, stop.clone(), rounds.clone()))
        .collect();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut prev: Option<HashMap<String, f64>> = None;
    let mut counters: std::collections::BTreeSet<String> = Default::default();
    let mut rss_after_warmup = None;
    let mut rss_max: f64 = 0.0;
    let (mut scrapes, mut slowest) = (0u64, Duration::ZERO);
    let mut next = start;
    while Instant::now() < deadline {
        next += Duration::from_secs(1);
        let t = Instant::now();
        let (code, body) = get(port, "/metrics").expect("scrape");
        let took = t.elapsed();
        assert_eq!(code, 200, "scrape {scrapes} failed: {body}");
        assert!(
            took < SCRAPE_BOUND,
            "scrape {scrapes} took {took:?} under load"
        );
        slowest = slowest.max(took);
        scrapes += 1;
        if scrapes.is_multiple_of(30) {
            support::assert::assert_no_addresses(&body);
            for path in ["/debug/pprof/heap", "/api/leaks", "/api/failures"] {
                assert_eq!(get(port, path).expect(path).0, 200, "{path}");
            }
        }
        let now = series(&body);
        for k in now
            .keys()
            .filter(|k| k.starts_with("memtrace_collector_up{"))
        {
            assert_eq!(now[k], 1.0, "{k} at scrape {scrapes}");
        }
        // Every scrape's counters: families that first appear later are checked from then on.
        for c in counter_names(&body) {
            counters.insert(c);
        }
        if let Some(prev) = &prev {
            for (k, v) in prev {
                if !counters.contains(name_of(k)) {
                    continue;
                }
                let cur = now
                    .get(k)
                    .unwrap_or_else(|| panic!("counter series {k} vanished at scrape {scrapes}"));
                assert!(
                    *cur >= *v,
                    "{k} went back from {v} to {cur} at scrape {scrapes}"
                );
            }
        }
        prev = Some(now);
        let rss = rss_of(pid);
        if t.duration_since(start) >= warmup {
            rss_after_warmup.get_or_insert(rss);
            rss_max = rss_max.max(rss);
        }
        if scrapes.is_multiple_of(60) {
            eprintln!(
                "soak {:>4} s: {} rounds, RSS {:.1} MiB, slowest scrape {slowest:?}",
                start.elapsed().as_secs(),
                rounds.load(Ordering::Relaxed),
                rss / 1048576.0
            );
        }
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.join().unwrap();
    }
    let base = rss_after_warmup.expect("the soak outlasts its warm-up");
    eprintln!(
        "soak done: {scrapes} scrapes (slowest {slowest:?}), {} load rounds, RSS {:.1} MiB after \
         warm-up, {:.1} MiB at most",
        rounds.load(Ordering::Relaxed),
        base / 1048576.0,
        rss_max / 1048576.0
    );
    assert!(
        rss_max - base <= RSS_GROWTH_BOUND,
        "RSS grew {:.1} MiB after the warm-up (bound {:.0} MiB)",
        (rss_max - base) / 1048576.0,
        RSS_GROWTH_BOUND / 1048576.0
    );
    assert!(scrapes >= secs * 9 / 10, "{scrapes} scrapes in {secs} s");

    // Nothing aggregated was lost: the load threads' own kmallocs (at least one per setxattr:
    // its copy of the value) are all counted under their names. (`reason="map_full"` counts
    // allocations of task names or call sites that found the kernel's table full, counted
    // under `other`: every thread and compiler job of a busy machine has its own name; a
    // name counted early on a CPU keeps its slot there, and the load threads and the worker
    // are pinned to theirs. `reason="recursion"` counts allocations in
    // interrupts that came while a memtrace program ran on that CPU: the kernel runs no
    // program then, and says how many.)
    let m = d.scrape();
    for reason in ["map_full", "recursion"] {
        let k = format!("memtrace_events_lost_total{{reason=\"{reason}\"}}");
        eprintln!("{k} {}", m.get(&k).copied().unwrap_or(0.0));
    }
    let load_kmallocs: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with(
                "memtrace_process_allocations_total{allocator=\"kmalloc\",comm=\"mt-soak-",
            )
        })
        .map(|(_, v)| v)
        .sum();
    let setxattrs = 4.0 * rounds.load(Ordering::Relaxed) as f64;
    assert!(
        load_kmallocs >= setxattrs,
        "the load threads made {setxattrs} setxattr copies, memtrace counts {load_kmallocs} kmallocs"
    );

    // And the counts are still exact: a worker's kmallocs, by its task name, equal ftrace's
    // record of that thread.
    let key = "memtrace_process_allocations_total{allocator=\"kmalloc\",comm=\"memtrace-work\"}";
    let bytes_key =
        "memtrace_process_allocated_bytes_total{allocator=\"kmalloc\",comm=\"memtrace-work\"}";
    let before = (
        m.get(key).copied().unwrap_or(0.0),
        m.get(bytes_key).copied().unwrap_or(0.0),
    );
    let ftrace = Ftrace::start(&kernel_events(&[("kmem", "kmalloc")]), worker.tid);
    let f = check_file.clone();
    assert!(
        worker.run_timeout(
            move || {
                for _ in 0..2000 {
                    setxattr_kmalloc(&f, 3000);
                }
            },
            Duration::from_secs(60)
        ),
        "2000 setxattr calls took over a minute"
    );
    let events = ftrace.stop();
    let _ = std::fs::remove_file(&check_file);
    let want = (
        events.len() as f64,
        events
            .iter()
            .map(|e| e.u64("bytes_alloc") as f64)
            .sum::<f64>(),
    );
    assert!(
        want.0 >= 2000.0,
        "ftrace saw the worker's kmallocs: {want:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = d.scrape();
        let got = (
            m.get(key).copied().unwrap_or(0.0) - before.0,
            m.get(bytes_key).copied().unwrap_or(0.0) - before.1,
        );
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the soak, memtrace counts the worker's kmallocs as {got:?}, ftrace {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = d.terminate();
}
