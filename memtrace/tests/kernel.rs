//! Integration tests on the real kernel: load memtrace's eBPF programs, drive the kernel with
//! syscalls whose allocations are known, and compare memtrace's counts with the kernel's own
//! ftrace event stream for the same thread over the same window. Counts must match exactly:
//! both sides filter on the worker thread's id, so the rest of the machine cannot disturb
//! them, and the ftrace buffer is checked for overruns.
//!
//! Every allocator is checked in both attach modes (tp_btf and classic tracepoint).
//! Run as root by `cargo xtask test` (single-threaded: kernel state is shared).

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod compaction;
    pub mod compat;
    pub mod ftrace;
    pub mod kernel;
    pub mod memcg;
    pub mod tmpfs;
    pub mod tracefs;
    pub mod worker;
    pub mod workload;
    pub mod xattr;
}

use std::collections::BTreeMap;

use memtrace::{
    bpf::{AttachMode, AttachPreference, ProbeStatus, Snapshot, Tracer, TracerOptions},
    label::gfp::GfpTable,
};
use memtrace_common::{
    Allocator, Counter, EVENT_FAILED, EVENT_LARGE, NotableEvent, SizeStats, size_bucket,
};
use support::{
    ftrace::{Ftrace, TraceEvent, ftrace_gfp_label, kernel_events},
    kernel::require_kernel,
    memcg::{Memcg, force_failures},
    tmpfs::{Tmpfs, hold_xattrs},
    tracefs::has_event,
    worker::Worker,
    workload::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, bpf_map_create_close, open_close, pipe_pages,
    },
    xattr::setxattr_kmalloc,
};

/// One way of attaching the programs: the exact tests run each.
#[derive(Clone, Copy, Debug)]
struct Way {
    pref: AttachPreference,
    expect: AttachMode,
    /// BTF programs that read the event's layout at run time, not the fixed-layout ones
    /// (this kernel has the fixed layouts, so both kinds are tested here).
    generic_btf: bool,
}

impl std::fmt::Display for Way {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match (self.expect, self.generic_btf) {
            (AttachMode::Btf, false) => " (fixed layouts)",
            (AttachMode::Btf, true) => " (generic)",
            _ => "",
        };
        write!(f, "{}{kind}", self.expect)
    }
}

const WAYS: [Way; 4] = [
    Way {
        pref: AttachPreference::Btf,
        expect: AttachMode::Btf,
        generic_btf: false,
    },
    Way {
        pref: AttachPreference::Btf,
        expect: AttachMode::Btf,
        generic_btf: true,
    },
    Way {
        pref: AttachPreference::Raw,
        expect: AttachMode::Raw,
        generic_btf: false,
    },
    Way {
        pref: AttachPreference::Tracepoint,
        expect: AttachMode::Tracepoint,
        generic_btf: false,
    },
];

