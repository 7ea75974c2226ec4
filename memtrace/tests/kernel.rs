//! Integration tests on the real kernel: load memtrace's eBPF programs, drive the kernel with
//! syscalls whose allocations are known, and compare memtrace's counts with the kernel's own
//! ftrace event stream for the same thread over the same window. Counts must match exactly.
//!
//! Run as root by `cargo xtask test` (single-threaded: kernel state is shared).

mod support;

use memtrace::probes::{AttachMode, AttachPreference, Tracer, TracerOptions};
use memtrace_common::{Allocator, Counter, SIZE_BUCKETS, size_bucket};
use support::{Ftrace, TraceEvent, Worker, require_kernel, setxattr_kmalloc};

/// Sizes spread over several histogram buckets, from a sub-16-byte object to a
/// page-allocator-backed 64 KiB kvmalloc.
const SIZES: [usize; 8] = [10, 100, 1000, 3000, 5000, 9000, 20000, 65536];
const REPS: usize = 25;

fn kmalloc_workload(dir: &std::path::Path) -> impl FnOnce() + Send + 'static {
    let file = dir.join("xattr-target");
    std::fs::write(&file, b"x").expect("create xattr target");
    move || {
        for _ in 0..REPS {
            for size in SIZES {
                setxattr_kmalloc(&file, size);
            }
        }
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("memtrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs the kmalloc workload with programs attached in `mode` and asserts that memtrace's
/// histogram, byte sums, failures and frees equal what ftrace recorded.
fn kmalloc_matches_ftrace(pref: AttachPreference, expect: AttachMode) {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let worker = Worker::spawn();
    let tracer = Tracer::start(&TracerOptions {
        filter_tid: worker.tid,
        attach: pref,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("memtrace could not start: {e:#}"));
    for name in ["kmem:kmalloc", "kmem:kfree"] {
        let st = tracer
            .probes()
            .iter()
            .find(|p| p.probe == name)
            .unwrap_or_else(|| panic!("no status for {name}"));
        assert_eq!(st.mode, Some(expect), "{name} attached as {st:?}");
    }
    let before = tracer.snapshot().expect("snapshot");
    assert_eq!(
        before.total(Allocator::Kmalloc).count(),
        0,
        "worker idle so far"
    );

    let dir = tempdir();
    let ftrace = Ftrace::start(&[("kmem", "kmalloc"), ("kmem", "kfree")], worker.tid);
    worker.run(kmalloc_workload(&dir));
    let events = ftrace.stop();
    let snap = tracer.snapshot().expect("snapshot");
    let _ = std::fs::remove_dir_all(&dir);

    let kmallocs: Vec<&TraceEvent> = events.iter().filter(|e| e.name == "kmalloc").collect();
    let ok: Vec<&&TraceEvent> = kmallocs.iter().filter(|e| !e.is_null("ptr")).collect();
    // The workload really did what it claims: every setxattr value went through vmemdup_user.
    for size in SIZES {
        let n = ok
            .iter()
            .filter(|e| {
                e.str("call_site").starts_with("vmemdup_user") && e.u64("bytes_req") == size as u64
            })
            .count();
        assert_eq!(
            n, REPS,
            "ftrace saw {n} vmemdup_user kmallocs of {size} B, expected {REPS}"
        );
    }

    let mut want = [0u64; SIZE_BUCKETS];
    let (mut req, mut alloc) = (0u64, 0u64);
    for e in &ok {
        want[size_bucket(e.u64("bytes_alloc"))] += 1;
        req += e.u64("bytes_req");
        alloc += e.u64("bytes_alloc");
    }
    let got = snap.total(Allocator::Kmalloc);
    eprintln!(
        "{expect}: ftrace {} kmallocs ({} failed), memtrace {}; buckets ftrace {want:?} memtrace {:?}",
        kmallocs.len(),
        kmallocs.len() - ok.len(),
        got.count(),
        got.buckets
    );
    assert_eq!(
        got.buckets, want,
        "per-bucket kmalloc counts differ from ftrace"
    );
    assert_eq!(
        got.requested_bytes, req,
        "bytes requested differ from ftrace"
    );
    assert_eq!(
        got.allocated_bytes, alloc,
        "bytes allocated differ from ftrace"
    );
    assert_eq!(
        snap.failures_of(Allocator::Kmalloc) as usize,
        kmallocs.len() - ok.len(),
        "failed kmallocs differ from ftrace"
    );
    let frees = events
        .iter()
        .filter(|e| e.name == "kfree" && !e.is_null("ptr"))
        .count() as u64;
    assert_eq!(
        snap.counter(Counter::KmallocFrees),
        frees,
        "kfree counts differ from ftrace"
    );
    assert!(
        frees >= (SIZES.len() * REPS) as u64,
        "every vmemdup_user buffer is freed"
    );
    assert_eq!(snap.counter(Counter::MapFull), 0);
}

#[test]
fn kmalloc_histogram_matches_ftrace_tp_btf() {
    kmalloc_matches_ftrace(AttachPreference::Btf, AttachMode::Btf);
}

#[test]
fn kmalloc_histogram_matches_ftrace_classic_tracepoint() {
    kmalloc_matches_ftrace(AttachPreference::Tracepoint, AttachMode::Tracepoint);
}

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
    let dir = tempdir();
    busy.run(kmalloc_workload(&dir));
    let snap = tracer.snapshot().expect("snapshot");
    assert_eq!(snap.total(Allocator::Kmalloc).count(), 0, "{snap:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