/// The running kernel's (major, minor) version.
fn release() -> (u32, u32) {
    let r = memtrace::kernel::release();
    let mut parts = r.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// Why `st` is not attached the way `way` asks, where that is a documented degradation of
/// this (older) kernel: then the way is skipped for this probe's test. Anything else fails.
/// On 6.18 and later nothing may degrade.
fn allowed_gap(way: Way, st: &ProbeStatus) -> Option<String> {
    let note = st.note.as_deref().unwrap_or("");
    let event = st.probe.split_once(':').map_or("", |(_, e)| e);
    if release() >= (6, 18) {
        return None;
    }
    let vmalloc = matches!(
        event,
        "alloc_vmap_area" | "purge_vmap_area_lazy" | "free_vmap_area_noflush"
    );
    match way.expect {
        // The BTF way attaches fexit instead (see `check_way`): its failure is a failure.
        AttachMode::Raw | AttachMode::Tracepoint if vmalloc && release() < (6, 2) => {
            Some("no vmalloc tracepoints before 6.2 (the BTF way uses fexit)".into())
        }
        AttachMode::Btf | AttachMode::Raw if note.contains("does not name") => Some(format!(
            "unnamed tracepoint arguments in BTF before 5.11: {note}"
        )),
        AttachMode::Btf
            if matches!(
                event,
                "kmalloc" | "kfree" | "kmem_cache_alloc" | "kmem_cache_free"
            ) && note.contains("Permission denied") =>
        {
            Some(format!(
                "the verifier refuses the tp_btf program's pointer arguments: {note}"
            ))
        }
        _ => None,
    }
}

/// Ways that attached everything a test asked for, so far (see [`WaysRan`]).
static WAYS_RAN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Fails the test, when dropped, if no way of attaching ran it: on every kernel at least
/// one must, so skipping every way is a failure, not a pass.
struct WaysRan(u32);

impl WaysRan {
    fn start() -> WaysRan {
        WaysRan(WAYS_RAN.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl Drop for WaysRan {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(
                WAYS_RAN.load(std::sync::atomic::Ordering::SeqCst) > self.0,
                "no way of attaching could run this test on this kernel"
            );
        }
    }
}

/// The program memtrace should run for `spec` attached as `mode` in `way`.
fn expected_program(way: Way, mode: AttachMode, spec: &memtrace_common::ProbeSpec) -> &'static str {
    match (mode, spec.fixed_program) {
        (AttachMode::Tracepoint, _) => spec.tp_program,
        (AttachMode::Raw, _) => spec.raw_program.expect("a raw program"),
        (AttachMode::Fexit, _) => spec.fexit.expect("an fexit program").0,
        // The kernels of the matrix have the prototypes the fixed programs were compiled for
        // (memtrace_common::FixedBtf): if this fails, the kernel changed them and the fixed
        // programs are no longer used there.
        (AttachMode::Btf, Some(fixed)) if !way.generic_btf => fixed,
        (AttachMode::Btf, _) => spec.btf_program,
    }
}

/// Checks that `tracer` attached every probe of `events` as `way` asks (or, for a
/// tracepoint the kernel lacks, as fexit in the BTF way), running the expected program.
/// `Err` with the reason when this kernel documentedly cannot: the caller skips the way.
fn check_way(tracer: &Tracer, way: Way, events: &[(&str, &str)]) -> Result<(), String> {
    for (c, e) in events {
        let name = format!("{c}:{e}");
        let Some(st) = tracer.probes().iter().find(|p| p.probe == name) else {
            // Only a tracepoint some kernels lack (kmalloc_node after 6.0) has no status.
            let spec = memtrace_common::PROBES.iter().find(|p| p.event == *e);
            assert!(
                spec.is_some_and(|s| s.only_on.is_some()),
                "memtrace has no probe {name}"
            );
            continue;
        };
        let spec = memtrace_common::PROBES
            .iter()
            .find(|p| p.event == *e)
            .expect("a probe spec");
        let mode_ok = st.mode == Some(way.expect)
            || (way.expect == AttachMode::Btf
                && st.mode == Some(AttachMode::Fexit)
                && !has_event(c, e));
        if !mode_ok {
            return match allowed_gap(way, st) {
                Some(why) => Err(format!("{name}: {why}")),
                None => panic!("{name} ({way}) attached as {st:?}"),
            };
        }
        let mode = st.mode.expect("attached");
        assert_eq!(
            st.program,
            Some(expected_program(way, mode, spec)),
            "{name} ({way}) runs {st:?}"
        );
    }
    WAYS_RAN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// What one observation window saw, on both sides.
struct Window {
    snap: Snapshot,
    events: Vec<TraceEvent>,
    gfp: GfpTable,
    /// Notable events from memtrace's ring buffer.
    notable: Vec<NotableEvent>,
}

/// Notable thresholds of the tests: 64 KiB, order 4.
const NOTABLE_BYTES: u64 = 64 << 10;
const NOTABLE_ORDER: u32 = 4;

impl Window {
    /// The events `name`, and its `_node` twin where the kernel has one (before 6.1).
    fn of(&self, name: &str) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter().filter(move |e| {
            e.name == name || e.name.strip_suffix("_node").is_some_and(|n| n == name)
        })
    }

    /// memtrace's notable events of `allocator` with `flag`.
    fn notable(&self, allocator: Allocator, flag: u32) -> usize {
        self.notable
            .iter()
            .filter(|e| e.allocator == allocator as u32 && e.flags & flag != 0)
            .count()
    }

    fn label(&self, raw: u64) -> String {
        GfpTable::label_of(Some(&self.gfp), raw)
    }
}

fn gfp_table() -> GfpTable {
    GfpTable::from_kernel().expect("the kernel's GFP table")
}

/// Observations of one workload before a test gives up on windows the kernel disturbed.
const ATTEMPTS: u32 = 8;

/// Attaches memtrace (filtered to a fresh worker thread) and ftrace for `events`, runs
/// `job` on the worker, and returns both sides' view of exactly that job.
///
/// An interrupt that allocates or frees on the worker's CPU while the same program is
/// running there is recorded by ftrace but skipped by the kernel for BPF (a recursion miss,
/// which memtrace reports): such a window is not comparable, so it is observed again.
///
/// `None` when this kernel cannot attach the probes as `way` asks, for a documented reason
/// ([`allowed_gap`]): the test skips that way.
fn observe(
    way: Way,
    events: &[(&str, &str)],
    job: impl Fn() + Send + Clone + 'static,
) -> Option<Window> {
    for attempt in 1..=ATTEMPTS {
        let w = observe_once(way, events, job.clone())?;
        if w.snap.recursion_misses == 0 {
            return Some(w);
        }
        eprintln!(
            "attempt {attempt}: the kernel skipped {} program runs (recursion): observing again",
            w.snap.recursion_misses
        );
    }
    panic!("every attempt had program runs skipped by the kernel (recursion misses)");
}

fn observe_once(
    way: Way,
    events: &[(&str, &str)],
    job: impl FnOnce() + Send + 'static,
) -> Option<Window> {
    let worker = Worker::spawn();
    let mut tracer = Tracer::start(&TracerOptions {
        filter_tid: worker.tid,
        attach: way.pref,
        generic_btf: way.generic_btf,
        notable_min_bytes: NOTABLE_BYTES,
        notable_min_order: NOTABLE_ORDER,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    let mut all = kernel_events(events);
    // vmalloc before 6.2 has no tracepoint: kprobes on the function are the reference.
    let vmap_kprobes = events.contains(&("vmalloc", "alloc_vmap_area"))
        && !has_event("vmalloc", "alloc_vmap_area");
    if vmap_kprobes {
        support::compat::define_vmap_kprobes();
        for e in support::compat::VMAP_KPROBES {
            all.push((support::compat::KPROBE_GROUP.to_string(), e.to_string()));
        }
    }
    let refs: Vec<(&str, &str)> = all.iter().map(|(c, e)| (c.as_str(), e.as_str())).collect();
    let probes: Vec<(&str, &str)> = refs
        .iter()
        .copied()
        .filter(|(c, _)| *c != support::compat::KPROBE_GROUP)
        .chain(vmap_kprobes.then_some(("vmalloc", "alloc_vmap_area")))
        .collect();
    if let Err(why) = check_way(&tracer, way, &probes) {
        eprintln!("{way}: skipped on this kernel: {why}");
        return None;
    }
    let idle = tracer.snapshot().expect("snapshot");
    assert_eq!(
        idle.total(Allocator::Kmalloc).count(),
        0,
        "the worker is idle so far"
    );

    let ftrace = Ftrace::start(&refs, worker.tid);
    worker.run(job);
    let mut events = ftrace.stop();
    if vmap_kprobes {
        events = support::compat::vmap_events_from_kprobes(events);
    }
    let snap = tracer.snapshot().expect("snapshot");
    assert_eq!(snap.counter(Counter::MapFull), 0, "no map overflowed");
    assert_eq!(
        snap.counter(Counter::RingbufFull),
        0,
        "no notable event lost"
    );
    let mut ring = tracer.take_events().expect("events ring buffer");
    let mut notable = Vec::new();
    memtrace::bpf::events::drain(&mut ring, |e| notable.push(e));
    for e in &notable {
        assert_eq!(e.tid, worker.tid, "notable events are the worker's");
        assert_eq!(memtrace::bpf::events::comm(e), "memtrace-work");
    }
    Some(Window {
        snap,
        events,
        gfp: gfp_table(),
        notable,
    })
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("memtrace-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A size histogram built from ftrace events the way memtrace builds its own.
fn histogram<'a>(
    events: impl Iterator<Item = &'a TraceEvent>,
    req: &str,
    alloc: &str,
) -> SizeStats {
    let mut s = SizeStats::ZERO;
    for e in events {
        let a = e.u64(alloc);
        s.buckets[size_bucket(a)] += 1;
        s.requested_bytes += e.u64(req);
        s.allocated_bytes += a;
    }
    s
}

// ---------------------------------------------------------------------------------------
// kmalloc / kfree

/// Sizes spread over several histogram buckets, from a sub-16-byte object to a
/// page-allocator-backed 64 KiB kvmalloc.
const SIZES: [usize; 8] = [10, 100, 1000, 3000, 5000, 9000, 20000, 65536];
const REPS: usize = 25;

fn kmalloc_matches_ftrace(way: Way) {
    let dir = tempdir("kmalloc");
    let file = dir.join("xattr-target");
    std::fs::write(&file, b"x").expect("create xattr target");
    let Some(w) = observe(way, &[("kmem", "kmalloc"), ("kmem", "kfree")], move || {
        for _ in 0..REPS {
            for size in SIZES {
                setxattr_kmalloc(&file, size);
            }
        }
    }) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);

    // The workload really did what it claims: every setxattr value went through vmemdup_user.
    for size in SIZES {
        let n = w
            .of("kmalloc")
            .filter(|e| {
                !e.is_null("ptr")
                    && support::compat::is_vmemdup_site(&ftrace_function(e.str("call_site")))
                    && e.u64("bytes_req") == size as u64
            })
            .count();
        // (At least: a filesystem may copy the value again with kvmalloc.)
        assert!(
            n >= REPS,
            "ftrace saw {n} vmemdup_user kmallocs of {size} B, expected {REPS}"
        );
    }

    // Per GFP label, the whole histogram and both byte sums.
    let mut want: BTreeMap<String, SizeStats> = BTreeMap::new();
    for e in w.of("kmalloc").filter(|e| !e.is_null("ptr")) {
        want.entry(ftrace_gfp_label(e.str("gfp_flags")))
            .or_insert(SizeStats::ZERO)
            .add(&histogram(std::iter::once(e), "bytes_req", "bytes_alloc"));
    }
    let mut got: BTreeMap<String, SizeStats> = BTreeMap::new();
    for ((a, raw), s) in &w.snap.sizes {
        if *a == Allocator::Kmalloc {
            got.entry(w.label(*raw)).or_insert(SizeStats::ZERO).add(s);
        }
    }
    eprintln!(
        "{way}: kmalloc per gfp, ftrace {:?} memtrace {:?}",
        want.iter().map(|(k, s)| (k, s.count())).collect::<Vec<_>>(),
        got.iter().map(|(k, s)| (k, s.count())).collect::<Vec<_>>()
    );
    assert_eq!(got, want, "kmalloc histograms per gfp differ from ftrace");
    assert!(got.values().map(SizeStats::count).sum::<u64>() >= (SIZES.len() * REPS) as u64);

    let failed = w.of("kmalloc").filter(|e| e.is_null("ptr")).count() as u64;
    assert_eq!(
        w.snap.failures_of(Allocator::Kmalloc),
        failed,
        "failed kmallocs"
    );
    assert_eq!(w.notable(Allocator::Kmalloc, EVENT_FAILED) as u64, failed);
    let largest = w
        .of("kmalloc")
        .filter(|e| !e.is_null("ptr"))
        .map(|e| e.u64("bytes_alloc"))
        .max()
        .unwrap_or(0);
    assert_eq!(w.snap.largest_kmalloc(), largest, "largest kmalloc seen");
    let large = w
        .of("kmalloc")
        .filter(|e| !e.is_null("ptr") && e.u64("bytes_alloc") >= NOTABLE_BYTES)
        .count();
    assert!(large >= REPS, "64 KiB kmallocs are notable");
    assert_eq!(
        w.notable(Allocator::Kmalloc, EVENT_LARGE),
        large,
        "large kmalloc events"
    );
    let frees = w.of("kfree").filter(|e| !e.is_null("ptr")).count() as u64;
    assert_eq!(
        w.snap.counter(Counter::KmallocFrees),
        frees,
        "kfree counts differ from ftrace"
    );
    assert!(
        frees >= (SIZES.len() * REPS) as u64,
        "every vmemdup_user buffer is freed"
    );
}

#[test]
fn kmalloc_matches_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    for way in WAYS {
        kmalloc_matches_ftrace(way);
    }
}

// ---------------------------------------------------------------------------------------
// slab caches

#[test]
fn slab_caches_by_name_match_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    for way in WAYS {
        let dir = tempdir("slab");
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let Some(w) = observe(
            way,
            &[("kmem", "kmem_cache_alloc"), ("kmem", "kmem_cache_free")],
            move || open_close(&file, 100),
        ) else {
            continue;
        };
        let _ = std::fs::remove_dir_all(&dir);

        let mut want: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        // Before 6.2 the event has no cache name; memtrace then finds the cache from the
        // object's page, which the reference below checks another way.
        let named = w
            .of("kmem_cache_alloc")
            .all(|e| e.fields.contains_key("name"));
        for e in w.of("kmem_cache_alloc").filter(|e| !e.is_null("ptr")) {
            let v = want.entry(e.str("name").to_string()).or_default();
            v.0 += 1;
            v.1 += e.u64("bytes_req");
            v.2 += e.u64("bytes_alloc");
        }
        let got: BTreeMap<String, (u64, u64, u64)> = w
            .snap
            .caches
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    (c.allocations, c.requested_bytes, c.allocated_bytes),
                )
            })
            .collect();
        eprintln!("{way}: caches ftrace {want:?} memtrace {got:?}");
        if named {
            assert_eq!(got, want, "per-cache allocations differ from ftrace");
        } else {
            support::compat::assert_caches_without_names(&got, &want[""]);
        }
        assert!(
            got.get("filp").is_some_and(|v| v.0 >= 100),
            "100 opens, 100 filp objects"
        );

        let size_total = w.snap.total(Allocator::KmemCache);
        assert_eq!(size_total.count(), want.values().map(|v| v.0).sum::<u64>());
        // Per GFP label, the whole size histogram and both byte sums (memtrace derives them
        // from its per-cache counts: see memtrace_common::CacheTable).
        let mut want_sizes: BTreeMap<String, SizeStats> = BTreeMap::new();
        for e in w.of("kmem_cache_alloc").filter(|e| !e.is_null("ptr")) {
            want_sizes
                .entry(ftrace_gfp_label(e.str("gfp_flags")))
                .or_insert(SizeStats::ZERO)
                .add(&histogram(std::iter::once(e), "bytes_req", "bytes_alloc"));
        }
        let mut got_sizes: BTreeMap<String, SizeStats> = BTreeMap::new();
        for ((a, raw), s) in &w.snap.sizes {
            if *a == Allocator::KmemCache {
                got_sizes
                    .entry(w.label(*raw))
                    .or_insert(SizeStats::ZERO)
                    .add(s);
            }
        }
        assert_eq!(
            got_sizes, want_sizes,
            "{way}: kmem_cache histograms per gfp differ from ftrace"
        );
        let failed = w
            .of("kmem_cache_alloc")
            .filter(|e| e.is_null("ptr"))
            .count() as u64;
        assert_eq!(w.snap.failures_of(Allocator::KmemCache), failed);
        let frees = w
            .of("kmem_cache_free")
            .filter(|e| !e.is_null("ptr"))
            .count() as u64;
        assert_eq!(
            w.snap.counter(Counter::KmemCacheFrees),
            frees,
            "kmem_cache_free counts"
        );
    }
}

// ---------------------------------------------------------------------------------------
// the page allocator

#[test]
fn page_allocations_and_frees_match_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    for way in WAYS {
        let dir = tempdir("pages");
        let file = dir.join("xattr-target");
        std::fs::write(&file, b"x").unwrap();
        let Some(w) = observe(
            way,
            &[
                ("kmem", "mm_page_alloc"),
                ("kmem", "mm_page_free"),
                ("kmem", "mm_page_free_batched"),
            ],
            move || {
                // Order 0: pipe buffers. Order 4: a 64 KiB kvmalloc is a kmalloc_large.
                support::compaction::compact_memory();
                pipe_pages(64);
                for _ in 0..10 {
                    setxattr_kmalloc(&file, 65536);
                }
            },
        ) else {
            continue;
        };
        let _ = std::fs::remove_dir_all(&dir);

        let mut want: BTreeMap<(u32, u32, String), u64> = BTreeMap::new();
        for e in w.of("mm_page_alloc").filter(|e| !e.is_null("page")) {
            *want
                .entry((
                    e.u64("order") as u32,
                    e.u64("migratetype") as u32,
                    ftrace_gfp_label(e.str("gfp_flags")),
                ))
                .or_default() += 1;
        }
        let mut got: BTreeMap<(u32, u32, String), u64> = BTreeMap::new();
        for ((order, mt, raw), n) in &w.snap.pages {
            *got.entry((*order, *mt, w.label(*raw))).or_default() += n;
        }
        eprintln!("{way}: pages ftrace {want:?} memtrace {got:?}");
        assert_eq!(
            got, want,
            "page allocations per order × migratetype × gfp differ"
        );
        let order = |o: u32| {
            want.iter()
                .filter(|((x, _, _), _)| *x == o)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        assert!(
            order(0) >= 64,
            "64 pages written to pipes are 64 order-0 allocations"
        );
        assert!(order(4) >= 10, "64 KiB kmallocs allocate order-4 pages");

        let failed = w.of("mm_page_alloc").filter(|e| e.is_null("page")).count() as u64;
        assert_eq!(w.snap.failures_of(Allocator::Page), failed);
        let highest = w
            .of("mm_page_alloc")
            .filter(|e| !e.is_null("page"))
            .map(|e| e.u64("order") as u32)
            .max();
        assert_eq!(
            w.snap.largest_page_order(),
            highest,
            "highest page order seen"
        );
        let high = w
            .of("mm_page_alloc")
            .filter(|e| !e.is_null("page") && e.u64("order") >= NOTABLE_ORDER as u64)
            .count();
        assert_eq!(
            w.notable(Allocator::Page, EVENT_LARGE),
            high,
            "high-order page events"
        );
        for o in 0..memtrace_common::ORDER_SLOTS {
            let mut frees = w
                .of("mm_page_free")
                .filter(|e| e.u64("order") as u32 == o)
                .count() as u64;
            if o == 0 {
                frees += w.of("mm_page_free_batched").count() as u64;
            }
            assert_eq!(w.snap.page_frees(o), frees, "page frees of order {o}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// vmalloc and percpu

#[test]
fn vmalloc_and_percpu_match_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    let job = || {
        for _ in 0..5 {
            // 256 KiB of array: vmalloc'ed by bpf_map_area_alloc.
            bpf_map_create_close(BPF_MAP_TYPE_ARRAY, 4096, 64);
            // 16 elements: 16 percpu allocations.
            bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 64, 16);
        }
    };
    // Two windows per way: a kernel may attach one allocator's probes in a way the other's
    // cannot (5.10: vmalloc only through fexit in the BTF way, percpu only as a tracepoint).
    let (mut vmalloc, mut percpu) = (0, 0);
    for way in WAYS {
        if let Some(w) = observe(way, &[("vmalloc", "alloc_vmap_area")], job) {
            vmalloc_matches(way, &w);
            vmalloc += 1;
        }
        if let Some(w) = observe(
            way,
            &[
                ("percpu", "percpu_alloc_percpu"),
                ("percpu", "percpu_alloc_percpu_fail"),
            ],
            job,
        ) {
            percpu_matches(way, &w);
            percpu += 1;
        }
    }
    assert!(
        vmalloc > 0 && percpu > 0,
        "ways run: vmalloc {vmalloc}, percpu {percpu}"
    );
}

fn vmalloc_matches(way: Way, w: &Window) {
    {
        let vmaps: Vec<&TraceEvent> = w
            .of("alloc_vmap_area")
            .filter(|e| e.u64("failed") == 0)
            .collect();
        let want = histogram(vmaps.iter().copied(), "size", "size");
        assert_eq!(
            w.snap.total(Allocator::Vmalloc),
            want,
            "vmalloc areas differ from ftrace"
        );
        assert!(
            vmaps.iter().filter(|e| e.u64("size") >= 256 << 10).count() >= 5,
            "five 256 KiB array maps were vmalloc'ed"
        );
        let vfail = w
            .of("alloc_vmap_area")
            .filter(|e| e.u64("failed") != 0)
            .count() as u64;
        assert_eq!(w.snap.failures_of(Allocator::Vmalloc), vfail);
        let largest = vmaps.iter().map(|e| e.u64("size")).max().unwrap_or(0);
        assert_eq!(w.snap.largest_vmalloc(), largest, "largest vmalloc seen");
        let large = vmaps
            .iter()
            .filter(|e| e.u64("size") >= NOTABLE_BYTES)
            .count();
        assert_eq!(
            w.notable(Allocator::Vmalloc, EVENT_LARGE),
            large,
            "{way}: large vmalloc events"
        );
    }
}

fn percpu_matches(way: Way, w: &Window) {
    {
        let mut want: BTreeMap<String, SizeStats> = BTreeMap::new();
        for e in w.of("percpu_alloc_percpu") {
            // Before 5.14 the event has neither GFP flags nor bytes allocated: memtrace
            // counts the size requested, under its "unknown flags" value.
            if e.fields.contains_key("bytes_alloc") {
                want.entry(ftrace_gfp_label(e.str("gfp_flags")))
                    .or_insert(SizeStats::ZERO)
                    .add(&histogram(std::iter::once(e), "size", "bytes_alloc"));
            } else {
                want.entry(w.label(memtrace_common::GFP_UNKNOWN))
                    .or_insert(SizeStats::ZERO)
                    .add(&histogram(std::iter::once(e), "size", "size"));
            }
        }
        let mut got: BTreeMap<String, SizeStats> = BTreeMap::new();
        for ((a, raw), s) in &w.snap.sizes {
            if *a == Allocator::Percpu {
                got.entry(w.label(*raw)).or_insert(SizeStats::ZERO).add(s);
            }
        }
        eprintln!(
            "{way}: percpu ftrace {:?} memtrace {:?}",
            want.iter().map(|(k, s)| (k, s.count())).collect::<Vec<_>>(),
            got.iter().map(|(k, s)| (k, s.count())).collect::<Vec<_>>()
        );
        assert_eq!(got, want, "percpu allocations differ from ftrace");
        assert!(
            want.values().map(SizeStats::count).sum::<u64>() >= 80,
            "5 × 16 percpu elements"
        );
        let pfail = w.of("percpu_alloc_percpu_fail").count() as u64;
        assert_eq!(w.snap.failures_of(Allocator::Percpu), pfail);
    }
}

// ---------------------------------------------------------------------------------------
// real allocation failures

/// A thread in a memory cgroup with a 64 KiB limit (OOM killer off) makes real allocation
/// failures (see `support::memcg::force_failures`: pipe pages until the cgroup is full, a pipe ring
/// that cannot grow, 64 KiB tmpfs xattrs): the kernel reports failed page allocations and
/// failed kmallocs; memtrace must count exactly the failures ftrace shows, by allocator and
/// GFP flags.
#[test]
fn real_allocation_failures_match_ftrace() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    let shm = std::path::Path::new("/dev/shm");
    assert!(shm.is_dir(), "the failure test needs tmpfs at /dev/shm");
    let file = shm.join(format!("memtrace-test-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    for way in WAYS {
        let memcg = Memcg::new(64 << 10);
        let worker = Worker::spawn();
        let mut tracer = Tracer::start(&TracerOptions {
            filter_tid: worker.tid,
            attach: way.pref,
            generic_btf: way.generic_btf,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
        let events = [("kmem", "kmalloc"), ("kmem", "mm_page_alloc")];
        if let Err(why) = check_way(&tracer, way, &events) {
            eprintln!("{way}: skipped on this kernel: {why}");
            continue;
        }
        let events = kernel_events(&events);
        let ftrace = Ftrace::start(&events, worker.tid);
        force_failures(&worker, &memcg, &file, 5);
        let events = ftrace.stop();
        let snap = tracer.snapshot().expect("snapshot");
        let gfp = gfp_table();
        let label = |raw: u64| gfp.label(raw).to_string();

        let mut want: BTreeMap<(Allocator, String), u64> = BTreeMap::new();
        for e in &events {
            let failed = match e.name.as_str() {
                "kmalloc" | "kmalloc_node" if e.is_null("ptr") => Allocator::Kmalloc,
                "mm_page_alloc" if e.is_null("page") => Allocator::Page,
                _ => continue,
            };
            *want
                .entry((failed, ftrace_gfp_label(e.str("gfp_flags"))))
                .or_default() += 1;
        }
        let mut got: BTreeMap<(Allocator, String), u64> = BTreeMap::new();
        for ((a, _order, raw), n) in &snap.failures {
            if matches!(a, Allocator::Kmalloc | Allocator::Page) {
                *got.entry((*a, label(*raw))).or_default() += n;
            }
        }
        eprintln!("{way}: failures ftrace {want:?} memtrace {got:?}");
        assert_eq!(got, want, "allocation failures differ from ftrace");
        assert!(
            want.keys().any(|(a, _)| *a == Allocator::Kmalloc),
            "a real kmalloc failure"
        );
        assert!(
            want.keys().any(|(a, _)| *a == Allocator::Page),
            "a real page allocation failure"
        );
        // Each failure is also one notable event, with the failing GFP flags.
        let mut ring = tracer.take_events().expect("events ring buffer");
        let mut notable: BTreeMap<(Allocator, String), u64> = BTreeMap::new();
        memtrace::bpf::events::drain(&mut ring, |e| {
            assert!(
                e.flags & EVENT_FAILED != 0,
                "only failures are notable here: {e:?}"
            );
            let a = memtrace::bpf::events::allocator(&e).expect("allocator");
            *notable.entry((a, label(e.gfp))).or_default() += 1;
        });
        notable.retain(|(a, _), _| matches!(a, Allocator::Kmalloc | Allocator::Page));
        assert_eq!(notable, want, "one notable event per failure");
        drop(ftrace);
        drop(memcg);
    }
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------
// attribution: call sites and task names

/// The function of ftrace's `call_site=func+0x2e/0xb0`.
fn ftrace_function(call_site: &str) -> String {
    call_site.split('+').next().unwrap_or(call_site).to_string()
}

#[test]
fn call_sites_and_task_names_match_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    let symbols = memtrace::label::symbolize::Symbolizer::load().expect("kallsyms");
    for way in WAYS {
        let dir = tempdir("attribution");
        let file = dir.join("xattr-target");
        std::fs::write(&file, b"x").unwrap();
        let Some(w) = observe(
            way,
            &[("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc")],
            move || {
                for _ in 0..25 {
                    setxattr_kmalloc(&file, 1000);
                }
                open_close(&file, 20);
            },
        ) else {
            continue;
        };
        let _ = std::fs::remove_dir_all(&dir);

        for (event, allocator, bytes_field) in [
            ("kmalloc", Allocator::Kmalloc, "bytes_alloc"),
            ("kmem_cache_alloc", Allocator::KmemCache, "bytes_alloc"),
        ] {
            let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for e in w.of(event).filter(|e| !e.is_null("ptr")) {
                let v = want.entry(ftrace_function(e.str("call_site"))).or_default();
                v.0 += 1;
                v.1 += e.u64(bytes_field);
            }
            let mut got: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for ((a, addr), u) in &w.snap.callsites {
                if *a == allocator {
                    let v = got.entry(symbols.function(*addr)).or_default();
                    v.0 += u.allocations;
                    v.1 += u.bytes;
                }
            }
            eprintln!("{way}: {event} call sites ftrace {want:?} memtrace {got:?}");
            assert_eq!(
                got, want,
                "{event} per calling function differs from ftrace"
            );

            // Every allocation of the worker carries its task name.
            let comm = w
                .snap
                .comms
                .get(&(allocator, "memtrace-work".to_string()))
                .copied()
                .unwrap_or_default();
            let total: (u64, u64) = want
                .values()
                .fold((0, 0), |acc, v| (acc.0 + v.0, acc.1 + v.1));
            assert_eq!(
                (comm.allocations, comm.bytes),
                total,
                "{event} by task name"
            );
        }
        let vmemdup = w
            .snap
            .callsites
            .iter()
            .filter(|((a, addr), _)| {
                *a == Allocator::Kmalloc
                    && support::compat::is_vmemdup_site(&symbols.function(*addr))
            })
            .map(|(_, u)| u.allocations)
            .sum::<u64>();
        // (At least: a filesystem may copy the value again with kvmalloc.)
        assert!(
            vmemdup >= 25,
            "setxattr's copies are attributed to vmemdup_user: {vmemdup}"
        );
    }
}

/// Allocations of `a` summed over the keys of one attribution map of a snapshot.
fn allocations_of<K>(m: &BTreeMap<(Allocator, K), memtrace_common::Usage>, a: Allocator) -> u64 {
    m.iter()
        .filter(|((x, _), _)| *x == a)
        .map(|(_, u)| u.allocations)
        .sum()
}

/// The hot path counts in small per-CPU tables first, then in per-CPU hash maps, then in
/// the hash maps' overflow slots. With one table slot per CPU and more distinct call sites
/// than the call-site map holds, every level is used: the rest count under the overflow
/// slot, per allocator the call-site and task-name totals still equal the allocator's own
/// count, the slab caches' total equals kmem_cache's, and the loss of detail is reported.
#[test]
fn full_tables_and_maps_keep_totals_exact() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let worker = Worker::spawn();
    let tracer = Tracer::start(&TracerOptions {
        filter_tid: worker.tid,
        // Five slots are the pre-inserted overflow keys: three left for real call sites.
        callsites_max: 8,
        table_slots: 1,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    let dir = tempdir("full");
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    worker.run(move || {
        for size in SIZES {
            setxattr_kmalloc(&file, size);
        }
        open_close(&file, 10);
        pipe_pages(8);
        bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 64, 4);
    });
    let _ = std::fs::remove_dir_all(&dir);
    let snap = tracer.snapshot().expect("snapshot");
    // Per allocator with call sites, one table slot per CPU, and three map entries.
    let cpus = aya::util::nr_cpus().expect("CPU count");
    let distinct = snap.callsites.keys().filter(|(_, addr)| *addr != 0).count();
    assert!(
        distinct <= 3 + 3 * cpus,
        "only 3 + 3 × {cpus} real call sites fit: {distinct}"
    );
    assert!(
        snap.counter(Counter::MapFull) > 0,
        "the overflow is reported"
    );
    for a in [Allocator::Kmalloc, Allocator::KmemCache, Allocator::Percpu] {
        let total = snap.total(a).count();
        assert!(total > 0, "{a:?}: the workload allocates");
        let by_site = allocations_of(&snap.callsites, a);
        // Before 5.14 the percpu event has no call site: nothing to attribute.
        if a != Allocator::Percpu
            || support::compat::event_has_field("percpu", "percpu_alloc_percpu", "call_site")
        {
            assert_eq!(by_site, total, "{a:?}: call-site totals stay exact");
        } else {
            assert_eq!(by_site, 0, "{a:?}: no call sites on this kernel");
        }
        let by_comm = allocations_of(&snap.comms, a);
        assert_eq!(by_comm, total, "{a:?}: task-name totals stay exact");
    }
    let by_cache: u64 = snap.caches.values().map(|c| c.allocations).sum();
    assert_eq!(
        by_cache,
        snap.total(Allocator::KmemCache).count(),
        "slab cache totals stay exact"
    );
    let pages: u64 = snap.pages.values().sum();
    assert!(pages >= 8, "the pipe's pages are counted: {pages}");
}

// ---------------------------------------------------------------------------------------
// the OOM killer

/// A process in a 16 MiB memory cgroup (OOM killer on) reads /dev/zero into memory until the
/// OOM killer takes it: memtrace counts one kill, as ftrace's oom:mark_victim shows.
#[test]
fn oom_kill_matches_ftrace() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    use std::io::Write as _;
    let memcg = Memcg::with_oom_killer(16 << 20);
    // The shell waits for a line, then becomes `tail`, which buffers /dev/zero forever.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "read go; exec tail /dev/zero"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    memcg.add_process(pid);
    let tracer = Tracer::start(&TracerOptions {
        filter_tgid: pid,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    let ftrace = Ftrace::start(&[("oom", "mark_victim")], pid);
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the OOM killer did not act within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let events = ftrace.stop();
    let snap = tracer.snapshot().expect("snapshot");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed by the OOM killer: {status:?}"
    );
    let kills = events.iter().filter(|e| e.name == "mark_victim").count() as u64;
    assert_eq!(kills, 1, "ftrace saw one OOM victim");
    assert_eq!(
        snap.counter(Counter::OomKills),
        kills,
        "OOM kills differ from ftrace"
    );
    drop(memcg);
}

// ---------------------------------------------------------------------------------------
// a probe the kernel lacks

/// A probe this kernel does not have degrades that probe only: it is reported with its
/// reason, the others attach and count.
#[test]
fn a_missing_probe_degrades_only_that_probe() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let missing = memtrace_common::ProbeSpec {
        category: "kmem",
        event: "memtrace_no_such_event",
        tp_program: "kfree_tp",
        btf_program: "kfree_btf",
        fixed_program: Some("kfree_btf_fixed"),
        raw_program: Some("kfree_raw"),
        fexit: None,
        only_on: None,
    };
    // kmalloc (and, before 6.1, kmalloc_node, which kvmalloc reports) and the missing one.
    let mut specs: Vec<memtrace_common::ProbeSpec> = memtrace_common::PROBES
        .iter()
        .filter(|p| p.event.starts_with("kmalloc"))
        .copied()
        .collect();
    specs.push(missing);
    let worker = Worker::spawn();
    let tracer = Tracer::start_with(
        &TracerOptions {
            filter_tid: worker.tid,
            ..Default::default()
        },
        &specs,
    )
    .unwrap_or_else(|e| panic!("one missing probe must not stop memtrace: {e:#}"));
    let st = tracer.probes();
    let (last, kmalloc) = st.split_last().expect("statuses");
    assert!(
        !kmalloc.is_empty() && kmalloc.iter().all(|p| p.attached()),
        "{st:?}"
    );
    assert!(!last.attached(), "{st:?}");
    let why = last.note.as_deref().unwrap_or("");
    assert!(
        why.contains("tp_btf") && why.contains("raw_tp") && why.contains("tracepoint"),
        "every way tried: {why}"
    );
    assert_eq!(why.lines().count(), 1, "one line: {why}");
    let dir = tempdir("missing");
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    worker.run(move || setxattr_kmalloc(&file, 1000));
    let snap = tracer.snapshot().expect("snapshot");
    assert!(
        snap.total(Allocator::Kmalloc).count() >= 1,
        "kmalloc still counts"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// the filter itself

/// The thread filter is what makes the exact comparisons possible: events of other threads
/// must not be counted.
#[test]
fn thread_filter_excludes_other_threads() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let idle = Worker::spawn();
    let busy = Worker::spawn();
    let tracer = Tracer::start(&TracerOptions {
        filter_tid: idle.tid,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    let dir = tempdir("filter");
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    busy.run(move || {
        setxattr_kmalloc(&file, 1000);
        open_close(&file, 10);
        pipe_pages(4);
    });
    let snap = tracer.snapshot().expect("snapshot");
    for a in Allocator::ALL {
        assert_eq!(snap.total(a).count(), 0, "{a:?}: {snap:?}");
    }
    assert!(snap.pages.is_empty() && snap.caches.is_empty(), "{snap:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// attribution: memory cgroups

/// memtrace's `cgroup` series of `allocator` as (allocations, bytes) per label value, through
/// the exporter (so through the id → path resolver), as a scrape would show them.
fn cgroup_series(
    snap: &Snapshot,
    allocator: Allocator,
    resolver: Option<memtrace::label::cgroup::Resolver>,
) -> BTreeMap<String, (u64, u64)> {
    use prometheus::Encoder as _;
    let limits = memtrace::export::LabelLimits {
        caches: 50,
        callsites: 50,
        processes: 50,
        cgroups: 50,
    };
    let mut e =
        memtrace::export::Exporter::new(None, BTreeMap::new(), None, "test".into(), limits, None);
    if let Some(r) = resolver {
        e = e.with_cgroup_paths(r);
    }
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&e.families(snap, &[], None), &mut buf)
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    support::assert::assert_no_addresses(&text);
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in memtrace::export::scrape::parse_exposition(&text) {
        if s.labels.get("allocator").map(String::as_str) != Some(allocator.name()) {
            continue;
        }
        let Some(cg) = s.labels.get("cgroup") else {
            continue;
        };
        let v = out.entry(cg.clone()).or_default();
        match s.name.as_str() {
            "memtrace_cgroup_allocations_total" => v.0 += s.value as u64,
            "memtrace_cgroup_allocated_bytes_total" => v.1 += s.value as u64,
            _ => {}
        }
    }
    out
}

/// A worker moved into a fresh memory cgroup (v1 here; the same code reads v2) allocates with
/// known syscalls: memtrace's `memtrace_cgroup_*{cgroup="/<that cgroup>"}` must equal
/// ftrace's count of the worker's successful kmallocs, slab allocations and page allocations
/// (and bytes), exactly, and no other cgroup may appear. With per-cgroup counting off (the
/// default), there is no cgroup series at all.
#[test]
fn memory_cgroups_match_ftrace_in_both_attach_modes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    let dir = tempdir("cgroups");
    let file = dir.join("xattr-target");
    std::fs::write(&file, b"x").unwrap();
    for way in WAYS {
        for on in [true, false] {
            // A window where the kernel skipped program runs (an interrupt on the worker's CPU
            // while the same program ran, see `observe`) is not comparable: observe again.
            for attempt in 1..=ATTEMPTS {
                // A generous limit: nothing may fail.
                let memcg = Memcg::new(1 << 30);
                let (resolver, _version) = memtrace::label::cgroup::Resolver::from_system()
                    .expect("a memory cgroup hierarchy");
                let path = format!(
                    "/{}",
                    memcg
                        .dir
                        .strip_prefix(resolver.root())
                        .expect("the test cgroup is in the memory hierarchy")
                        .display()
                );
                let worker = Worker::spawn();
                let (enter, leave) = memcg.tasks_paths();
                worker.run(move || support::memcg::enter_tasks(&enter));
                let attribution = memtrace_common::ATTR_CALLSITES
                    | memtrace_common::ATTR_COMMS
                    | if on { memtrace_common::ATTR_CGROUPS } else { 0 };
                let tracer = Tracer::start(&TracerOptions {
                    filter_tid: worker.tid,
                    attach: way.pref,
                    generic_btf: way.generic_btf,
                    attribution,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
                assert_eq!(
                    tracer.cgroups_unavailable(),
                    None,
                    "this kernel has the BTF"
                );
                let events = [
                    ("kmem", "kmalloc"),
                    ("kmem", "kmem_cache_alloc"),
                    ("kmem", "mm_page_alloc"),
                ];
                if let Err(why) = check_way(&tracer, way, &events) {
                    eprintln!("{way}: skipped on this kernel: {why}");
                    worker.run(move || support::memcg::enter_tasks(&leave));
                    break;
                }
                let events = kernel_events(&events);
                let ftrace = Ftrace::start(&events, worker.tid);
                let f = file.clone();
                worker.run(move || {
                    for _ in 0..50 {
                        setxattr_kmalloc(&f, 1000);
                    }
                    open_close(&f, 20);
                    pipe_pages(8);
                });
                let trace = ftrace.stop();
                let snap = tracer.snapshot().expect("snapshot");
                worker.run(move || support::memcg::enter_tasks(&leave));
                assert_eq!(snap.counter(Counter::MapFull), 0, "no map overflowed");
                if snap.recursion_misses > 0 {
                    assert!(
                        attempt < 5,
                        "every attempt had program runs skipped by the kernel"
                    );
                    eprintln!(
                        "attempt {attempt}: the kernel skipped {} program runs: observing again",
                        snap.recursion_misses
                    );
                    continue;
                }

                for (event, allocator, ok_field) in [
                    ("kmalloc", Allocator::Kmalloc, "ptr"),
                    ("kmem_cache_alloc", Allocator::KmemCache, "ptr"),
                    ("mm_page_alloc", Allocator::Page, "page"),
                ] {
                    let ok: Vec<&TraceEvent> = trace
                        .iter()
                        .filter(|e| {
                            (e.name == event || e.name == format!("{event}_node"))
                                && !e.is_null(ok_field)
                        })
                        .collect();
                    let bytes: u64 = ok
                        .iter()
                        .map(|e| match allocator {
                            Allocator::Page => memtrace::kernel::page_size() << e.u64("order"),
                            _ => e.u64("bytes_alloc"),
                        })
                        .sum();
                    let got = cgroup_series(
                        &snap,
                        allocator,
                        memtrace::label::cgroup::Resolver::from_system()
                            .ok()
                            .map(|(r, _)| r),
                    );
                    eprintln!(
                        "{way} cgroups {}: {event} ftrace {} ({bytes} B), memtrace {got:?}",
                        if on { "on" } else { "off" },
                        ok.len()
                    );
                    if !on {
                        assert!(got.is_empty(), "no cgroup series when off: {got:?}");
                        assert!(snap.cgroups.is_empty(), "nothing counted when off");
                        continue;
                    }
                    let want: BTreeMap<String, (u64, u64)> =
                        [(path.clone(), (ok.len() as u64, bytes))].into();
                    assert_eq!(got, want, "{event} per memory cgroup differs from ftrace");
                }
                if on {
                    use std::os::unix::fs::MetadataExt as _;
                    let ino = std::fs::metadata(&memcg.dir).expect("cgroup dir").ino();
                    assert!(
                        snap.cgroups
                            .get(&(Allocator::Kmalloc, ino))
                            .is_some_and(|u| u.allocations >= 50),
                        "the kernel's id is the cgroup directory's inode number"
                    );
                }
                drop(tracer);
                drop(worker);
                drop(memcg);
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Heap profiles

/// Sampling mean of the profile test: small, so that the estimate has ~2000 samples.
const PROFILE_SAMPLE_BYTES: u64 = 4096;
/// xattrs the profile test holds, and each one's value.
const HELD_XATTRS: usize = 2000;
const HELD_VALUE: usize = 3000;

/// The heap-profiling flags of the profile tests: the daemon's defaults with a smaller
/// sampling mean (more samples, a smaller error) and no ageing.
fn profiling(sample_bytes: u64) -> memtrace::profile::ProfileArgs {
    memtrace::profile::ProfileArgs {
        sample_bytes,
        max_age_secs: 0,
        ..memtrace::profile::ProfileArgs::DEFAULTS
    }
}

/// kmalloc'd bytes the ftrace stream leaves live: each allocation not freed later in the
/// stream, by its (hashed) pointer. `live` carries allocations over from an earlier window.
fn ftrace_live(events: &[TraceEvent], live: &mut BTreeMap<String, u64>) {
    for e in events {
        if e.name.starts_with("kmalloc") && !e.is_null("ptr") {
            live.insert(e.str("ptr").to_string(), e.u64("bytes_alloc"));
        } else if e.name == "kfree" {
            live.remove(e.str("ptr"));
        }
    }
}

/// The standard error of estimating the bytes of allocations `sizes` (see
/// `memtrace::profile::weight`).
fn estimate_sd(e: &memtrace::profile::weight::Estimator, sizes: impl Iterator<Item = u64>) -> f64 {
    sizes
        .map(|n| {
            let p = e.probability(n);
            (n as f64).powi(2) * (1.0 - p) / p
        })
        .sum::<f64>()
        .sqrt()
}

/// memtrace's estimated live kmalloc bytes (every stack).
fn estimated_live(p: &memtrace::profile::live::Profiler) -> f64 {
    p.report(None, 0, 0)
        .stacks
        .iter()
        .filter(|s| s.allocator == "kmalloc")
        .map(|s| s.inuse_space)
        .sum()
}

/// Holds 2000 tmpfs xattrs of 3000 bytes (each a kvmalloc that lives until the file goes),
/// then removes the file: memtrace's estimated live kmalloc bytes match the live bytes of
/// the kernel's own kmalloc/kfree stream within four standard errors of the estimator, both
/// while held and once released, and name the workload's function.
fn profile_matches(way: Way) {
    let fs = Tmpfs::mount("profile");
    let file = fs.0.join("held");
    std::fs::write(&file, b"x").expect("create the xattr holder");
    let worker = Worker::spawn();
    let args = profiling(PROFILE_SAMPLE_BYTES);
    let mut tracer = Tracer::start(&TracerOptions {
        filter_tid: worker.tid,
        attach: way.pref,
        generic_btf: way.generic_btf,
        profile: Some(args.tracer_options()),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    let events = [("kmem", "kmalloc"), ("kmem", "kfree")];
    if let Err(why) = check_way(&tracer, way, &events) {
        eprintln!("{way}: skipped on this kernel: {why}");
        return;
    }
    let mut ring = tracer.take_profile_events().expect("profile ring buffer");
    let gaps = memtrace::profile::weight::gaps(PROFILE_SAMPLE_BYTES);
    let est = memtrace::profile::weight::Estimator::of(&gaps);
    let mut p = args.profiler(&tracer, 8).expect("profiling is on");
    let all = kernel_events(&events);

    // Hold.
    let ftrace = Ftrace::start(&all, worker.tid);
    let target = file.clone();
    worker.run(move || hold_xattrs(&target, 0..HELD_XATTRS, HELD_VALUE));
    let held_events = ftrace.stop();
    drop(ftrace);
    memtrace::profile::drain_into(&mut ring, &mut p);
    let mut truth = BTreeMap::new();
    ftrace_live(&held_events, &mut truth);
    let want: u64 = truth.values().sum();
    assert!(
        want >= (HELD_XATTRS * HELD_VALUE) as u64,
        "the xattrs hold {want} B of kmalloc (ftrace)"
    );
    let sd = estimate_sd(&est, truth.values().copied());
    let got = estimated_live(&p);
    eprintln!(
        "{way}: held {want} B live (ftrace), estimated {got:.0} B from {} samples (sd {sd:.0} B)",
        p.live_samples()
    );
    assert!(
        (got - want as f64).abs() <= 4.0 * sd,
        "{way}: estimated live {got:.0} B, ftrace {want} B: more than 4 standard errors ({sd:.0} B) apart"
    );
    // Named by the workload's function (on every kernel of the matrix its kvmalloc or
    // kmalloc is called from simple_xattr_alloc), which holds nearly all of it.
    let symbols = memtrace::label::symbolize::Symbolizer::load().expect("kallsyms");
    let by_function = p.live_by_function(Some(&symbols));
    let xattr = by_function
        .get(&(Allocator::Kmalloc, "simple_xattr_alloc".to_string()))
        .copied()
        .unwrap_or(0.0);
    assert!(
        xattr >= 0.9 * got,
        "{way}: simple_xattr_alloc holds {xattr:.0} of {got:.0} B: {by_function:?}"
    );
    let report = p.report(Some(&symbols), 0, 0);
    assert!(
        report
            .stacks
            .iter()
            .any(|s| s.frames.iter().any(|f| f == "simple_xattr_alloc")
                && s.frames.iter().any(|f| f.contains("setxattr"))),
        "{way}: a stack runs from setxattr to simple_xattr_alloc"
    );

    // Release: removing the file frees every xattr.
    let ftrace = Ftrace::start(&all, worker.tid);
    let target = file.clone();
    worker.run(move || std::fs::remove_file(&target).expect("remove the xattr holder"));
    let released_events = ftrace.stop();
    drop(ftrace);
    memtrace::profile::drain_into(&mut ring, &mut p);
    ftrace_live(&released_events, &mut truth);
    let want: u64 = truth.values().sum();
    let sd = estimate_sd(&est, truth.values().copied()) + est.mean;
    let got = estimated_live(&p);
    eprintln!("{way}: released: {want} B live (ftrace), estimated {got:.0} B");
    assert!(
        want < (HELD_XATTRS * HELD_VALUE) as u64 / 100,
        "{way}: the xattrs were freed (ftrace still has {want} B live)"
    );
    assert!(
        (got - want as f64).abs() <= 4.0 * sd,
        "{way}: after release estimated {got:.0} B live, ftrace {want} B"
    );
    let snap = tracer.snapshot().expect("snapshot");
    assert_eq!(snap.counter(Counter::ProfileLiveFull), 0, "no sample lost");
    assert_eq!(snap.counter(Counter::ProfileRingFull), 0, "no event lost");
    assert_eq!(p.malformed, 0);
    drop(tracer);
    drop(worker);
}

#[test]
fn heap_profile_estimates_live_bytes_like_ftrace_in_both_attach_modes() {
    let Some(_kernel) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    for way in WAYS {
        profile_matches(way);
    }
}

/// Every allocator's samples, and their ends: the worker allocates and frees pages (a pipe's
/// buffers), slab objects (files opened and closed), vmalloc areas and percpu memory (BPF
/// maps created and destroyed): each allocator is sampled, with the workload's function in
/// its stacks, and once everything is freed (some by kernel workers, which are not filtered:
/// any task may free) none of those stacks holds live bytes.
fn profile_ends_every_allocator(way: Way) {
    let mut events = vec![
        ("kmem", "kmem_cache_alloc"),
        ("kmem", "kmem_cache_free"),
        ("kmem", "mm_page_alloc"),
        ("kmem", "mm_page_free"),
        ("kmem", "mm_page_free_batched"),
        ("percpu", "percpu_alloc_percpu"),
        ("percpu", "percpu_free_percpu"),
    ];
    // A vmalloc profile needs the vmalloc tracepoints (6.2+): the fexit stand-in has no free.
    let vmalloc = has_event("vmalloc", "free_vmap_area_noflush");
    if vmalloc {
        events.extend([
            ("vmalloc", "alloc_vmap_area"),
            ("vmalloc", "free_vmap_area_noflush"),
        ]);
    }
    let worker = Worker::spawn();
    let mut tracer = Tracer::start(&TracerOptions {
        filter_tid: worker.tid,
        attach: way.pref,
        generic_btf: way.generic_btf,
        profile: Some(profiling(1024).tracer_options()),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    if let Err(why) = check_way(&tracer, way, &events) {
        eprintln!("{way}: skipped on this kernel: {why}");
        return;
    }
    let mut ring = tracer.take_profile_events().expect("profile ring buffer");
    let mut p = profiling(1024)
        .profiler(&tracer, 8)
        .expect("profiling is on");
    let dir = tempdir("profile-ends");
    let file = dir.join("opened");
    std::fs::write(&file, b"x").unwrap();
    let target = file.clone();
    worker.run(move || {
        pipe_pages(64);
        open_close(&target, 200);
        for _ in 0..5 {
            bpf_map_create_close(BPF_MAP_TYPE_ARRAY, 4096, 64);
            bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 64, 16);
        }
    });
    let symbols = memtrace::label::symbolize::Symbolizer::load().expect("kallsyms");
    // (allocator, a function of the workload's stacks).
    let mut wanted = vec![
        // (6.14 renamed it anon_pipe_write.)
        ("page", "pipe_write"),
        ("percpu", "array_map_alloc"),
    ];
    // Before 6.7 a file is freed by an RCU callback, in a softirq, which often interrupts one
    // of the classic tracepoint programs running on that CPU: the kernel then runs no classic
    // program (`bpf_prog_active`), and that free is not seen (its sample ends when its
    // address is allocated again). tp_btf and raw_tp programs are skipped per program only.
    if matches!(way.expect, AttachMode::Tracepoint) && release() < (6, 7) {
        eprintln!(
            "{way}: file frees (RCU callbacks) are not all seen by classic tracepoint programs before 6.7"
        );
    } else {
        wanted.push(("kmem_cache", "alloc_empty_file"));
    }
    if vmalloc {
        wanted.push(("vmalloc", "array_map_alloc"));
    }
    let totals = |p: &memtrace::profile::live::Profiler, allocator: &str, function: &str| {
        let r = p.report(Some(&symbols), 0, 0);
        r.stacks
            .iter()
            .filter(|s| {
                s.allocator == allocator
                    && s.frames
                        .iter()
                        .any(|f| f == function || f.strip_prefix("anon_") == Some(function))
            })
            .fold((0.0, 0.0), |(a, l), s| {
                (a + s.alloc_space, l + s.inuse_space)
            })
    };
    // BPF maps are freed by a kernel worker, files (before 6.7) after an RCU grace period.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        memtrace::profile::drain_into(&mut ring, &mut p);
        let left: Vec<_> = wanted
            .iter()
            .map(|(a, f)| (a, f, totals(&p, a, f)))
            .filter(|(_, _, (_, live))| *live > 0.0)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{way}: samples still live 10 s after their frees: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (a, f) in &wanted {
        let (allocated, _) = totals(&p, a, f);
        assert!(allocated > 0.0, "{way}: no {a} sample has {f} in its stack");
    }
    let snap = tracer.snapshot().expect("snapshot");
    assert_eq!(snap.counter(Counter::ProfileLiveFull), 0);
    assert_eq!(snap.counter(Counter::ProfileRingFull), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn heap_profile_samples_and_ends_every_allocator_in_both_attach_modes() {
    let Some(_kernel) = require_kernel() else {
        return;
    };
    let _ran = WaysRan::start();
    for way in WAYS {
        profile_ends_every_allocator(way);
    }
}
